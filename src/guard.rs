//! The guards around the two roots, checked before every piece of work: SOURCE and REPLICA
//! are opened anew by their canonical paths with no symlink followed in any component, and
//! must still be on the filesystems they were on at start (a disk unmounted from under
//! either looks exactly like a changed device); SOURCE must not be empty while REPLICA is
//! not; REPLICA is never re-created. A trip is logged when it begins and when it ends.
//! Also the boundary rule: SOURCE, REPLICA, and every directory holding one of them are
//! never entered when met again below a root (a bind mount), so nothing loops or leaves
//! REPLICA. Knows nothing of walking or deciding.

use std::ffi::CString;
use std::io;
use std::mem::discriminant;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

use rustix::fs::{Mode, OFlags};
use tracing::{debug, error, info};

use crate::config::Config;
use crate::entry::{Entry, Kind};
use crate::error::{Fatal, GuardTrip};
use crate::ops;

/// Both roots, opened for one piece of work after the guards passed.
pub struct OpenRoots {
    /// SOURCE's root directory.
    pub src: OwnedFd,
    /// REPLICA's root; absent only in a dry run whose REPLICA does not exist yet.
    pub dst: Option<OwnedFd>,
}

/// What the roots were at start, and whether a guard holds now.
pub struct Guard {
    source: PathBuf,
    replica: PathBuf,
    source_fs: FsId,
    replica_fs: Option<FsId>,
    boundaries: Vec<(u64, u64)>,
    /// (device, inode) of both roots at start: a root renamed away and replaced by another
    /// directory on the same filesystem passes the filesystem guard, not this.
    root_ids: ((u64, u64), Option<(u64, u64)>),
    allow_empty_source: bool,
    dry_run: bool,
    holding: Mutex<Option<GuardTrip>>,
}

impl Guard {
    /// Remembers the roots' devices and the identities of both roots and their ancestors.
    pub fn new(config: &Config) -> Result<Guard, Fatal> {
        let source_fail = |e: io::Error| Fatal::Source {
            path: config.source.clone(),
            reason: format!("cannot be opened without following a symlink: {e}"),
        };
        let source_fs =
            open_dir_nofollow(&config.source).and_then(|fd| FsId::of(&fd)).map_err(source_fail)?;
        // A bucket is no directory here: its half of the guards is the replica's own
        // (`open_with`).
        let replica_fs = match open_dir_nofollow(&config.replica) {
            _ if config.bucket.is_some() => None,
            Ok(fd) => Some(FsId::of(&fd).map_err(|e| replica_fatal(config, e))?),
            Err(e) if e.kind() == io::ErrorKind::NotFound && config.dry_run => None,
            Err(e) => return Err(replica_fatal(config, e)),
        };
        let id = |p: &Path| std::fs::symlink_metadata(p).ok().map(|m| (m.dev(), m.ino()));
        let root_ids = (id(&config.source).unwrap_or_default(), id(&config.replica));
        let mut boundaries = ancestor_ids(&config.source);
        if config.bucket.is_none() {
            boundaries.extend(ancestor_ids(&config.replica));
        }
        boundaries.sort_unstable();
        boundaries.dedup();
        Ok(Guard {
            source: config.source.clone(),
            replica: config.replica.clone(),
            source_fs,
            replica_fs,
            boundaries,
            root_ids,
            allow_empty_source: config.allow_empty_source,
            dry_run: config.dry_run,
            holding: Mutex::new(None),
        })
    }

    /// The device SOURCE's root is on (what `--one-file-system` stays on).
    pub fn source_dev(&self) -> u64 {
        self.source_fs.dev
    }

    /// True if `src` and `dst` are the directories the roots were at start.
    pub fn same_roots(&self, src: &Entry, dst: &Entry) -> bool {
        (src.dev, src.ino) == self.root_ids.0 && Some((dst.dev, dst.ino)) == self.root_ids.1
    }

    /// True if `entry` is a directory that is SOURCE, REPLICA, or holds one of them: met
    /// below a root, it can only be a bind mount, and entering it would loop or leave REPLICA.
    pub fn is_boundary(&self, entry: &Entry) -> bool {
        entry.kind == Kind::Dir && self.boundaries.binary_search(&(entry.dev, entry.ino)).is_ok()
    }

    /// Opens both roots and applies the guards, then `also` (a check the caller adds: that
    /// REPLICA can be written); logs a trip when it begins and when it ends. `in_flight`
    /// says which names in REPLICA's root are this process's own temporary files (they do
    /// not make REPLICA "not empty").
    pub fn open(
        &self,
        in_flight: &dyn Fn(&[u8]) -> bool,
        also: impl FnOnce(&OpenRoots) -> Result<(), GuardTrip>,
    ) -> Result<OpenRoots, GuardTrip> {
        let result = self.check(in_flight).and_then(|roots| also(&roots).map(|()| roots));
        self.note(result)
    }

    /// The guards for a REPLICA that is not a local directory (a bucket): SOURCE's half as
    /// in [`Guard::open`]; `replica` opens REPLICA and says whether it is empty (its own
    /// failure is a trip, never "empty"); the deletion guard's rule applies unchanged;
    /// then `also`. Trips are logged as in [`Guard::open`].
    pub fn open_with<D>(
        &self,
        replica: impl FnOnce() -> Result<(D, bool), GuardTrip>,
        also: impl FnOnce(&D) -> Result<(), GuardTrip>,
    ) -> Result<(OwnedFd, D), GuardTrip> {
        let result = self.open_source().and_then(|src| {
            let (dst, replica_empty) = replica()?;
            if !self.allow_empty_source
                && has_no_entries(&src, ops::is_temp_name).unwrap_or(false)
                && !replica_empty
            {
                return Err(GuardTrip::SourceEmpty);
            }
            also(&dst)?;
            Ok((src, dst))
        });
        self.note(result)
    }

    /// Logs a trip when it begins and when it ends.
    fn note<T>(&self, result: Result<T, GuardTrip>) -> Result<T, GuardTrip> {
        let mut holding = self.holding.lock().unwrap_or_else(|e| e.into_inner());
        match (&result, holding.as_ref()) {
            (Err(trip), Some(held)) if discriminant(trip) == discriminant(held) => {
                debug!("{}: still holding: {trip}", trip.guard_name());
            }
            (Err(trip), _) => {
                error!("{}: {trip}", trip.guard_name());
                *holding = Some(trip.clone());
            }
            (Ok(_), Some(held)) => {
                info!("{} released: the roots are usable again; resuming", held.guard_name());
                *holding = None;
            }
            (Ok(_), None) => {}
        }
        result
    }

    /// SOURCE's half: opened anew without following a symlink, on its filesystem.
    fn open_source(&self) -> Result<OwnedFd, GuardTrip> {
        let src = open_dir_nofollow(&self.source).map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP | libc::ENOTDIR) => GuardTrip::SourceReplaced(e.to_string()),
            _ => GuardTrip::SourceGone(e.to_string()),
        })?;
        let now = FsId::of(&src).map_err(|e| GuardTrip::SourceGone(e.to_string()))?;
        if !self.source_fs.same_as(&now) {
            let (was, now) = (self.source_fs.to_string(), now.to_string());
            return Err(GuardTrip::SourceDeviceChanged { was, now });
        }
        Ok(src)
    }

    fn check(&self, in_flight: &dyn Fn(&[u8]) -> bool) -> Result<OpenRoots, GuardTrip> {
        let src = self.open_source()?;
        let dst = match (open_dir_nofollow(&self.replica), self.replica_fs) {
            (Ok(fd), Some(was)) => {
                let now = FsId::of(&fd).map_err(|e| GuardTrip::ReplicaGone(e.to_string()))?;
                if !was.same_as(&now) {
                    let (was, now) = (was.to_string(), now.to_string());
                    return Err(GuardTrip::ReplicaDeviceChanged { was, now });
                }
                Some(fd)
            }
            // A dry run into a REPLICA that does not exist yet: nothing to compare with.
            (Err(e), None) if e.kind() == io::ErrorKind::NotFound && self.dry_run => None,
            (Ok(fd), None) => Some(fd),
            (Err(e), _) if e.kind() == io::ErrorKind::NotFound => {
                return Err(GuardTrip::ReplicaGone(e.to_string()));
            }
            (Err(e), _) => return Err(GuardTrip::ReplicaUnusable(e.to_string())),
        };
        if !self.allow_empty_source
            && has_no_entries(&src, ops::is_temp_name).unwrap_or(false)
            && let Some(dst) = &dst
            && !has_no_entries(dst, in_flight).unwrap_or(true)
        {
            return Err(GuardTrip::SourceEmpty);
        }
        Ok(OpenRoots { src, dst })
    }
}

/// Which filesystem a root is on, and whether the root is a mount of its own.
///
/// The device number alone is not enough: filesystems without a disk (tmpfs, overlay, NFS)
/// take anonymous device numbers that are reused (a new tmpfs where an old one was can
/// get its number), and a disk plugged back in may come back under another. The statfs
/// filesystem id tells filesystems apart where it exists (from the UUID on ext4 and
/// btrfs, random per tmpfs mount), so it decides; the device number only where there is
/// none. A root that was a mount (a disk, or a bind mount of a directory on the same
/// filesystem) and no longer is, or the reverse, was unmounted or covered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FsId {
    dev: u64,
    fsid: u64,
    mount_root: bool,
}

impl FsId {
    fn of(fd: &OwnedFd) -> io::Result<FsId> {
        let entry = Entry::stat_fd(fd)?;
        let fsid = rustix::fs::fstatvfs(fd)?.f_fsid;
        Ok(FsId { dev: entry.dev, fsid, mount_root: entry.mount_root })
    }

    fn same_as(&self, now: &FsId) -> bool {
        let same_fs = match (self.fsid, now.fsid) {
            (0, _) | (_, 0) => self.dev == now.dev,
            (was, now) => was == now,
        };
        same_fs && self.mount_root == now.mount_root
    }
}

impl std::fmt::Display for FsId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mount = if self.mount_root { ", a mount" } else { "" };
        write!(f, "device {:#x} id {:#x}{mount}", self.dev, self.fsid)
    }
}

fn replica_fatal(config: &Config, e: io::Error) -> Fatal {
    Fatal::Replica {
        path: config.replica.clone(),
        reason: format!("cannot be opened without following a symlink: {e}"),
    }
}

/// Opens the absolute, canonical directory `path` from `/`, one component at a time, never
/// following a symlink: a component swapped for a symlink fails (ELOOP/ENOTDIR) instead of
/// leading somewhere else.
pub fn open_dir_nofollow(path: &Path) -> io::Result<OwnedFd> {
    let mut names = Vec::new();
    for component in path.components() {
        match component {
            Component::RootDir => {}
            Component::Normal(name) => names.push(
                CString::new(name.as_bytes())
                    .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
            ),
            // Canonical paths have none of these; refuse rather than guess.
            _ => return Err(io::Error::from(io::ErrorKind::InvalidInput)),
        }
    }
    // The way there needs search permission only (an ancestor may be 0711): O_PATH.
    let through = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let Some((last, way)) = names.split_last() else {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        return Ok(rustix::fs::open("/", flags, Mode::empty())?);
    };
    let mut fd: OwnedFd = rustix::fs::open("/", through, Mode::empty())?;
    for name in way {
        fd = rustix::fs::openat(&fd, name, through, Mode::empty())?;
    }
    ops::open_dir_at(&fd, last)
}

/// (device, inode) of the existing directory `path` and of each of its ancestors.
fn ancestor_ids(path: &Path) -> Vec<(u64, u64)> {
    path.ancestors().filter_map(|p| std::fs::metadata(p).ok()).map(|m| (m.dev(), m.ino())).collect()
}

/// True if the directory has no entry other than those `ignore` accepts. Works on its own
/// descriptor (a fresh open of "."), so the caller's descriptor can still be listed.
fn has_no_entries(dir: &OwnedFd, ignore: impl Fn(&[u8]) -> bool) -> io::Result<bool> {
    let own = ops::open_dir_at(dir, c".")?;
    Ok(!ops::has_entry(&own, |name| !ignore(name.to_bytes()))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fs(dev: u64, fsid: u64, mount_root: bool) -> FsId {
        FsId { dev, fsid, mount_root }
    }

    #[test]
    fn a_filesystem_is_known_by_its_id_where_it_has_one_else_by_its_device() {
        // A disk plugged back in under another device number: the same filesystem.
        assert!(fs(0x700, 42, true).same_as(&fs(0x701, 42, true)));
        // A new tmpfs that reused the old one's anonymous device number: another one.
        assert!(!fs(0x27, 1, true).same_as(&fs(0x27, 2, true)));
        // No filesystem id: the device decides.
        assert!(fs(0x27, 0, false).same_as(&fs(0x27, 0, false)));
        assert!(!fs(0x27, 0, false).same_as(&fs(0x28, 0, false)));
        // A bind mount of a directory on the same filesystem, unmounted: not the same.
        assert!(!fs(0xfe00, 9, true).same_as(&fs(0xfe00, 9, false)));
    }
}

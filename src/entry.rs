//! `Entry`: what one `statx` says about a directory entry that matters for mirroring (type,
//! size, mode, mtime, owner, inode, link target), and how two entries differ. Knows nothing
//! of how to fix a difference.

use std::ffi::CStr;
use std::io;
use std::os::fd::AsFd;

use rustix::fs::{AtFlags, FileType, Statx, StatxAttributes, StatxFlags, StatxTimestamp};

/// The entry types replicad knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link (never followed).
    Symlink,
    /// A named pipe.
    Fifo,
    /// A character device node.
    CharDevice,
    /// A block device node.
    BlockDevice,
    /// A unix socket (not mirrored).
    Socket,
}

impl Kind {
    fn from_mode(mode: u32) -> Kind {
        match FileType::from_raw_mode(mode) {
            FileType::Directory => Kind::Dir,
            FileType::Symlink => Kind::Symlink,
            FileType::Fifo => Kind::Fifo,
            FileType::CharacterDevice => Kind::CharDevice,
            FileType::BlockDevice => Kind::BlockDevice,
            FileType::Socket => Kind::Socket,
            _ => Kind::File,
        }
    }

    /// The lowercase name used in log lines.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Dir => "dir",
            Kind::File => "file",
            Kind::Symlink => "symlink",
            Kind::Fifo => "fifo",
            Kind::CharDevice => "char-device",
            Kind::BlockDevice => "block-device",
            Kind::Socket => "socket",
        }
    }

    /// Whether mode bits are mirrored for this type (Linux symlinks are always 0777).
    pub fn has_mode(self) -> bool {
        self != Kind::Symlink
    }
}

/// A timestamp to the nanosecond.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Time {
    /// Seconds since the epoch.
    pub sec: i64,
    /// Nanoseconds within the second.
    pub nsec: u32,
}

impl From<StatxTimestamp> for Time {
    fn from(t: StatxTimestamp) -> Time {
        Time { sec: t.tv_sec, nsec: t.tv_nsec }
    }
}

/// What one `statx` (never following links) says about an entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The entry's type.
    pub kind: Kind,
    /// Permission bits, `mode & 0o7777`.
    pub mode: u32,
    /// Size in bytes.
    pub size: u64,
    /// Allocated 512-byte blocks (tells a sparse file).
    pub blocks: u64,
    /// Modification time.
    pub mtime: Time,
    /// Status change time (moves on any change, cannot be set by tools).
    pub ctime: Time,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device holding the entry.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Number of names the inode has (hard links).
    pub nlink: u64,
    /// Device number, for device nodes.
    pub rdev: u64,
    /// The entry is the root of a mount (a mounted filesystem or a bind mount).
    pub mount_root: bool,
}

/// The statx fields replicad reads.
const WANTED: StatxFlags = StatxFlags::BASIC_STATS;

impl Entry {
    /// Builds an entry from a `statx` result.
    pub fn from_statx(st: &Statx) -> Entry {
        let mode = u32::from(st.stx_mode);
        Entry {
            kind: Kind::from_mode(mode),
            mode: mode & 0o7777,
            size: st.stx_size,
            blocks: st.stx_blocks,
            mtime: st.stx_mtime.into(),
            ctime: st.stx_ctime.into(),
            uid: st.stx_uid,
            gid: st.stx_gid,
            dev: rustix::fs::makedev(st.stx_dev_major, st.stx_dev_minor),
            ino: st.stx_ino,
            nlink: u64::from(st.stx_nlink),
            rdev: rustix::fs::makedev(st.stx_rdev_major, st.stx_rdev_minor),
            mount_root: st.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT)
                && st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT),
        }
    }

    /// `statx(dirfd, name)` without following a symlink; `Ok(None)` if the name is absent.
    pub fn stat_at(dirfd: impl AsFd, name: &CStr) -> io::Result<Option<Entry>> {
        match rustix::fs::statx(dirfd, name, AtFlags::SYMLINK_NOFOLLOW, WANTED) {
            Ok(st) => Ok(Some(Entry::from_statx(&st))),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// `statx` of an open file descriptor.
    pub fn stat_fd(fd: impl AsFd) -> io::Result<Entry> {
        let st = rustix::fs::statx(fd, c"", AtFlags::EMPTY_PATH, WANTED)?;
        Ok(Entry::from_statx(&st))
    }

    /// True if the content of the source file `self` and the replica file `other` counts
    /// as equal without reading it: the same size and the same mtime, to the nanosecond
    /// or as close as REPLICA's filesystem can store it.
    pub fn same_size_and_mtime(&self, other: &Entry, mtimes: &MtimeStore) -> bool {
        self.size == other.size && mtimes.stored(self.mtime) == other.mtime
    }

    /// Likely sparse: fewer blocks allocated than the size needs.
    pub fn looks_sparse(&self) -> bool {
        self.kind == Kind::File && self.blocks.saturating_mul(512) < self.size
    }

    /// Which metadata differ between `self` (the source) and `replica`; mtimes compared
    /// as REPLICA's filesystem can store them.
    pub fn attr_diff(&self, replica: &Entry, owners: bool, mtimes: &MtimeStore) -> AttrDiff {
        AttrDiff {
            mode: self.kind.has_mode() && self.mode != replica.mode,
            mtime: mtimes.stored(self.mtime) != replica.mtime,
            owner: owners && (self.uid != replica.uid || self.gid != replica.gid),
            ..AttrDiff::default()
        }
    }

    /// True if a copy made from `self` before is still current: nothing that a write, a
    /// truncate or a replace would move has moved (size, mtime, ctime, inode).
    pub fn unchanged_since(&self, before: &Entry) -> bool {
        self.size == before.size
            && self.mtime == before.mtime
            && self.ctime == before.ctime
            && self.ino == before.ino
            && self.dev == before.dev
    }
}

/// What a filesystem keeps of a modification time: its granularity and its range (ext4
/// with 128-byte inodes: whole seconds, 1901–2038; FAT: 2 s). The kernel truncates and
/// clamps what it cannot store, so comparing against the stored form is exact where the
/// filesystem is, and never sees a difference that no copy could remove.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MtimeStore {
    /// Granularity in nanoseconds (1 = exact).
    pub granularity_ns: u64,
    /// Earliest storable second.
    pub min_sec: i64,
    /// Latest storable second.
    pub max_sec: i64,
}

impl Default for MtimeStore {
    fn default() -> Self {
        MtimeStore { granularity_ns: 1, min_sec: i64::MIN, max_sec: i64::MAX }
    }
}

impl MtimeStore {
    /// True if every time is stored as given.
    pub fn is_exact(&self) -> bool {
        *self == MtimeStore::default()
    }

    /// `t` as this filesystem would store it (the kernel's `timestamp_truncate`).
    pub fn stored(&self, t: Time) -> Time {
        if self.is_exact() {
            return t;
        }
        if t.sec <= self.min_sec {
            return Time { sec: self.min_sec, nsec: 0 };
        }
        if t.sec >= self.max_sec {
            return Time { sec: self.max_sec, nsec: 0 };
        }
        let gran = i128::from(self.granularity_ns.max(1));
        let ns = i128::from(t.sec) * 1_000_000_000 + i128::from(t.nsec);
        let kept = ns - ns.rem_euclid(gran);
        let sec = kept.div_euclid(1_000_000_000);
        let nsec = kept.rem_euclid(1_000_000_000);
        Time { sec: i64::try_from(sec).unwrap_or(t.sec), nsec: u32::try_from(nsec).unwrap_or(0) }
    }
}

/// Which metadata of a replica entry need correcting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttrDiff {
    /// Permission bits differ.
    pub mode: bool,
    /// Modification time differs.
    pub mtime: bool,
    /// Owner or group differs (only when replicad may chown).
    pub owner: bool,
    /// Extended attributes differ (found by reading them, not by `statx`).
    pub xattrs: bool,
    /// POSIX ACLs differ (likewise).
    pub acl: bool,
}

impl AttrDiff {
    /// Nothing to correct.
    pub fn is_empty(&self) -> bool {
        !(self.mode || self.mtime || self.owner || self.xattrs || self.acl)
    }

    /// Everything: for a freshly created entry.
    pub fn all(owners: bool) -> AttrDiff {
        AttrDiff { mode: true, mtime: true, owner: owners, ..AttrDiff::default() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(size: u64, sec: i64, nsec: u32) -> Entry {
        Entry {
            kind: Kind::File,
            mode: 0o644,
            size,
            blocks: size.div_ceil(512),
            mtime: Time { sec, nsec },
            ctime: Time { sec, nsec },
            uid: 0,
            gid: 0,
            dev: 1,
            ino: 1,
            nlink: 1,
            rdev: 0,
            mount_root: false,
        }
    }

    #[test]
    fn content_equality_is_size_and_mtime_to_the_nanosecond() {
        let exact = MtimeStore::default();
        assert!(file(3, 10, 5).same_size_and_mtime(&file(3, 10, 5), &exact));
        assert!(!file(3, 10, 5).same_size_and_mtime(&file(3, 10, 6), &exact));
        assert!(!file(3, 10, 5).same_size_and_mtime(&file(4, 10, 5), &exact));
    }

    #[test]
    fn attr_diff_ignores_owner_unless_asked_and_mode_of_symlinks() {
        let a = file(1, 1, 1);
        let mut b = a.clone();
        b.uid = 7;
        let exact = MtimeStore::default();
        assert!(a.attr_diff(&b, false, &exact).is_empty());
        assert!(a.attr_diff(&b, true, &exact).owner);
        let mut l = a.clone();
        l.kind = Kind::Symlink;
        let mut l2 = l.clone();
        l2.mode = 0o777;
        assert!(!l.attr_diff(&l2, true, &exact).mode);
    }

    #[test]
    fn mtimes_compare_as_the_replica_can_store_them() {
        let seconds = MtimeStore {
            granularity_ns: 1_000_000_000,
            min_sec: -(1 << 31),
            max_sec: (1 << 31) - 1,
        };
        let t = |sec, nsec| Time { sec, nsec };
        assert_eq!(seconds.stored(t(10, 999_999_999)), t(10, 0));
        assert_eq!(seconds.stored(t(-10, 5)), t(-10, 0), "truncation goes towards the past");
        assert_eq!(seconds.stored(t(32_503_680_000, 7)), t((1 << 31) - 1, 0), "year 3000 clamps");
        assert_eq!(seconds.stored(t(-5_364_662_400, 7)), t(-(1 << 31), 0), "year 1800 clamps");
        let two = MtimeStore { granularity_ns: 2_000_000_000, ..MtimeStore::default() };
        assert_eq!(two.stored(t(11, 5)), t(10, 0));
        let exact = MtimeStore::default();
        assert_eq!(exact.stored(t(11, 5)), t(11, 5));
        let mut src = file(1, 10, 999_999_999);
        let mut dst = src.clone();
        dst.mtime = t(10, 0);
        assert!(src.same_size_and_mtime(&dst, &seconds) && !src.same_size_and_mtime(&dst, &exact));
        assert!(src.attr_diff(&dst, false, &seconds).is_empty());
        src.mtime = t(11, 0);
        assert!(src.attr_diff(&dst, false, &seconds).mtime);
    }

    #[test]
    fn unchanged_since_notices_ctime_only_changes() {
        let before = file(3, 10, 5);
        let mut after = before.clone();
        after.ctime.nsec += 1;
        assert!(!after.unchanged_since(&before));
        assert!(before.unchanged_since(&before.clone()));
    }
}

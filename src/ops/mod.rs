//! Primitive operations on REPLICA, each safe on its own: directories, names, symlinks,
//! FIFOs and devices, renames (here); file copies (`copy`), attributes (`attrs`), tree
//! removal (`remove`). Every change is one name relative to an open directory descriptor,
//! and nothing resolves a name a stranger could have swapped for a symlink or a hard link
//! a moment before: creations refuse an existing name, opens refuse links, attributes go
//! through a pinned descriptor. Knows nothing of when to call them.

mod attrs;
mod copy;
mod link;
mod probe;
mod remove;
mod xattr_sys;
mod xattrs;

use std::collections::HashSet;
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::warn;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

pub use attrs::{Expect, open_pinned_for_reading, set_attrs_at, set_attrs_fd};
pub use copy::{CopyCaps, CopyContext, CopyOptions, copy_file, open_source_file};
pub use link::link_into_place;
pub use probe::probe_replica;
pub use remove::{Removal, Removed, remove_tree};
pub use xattrs::{Handle, Namespace, XattrChanges, XattrSupport, Xattrs};

use crate::entry::{AttrDiff, Entry, Kind};
use crate::relpath::Escaped;

/// Prefix of replicad's temporary names; such names are never mirrored.
pub const TEMP_PREFIX: &[u8] = b".replicad.tmp.";

/// Hands out unique temporary names `.replicad.tmp.<pid>.<nonce>.<n>` for this process and
/// remembers which are in flight. The random nonce matters in containers, where every run
/// is PID 1: a crashed run's leftovers must not look like this run's in-flight copies.
pub struct TempNames {
    prefix: String,
    next: AtomicU64,
    /// Names handed out and not yet renamed into place or removed: only these are spared
    /// by passes, so a temporary file this process failed to remove is cleaned up too.
    in_flight: Mutex<HashSet<CString>>,
}

impl Default for TempNames {
    fn default() -> Self {
        use std::hash::{BuildHasher, Hasher};
        // RandomState is seeded randomly per process: a nonce without another dependency.
        let nonce = std::collections::hash_map::RandomState::new().build_hasher().finish() as u32;
        let prefix = format!(".replicad.tmp.{}.{nonce:08x}.", std::process::id());
        TempNames { prefix, next: AtomicU64::new(0), in_flight: Mutex::default() }
    }
}

impl TempNames {
    /// A fresh temporary name, in flight until [`TempNames::release`].
    pub fn next(&self) -> CString {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        // The prefix and a number contain no NUL byte, so this cannot fail.
        let name = CString::new(format!("{}{n}", self.prefix)).unwrap_or_default();
        self.lock().insert(name.clone());
        name
    }

    /// The name is no longer in flight (renamed into place, removed, or given up).
    pub fn release(&self, name: &CStr) {
        self.lock().remove(name);
    }

    /// True if `name` is a temporary name this process has in flight right now.
    pub fn is_ours(&self, name: &[u8]) -> bool {
        // The prefix check first: listings call this for every name.
        name.starts_with(self.prefix.as_bytes()) && self.lock().iter().any(|n| n.to_bytes() == name)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<CString>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// True for any replicad temporary name (ours, or a crashed run's leftover).
pub fn is_temp_name(name: &[u8]) -> bool {
    name.starts_with(TEMP_PREFIX)
}

// ---------------------------------------------------------------------------------------
// Directories
// ---------------------------------------------------------------------------------------

/// Opens the directory `name` in `dirfd`, refusing to follow a symlink (ELOOP/ENOTDIR).
pub fn open_dir_at(dirfd: impl AsFd, name: &CStr) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    Ok(rustix::fs::openat(dirfd, name, flags, Mode::empty())?)
}

/// One name from a directory listing, with the type getdents reported (may be Unknown).
pub struct DirItem {
    /// The name, raw bytes.
    pub name: CString,
    /// The type from getdents; `FileType::Unknown` on filesystems that do not say.
    pub kind_hint: FileType,
    /// The inode number from getdents (that of the directory below, for a mount point).
    pub ino: u64,
}

/// Every name in the directory `fd` except `.` and `..`, unsorted.
pub fn list_dir(fd: impl AsFd) -> io::Result<Vec<DirItem>> {
    let mut items = Vec::new();
    for_each_name(fd, |name, kind_hint, ino| {
        items.push(DirItem { name: name.to_owned(), kind_hint, ino });
        true
    })?;
    Ok(items)
}

/// True if the directory `fd` has a name (other than `.`/`..`) that `counts` accepts.
/// Stops reading at the first one, so it costs one getdents on any directory.
pub fn has_entry(fd: impl AsFd, counts: impl Fn(&CStr) -> bool) -> io::Result<bool> {
    let mut found = false;
    for_each_name(fd, |name, _, _| {
        found = counts(name);
        !found
    })?;
    Ok(found)
}

/// Calls `each` for every name from the descriptor's current offset until it returns false.
fn for_each_name(
    fd: impl AsFd,
    mut each: impl FnMut(&CStr, FileType, u64) -> bool,
) -> io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut iter = rustix::fs::RawDir::new(fd, buf.spare_capacity_mut());
    while let Some(entry) = iter.next() {
        let entry = entry?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        if !each(name, entry.file_type(), entry.ino()) {
            break;
        }
    }
    Ok(())
}

/// Creates the directory `name` (private until its attributes are set after its children).
pub fn make_dir(dirfd: impl AsFd, name: &CStr) -> io::Result<()> {
    let dirfd = dirfd.as_fd();
    in_writable_dir(dirfd, || rustix::fs::mkdirat(dirfd, name, Mode::from_raw_mode(0o700)))
}

// ---------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------

/// A temporary entry in REPLICA: unlinked on drop unless it was renamed into place.
pub(crate) struct TempFile<'a> {
    dir: BorrowedFd<'a>,
    name: CString,
    names: &'a TempNames,
    live: bool,
}

impl<'a> TempFile<'a> {
    /// A fresh name in `dir`; nothing exists under it yet.
    pub(crate) fn new(dir: BorrowedFd<'a>, names: &'a TempNames) -> TempFile<'a> {
        TempFile { dir, name: names.next(), names, live: false }
    }

    pub(crate) fn name(&self) -> &CStr {
        &self.name
    }

    /// Something now exists under the name: remove it unless it is renamed into place.
    pub(crate) fn created(&mut self) {
        self.live = true;
    }

    /// Renames the finished entry over `name` in the same directory (atomic).
    pub(crate) fn rename_into_place(mut self, name: &CStr) -> io::Result<()> {
        let dir = self.dir;
        in_writable_dir(dir, || rustix::fs::renameat(dir, &self.name, dir, name))?;
        self.live = false;
        Ok(())
    }
}

impl Drop for TempFile<'_> {
    fn drop(&mut self) {
        if self.live {
            match rustix::fs::unlinkat(self.dir, &self.name, AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(e) => warn!(
                    name = %Escaped(std::ffi::OsStr::from_bytes(self.name.to_bytes())),
                    error = %io::Error::from(e),
                    "cannot remove a temporary file; the next pass removes it"
                ),
            }
        }
        // No longer spared by passes, whether or not the unlink worked.
        self.names.release(&self.name);
    }
}

// ---------------------------------------------------------------------------------------
// Symlinks, FIFOs, devices
// ---------------------------------------------------------------------------------------

/// How new symlinks, FIFOs and devices are made.
pub struct Making<'a> {
    /// Give them SOURCE's owner.
    pub chown: bool,
    /// Where temporary names come from.
    pub temp_names: &'a TempNames,
    /// SOURCE's extended attributes and ACLs, set before the rename (`None`: not mirrored).
    pub xattrs: Option<(&'a Xattrs, &'a XattrSupport)>,
}

impl Making<'_> {
    fn all_attrs(&self) -> AttrDiff {
        let x = self.xattrs.is_some();
        AttrDiff { xattrs: x, acl: x, ..AttrDiff::all(self.chown) }
    }
}

/// Creates (or atomically replaces a non-directory with) a symlink `name -> target` with
/// the source's owner and mtime.
pub fn make_symlink(
    dirfd: BorrowedFd<'_>,
    name: &CStr,
    target: &CStr,
    src: &Entry,
    how: &Making<'_>,
) -> io::Result<()> {
    let mut temp = TempFile::new(dirfd, how.temp_names);
    in_writable_dir(dirfd, || rustix::fs::symlinkat(target, dirfd, temp.name()))?;
    temp.created();
    let diff = how.all_attrs();
    set_attrs_at(dirfd, temp.name(), Expect::Fresh(Kind::Symlink), src, diff, how.xattrs)?;
    temp.rename_into_place(name)
}

/// Creates (or atomically replaces a non-directory with) a FIFO or device node like `src`.
pub fn make_special(
    dirfd: BorrowedFd<'_>,
    name: &CStr,
    src: &Entry,
    how: &Making<'_>,
) -> io::Result<()> {
    let file_type = match src.kind {
        Kind::Fifo => FileType::Fifo,
        Kind::CharDevice => FileType::CharacterDevice,
        Kind::BlockDevice => FileType::BlockDevice,
        _ => return Err(io::Error::from(io::ErrorKind::InvalidInput)),
    };
    let mut temp = TempFile::new(dirfd, how.temp_names);
    let mode = Mode::from_raw_mode(0o600);
    in_writable_dir(dirfd, || rustix::fs::mknodat(dirfd, temp.name(), file_type, mode, src.rdev))?;
    temp.created();
    let diff = how.all_attrs();
    set_attrs_at(dirfd, temp.name(), Expect::Fresh(src.kind), src, diff, how.xattrs)?;
    temp.rename_into_place(name)
}

/// The target of the symlink `name` in `dirfd`, raw bytes.
pub fn read_link_at(dirfd: impl AsFd, name: &CStr) -> io::Result<CString> {
    Ok(rustix::fs::readlinkat(dirfd, name, Vec::new())?)
}

// ---------------------------------------------------------------------------------------
// Removal and rename
// ---------------------------------------------------------------------------------------

/// Removes the non-directory `name` from `dirfd`.
pub fn remove_file(dirfd: impl AsFd, name: &CStr) -> io::Result<()> {
    Ok(rustix::fs::unlinkat(dirfd, name, AtFlags::empty())?)
}

pub(crate) fn unlink_dir(parent: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    unlink_in(parent, name, AtFlags::REMOVEDIR)
}

pub(crate) fn unlink_in(dir: impl AsFd, name: &CStr, flags: AtFlags) -> io::Result<()> {
    let dir = dir.as_fd();
    in_writable_dir(dir, || rustix::fs::unlinkat(dir, name, flags))
}

/// Runs `op`, which changes the directory `dir`. Without privileges, a replica directory
/// whose SOURCE mode is read-only refuses that (EACCES): make it writable for its owner
/// and try once more, as rsync does. The directory's mode is put back when it is
/// finalized (its attributes are always set after its children are done).
pub(crate) fn in_writable_dir<T>(
    dir: BorrowedFd<'_>,
    op: impl Fn() -> rustix::io::Result<T>,
) -> io::Result<T> {
    match op() {
        Err(Errno::ACCESS) => {
            let mode = Entry::stat_fd(dir)?.mode | 0o700;
            rustix::fs::fchmod(dir, Mode::from_raw_mode(mode))?;
            Ok(op()?)
        }
        other => Ok(other?),
    }
}

/// Renames `from` to `to` (possibly across directories of REPLICA), refusing to replace
/// whatever is at `to`.
pub fn rename_noreplace(
    from_dir: impl AsFd,
    from: &CStr,
    to_dir: impl AsFd,
    to: &CStr,
) -> io::Result<()> {
    let (from_dir, to_dir) = (from_dir.as_fd(), to_dir.as_fd());
    let flags = rustix::fs::RenameFlags::NOREPLACE;
    let rename = || rustix::fs::renameat_with(from_dir, from, to_dir, to, flags);
    // Either directory may be the read-only one.
    in_writable_dir(from_dir, || in_writable_dir(to_dir, rename).map_err(errno_of))
}

fn errno_of(e: io::Error) -> Errno {
    e.raw_os_error().map_or(Errno::IO, Errno::from_raw_os_error)
}

/// Flushes the whole REPLICA filesystem once (end of a pass without `--fsync`).
pub fn sync_filesystem(fd: impl AsFd) -> io::Result<()> {
    Ok(rustix::fs::syncfs(fd)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_are_unique_and_recognised() {
        let names = TempNames::default();
        let a = names.next();
        let b = names.next();
        assert_ne!(a, b);
        assert!(is_temp_name(a.to_bytes()));
        assert!(names.is_ours(a.to_bytes()));
        assert!(!names.is_ours(b".replicad.tmp.1.0"));
        let pid_only = format!(".replicad.tmp.{}.0", std::process::id());
        assert!(!names.is_ours(pid_only.as_bytes()), "a same-PID leftover is not ours");
        assert!(!is_temp_name(b"replicad.tmp.1"));
    }
}

//! Primitive operations on REPLICA, each safe on its own: atomic file copy (temp name +
//! rename, with a check that the source did not move during the copy), mkdir, symlink,
//! FIFO/device creation, attribute setting, tree removal, rename. Every change is one name
//! relative to an open directory descriptor, so a symlink planted in REPLICA is never
//! followed. Knows nothing of when to call them.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;

use crate::checksum::{self, Md5Cache};
use crate::entry::{AttrDiff, Entry, Kind, Time};
use crate::error::EntryErrorKind;

/// Prefix of replicad's temporary names; such names are never mirrored.
pub const TEMP_PREFIX: &[u8] = b".replicad.tmp.";

/// How many bytes are copied between two checks for cancellation.
const COPY_CHUNK: u64 = 16 * 1024 * 1024;

/// Hands out unique temporary names `.replicad.tmp.<pid>.<nonce>.<n>` for this process.
/// The random nonce matters in containers, where every run is PID 1: a crashed run's
/// leftovers must not look like this run's in-flight copies.
pub struct TempNames {
    prefix: String,
    next: AtomicU64,
}

impl Default for TempNames {
    fn default() -> Self {
        use std::hash::{BuildHasher, Hasher};
        // RandomState is seeded randomly per process: a nonce without another dependency.
        let nonce = std::collections::hash_map::RandomState::new().build_hasher().finish() as u32;
        let prefix = format!(".replicad.tmp.{}.{nonce:08x}.", std::process::id());
        TempNames { prefix, next: AtomicU64::new(0) }
    }
}

impl TempNames {
    /// A fresh temporary name.
    pub fn next(&self) -> CString {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        // The prefix and a number contain no NUL byte, so this cannot fail.
        CString::new(format!("{}{n}", self.prefix)).unwrap_or_default()
    }

    /// True if `name` is a temporary name of this very process (an in-flight copy).
    pub fn is_ours(&self, name: &[u8]) -> bool {
        name.starts_with(self.prefix.as_bytes())
    }
}

/// True for any replicad temporary name (ours, or a crashed run's leftover).
pub fn is_temp_name(name: &[u8]) -> bool {
    name.starts_with(TEMP_PREFIX)
}

/// Options that shape every file copy.
#[derive(Clone, Copy, Debug, Default)]
pub struct CopyOptions {
    /// Set uid/gid on the copy (root / CAP_CHOWN only).
    pub chown: bool,
    /// `fdatasync` the copy before renaming it into place, `fsync` its directory after.
    pub fsync: bool,
    /// Re-read the copy and compare its MD5 with the source's before it goes live.
    pub verify: bool,
}

/// Everything a copy needs besides the two directories and the name.
pub struct CopyContext<'a> {
    /// Where temporary names come from.
    pub temp_names: &'a TempNames,
    /// chown / fsync / verify.
    pub opts: CopyOptions,
    /// What the filesystems were found not to support.
    pub caps: &'a CopyCaps,
    /// Digest cache for `--verify`.
    pub md5_cache: Option<&'a Md5Cache>,
    /// Polled between chunks; a cancelled copy removes its temporary file.
    pub cancelled: &'a dyn Fn() -> bool,
}

/// What the copy path learned about the filesystems, so a failing probe is not repeated
/// for every file.
#[derive(Default)]
pub struct CopyCaps {
    no_reflink: AtomicBool,
    no_copy_range: AtomicBool,
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
}

/// Every name in the directory `fd` except `.` and `..`, unsorted.
pub fn list_dir(fd: impl AsFd) -> io::Result<Vec<DirItem>> {
    let mut items = Vec::new();
    for_each_name(fd, |name, kind_hint| {
        items.push(DirItem { name: name.to_owned(), kind_hint });
        true
    })?;
    Ok(items)
}

/// True if the directory `fd` has a name (other than `.`/`..`) that `counts` accepts.
/// Stops reading at the first one, so it costs one getdents on any directory.
pub fn has_entry(fd: impl AsFd, counts: impl Fn(&CStr) -> bool) -> io::Result<bool> {
    let mut found = false;
    for_each_name(fd, |name, _| {
        found = counts(name);
        !found
    })?;
    Ok(found)
}

/// Calls `each` for every name from the descriptor's current offset until it returns false.
fn for_each_name(fd: impl AsFd, mut each: impl FnMut(&CStr, FileType) -> bool) -> io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut iter = rustix::fs::RawDir::new(fd, buf.spare_capacity_mut());
    while let Some(entry) = iter.next() {
        let entry = entry?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        if !each(name, entry.file_type()) {
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

/// A temporary file in REPLICA that is unlinked unless it was renamed into place.
struct TempFile<'a> {
    dir: BorrowedFd<'a>,
    name: CString,
    live: bool,
}

impl Drop for TempFile<'_> {
    fn drop(&mut self) {
        if self.live {
            let _ = rustix::fs::unlinkat(self.dir, &self.name, AtFlags::empty());
        }
    }
}

fn read_only_nofollow() -> OFlags {
    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC
}

/// Opens a SOURCE file for reading without following a link and without blocking on a
/// FIFO swapped in since it was statted; skips atime updates where allowed.
fn open_source_file(dirfd: BorrowedFd<'_>, name: &CStr) -> io::Result<File> {
    let flags = read_only_nofollow();
    let fd = match rustix::fs::openat(dirfd, name, flags | OFlags::NOATIME, Mode::empty()) {
        Err(Errno::PERM) => rustix::fs::openat(dirfd, name, flags, Mode::empty())?,
        other => other?,
    };
    Ok(File::from(fd))
}

/// Copies the SOURCE file `name` in `src_dir` to the same name in `dst_dir`: content to a
/// temporary name, then owner, mode and mtime on the open descriptor, then one rename.
/// If the source moved during the copy (size, mtime, ctime or inode), the copy is
/// discarded. Returns the bytes copied.
pub fn copy_file(
    src_dir: BorrowedFd<'_>,
    dst_dir: BorrowedFd<'_>,
    name: &CStr,
    ctx: &CopyContext<'_>,
) -> Result<u64, EntryErrorKind> {
    let src = open_source_file(src_dir, name)?;
    let before = Entry::stat_fd(&src)?;
    if before.kind != Kind::File {
        return Err(EntryErrorKind::ChangedDuringCopy);
    }
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut temp = TempFile { dir: dst_dir, name: ctx.temp_names.next(), live: false };
    let create = || rustix::fs::openat(dst_dir, &temp.name, flags, Mode::from_raw_mode(0o600));
    let tmp = File::from(in_writable_dir(dst_dir, create)?);
    temp.live = true;

    let copied = copy_content(&src, &tmp, &before, ctx.caps, ctx.cancelled)?;
    let after = Entry::stat_fd(&src)?;
    if !after.unchanged_since(&before) || copied != before.size {
        return Err(EntryErrorKind::ChangedDuringCopy);
    }
    if ctx.opts.verify {
        // Re-read what landed on disk, through a fresh read-only descriptor.
        let written = rustix::fs::openat(dst_dir, &temp.name, read_only_nofollow(), Mode::empty())?;
        verify_copy(&src, &written, &before, ctx.md5_cache, ctx.cancelled)?;
    }
    if ctx.opts.fsync {
        rustix::fs::fdatasync(&tmp)?;
    }
    set_attrs_fd(&tmp, &before, AttrDiff::all(ctx.opts.chown))?;
    rename_into_place(dst_dir, &temp.name, name)?;
    temp.live = false;
    if ctx.opts.fsync {
        rustix::fs::fsync(dst_dir)?;
    }
    Ok(copied)
}

/// Copies all bytes of `src` into the empty `tmp`: a reflink where the filesystem can,
/// holes kept for sparse files, otherwise the kernel's copy_file_range (via `io::copy`) in
/// chunks, checking for cancellation between chunks.
fn copy_content(
    src: &File,
    tmp: &File,
    before: &Entry,
    caps: &CopyCaps,
    cancelled: &dyn Fn() -> bool,
) -> Result<u64, EntryErrorKind> {
    if before.size == 0 {
        return Ok(0);
    }
    if !caps.no_reflink.load(Ordering::Relaxed) {
        match rustix::fs::ioctl_ficlone(tmp, src) {
            Ok(()) => return Ok(Entry::stat_fd(tmp)?.size),
            // Not supported here (ext4, tmpfs, another filesystem): stop asking.
            Err(Errno::OPNOTSUPP | Errno::XDEV | Errno::INVAL | Errno::NOTTY | Errno::PERM) => {
                caps.no_reflink.store(true, Ordering::Relaxed)
            }
            Err(_) => {}
        }
    }
    if before.looks_sparse() {
        copy_sparse(src, tmp, before.size, caps, cancelled)
    } else {
        // Up to the size seen at open: no extra call to find EOF. A file that grew is
        // caught by the check after the copy.
        copy_range(src, tmp, before.size, caps, cancelled)
    }
}

/// Copies from the current offsets of `src` and `tmp`, at most `limit` bytes or to EOF,
/// in chunks so cancellation is noticed. Calls copy_file_range directly (std's `io::copy`
/// would first stat both files, two syscalls per file); where the kernel cannot do it
/// (across filesystems on older kernels, special filesystems) `io::copy` takes over with
/// sendfile or read/write.
fn copy_range(
    src: &File,
    tmp: &File,
    limit: u64,
    caps: &CopyCaps,
    cancelled: &dyn Fn() -> bool,
) -> Result<u64, EntryErrorKind> {
    let mut writer = tmp;
    let mut total = 0u64;
    while total < limit {
        if cancelled() {
            return Err(EntryErrorKind::Cancelled);
        }
        let chunk = COPY_CHUNK.min(limit - total);
        let n = if caps.no_copy_range.load(Ordering::Relaxed) {
            io::copy(&mut src.take(chunk), &mut writer)?
        } else {
            match rustix::fs::copy_file_range(src, None, tmp, None, chunk as usize) {
                Ok(n) => n as u64,
                Err(Errno::XDEV | Errno::NOSYS | Errno::OPNOTSUPP) => {
                    caps.no_copy_range.store(true, Ordering::Relaxed);
                    continue;
                }
                Err(Errno::INVAL) => io::copy(&mut src.take(chunk), &mut writer)?,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        if n == 0 {
            break;
        }
        total += n;
    }
    Ok(total)
}

/// Copies only the data segments of a sparse file (SEEK_DATA/SEEK_HOLE), then sets the
/// length, so holes stay holes in REPLICA.
fn copy_sparse(
    src: &File,
    tmp: &File,
    size: u64,
    caps: &CopyCaps,
    cancelled: &dyn Fn() -> bool,
) -> Result<u64, EntryErrorKind> {
    use rustix::fs::{SeekFrom, seek};
    let mut offset = 0u64;
    while offset < size {
        let data = match seek(src, SeekFrom::Data(offset)) {
            Ok(d) => d,
            Err(Errno::NXIO) => break, // only a hole remains
            Err(e) => return Err(e.into()),
        };
        let hole = seek(src, SeekFrom::Hole(data))?;
        seek(src, SeekFrom::Start(data))?;
        seek(tmp, SeekFrom::Start(data))?;
        let n = copy_range(src, tmp, hole - data, caps, cancelled)?;
        offset = data + n;
        if n < hole - data {
            break; // the file shrank; the after-check will notice
        }
    }
    rustix::fs::ftruncate(tmp, size)?;
    Ok(size)
}

/// `--verify`: the copy's MD5 must equal the source's.
fn verify_copy(
    src: &File,
    tmp: &OwnedFd,
    src_entry: &Entry,
    md5_cache: Option<&Md5Cache>,
    cancelled: &dyn Fn() -> bool,
) -> Result<(), EntryErrorKind> {
    let source_md5 = match md5_cache {
        Some(cache) => cache.md5(src, src_entry, cancelled)?,
        None => checksum::md5_fd(src, cancelled)?,
    };
    let replica_md5 = checksum::md5_fd(tmp, cancelled)?;
    if source_md5 != replica_md5 {
        return Err(EntryErrorKind::VerifyMismatch {
            source_md5: checksum::hex(&source_md5),
            replica_md5: checksum::hex(&replica_md5),
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Symlinks, FIFOs, devices
// ---------------------------------------------------------------------------------------

/// Creates (or atomically replaces a non-directory with) a symlink `name -> target` with
/// the source's owner and mtime.
pub fn make_symlink(
    dirfd: BorrowedFd<'_>,
    name: &CStr,
    target: &CStr,
    src: &Entry,
    chown: bool,
    temp_names: &TempNames,
) -> io::Result<()> {
    let mut temp = TempFile { dir: dirfd, name: temp_names.next(), live: false };
    in_writable_dir(dirfd, || rustix::fs::symlinkat(target, dirfd, &temp.name))?;
    temp.live = true;
    set_attrs_at(dirfd, &temp.name, Kind::Symlink, src, AttrDiff::all(chown))?;
    rename_into_place(dirfd, &temp.name, name)?;
    temp.live = false;
    Ok(())
}

/// Creates (or atomically replaces a non-directory with) a FIFO or device node like `src`.
pub fn make_special(
    dirfd: BorrowedFd<'_>,
    name: &CStr,
    src: &Entry,
    chown: bool,
    temp_names: &TempNames,
) -> io::Result<()> {
    let file_type = match src.kind {
        Kind::Fifo => FileType::Fifo,
        Kind::CharDevice => FileType::CharacterDevice,
        Kind::BlockDevice => FileType::BlockDevice,
        _ => return Err(io::Error::from(io::ErrorKind::InvalidInput)),
    };
    let mut temp = TempFile { dir: dirfd, name: temp_names.next(), live: false };
    let mode = Mode::from_raw_mode(0o600);
    in_writable_dir(dirfd, || rustix::fs::mknodat(dirfd, &temp.name, file_type, mode, src.rdev))?;
    temp.live = true;
    set_attrs_at(dirfd, &temp.name, src.kind, src, AttrDiff::all(chown))?;
    rename_into_place(dirfd, &temp.name, name)?;
    temp.live = false;
    Ok(())
}

/// The target of the symlink `name` in `dirfd`, raw bytes.
pub fn read_link_at(dirfd: impl AsFd, name: &CStr) -> io::Result<CString> {
    Ok(rustix::fs::readlinkat(dirfd, name, Vec::new())?)
}

// ---------------------------------------------------------------------------------------
// Attributes
// ---------------------------------------------------------------------------------------

fn timestamps(mtime: Time) -> Timestamps {
    Timestamps {
        last_access: Timespec { tv_sec: 0, tv_nsec: rustix::fs::UTIME_OMIT },
        last_modification: Timespec { tv_sec: mtime.sec, tv_nsec: i64::from(mtime.nsec) },
    }
}

/// Whether `diff` needs a chmod: chown clears setuid/setgid, so a chown of an entry
/// with those bits needs its mode set again.
fn needs_chmod(src: &Entry, diff: AttrDiff) -> bool {
    src.kind.has_mode() && (diff.mode || (diff.owner && src.mode & 0o6000 != 0))
}

/// Sets owner, then mode (chown clears setuid), then mtime on an open descriptor.
pub fn set_attrs_fd(fd: impl AsFd, src: &Entry, diff: AttrDiff) -> io::Result<()> {
    let fd = fd.as_fd();
    if diff.owner {
        rustix::fs::fchown(fd, Some(uid(src.uid)), Some(gid(src.gid)))?;
    }
    if needs_chmod(src, diff) {
        rustix::fs::fchmod(fd, Mode::from_raw_mode(src.mode))?;
    }
    if diff.mtime {
        rustix::fs::futimens(fd, &timestamps(src.mtime))?;
    }
    Ok(())
}

/// Sets owner, mode and mtime of `name` in `dirfd` without following it if it is a link.
/// `kind` is the replica entry's current type.
pub fn set_attrs_at(
    dirfd: BorrowedFd<'_>,
    name: &CStr,
    kind: Kind,
    src: &Entry,
    diff: AttrDiff,
) -> io::Result<()> {
    if diff.owner {
        let flags = AtFlags::SYMLINK_NOFOLLOW;
        rustix::fs::chownat(dirfd, name, Some(uid(src.uid)), Some(gid(src.gid)), flags)?;
    }
    if kind != Kind::Symlink && needs_chmod(src, diff) {
        chmod_nofollow(dirfd, name, kind, src.mode)?;
    }
    if diff.mtime {
        rustix::fs::utimensat(dirfd, name, &timestamps(src.mtime), AtFlags::SYMLINK_NOFOLLOW)?;
    }
    Ok(())
}

/// chmod without following a link: through a descriptor opened with O_NOFOLLOW where
/// opening is harmless (files, directories); by name for FIFOs and device nodes (opening
/// one can have side effects; its type was just checked by statx) and when the entry
/// cannot be opened.
fn chmod_nofollow(dirfd: BorrowedFd<'_>, name: &CStr, kind: Kind, mode: u32) -> io::Result<()> {
    let mode = Mode::from_raw_mode(mode);
    // Opening a FIFO, even non-blocking, can wake a writer waiting on it: FIFOs go by name.
    if matches!(kind, Kind::File | Kind::Dir) {
        let mut flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        if kind == Kind::Dir {
            flags |= OFlags::DIRECTORY;
        }
        match rustix::fs::openat(dirfd, name, flags, Mode::empty()) {
            Ok(fd) => return Ok(rustix::fs::fchmod(&fd, mode)?),
            Err(Errno::ACCESS) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(rustix::fs::chmodat(dirfd, name, mode, AtFlags::empty())?)
}

fn uid(raw: u32) -> rustix::fs::Uid {
    rustix::fs::Uid::from_raw(raw)
}

fn gid(raw: u32) -> rustix::fs::Gid {
    rustix::fs::Gid::from_raw(raw)
}

// ---------------------------------------------------------------------------------------
// Removal and rename
// ---------------------------------------------------------------------------------------

/// Removes the non-directory `name` from `dirfd`.
pub fn remove_file(dirfd: impl AsFd, name: &CStr) -> io::Result<()> {
    Ok(rustix::fs::unlinkat(dirfd, name, AtFlags::empty())?)
}

/// Removes the directory `name` and everything under it, depth first with an explicit
/// stack (no recursion, fd-relative, so depth and path length do not matter). Returns the
/// number of entries that were under it.
pub fn remove_tree(dirfd: BorrowedFd<'_>, name: &CStr) -> io::Result<u64> {
    struct Frame {
        fd: OwnedFd,
        name: CString,
        subdirs: Vec<CString>,
    }
    let mut removed = 0u64;
    let root = open_dir_at(dirfd, name)?;
    let subdirs = empty_dir_of_files(&root, &mut removed)?;
    let mut stack = vec![Frame { fd: root, name: name.to_owned(), subdirs }];
    while let Some(top) = stack.last_mut() {
        if let Some(sub) = top.subdirs.pop() {
            let fd = open_dir_at(&top.fd, &sub)?;
            let subdirs = empty_dir_of_files(&fd, &mut removed)?;
            stack.push(Frame { fd, name: sub, subdirs });
            continue;
        }
        let Some(done) = stack.pop() else { break };
        let parent = stack.last().map_or(dirfd, |f| f.fd.as_fd());
        unlink_dir(parent, &done.name)?;
        if !stack.is_empty() {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Unlinks every non-directory in `dir` and returns the names of its subdirectories.
fn empty_dir_of_files(dir: &OwnedFd, removed: &mut u64) -> io::Result<Vec<CString>> {
    let mut subdirs = Vec::new();
    for item in list_dir(dir)? {
        let is_dir = match item.kind_hint {
            FileType::Directory => true,
            FileType::Unknown => {
                Entry::stat_at(dir, &item.name)?.is_some_and(|e| e.kind == Kind::Dir)
            }
            _ => false,
        };
        if is_dir {
            subdirs.push(item.name);
        } else {
            unlink_in(dir, &item.name, AtFlags::empty())?;
            *removed += 1;
        }
    }
    Ok(subdirs)
}

fn unlink_dir(parent: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    unlink_in(parent, name, AtFlags::REMOVEDIR)
}

fn unlink_in(dir: impl AsFd, name: &CStr, flags: AtFlags) -> io::Result<()> {
    let dir = dir.as_fd();
    in_writable_dir(dir, || rustix::fs::unlinkat(dir, name, flags))
}

/// Runs `op`, which changes the directory `dir`. Without privileges, a replica directory
/// whose SOURCE mode is read-only refuses that (EACCES): make it writable for its owner
/// and try once more, as rsync does. The directory's mode is put back when it is
/// finalized (its attributes are always set after its children are done).
fn in_writable_dir<T>(
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

/// Renames a finished temporary entry over `name` in the same directory (atomic).
fn rename_into_place(dir: BorrowedFd<'_>, temp: &CStr, name: &CStr) -> io::Result<()> {
    in_writable_dir(dir, || rustix::fs::renameat(dir, temp, dir, name))
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

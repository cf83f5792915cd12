//! Copying one file into REPLICA: content to a fresh temporary name (reflink, holes kept,
//! copy_file_range in chunks that notice cancellation), a check that the source did not
//! move meanwhile, owner/mode/mtime and extended attributes on the open descriptor, then
//! one rename into place.
//! Knows nothing of when a copy is needed.

use std::ffi::CStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use super::attrs::set_attrs_fd;
use super::xattrs::{Handle, XattrSupport, Xattrs};
use super::{TempFile, TempNames, in_writable_dir};
use crate::checksum::{self, Md5Cache};
use crate::entry::{AttrDiff, Entry, Kind};
use crate::error::EntryErrorKind;

/// How many bytes are copied between two checks for cancellation.
/// 8 MiB: a slow disk still sees a stop request within a fraction of a second.
const COPY_CHUNK: u64 = 8 * 1024 * 1024;

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
    /// Extended attributes and ACLs are mirrored, as far as REPLICA takes them.
    pub xattrs: Option<&'a XattrSupport>,
}

/// What the copy path learned about the filesystems, so a failing probe is not repeated
/// for every file.
#[derive(Default)]
pub struct CopyCaps {
    no_reflink: AtomicBool,
    no_copy_range: AtomicBool,
}

fn read_only_nofollow() -> OFlags {
    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC
}

/// Opens a SOURCE file for reading without following a link and without blocking on a
/// FIFO swapped in since it was statted; skips atime updates where allowed.
pub fn open_source_file(dirfd: BorrowedFd<'_>, name: &CStr) -> io::Result<File> {
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
    let src = open_source_file(src_dir, name).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOENT) => EntryErrorKind::Vanished(e),
        _ => EntryErrorKind::Io(e),
    })?;
    let before = Entry::stat_fd(&src)?;
    if before.kind != Kind::File {
        return Err(EntryErrorKind::ChangedDuringCopy);
    }
    // Read-write so `--verify` re-reads the copy through this very descriptor: opening the
    // temporary name again could open whatever a stranger renamed onto it meanwhile.
    let flags = OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut temp = TempFile::new(dst_dir, ctx.temp_names);
    let create = || rustix::fs::openat(dst_dir, temp.name(), flags, Mode::from_raw_mode(0o600));
    let tmp = File::from(in_writable_dir(dst_dir, create)?);
    temp.created();

    let copied = copy_content(&src, &tmp, &before, ctx.caps, ctx.cancelled)?;
    // Read before the after-check: an attribute changed meanwhile moves the ctime.
    let xattrs = ctx.xattrs.map(|_| Xattrs::read(Handle::Fd(src.as_fd()))).transpose()?;
    let after = Entry::stat_fd(&src)?;
    if !after.unchanged_since(&before) || copied != before.size {
        return Err(EntryErrorKind::ChangedDuringCopy);
    }
    if ctx.opts.verify {
        match verify_copy(&src, &tmp, &before, ctx.md5_cache, ctx.cancelled) {
            // The source itself moved on since the copy was checked: retry, not a mismatch.
            Err(EntryErrorKind::VerifyMismatch { .. })
                if !Entry::stat_fd(&src)?.unchanged_since(&before) =>
            {
                return Err(EntryErrorKind::ChangedDuringCopy);
            }
            other => other?,
        }
    }
    if ctx.opts.fsync {
        rustix::fs::fdatasync(&tmp)?;
    }
    let all = AttrDiff::all(ctx.opts.chown);
    set_attrs_fd(&tmp, &before, AttrDiff { owner: all.owner, ..AttrDiff::default() })?;
    // After chown (which drops `security.capability` and setuid bits), before the rename:
    // the file never shows under its name without them. The temporary file may have
    // inherited a default ACL or a label: those go unless SOURCE has them. Before the
    // mode: user.* attributes need write permission, which a read-only mode takes away
    // (and SOURCE's mode, set after an access ACL, agrees with its mask).
    if let (Some(want), Some(support)) = (&xattrs, ctx.xattrs) {
        let have = Xattrs::read(Handle::Fd(tmp.as_fd()))?;
        want.apply(Handle::Fd(tmp.as_fd()), &have, support)?;
    }
    set_attrs_fd(&tmp, &before, AttrDiff { owner: false, ..all })?;
    temp.rename_into_place(name)?;
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
    tmp: &File,
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

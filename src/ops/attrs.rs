//! Setting owner, mode and mtime on REPLICA entries without ever resolving a name that a
//! stranger could have swapped. An entry named in a directory is first pinned with an
//! `O_PATH|O_NOFOLLOW` descriptor (no side effects, even on a FIFO or a device), checked to
//! still be the very inode that was decided on, and changed only through that descriptor
//! (extended attributes and ACLs included).
//! Knows nothing of when attributes need setting.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;

use super::xattrs::{Handle, XattrSupport, Xattrs};
use crate::entry::{AttrDiff, Entry, Kind, Time};

/// What the entry at a name must still be when its attributes are changed.
#[derive(Clone, Copy, Debug)]
pub enum Expect<'a> {
    /// The entry that was statted when the change was decided (same device, inode, type),
    /// with no second name.
    Same(&'a Entry),
    /// Like `Same`, for a file of a link group: as many names as it had when decided (no
    /// more than SOURCE's group, or the decision would have replaced it).
    Linked(&'a Entry),
    /// An entry this process has just created under a temporary name: of this type, owned
    /// by this process's user.
    Fresh(Kind),
    /// The REPLICA file of a link group that is about to get one more name: this regular
    /// file (device, inode), with fewer names than SOURCE's group has.
    LinkTarget(&'a Entry, u64),
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

/// Sets owner, mode and mtime of `name` in `dirfd` like `src`, after pinning the entry and
/// checking it is still what `expect` says. An entry swapped in meanwhile (a symlink to a
/// file outside REPLICA, a hard link to one) fails with `ESTALE` and is left alone.
pub fn set_attrs_at(
    dirfd: BorrowedFd<'_>,
    name: &CStr,
    expect: Expect<'_>,
    src: &Entry,
    diff: AttrDiff,
    xattrs: Option<(&Xattrs, &XattrSupport)>,
) -> io::Result<()> {
    if diff.is_empty() {
        return Ok(());
    }
    let pinned = pin(dirfd, name, expect)?;
    if diff.owner {
        let flags = AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW;
        rustix::fs::chownat(&pinned.fd, c"", Some(uid(src.uid)), Some(gid(src.gid)), flags)?;
    }
    let mut chmod = pinned.kind != Kind::Symlink && needs_chmod(src, diff);
    // After chown, which drops `security.capability`; before the mode, which may take away
    // the write permission user.* attributes need (an access ACL and the mode's group bits
    // agree in SOURCE, so setting the mode after the ACL leaves both equal). A replica
    // entry that is read-only already is made writable to its owner meanwhile.
    if let Some((want, support)) = xattrs.filter(|_| diff.xattrs || diff.acl) {
        let writable = pinned.mode & 0o200 != 0 || rustix::process::geteuid().is_root();
        if pinned.kind != Kind::Symlink && !writable {
            chmod_pinned(&pinned.fd, pinned.mode | 0o200)?;
            chmod = true;
        }
        // Through the pinned descriptor, symlinks included: the name may have been swapped
        // since the pin (for a hard link to a file outside REPLICA), and the descriptor's
        // /proc link lands on the symlink itself, never on what it points to.
        let handle = Handle::Pinned(pinned.fd.as_fd());
        let have = Xattrs::read(handle)?;
        if pinned.kind == Kind::File && want.grants_security(&have, support) {
            return Err(io::Error::new(
                io::ErrorKind::StaleNetworkFileHandle,
                "replica file lacks a security attribute (a capability, a label) SOURCE has; given only to a fresh copy",
            ));
        }
        let applied = want.apply(handle, &have, support);
        if chmod {
            chmod_pinned(&pinned.fd, src.mode)?;
        }
        applied?;
    } else if chmod {
        chmod_pinned(&pinned.fd, src.mode)?;
    }
    if diff.mtime {
        utimes_pinned(&pinned, dirfd, name, src.mtime)?;
    }
    Ok(())
}

/// A descriptor that refers to one inode for good, whatever later happens to its name.
pub(super) struct Pinned {
    pub(super) fd: OwnedFd,
    kind: Kind,
    mode: u32,
}

/// Opens `name` as `O_PATH|O_NOFOLLOW` (which never opens the file itself: no FIFO
/// handshake, no device side effect, no permission needed) and checks what it refers to.
pub(super) fn pin(dirfd: BorrowedFd<'_>, name: &CStr, expect: Expect<'_>) -> io::Result<Pinned> {
    let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dirfd, name, flags, Mode::empty())?;
    let now = Entry::stat_fd(&fd)?;
    let same = |was: &Entry| now.kind == was.kind && now.dev == was.dev && now.ino == was.ino;
    let (expected, names) = match expect {
        Expect::Same(was) => (same(was), 1),
        Expect::Linked(was) => (same(was), was.nlink.max(1)),
        Expect::Fresh(kind) => {
            (now.kind == kind && now.uid == rustix::process::geteuid().as_raw(), 1)
        }
        Expect::LinkTarget(was, group) => {
            (same(was) && now.kind == Kind::File, group.saturating_sub(1))
        }
    };
    // More names than the decision (or SOURCE's link group) accounts for: the inode may
    // also live outside REPLICA, so it is never changed or linked in place.
    let private = now.kind == Kind::Dir || now.nlink <= names;
    if !expected || !private {
        return Err(io::Error::new(
            io::ErrorKind::StaleNetworkFileHandle,
            "replica entry was replaced or linked elsewhere while being fixed; left alone",
        ));
    }
    Ok(Pinned { fd, kind: now.kind, mode: now.mode })
}

/// Opens the replica file `name` for reading, but only after pinning it and checking it is
/// what `expect` says: the open itself goes through the pinned descriptor's
/// `/proc/self/fd` link, so no name is resolved twice.
pub fn open_pinned_for_reading(
    dirfd: BorrowedFd<'_>,
    name: &CStr,
    expect: Expect<'_>,
) -> io::Result<OwnedFd> {
    let pinned = pin(dirfd, name, expect)?;
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC;
    Ok(rustix::fs::open(proc_fd_path(&pinned.fd), flags, Mode::empty())?)
}

/// chmod through a pinned descriptor: `fchmodat2(fd, "", AT_EMPTY_PATH)` (Linux 6.6+),
/// else through the descriptor's `/proc/self/fd` link, which names the inode itself.
fn chmod_pinned(fd: &OwnedFd, mode: u32) -> io::Result<()> {
    match fchmodat2_empty_path(fd.as_fd(), mode) {
        // ENOSYS: older kernel; EPERM: a seccomp filter that predates the call (a genuine
        // EPERM comes back again from the fallback).
        Err(Errno::NOSYS | Errno::PERM | Errno::INVAL) => {
            Ok(rustix::fs::chmod(proc_fd_path(fd), Mode::from_raw_mode(mode))?)
        }
        other => Ok(other?),
    }
}

#[allow(unsafe_code)]
fn fchmodat2_empty_path(fd: BorrowedFd<'_>, mode: u32) -> rustix::io::Result<()> {
    // SAFETY: fchmodat2 reads only its arguments: a live descriptor borrowed for the call,
    // a NUL-terminated empty string, and two integers. rustix does not wrap it yet.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_fchmodat2,
            fd.as_raw_fd(),
            c"".as_ptr(),
            mode as libc::c_uint,
            libc::AT_EMPTY_PATH,
        )
    };
    match ret {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()
            .raw_os_error()
            .map_or(Errno::IO, Errno::from_raw_os_error)),
    }
}

/// utimensat through a pinned descriptor (`AT_EMPTY_PATH`). On kernels that refuse that,
/// files and directories go through `/proc/self/fd`; a symlink, which that link would
/// follow, is set by name with `AT_SYMLINK_NOFOLLOW` (its inode was just checked).
fn utimes_pinned(
    pinned: &Pinned,
    dirfd: BorrowedFd<'_>,
    name: &CStr,
    mtime: Time,
) -> io::Result<()> {
    let times = timestamps(mtime);
    let flags = AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW;
    match rustix::fs::utimensat(&pinned.fd, c"", &times, flags) {
        Err(Errno::INVAL | Errno::NOENT) if pinned.kind == Kind::Symlink => {
            Ok(rustix::fs::utimensat(dirfd, name, &times, AtFlags::SYMLINK_NOFOLLOW)?)
        }
        Err(Errno::INVAL | Errno::NOENT) => {
            let path = proc_fd_path(&pinned.fd);
            Ok(rustix::fs::utimensat(rustix::fs::CWD, &path, &times, AtFlags::empty())?)
        }
        other => Ok(other?),
    }
}

pub(super) fn proc_fd_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

pub(super) fn timestamps(mtime: Time) -> Timestamps {
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

/// Makes a directory that its owner cannot open or list (mode 000, 0300, 0400 mirrored
/// from SOURCE) usable by its owner again, so it can be emptied and removed. Pinned like
/// any other change: a name swapped for a symlink is refused, not followed.
pub fn open_up_dir(dirfd: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dirfd, name, flags, Mode::empty())?;
    let mode = Entry::stat_fd(&fd)?.mode | 0o700;
    chmod_pinned(&fd, mode)
}

fn uid(raw: u32) -> rustix::fs::Uid {
    rustix::fs::Uid::from_raw(raw)
}

fn gid(raw: u32) -> rustix::fs::Gid {
    rustix::fs::Gid::from_raw(raw)
}

#[cfg(test)]
mod tests {
    //! The swap an attacker races for, made deterministic: the name is replaced between
    //! the statx that decided and the call that changes attributes.
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    struct Scene {
        _tmp: tempfile::TempDir,
        dir: OwnedFd,
        outside: std::path::PathBuf,
        base: std::path::PathBuf,
    }

    fn scene() -> Scene {
        let tmp = tempfile::tempdir().expect("temp dir");
        let base = tmp.path().to_path_buf();
        std::fs::create_dir(base.join("replica")).expect("mkdir");
        let outside = base.join("outside");
        std::fs::write(&outside, b"not replicad's").expect("write");
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let dir = rustix::fs::open(base.join("replica"), flags, Mode::empty()).expect("open");
        Scene { _tmp: tmp, dir, outside, base }
    }

    fn source_like(kind: Kind) -> Entry {
        let mut e = Entry::stat_fd(rustix::fs::CWD).expect("stat");
        e.kind = kind;
        e.mode = 0o4777;
        e.mtime = Time { sec: 1_000_000, nsec: 7 };
        e
    }

    fn outside_state(s: &Scene) -> (u32, i64, u32) {
        let m = std::fs::metadata(&s.outside).expect("stat outside");
        (m.mode() & 0o7777, m.mtime(), m.uid())
    }

    fn decided_then_swapped(s: &Scene, make: impl Fn(&std::path::Path)) -> Entry {
        let name = s.base.join("replica/x");
        make(&name);
        let decided = Entry::stat_at(&s.dir, c"x").expect("stat").expect("present");
        std::fs::remove_file(&name).expect("remove");
        std::os::unix::fs::symlink(&s.outside, &name).expect("symlink");
        decided
    }

    #[test]
    fn a_fifo_swapped_for_a_symlink_is_left_alone_and_nothing_outside_changes() {
        let s = scene();
        let before = outside_state(&s);
        let decided = decided_then_swapped(&s, |p| {
            rustix::fs::mknodat(
                rustix::fs::CWD,
                p,
                rustix::fs::FileType::Fifo,
                Mode::from_raw_mode(0o600),
                0,
            )
            .expect("mkfifo");
        });
        let src = source_like(Kind::Fifo);
        let err = set_attrs_at(
            s.dir.as_fd(),
            c"x",
            Expect::Same(&decided),
            &src,
            AttrDiff::all(true),
            None,
        )
        .expect_err("a swapped name must be refused");
        assert_eq!(err.kind(), io::ErrorKind::StaleNetworkFileHandle, "{err}");
        assert_eq!(outside_state(&s), before, "the file outside REPLICA changed");
    }

    #[test]
    fn a_file_swapped_for_a_symlink_is_left_alone() {
        let s = scene();
        let before = outside_state(&s);
        let decided = decided_then_swapped(&s, |p| std::fs::write(p, b"r").expect("write"));
        let src = source_like(Kind::File);
        assert!(
            set_attrs_at(
                s.dir.as_fd(),
                c"x",
                Expect::Same(&decided),
                &src,
                AttrDiff::all(true),
                None
            )
            .is_err()
        );
        assert_eq!(outside_state(&s), before, "the file outside REPLICA changed");
    }

    #[test]
    fn a_hard_link_to_a_file_outside_is_never_changed_in_place() {
        let s = scene();
        let before = outside_state(&s);
        std::fs::hard_link(&s.outside, s.base.join("replica/x")).expect("link");
        let decided = Entry::stat_at(&s.dir, c"x").expect("stat").expect("present");
        let src = source_like(Kind::File);
        let err = set_attrs_at(
            s.dir.as_fd(),
            c"x",
            Expect::Same(&decided),
            &src,
            AttrDiff::all(true),
            None,
        )
        .expect_err("a linked inode must be refused");
        assert_eq!(err.kind(), io::ErrorKind::StaleNetworkFileHandle, "{err}");
        assert_eq!(outside_state(&s), before, "the file outside REPLICA changed");
    }

    #[test]
    fn the_entry_decided_on_gets_every_attribute() {
        let s = scene();
        rustix::fs::mknodat(
            &s.dir,
            c"x",
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .expect("mkfifo");
        let decided = Entry::stat_at(&s.dir, c"x").expect("stat").expect("present");
        let mut src = source_like(Kind::Fifo);
        src.mode = 0o751;
        set_attrs_at(s.dir.as_fd(), c"x", Expect::Same(&decided), &src, AttrDiff::all(false), None)
            .expect("set");
        let now = Entry::stat_at(&s.dir, c"x").expect("stat").expect("present");
        assert_eq!((now.mode, now.mtime), (0o751, src.mtime));
    }

    #[test]
    fn a_symlink_swapped_after_the_pin_never_has_a_file_outside_lose_its_xattrs() {
        // The window between the pin and the attribute calls: a stranger exchanges the
        // symlink's name with a hard link to a file outside REPLICA, over and over.
        let s = scene();
        let user_ok = rustix::fs::setxattr(
            &s.outside,
            c"user.keep",
            b"mine",
            rustix::fs::XattrFlags::empty(),
        );
        if user_ok.is_err() {
            eprintln!("SKIP: no user.* attributes in {}", s.base.display());
            return;
        }
        std::os::unix::fs::symlink("target", s.base.join("replica/x")).expect("symlink");
        std::fs::hard_link(&s.outside, s.base.join("replica/v")).expect("link");
        let decided = Entry::stat_at(&s.dir, c"x").expect("stat").expect("present");
        let src = source_like(Kind::Symlink);
        let diff = AttrDiff { xattrs: true, ..AttrDiff::default() };
        let (want, support) = (Xattrs::none(), XattrSupport::default());
        let stop = std::sync::atomic::AtomicBool::new(false);
        let victim_keeps = || {
            let mut buf = [0u8; 16];
            rustix::fs::getxattr(&s.outside, c"user.keep", &mut buf).is_ok()
        };
        std::thread::scope(|scope| {
            scope.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = rustix::fs::renameat_with(
                        &s.dir,
                        c"x",
                        &s.dir,
                        c"v",
                        rustix::fs::RenameFlags::EXCHANGE,
                    );
                }
            });
            let started = std::time::Instant::now();
            while started.elapsed() < std::time::Duration::from_secs(2) && victim_keeps() {
                let expect = Expect::Same(&decided);
                let _ =
                    set_attrs_at(s.dir.as_fd(), c"x", expect, &src, diff, Some((&want, &support)));
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        assert!(victim_keeps(), "a file outside REPLICA lost an attribute through a swapped name");
    }
}

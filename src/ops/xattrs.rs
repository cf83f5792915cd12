//! Extended attributes and POSIX ACLs (which the kernel keeps as the `system.posix_acl_*`
//! attributes): read an entry's set without following a link, compare two sets, and make
//! a REPLICA entry's set equal to SOURCE's — through an open descriptor, a name in an open
//! directory (never followed), or a pinned `O_PATH` descriptor. A namespace REPLICA's
//! filesystem refuses is given up once, with one warning, not an error per entry.
//! Knows nothing of when attributes need mirroring.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::io::Errno;
use tracing::warn;

use super::xattr_sys as sys;

/// The attribute namespaces replicad mirrors; other `system.*` names (NFSv4 ACLs, ext4's
/// inline data) belong to their filesystem and are left alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Namespace {
    /// `user.*`: readable and writable by the file's owner.
    User,
    /// `trusted.*`: root only.
    Trusted,
    /// `security.*`: capabilities, SELinux/SMACK labels.
    Security,
    /// `system.posix_acl_access` and `system.posix_acl_default`.
    Acl,
}

impl Namespace {
    const ALL: [Namespace; 4] =
        [Namespace::User, Namespace::Trusted, Namespace::Security, Namespace::Acl];

    /// The namespace of an attribute name, `None` for names replicad does not mirror.
    pub fn of(name: &[u8]) -> Option<Namespace> {
        if name.starts_with(b"user.") {
            Some(Namespace::User)
        } else if name.starts_with(b"trusted.") {
            Some(Namespace::Trusted)
        } else if name.starts_with(b"security.") {
            Some(Namespace::Security)
        } else if name == b"system.posix_acl_access" || name == b"system.posix_acl_default" {
            Some(Namespace::Acl)
        } else {
            None
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    fn label(self) -> &'static str {
        match self {
            Namespace::User => "user.*",
            Namespace::Trusted => "trusted.*",
            Namespace::Security => "security.*",
            Namespace::Acl => "POSIX ACL",
        }
    }
}

/// One entry's mirrored attributes, sorted by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Xattrs {
    items: Vec<(CString, Vec<u8>)>,
}

/// How an entry's attributes are reached.
#[derive(Clone, Copy)]
pub enum Handle<'a> {
    /// A descriptor opened on the entry itself (a file being copied, an open directory).
    Fd(BorrowedFd<'a>),
    /// A name in an open directory; a symlink there is the entry, never followed.
    At(BorrowedFd<'a>, &'a CStr),
    /// An `O_PATH` descriptor that pins the entry (see `attrs`). The `*xattrat` calls
    /// refuse `O_PATH` descriptors (`EBADF`), so this goes through `/proc/self/fd/N`,
    /// which names the pinned inode itself (a pinned symlink too: the magic link lands on
    /// the symlink and is not followed further).
    Pinned(BorrowedFd<'a>),
}

/// Which kinds of attribute differ.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XattrChanges {
    /// Extended attributes (user, trusted, security).
    pub xattrs: bool,
    /// POSIX ACLs.
    pub acl: bool,
}

/// Namespaces REPLICA's filesystem (or this process's privileges) turned down: not
/// compared and not set again.
#[derive(Debug, Default)]
pub struct XattrSupport {
    refused: [AtomicBool; 4],
}

impl XattrSupport {
    /// Whether attributes of `ns` are still mirrored.
    pub fn usable(&self, ns: Namespace) -> bool {
        !self.refused[ns.index()].load(Ordering::Relaxed)
    }

    /// Gives `ns` up after REPLICA refused it; warns the first time.
    fn refuse(&self, ns: Namespace, error: &io::Error) {
        if !self.refused[ns.index()].swap(true, Ordering::Relaxed) {
            warn!(namespace = %ns.label(), error = %error, "the replica does not take these attributes (filesystem support or privileges); carrying on without them");
        }
    }

    /// The namespaces given up so far (for tests and the summary).
    pub fn refused(&self) -> Vec<Namespace> {
        Namespace::ALL.into_iter().filter(|ns| !self.usable(*ns)).collect()
    }
}

/// Kernels before 6.13 lack the `*xattrat` calls: remembered after the first `ENOSYS`.
static NO_XATTRAT: AtomicBool = AtomicBool::new(false);

/// The path fallback for kernels without `*xattrat`: `/proc/self/fd/N[/name]` names the
/// inode held by descriptor `N` (and, with a name, that name inside it, resolved once).
fn proc_path(fd: BorrowedFd<'_>, name: Option<&CStr>) -> CString {
    let mut bytes = format!("/proc/self/fd/{}", fd.as_raw_fd()).into_bytes();
    if let Some(name) = name {
        bytes.push(b'/');
        bytes.extend_from_slice(name.to_bytes());
    }
    // Built from a number and a C string: no interior NUL.
    CString::new(bytes).unwrap_or_default()
}

const NOFOLLOW: u32 = libc::AT_SYMLINK_NOFOLLOW as u32;

/// Runs the `*xattrat` form of a call, or its path form where the kernel lacks it.
fn either<A, T>(
    mut arg: A,
    at: impl FnOnce(&mut A) -> Result<T, Errno>,
    by_path: impl FnOnce(&mut A) -> Result<T, Errno>,
) -> Result<T, Errno> {
    if !NO_XATTRAT.load(Ordering::Relaxed) {
        match at(&mut arg) {
            Err(Errno::NOSYS) => NO_XATTRAT.store(true, Ordering::Relaxed),
            other => return other,
        }
    }
    by_path(&mut arg)
}

impl Handle<'_> {
    fn list(self, buf: &mut [u8]) -> Result<usize, Errno> {
        match self {
            Handle::Fd(fd) => {
                if buf.is_empty() {
                    rustix::fs::flistxattr_query(fd)
                } else {
                    rustix::fs::flistxattr(fd, buf)
                }
            }
            Handle::At(dir, name) => either(
                buf,
                |b| sys::list(dir, name, NOFOLLOW, b),
                |b| {
                    if b.is_empty() {
                        rustix::fs::llistxattr_query(proc_path(dir, Some(name)).as_c_str())
                    } else {
                        rustix::fs::llistxattr(proc_path(dir, Some(name)).as_c_str(), &mut **b)
                    }
                },
            ),
            Handle::Pinned(fd) => {
                if buf.is_empty() {
                    rustix::fs::listxattr_query(proc_path(fd, None).as_c_str())
                } else {
                    rustix::fs::listxattr(proc_path(fd, None).as_c_str(), buf)
                }
            }
        }
    }

    fn get(self, attr: &CStr, buf: &mut [u8]) -> Result<usize, Errno> {
        match self {
            Handle::Fd(fd) => {
                if buf.is_empty() {
                    rustix::fs::fgetxattr_query(fd, attr)
                } else {
                    rustix::fs::fgetxattr(fd, attr, buf)
                }
            }
            Handle::At(dir, name) => either(
                buf,
                |b| sys::get(dir, name, NOFOLLOW, attr, b),
                |b| {
                    if b.is_empty() {
                        rustix::fs::lgetxattr_query(proc_path(dir, Some(name)).as_c_str(), attr)
                    } else {
                        rustix::fs::lgetxattr(proc_path(dir, Some(name)).as_c_str(), attr, &mut **b)
                    }
                },
            ),
            Handle::Pinned(fd) => {
                if buf.is_empty() {
                    rustix::fs::getxattr_query(proc_path(fd, None).as_c_str(), attr)
                } else {
                    rustix::fs::getxattr(proc_path(fd, None).as_c_str(), attr, buf)
                }
            }
        }
    }

    fn set(self, attr: &CStr, value: &[u8]) -> Result<(), Errno> {
        let flags = rustix::fs::XattrFlags::empty();
        match self {
            Handle::Fd(fd) => rustix::fs::fsetxattr(fd, attr, value, flags),
            Handle::At(dir, name) => either(
                (),
                |_| sys::set(dir, name, NOFOLLOW, attr, value),
                |_| {
                    rustix::fs::lsetxattr(proc_path(dir, Some(name)).as_c_str(), attr, value, flags)
                },
            ),
            Handle::Pinned(fd) => {
                rustix::fs::setxattr(proc_path(fd, None).as_c_str(), attr, value, flags)
            }
        }
    }

    fn remove(self, attr: &CStr) -> Result<(), Errno> {
        match self {
            Handle::Fd(fd) => rustix::fs::fremovexattr(fd, attr),
            Handle::At(dir, name) => either(
                (),
                |_| sys::remove(dir, name, NOFOLLOW, attr),
                |_| rustix::fs::lremovexattr(proc_path(dir, Some(name)).as_c_str(), attr),
            ),
            Handle::Pinned(fd) => rustix::fs::removexattr(proc_path(fd, None).as_c_str(), attr),
        }
    }
}

/// Calls `fill` with a buffer big enough for what it reads: a small one first (almost
/// every entry has no attributes or short ones), then the size the kernel asks for.
fn read_sized(fill: impl Fn(&mut [u8]) -> Result<usize, Errno>) -> Result<Vec<u8>, Errno> {
    let mut small = [0u8; 512];
    match fill(&mut small) {
        Ok(n) => return Ok(small[..n].to_vec()),
        Err(Errno::RANGE) => {}
        Err(e) => return Err(e),
    }
    // The attribute can grow between the size query and the read: ask again.
    for _ in 0..8 {
        let need = fill(&mut [])?;
        let mut buf = vec![0u8; need.max(1)];
        match fill(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(Errno::RANGE) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Errno::RANGE)
}

impl Xattrs {
    /// No attributes.
    pub fn none() -> Xattrs {
        Xattrs::default()
    }

    /// True if there are no mirrored attributes.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Reads every mirrored attribute of the entry. A filesystem without attribute
    /// support has none.
    pub fn read(handle: Handle<'_>) -> io::Result<Xattrs> {
        let mut small = [0u8; 256];
        let names = match handle.list(&mut small) {
            Ok(0) => return Ok(Xattrs::none()),
            Ok(n) => small[..n].to_vec(),
            Err(Errno::RANGE) => read_sized(|b| handle.list(b))?,
            Err(Errno::NOTSUP) => return Ok(Xattrs::none()),
            Err(e) => return Err(e.into()),
        };
        let mut items = Vec::new();
        for name in names.split(|b| *b == 0).filter(|n| Namespace::of(n).is_some()) {
            let Ok(name) = CString::new(name) else { continue };
            match read_sized(|b| handle.get(&name, b)) {
                Ok(value) => items.push((name, value)),
                // Removed between the listing and the read.
                Err(Errno::NODATA) => {}
                Err(e) => return Err(e.into()),
            }
        }
        items.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(Xattrs { items })
    }

    fn get(&self, name: &CStr) -> Option<&[u8]> {
        self.items
            .binary_search_by(|(n, _)| n.as_c_str().cmp(name))
            .ok()
            .map(|i| self.items[i].1.as_slice())
    }

    /// True if making REPLICA's set (`replica`) equal to `self` would give the entry a
    /// `security.*` attribute it lacks, or another value: a file capability, or a label
    /// that decides what executing the file may do (SELinux, SMACK64EXEC). A file's bytes
    /// may have been written by its owner since replicad copied them (a write drops the
    /// capability): such attributes are only ever given to a fresh copy, never in place.
    pub fn grants_security(&self, replica: &Xattrs, support: &XattrSupport) -> bool {
        support.usable(Namespace::Security)
            && self.items.iter().any(|(name, value)| {
                Namespace::of(name.to_bytes()) == Some(Namespace::Security)
                    && replica.get(name) != Some(value.as_slice())
            })
    }

    /// Which kinds differ between SOURCE's set (`self`) and REPLICA's, counting only
    /// namespaces REPLICA takes.
    pub fn changes(&self, replica: &Xattrs, support: &XattrSupport) -> XattrChanges {
        let mut changes = XattrChanges::default();
        let mut note = |name: &CStr| match Namespace::of(name.to_bytes()) {
            Some(ns) if !support.usable(ns) => {}
            Some(Namespace::Acl) => changes.acl = true,
            Some(_) => changes.xattrs = true,
            None => {}
        };
        for (name, value) in &self.items {
            if replica.get(name) != Some(value.as_slice()) {
                note(name);
            }
        }
        for (name, _) in &replica.items {
            if self.get(name).is_none() {
                note(name);
            }
        }
        changes
    }

    /// Makes the entry behind `handle`, whose attributes are `replica`, carry exactly
    /// `self`'s: sets what is missing or different, removes what SOURCE lacks. A namespace
    /// the filesystem or the process's privileges refuse is given up (one warning).
    pub fn apply(
        &self,
        handle: Handle<'_>,
        replica: &Xattrs,
        support: &XattrSupport,
    ) -> io::Result<()> {
        let outcome = |name: &CStr, result: Result<(), Errno>| -> io::Result<()> {
            let Some(ns) = Namespace::of(name.to_bytes()) else { return Ok(()) };
            match result {
                Ok(()) | Err(Errno::NODATA) => Ok(()),
                // The filesystem lacks the namespace, or (trusted.*, security.*) the process
                // the privilege. For user.* and ACLs, EPERM/EACCES is about this one entry
                // (another user's file, no write permission): its error, not a reason to
                // stop mirroring them everywhere.
                Err(Errno::NOTSUP) => {
                    support.refuse(ns, &io::Error::from(Errno::NOTSUP));
                    Ok(())
                }
                Err(e @ (Errno::PERM | Errno::ACCESS))
                    if matches!(ns, Namespace::Trusted | Namespace::Security) =>
                {
                    support.refuse(ns, &io::Error::from(e));
                    Ok(())
                }
                Err(e) => Err(io::Error::new(
                    io::Error::from(e).kind(),
                    format!("attribute {}: {}", name.to_string_lossy(), io::Error::from(e)),
                )),
            }
        };
        let usable =
            |name: &CStr| Namespace::of(name.to_bytes()).is_some_and(|ns| support.usable(ns));
        for (name, value) in &self.items {
            if usable(name) && replica.get(name) != Some(value.as_slice()) {
                outcome(name, handle.set(name, value))?;
            }
        }
        for (name, _) in &replica.items {
            if usable(name) && self.get(name).is_none() {
                outcome(name, handle.remove(name))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn set(items: &[(&str, &[u8])]) -> Xattrs {
        let mut items: Vec<_> =
            items.iter().map(|(n, v)| (CString::new(*n).expect("name"), v.to_vec())).collect();
        items.sort();
        Xattrs { items }
    }

    #[test]
    fn changes_are_told_apart_by_kind_and_skip_refused_namespaces() {
        let support = XattrSupport::default();
        let a = set(&[("user.a", b"1"), ("system.posix_acl_access", b"x")]);
        assert_eq!(a.changes(&a.clone(), &support), XattrChanges::default());
        let b = set(&[("user.a", b"2"), ("system.posix_acl_access", b"x")]);
        assert_eq!(a.changes(&b, &support), XattrChanges { xattrs: true, acl: false });
        let c = set(&[("user.a", b"1")]);
        assert_eq!(a.changes(&c, &support), XattrChanges { xattrs: false, acl: true });
        let extra = set(&[("user.a", b"1"), ("system.posix_acl_access", b"x"), ("trusted.t", b"")]);
        assert_eq!(a.changes(&extra, &support), XattrChanges { xattrs: true, acl: false });
        support.refuse(Namespace::User, &io::Error::from(Errno::NOTSUP));
        assert_eq!(a.changes(&b, &support), XattrChanges::default());
    }

    #[test]
    fn namespaces_other_than_the_mirrored_ones_are_ignored() {
        assert_eq!(Namespace::of(b"system.nfs4_acl"), None);
        assert_eq!(Namespace::of(b"system.posix_acl_default"), Some(Namespace::Acl));
        assert_eq!(Namespace::of(b"security.capability"), Some(Namespace::Security));
    }

    #[test]
    fn read_and_apply_round_trip_on_a_real_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, b"").expect("write");
        std::fs::write(&b, b"").expect("write");
        let fa = std::fs::File::open(&a).expect("open");
        let big = vec![7u8; 3000];
        if rustix::fs::fsetxattr(&fa, c"user.big", &big, rustix::fs::XattrFlags::empty()).is_err() {
            eprintln!("SKIP: no user.* attributes on {}", dir.path().display());
            return;
        }
        rustix::fs::fsetxattr(&fa, c"user.s", b"v", rustix::fs::XattrFlags::empty()).expect("set");
        let fb = std::fs::File::open(&b).expect("open");
        rustix::fs::fsetxattr(&fb, c"user.stale", b"x", rustix::fs::XattrFlags::empty())
            .expect("set");
        let src = Xattrs::read(Handle::Fd(fa.as_fd())).expect("read");
        assert_eq!(src.get(c"user.big"), Some(big.as_slice()), "a value past the small buffer");
        let dirfd = std::fs::File::open(dir.path()).expect("open dir");
        let at = Handle::At(dirfd.as_fd(), c"b");
        let before = Xattrs::read(at).expect("read");
        let support = XattrSupport::default();
        src.apply(at, &before, &support).expect("apply");
        assert_eq!(Xattrs::read(at).expect("read"), src);
        assert!(support.refused().is_empty());
    }

    #[test]
    fn only_security_attributes_added_or_changed_count_as_granted() {
        let support = XattrSupport::default();
        let cap = set(&[("security.capability", b"c"), ("user.a", b"1")]);
        let label = set(&[("security.selinux", b"exec_t")]);
        assert!(cap.grants_security(&set(&[("user.a", b"1")]), &support), "added");
        assert!(label.grants_security(&set(&[("security.selinux", b"user_t")]), &support));
        assert!(!cap.grants_security(&set(&[("security.capability", b"c")]), &support));
        assert!(!Xattrs::none().grants_security(&label, &support), "a removal is not a grant");
        support.refuse(Namespace::Security, &io::Error::from(Errno::NOTSUP));
        assert!(!cap.grants_security(&Xattrs::none(), &support));
    }
}

//! The local replica: a directory tree on a filesystem of this machine, changed only
//! through `ops` — every call relative to a directory descriptor opened with
//! `O_NOFOLLOW`, creations under a temporary name renamed into place, attributes set
//! through a descriptor pinned and re-checked against what the decision saw (`Expect`).
//! This file only adapts those primitives to the [`Replica`] seam and owns the state
//! they share (temporary names, what the filesystem refused); it adds no logic of its own,
//! so the safety arguments in `ops` hold unchanged.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use super::{Caps, Copying, Replica, Roots};
use crate::checksum::{Md5Cache, Md5Sum};
use crate::entry::{AttrDiff, Entry, MtimeStore};
use crate::error::{EntryErrorKind, GuardTrip};
use crate::guard::Guard;
use crate::ops::{
    self, CopyCaps, CopyOptions, DirItem, Expect, Handle, Making, Removal, Removed, TempNames,
    XattrSupport, Xattrs,
};
use crate::relpath::RelPath;

/// REPLICA as a local directory tree.
#[derive(Default)]
pub struct Local {
    /// This process's temporary names (in flight ones are not listed, nor removed).
    temp_names: TempNames,
    /// chown / fsync / verify for copies; chown for symlinks, FIFOs and devices too.
    copy: CopyOptions,
    /// What the filesystems were found not to support while copying.
    caps: CopyCaps,
    /// Attribute namespaces REPLICA turned down; `None` with `--no-xattrs`.
    xattrs: Option<XattrSupport>,
}

impl Local {
    /// A local replica written with `copy`'s options, mirroring xattrs when `xattrs`.
    pub fn new(copy: CopyOptions, xattrs: bool) -> Local {
        Local { copy, xattrs: xattrs.then(XattrSupport::default), ..Local::default() }
    }

    fn making<'a>(&'a self, xattrs: Option<&'a Xattrs>) -> Making<'a> {
        Making {
            chown: self.copy.chown,
            temp_names: &self.temp_names,
            xattrs: xattrs.zip(self.xattrs.as_ref()),
        }
    }
}

impl Replica for Local {
    type Dir = OwnedFd;

    fn caps(&self) -> Caps {
        Caps {
            hard_links: true,
            special_files: true,
            file_attrs_in_place: true,
            root_attrs: true,
            snapshot: false,
        }
    }

    fn xattrs(&self) -> Option<&XattrSupport> {
        self.xattrs.as_ref()
    }

    fn open_roots(
        &self,
        guard: &Guard,
        also: &dyn Fn(&OwnedFd) -> Result<(), GuardTrip>,
    ) -> Result<Roots<OwnedFd>, GuardTrip> {
        let roots = guard.open(&|name| self.temp_names.is_ours(name), |roots| {
            roots.dst.as_ref().map_or(Ok(()), also)
        })?;
        Ok(Roots { src: roots.src, dst: roots.dst })
    }

    fn probe(&self, root: &OwnedFd) -> io::Result<MtimeStore> {
        ops::probe_replica(root.as_fd(), &self.temp_names)
    }

    fn flush(&self, root: &OwnedFd) -> io::Result<()> {
        ops::sync_filesystem(root)
    }

    fn try_clone_dir(&self, dir: &OwnedFd) -> io::Result<OwnedFd> {
        dir.try_clone()
    }

    fn open_dir(&self, parent: &OwnedFd, name: &CStr) -> io::Result<OwnedFd> {
        ops::open_dir_at(parent, name)
    }

    fn list(&self, dir: &OwnedFd) -> io::Result<Vec<DirItem>> {
        let mut items = ops::list_dir(dir)?;
        items.retain(|i| !self.temp_names.is_ours(i.name.to_bytes()));
        Ok(items)
    }

    fn stat(&self, dir: &OwnedFd, name: &CStr) -> io::Result<Option<Entry>> {
        Entry::stat_at(dir, name)
    }

    fn stat_dir(&self, dir: &OwnedFd) -> io::Result<Entry> {
        Entry::stat_fd(dir)
    }

    fn read_link(&self, dir: &OwnedFd, name: &CStr) -> io::Result<CString> {
        ops::read_link_at(dir, name)
    }

    fn read_xattrs(&self, dir: &OwnedFd, name: Option<&CStr>) -> io::Result<Xattrs> {
        match name {
            Some(name) => Xattrs::read(Handle::At(dir.as_fd(), name)),
            None => Xattrs::read(Handle::Fd(dir.as_fd())),
        }
    }

    fn md5(
        &self,
        dir: &OwnedFd,
        name: &CStr,
        dst: &Entry,
        expect: Expect<'_>,
        cache: &Md5Cache,
        cancelled: &dyn Fn() -> bool,
    ) -> io::Result<Md5Sum> {
        // Opened only once it is known to be the file decided on (a device node renamed
        // onto the name must not even be opened).
        let fd = ops::open_pinned_for_reading(dir.as_fd(), name, expect)?;
        cache.md5(&fd, dst, cancelled)
    }

    fn make_dir(&self, parent: &OwnedFd, name: &CStr) -> io::Result<()> {
        ops::make_dir(parent, name)
    }

    fn copy_file(
        &self,
        src_dir: BorrowedFd<'_>,
        dir: &OwnedFd,
        name: &CStr,
        how: &Copying<'_>,
    ) -> Result<u64, EntryErrorKind> {
        let ctx = ops::CopyContext {
            temp_names: &self.temp_names,
            opts: self.copy,
            caps: &self.caps,
            md5_cache: how.md5_cache,
            cancelled: how.cancelled,
            xattrs: self.xattrs.as_ref(),
        };
        ops::copy_file(src_dir, dir.as_fd(), name, &ctx)
    }

    fn make_symlink(
        &self,
        dir: &OwnedFd,
        name: &CStr,
        target: &CStr,
        src: &Entry,
        xattrs: Option<&Xattrs>,
    ) -> io::Result<()> {
        ops::make_symlink(dir.as_fd(), name, target, src, &self.making(xattrs))
    }

    fn make_special(
        &self,
        dir: &OwnedFd,
        name: &CStr,
        src: &Entry,
        xattrs: Option<&Xattrs>,
    ) -> io::Result<()> {
        ops::make_special(dir.as_fd(), name, src, &self.making(xattrs))
    }

    fn set_attrs(
        &self,
        dir: &OwnedFd,
        name: &CStr,
        expect: Expect<'_>,
        src: &Entry,
        diff: AttrDiff,
        xattrs: Option<&Xattrs>,
    ) -> io::Result<()> {
        let xattrs = xattrs.zip(self.xattrs.as_ref());
        ops::set_attrs_at(dir.as_fd(), name, expect, src, diff, xattrs)
    }

    fn set_dir_attrs(&self, dir: &OwnedFd, src: &Entry, diff: AttrDiff) -> io::Result<()> {
        ops::set_attrs_fd(dir, src, diff)
    }

    fn set_dir_xattrs(&self, dir: &OwnedFd, want: &Xattrs, have: &Xattrs) -> io::Result<()> {
        match &self.xattrs {
            Some(support) => want.apply(Handle::Fd(dir.as_fd()), have, support),
            None => Ok(()),
        }
    }

    fn link(
        &self,
        target_dir: &OwnedFd,
        target_name: &CStr,
        target: &Entry,
        group: u64,
        dir: &OwnedFd,
        name: &CStr,
    ) -> io::Result<()> {
        ops::link_into_place(
            target_dir.as_fd(),
            target_name,
            target,
            group,
            dir.as_fd(),
            name,
            &self.temp_names,
        )
    }

    fn rename(
        &self,
        from_dir: &OwnedFd,
        from: &CStr,
        to_dir: &OwnedFd,
        to: &CStr,
    ) -> io::Result<()> {
        ops::rename_noreplace(from_dir, from, to_dir, to)
    }

    fn remove_file(&self, dir: &OwnedFd, name: &CStr) -> io::Result<()> {
        ops::remove_file(dir, name)
    }

    fn remove_tree(
        &self,
        dir: &OwnedFd,
        name: &CStr,
        rel: &RelPath,
        rules: &Removal<'_>,
    ) -> io::Result<Removed> {
        ops::remove_tree(dir.as_fd(), name, rel, rules)
    }
}

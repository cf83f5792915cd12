//! Small helpers for names and paths: relative paths built only when a message needs
//! one (`RelSource`, `LazyRel`), a name as a C string, and opening a directory path one
//! component at a time without following a symlink (SOURCE directly, REPLICA through the
//! replica side).

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;

use crate::ops;
use crate::relpath::RelPath;
use crate::replica::Replica;

use super::Engine;

/// Something that can produce the relative path for an error message, lazily (building
/// a path per entry would cost an allocation on every entry of every pass).
pub(super) trait RelSource {
    fn rel(&self) -> RelPath;
}

impl RelSource for RelPath {
    fn rel(&self) -> RelPath {
        self.clone()
    }
}

pub(super) struct LazyRel<'a, F: Fn() -> RelPath>(pub(super) &'a F);

impl<F: Fn() -> RelPath> RelSource for LazyRel<'_, F> {
    fn rel(&self) -> RelPath {
        (self.0)()
    }
}

pub(super) fn c_name(name: &OsStr) -> CString {
    // Names read from the filesystem never contain NUL.
    CString::new(name.as_bytes()).unwrap_or_default()
}

/// Opens `rel` below `root` one component at a time, never following a symlink (works for
/// paths longer than PATH_MAX).
pub(super) fn open_path_at(root: &OwnedFd, rel: &RelPath) -> io::Result<OwnedFd> {
    let mut fd = dup(root)?;
    for name in rel.names() {
        fd = ops::open_dir_at(&fd, &c_name(name))?;
    }
    Ok(fd)
}

pub(super) fn dup(fd: &OwnedFd) -> io::Result<OwnedFd> {
    fd.try_clone()
}

impl<R: Replica> Engine<R> {
    /// Opens the REPLICA directory `rel` below `root` one component at a time, through the
    /// replica side (never following a symlink).
    pub(super) fn open_replica_path(&self, root: &R::Dir, rel: &RelPath) -> io::Result<R::Dir> {
        let mut dir = self.replica.try_clone_dir(root)?;
        for name in rel.names() {
            dir = self.replica.open_dir(&dir, &c_name(name))?;
        }
        Ok(dir)
    }
}

//! Directories in flight: `DirNode` (one directory being reconciled, with a count of its
//! pending work and a link to its parent), how a directory job gets its descriptors
//! (`Opening`), opening or making a child directory on both sides, and setting a
//! directory's attributes once all its children are final (else every child write would
//! bump its mtime again).

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tracing::info;

use crate::entry::{Entry, Kind};
use crate::error::{EntryError, Op};
use crate::ops::{self, Handle, XattrChanges, Xattrs};
use crate::relpath::RelPath;
use crate::replica::Replica;

use super::Engine;
use super::names::RelSource;
use super::report::Counters;

/// How a directory job gets its descriptors.
pub(super) enum Opening<D> {
    /// Already open (the roots). The replica side may be absent in a dry run; `fresh`:
    /// REPLICA's root was made by this run.
    Root { src: OwnedFd, dst: Option<D>, fresh: bool },
    /// The directory `name`, opened from the parent's SOURCE descriptor (held only until
    /// the child is open, so descriptors stay proportional to depth, not to width).
    Child { src_parent: Arc<OwnedFd>, name: CString },
}

/// Where a directory sits. Children know only their name: a full path per queued
/// directory would make memory grow with the square of the depth.
pub(super) enum Place {
    /// The root, or the directory an event pointed into: its whole relative path.
    Top(RelPath),
    /// A child of its parent node.
    Child(CString),
}

/// A directory being reconciled: its attributes are set when `pending` (its listing plus
/// its queued children) drops to zero, then its parent is told. `D`: an open REPLICA
/// directory.
pub(super) struct DirNode<D> {
    pub(super) place: Place,
    pub(super) src: Entry,
    /// SOURCE's extended attributes, read when it was listed (`None`: not mirrored).
    pub(super) src_xattrs: Option<Xattrs>,
    /// This directory and every one above it are unchanged on both sides since the last
    /// clean pass (see `horizon`); never for event work, which starts below the root.
    pub(super) settled: bool,
    pub(super) dst_before: Option<Entry>,
    pub(super) dst_fd: Option<D>,
    pub(super) created: bool,
    pub(super) finalize: bool,
    pub(super) pending: AtomicUsize,
    pub(super) parent: Option<Arc<DirNode<D>>>,
}

/// The relative path of the directory `name` under `parent`.
pub(super) fn child_rel<D>(parent: Option<&DirNode<D>>, name: &CStr) -> RelPath {
    parent.map(DirNode::rel).unwrap_or_default().join(OsStr::from_bytes(name.to_bytes()))
}

impl<D> DirNode<D> {
    /// This directory's path, rebuilt from the names up the parent chain (only needed for
    /// log lines and errors).
    pub(super) fn rel(&self) -> RelPath {
        let mut names = Vec::new();
        let mut node = self;
        let base = loop {
            match &node.place {
                Place::Top(rel) => break rel.clone(),
                Place::Child(name) => {
                    names.push(name);
                    match node.parent.as_deref() {
                        Some(parent) => node = parent,
                        None => break RelPath::root(),
                    }
                }
            }
        };
        let mut path = base;
        for name in names.iter().rev() {
            path.push(OsStr::from_bytes(name.to_bytes()));
        }
        path
    }

    /// True for SOURCE's and REPLICA's root directory itself.
    pub(super) fn is_root(&self) -> bool {
        matches!(&self.place, Place::Top(rel) if rel.is_root())
    }

    /// A parent for event work below it: provides its replica descriptor; its attributes
    /// are handled by the caller.
    pub(super) fn detached(rel: RelPath, dst_fd: Option<D>) -> Arc<DirNode<D>> {
        let placeholder = Entry {
            kind: Kind::Dir,
            mode: 0,
            size: 0,
            blocks: 0,
            mtime: Default::default(),
            ctime: Default::default(),
            uid: 0,
            gid: 0,
            dev: 0,
            ino: 0,
            nlink: 1,
            rdev: 0,
            mount_root: false,
        };
        Arc::new(DirNode {
            place: Place::Top(rel),
            src: placeholder,
            src_xattrs: None,
            settled: false,
            dst_before: None,
            dst_fd,
            created: false,
            finalize: false,
            pending: AtomicUsize::new(1),
            parent: None,
        })
    }
}

impl<D> Drop for DirNode<D> {
    /// Unlinks the parent chain iteratively: a cancelled pass can drop a node 10,000 levels
    /// deep, and the default recursive drop would use one stack frame per level.
    fn drop(&mut self) {
        let mut next = self.parent.take();
        while let Some(parent) = next {
            next = match Arc::try_unwrap(parent) {
                Ok(mut node) => node.parent.take(),
                Err(_) => None,
            };
        }
    }
}

/// One unit of a node's work is done; finalize every ancestor whose work is now complete.
pub(super) fn complete<R: Replica>(
    mut node: Option<Arc<DirNode<R::Dir>>>,
    engine: &Engine<R>,
    counters: &Counters,
) {
    while let Some(n) = node {
        if n.pending.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        engine.finalize_dir(&n, counters);
        node = n.parent.clone();
    }
}

impl<R: Replica> Engine<R> {
    pub(super) fn open_child_dir(
        &self,
        src_parent: &OwnedFd,
        parent: Option<&DirNode<R::Dir>>,
        name: &CStr,
        rel: &dyn RelSource,
        dst: Option<&Entry>,
        counters: &Counters,
    ) -> Result<(OwnedFd, Option<R::Dir>, bool), EntryError> {
        let fail = |op, e| EntryError::io(op, &rel.rel(), e);
        let src_fd = ops::open_dir_at(src_parent, name)
            .map_err(|e| EntryError::source(Op::OpenDir, &rel.rel(), e))?;
        let dst_parent = parent.and_then(|p| p.dst_fd.as_ref());
        if let Some(existing) = dst.filter(|d| d.kind != Kind::Dir) {
            self.make_way(dst_parent, name, &rel.rel(), existing, counters)?;
        }
        let exists = dst.is_some_and(|d| d.kind == Kind::Dir);
        let logged_create = || {
            info!(action = %"create", path = %rel.rel(), kind = %"dir");
            Counters::bump(&counters.create, 1);
        };
        let Some(dst_parent) = dst_parent.filter(|_| !self.opts.dry_run) else {
            // Dry run: show what is below as if the directory were there and empty.
            if !exists {
                logged_create();
            }
            let dst_fd = if exists {
                dst_parent.and_then(|p| self.replica.open_dir(p, name).ok())
            } else {
                None
            };
            return Ok((src_fd, dst_fd, !exists));
        };
        let mut created = false;
        if !exists {
            match self.replica.make_dir(dst_parent, name) {
                Ok(()) => {
                    created = true;
                    logged_create();
                }
                // Another piece of work made it a moment ago (events on two children).
                Err(e)
                    if e.kind() == io::ErrorKind::AlreadyExists
                        && self.is_dir_in(dst_parent, name) => {}
                Err(e) => return Err(fail(Op::Create, e)),
            }
        }
        let dst_fd = self.replica.open_dir(dst_parent, name).map_err(|e| fail(Op::OpenDir, e))?;
        Ok((src_fd, Some(dst_fd), created))
    }

    /// Sets a finished directory's attributes (its children are final, so nothing will
    /// bump its mtime again in this pass).
    pub(super) fn finalize_dir(&self, node: &DirNode<R::Dir>, counters: &Counters) {
        if !node.finalize || self.cancel.is_cancelled() {
            return;
        }
        if node.is_root() && !self.replica.caps().root_attrs {
            return;
        }
        // Log only differences that were there before this pass: mtime moves caused by our
        // own changes to the children are repaired silently.
        let before = node.dst_before.as_ref().filter(|d| d.kind == Kind::Dir && !node.created);
        let mut to_log =
            before.map(|b| node.src.attr_diff(b, self.rules().owners, &self.rules().mtimes));
        let apply = !self.opts.dry_run;
        if let Some(dst_fd) = &node.dst_fd {
            let result = self.replica.stat_dir(dst_fd).and_then(|now| {
                let diff = node.src.attr_diff(&now, self.rules().owners, &self.rules().mtimes);
                // Children never change a directory's attributes: what differs now, differed.
                // Set before the mode: user.* needs write permission on the directory.
                let changes = self.dir_xattrs(node.src_xattrs.as_ref(), dst_fd, apply)?;
                if apply && !diff.is_empty() {
                    self.replica.set_dir_attrs(dst_fd, &node.src, diff)?;
                }
                Ok(changes)
            });
            match result {
                Ok(changes) => {
                    if let Some(diff) = &mut to_log {
                        (diff.xattrs, diff.acl) = (changes.xattrs, changes.acl);
                    }
                }
                Err(e) => {
                    return self.record(counters, EntryError::io(Op::SetAttrs, &node.rel(), e));
                }
            }
        }
        if let Some(diff) = to_log.filter(|d| !d.is_empty()) {
            self.log_attrs(&node.rel(), diff);
            Counters::bump(&counters.attrs, 1);
        }
    }

    /// After changing something inside a directory, its replica mtime moved: put the
    /// source's attributes back (silently: the change itself was logged).
    pub(super) fn fix_dir_attrs(
        &self,
        src_dir: &OwnedFd,
        dst_dir: &R::Dir,
        rel: &RelPath,
        counters: &Counters,
    ) {
        if self.opts.dry_run {
            return;
        }
        let result = Entry::stat_fd(src_dir).and_then(|src| {
            let dst = self.replica.stat_dir(dst_dir)?;
            let diff = src.attr_diff(&dst, self.rules().owners, &self.rules().mtimes);
            // Attributes before the mode: user.* needs write permission on the directory.
            let want =
                self.xattrs().map(|_| Xattrs::read(Handle::Fd(src_dir.as_fd()))).transpose()?;
            self.dir_xattrs(want.as_ref(), dst_dir, true)?;
            if !diff.is_empty() {
                self.replica.set_dir_attrs(dst_dir, &src, diff)?;
            }
            Ok(())
        });
        if let Err(e) = result {
            self.record(counters, EntryError::io(Op::SetAttrs, rel, e));
        }
    }

    /// Makes an open REPLICA directory's extended attributes SOURCE's (`want`, read when
    /// the directory was listed); what differed. `apply: false` only compares (dry run).
    pub(super) fn dir_xattrs(
        &self,
        want: Option<&Xattrs>,
        dst_fd: &R::Dir,
        apply: bool,
    ) -> io::Result<XattrChanges> {
        let (Some(want), Some(support)) = (want, self.xattrs()) else {
            return Ok(XattrChanges::default());
        };
        let have = self.replica.read_xattrs(dst_fd, None)?;
        let changes = want.changes(&have, support);
        if apply && changes != XattrChanges::default() {
            self.replica.set_dir_xattrs(dst_fd, want, &have)?;
        }
        Ok(changes)
    }
}

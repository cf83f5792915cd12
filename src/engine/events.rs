//! Event work: reconciling one path an event pointed at (`reconcile_below_root`, which
//! opens the directories on the way and makes missing ones), one entry in its open parent
//! (`reconcile_one`), and following a SOURCE rename with a REPLICA rename (`try_rename`).
//! A subtree an event names goes to the walker like a full pass's.

use std::ffi::{CStr, OsStr};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use tracing::{debug, info};

use crate::entry::{Entry, Kind};
use crate::error::{EntryError, Op};
use crate::ops;
use crate::relpath::RelPath;
use crate::replica::{Replica, Roots};

use super::Engine;
use super::decide::{Action, Item};
use super::dirs::{DirNode, Opening};
use super::names::{c_name, dup, open_path_at};
use super::report::Counters;
use super::walk::{DirJob, Work};

impl<R: Replica> Engine<R> {
    /// Opens the directories down to `rel`'s parent on both sides, then reconciles `rel`.
    /// A piece of event work changes nothing above its own path but for creating missing
    /// directories on the way (idempotent: a sibling's work may do the same at once). Where
    /// SOURCE lacks a directory on the way, `rel` went with it and that directory's own
    /// event removes it from REPLICA; where REPLICA has something else than a directory
    /// there, that directory's own event replaces it. Two works never touch one path.
    pub(super) fn reconcile_below_root(
        &self,
        roots: &Roots<R::Dir>,
        rel: &RelPath,
        recursive: bool,
        counters: &Counters,
    ) {
        if self.excludes.matches_path_or_parent(rel, true)
            && self.excludes.matches_path_or_parent(rel, false)
        {
            return;
        }
        if rel.names().any(|n| ops::is_temp_name(n.as_bytes())) {
            return;
        }
        // Only a dry run has no replica root, and a dry run is a single full pass.
        let Some(dst_root) = &roots.dst else { return };
        let (mut src_fd, mut dst_fd) = match (dup(&roots.src), self.replica.try_clone_dir(dst_root))
        {
            (Ok(s), Ok(d)) => (s, d),
            (Err(e), _) | (_, Err(e)) => {
                return self.record(counters, EntryError::io(Op::OpenDir, &RelPath::root(), e));
            }
        };
        let mut here = RelPath::root();
        let mut made = Vec::new();
        let names: Vec<&OsStr> = rel.names().collect();
        for (i, name) in names.iter().enumerate() {
            let child = here.join(name);
            if i + 1 == names.len() {
                self.reconcile_one(&src_fd, &dst_fd, &here, &child, recursive, counters);
                break;
            }
            let cname = c_name(name);
            let Ok(src_dir) = ops::open_dir_at(&src_fd, &cname) else { return };
            let (dst_dir, created) = match self.replica.open_dir(&dst_fd, &cname) {
                Ok(d) => (d, false),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    match self.make_dir_on_the_way(&dst_fd, &cname, &child, counters) {
                        Some(made) => made,
                        None => return,
                    }
                }
                Err(_) => return,
            };
            let ids = (Entry::stat_fd(&src_dir), self.replica.stat_dir(&dst_dir));
            let (Ok(src_entry), Ok(dst_entry)) = ids else { return };
            if self.at_boundary(Some(&src_entry), Some(&dst_entry), &child)
                || self.other_filesystem(&src_entry, false)
            {
                return;
            }
            if created {
                match (dup(&src_dir), self.replica.try_clone_dir(&dst_dir)) {
                    (Ok(s), Ok(d)) => made.push((s, d, child.clone())),
                    (Err(e), _) | (_, Err(e)) => {
                        return self.record(counters, EntryError::io(Op::OpenDir, &child, e));
                    }
                }
            }
            src_fd = src_dir;
            dst_fd = dst_dir;
            here = child;
        }
        // Directories made on the way take SOURCE's attributes once their child is in.
        for (src_dir, dst_dir, dir_rel) in made.iter().rev() {
            self.fix_dir_attrs(src_dir, dst_dir, dir_rel, counters);
        }
    }

    /// Creates a directory missing on the way to an event's path; `(descriptor, created)`,
    /// or `None` (recorded) when it cannot be made. A sibling's work that made it a moment
    /// earlier is fine.
    pub(super) fn make_dir_on_the_way(
        &self,
        parent: &R::Dir,
        name: &CStr,
        rel: &RelPath,
        counters: &Counters,
    ) -> Option<(R::Dir, bool)> {
        let created = match self.replica.make_dir(parent, name) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && self.is_dir_in(parent, name) => {
                false
            }
            Err(e) => {
                self.record(counters, EntryError::io(Op::Create, rel, e));
                return None;
            }
        };
        if created {
            info!(action = %"create", path = %rel, kind = %"dir");
            Counters::bump(&counters.create, 1);
        }
        match self.replica.open_dir(parent, name) {
            Ok(fd) => Some((fd, created)),
            Err(e) => {
                self.record(counters, EntryError::io(Op::OpenDir, rel, e));
                None
            }
        }
    }

    /// Reconciles the single entry `rel` inside the open directories `src_dir`/`dst_dir`
    /// (which are `dir_rel`), then the directory's own attributes.
    pub(super) fn reconcile_one(
        &self,
        src_dir: &OwnedFd,
        dst_dir: &R::Dir,
        dir_rel: &RelPath,
        rel: &RelPath,
        recursive: bool,
        counters: &Counters,
    ) {
        let Some(name) = rel.file_name().map(c_name) else {
            return;
        };
        let Some((src, dst)) = self.stat_pair(src_dir, Some(dst_dir), &name, rel, counters) else {
            return;
        };
        let Some((src, dst)) = self.unexcluded(rel, src, dst, counters) else {
            return;
        };
        if self.at_boundary(src.as_ref(), dst.as_ref(), rel) {
            return;
        }
        if let Some(src) = &src {
            Counters::bump(&counters.scanned, 1);
            self.note_mtime_precision(rel, src);
        }
        let action =
            self.decide_at(src_dir, Some(dst_dir), &name, src.as_ref(), dst.as_ref(), false);
        let fresh_dir = !matches!(&dst, Some(d) if d.kind == Kind::Dir);
        match (action, src) {
            (Action::Descend, Some(src)) if recursive || fresh_dir => {
                let (src_parent, dst_parent) =
                    match (dup(src_dir), self.replica.try_clone_dir(dst_dir)) {
                        (Ok(s), Ok(d)) => (s, d),
                        (Err(e), _) | (_, Err(e)) => {
                            return self.record(counters, EntryError::io(Op::OpenDir, dir_rel, e));
                        }
                    };
                let parent = DirNode::detached(dir_rel.clone(), Some(dst_parent));
                let open = Opening::Child { src_parent: Arc::new(src_parent), name };
                let job = DirJob { src, dst, open, parent: Some(parent) };
                self.run_work(Work::Dir(job), counters);
            }
            (Action::Descend, Some(src)) => {
                if let Some(dst) = &dst {
                    let fixed =
                        self.apply_attrs(src_dir, Some(dst_dir), &name, rel, &src, dst, counters);
                    if let Err(e) = fixed {
                        self.record(counters, e);
                    }
                }
            }
            (action, src) => {
                if !self.defer_link(|| rel.clone(), src.as_ref(), dst.as_ref(), action, counters) {
                    let item = Item { name, src, dst, action };
                    self.apply(src_dir, Some(dst_dir), dir_rel, item, counters);
                }
            }
        }
        self.fix_dir_attrs(src_dir, dst_dir, dir_rel, counters);
    }

    /// Renames `from` to `to` in REPLICA when that is exactly what SOURCE did; true if it
    /// did (a dry run: would have).
    pub(super) fn try_rename(
        &self,
        roots: &Roots<R::Dir>,
        from: &RelPath,
        to: &RelPath,
        counters: &Counters,
    ) -> bool {
        let Some(dst_root) = &roots.dst else { return false };
        let (Some(from_parent), Some(to_parent)) = (from.parent(), to.parent()) else {
            return false;
        };
        let (Some(from_name), Some(to_name)) =
            (from.file_name().map(c_name), to.file_name().map(c_name))
        else {
            return false;
        };
        let opened = (
            open_path_at(&roots.src, &from_parent),
            open_path_at(&roots.src, &to_parent),
            self.open_replica_path(dst_root, &from_parent),
            self.open_replica_path(dst_root, &to_parent),
        );
        let (Ok(src_from_dir), Ok(src_to_dir), Ok(dst_from_dir), Ok(dst_to_dir)) = opened else {
            return false;
        };
        let stats = (
            Entry::stat_at(&src_from_dir, &from_name),
            Entry::stat_at(&src_to_dir, &to_name),
            self.replica.stat(&dst_from_dir, &from_name),
            self.replica.stat(&dst_to_dir, &to_name),
        );
        // Only a clean move: SOURCE has `to` and no `from`; REPLICA has `from`, of the
        // same kind (and, for a file, the same content stamp), and nothing at `to`.
        let (Ok(None), Ok(Some(src)), Ok(Some(dst)), Ok(None)) = stats else {
            return false;
        };
        let same = src.kind == dst.kind
            && match src.kind {
                Kind::File => src.same_size_and_mtime(&dst, &self.rules().mtimes),
                Kind::Symlink => {
                    self.same_link_target(&src_to_dir, &to_name, &dst_from_dir, &from_name)
                }
                _ => true,
            };
        // An anchored exclude can match below `from` and not below `to` (or the reverse):
        // moving the directory would carry excluded entries into mirrored places. Copy and
        // remove instead; the removal keeps what is excluded.
        if !same || (src.kind == Kind::Dir && self.excludes.depend_on_place()) {
            return false;
        }
        if !self.opts.dry_run
            && let Err(e) = self.replica.rename(&dst_from_dir, &from_name, &dst_to_dir, &to_name)
        {
            // Not fatal: the reconciles that follow copy and remove instead.
            debug!(path = %to, error = %e, "rename in replica failed; reconciling instead");
            return false;
        }
        info!(action = %"rename", path = %to, from = %from);
        Counters::bump(&counters.rename, 1);
        true
    }
}

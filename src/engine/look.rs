//! Looking before deciding: stat a name on both sides, decide with the link targets and
//! extended attributes `statx` cannot show, and what a decision relied on (`expect`) for
//! the re-checks applying makes before touching a REPLICA entry in place.

use std::ffi::CStr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;

use crate::entry::{AttrDiff, Entry, Kind};
use crate::error::{EntryError, Op};
use crate::ops::{self, Expect, Handle, XattrSupport, Xattrs};
use crate::relpath::RelPath;
use crate::replica::Replica;

use super::Engine;
use super::decide::{Action, decide};
use super::names::RelSource;
use super::report::Counters;

impl<R: Replica> Engine<R> {
    /// True if `name` in the REPLICA directory `dir` is a directory now (never following
    /// a link).
    pub(super) fn is_dir_in(&self, dir: &R::Dir, name: &CStr) -> bool {
        matches!(self.replica.stat(dir, name), Ok(Some(e)) if e.kind == Kind::Dir)
    }

    /// True if SOURCE's symlink `src_name` and REPLICA's `dst_name` have the same target.
    pub(super) fn same_link_target(
        &self,
        src_dir: &OwnedFd,
        src_name: &CStr,
        dst_dir: &R::Dir,
        dst_name: &CStr,
    ) -> bool {
        match ops::read_link_at(src_dir, src_name) {
            Ok(target) => self.replica.link_target_is(dst_dir, dst_name, &target),
            Err(_) => false,
        }
    }

    /// Stats `name` on both sides. A failure is recorded and the entry skipped entirely, so
    /// an unreadable source entry never leads to a deletion.
    pub(super) fn stat_pair(
        &self,
        src_dir: &OwnedFd,
        dst_dir: Option<&R::Dir>,
        name: &CStr,
        rel: &dyn RelSource,
        counters: &Counters,
    ) -> Option<(Option<Entry>, Option<Entry>)> {
        self.progress.fetch_add(1, Ordering::Relaxed);
        let src = match Entry::stat_at(src_dir, name) {
            Ok(s) => s,
            Err(e) => {
                self.record(counters, EntryError::io(Op::Stat, &rel.rel(), e));
                return None;
            }
        };
        let dst = match dst_dir.map(|d| self.replica.stat(d, name)).transpose() {
            Ok(d) => d.flatten(),
            Err(e) => {
                self.record(counters, EntryError::io(Op::Stat, &rel.rel(), e));
                return None;
            }
        };
        Some((src, dst))
    }

    /// `settled`: the entry's directories are unchanged since the last clean pass on both
    /// sides, so the horizon may vouch for its attributes.
    pub(super) fn decide_at(
        &self,
        src_dir: &OwnedFd,
        dst_dir: Option<&R::Dir>,
        name: &CStr,
        src: Option<&Entry>,
        dst: Option<&Entry>,
        settled: bool,
    ) -> Action {
        let action = decide(src, dst, self.rules(), || {
            dst_dir.is_some_and(|d| self.same_link_target(src_dir, name, d, name))
        });
        self.with_xattr_changes(action, src_dir, dst_dir, name, src, dst, settled)
    }

    /// What the replica entry `dst`, decided on against `src`, must still be when it is
    /// changed or read in place: a file of a link group may have SOURCE's group's names.
    pub(super) fn expect<'a>(&self, src: &Entry, dst: &'a Entry) -> Expect<'a> {
        let grouped = self.opts.hard_links && src.kind == Kind::File && src.nlink > 1;
        if grouped && dst.nlink <= src.nlink { Expect::Linked(dst) } else { Expect::Same(dst) }
    }

    /// The namespaces still mirrored, or `None` with `--no-xattrs`.
    pub(super) fn xattrs(&self) -> Option<&XattrSupport> {
        self.replica.xattrs()
    }

    /// `statx` cannot see extended attributes: an entry that looks in sync, or that needs
    /// only attributes, has them read on both sides. (Directories: when finalized.)
    #[allow(clippy::too_many_arguments)]
    pub(super) fn with_xattr_changes(
        &self,
        action: Action,
        src_dir: &OwnedFd,
        dst_dir: Option<&R::Dir>,
        name: &CStr,
        src: Option<&Entry>,
        dst: Option<&Entry>,
        settled: bool,
    ) -> Action {
        let mut diff = match action {
            Action::Nothing => AttrDiff::default(),
            Action::Attrs(diff) => diff,
            _ => return action,
        };
        let (Some(support), Some(dst_dir), Some(src), Some(dst)) =
            (self.xattrs(), dst_dir, src, dst)
        else {
            return action;
        };
        if settled && self.horizon.unchanged(src, dst) {
            return action;
        }
        let want = Xattrs::read(Handle::At(src_dir.as_fd(), name));
        match (want, self.replica.read_xattrs(dst_dir, Some(name))) {
            // A capability or label goes only onto bytes replicad copies (`grants_security`).
            (Ok(want), Ok(have))
                if dst.kind == Kind::File && want.grants_security(&have, support) =>
            {
                return Action::Update;
            }
            (Ok(want), Ok(have)) => {
                let changes = want.changes(&have, support);
                (diff.xattrs, diff.acl) = (changes.xattrs, changes.acl);
            }
            // Unreadable: applying the attributes meets the error again and reports it.
            _ => diff.xattrs = true,
        }
        if diff.is_empty() { Action::Nothing } else { Action::Attrs(diff) }
    }

    /// SOURCE's extended attributes of `name`, when they are mirrored.
    pub(super) fn source_xattrs(
        &self,
        src_dir: &OwnedFd,
        name: &CStr,
        rel: &RelPath,
    ) -> Result<Option<Xattrs>, EntryError> {
        self.xattrs()
            .map(|_| Xattrs::read(Handle::At(src_dir.as_fd(), name)))
            .transpose()
            .map_err(|e| EntryError::source(Op::Read, rel, e))
    }
}

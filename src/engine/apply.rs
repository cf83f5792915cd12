//! Applying one decided entry (not a directory's own attributes: see `dirs`): remove,
//! create or replace (copy a file, make a symlink, FIFO or device), update content,
//! compare by MD5 (`--checksum`), or set attributes in place. Logs each change with its
//! action and counts it; errors concern one entry and are returned for the caller to
//! record.

use std::ffi::{CStr, OsStr};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::Ordering;

use tracing::{debug, info, warn};

use crate::entry::{Entry, Kind};
use crate::error::{EntryError, EntryErrorKind, Op};
use crate::ops;
use crate::relpath::RelPath;
use crate::replica::{Removal, Replica};

use super::Engine;
use super::decide::{Action, Item};
use super::report::Counters;

impl<R: Replica> Engine<R> {
    /// Carries out one non-directory decision (and removals of directories).
    pub(super) fn apply(
        &self,
        src_dir: &OwnedFd,
        dst_dir: Option<&R::Dir>,
        dir_rel: &RelPath,
        item: Item,
        counters: &Counters,
    ) {
        let rel = dir_rel.join(OsStr::from_bytes(item.name.to_bytes()));
        if let Err(e) = self.apply_inner(src_dir, dst_dir, &rel, &item, counters) {
            self.record(counters, e);
        }
    }

    pub(super) fn apply_inner(
        &self,
        src_dir: &OwnedFd,
        dst_dir: Option<&R::Dir>,
        rel: &RelPath,
        item: &Item,
        counters: &Counters,
    ) -> Result<(), EntryError> {
        let name = item.name.as_c_str();
        match (item.action, &item.src, &item.dst) {
            (Action::Remove, _, Some(dst)) => {
                self.remove_entry(dst_dir, name, rel, dst, counters).map(|_| ())
            }
            (Action::Skip, Some(src), dst) => {
                // Whatever REPLICA has there is stale: it goes, even though nothing replaces it.
                if let Some(dst) = dst {
                    self.make_way(dst_dir, name, rel, dst, counters)?;
                }
                if self.first_skip(rel) {
                    warn!(path = %rel, kind = %src.kind.name(), "skipped: sockets are not mirrored (said once per path)");
                } else {
                    debug!(path = %rel, kind = %src.kind.name(), "skipped: sockets are not mirrored");
                }
                Counters::bump(&counters.skipped, 1);
                Ok(())
            }
            (Action::Create | Action::Replace, Some(src), dst) => {
                if let Some(dst) = dst.as_ref().filter(|d| d.kind == Kind::Dir) {
                    self.make_way(dst_dir, name, rel, dst, counters)?;
                }
                let update =
                    src.kind == Kind::File && dst.as_ref().is_some_and(|d| d.kind == Kind::File);
                // A directory there was removed (and logged) just above.
                let dst = dst.as_ref().filter(|d| d.kind != Kind::Dir);
                self.create_entry(src_dir, dst_dir, name, rel, src, dst, update, counters)
            }
            (Action::Update, Some(src), dst) => {
                self.create_entry(src_dir, dst_dir, name, rel, src, dst.as_ref(), true, counters)
            }
            (Action::CompareContent, Some(src), Some(dst)) => {
                if self.same_content(src_dir, dst_dir, name, rel, src, dst)? {
                    self.apply_attrs(src_dir, dst_dir, name, rel, src, dst, counters)
                } else {
                    self.create_entry(src_dir, dst_dir, name, rel, src, Some(dst), true, counters)
                }
            }
            (Action::Attrs(_), Some(src), Some(dst)) => {
                self.apply_attrs(src_dir, dst_dir, name, rel, src, dst, counters)
            }
            _ => Ok(()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn apply_attrs(
        &self,
        src_dir: &OwnedFd,
        dst_dir: Option<&R::Dir>,
        name: &CStr,
        rel: &RelPath,
        src: &Entry,
        dst: &Entry,
        counters: &Counters,
    ) -> Result<(), EntryError> {
        let mut diff = src.attr_diff(dst, self.rules().owners, &self.rules().mtimes);
        let mut want = None;
        if let (Some(support), Some(dir)) = (self.xattrs(), dst_dir) {
            let source = self.source_xattrs(src_dir, name, rel)?.unwrap_or_default();
            let have = self
                .replica
                .read_xattrs(dir, Some(name))
                .map_err(|e| EntryError::io(Op::SetAttrs, rel, e))?;
            if dst.kind == Kind::File && source.grants_security(&have, support) {
                // Not in place: the bytes may not be the ones replicad copied.
                return self.create_entry(
                    src_dir,
                    dst_dir,
                    name,
                    rel,
                    src,
                    Some(dst),
                    true,
                    counters,
                );
            }
            let changes = source.changes(&have, support);
            (diff.xattrs, diff.acl) = (changes.xattrs, changes.acl);
            want = Some(source);
        }
        if diff.is_empty() {
            return Ok(());
        }
        if dst.kind == Kind::File && !self.replica.caps().file_attrs_in_place {
            // Metadata is part of the object there: the file is written again, whole.
            return self.create_entry(src_dir, dst_dir, name, rel, src, Some(dst), true, counters);
        }
        if let Some(dir) = dst_dir.filter(|_| !self.opts.dry_run) {
            self.replica
                .set_attrs(dir, name, self.expect(src, dst), src, diff, want.as_ref())
                .map_err(|e| EntryError::io(Op::SetAttrs, rel, e))?;
        }
        self.log_attrs(rel, diff);
        Counters::bump(&counters.attrs, 1);
        Ok(())
    }

    /// Removes the replica entry `name`; a directory goes with everything under it except
    /// excluded entries. Returns false when a directory had to be kept because it holds
    /// excluded entries (it was emptied of the rest).
    pub(super) fn remove_entry(
        &self,
        dst_dir: Option<&R::Dir>,
        name: &CStr,
        rel: &RelPath,
        dst: &Entry,
        counters: &Counters,
    ) -> Result<bool, EntryError> {
        let Some(dir) = dst_dir else {
            // A dry run below a directory it would create: nothing there to look at.
            info!(action = %"remove", path = %rel, kind = %dst.kind.name());
            Counters::bump(&counters.remove, 1);
            return Ok(true);
        };
        if dst.kind != Kind::Dir && self.opts.dry_run {
            info!(action = %"remove", path = %rel, kind = %dst.kind.name());
            Counters::bump(&counters.remove, 1);
            return Ok(true);
        }
        if dst.kind != Kind::Dir {
            match self.replica.remove_file(dir, name) {
                // Already gone (someone else removed it): what this removal wanted.
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
                other => other.map_err(|e| EntryError::io(Op::Remove, rel, e))?,
            }
            info!(action = %"remove", path = %rel, kind = %dst.kind.name());
            Counters::bump(&counters.remove, 1);
            return Ok(true);
        }
        let excluded = |p: &RelPath, is_dir: bool| self.excludes.matches(p, is_dir);
        let stop = || {
            self.progress.fetch_add(1, Ordering::Relaxed);
            self.cancel.is_cancelled()
        };
        let rules = Removal {
            keep: self.excludes_any().then_some(&excluded as _),
            boundary: &|e: &Entry| e.mount_root || self.untouchable(e),
            own: &|dev, ino| self.own_files.contains(&(dev, ino)),
            stop: &stop,
            dry_run: self.opts.dry_run,
        };
        debug!(path = %rel, "removing a directory tree");
        let removed = self
            .replica
            .remove_tree(dir, name, rel, &rules)
            .map_err(|e| EntryError::io(Op::Remove, rel, e))?;
        for inner in &removed.boundaries {
            self.record(counters, EntryError::new(Op::Remove, inner, EntryErrorKind::Boundary));
        }
        let entries = removed.entries;
        if removed.is_complete() {
            info!(action = %"remove", path = %rel, kind = %"dir", entries);
            Counters::bump(&counters.remove, 1);
            return Ok(true);
        }
        if removed.kept > 0 && entries > 0 {
            // Like rsync: excluded entries are never deleted, so their directory stays.
            info!(path = %rel, removed = entries, kept = removed.kept, "directory kept: it holds excluded entries; the rest was removed");
            Counters::bump(&counters.remove, 1);
        } else if removed.kept > 0 {
            debug!(path = %rel, kept = removed.kept, "directory kept: it holds excluded entries");
        }
        Ok(false)
    }

    /// Removes whatever REPLICA has at `name` so that SOURCE's entry can take its place.
    pub(super) fn make_way(
        &self,
        dst_dir: Option<&R::Dir>,
        name: &CStr,
        rel: &RelPath,
        dst: &Entry,
        counters: &Counters,
    ) -> Result<(), EntryError> {
        match self.remove_entry(dst_dir, name, rel, dst, counters)? {
            true => Ok(()),
            false => Err(EntryError::new(Op::Remove, rel, EntryErrorKind::CannotMakeWay)),
        }
    }

    /// Creates (or replaces with) the non-directory `src`: a file copy, a symlink, a FIFO
    /// or a device node. `dst` is what REPLICA has there (never a directory by now);
    /// `update` says a file's content is being replaced. A type change (a FIFO replaced by
    /// a file, say) is logged as the old entry's `remove` plus the new one's `copy` or
    /// `create`, once the atomic replacement happened.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn create_entry(
        &self,
        src_dir: &OwnedFd,
        dst_dir: Option<&R::Dir>,
        name: &CStr,
        rel: &RelPath,
        src: &Entry,
        dst: Option<&Entry>,
        update: bool,
        counters: &Counters,
    ) -> Result<(), EntryError> {
        let dst_dir = dst_dir.filter(|_| !self.opts.dry_run);
        let replaced = || {
            if let Some(old) = dst.filter(|d| d.kind != src.kind) {
                info!(action = %"remove", path = %rel, kind = %old.kind.name());
                Counters::bump(&counters.remove, 1);
            }
        };
        match src.kind {
            Kind::File => {
                let size = match dst_dir {
                    Some(dir) => self.copy_with_retries(src_dir, dir, name, rel, counters)?,
                    None => src.size,
                };
                replaced();
                if update {
                    info!(action = %"update", path = %rel, size);
                    Counters::bump(&counters.update, 1);
                } else {
                    info!(action = %"copy", path = %rel, size);
                    Counters::bump(&counters.copy, 1);
                }
                Counters::bump(&counters.bytes, size);
            }
            Kind::Symlink => {
                if let Some(dir) = dst_dir {
                    // EINVAL: no longer a symlink; ENOENT: gone. Either way SOURCE moved on.
                    let target =
                        ops::read_link_at(src_dir, name).map_err(|e| match e.raw_os_error() {
                            Some(libc::EINVAL) => {
                                EntryError::new(Op::Read, rel, EntryErrorKind::Vanished(e))
                            }
                            _ => EntryError::source(Op::Read, rel, e),
                        })?;
                    let xattrs = self.source_xattrs(src_dir, name, rel)?;
                    self.replica
                        .make_symlink(dir, name, &target, src, xattrs.as_ref())
                        .map_err(|e| EntryError::io(Op::Create, rel, e))?;
                }
                replaced();
                info!(action = %"create", path = %rel, kind = %"symlink");
                Counters::bump(&counters.create, 1);
            }
            Kind::Fifo | Kind::CharDevice | Kind::BlockDevice
                if !self.replica.caps().special_files =>
            {
                return self.skip_entry(dst_dir, name, rel, dst, counters, || {
                    warn!(path = %rel, kind = %src.kind.name(), "skipped: the replica cannot hold FIFOs or device nodes (said once per path)");
                });
            }
            Kind::Fifo | Kind::CharDevice | Kind::BlockDevice => {
                if let Some(dir) = dst_dir {
                    let xattrs = self.source_xattrs(src_dir, name, rel)?;
                    match self.replica.make_special(dir, name, src, xattrs.as_ref()) {
                        Err(e)
                            if e.raw_os_error() == Some(libc::EPERM) && src.kind != Kind::Fifo =>
                        {
                            return self.skip_entry(Some(dir), name, rel, dst, counters, || {
                                warn!(path = %rel, kind = %src.kind.name(), error = %e, "skipped: this process may not create device nodes (needs CAP_MKNOD; said once per path)");
                            });
                        }
                        other => other.map_err(|e| EntryError::io(Op::Create, rel, e))?,
                    }
                }
                replaced();
                info!(action = %"create", path = %rel, kind = %src.kind.name());
                Counters::bump(&counters.create, 1);
            }
            Kind::Dir | Kind::Socket => {}
        }
        Ok(())
    }

    /// Leaves SOURCE's entry at `name` unmirrored: whatever REPLICA has there is stale and
    /// goes; `say` warns, once per path.
    fn skip_entry(
        &self,
        dst_dir: Option<&R::Dir>,
        name: &CStr,
        rel: &RelPath,
        dst: Option<&Entry>,
        counters: &Counters,
        say: impl FnOnce(),
    ) -> Result<(), EntryError> {
        if let Some(dst) = dst {
            self.make_way(dst_dir, name, rel, dst, counters)?;
        }
        if self.first_skip(rel) {
            say();
        }
        Counters::bump(&counters.skipped, 1);
        Ok(())
    }
}

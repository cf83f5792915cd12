//! The parallel walker: the work list on the engine's one pool of `--jobs` threads. A
//! directory job opens both sides, lists both, merge-joins the sorted names, decides every
//! child and queues the rest: subdirectories as jobs of their own, other entries in
//! batches for the applier. No call-stack recursion; a directory is finalized (see
//! `dirs`) when its last piece of work completes. Cancellation is checked between pieces.

use std::ffi::{CStr, OsStr};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tracing::{debug, info};

use crate::entry::Entry;
use crate::error::{EntryError, Op};
use crate::ops::{self, Handle, Xattrs};
use crate::relpath::RelPath;
use crate::replica::{DirItem, PassEnd, Replica, Roots};

use super::Engine;
use super::decide::{Action, Item};
use super::dirs::{DirNode, Opening, Place, child_rel, complete};
use super::names::LazyRel;
use super::report::Counters;

/// Non-directory work items per batch: big enough to amortise the queue, small enough
/// that a directory of many files is copied by all threads.
pub(super) const BATCH: usize = 32;

/// One piece of work on the pool; `D`: an open REPLICA directory.
pub(super) enum Work<D> {
    Dir(DirJob<D>),
    Items(Batch<D>),
}

pub(super) struct DirJob<D> {
    pub(super) src: Entry,
    pub(super) dst: Option<Entry>,
    pub(super) open: Opening<D>,
    pub(super) parent: Option<Arc<DirNode<D>>>,
}

pub(super) struct Batch<D> {
    pub(super) node: Arc<DirNode<D>>,
    pub(super) src_fd: Arc<OwnedFd>,
    pub(super) items: Vec<Item>,
}

/// Names of both sorted listings, merged and deduplicated, in byte order.
pub(super) fn merge_names<'a>(
    src: &'a [DirItem],
    dst: &'a [DirItem],
) -> impl Iterator<Item = &'a CStr> {
    let (mut i, mut j) = (0, 0);
    std::iter::from_fn(move || {
        let next = match (src.get(i), dst.get(j)) {
            (Some(a), Some(b)) if a.name == b.name => {
                i += 1;
                j += 1;
                &a.name
            }
            (Some(a), Some(b)) if a.name < b.name => {
                i += 1;
                &a.name
            }
            (Some(_), Some(b)) | (None, Some(b)) => {
                j += 1;
                &b.name
            }
            (Some(a), None) => {
                i += 1;
                &a.name
            }
            (None, None) => return None,
        };
        Some(next.as_c_str())
    })
}

impl<R: Replica> Engine<R> {
    pub(super) fn reconcile_root(&self, roots: Roots<R::Dir>, counters: &Counters) {
        let root = RelPath::root();
        let dst = roots.dst.as_ref().map(|d| self.replica.stat_dir(d));
        let (src, dst) = match (Entry::stat_fd(&roots.src), dst) {
            (Ok(s), None) => (s, None),
            (Ok(s), Some(Ok(d))) => (s, Some(d)),
            (Err(e), _) | (_, Some(Err(e))) => {
                return self.record(counters, EntryError::io(Op::Stat, &root, e));
            }
        };
        let replica_fs = roots.dst.as_ref().map(|d| self.replica.try_clone_dir(d));
        let end_root = roots.dst.as_ref().map(|d| self.replica.try_clone_dir(d));
        let link_roots = self.link_roots(&roots);
        let fresh = self.fresh_replica.swap(false, Ordering::Relaxed);
        if fresh {
            info!(action = %"create", path = %root, kind = %"dir");
            Counters::bump(&counters.create, 1);
        }
        let open = Opening::Root { src: roots.src, dst: roots.dst, fresh };
        let job = DirJob { src, dst, open, parent: None };
        self.run_work(Work::Dir(job), counters);
        if let Some(link_roots) = &link_roots {
            self.settle_links(link_roots, true, counters);
        }
        let changed = counters.snapshot().changes() > 0;
        // A stop does not wait for the flush (it can take minutes on a slow disk); the
        // kernel writes the data back on its own, and every file was renamed complete.
        if changed && !self.opts.dry_run && !self.opts.copy.fsync && !self.cancel.is_cancelled() {
            debug!("flushing the replica (syncfs)");
            self.flushing.store(true, Ordering::Relaxed);
            let synced = replica_fs.map_or(Ok(()), |fd| fd.and_then(|fd| self.replica.flush(&fd)));
            self.flushing.store(false, Ordering::Relaxed);
            if let Err(e) = synced {
                // The copies may not be on disk: not "in sync", whatever else went well.
                self.record(counters, EntryError::io(Op::Sync, &root, e));
            }
        }
        if !self.cancel.is_cancelled() {
            let keep = |p: &RelPath, is_dir: bool| self.excludes.matches_path_or_parent(p, is_dir);
            let clean = counters.snapshot().errors == 0;
            let end = PassEnd { clean, dry_run: self.opts.dry_run, keep: &keep };
            let ended =
                end_root.map_or(Ok(0), |fd| fd.and_then(|fd| self.replica.end_pass(&fd, &end)));
            match ended {
                Ok(removed) => Counters::bump(&counters.remove, removed),
                Err(e) => self.record(counters, EntryError::io(Op::Sync, &root, e)),
            }
        }
    }

    /// Runs `work` and everything it spawns on the engine's pool, and returns when all of
    /// it is done. Must be called on a pool thread (every entry point runs in `in_pool`).
    pub(super) fn run_work(&self, work: Work<R::Dir>, counters: &Counters) {
        rayon::scope(|scope| self.spawn(scope, work, counters));
    }

    /// Queues one piece of work on the pool. Work queued after shutdown began is dropped
    /// unstarted (its directories are then never finalized, which is what a stop wants).
    pub(super) fn spawn<'s>(
        &'s self,
        scope: &rayon::Scope<'s>,
        work: Work<R::Dir>,
        counters: &'s Counters,
    ) {
        // Log lines keep the caller's span (the dry run's) whichever thread runs the work.
        let span = tracing::Span::current();
        scope.spawn(move |scope| {
            let _entered = span.enter();
            if self.cancel.is_cancelled() {
                return;
            }
            match work {
                Work::Dir(job) => self.run_dir(job, scope, counters),
                Work::Items(batch) => self.run_items(batch, counters),
            }
        });
    }

    /// Runs `f` on the engine's pool: every filesystem operation of this process happens on
    /// one of its `--jobs` threads, however many passes and events ask at once.
    pub(super) fn in_pool<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.pool.install(f)
    }

    /// Opens (creating if needed) one directory on both sides, lists both, decides every
    /// child, and queues the work: subdirectories as their own jobs, the rest in batches.
    pub(super) fn run_dir<'s>(
        &'s self,
        job: DirJob<R::Dir>,
        scope: &rayon::Scope<'s>,
        counters: &'s Counters,
    ) {
        let DirJob { src, dst, open, parent } = job;
        let (place, opened) = match open {
            Opening::Root { src, dst, fresh } => {
                (Place::Top(RelPath::root()), Ok((src, dst, fresh)))
            }
            Opening::Child { src_parent, name } => {
                let rel = || child_rel(parent.as_deref(), &name);
                let rel = LazyRel(&rel);
                let dst = dst.as_ref();
                let opened =
                    self.open_child_dir(&src_parent, parent.as_deref(), &name, &rel, dst, counters);
                (Place::Child(name), opened)
            }
        };
        let (src_fd, dst_fd, created) = match opened {
            Ok(fds) => fds,
            Err(e) => {
                self.record(counters, e);
                return complete(parent, self, counters);
            }
        };
        // The horizon vouches for an entry only while its directories, on both sides, have
        // not moved since the last clean pass (a rename of one moves its ctime, not theirs),
        // and only on SOURCE's own filesystem (one mounted inside it may be stamped by
        // another machine's clock). The roots count as settled while they are the
        // directories they were at start, whatever their ctimes say (the mtime probe
        // touches REPLICA's at every run).
        let settled = src.dev == self.guard.source_dev()
            && match &place {
                Place::Top(rel) => {
                    rel.is_root() && dst.as_ref().is_some_and(|d| self.guard.same_roots(&src, d))
                }
                // A mount point (a bind mount of SOURCE's own filesystem too) pairs names
                // with other inodes than the last clean pass saw, and moved no ctime.
                Place::Child(_) if src.mount_root => false,
                Place::Child(_) => {
                    parent.as_ref().is_some_and(|p| p.settled)
                        && dst.as_ref().is_some_and(|d| self.horizon.unchanged(&src, d))
                }
            };
        // Its own attributes need no look when neither side changed since the last clean
        // pass (`want: None` leaves REPLICA's as they are when the directory is finalized).
        let attrs_unchanged =
            settled && dst.as_ref().is_some_and(|d| self.horizon.unchanged(&src, d));
        let read = self.xattrs().filter(|_| !attrs_unchanged);
        let src_xattrs = match read.map(|_| Xattrs::read(Handle::Fd(src_fd.as_fd()))) {
            Some(Err(e)) => {
                // The directory is still mirrored; its attributes wait for a readable look.
                let rel = match &place {
                    Place::Top(rel) => rel.clone(),
                    Place::Child(name) => child_rel(parent.as_deref(), name),
                };
                self.record(counters, EntryError::source(Op::Read, &rel, e));
                None
            }
            other => other.and_then(Result::ok),
        };
        let node = Arc::new(DirNode {
            place,
            src,
            src_xattrs,
            settled,
            dst_before: dst,
            dst_fd,
            created,
            finalize: true,
            pending: AtomicUsize::new(1),
            parent,
        });
        if let Err(e) = self.queue_children(&node, src_fd, scope, counters) {
            // A directory that cannot be listed is never "empty": nothing under it is
            // touched, and its attributes are left for when it can be read. Its parent is
            // released so the rest of the tree is finalized as usual.
            self.record(counters, e);
            let parent = node.parent.clone();
            drop(node);
            return complete(parent, self, counters);
        }
        complete(Some(node), self, counters);
    }

    pub(super) fn queue_children<'s>(
        &'s self,
        node: &Arc<DirNode<R::Dir>>,
        src_fd: OwnedFd,
        scope: &rayon::Scope<'s>,
        counters: &'s Counters,
    ) -> Result<(), EntryError> {
        // `-x`: a filesystem mounted here is not ours to read; its mount point is mirrored
        // as an empty directory.
        let mut src_names = if self.other_filesystem(&node.src, node.is_root()) {
            Vec::new()
        } else {
            ops::list_dir(&src_fd).map_err(|e| EntryError::source(Op::List, &node.rel(), e))?
        };
        let mut dst_names = match &node.dst_fd {
            Some(fd) => {
                self.replica.list(fd).map_err(|e| EntryError::io(Op::List, &node.rel(), e))?
            }
            None => Vec::new(),
        };
        src_names.retain(|i| !ops::is_temp_name(i.name.to_bytes()));
        src_names.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        dst_names.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        Counters::bump(&counters.scanned, src_names.len() as u64);

        let src_fd = Arc::new(src_fd);
        let mut batch = Vec::new();
        for (i, name) in merge_names(&src_names, &dst_names).enumerate() {
            // A directory of a million entries must not hold up a stop.
            if i % 1024 == 1023 && self.cancel.is_cancelled() {
                break;
            }
            let Some(item) = self.decide_child(node, &src_fd, name, counters) else {
                continue;
            };
            match item {
                Item { action: Action::Descend, src: Some(src), dst, name } => {
                    let open = Opening::Child { src_parent: src_fd.clone(), name };
                    node.pending.fetch_add(1, Ordering::AcqRel);
                    let job = DirJob { src, dst, open, parent: Some(node.clone()) };
                    self.spawn(scope, Work::Dir(job), counters);
                }
                item => {
                    batch.push(item);
                    if batch.len() >= BATCH {
                        node.pending.fetch_add(1, Ordering::AcqRel);
                        let items = std::mem::take(&mut batch);
                        let batch = Batch { node: node.clone(), src_fd: src_fd.clone(), items };
                        self.spawn(scope, Work::Items(batch), counters);
                    }
                }
            }
        }
        if !batch.is_empty() {
            node.pending.fetch_add(1, Ordering::AcqRel);
            let batch = Batch { node: node.clone(), src_fd, items: batch };
            self.spawn(scope, Work::Items(batch), counters);
        }
        Ok(())
    }

    /// Stats one child on both sides and decides; `None` when there is nothing to do.
    pub(super) fn decide_child(
        &self,
        node: &DirNode<R::Dir>,
        src_fd: &OwnedFd,
        name: &CStr,
        counters: &Counters,
    ) -> Option<Item> {
        let rel = || node.rel().join(OsStr::from_bytes(name.to_bytes()));
        let (mut src, mut dst) =
            self.stat_pair(src_fd, node.dst_fd.as_ref(), name, &LazyRel(&rel), counters)?;
        if ops::is_temp_name(name.to_bytes()) {
            // Reserved: never mirrored from SOURCE; in REPLICA only a stray to remove.
            src = None;
        }
        if self.excludes_any() {
            (src, dst) = self.unexcluded(&rel(), src, dst, counters)?;
        }
        if self.at_boundary(src.as_ref(), dst.as_ref(), &LazyRel(&rel)) {
            return None;
        }
        if let Some(src) = &src {
            self.note_mtime_precision(&LazyRel(&rel), src);
        }
        let (dst_fd, settled) = (node.dst_fd.as_ref(), node.settled);
        let action = self.decide_at(src_fd, dst_fd, name, src.as_ref(), dst.as_ref(), settled);
        if self.defer_link(rel, src.as_ref(), dst.as_ref(), action, counters) {
            return None;
        }
        (action != Action::Nothing).then(|| Item { name: name.to_owned(), src, dst, action })
    }

    pub(super) fn run_items(&self, batch: Batch<R::Dir>, counters: &Counters) {
        let dir_rel = batch.node.rel();
        for item in batch.items {
            if self.cancel.is_cancelled() {
                break;
            }
            self.apply(&batch.src_fd, batch.node.dst_fd.as_ref(), &dir_rel, item, counters);
        }
        complete(Some(batch.node), self, counters);
    }
}

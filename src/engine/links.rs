//! Hard links: names that share an inode in SOURCE share one in REPLICA. The walk and event
//! work do not apply such names one at a time: they hand them to the run's `LinkGroups`,
//! and once the walk is done each group is settled as a whole — one name (the leader) is
//! made right like any file, and every other name becomes one more link to the leader's
//! REPLICA file. A content change made through any name thus reaches all of them, and an
//! inode SOURCE split (an editor's write-temp-then-rename) is split the same way, because
//! only names that still share SOURCE's inode are joined.
//!
//! Memory goes only to inodes with more than one name: per run, the names met; across runs,
//! `LinkIndex`, from SOURCE inode to its names, so event work on one name reaches the
//! others. A full pass rebuilds the index from what it saw.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::{info, warn};

use super::Engine;
use super::decide::{Action, Item};
use super::names::{c_name, open_path_at};
use super::report::Counters;
use crate::entry::{Entry, Kind};
use crate::error::{EntryError, Op};
use crate::ops;
use crate::relpath::RelPath;
use crate::replica::Replica;

/// A link REPLICA refused was met (warned about once per process).
static LINK_REFUSED: AtomicBool = AtomicBool::new(false);

/// A SOURCE file's (device, inode).
type InodeKey = (u64, u64);

/// One name of a link group, with what the walk saw of it (`None` for a name that came
/// from the index or a directory scan: it is looked at when the group is settled).
struct LinkName {
    rel: RelPath,
    seen: Option<(Option<Entry>, Action)>,
}

/// The hard-linked names one run met, by SOURCE inode.
#[derive(Default)]
pub(super) struct LinkGroups {
    groups: Mutex<HashMap<InodeKey, (u64, Vec<LinkName>)>>,
}

impl LinkGroups {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<InodeKey, (u64, Vec<LinkName>)>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Across runs: the names each multiply-linked SOURCE inode had when last seen, and its
/// link count then (so event work knows whether it has met every name).
#[derive(Default)]
pub(super) struct LinkIndex {
    known: Mutex<HashMap<InodeKey, (u64, Vec<RelPath>)>>,
}

impl LinkIndex {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<InodeKey, (u64, Vec<RelPath>)>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Both roots, for reaching any name of a group (`D`: an open REPLICA directory).
pub(super) struct LinkRoots<D> {
    pub src: OwnedFd,
    pub dst: Option<D>,
}

/// A name's parent directories on both sides.
struct Parents<D> {
    src: OwnedFd,
    dst: Option<D>,
    rel: RelPath,
    name: CString,
}

impl<R: Replica> Engine<R> {
    /// Takes the name `rel` of a multiply-linked SOURCE file into the run's link groups
    /// instead of applying `action` to it now; false when hard links are not mirrored or
    /// `src` is not such a file.
    pub(super) fn defer_link(
        &self,
        rel: impl FnOnce() -> RelPath,
        src: Option<&Entry>,
        dst: Option<&Entry>,
        action: Action,
        counters: &Counters,
    ) -> bool {
        let Some(src) = src.filter(|s| self.opts.hard_links && s.kind == Kind::File && s.nlink > 1)
        else {
            return false;
        };
        let name = LinkName { rel: rel(), seen: Some((dst.cloned(), action)) };
        let mut groups = counters.links.lock();
        let group = groups.entry((src.dev, src.ino)).or_insert_with(|| (src.nlink, Vec::new()));
        group.1.push(name);
        true
    }

    /// Settles every link group the run met. `full`: the run walked the whole tree, so
    /// its groups are complete and become the index; otherwise each group is completed
    /// from the index and from its directory first.
    pub(super) fn settle_links(&self, roots: &LinkRoots<R::Dir>, full: bool, counters: &Counters) {
        let groups = std::mem::take(&mut *counters.links.lock());
        if full && self.opts.link_index {
            let index = groups
                .iter()
                .map(|(key, (nlink, names))| {
                    (*key, (*nlink, names.iter().map(|n| n.rel.clone()).collect()))
                })
                .collect();
            *self.links.lock() = index;
        }
        if groups.is_empty() || self.cancel.is_cancelled() {
            return;
        }
        rayon::scope(|scope| {
            for (key, (nlink, mut names)) in groups {
                if !full {
                    self.complete_group(roots, key, nlink, &mut names, counters);
                }
                scope.spawn(move |_| self.settle_group(roots, key, names, counters));
            }
        });
    }

    /// Adds the names event work did not see: those the index knows, and those in the
    /// same SOURCE directory with the same inode. Flags the run when names are still
    /// missing and the index cannot vouch that they lie outside the mirrored tree.
    fn complete_group(
        &self,
        roots: &LinkRoots<R::Dir>,
        key: InodeKey,
        nlink: u64,
        names: &mut Vec<LinkName>,
        counters: &Counters,
    ) {
        let mut index = self.links.lock();
        let known = index.get(&key).map(|(n, names)| (*n, names.clone()));
        let add = |names: &mut Vec<LinkName>, rel: RelPath| {
            if !names.iter().any(|n| n.rel == rel) {
                names.push(LinkName { rel, seen: None });
            }
        };
        if let Some((_, known_names)) = &known {
            for rel in known_names {
                add(names, rel.clone());
            }
        }
        if (names.len() as u64) < nlink {
            for rel in self.same_inode_siblings(roots, key, names) {
                add(names, rel);
            }
        }
        let vouched = known.is_some_and(|(n, k)| n == nlink && k.len() <= names.len());
        if (names.len() as u64) < nlink && !vouched {
            counters.links_unresolved.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        index.insert(key, (nlink, names.iter().map(|n| n.rel.clone()).collect()));
    }

    /// Names in the directories of `names` whose SOURCE inode is `key` (getdents tells the
    /// inode: no stat per name).
    fn same_inode_siblings(
        &self,
        roots: &LinkRoots<R::Dir>,
        key: InodeKey,
        names: &[LinkName],
    ) -> Vec<RelPath> {
        let mut dirs: Vec<RelPath> = names.iter().filter_map(|n| n.rel.parent()).collect();
        dirs.sort_unstable();
        dirs.dedup();
        let mut found = Vec::new();
        for dir in dirs {
            let Ok(fd) = open_path_at(&roots.src, &dir) else { continue };
            let Ok(items) = ops::list_dir(&fd) else { continue };
            found.extend(
                items
                    .iter()
                    .filter(|i| i.ino == key.1 && !ops::is_temp_name(i.name.to_bytes()))
                    .map(|i| dir.join(OsStr::from_bytes(i.name.to_bytes())))
                    // An excluded name is not mirrored, linked or not.
                    .filter(|rel| !self.excludes.matches_path_or_parent(rel, false)),
            );
        }
        found
    }

    /// Makes one group right: the leader like any file, then every other name that still
    /// shares SOURCE's inode a link to the leader's REPLICA file.
    fn settle_group(
        &self,
        roots: &LinkRoots<R::Dir>,
        key: InodeKey,
        mut names: Vec<LinkName>,
        counters: &Counters,
    ) {
        names.sort_unstable_by(|a, b| a.rel.cmp(&b.rel));
        names.dedup_by(|a, b| a.rel == b.rel);
        if already_joined(&names) || self.cancel.is_cancelled() {
            return;
        }
        // A name whose REPLICA file already has the content leads: no copy needed. Else a
        // name this run saw with the group's inode: one from the index may be stale (gone,
        // or another inode now), and a leader SOURCE no longer has settles nothing.
        let keeps =
            |n: &LinkName| matches!(n.seen, Some((Some(_), Action::Nothing | Action::Attrs(_))));
        let lead =
            names.iter().position(keeps).or_else(|| names.iter().position(|n| n.seen.is_some()));
        let leader = names.remove(lead.unwrap_or(0));
        let Some(at) = self.parents(roots, &leader.rel) else { return };
        let Some((src, dst)) =
            self.stat_pair(&at.src, at.dst.as_ref(), &at.name, &leader.rel, counters)
        else {
            return;
        };
        // SOURCE moved on since the walk: the next look at this name handles it.
        let Some(src) = src.filter(|s| s.kind == Kind::File && (s.dev, s.ino) == key) else {
            return;
        };
        let mut action =
            self.decide_at(&at.src, at.dst.as_ref(), &at.name, Some(&src), dst.as_ref(), false);
        // REPLICA's file has names the group does not account for (one kept in REPLICA
        // for an excluded name, one a stranger made, perhaps outside REPLICA): it is
        // neither changed in place nor given more names; the group moves to a fresh copy.
        // Not in a dry run: it removes nothing, so names the real run has removed by now
        // (SOURCE dropped them) would still count against the file.
        if let Some(d) = dst.as_ref().filter(|d| d.kind == Kind::File && d.nlink > 1)
            && !self.opts.dry_run
            && matches!(action, Action::Nothing | Action::Attrs(_) | Action::CompareContent)
            && d.nlink > 1 + self.names_sharing(roots, d, &names)
        {
            action = Action::Update;
        }
        let keeps_content = matches!(action, Action::Nothing | Action::Attrs(_));
        let own = Counters::default();
        let item = Item { name: at.name.clone(), src: Some(src.clone()), dst: dst.clone(), action };
        self.apply(&at.src, at.dst.as_ref(), &at.rel, item, &own);
        counters.absorb(&own);
        if own.troubled() {
            return;
        }
        // What every other name must be: the leader's REPLICA file as it is now (in a dry
        // run: as it would be — a fresh copy matches no existing name).
        let target = match &at.dst {
            Some(dir) if !self.opts.dry_run => match self.replica.stat(dir, &at.name) {
                Ok(Some(t)) if t.kind == Kind::File => Some(t),
                _ => return,
            },
            _ => dst.filter(|d| d.kind == Kind::File && keeps_content),
        };
        for other in &names {
            if self.cancel.is_cancelled() {
                return;
            }
            self.join(roots, &at, &leader.rel, key, src.nlink, target.as_ref(), other, counters);
        }
        if action != Action::Nothing
            && let Some(dst_dir) = &at.dst
        {
            self.fix_dir_attrs(&at.src, dst_dir, &at.rel, counters);
        }
    }

    /// Makes `other` a name of `target` (the leader `leader` in `at`), if SOURCE still
    /// links it to the group's inode and REPLICA does not already.
    #[allow(clippy::too_many_arguments)]
    fn join(
        &self,
        roots: &LinkRoots<R::Dir>,
        at: &Parents<R::Dir>,
        leader: &RelPath,
        key: InodeKey,
        nlink: u64,
        target: Option<&Entry>,
        other: &LinkName,
        counters: &Counters,
    ) {
        let Some(here) = self.parents(roots, &other.rel) else { return };
        let Some((src, dst)) =
            self.stat_pair(&here.src, here.dst.as_ref(), &here.name, &other.rel, counters)
        else {
            return;
        };
        if !src.as_ref().is_some_and(|s| s.kind == Kind::File && (s.dev, s.ino) == key) {
            return;
        }
        let joined =
            |d: &Entry, t: &Entry| d.kind == Kind::File && (d.dev, d.ino) == (t.dev, t.ino);
        if let (Some(d), Some(t)) = (&dst, target)
            && joined(d, t)
        {
            return;
        }
        let rel = &other.rel;
        if let (Some(t), Some(to_dir), Some(from_dir), false) =
            (target, &here.dst, &at.dst, self.opts.dry_run)
        {
            if let Some(d) = dst.as_ref().filter(|d| d.kind == Kind::Dir)
                && let Err(e) = self.make_way(Some(to_dir), &here.name, rel, d, counters)
            {
                return self.record(counters, e);
            }
            let linked = self.replica.link(from_dir, &at.name, t, nlink, to_dir, &here.name);
            match linked {
                // REPLICA cannot give the file one more name (its filesystem's link limit,
                // or no hard links at all): this name is mirrored as a file of its own
                // rather than not at all.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EMLINK | libc::EPERM | libc::EOPNOTSUPP)
                    ) =>
                {
                    if !LINK_REFUSED.swap(true, Ordering::Relaxed) {
                        warn!(path = %rel, error = %e, "the replica cannot link this file; names it refuses are copied as files of their own");
                    }
                    let action = self.decide_at(
                        &here.src,
                        Some(to_dir),
                        &here.name,
                        src.as_ref(),
                        dst.as_ref(),
                        false,
                    );
                    let item = Item { name: here.name.clone(), src, dst, action };
                    return self.apply(&here.src, Some(to_dir), &here.rel, item, counters);
                }
                Err(e) => return self.record(counters, EntryError::io(Op::Link, rel, e)),
                Ok(()) => {}
            }
            self.fix_dir_attrs(&here.src, to_dir, &here.rel, counters);
        } else if !self.opts.dry_run {
            return;
        } else if let Some(d) = dst.as_ref().filter(|d| d.kind == Kind::Dir)
            && let Err(e) = self.make_way(here.dst.as_ref(), &here.name, rel, d, counters)
        {
            // The dry run says what the real run does first: the directory in the way goes
            // (a dry run's removal only counts and logs).
            return self.record(counters, e);
        }
        info!(action = %"link", path = %rel, target = %leader);
        Counters::bump(&counters.link, 1);
    }

    /// How many of `names` are, in REPLICA, the file `replica`.
    fn names_sharing(&self, roots: &LinkRoots<R::Dir>, replica: &Entry, names: &[LinkName]) -> u64 {
        let shares = |n: &LinkName| {
            let Some(here) = self.parents(roots, &n.rel) else { return false };
            let Some(dir) = &here.dst else { return false };
            matches!(self.replica.stat(dir, &here.name), Ok(Some(e))
                if e.kind == Kind::File && (e.dev, e.ino) == (replica.dev, replica.ino))
        };
        names.iter().filter(|n| shares(n)).count() as u64
    }

    /// Opens the parent directories of `rel` on both sides (REPLICA's may be missing only
    /// in a dry run).
    fn parents(&self, roots: &LinkRoots<R::Dir>, rel: &RelPath) -> Option<Parents<R::Dir>> {
        let dir = rel.parent()?;
        let name = c_name(rel.file_name()?);
        let src = open_path_at(&roots.src, &dir).ok()?;
        let dst = roots.dst.as_ref().and_then(|d| self.open_replica_path(d, &dir).ok());
        if dst.is_none() && !self.opts.dry_run {
            return None;
        }
        Some(Parents { src, dst, rel: dir, name })
    }
}

/// True if the walk found every name of the group in sync and sharing one REPLICA inode.
fn already_joined(names: &[LinkName]) -> bool {
    let mut inode = None;
    names.iter().all(|n| match &n.seen {
        Some((Some(d), Action::Nothing)) if d.kind == Kind::File => {
            *inode.get_or_insert((d.dev, d.ino)) == (d.dev, d.ino)
        }
        _ => false,
    })
}

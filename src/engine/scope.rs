//! What is mirrored at all: excludes judged per side, bind-mount and own-file boundaries
//! that are neither entered nor removed, `--one-file-system`, and the warnings said once
//! (skipped sockets and devices, an mtime REPLICA cannot store exactly). Asked for every
//! entry before deciding.

use std::sync::atomic::Ordering;

use tracing::warn;

use crate::entry::{Entry, Kind};
use crate::error::{EntryError, EntryErrorKind, Op};
use crate::relpath::RelPath;
use crate::replica::Replica;

use super::Engine;
use super::names::RelSource;
use super::report::Counters;

/// How many skipped paths are remembered so each is warned about once.
pub(super) const SKIPS_REMEMBERED: usize = 10_000;

impl<R: Replica> Engine<R> {
    /// True if the name is one this engine must not touch: on either side a directory that
    /// is SOURCE or REPLICA (or holds one) met again through a bind mount, or a file this
    /// process writes (its log); in REPLICA, any mount (a bind mount of SOURCE's own
    /// subdirectory would be emptied through it). Neither entered nor removed; one warning.
    pub(super) fn at_boundary(
        &self,
        src: Option<&Entry>,
        dst: Option<&Entry>,
        rel: &dyn RelSource,
    ) -> bool {
        let hit = [src, dst].into_iter().flatten().any(|e| self.untouchable(e))
            || dst.is_some_and(|d| d.mount_root);
        if hit {
            let rel = rel.rel();
            let mut warned = self.boundaries_warned.lock().unwrap_or_else(|e| e.into_inner());
            if warned.insert(rel.clone()) {
                warn!(path = %rel, "not mirrored: a mount inside the replica, the source or the replica itself mounted again here, or replicad's own log file; it is neither entered nor removed");
            }
        }
        hit
    }

    /// `--one-file-system`: `src` is a directory on another filesystem than SOURCE's root
    /// (or a bind mount), whose content is not mirrored.
    pub(super) fn other_filesystem(&self, src: &Entry, is_root: bool) -> bool {
        self.opts.one_file_system
            && src.kind == Kind::Dir
            && !is_root
            && (src.dev != self.guard.source_dev() || src.mount_root)
    }

    /// SOURCE, REPLICA or a directory holding one (seen below a root), or a file of ours.
    pub(super) fn untouchable(&self, e: &Entry) -> bool {
        self.guard.is_boundary(e) || self.own_files.contains(&(e.dev, e.ino))
    }

    pub(super) fn excludes_any(&self) -> bool {
        !self.excludes.is_empty()
    }

    /// Applies the excludes to one name, judging each side's entry as its own type (a
    /// dir-only pattern such as `build/` can match REPLICA's directory and not SOURCE's
    /// file). `None`: the name is left alone; otherwise the entries the decision may see.
    /// An excluded REPLICA entry is never removed: where SOURCE has a mirrored entry of
    /// another type at its name, that entry cannot be placed (an entry error, as rsync's
    /// "could not make way").
    pub(super) fn unexcluded(
        &self,
        rel: &RelPath,
        src: Option<Entry>,
        dst: Option<Entry>,
        counters: &Counters,
    ) -> Option<(Option<Entry>, Option<Entry>)> {
        let excluded = |e: &Option<Entry>| {
            e.as_ref().is_some_and(|e| self.excludes.matches(rel, e.kind == Kind::Dir))
        };
        match (excluded(&src), excluded(&dst)) {
            (false, false) => Some((src, dst)),
            // SOURCE's entry is not mirrored: REPLICA's (of a type the pattern misses) is a
            // stray like any other.
            (true, false) => Some((None, dst)),
            (false, true) if src.is_some() => {
                self.record(
                    counters,
                    EntryError::new(Op::Create, rel, EntryErrorKind::CannotMakeWay),
                );
                None
            }
            (_, true) => None,
        }
    }

    /// True the first time `rel` is skipped (then it is warned about); past
    /// [`SKIPS_REMEMBERED`] paths, new ones are no longer warned (memory stays bounded).
    pub(super) fn first_skip(&self, rel: &RelPath) -> bool {
        let mut warned = self.skips_warned.lock().unwrap_or_else(|e| e.into_inner());
        warned.len() < SKIPS_REMEMBERED && warned.insert(rel.clone())
    }

    /// Says once per run that REPLICA cannot store `src`'s mtime exactly (it is compared as
    /// stored, so this costs no copies; the user should know the replica is not exact).
    pub(super) fn note_mtime_precision(&self, rel: &dyn RelSource, src: &Entry) {
        let mtimes = self.rules().mtimes;
        if mtimes.is_exact() || mtimes.stored(src.mtime) == src.mtime {
            return;
        }
        if !self.mtimes_warned.swap(true, Ordering::Relaxed) {
            let range = |sec: i64| match sec {
                i64::MIN | i64::MAX => "unlimited".to_string(),
                sec => sec.to_string(),
            };
            warn!(
                path = %rel.rel(),
                granularity_ns = mtimes.granularity_ns,
                earliest = %range(mtimes.min_sec),
                latest = %range(mtimes.max_sec),
                "the replica's filesystem cannot store this modification time exactly: times are compared as it stores them (like rsync --modify-window), and files are not copied again because of it; said once"
            );
        }
    }
}

//! What a piece of work did: the counts of one run (`Counters`, shared by the pool's
//! threads), the report handed to `--once` and the service (`PassReport`), the exit status
//! it maps to, and the log lines that speak for them (the pass summary, `attrs`). One type
//! per purpose; nothing here decides or applies.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tracing::info;

use super::Engine;
use super::links::LinkGroups;
use crate::entry::AttrDiff;
use crate::error::GuardTrip;
use crate::relpath::RelPath;
use crate::replica::Replica;

/// The pass summary's log target: `-q` still shows it (see `logging`).
pub const SUMMARY_TARGET: &str = "replicad::summary";

/// Counts of one pass (or one event's work).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Source entries looked at.
    pub scanned: u64,
    /// Directories, symlinks, FIFOs and devices created.
    pub create: u64,
    /// Files copied that were missing.
    pub copy: u64,
    /// Files whose content was replaced.
    pub update: u64,
    /// Entries whose metadata only were corrected.
    pub attrs: u64,
    /// Renames that followed a rename in SOURCE.
    pub rename: u64,
    /// Names given to a REPLICA file because they share its inode in SOURCE (hard links).
    pub link: u64,
    /// Entries removed (a directory counts once).
    pub remove: u64,
    /// Entries that could not be mirrored.
    pub errors: u64,
    /// Entries skipped with a warning (sockets, devices without CAP_MKNOD).
    pub skipped: u64,
    /// SOURCE entries that vanished or changed while being mirrored (warnings).
    pub vanished: u64,
    /// Bytes copied.
    pub bytes: u64,
}

impl Counts {
    /// Number of changes made (or, in a dry run, that would be made).
    pub fn changes(&self) -> u64 {
        self.create + self.copy + self.update + self.attrs + self.rename + self.link + self.remove
    }

    pub(super) fn add(&mut self, o: &Counts) {
        self.scanned += o.scanned;
        self.create += o.create;
        self.copy += o.copy;
        self.update += o.update;
        self.attrs += o.attrs;
        self.rename += o.rename;
        self.link += o.link;
        self.remove += o.remove;
        self.errors += o.errors;
        self.skipped += o.skipped;
        self.vanished += o.vanished;
        self.bytes += o.bytes;
    }
}

/// The outcome of a full pass or of one piece of event work.
#[derive(Clone, Debug, Default)]
pub struct PassReport {
    /// What was done.
    pub counts: Counts,
    /// How long it took.
    pub duration: Duration,
    /// Set when the deletion guard stopped the work (nothing was changed).
    pub guard: Option<GuardTrip>,
    /// Some file changed while being copied: worth retrying soon.
    pub transient: bool,
    /// Shutdown interrupted the work.
    pub cancelled: bool,
    /// Event work met a hard-linked file whose other names it could not find (a link made
    /// across directories): only a full pass can join them.
    pub links_unresolved: bool,
}

impl PassReport {
    /// The `--once` exit status: 0 in sync, 23 when some entries failed, 24 when the only
    /// trouble was SOURCE entries vanishing or changing under the pass, 1 when a guard
    /// refused the pass, 20 when SIGINT/SIGTERM stopped it (rsync's codes).
    pub fn exit_status(&self) -> u8 {
        if self.guard.is_some() {
            1
        } else if self.cancelled {
            20
        } else if self.counts.errors > 0 {
            23
        } else if self.counts.vanished > 0 {
            24
        } else {
            0
        }
    }

    /// Folds another report into this one (event work that reconciled several paths).
    pub fn merge(&mut self, other: PassReport) {
        self.counts.add(&other.counts);
        self.duration += other.duration;
        self.guard = self.guard.take().or(other.guard);
        self.transient |= other.transient;
        self.cancelled |= other.cancelled;
        self.links_unresolved |= other.links_unresolved;
    }

    /// The pass summary line (SPEC §3).
    pub fn log_summary(&self, dry_run: bool) {
        let c = &self.counts;
        info!(
            target: SUMMARY_TARGET,
            duration = self.duration.as_secs_f64(),
            scanned = c.scanned,
            create = c.create,
            copy = c.copy,
            update = c.update,
            attrs = c.attrs,
            rename = c.rename,
            link = c.link,
            remove = c.remove,
            errors = c.errors,
            skipped = c.skipped,
            vanished = c.vanished,
            bytes = c.bytes,
            dry_run,
            "pass complete"
        );
    }
}

/// One run's shared state: what it did, and the hard-linked names it met (settled once
/// the walk is done).
#[derive(Default)]
pub(super) struct Counters {
    pub(super) scanned: AtomicU64,
    pub(super) create: AtomicU64,
    pub(super) copy: AtomicU64,
    pub(super) update: AtomicU64,
    pub(super) attrs: AtomicU64,
    pub(super) rename: AtomicU64,
    pub(super) link: AtomicU64,
    pub(super) remove: AtomicU64,
    pub(super) errors: AtomicU64,
    pub(super) skipped: AtomicU64,
    pub(super) vanished: AtomicU64,
    pub(super) bytes: AtomicU64,
    pub(super) transient: AtomicBool,
    pub(super) links_unresolved: AtomicBool,
    pub(super) links: LinkGroups,
}

impl Counters {
    pub(super) fn bump(counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Ordering::Relaxed);
    }

    pub(super) fn snapshot(&self) -> Counts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Counts {
            scanned: get(&self.scanned),
            create: get(&self.create),
            copy: get(&self.copy),
            update: get(&self.update),
            attrs: get(&self.attrs),
            rename: get(&self.rename),
            link: get(&self.link),
            remove: get(&self.remove),
            errors: get(&self.errors),
            skipped: get(&self.skipped),
            vanished: get(&self.vanished),
            bytes: get(&self.bytes),
        }
    }

    /// Adds what another run's counters (a part of this run done on its own) counted.
    pub(super) fn absorb(&self, other: &Counters) {
        let c = other.snapshot();
        for (to, by) in [
            (&self.scanned, c.scanned),
            (&self.create, c.create),
            (&self.copy, c.copy),
            (&self.update, c.update),
            (&self.attrs, c.attrs),
            (&self.rename, c.rename),
            (&self.link, c.link),
            (&self.remove, c.remove),
            (&self.errors, c.errors),
            (&self.skipped, c.skipped),
            (&self.vanished, c.vanished),
            (&self.bytes, c.bytes),
        ] {
            Counters::bump(to, by);
        }
        if other.transient.load(Ordering::Relaxed) {
            self.transient.store(true, Ordering::Relaxed);
        }
        if other.links_unresolved.load(Ordering::Relaxed) {
            self.links_unresolved.store(true, Ordering::Relaxed);
        }
    }

    /// True if anything went wrong (an error, a vanished entry, a copy to retry).
    pub(super) fn troubled(&self) -> bool {
        let c = self.snapshot();
        c.errors + c.vanished > 0 || self.transient.load(Ordering::Relaxed)
    }
}

impl<R: Replica> Engine<R> {
    pub(super) fn log_attrs(&self, rel: &RelPath, diff: AttrDiff) {
        let mut what = Vec::with_capacity(5);
        if diff.mode {
            what.push("mode");
        }
        if diff.mtime {
            what.push("mtime");
        }
        if diff.owner {
            what.push("owner");
        }
        if diff.xattrs {
            what.push("xattrs");
        }
        if diff.acl {
            what.push("acl");
        }
        info!(action = %"attrs", path = %rel, changed = %what.join(","));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_maps_outcomes() {
        let mut report = PassReport::default();
        assert_eq!(report.exit_status(), 0);
        report.counts.errors = 1;
        assert_eq!(report.exit_status(), 23);
        report.counts.errors = 0;
        report.counts.vanished = 1;
        assert_eq!(report.exit_status(), 24);
        report.counts.errors = 1;
        assert_eq!(report.exit_status(), 23, "a real error outweighs a vanished entry");
        report.cancelled = true;
        assert_eq!(report.exit_status(), 20);
        report.guard = Some(GuardTrip::SourceEmpty);
        assert_eq!(report.exit_status(), 1);
    }
}

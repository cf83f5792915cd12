//! What the service knows about itself, for the status endpoint and systemd's `STATUS=`:
//! counters and a histogram (in [`metrics`]), the live state (queue depth and the age of
//! the oldest unapplied change, first pass done, guard, watcher, heartbeat), the last pass
//! and the last errors. Written by the engine, the queue and the pass loop; read by
//! requests. Everything is an atomic or a mutex held for a copy, never across I/O or an
//! await, so a request can never slow the mirror. Knows nothing of HTTP or tokio.

pub mod metrics;

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::error::Op;
use crate::relpath::RelPath;
pub use metrics::Metrics;

/// How many recent entry errors `/status` shows.
pub const RECENT_ERRORS: usize = 20;

/// One entry error as `/status` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ErrorRecord {
    /// Unix time, seconds.
    pub time: f64,
    /// What replicad was doing (`copy`, `stat`, ...).
    pub op: String,
    /// The path relative to the roots, escaped as in the log.
    pub path: String,
    /// The OS error (or replicad's reason).
    pub error: String,
}

/// The summary of the last complete full pass.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PassSummary {
    /// When it ended, Unix seconds.
    pub ended: f64,
    /// How long it took, seconds.
    pub duration_seconds: f64,
    /// Entries looked at.
    pub scanned: u64,
    /// Changes made.
    pub changes: u64,
    /// Bytes copied.
    pub bytes: u64,
    /// Entries that could not be mirrored.
    pub errors: u64,
    /// Entries that vanished or changed under the pass.
    pub vanished: u64,
}

/// The service's view of itself. One per process, shared by `Arc`.
pub struct Stats {
    /// Counters and histogram, encoded by `/metrics`.
    pub metrics: Metrics,
    epoch: Instant,
    started: SystemTime,
    first_pass_done: AtomicBool,
    stopping: AtomicBool,
    guard: Mutex<Option<String>>,
    /// Pending plus in-flight event work.
    queue_depth: AtomicU64,
    /// Nanoseconds after `epoch` (+1) when the oldest unapplied change was seen; 0: none.
    oldest_change: AtomicU64,
    /// Same, for a full pass requested because events were lost; 0: none pending.
    pass_requested: AtomicU64,
    /// Changes the queue has been told of, ever.
    changes_seen: AtomicU64,
    /// `changes_seen` as it was when the last exact pass began; `u64::MAX`: never.
    in_sync_mark: AtomicU64,
    /// Unix time (ns) at the end of the last exact pass; 0: never.
    last_in_sync: AtomicU64,
    /// Nanoseconds after `epoch` of the main loop's last sign of life.
    heartbeat: AtomicU64,
    /// How old the heartbeat may get before `/healthz` fails, in nanoseconds.
    liveness_limit: AtomicU64,
    watches: AtomicU64,
    degraded: AtomicBool,
    last_pass: Mutex<Option<PassSummary>>,
    errors: Mutex<VecDeque<ErrorRecord>>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Stats {
    /// Fresh state: nothing done yet, alive now.
    pub fn new() -> Stats {
        Stats {
            metrics: Metrics::new(),
            epoch: Instant::now(),
            started: SystemTime::now(),
            first_pass_done: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            guard: Mutex::new(None),
            queue_depth: AtomicU64::new(0),
            oldest_change: AtomicU64::new(0),
            pass_requested: AtomicU64::new(0),
            changes_seen: AtomicU64::new(0),
            in_sync_mark: AtomicU64::new(u64::MAX),
            last_in_sync: AtomicU64::new(0),
            heartbeat: AtomicU64::new(0),
            liveness_limit: AtomicU64::new(nanos(Duration::from_secs(10))),
            watches: AtomicU64::new(0),
            degraded: AtomicBool::new(false),
            last_pass: Mutex::new(None),
            errors: Mutex::new(VecDeque::with_capacity(RECENT_ERRORS)),
        }
    }

    fn since_epoch(&self, t: Instant) -> u64 {
        nanos(t.saturating_duration_since(self.epoch)).saturating_add(1)
    }

    // --- written by the engine ------------------------------------------------------

    /// An entry could not be mirrored.
    pub fn entry_error(&self, op: Op, path: &RelPath, error: &dyn std::fmt::Display) {
        self.metrics.entry_error(op);
        let record = ErrorRecord {
            time: unix_seconds(SystemTime::now()),
            op: op.to_string(),
            path: path.to_string(),
            error: error.to_string(),
        };
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        if errors.len() == RECENT_ERRORS {
            errors.pop_front();
        }
        errors.push_back(record);
    }

    // --- written by the queue -------------------------------------------------------

    /// A change (a hint from the watcher) arrived: REPLICA is no longer known exact.
    pub fn change_seen(&self) {
        self.changes_seen.fetch_add(1, Ordering::Relaxed);
    }

    /// The queue's depth and when its oldest unapplied change was seen.
    pub fn set_queue(&self, depth: usize, oldest: Option<Instant>) {
        self.queue_depth.store(depth as u64, Ordering::Relaxed);
        let oldest = oldest.map_or(0, |t| self.since_epoch(t));
        self.oldest_change.store(oldest, Ordering::Relaxed);
    }

    // --- written by the pass loop ---------------------------------------------------

    /// A full pass was asked for because events were lost: a change of unknown place is
    /// pending from now until that pass ends.
    pub fn full_pass_requested(&self, at: Instant) {
        let at = self.since_epoch(at);
        let _ = self.pass_requested.compare_exchange(0, at, Ordering::Relaxed, Ordering::Relaxed);
        self.metrics.overflows.inc();
    }

    /// The value to hand [`Stats::pass_ended`] for a pass starting now.
    pub fn pass_begins(&self) -> u64 {
        self.changes_seen.load(Ordering::Relaxed)
    }

    /// A full pass completed (no guard held it back, no stop cut it short). `exact` when
    /// it met no error and no vanished entry; it makes REPLICA "in sync" only if no change
    /// arrived since it began (`mark`, from [`Stats::pass_begins`]).
    pub fn pass_ended(&self, mark: u64, summary: PassSummary, exact: bool) {
        self.metrics.pass(&summary);
        self.first_pass_done.store(true, Ordering::Relaxed);
        self.pass_requested.store(0, Ordering::Relaxed);
        *self.guard.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if exact && self.changes_seen.load(Ordering::Relaxed) == mark {
            self.in_sync_mark.store(mark, Ordering::Relaxed);
            self.last_in_sync.store(nanos_unix(SystemTime::now()), Ordering::Relaxed);
        }
        *self.last_pass.lock().unwrap_or_else(|e| e.into_inner()) = Some(summary);
    }

    /// The deletion guard holds (or no longer does), outside a complete pass.
    pub fn set_guard(&self, guard: Option<String>) {
        *self.guard.lock().unwrap_or_else(|e| e.into_inner()) = guard;
    }

    /// The main loop showed it is alive (the watchdog's signal).
    pub fn heartbeat(&self) {
        self.heartbeat.store(self.since_epoch(Instant::now()), Ordering::Relaxed);
    }

    /// How old the heartbeat may get before the service counts as not alive.
    pub fn set_liveness_limit(&self, limit: Duration) {
        self.liveness_limit.store(nanos(limit), Ordering::Relaxed);
    }

    /// A stop began.
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Watches in use, and whether the watcher misses some of SOURCE.
    pub fn set_watcher(&self, watches: u64, degraded: bool) {
        self.watches.store(watches, Ordering::Relaxed);
        self.degraded.store(degraded, Ordering::Relaxed);
    }

    // --- read by requests and STATUS= -----------------------------------------------

    /// Age of the oldest change seen in SOURCE and not yet applied; zero when idle.
    pub fn lag(&self, now: Instant) -> Duration {
        let now = self.since_epoch(now);
        [&self.oldest_change, &self.pass_requested]
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .filter(|&t| t != 0)
            .map(|t| Duration::from_nanos(now.saturating_sub(t)))
            .max()
            .unwrap_or_default()
    }

    /// When REPLICA was last known exact, if it still is and has ever been.
    pub fn last_in_sync(&self) -> Option<SystemTime> {
        match self.last_in_sync.load(Ordering::Relaxed) {
            0 => None,
            t => Some(UNIX_EPOCH + Duration::from_nanos(t)),
        }
    }

    /// True when the last exact pass still stands: no change arrived since it began.
    pub fn in_sync(&self) -> bool {
        let mark = self.in_sync_mark.load(Ordering::Relaxed);
        mark != u64::MAX && mark == self.changes_seen.load(Ordering::Relaxed)
    }

    /// Liveness: the main loop showed life within the limit.
    pub fn alive(&self, now: Instant) -> bool {
        let age = self.since_epoch(now).saturating_sub(self.heartbeat.load(Ordering::Relaxed));
        age <= self.liveness_limit.load(Ordering::Relaxed)
    }

    /// Readiness, with the reason when not ready.
    pub fn ready(&self) -> Result<(), String> {
        if self.stopping.load(Ordering::Relaxed) {
            return Err("stopping".into());
        }
        if let Some(guard) = self.guard.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return Err(guard);
        }
        if !self.first_pass_done.load(Ordering::Relaxed) {
            return Err("the first full pass has not finished".into());
        }
        Ok(())
    }

    /// The deletion guard's reason, while it holds.
    pub fn guard(&self) -> Option<String> {
        self.guard.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// True once a full pass has completed.
    pub fn first_pass_done(&self) -> bool {
        self.first_pass_done.load(Ordering::Relaxed)
    }

    /// Pending plus in-flight event work.
    pub fn queue_depth(&self) -> u64 {
        self.queue_depth.load(Ordering::Relaxed)
    }

    /// Watches in use, and whether the watcher is degraded.
    pub fn watcher(&self) -> (u64, bool) {
        (self.watches.load(Ordering::Relaxed), self.degraded.load(Ordering::Relaxed))
    }

    /// When the process started.
    pub fn started(&self) -> SystemTime {
        self.started
    }

    /// The last complete pass.
    pub fn last_pass(&self) -> Option<PassSummary> {
        self.last_pass.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The last [`RECENT_ERRORS`] entry errors, oldest first.
    pub fn recent_errors(&self) -> Vec<ErrorRecord> {
        self.errors.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
    }
}

fn nanos_unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, nanos)
}

/// Seconds since the Unix epoch, as `/status` and `/metrics` give times.
pub fn unix_time(t: SystemTime) -> f64 {
    unix_seconds(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_the_age_of_the_oldest_unapplied_change() {
        let stats = Stats::new();
        let t0 = Instant::now();
        assert_eq!(stats.lag(t0), Duration::ZERO, "idle: no lag");
        stats.set_queue(2, Some(t0));
        assert_eq!(stats.lag(t0 + Duration::from_secs(3)), Duration::from_secs(3));
        stats.full_pass_requested(t0 + Duration::from_secs(1));
        assert_eq!(stats.lag(t0 + Duration::from_secs(3)), Duration::from_secs(3));
        stats.set_queue(0, None);
        assert_eq!(stats.lag(t0 + Duration::from_secs(3)), Duration::from_secs(2), "the request");
        stats.pass_ended(stats.pass_begins(), PassSummary::default(), true);
        assert_eq!(stats.lag(t0 + Duration::from_secs(3)), Duration::ZERO);
    }

    #[test]
    fn in_sync_only_after_an_exact_pass_no_change_interrupted() {
        let stats = Stats::new();
        assert!(!stats.in_sync() && stats.last_in_sync().is_none());
        let mark = stats.pass_begins();
        stats.pass_ended(mark, PassSummary::default(), false);
        assert!(!stats.in_sync(), "a pass with errors proves nothing");
        let mark = stats.pass_begins();
        stats.change_seen();
        stats.pass_ended(mark, PassSummary::default(), true);
        assert!(!stats.in_sync(), "a change arrived during the pass");
        let mark = stats.pass_begins();
        stats.pass_ended(mark, PassSummary::default(), true);
        assert!(stats.in_sync() && stats.last_in_sync().is_some());
        stats.change_seen();
        assert!(!stats.in_sync(), "a change since the pass");
        assert!(stats.last_in_sync().is_some(), "the time stays: it is when it was last exact");
    }

    #[test]
    fn readiness_says_why_not() {
        let stats = Stats::new();
        assert!(stats.ready().unwrap_err().contains("first full pass"));
        stats.set_guard(Some("deletion guard holds".into()));
        assert_eq!(stats.ready(), Err("deletion guard holds".into()));
        stats.pass_ended(0, PassSummary::default(), false);
        assert_eq!(stats.ready(), Ok(()), "a complete pass: the guard let go");
        stats.stopping();
        assert_eq!(stats.ready(), Err("stopping".into()));
    }

    #[test]
    fn only_the_last_errors_are_kept() {
        let stats = Stats::new();
        for i in 0..25 {
            let path = RelPath::new(std::path::Path::new(&format!("f{i}"))).unwrap();
            stats.entry_error(Op::Copy, &path, &"Permission denied (os error 13)");
        }
        let errors = stats.recent_errors();
        assert_eq!(errors.len(), RECENT_ERRORS);
        assert_eq!(errors[0].path, "f5");
    }
}

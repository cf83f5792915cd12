//! Talking to systemd: `READY=1`, `STATUS=`, `STOPPING=1`, and the watchdog, which is fed
//! only while work visibly moves (or the kernel flushes REPLICA), so a stuck service is
//! restarted and a busy one is not. All no-ops without `NOTIFY_SOCKET`/`WATCHDOG_USEC`.
//! The same heartbeat is what the status endpoint's `/healthz` reads.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::time::{Instant, Interval};

use crate::engine::{Mirror, PassReport};
use crate::stats::Stats;

/// Sends `state` to systemd; a failure to reach it is not worth stopping for.
pub fn notify(state: &[NotifyState]) {
    let _ = sd_notify::notify(state);
}

/// The `STATUS=` line for a pass: its summary (or the guard that holds), then how far
/// behind REPLICA is and since when it is known exact.
pub fn status_line(report: &PassReport, stats: &Stats) -> String {
    let pass = match &report.guard {
        Some(trip) => format!("{} holds: {trip}", trip.guard_name()),
        None => {
            let c = &report.counts;
            format!(
                "last pass: {} entries in {:.1?}, {} changes, {} errors",
                c.scanned,
                report.duration,
                c.changes(),
                c.errors
            )
        }
    };
    format!("{pass}; {}", sync_state(stats))
}

/// `lag 0.0s, in sync since 2026-…Z` (or `not in sync, last …`/`never in sync`).
pub fn sync_state(stats: &Stats) -> String {
    let lag = stats.lag(std::time::Instant::now()).as_secs_f64();
    let since = stats.last_in_sync().map(|t| humantime::format_rfc3339_seconds(t).to_string());
    match (stats.in_sync(), since) {
        (true, Some(t)) => format!("lag {lag:.1}s, in sync since {t}"),
        (_, Some(t)) => format!("lag {lag:.1}s, not in sync (last in sync {t})"),
        (_, None) => format!("lag {lag:.1}s, never in sync yet"),
    }
}

/// The `STATUS=` line while a pass runs: what it has done so far.
fn progress_line(engine: &dyn Mirror, first: bool) -> Option<String> {
    let c = engine.pass_progress()?;
    let which = if first { "first pass" } else { "pass" };
    Some(format!(
        "{which} running: {} entries, {} changes, {} bytes copied so far",
        c.scanned,
        c.changes(),
        c.bytes
    ))
}

/// Liveness is checked this often: the status endpoint's `/healthz` and, when enabled,
/// systemd's watchdog read the same heartbeat.
const LIVENESS_TICK: Duration = Duration::from_secs(1);

/// How old the heartbeat may get before `/healthz` fails, without a systemd watchdog.
const LIVENESS_LIMIT: Duration = Duration::from_secs(30);

/// The main loop's proof of life: a heartbeat every [`LIVENESS_TICK`] while it is
/// responsive, which `/healthz` reads, and systemd's watchdog pings on the same signal.
pub struct Watchdog {
    pings: Interval,
    systemd: bool,
    stats: Arc<Stats>,
    /// The engine's progress counter at the last look during work; `None` when work has
    /// just begun.
    seen: Option<u64>,
    /// Whether a full pass has completed (the STATUS= progress line says "first").
    first_done: bool,
}

impl Watchdog {
    /// A watchdog that judges liveness by the engine's progress counter.
    pub fn new(stats: Arc<Stats>) -> Watchdog {
        let systemd = sd_notify::watchdog_enabled();
        stats.set_liveness_limit(systemd.unwrap_or(LIVENESS_LIMIT));
        stats.heartbeat();
        let tick = systemd.map_or(LIVENESS_TICK, |d| (d / 2).min(LIVENESS_TICK));
        let mut pings = tokio::time::interval(tick);
        pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Watchdog { pings, systemd: systemd.is_some(), stats, seen: None, first_done: false }
    }

    /// The statistics this watchdog beats for.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Work begins (a full pass, or its wait for event work): the main loop was idle and
    /// answering until now, so the first ping during this work needs no progress yet. A
    /// ping time that falls right at its start would otherwise go unfed when the counter
    /// has not moved since the last look (a pass the deletion guard holds makes no
    /// progress at all), leaving systemd a whole WATCHDOG_USEC without a ping.
    pub fn work_begins(&mut self) {
        self.seen = None;
        self.first_done |= self.stats.first_pass_done();
    }

    /// Waits for the next ping time.
    pub async fn tick(&mut self) -> Instant {
        self.pings.tick().await
    }

    /// Pings unconditionally: the caller itself is the proof of life (an idle main loop).
    pub fn feed(&self) {
        self.stats.heartbeat();
        if self.systemd {
            notify(&[NotifyState::Watchdog]);
        }
    }

    /// Pings if `engine` moved since the last look, or is waiting on the kernel's flush:
    /// a pass (or event work the main loop waits for) that stopped moving is not fed.
    /// Also tells systemd how far the running pass has got.
    pub fn feed_if_moving(&mut self, engine: &dyn Mirror) {
        let now = engine.progress();
        if self.seen != Some(now) || engine.is_flushing() {
            self.feed();
        }
        self.seen = Some(now);
        if let Some(line) = progress_line(engine, !self.first_done) {
            notify(&[NotifyState::Status(&format!("{line}; {}", sync_state(&self.stats)))]);
        }
    }
}

/// How long a stop waits for in-flight work before it goes anyway.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

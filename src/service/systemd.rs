//! Talking to systemd: `READY=1`, `STATUS=`, `STOPPING=1`, and the watchdog, which is fed
//! only while work visibly moves (or the kernel flushes REPLICA), so a stuck service is
//! restarted and a busy one is not. All no-ops without `NOTIFY_SOCKET`/`WATCHDOG_USEC`.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio::time::{Instant, Interval};

use crate::reconcile::{Engine, PassReport};

/// Sends `state` to systemd; a failure to reach it is not worth stopping for.
pub fn notify(state: &[NotifyState]) {
    let _ = sd_notify::notify(state);
}

/// The `STATUS=` line for a pass.
pub fn status_line(report: &PassReport) -> String {
    match &report.guard {
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
    }
}

/// The watchdog's pings: every half of `WATCHDOG_USEC`, when enabled.
pub struct Watchdog {
    pings: Option<Interval>,
    /// The engine's progress counter at the last look during work; `None` when work has
    /// just begun.
    seen: Option<u64>,
}

impl Watchdog {
    /// A watchdog that judges liveness by the engine's progress counter.
    pub fn new() -> Watchdog {
        let pings = sd_notify::watchdog_enabled().map(|d| tokio::time::interval(d / 2));
        Watchdog { pings, seen: None }
    }

    /// Work begins (a full pass, or its wait for event work): the main loop was idle and
    /// answering until now, so the first ping during this work needs no progress yet. A
    /// ping time that falls right at its start would otherwise go unfed when the counter
    /// has not moved since the last look (a pass the deletion guard holds makes no
    /// progress at all), leaving systemd a whole WATCHDOG_USEC without a ping.
    pub fn work_begins(&mut self) {
        self.seen = None;
    }

    /// Waits for the next ping time (forever when the watchdog is off).
    pub async fn tick(&mut self) -> Instant {
        match &mut self.pings {
            Some(i) => i.tick().await,
            None => std::future::pending().await,
        }
    }

    /// Pings unconditionally: the caller itself is the proof of life (an idle main loop).
    pub fn feed(&self) {
        notify(&[NotifyState::Watchdog]);
    }

    /// Pings if `engine` moved since the last look, or is waiting on the kernel's flush:
    /// a pass (or event work the main loop waits for) that stopped moving is not fed.
    pub fn feed_if_moving(&mut self, engine: &Engine) {
        let now = engine.progress();
        if self.seen != Some(now) || engine.is_flushing() {
            self.feed();
        }
        self.seen = Some(now);
    }
}

/// How long a stop waits for in-flight work before it goes anyway.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

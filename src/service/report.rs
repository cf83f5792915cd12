//! What passes and event work tell the status endpoint's statistics: actions and bytes
//! for every report, and for a full pass either the guard that held it or its summary
//! (exact when it met no error and nothing vanished under it).

use crate::engine::PassReport;
use crate::stats::{PassSummary, Stats};

/// Counts what a pass or a piece of event work changed.
pub fn record_counts(stats: &Stats, report: &PassReport) {
    let c = &report.counts;
    for (action, n) in [
        ("create", c.create),
        ("copy", c.copy),
        ("update", c.update),
        ("attrs", c.attrs),
        ("rename", c.rename),
        ("link", c.link),
        ("remove", c.remove),
    ] {
        stats.metrics.actions(action, n);
    }
    stats.metrics.bytes(c.bytes);
}

/// What a full pass tells the status endpoint: a guard holding, or a complete pass (exact
/// when it met no error and nothing vanished under it).
pub fn record_pass(stats: &Stats, report: &PassReport, mark: u64) {
    record_counts(stats, report);
    if let Some(trip) = &report.guard {
        stats.set_guard(Some(format!("{} holds: {trip}", trip.guard_name())));
        return;
    }
    let c = &report.counts;
    let summary = PassSummary {
        ended: crate::stats::unix_time(std::time::SystemTime::now()),
        duration_seconds: report.duration.as_secs_f64(),
        scanned: c.scanned,
        changes: c.changes(),
        bytes: c.bytes,
        errors: c.errors,
        vanished: c.vanished,
    };
    stats.pass_ended(mark, summary, c.errors == 0 && c.vanished == 0);
}

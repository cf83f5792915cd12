//! The Prometheus metrics, with `prometheus-client`: counters and the pass-duration
//! histogram are updated where things happen; gauges are set from [`super::Stats`] just
//! before each scrape is encoded (a few atomic stores, no lock, no filesystem access).
//! Names follow Prometheus conventions: `replicad_…_total`, `_seconds`, `_bytes`.

use std::sync::atomic::AtomicU64;
use std::time::Instant;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use super::{PassSummary, Stats, unix_time};
use crate::error::Op;

type Labels = Vec<(&'static str, &'static str)>;
type FloatGauge = Gauge<f64, AtomicU64>;

/// Every metric replicad exports, registered once.
pub struct Metrics {
    registry: Registry,
    actions: Family<Labels, Counter>,
    bytes: Counter,
    entry_errors: Family<Labels, Counter>,
    passes: Counter,
    pass_duration: Histogram,
    event_work: Counter,
    /// Full passes requested because events were lost (inotify or queue overflow).
    pub overflows: Counter,
    queue_depth: Gauge,
    lag: FloatGauge,
    last_in_sync: FloatGauge,
    in_sync: Gauge,
    watches: Gauge,
    degraded: Gauge,
    guard: Gauge,
    ready: Gauge,
    start_time: FloatGauge,
}

impl Metrics {
    /// All metrics at zero, registered.
    pub fn new() -> Metrics {
        let m = Metrics {
            registry: Registry::default(),
            actions: Family::default(),
            bytes: Counter::default(),
            entry_errors: Family::default(),
            passes: Counter::default(),
            // 1 ms .. ~4.6 h, ×4 per bucket.
            pass_duration: Histogram::new(exponential_buckets(0.001, 4.0, 13)),
            event_work: Counter::default(),
            overflows: Counter::default(),
            queue_depth: Gauge::default(),
            lag: FloatGauge::default(),
            last_in_sync: FloatGauge::default(),
            in_sync: Gauge::default(),
            watches: Gauge::default(),
            degraded: Gauge::default(),
            guard: Gauge::default(),
            ready: Gauge::default(),
            start_time: FloatGauge::default(),
        };
        m.register()
    }

    fn register(mut self) -> Metrics {
        let r = &mut self.registry;
        r.register("replicad_actions", "Changes made to REPLICA, by action", self.actions.clone());
        r.register_with_unit(
            "replicad_copied",
            "File content copied into REPLICA",
            Unit::Bytes,
            self.bytes.clone(),
        );
        r.register(
            "replicad_entry_errors",
            "Entries that could not be mirrored, by operation",
            self.entry_errors.clone(),
        );
        r.register("replicad_passes", "Full passes completed", self.passes.clone());
        r.register_with_unit(
            "replicad_pass_duration",
            "Duration of complete full passes",
            Unit::Seconds,
            self.pass_duration.clone(),
        );
        r.register("replicad_event_work", "Pieces of event work done", self.event_work.clone());
        r.register(
            "replicad_queue_overflows",
            "Full passes requested because events were lost or too many were pending",
            self.overflows.clone(),
        );
        r.register(
            "replicad_queue_depth",
            "Event work pending or in flight",
            self.queue_depth.clone(),
        );
        r.register_with_unit(
            "replicad_replication_lag",
            "Age of the oldest change seen in SOURCE and not yet applied (0 when idle)",
            Unit::Seconds,
            self.lag.clone(),
        );
        r.register_with_unit(
            "replicad_last_in_sync_timestamp",
            "Unix time of the end of the last full pass that left REPLICA exact (0: never)",
            Unit::Seconds,
            self.last_in_sync.clone(),
        );
        r.register(
            "replicad_in_sync",
            "1 while no change arrived since the last exact full pass",
            self.in_sync.clone(),
        );
        r.register("replicad_watches", "inotify watches in use", self.watches.clone());
        r.register(
            "replicad_watcher_degraded",
            "1 when some of SOURCE is not watched (watch limit, unreadable directory)",
            self.degraded.clone(),
        );
        r.register(
            "replicad_guard_holding",
            "1 while the deletion guard holds the mirror back",
            self.guard.clone(),
        );
        r.register("replicad_ready", "1 when /readyz answers 200", self.ready.clone());
        r.register_with_unit(
            "replicad_start_time",
            "Unix time the process started",
            Unit::Seconds,
            self.start_time.clone(),
        );
        let build = Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]);
        r.register("replicad_build", "Build information", build);
        self
    }

    /// `n` changes of kind `action` (`create`, `copy`, `update`, `attrs`, `rename`, `link`,
    /// `remove`).
    pub fn actions(&self, action: &'static str, n: u64) {
        if n > 0 {
            self.actions.get_or_create(&vec![("action", action)]).inc_by(n);
        }
    }

    /// Bytes of file content copied.
    pub fn bytes(&self, n: u64) {
        self.bytes.inc_by(n);
    }

    /// One piece of event work done.
    pub fn event_work(&self) {
        self.event_work.inc();
    }

    pub(super) fn entry_error(&self, op: Op) {
        self.entry_errors.get_or_create(&vec![("op", op.name())]).inc();
    }

    pub(super) fn pass(&self, summary: &PassSummary) {
        self.passes.inc();
        self.pass_duration.observe(summary.duration_seconds);
    }

    /// The scrape: gauges from `stats` now, then everything as OpenMetrics text.
    pub fn encode(&self, stats: &Stats, now: Instant) -> String {
        let flag = |b: bool| i64::from(b);
        self.queue_depth.set(i64::try_from(stats.queue_depth()).unwrap_or(i64::MAX));
        self.lag.set(stats.lag(now).as_secs_f64());
        self.last_in_sync.set(stats.last_in_sync().map_or(0.0, unix_time));
        self.in_sync.set(flag(stats.in_sync()));
        let (watches, degraded) = stats.watcher();
        self.watches.set(i64::try_from(watches).unwrap_or(i64::MAX));
        self.degraded.set(flag(degraded));
        self.guard.set(flag(stats.guard().is_some()));
        self.ready.set(flag(stats.ready().is_ok()));
        self.start_time.set(unix_time(stats.started()));
        let mut out = String::with_capacity(4096);
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        let stats = Stats::new();
        stats.metrics.actions("copy", 2);
        stats.metrics.bytes(10);
        stats.metrics.entry_error(Op::Copy);
        let text = stats.metrics.encode(&stats, Instant::now());
        for line in [
            "replicad_actions_total{action=\"copy\"} 2",
            "replicad_copied_bytes_total 10",
            "replicad_entry_errors_total{op=\"copy\"} 1",
            "replicad_passes_total 0",
            "replicad_pass_duration_seconds_count 0",
            "replicad_replication_lag_seconds 0.0",
            "replicad_in_sync 0",
            "replicad_ready 0",
            "replicad_build_info{version=",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}

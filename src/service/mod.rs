//! Runs replicad: one pass (`--once`), or the long-lived service. The only module that
//! spawns tasks or knows about signals and systemd. Everything it runs is the engine's
//! reconcile, driven by the interval and by the watcher's hints through the queue. Every
//! wait here also hears the one cancellation token, and a stop waits for in-flight work
//! only a bounded time.

mod bucket;
mod progress;
mod report;
mod signals;
mod systemd;
mod watcher;

use std::sync::Arc;
use std::time::Duration;

use rustix::process::{Resource, getrlimit, setrlimit};
use sd_notify::NotifyState;
use tokio::sync::{Notify, RwLock, mpsc};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::engine::{Engine, Mirror, PassReport};
use crate::error::GuardTrip;
use crate::queue::{self, Outcome, Work};
use crate::relpath::Escaped;
use progress::Progress;
use report::{record_counts, record_pass};
use systemd::{SHUTDOWN_GRACE, Watchdog, notify, status_line};
use watcher::Watcher;

/// How often SOURCE is looked at again while the deletion guard holds (SPEC §4: "every few
/// seconds, not only each interval").
const GUARD_RECHECK: Duration = Duration::from_secs(3);

/// First delay when full-pass requests keep following passes that found nothing.
const OVERFLOW_BACKOFF_MIN: Duration = Duration::from_secs(5);

/// Hints buffered between the watcher thread and the queue; when full, one full pass.
const HINT_CHANNEL: usize = 8192;

/// Runs what `config` asks for and returns the process exit status.
pub fn run_main(config: Config) -> u8 {
    raise_fd_limit();
    log_start(&config);
    let cancel = CancellationToken::new();
    if let Some((url, settings)) = config.bucket.clone() {
        return bucket::run(config, &url, &settings, cancel);
    }
    let engine: Arc<dyn Mirror> =
        match Engine::new(&config, config.excludes.clone(), cancel.clone()) {
            Ok(e) => Arc::new(e),
            Err(e) => {
                error!("{e}");
                return 1;
            }
        };
    // The filesystem work runs on the engine's own pool; tokio's blocking threads only
    // wait for it (one per piece of event work, plus the pass and the watcher's walk).
    let runtime = match runtime(config.jobs) {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the tokio runtime: {e}");
            return 1;
        }
    };
    let status = match config.once {
        true => runtime.block_on(once(engine, config.dry_run, cancel)),
        false => runtime.block_on(serve(config, engine, cancel)),
    };
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    status
}

/// The process's tokio runtime: the service's tasks, and the bucket's requests.
fn runtime(jobs: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(jobs + 4)
        .thread_name("replicad")
        .build()
}

/// One full pass, stoppable by SIGINT/SIGTERM like the service (no temporary file is left
/// behind); the status says whether REPLICA now matches SOURCE.
async fn once(engine: Arc<dyn Mirror>, dry_run: bool, cancel: CancellationToken) -> u8 {
    let signals = match signals::listen(cancel.clone()) {
        Ok(task) => task,
        Err(e) => {
            error!("cannot install signal handlers: {e}");
            return 1;
        }
    };
    let worker = engine.clone();
    let pass = tokio::task::spawn_blocking(move || {
        let _span = dry_run.then(|| tracing::info_span!("dry_run").entered());
        let report = worker.full_pass();
        log_pass(&report, dry_run);
        report
    });
    let progress = async {
        let mut progress = Progress::begin(true);
        let mut ticks = tokio::time::interval(Duration::from_millis(500));
        loop {
            ticks.tick().await;
            progress.update(engine.as_ref());
        }
    };
    let stopped_late = async {
        cancel.cancelled().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    let status = tokio::select! {
        joined = pass => match joined {
            Ok(report) => report.exit_status(),
            Err(_) => {
                error!("the pass panicked");
                1
            }
        },
        // The progress loop never ends; the line is cleared when it is dropped here.
        () = progress => 1,
        () = stopped_late => {
            warn!("the pass did not stop within {SHUTDOWN_GRACE:?} (a blocking call such as a flush); leaving it behind");
            20
        }
    };
    signals.abort();
    status
}

/// The pass summary; a pass a guard stopped has none (the guard logged when it tripped),
/// and one that shutdown interrupted says so instead of claiming to be complete.
fn log_pass(report: &PassReport, dry_run: bool) {
    if report.cancelled {
        let c = &report.counts;
        info!(
            duration = report.duration.as_secs_f64(),
            changes = c.changes(),
            errors = c.errors,
            "pass interrupted by shutdown: REPLICA holds no partial file, but is not complete"
        );
    } else if report.guard.is_none() {
        report.log_summary(dry_run);
    }
}

/// The service: signals, watcher, queue, then passes every interval until cancelled.
pub async fn serve(config: Config, engine: Arc<dyn Mirror>, cancel: CancellationToken) -> u8 {
    let signals = match signals::listen(cancel.clone()) {
        Ok(task) => task,
        Err(e) => {
            error!("cannot install signal handlers: {e}");
            return 1;
        }
    };
    let tracker = TaskTracker::new();
    let stats = engine.stats().clone();
    if let Some(addr) = &config.status_addr {
        let listener = match crate::status::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                error!("cannot listen on --status-addr {addr:?}: {e}");
                signals.abort();
                return 1;
            }
        };
        info!(addr = %listener.describe(), "status endpoint listening");
        let state = Arc::new(crate::status::StatusState {
            stats: stats.clone(),
            engine: engine.clone(),
            source: Escaped::path(&config.source).to_string(),
            replica: Escaped::path(&config.replica).to_string(),
        });
        tracker.spawn(crate::status::serve(listener, state, cancel.clone()));
    }
    let full_pass = Arc::new(Notify::new());
    // Full passes take the write side; event work the read side: the same path is never
    // worked on by a pass and a queue worker at once.
    let exclusive = Arc::new(RwLock::new(()));
    let (hints_tx, hints_rx) = mpsc::channel(HINT_CHANNEL);

    // The watcher starts before the first pass, so nothing changed during it is missed.
    let mut watcher = Watcher::new(&config, hints_tx, full_pass.clone());
    let mut status = 0;
    if watcher.start(&cancel).await {
        // A store that fails event work (down, throttling, credentials) loses no change:
        // the work is not retried path by path but folded into a full pass, which the
        // replica guard holds back (re-checked every few seconds) until the store answers.
        let fold = config.bucket.is_some();
        let work =
            work_fn(engine.clone(), exclusive.clone(), full_pass.clone(), cancel.clone(), fold);
        tracker.spawn(queue::run_queue(
            hints_rx,
            config.jobs,
            full_pass.clone(),
            work,
            stats.clone(),
            cancel.clone(),
        ));
        status = pass_loop(&config, &engine, &exclusive, &full_pass, &mut watcher, &cancel).await;
    }

    stats.stopping();
    info!("stopping: waiting for in-flight work");
    notify(&[NotifyState::Stopping]);
    cancel.cancel();
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait()).await.is_err() {
        warn!("in-flight work did not stop within {SHUTDOWN_GRACE:?}");
    }
    drop(watcher);
    signals.abort();
    info!("stopped");
    status
}

/// Full passes: the first, then one per interval, per request, or per guard re-check,
/// until a stop; returns the exit status.
async fn pass_loop(
    config: &Config,
    engine: &Arc<dyn Mirror>,
    exclusive: &Arc<RwLock<()>>,
    full_pass: &Notify,
    watcher: &mut Watcher,
    cancel: &CancellationToken,
) -> u8 {
    let mut ticks = tokio::time::interval(config.interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticks.tick().await; // the first tick is immediate: the first pass starts now
    let stats = engine.stats().clone();
    let mut watchdog = Watchdog::new(stats.clone());
    let mut first = true;
    let mut overrunning = false;
    let mut previous_wake = Wake::Interval;
    let mut backoff = Duration::ZERO;
    loop {
        let mark = stats.pass_begins();
        let report = match full_pass_guarded(engine, exclusive, cancel, &mut watchdog).await {
            PassRun::Done(report) => report,
            PassRun::Stopped => return 0,
            PassRun::Panicked => {
                // A bug, not a state to limp on in: exit 1 so systemd restarts us.
                error!("a full pass panicked; stopping so the service manager can restart");
                return 1;
            }
        };
        log_pass(&report, false);
        if report.cancelled || cancel.is_cancelled() {
            return 0;
        }
        if let Some(GuardTrip::ReplicaUnwritable(_)) = &report.guard {
            // Nothing can be written: this is not a service that will catch up by itself.
            error!("stopping: the replica cannot be written (see above)");
            return 1;
        }
        record_pass(&stats, &report, mark);
        if first {
            notify(&[NotifyState::Ready]);
            first = false;
        }
        notify(&[NotifyState::Status(&status_line(&report, &stats))]);
        watcher.publish(&stats).await;
        let overran = report.duration > config.interval;
        if overran && !overrunning {
            warn!(
                duration = report.duration.as_secs_f64(),
                interval = config.interval.as_secs_f64(),
                "the pass took longer than the interval; the next ones start right away (said once until a pass fits again)"
            );
        }
        overrunning = overran;
        if !watcher.rearm_if_source_replaced(cancel).await {
            return 0;
        }
        let guard_held = report.guard.is_some();
        let wake =
            wait_for_next_pass(&mut ticks, full_pass, cancel, guard_held, &mut watchdog).await;
        match wake {
            Wake::Stop => return 0,
            Wake::Requested if previous_wake == Wake::Requested && report.counts.changes() == 0 => {
                backoff = next_backoff(backoff, config.interval);
                info!(
                    delay = backoff.as_secs_f64(),
                    "full pass requested again right after one that found nothing: on a tree \
                     this large the pass's own directory reads can overflow inotify's event \
                     queue (fs.inotify.max_queued_events); waiting before the next one"
                );
                if !pause(backoff, cancel).await {
                    return 0;
                }
            }
            Wake::Requested => {}
            Wake::Interval | Wake::Recheck => backoff = Duration::ZERO,
        }
        previous_wake = wake;
    }
}

/// The wait before a full pass requested right after one that found nothing: 5 s,
/// doubling, never more than the interval. Max then min, so no interval can make it panic
/// (`clamp(5 s, interval)` did, below 5 s).
fn next_backoff(previous: Duration, interval: Duration) -> Duration {
    (previous * 2).max(OVERFLOW_BACKOFF_MIN).min(interval)
}

/// How a full pass ended.
enum PassRun {
    Done(PassReport),
    Stopped,
    Panicked,
}

/// Runs one full pass on the blocking pool. The watchdog is fed only while work moves
/// (event work the pass waits for, then the pass itself). After a stop request the pass
/// gets [`SHUTDOWN_GRACE`] to notice it, then is left behind.
async fn full_pass_guarded(
    engine: &Arc<dyn Mirror>,
    exclusive: &Arc<RwLock<()>>,
    cancel: &CancellationToken,
    watchdog: &mut Watchdog,
) -> PassRun {
    watchdog.work_begins();
    let lock = loop {
        tokio::select! {
            () = cancel.cancelled() => return PassRun::Stopped,
            lock = exclusive.clone().write_owned() => break lock,
            _ = watchdog.tick() => watchdog.feed_if_moving(engine.as_ref()),
        }
    };
    let worker = engine.clone();
    let mut pass = tokio::task::spawn_blocking(move || {
        let report = worker.full_pass();
        drop(lock);
        report
    });
    let grace = tokio::time::sleep(Duration::MAX / 4);
    tokio::pin!(grace);
    let mut stopping = false;
    let mut progress = Progress::begin(!engine.stats().first_pass_done());
    loop {
        tokio::select! {
            joined = &mut pass => return match joined {
                Ok(report) => PassRun::Done(report),
                Err(_) => PassRun::Panicked,
            },
            _ = watchdog.tick() => {
                watchdog.feed_if_moving(engine.as_ref());
                progress.update(engine.as_ref());
            }
            () = cancel.cancelled(), if !stopping => {
                stopping = true;
                grace.as_mut().reset(Instant::now() + SHUTDOWN_GRACE);
            }
            () = &mut grace, if stopping => {
                warn!("the pass did not stop within {SHUTDOWN_GRACE:?} (a blocking call such as a flush); leaving it behind");
                return PassRun::Stopped;
            }
        }
    }
}

/// Why the next pass starts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wake {
    /// Shutdown: no next pass.
    Stop,
    /// The interval elapsed.
    Interval,
    /// A full pass was requested (queue overflow, lost events, watch error).
    Requested,
    /// A guard holds: look at the roots again.
    Recheck,
}

/// Sleeps for `delay`; `false` if shutdown came first.
async fn pause(delay: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        () = cancel.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}

/// Waits for the next reason to run a pass: the interval, a full-pass request (overflow,
/// lost events), or — while a guard holds — a short re-check timer. The main loop is idle
/// and responsive here, so the watchdog is fed.
async fn wait_for_next_pass(
    ticks: &mut tokio::time::Interval,
    full_pass: &Notify,
    cancel: &CancellationToken,
    guard_held: bool,
    watchdog: &mut Watchdog,
) -> Wake {
    let recheck = tokio::time::sleep(if guard_held { GUARD_RECHECK } else { Duration::MAX / 4 });
    tokio::pin!(recheck);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Wake::Stop,
            _ = ticks.tick() => return Wake::Interval,
            () = full_pass.notified() => {
                info!("full pass requested: events may have been lost");
                watchdog.stats().full_pass_requested(std::time::Instant::now());
                return Wake::Requested;
            }
            () = &mut recheck => return Wake::Recheck,
            _ = watchdog.tick() => watchdog.feed(),
        }
    }
}

/// What the queue runs for each piece of work: the engine, waited for on the blocking
/// pool (the work itself runs on the engine's pool).
fn work_fn(
    engine: Arc<dyn Mirror>,
    exclusive: Arc<RwLock<()>>,
    full_pass: Arc<Notify>,
    cancel: CancellationToken,
    fold_failures: bool,
) -> impl Fn(Work) -> std::pin::Pin<Box<dyn Future<Output = Outcome> + Send>> + Clone + Send + 'static
{
    move |work: Work| {
        let engine = engine.clone();
        let exclusive = exclusive.clone();
        let full_pass = full_pass.clone();
        let cancel = cancel.clone();
        let engine_stats = engine.stats().clone();
        Box::pin(async move {
            // A stop while a pass holds the lock: this work never starts.
            let lock = tokio::select! {
                () = cancel.cancelled() => return Outcome::Success,
                lock = exclusive.read_owned() => lock,
            };
            let joined = tokio::task::spawn_blocking(move || {
                let report = match &work {
                    Work::Path { path, recursive } => engine.reconcile_path(path, *recursive),
                    Work::Rename { from, to } => engine.follow_rename(from, to),
                };
                drop(lock);
                report
            })
            .await;
            match joined {
                Ok(report) => {
                    // A link made across directories to a name no pass has seen linked:
                    // only a full pass finds the other name.
                    if report.links_unresolved {
                        full_pass.notify_one();
                    }
                    let failed = report.guard.is_some() || report.counts.errors > 0;
                    if fold_failures && failed && !report.cancelled {
                        full_pass.notify_one();
                    }
                    record_counts(engine_stats.as_ref(), &report);
                    engine_stats.metrics.event_work();
                    outcome_of(&report)
                }
                Err(_) => Outcome::Failed,
            }
        })
    }
}

fn outcome_of(report: &PassReport) -> Outcome {
    if report.transient {
        Outcome::Transient
    } else if report.guard.is_some() || report.counts.errors > 0 {
        Outcome::Failed
    } else {
        Outcome::Success
    }
}

fn log_start(config: &Config) {
    info!(
        source = %Escaped::path(&config.source),
        replica = %Escaped::path(&config.replica),
        jobs = config.jobs,
        "replicad {} starting",
        env!("CARGO_PKG_VERSION")
    );
    for warning in &config.env_warnings {
        warn!("{warning}");
    }
    if config.once && config.status_addr.is_some() {
        warn!(
            "--status-addr is for the service: a one-shot run (--once, --dry-run) serves nothing"
        );
    }
    if !config.chown {
        warn!("owners are not mirrored: this process may not chown (needs root or CAP_CHOWN)");
    }
}

/// Deep trees keep one directory descriptor per level open; systemd's default soft limit
/// (1024) is far below the hard limit, so take what we are allowed.
fn raise_fd_limit() {
    let limit = getrlimit(Resource::Nofile);
    if let Some(max) = limit.maximum
        && limit.current.is_some_and(|cur| cur < max)
    {
        let raised = rustix::process::Rlimit { current: Some(max), maximum: Some(max) };
        let _ = setrlimit(Resource::Nofile, raised);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_interval_even_below_its_minimum() {
        let s = Duration::from_secs;
        assert_eq!(next_backoff(Duration::ZERO, s(60)), s(5));
        assert_eq!(next_backoff(s(5), s(60)), s(10));
        assert_eq!(next_backoff(s(40), s(60)), s(60));
        // See: issue "Trust (2/3)" item 2 — an interval under 5 s panicked here.
        assert_eq!(next_backoff(Duration::ZERO, s(1)), s(1));
        assert_eq!(next_backoff(s(1), Duration::from_millis(100)), Duration::from_millis(100));
    }
}

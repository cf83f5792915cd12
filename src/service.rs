//! Runs replicad: one pass (`--once`), or the long-lived service. The only module that
//! spawns tasks or knows about signals and systemd. Everything it runs is the engine's
//! reconcile, driven by the interval and by the watcher's hints through the queue.

use std::sync::Arc;
use std::time::Duration;

use rustix::process::{Resource, getrlimit, setrlimit};
use sd_notify::NotifyState;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Notify, RwLock, mpsc};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::entry::Entry;
use crate::guard::open_dir_nofollow;
use crate::queue::{self, Hint, Outcome, Work};
use crate::reconcile::{Engine, PassReport};
use crate::relpath::{Escaped, RelPath};
use crate::watch::{Excluder, Watch};

/// How often SOURCE is looked at again while the deletion guard holds (SPEC §4: "every few
/// seconds, not only each interval").
const GUARD_RECHECK: Duration = Duration::from_secs(3);

/// First delay when full-pass requests keep following passes that found nothing.
const OVERFLOW_BACKOFF_MIN: Duration = Duration::from_secs(5);

/// How long shutdown waits for in-flight work (copies check cancellation between chunks).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Hints buffered between the watcher thread and the queue; when full, one full pass.
const HINT_CHANNEL: usize = 8192;

/// Runs what `config` asks for and returns the process exit status.
pub fn run_main(config: Config) -> u8 {
    raise_fd_limit();
    log_start(&config);
    let cancel = CancellationToken::new();
    let engine = match Engine::new(&config, config.excludes.clone(), cancel.clone()) {
        Ok(e) => Arc::new(e),
        Err(e) => {
            error!("{e}");
            return 1;
        }
    };
    if config.once {
        return run_once(&engine, config.dry_run);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(config.jobs + 4)
        .thread_name("replicad")
        .build();
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the tokio runtime: {e}");
            return 1;
        }
    };
    let status = runtime.block_on(serve(config, engine, cancel));
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    status
}

/// One full pass; the status says whether REPLICA now matches SOURCE.
pub fn run_once(engine: &Engine, dry_run: bool) -> u8 {
    let span = dry_run.then(|| tracing::info_span!("dry_run").entered());
    let report = engine.full_pass();
    log_pass(&report, dry_run);
    drop(span);
    report.exit_status()
}

/// The pass summary; a pass a guard stopped has none (the guard logged when it tripped).
fn log_pass(report: &PassReport, dry_run: bool) {
    if report.guard.is_none() {
        report.log_summary(dry_run);
    }
}

/// The service: signals, watcher, queue, then passes every interval until cancelled.
pub async fn serve(config: Config, engine: Arc<Engine>, cancel: CancellationToken) -> u8 {
    let signals = match listen_for_signals(cancel.clone()) {
        Ok(task) => task,
        Err(e) => {
            error!("cannot install signal handlers: {e}");
            return 1;
        }
    };
    let tracker = TaskTracker::new();
    let full_pass = Arc::new(Notify::new());
    // Full passes take the write side; event work the read side: the same path is never
    // worked on by a pass and a queue worker at once.
    let exclusive = Arc::new(RwLock::new(()));
    let (hints_tx, hints_rx) = mpsc::channel(HINT_CHANNEL);

    // The watcher starts before the first pass, so nothing changed during it is missed.
    let mut watcher = Watcher::new(&config, hints_tx, full_pass.clone());
    watcher.start();

    let work = work_fn(engine.clone(), exclusive.clone());
    tracker.spawn(queue::run_queue(hints_rx, config.jobs, full_pass.clone(), work, cancel.clone()));

    let mut ticks = tokio::time::interval(config.interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let watchdog = sd_notify::watchdog_enabled().map(|d| d / 2);
    ticks.tick().await; // the first tick is immediate: the first pass starts now
    let mut first = true;
    let mut status = 0;
    let mut previous_wake = Wake::Interval;
    let mut backoff = Duration::ZERO;
    loop {
        let report = match full_pass_guarded(&engine, &exclusive, &cancel, watchdog).await {
            PassRun::Done(report) => report,
            PassRun::Stopped => break,
            PassRun::Panicked => {
                // A bug, not a state to limp on in: exit 1 so systemd restarts us.
                error!("a full pass panicked; stopping so the service manager can restart");
                status = 1;
                break;
            }
        };
        log_pass(&report, false);
        if first {
            notify_systemd(&[NotifyState::Ready]);
            first = false;
        }
        notify_systemd(&[NotifyState::Status(&status_line(&report))]);
        if report.duration > config.interval {
            warn!(
                duration = ?report.duration,
                interval = ?config.interval,
                "the pass took longer than the interval; the next one starts right away"
            );
        }
        watcher.rearm_if_source_replaced();
        let guard_held = report.guard.is_some();
        let wake = wait_for_next_pass(&mut ticks, &full_pass, &cancel, guard_held, watchdog).await;
        match wake {
            Wake::Stop => break,
            Wake::Requested if previous_wake == Wake::Requested && report.counts.changes() == 0 => {
                backoff = (backoff * 2).clamp(OVERFLOW_BACKOFF_MIN, config.interval);
                info!(
                    delay = ?backoff,
                    "full pass requested again right after one that found nothing: on a tree \
                     this large the pass's own directory reads can overflow inotify's event \
                     queue (fs.inotify.max_queued_events); waiting before the next one"
                );
                if !pause(backoff, &cancel).await {
                    break;
                }
            }
            Wake::Requested => {}
            Wake::Interval | Wake::Recheck => backoff = Duration::ZERO,
        }
        previous_wake = wake;
    }

    info!("stopping: waiting for in-flight work");
    notify_systemd(&[NotifyState::Stopping]);
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

/// How a full pass ended.
enum PassRun {
    Done(PassReport),
    Stopped,
    Panicked,
}

/// Runs one full pass on the blocking pool, feeding the systemd watchdog only while the
/// pass makes progress (a stuck pass must not look healthy).
async fn full_pass_guarded(
    engine: &Arc<Engine>,
    exclusive: &Arc<RwLock<()>>,
    cancel: &CancellationToken,
    watchdog: Option<Duration>,
) -> PassRun {
    let lock = tokio::select! {
        () = cancel.cancelled() => return PassRun::Stopped,
        lock = exclusive.clone().write_owned() => lock,
    };
    let worker = engine.clone();
    let mut pass = tokio::task::spawn_blocking(move || {
        let report = worker.full_pass();
        drop(lock);
        report
    });
    let mut pings = watchdog.map(tokio::time::interval);
    let mut seen = engine.progress();
    loop {
        tokio::select! {
            joined = &mut pass => return match joined {
                Ok(report) => PassRun::Done(report),
                Err(_) => PassRun::Panicked,
            },
            _ = tick_opt(&mut pings) => {
                let now = engine.progress();
                if now != seen {
                    notify_systemd(&[NotifyState::Watchdog]);
                }
                seen = now;
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
    /// The deletion guard holds: look at SOURCE again.
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
/// lost events), or — while the deletion guard holds — a short re-check timer.
async fn wait_for_next_pass(
    ticks: &mut tokio::time::Interval,
    full_pass: &Notify,
    cancel: &CancellationToken,
    guard_held: bool,
    watchdog: Option<Duration>,
) -> Wake {
    let recheck = tokio::time::sleep(if guard_held { GUARD_RECHECK } else { Duration::MAX / 4 });
    tokio::pin!(recheck);
    let mut pings = watchdog.map(tokio::time::interval);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Wake::Stop,
            _ = ticks.tick() => return Wake::Interval,
            () = full_pass.notified() => {
                info!("full pass requested: events may have been lost");
                return Wake::Requested;
            }
            () = &mut recheck => return Wake::Recheck,
            _ = tick_opt(&mut pings) => notify_systemd(&[NotifyState::Watchdog]),
        }
    }
}

async fn tick_opt(interval: &mut Option<tokio::time::Interval>) -> Instant {
    match interval {
        Some(i) => i.tick().await,
        None => std::future::pending().await,
    }
}

/// What the queue runs for each piece of work: the engine on the blocking pool.
fn work_fn(
    engine: Arc<Engine>,
    exclusive: Arc<RwLock<()>>,
) -> impl Fn(Work) -> std::pin::Pin<Box<dyn Future<Output = Outcome> + Send>> + Clone + Send + 'static
{
    move |work: Work| {
        let engine = engine.clone();
        let exclusive = exclusive.clone();
        Box::pin(async move {
            let lock = exclusive.read_owned().await;
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
                Ok(report) => outcome_of(&report),
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

/// The watcher and what it needs to be started again when SOURCE is replaced (renamed
/// away and back, remounted): inotify watches follow inodes, not paths.
struct Watcher {
    enabled: bool,
    source: std::path::PathBuf,
    debounce: Duration,
    hints: mpsc::Sender<Hint>,
    full_pass: Arc<Notify>,
    excluded: Excluder,
    watching: Option<(Watch, (u64, u64))>,
}

impl Watcher {
    fn new(config: &Config, hints: mpsc::Sender<Hint>, full_pass: Arc<Notify>) -> Watcher {
        let excludes = config.excludes.clone();
        let excluded: Excluder =
            Arc::new(move |p: &RelPath, is_dir| excludes.matches_path_or_parent(p, is_dir));
        Watcher {
            enabled: config.watch,
            source: config.source.clone(),
            debounce: config.debounce,
            hints,
            full_pass,
            excluded,
            watching: None,
        }
    }

    /// SOURCE's identity now, reached without following a symlink (a symlink put in its
    /// place is never watched: the guard refuses it).
    fn source_id(&self) -> Option<(u64, u64)> {
        let entry = open_dir_nofollow(&self.source).and_then(|fd| Entry::stat_fd(&fd)).ok()?;
        Some((entry.dev, entry.ino))
    }

    fn start(&mut self) {
        if !self.enabled {
            return;
        }
        let Some(id) = self.source_id() else { return };
        let started = Watch::start(
            &self.source,
            self.debounce,
            self.hints.clone(),
            self.full_pass.clone(),
            self.excluded.clone(),
        );
        match started {
            Ok(watch) => {
                if let Some(problem) = watch.degraded() {
                    warn!("{problem}; changes there are picked up by the periodic pass");
                }
                self.watching = Some((watch, id));
            }
            Err(e) => warn!("{e}; running on periodic passes only"),
        }
    }

    fn rearm_if_source_replaced(&mut self) {
        let now = self.source_id();
        let watched = self.watching.as_ref().map(|(_, id)| *id);
        if self.enabled && now.is_some() && now != watched {
            if watched.is_some() {
                info!(source = %Escaped::path(&self.source), "source was replaced: watching it again");
            }
            self.watching = None;
            self.start();
        }
    }
}

/// First SIGINT/SIGTERM: cancel (graceful stop). Second: exit at once.
fn listen_for_signals(cancel: CancellationToken) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        info!("{name} received: stopping (send it again to exit at once)");
        cancel.cancel();
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        warn!("second signal: exiting now");
        std::process::exit(1);
    }))
}

fn status_line(report: &PassReport) -> String {
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

fn notify_systemd(state: &[NotifyState]) {
    // A no-op without NOTIFY_SOCKET; a failure to reach systemd is not worth stopping for.
    let _ = sd_notify::notify(state);
}

fn log_start(config: &Config) {
    info!(
        source = %Escaped::path(&config.source),
        replica = %Escaped::path(&config.replica),
        jobs = config.jobs,
        "replicad {} starting",
        env!("CARGO_PKG_VERSION")
    );
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

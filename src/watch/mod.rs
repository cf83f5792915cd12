//! The SOURCE watcher: notify-debouncer-full on the canonical SOURCE root, its events mapped
//! to [`Hint`]s by the pure [`hints_from`] and bridged into tokio without ever blocking
//! notify's thread; watch errors classified once. Knows nothing of what a change means.
//!
//! | file | holds |
//! |---|---|
//! | `mod.rs` | [`Watch`] (starting and owning the debouncer), the [`NoAccess`] wrapper |
//! | `hints.rs` | [`hints_from`]: debounced event → hints (pure) |
//! | `touched.rs` | names raw events touched, until a batch covers them (pure) |
//! | `bridge.rs` | notify's threads → the bounded channel, never blocking: the raw-event tee, the debouncer's handler, the flusher |
//! | `errors.rs` | [`WatchError`] and its classification, each limit reported once |
//!
//! notify-debouncer-full merges events per path and can lose a name that left SOURCE (a
//! rename whose target is renamed onto or removed again; a create and remove within one
//! debounce), or one that is still there: it chains the two move pairs of an exchange
//! (`mv --exchange a b`) into a rename of `a` onto itself and drops `b`. So the
//! [`NoAccess`] wrapper, which sees every raw event first, also notes the names each one
//! created, removed or renamed, and the other end of each rename; a batch forgets the
//! names it covers and brings along the other ends it dropped, and the rest are hinted
//! once they have been quiet past the debounce (`touched.rs`). A name something was moved
//! in under is always looked at recursively.

mod bridge;
mod errors;
mod hints;
#[cfg(test)]
mod testing;
mod touched;

use std::cell::Cell;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::{Event, RecursiveMode, Watcher};
use notify_debouncer_full::{DebounceEventResult, RecommendedCache, new_debouncer_opt};
use tokio::sync::{Notify, mpsc};

use crate::queue::Hint;
use crate::relpath::RelPath;
use bridge::{Bridge, Flusher, Tee};
use errors::Reported;
use touched::Touched;

pub use errors::{WatchError, WatchErrorKind, classify};
pub use hints::hints_from;

/// Decides whether a path is excluded; the second argument says whether it is a directory.
/// The service wraps `Gitignore::matched_path_or_any_parents` (given a relative path, so it
/// cannot panic on paths outside the root).
pub type Excluder = Arc<dyn Fn(&RelPath, bool) -> bool + Send + Sync>;

/// At most this many touched names are remembered (about 100 B each); past it, one full
/// pass. Batches cover names about a debounce after they were touched, so only a burst of
/// this many creates, removes or renames within one debounce gets there.
const TOUCHED_CAP: usize = 16_384;

/// By `debounce + tick` after a name's last raw event, the debouncer has delivered (and so
/// covered) it, unless it merged the event away; this much more is margin for its thread
/// being late on a busy machine. A late batch costs one redundant look, not correctness.
const SLACK: Duration = Duration::from_millis(25);

thread_local! {
    /// Hands the raw-event tee to the next [`NoAccess::new`] on this thread. notify's
    /// `Watcher::new(handler, config)` has no room for it, and notify-debouncer-full builds
    /// the watcher itself, synchronously, inside `new_debouncer_opt` on the calling thread;
    /// [`Watch::start_with`] fills this slot just before that call and empties it after.
    static NEXT_TEE: Cell<Option<Tee>> = const { Cell::new(None) };
}

/// A watcher that drops every `Access` event before the debouncer stores it, and shows
/// every other raw event to the tee (if [`Watch::start_with`] handed it one) first.
///
/// notify 8.2.2 always asks inotify for `IN_OPEN`, so replicad's own reads of SOURCE (every
/// pass, every `--checksum` hash) would come back as events and could feed a loop; they
/// would also fill the debouncer's per-path map (NOTES §1.4.1).
#[derive(Debug)]
pub struct NoAccess<W = notify::RecommendedWatcher>(W);

impl<W: Watcher> Watcher for NoAccess<W> {
    fn new<F: notify::EventHandler>(mut inner: F, config: notify::Config) -> notify::Result<Self> {
        let tee = NEXT_TEE.take();
        let filter = move |event: notify::Result<Event>| {
            if let Ok(e) = &event {
                if e.kind.is_access() {
                    return;
                }
                // Before the debouncer: a batch that reports this event comes after it.
                if let Some(tee) = &tee {
                    tee.see(e);
                }
            }
            inner.handle_event(event);
        };
        W::new(filter, config).map(NoAccess)
    }

    fn watch(&mut self, path: &Path, mode: RecursiveMode) -> notify::Result<()> {
        self.0.watch(path, mode)
    }

    fn unwatch(&mut self, path: &Path) -> notify::Result<()> {
        self.0.unwatch(path)
    }

    fn configure(&mut self, config: notify::Config) -> notify::Result<bool> {
        self.0.configure(config)
    }

    fn kind() -> notify::WatcherKind {
        W::kind()
    }
}

/// The debouncer's tick: how often it checks for quiet paths. An event is delivered between
/// `debounce` and `debounce + tick` after the last change; ≤ 25 ms keeps the p99 latency
/// target (debounce + 50 ms) with margin, ≥ 5 ms keeps an idle watcher cheap.
fn tick_for(debounce: Duration) -> Duration {
    (debounce / 8).clamp(Duration::from_millis(5), Duration::from_millis(25)).min(debounce)
}

/// The running watcher. Dropping it stops the watch (the debouncer thread ends within one
/// tick) and gives the inotify watches back to the user's budget.
pub struct Watch {
    _debouncer: Box<dyn std::any::Any + Send>,
    _flusher: Flusher,
    /// The only strong sender the watcher holds: the channel lives as long as `Watch`.
    _hints: mpsc::Sender<Hint>,
    degraded: Option<WatchError>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").field("degraded", &self.degraded).finish_non_exhaustive()
    }
}

impl Watch {
    /// Watches `source_root` (which must be canonical, so event paths strip cleanly)
    /// recursively without following symlinks, and sends [`Hint`]s into `hints`, each
    /// `debounce` after its path went quiet. A name whose events the debouncer merged away
    /// (it left SOURCE, or came and went, within one debounce) is hinted on its own about a
    /// tick and 25 ms later. When `hints` is full, events are dropped and `full_pass` is
    /// notified instead, so notify's thread never waits.
    ///
    /// `Err` only when no watcher could be created at all (e.g. `TooManyInstances`): run on
    /// periodic passes. When the initial recursive watch fails part-way, `Ok` is returned
    /// with [`Watch::degraded`] set: the watches already installed keep working (notify
    /// 8.2.2 stops at the first failing directory). Neither is logged here; later runtime
    /// errors are logged by the watcher, each limit once.
    pub fn start(
        source_root: &Path,
        debounce: Duration,
        hints: mpsc::Sender<Hint>,
        full_pass: Arc<Notify>,
        is_excluded: Excluder,
    ) -> Result<Watch, WatchError> {
        Watch::start_with::<notify::RecommendedWatcher>(
            source_root,
            debounce,
            hints,
            full_pass,
            is_excluded,
        )
    }

    /// [`Watch::start`] with another underlying watcher: the seam for tests that need a
    /// watch limit or a failing watcher without touching sysctls.
    pub fn start_with<W: Watcher + Send + 'static>(
        source_root: &Path,
        debounce: Duration,
        hints: mpsc::Sender<Hint>,
        full_pass: Arc<Notify>,
        is_excluded: Excluder,
    ) -> Result<Watch, WatchError> {
        let debounce = debounce.max(Duration::from_millis(1));
        let tick = tick_for(debounce);
        let reported = Arc::new(Reported::default());
        let root = source_root.to_path_buf();
        let touched = Arc::new(Mutex::new(Touched::new(debounce + tick + SLACK, TOUCHED_CAP)));
        let tee = Tee::new(root.clone(), is_excluded.clone(), touched.clone());
        let bridge =
            Arc::new(Bridge::new(root, &hints, full_pass, is_excluded, reported.clone(), touched));
        let handler = bridge.clone();
        let config = notify::Config::default().with_follow_symlinks(false);
        NEXT_TEE.set(Some(tee));
        let debouncer = new_debouncer_opt::<_, NoAccess<W>, RecommendedCache>(
            debounce,
            Some(tick),
            move |batch: DebounceEventResult| handler.on_batch(batch),
            RecommendedCache::new(),
            config,
        );
        NEXT_TEE.set(None); // unused if the debouncer failed before building its watcher
        let mut debouncer = debouncer.map_err(|e| WatchError::from_notify(&e))?;
        let flusher = Flusher::start(bridge, tick).map_err(|e| WatchError::Failed {
            path: None,
            reason: format!("cannot start the watcher's thread: {e}"),
        })?;
        let degraded = debouncer.watch(source_root, RecursiveMode::Recursive).err().map(|e| {
            let err = WatchError::from_notify(&e);
            // The caller reports this one; the handler must not repeat it.
            reported.first(err.kind());
            err
        });
        Ok(Watch { _debouncer: Box::new(debouncer), _flusher: flusher, _hints: hints, degraded })
    }

    /// Why the initial watch is incomplete, if it is: the caller logs it once and relies on
    /// the periodic pass for the unwatched part.
    pub fn degraded(&self) -> Option<&WatchError> {
        self.degraded.as_ref()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use std::sync::Mutex;
    use testing::*;

    #[test]
    fn tick_stays_within_bounds() {
        let ms = Duration::from_millis;
        let cases = [
            (ms(100), ms(12) + Duration::from_micros(500)),
            (ms(10), ms(5)),
            (ms(2), ms(2)),
            (ms(1000), ms(25)),
        ];
        for (debounce, want) in cases {
            assert_eq!(tick_for(debounce), want, "{debounce:?}");
        }
    }

    /// A watcher that reports an access and a create for whatever it is asked to watch, then
    /// fails like notify 8.2.2 does when the watch limit is hit part-way.
    struct LimitedWatcher(Box<dyn notify::EventHandler>);

    impl Watcher for LimitedWatcher {
        fn new<F: notify::EventHandler>(handler: F, _: notify::Config) -> notify::Result<Self> {
            Ok(LimitedWatcher(Box::new(handler)))
        }
        fn watch(&mut self, path: &Path, _: RecursiveMode) -> notify::Result<()> {
            let file = path.join("seen.txt");
            self.0.handle_event(Ok(Event::new(OPEN).add_path(file.clone())));
            self.0.handle_event(Ok(Event::new(FILE).add_path(file)));
            Err(notify::Error::new(notify::ErrorKind::MaxFilesWatch).add_path(path.join("deep")))
        }
        fn unwatch(&mut self, _: &Path) -> notify::Result<()> {
            Ok(())
        }
        fn kind() -> notify::WatcherKind {
            notify::WatcherKind::NullWatcher
        }
    }

    #[test]
    fn no_access_drops_access_events_only() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let handler =
            move |e: notify::Result<Event>| sink.lock().unwrap().push(e.map(|e| e.kind).ok());
        let mut watcher =
            NoAccess::<LimitedWatcher>::new(handler, notify::Config::default()).unwrap();
        assert!(watcher.watch(Path::new(ROOT), RecursiveMode::Recursive).is_err());
        assert_eq!(*seen.lock().unwrap(), vec![Some(FILE)]);
    }

    #[tokio::test]
    async fn watch_limit_at_start_keeps_the_partial_watch() {
        let (tx, mut rx) = mpsc::channel(16);
        let watch = Watch::start_with::<LimitedWatcher>(
            Path::new(ROOT),
            Duration::from_millis(20),
            tx,
            Arc::new(Notify::new()),
            Arc::new(|_: &RelPath, _: bool| false),
        )
        .unwrap();
        let degraded = watch.degraded().map(WatchError::kind);
        assert_eq!(degraded, Some(WatchErrorKind::TooManyWatches));
        let first = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap();
        assert_eq!(first, Some(p("seen.txt", false)), "events from the partial watch still arrive");
        drop(watch);
        let rest = tokio::time::timeout(Duration::from_secs(5), async {
            let mut rest = Vec::new();
            while let Some(hint) = rx.recv().await {
                rest.push(hint);
            }
            rest
        });
        let rest = rest.await.expect("the channel closes with the watch");
        // The parent's hint; and, only if the debouncer's thread ran late, the touched name
        // once more (a redundant look, never a wrong one).
        assert_eq!(rest.first(), Some(&p("", false)), "{rest:?}");
        assert!(rest.iter().all(|h| [p("", false), p("seen.txt", false)].contains(h)), "{rest:?}");
    }

    // ---- the real watcher on a temporary directory ----

    const DEBOUNCE: Duration = Duration::from_millis(50);
    const DEADLINE: Duration = Duration::from_secs(10);
    /// Long enough for any pending event to come out: debounce + tick, with margin.
    const QUIET: Duration = Duration::from_millis(400);

    /// Receives hints until one satisfies `want`; fails after `DEADLINE` showing what came.
    async fn wait_for(rx: &mut mpsc::Receiver<Hint>, want: impl Fn(&Hint) -> bool) -> Vec<Hint> {
        let mut seen = Vec::new();
        let found = tokio::time::timeout(DEADLINE, async {
            while let Some(hint) = rx.recv().await {
                let done = want(&hint);
                seen.push(hint);
                if done {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(found, Ok(true), "wanted hint never came; got {seen:?}");
        seen
    }

    /// Everything that arrives until the watcher has been quiet for `QUIET`.
    async fn drain(rx: &mut mpsc::Receiver<Hint>) -> Vec<Hint> {
        let mut seen = Vec::new();
        while let Ok(Some(hint)) = tokio::time::timeout(QUIET, rx.recv()).await {
            seen.push(hint);
        }
        seen
    }

    #[tokio::test]
    async fn real_watcher_reports_creates_renames_and_new_dirs_but_not_reads() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let (tx, mut rx) = mpsc::channel(1024);
        let watch = Watch::start(
            &root,
            DEBOUNCE,
            tx,
            Arc::new(Notify::new()),
            Arc::new(|p: &RelPath, _: bool| p.names().any(|n| n == "ign")),
        )
        .unwrap();
        assert!(watch.degraded().is_none(), "{:?}", watch.degraded());

        std::fs::write(root.join("a.txt"), b"hello").unwrap();
        wait_for(&mut rx, |h| *h == p("a.txt", false)).await;
        drain(&mut rx).await;

        std::fs::rename(root.join("a.txt"), root.join("b.txt")).unwrap();
        let mut seen = wait_for(&mut rx, |h| *h == mv("a.txt", "b.txt")).await;
        seen.extend(drain(&mut rx).await);
        let renames = seen.iter().filter(|h| matches!(h, Hint::Rename { .. })).count();
        assert_eq!(renames, 1, "{seen:?}");
        assert!(!seen.contains(&Hint::FullPass), "{seen:?}");

        std::fs::create_dir(root.join("d")).unwrap();
        std::fs::write(root.join("d/x"), b"x").unwrap();
        std::fs::write(root.join("d/y"), b"y").unwrap();
        wait_for(&mut rx, |h| *h == p("d", true)).await;
        drain(&mut rx).await;

        std::fs::create_dir(root.join("ign")).unwrap();
        std::fs::write(root.join("ign/z"), b"z").unwrap();
        let seen = drain(&mut rx).await;
        assert!(seen.iter().all(|h| *h == p("", false)), "excluded paths leaked: {seen:?}");

        assert_eq!(std::fs::read(root.join("b.txt")).unwrap(), b"hello");
        let cat = std::process::Command::new("cat").arg(root.join("d/x")).output().unwrap();
        assert!(cat.status.success());
        let _ = std::fs::read_dir(root.join("d")).unwrap().count();
        assert_eq!(drain(&mut rx).await, vec![], "reads must not come back as hints");
    }

    #[tokio::test]
    async fn real_watcher_hints_names_the_debouncer_merges_away() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        for name in ["a", "b", "c"] {
            std::fs::write(root.join(name), name).unwrap();
        }
        let (tx, mut rx) = mpsc::channel(1024);
        let no_excludes: Excluder = Arc::new(|_: &RelPath, _: bool| false);
        let _watch = Watch::start(&root, DEBOUNCE, tx, Arc::new(Notify::new()), no_excludes);

        // Within one debounce: `mv a m; mv b m`, `mv c x; rm x`, a lock file's life.
        std::fs::rename(root.join("a"), root.join("m")).unwrap();
        std::fs::rename(root.join("b"), root.join("m")).unwrap();
        std::fs::rename(root.join("c"), root.join("x")).unwrap();
        std::fs::remove_file(root.join("x")).unwrap();
        std::fs::write(root.join(".lock"), b"1").unwrap();
        std::fs::remove_file(root.join(".lock")).unwrap();
        let mut seen = wait_for(&mut rx, |h| *h == p(".lock", false)).await;
        seen.extend(drain(&mut rx).await);
        for lost in ["a", "c", ".lock"] {
            assert!(seen.contains(&p(lost, false)), "no hint for {lost}: {seen:?}");
        }
        assert!(!seen.contains(&Hint::FullPass), "{seen:?}");
    }

    #[tokio::test]
    async fn real_watcher_hints_both_names_of_an_exchange_recursively() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        for (tree, leaf) in [("d/a/x", "x"), ("e/b/y", "y")] {
            std::fs::create_dir_all(root.join(tree)).unwrap();
            std::fs::write(root.join(tree).join(leaf), leaf).unwrap();
        }
        let (tx, mut rx) = mpsc::channel(1024);
        let no_excludes: Excluder = Arc::new(|_: &RelPath, _: bool| false);
        let _watch = Watch::start(&root, DEBOUNCE, tx, Arc::new(Notify::new()), no_excludes);

        let (a, b) = (root.join("d/a"), root.join("e/b"));
        let cwd = rustix::fs::CWD;
        rustix::fs::renameat_with(cwd, &a, cwd, &b, rustix::fs::RenameFlags::EXCHANGE).unwrap();
        let recursive_look = |h: &Hint, at: &str| match h {
            Hint::Path { path, recursive: true } => *path == rp(at),
            Hint::Rename { from, to } => *from == rp(at) || *to == rp(at),
            _ => false,
        };
        let mut seen = wait_for(&mut rx, |h| recursive_look(h, "e/b")).await;
        seen.extend(drain(&mut rx).await);
        assert!(seen.iter().any(|h| recursive_look(h, "d/a")), "{seen:?}");
        assert!(seen.contains(&p("e", false)), "the other parent's mtime moved: {seen:?}");
        assert!(!seen.contains(&Hint::FullPass), "{seen:?}");
    }

    /// The real watch limit, lowered to 5 inside an unprivileged user namespace (NOTES
    /// §1.10): the test binary re-runs this one test under `unshare -Ur`. Skipped where user
    /// namespaces are not allowed.
    #[test]
    fn real_watch_limit_in_a_user_namespace() {
        const INSIDE: &str = "REPLICAD_TEST_INSIDE_USERNS";
        if std::env::var_os(INSIDE).is_none() {
            let exe = std::env::current_exe().unwrap();
            let run = std::process::Command::new("unshare")
                .args([
                    "-Ur",
                    "sh",
                    "-c",
                    "echo 5 > /proc/sys/user/max_inotify_watches && exec \"$0\" \"$@\"",
                ])
                .arg(exe)
                .args([
                    "--exact",
                    "watch::tests::real_watch_limit_in_a_user_namespace",
                    "--nocapture",
                ])
                .env(INSIDE, "1")
                .output();
            match run {
                Ok(out) if out.status.success() => {
                    let stdout = String::from_utf8_lossy(&out.stdout);
                    assert!(stdout.contains("1 passed"), "inner test did not run: {stdout}");
                }
                Ok(out) if String::from_utf8_lossy(&out.stdout).contains("test result") => {
                    let (stdout, stderr) = (
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr),
                    );
                    panic!("inner test failed:\n{stdout}\n{stderr}")
                }
                _ => eprintln!("skipped: no unprivileged user namespaces here"),
            }
            return;
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().canonicalize().unwrap();
            for i in 0..10 {
                std::fs::create_dir(root.join(format!("d{i}"))).unwrap();
            }
            let (tx, mut rx) = mpsc::channel(1024);
            let no_excludes: Excluder = Arc::new(|_: &RelPath, _: bool| false);
            let watch = Watch::start(&root, DEBOUNCE, tx, Arc::new(Notify::new()), no_excludes)
                .expect("the watcher itself starts");
            let err = watch.degraded().expect("the watch is partial");
            assert_eq!(err.kind(), WatchErrorKind::TooManyWatches, "{err}");
            assert!(err.to_string().contains("user.max_inotify_watches = 5"), "{err}");
            // The root is watched first; a directory made in it now cannot be: full pass.
            std::fs::create_dir(root.join("new")).unwrap();
            wait_for(&mut rx, |h| *h == Hint::FullPass).await;
        });
    }
}

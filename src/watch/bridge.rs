//! Between notify's threads and tokio, never blocking either: the [`Tee`] that records the
//! names raw events touch (on notify's event thread), the debouncer's handler [`Bridge`]
//! that maps each batch with [`hints_from`] and `try_send`s the hints into the bounded
//! channel, and the [`Flusher`] thread that hands over touched names no batch covered. When
//! the channel is full, one full pass is arranged instead.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{RecvTimeoutError, Sender as StopSender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use notify_debouncer_full::DebounceEventResult;
use tokio::sync::{Notify, mpsc};

use super::Excluder;
use super::errors::{Reported, WatchError, classify};
use super::hints::{hints_from, touched_by};
use super::touched::Touched;
use crate::queue::Hint;

/// The touched names, shared by the tee (notify's event thread), the bridge (the
/// debouncer's thread) and the flusher. Every holder keeps the lock for a few map
/// operations only.
pub(super) type SharedTouched = Arc<Mutex<Touched>>;

fn lock(touched: &Mutex<Touched>) -> MutexGuard<'_, Touched> {
    // The set stays consistent even if a holder panicked: its methods do not unwind midway.
    touched.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Records, on notify's event thread and before the debouncer sees the event, the names a
/// raw event created, removed or renamed (see [`touched_by`]).
#[derive(Clone)]
pub(super) struct Tee {
    root: PathBuf,
    is_excluded: Excluder,
    touched: SharedTouched,
}

impl Tee {
    /// A tee for events under `root` into `touched`.
    pub(super) fn new(root: PathBuf, is_excluded: Excluder, touched: SharedTouched) -> Tee {
        Tee { root, is_excluded, touched }
    }

    /// Notes the names `event` touched, now.
    pub(super) fn see(&self, event: &notify::Event) {
        let touches = touched_by(event, &self.root, self.is_excluded.as_ref());
        if touches.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut touched = lock(&self.touched);
        for touch in touches {
            touched.touch(touch, now);
        }
    }
}

/// The debouncer's handler: runs on notify's std thread and must never block.
pub(super) struct Bridge {
    root: PathBuf,
    /// Weak, so a debouncer thread that outlives `Watch` (notify leaks it when the
    /// watcher cannot be created) does not keep the channel open.
    hints: mpsc::WeakSender<Hint>,
    /// Rings the service's full pass directly when the channel is full.
    full_pass: Arc<Notify>,
    is_excluded: Excluder,
    reported: Arc<Reported>,
    touched: SharedTouched,
    /// The channel was full: hints are being dropped and a full pass is owed.
    lagging: AtomicBool,
}

impl Bridge {
    /// A handler for events under `root` that sends into `hints` (held weakly).
    pub(super) fn new(
        root: PathBuf,
        hints: &mpsc::Sender<Hint>,
        full_pass: Arc<Notify>,
        is_excluded: Excluder,
        reported: Arc<Reported>,
        touched: SharedTouched,
    ) -> Bridge {
        Bridge {
            root,
            hints: hints.downgrade(),
            full_pass,
            is_excluded,
            reported,
            touched,
            lagging: AtomicBool::new(false),
        }
    }

    /// Maps one batch from the debouncer to hints and sends them; the touched names they
    /// cover need no hint of their own, and those the debouncer dropped from the renames
    /// it reports (an exchange's second name, a chain's middle) go with them.
    pub(super) fn on_batch(&self, batch: DebounceEventResult) {
        let Some(hints) = self.hints.upgrade() else { return };
        // Before mapping: a raw event noted after this instant is not covered by the batch.
        let at = Instant::now();
        let mut mapped: Vec<Hint> = match batch {
            Ok(events) => events
                .iter()
                .flat_map(|event| hints_from(event, &self.root, self.is_excluded.as_ref()))
                .collect(),
            Err(errors) => {
                errors.iter().for_each(|err| self.report(err));
                vec![Hint::FullPass]
            }
        };
        lock(&self.touched).cover(&mut mapped, at);
        self.send_all(&hints, mapped);
    }

    /// Sends the touched names that stayed quiet past the point where the debouncer would
    /// have delivered them, yet no batch covered: the debouncer merged their events away.
    pub(super) fn flush_touched(&self, now: Instant) {
        let Some(hints) = self.hints.upgrade() else { return };
        let ripe = lock(&self.touched).take_ripe(now);
        match ripe.as_slice() {
            [] => return,
            [Hint::FullPass] => tracing::info!(
                "too many names changed at once to follow one by one: a full pass will follow"
            ),
            _ => tracing::debug!(
                hints = ripe.len(),
                "reconciling names whose events the debouncer merged away"
            ),
        }
        self.send_all(&hints, ripe);
    }

    /// `try_send`s each hint; once the channel is full, the rest of the batch is dropped
    /// and one full pass is arranged instead (the `Notify` holds at most one permit).
    fn send_all(&self, tx: &mpsc::Sender<Hint>, hints: impl IntoIterator<Item = Hint>) {
        for hint in hints {
            match tx.try_send(hint) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    if !self.lagging.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            "event queue full: dropping events, a full pass will follow"
                        );
                    }
                    self.full_pass.notify_one();
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
        if self.lagging.swap(false, Ordering::Relaxed) {
            tracing::info!("event queue drained: following events again");
        }
    }

    fn report(&self, err: &notify::Error) {
        let kind = classify(err);
        if self.reported.first(kind) {
            let err = WatchError::from_notify(err);
            tracing::warn!(error = %err, "watcher degraded");
        }
    }
}

/// The thread that hands ripe touched names to the queue every tick, even when the
/// debouncer has nothing to deliver (a file created and removed within one debounce makes
/// no batch at all). Dropping it stops and joins the thread, which wakes at once.
pub(super) struct Flusher {
    stop: Option<StopSender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Flusher {
    /// Starts flushing `bridge`'s touched names every `tick`.
    pub(super) fn start(bridge: Arc<Bridge>, tick: Duration) -> io::Result<Flusher> {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread =
            std::thread::Builder::new().name("replicad-names".into()).spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(tick) {
                    bridge.flush_touched(Instant::now());
                }
            })?;
        Ok(Flusher { stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            // It only ever waits on the stop channel, now closed; a panic there has already
            // been printed by the panic hook, and the watch goes on without it.
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::relpath::RelPath;
    use crate::watch::errors::WatchErrorKind;
    use crate::watch::testing::*;
    use notify::EventKind;
    use std::time::Duration;

    fn bridge(capacity: usize) -> (Bridge, mpsc::Sender<Hint>, mpsc::Receiver<Hint>, Arc<Notify>) {
        let (tx, rx) = mpsc::channel(capacity);
        let full_pass = Arc::new(Notify::new());
        let bridge = Bridge {
            root: PathBuf::from(ROOT),
            hints: tx.downgrade(),
            full_pass: full_pass.clone(),
            is_excluded: Arc::new(|_: &RelPath, _: bool| false),
            reported: Arc::default(),
            touched: Arc::new(Mutex::new(Touched::new(RIPE, 4))),
            lagging: AtomicBool::new(false),
        };
        (bridge, tx, rx, full_pass)
    }

    const RIPE: Duration = Duration::from_millis(100);

    fn tee(bridge: &Bridge) -> Tee {
        Tee::new(PathBuf::from(ROOT), bridge.is_excluded.clone(), bridge.touched.clone())
    }

    fn received(rx: &mut mpsc::Receiver<Hint>) -> Vec<Hint> {
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    #[test]
    fn names_no_batch_covered_are_sent_once_ripe() {
        // `mv d/A d/M; mv d/B d/M`: the debouncer reports the second rename and a removal
        // of M, never A.
        let (bridge, _tx, mut rx, _) = bridge(64);
        let tee = tee(&bridge);
        for (kind, path) in [(FROM, "d/A"), (TO, "d/M"), (FROM, "d/B"), (TO, "d/M")] {
            tee.see(&ev(kind, &[path]));
        }
        let merged = ev(BOTH, &["d/B", "d/M"]);
        let now = std::time::Instant::now();
        bridge.on_batch(Ok(vec![
            notify_debouncer_full::DebouncedEvent::new(ev(RM_FILE, &["d/M"]), now),
            notify_debouncer_full::DebouncedEvent::new(merged, now),
        ]));
        assert_eq!(received(&mut rx), vec![p("d/M", false), p("d", false), mv("d/B", "d/M")]);
        bridge.flush_touched(std::time::Instant::now());
        assert_eq!(received(&mut rx), vec![], "not ripe yet: the debouncer may still deliver");
        bridge.flush_touched(std::time::Instant::now() + RIPE);
        assert_eq!(received(&mut rx), vec![p("d/A", false), p("d", false)]);
        bridge.flush_touched(std::time::Instant::now() + RIPE * 10);
        assert_eq!(received(&mut rx), vec![], "each name once");
    }

    #[test]
    fn an_exchange_sends_both_names_recursively_with_its_batch() {
        // `mv --exchange d/a e/b` as notify 8.2.2 reports it raw (two move pairs, two
        // cookies) and as notify-debouncer-full 0.7 debounces it: one rename of d/a onto
        // itself, nothing for e/b (measured).
        let (bridge, _tx, mut rx, _) = bridge(64);
        let tee = tee(&bridge);
        let raw: [(EventKind, &[&str]); 6] = [
            (FROM, &["d/a"]),
            (TO, &["e/b"]),
            (BOTH, &["d/a", "e/b"]),
            (FROM, &["e/b"]),
            (TO, &["d/a"]),
            (BOTH, &["e/b", "d/a"]),
        ];
        for (kind, paths) in raw {
            tee.see(&ev(kind, paths));
        }
        let now = std::time::Instant::now();
        let merged = notify_debouncer_full::DebouncedEvent::new(ev(BOTH, &["d/a", "d/a"]), now);
        bridge.on_batch(Ok(vec![merged]));
        assert_eq!(
            received(&mut rx),
            vec![mv("d/a", "d/a"), p("e/b", true), p("e", false)],
            "e/b holds what d/a held: it is looked at recursively, with the batch"
        );
        bridge.flush_touched(now + RIPE * 10);
        assert_eq!(received(&mut rx), vec![], "nothing is left to ripen");
    }

    #[tokio::test]
    async fn too_many_touched_names_become_one_full_pass() {
        let (bridge, _tx, mut rx, _) = bridge(64);
        let tee = tee(&bridge);
        for i in 0..5 {
            tee.see(&ev(FILE, &[&format!("f{i}")]));
        }
        bridge.flush_touched(std::time::Instant::now());
        assert_eq!(received(&mut rx), vec![Hint::FullPass], "past the cap of 4");
        tee.see(&ev(RM_FILE, &["g"]));
        bridge.on_batch(Err(vec![notify::Error::generic("lost")]));
        assert_eq!(received(&mut rx), vec![Hint::FullPass]);
        bridge.flush_touched(std::time::Instant::now() + RIPE);
        assert_eq!(received(&mut rx), vec![], "a full pass from a batch covers what came before");
    }

    fn debounced(kind: EventKind, path: &str) -> notify_debouncer_full::DebouncedEvent {
        notify_debouncer_full::DebouncedEvent::new(ev(kind, &[path]), std::time::Instant::now())
    }

    #[tokio::test]
    async fn full_channel_becomes_one_full_pass_without_blocking() {
        let (bridge, _tx, mut rx, full_pass) = bridge(2);
        let batch: Vec<_> = (0..10).map(|i| debounced(DATA, &format!("f{i}"))).collect();
        bridge.on_batch(Ok(batch));
        assert!(bridge.lagging.load(Ordering::Relaxed));
        tokio::time::timeout(Duration::from_secs(1), full_pass.notified()).await.unwrap();
        assert_eq!(rx.recv().await, Some(p("f0", false)));
        assert_eq!(rx.recv().await, Some(p("", false)));
        assert!(rx.try_recv().is_err(), "the rest of a full batch is dropped");
        bridge.on_batch(Ok(vec![debounced(DATA, "g")]));
        assert!(!bridge.lagging.load(Ordering::Relaxed), "a batch that fits ends the lag");
        assert_eq!(rx.recv().await, Some(p("g", false)));
    }

    #[tokio::test]
    async fn runtime_watch_errors_become_a_full_pass() {
        let (bridge, _tx, mut rx, _) = bridge(8);
        let limit =
            || notify::Error::new(notify::ErrorKind::MaxFilesWatch).add_path("/src/new".into());
        bridge.on_batch(Err(vec![limit(), limit()]));
        bridge.on_batch(Err(vec![limit()]));
        assert_eq!(rx.recv().await, Some(Hint::FullPass));
        assert_eq!(rx.recv().await, Some(Hint::FullPass));
        assert!(rx.try_recv().is_err());
        assert!(!bridge.reported.first(WatchErrorKind::TooManyWatches), "was reported");
    }

    #[test]
    fn bridge_is_silent_once_the_watch_is_gone() {
        // The service dropped its end (shutdown): a late batch, even an error batch, asks
        // for no full pass and does not panic.
        let (bridge, tx, rx, full_pass) = bridge(8);
        drop((tx, rx));
        bridge.on_batch(Ok(vec![debounced(DATA, "f")]));
        bridge.on_batch(Err(vec![notify::Error::generic("late")]));
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let asked = runtime.block_on(async {
            tokio::time::timeout(Duration::from_millis(20), full_pass.notified()).await.is_ok()
        });
        assert!(!asked, "a full pass was requested after the watch was gone");
    }
}

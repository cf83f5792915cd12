//! The debouncer's handler: runs on notify's std thread, maps each batch with
//! [`hints_from`] and `try_send`s the hints into the bounded tokio channel; never blocks.
//! When the channel is full it arranges one full pass instead.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use notify_debouncer_full::DebounceEventResult;
use tokio::sync::{Notify, mpsc};

use super::Excluder;
use super::errors::{Reported, WatchError, classify};
use super::hints::hints_from;
use crate::queue::Hint;

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
    ) -> Bridge {
        Bridge {
            root,
            hints: hints.downgrade(),
            full_pass,
            is_excluded,
            reported,
            lagging: AtomicBool::new(false),
        }
    }

    /// Maps one batch from the debouncer to hints and sends them.
    pub(super) fn on_batch(&self, batch: DebounceEventResult) {
        let Some(hints) = self.hints.upgrade() else { return };
        match batch {
            Ok(events) => {
                let mapped = events
                    .iter()
                    .flat_map(|event| hints_from(event, &self.root, self.is_excluded.as_ref()));
                self.send_all(&hints, mapped);
            }
            Err(errors) => {
                errors.iter().for_each(|err| self.report(err));
                self.send_all(&hints, [Hint::FullPass]);
            }
        }
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
            lagging: AtomicBool::new(false),
        };
        (bridge, tx, rx, full_pass)
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
        let (bridge, tx, rx, _) = bridge(8);
        drop((tx, rx));
        bridge.on_batch(Ok(vec![debounced(DATA, "f")]));
    }
}

//! Pending work: which relative paths need reconciling and when. `PendingSet` is the pure
//! core (coalescing, per-path exclusivity, retry schedule; time is an argument) and
//! `run_queue` the thin async shell around it. Knows nothing of the filesystem or of notify.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio::task::{Id, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::relpath::RelPath;
use crate::stats::Stats;

/// What the watcher tells the queue. The consumer owns this vocabulary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hint {
    /// Look at this path; `recursive` when it is (or may be) a directory whose contents
    /// nobody reported (created/moved-in dirs, rename targets).
    Path {
        /// The path to reconcile.
        path: RelPath,
        /// Reconcile everything below it too.
        recursive: bool,
    },
    /// SOURCE `from` was renamed to `to` (both ends seen by the watcher).
    Rename {
        /// The old name.
        from: RelPath,
        /// The new name.
        to: RelPath,
    },
    /// Something was lost (overflow, channel full, watch error, event on the root): one
    /// full pass.
    FullPass,
}

/// One piece of work handed to a worker.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Work {
    /// Make REPLICA/`path` match SOURCE/`path`; with `recursive`, everything below it too.
    Path {
        /// The path to reconcile.
        path: RelPath,
        /// Reconcile everything below it too.
        recursive: bool,
    },
    /// Follow a SOURCE rename in REPLICA if it still fits, then reconcile both ends
    /// recursively (SOURCE may have `from` again: an exchange) and their parents.
    Rename {
        /// The old name.
        from: RelPath,
        /// The new name.
        to: RelPath,
    },
}

impl Work {
    /// The paths this work may write below (each with everything under it).
    fn ends(&self) -> [&RelPath; 2] {
        match self {
            Work::Path { path, .. } => [path, path],
            Work::Rename { from, to } => [from, to],
        }
    }

    /// Two works overlap when a path of one is equal to, above or below a path of the
    /// other: running them together could race on the same REPLICA entries.
    fn overlaps(&self, other: &Work) -> bool {
        self.ends().iter().any(|a| other.ends().iter().any(|b| related(a, b)))
    }
}

impl fmt::Display for Work {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Work::Path { path, recursive: true } => write!(f, "{path} (recursive)"),
            Work::Path { path, recursive: false } => write!(f, "{path}"),
            Work::Rename { from, to } => write!(f, "{from} -> {to}"),
        }
    }
}

fn related(a: &RelPath, b: &RelPath) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// How a piece of work ended, as the worker reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Done (including "nothing to do").
    Success,
    /// Worth another try soon: the source changed while it was being copied.
    Transient,
    /// Failed for a reason a quick retry will not fix; the worker logged it, the next full
    /// pass tries again.
    Failed,
}

/// What `PendingSet::finish` did with a finished piece of work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finished {
    /// Nothing more to do for it.
    Done,
    /// Re-queued: retry number `retry` (from 1) is due at `at`.
    Retry {
        /// Which retry this will be, from 1.
        retry: u32,
        /// When it becomes due.
        at: Instant,
    },
    /// It failed transiently after `retries` retries and was dropped; the next full pass
    /// will catch it. Returned once per give-up so the caller can log it once.
    GaveUp {
        /// How many retries were spent.
        retries: u32,
    },
}

/// Backoff schedule for transient failures: `first`, then doubling, `max_retries` times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay before the first retry.
    pub first: Duration,
    /// How many retries before giving up until the next full pass.
    pub max_retries: u32,
}

impl Default for RetryPolicy {
    /// 200 ms, 400 ms, 800 ms, then give up: a file still changing after ~1.4 s is being
    /// written continuously and will get a fresh event (or the periodic pass) anyway.
    fn default() -> Self {
        RetryPolicy { first: Duration::from_millis(200), max_retries: 3 }
    }
}

impl RetryPolicy {
    /// The delay before retry number `retry` (from 1).
    pub fn delay(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(16);
        self.first.saturating_mul(1 << doublings)
    }
}

#[derive(Debug)]
struct Pending {
    work: Work,
    due: Instant,
    retries: u32,
}

/// The set of pending and in-flight work. Pure and synchronous: no I/O, no runtime; the
/// caller passes the time in.
///
/// Rules: duplicates coalesce; a path under a pending recursive path folds into it; a new
/// recursive path swallows pending paths below it; full passes collapse into one flag; no
/// two overlapping works (same path, or one above the other) are in flight at once; a
/// non-recursive path waits for pending work below it, so a directory's attributes are
/// fixed after its children have changed it; transient failures are retried with backoff.
///
/// Memory is bounded: past `cap` pending items (a burst while a long pass holds the
/// queue back), everything pending folds into one full pass, which covers it all.
#[derive(Debug)]
pub struct PendingSet {
    items: HashMap<u64, Pending>,
    /// Due order; the sequence number keeps ties first-in, first-out.
    order: BTreeSet<(Instant, u64)>,
    /// `Work::Path` items by path. `RelPath` orders component-wise, so the items below a
    /// path follow it contiguously.
    paths: BTreeMap<RelPath, u64>,
    renames: HashMap<(RelPath, RelPath), u64>,
    /// Few entries (at most the number of workers): scanned linearly.
    /// With each: its retries so far, and when it became due (for the lag).
    in_flight: Vec<(Work, u32, Instant)>,
    full_pass: bool,
    next_seq: u64,
    retry: RetryPolicy,
    cap: usize,
    /// Times the set was folded into a full pass (the shell logs each).
    folded: u64,
}

/// Pending items kept before they fold into one full pass: about 100 B each, so a few MB.
pub const PENDING_CAP: usize = 50_000;

impl Default for PendingSet {
    fn default() -> Self {
        PendingSet::new(RetryPolicy::default())
    }
}

impl PendingSet {
    /// An empty set with the given retry schedule.
    pub fn new(retry: RetryPolicy) -> Self {
        PendingSet {
            items: HashMap::new(),
            order: BTreeSet::new(),
            paths: BTreeMap::new(),
            renames: HashMap::new(),
            in_flight: Vec::new(),
            full_pass: false,
            next_seq: 0,
            retry,
            cap: PENDING_CAP,
            folded: 0,
        }
    }

    /// The same set with another cap (tests).
    pub fn with_cap(mut self, cap: usize) -> Self {
        self.cap = cap;
        self
    }

    /// How often the set has folded into a full pass so far.
    pub fn folded(&self) -> u64 {
        self.folded
    }

    /// Adds a hint, due at `now` (the debouncer already waited for quiet).
    pub fn push(&mut self, hint: Hint, now: Instant) {
        match hint {
            Hint::FullPass => self.full_pass = true,
            Hint::Path { path, recursive } => self.add_path(path, recursive, now, 0),
            Hint::Rename { from, to } => self.add_rename(from, to, now, 0),
        }
        if self.items.len() > self.cap {
            self.fold_into_full_pass();
        }
    }

    /// Drops everything pending (work in flight finishes) and asks for a full pass, which
    /// reconciles all of it and more.
    fn fold_into_full_pass(&mut self) {
        self.items = HashMap::new();
        self.order = BTreeSet::new();
        self.paths = BTreeMap::new();
        self.renames = HashMap::new();
        self.full_pass = true;
        self.folded += 1;
    }

    /// True once if a full pass was asked for since the last call; clears the flag.
    pub fn take_full_pass(&mut self) -> bool {
        std::mem::take(&mut self.full_pass)
    }

    /// The next due work that may run now, marked in flight. Work is skipped while it
    /// overlaps work in flight, and a non-recursive path is skipped while work below it is
    /// pending.
    ///
    /// Cost: linear in the due items skipped times the number in flight.
    pub fn pop_ready(&mut self, now: Instant) -> Option<Work> {
        let seq = self
            .order
            .range(..=(now, u64::MAX))
            .map(|&(_, seq)| seq)
            .find(|seq| self.items.get(seq).is_some_and(|item| !self.is_blocked(&item.work)))?;
        let item = self.remove(seq)?;
        self.in_flight.push((item.work.clone(), item.retries, item.due));
        Some(item.work)
    }

    /// Releases `work` (as returned by `pop_ready`) and, on a transient failure, schedules
    /// a retry or gives up.
    pub fn finish(&mut self, work: &Work, outcome: Outcome, now: Instant) -> Finished {
        let Some(index) = self.in_flight.iter().position(|(w, _, _)| w == work) else {
            debug_assert!(false, "finish for work not in flight: {work}");
            return Finished::Done;
        };
        let (work, retries, _) = self.in_flight.swap_remove(index);
        match outcome {
            Outcome::Success | Outcome::Failed => Finished::Done,
            Outcome::Transient if retries >= self.retry.max_retries => Finished::GaveUp { retries },
            Outcome::Transient => {
                let retry = retries + 1;
                let at = now + self.retry.delay(retry);
                match work {
                    Work::Path { path, recursive } => self.add_path(path, recursive, at, retry),
                    Work::Rename { from, to } => self.add_rename(from, to, at, retry),
                }
                Finished::Retry { retry, at }
            }
        }
    }

    /// When pending work next becomes due, after `now`: the time to sleep until. Work that
    /// is due already but blocked is not counted; only a `finish` or a `push` can unblock
    /// it, and the caller wakes for those anyway. (Returning the earliest due time instead
    /// would stall a directory waiting on a child in backoff.)
    pub fn next_due(&self, now: Instant) -> Option<Instant> {
        self.order.range((now, u64::MAX)..).next().map(|&(due, _)| due).filter(|&due| due > now)
    }

    /// Pending works (not counting those in flight, nor the full-pass flag).
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when no work is pending (work may still be in flight).
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Works currently in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// When the oldest work not yet done (pending or in flight) became due: for a fresh
    /// change, when the watcher reported it. A retry counts from its own due time. O(jobs).
    pub fn oldest(&self) -> Option<Instant> {
        let pending = self.order.first().map(|&(due, _)| due);
        self.in_flight.iter().map(|&(_, _, due)| due).chain(pending).min()
    }

    fn add_path(&mut self, path: RelPath, recursive: bool, due: Instant, retries: u32) {
        if self.pending_recursive_above(&path) {
            return;
        }
        if recursive {
            self.swallow_below(&path);
        }
        if let Some(&seq) = self.paths.get(&path) {
            self.merge(seq, due, retries, |work| {
                if let Work::Path { recursive: r, .. } = work {
                    *r |= recursive;
                }
            });
            return;
        }
        let seq = self.insert(Work::Path { path: path.clone(), recursive }, due, retries);
        self.paths.insert(path, seq);
    }

    fn add_rename(&mut self, from: RelPath, to: RelPath, due: Instant, retries: u32) {
        if from == to {
            return self.add_path(to, true, due, retries);
        }
        if self.covered_by_recursive(&from) && self.covered_by_recursive(&to) {
            return;
        }
        let key = (from, to);
        if let Some(&seq) = self.renames.get(&key) {
            return self.merge(seq, due, retries, |_| {});
        }
        let (from, to) = key.clone();
        let seq = self.insert(Work::Rename { from, to }, due, retries);
        self.renames.insert(key, seq);
    }

    /// Coalesces into an existing item: the earlier due time wins (a fresh event means
    /// "look now", even during a retry's backoff) and the retry count is kept.
    fn merge(&mut self, seq: u64, due: Instant, retries: u32, update: impl FnOnce(&mut Work)) {
        let Some(item) = self.items.get_mut(&seq) else {
            return;
        };
        update(&mut item.work);
        item.retries = item.retries.max(retries);
        if due < item.due {
            self.order.remove(&(item.due, seq));
            item.due = due;
            self.order.insert((due, seq));
        }
    }

    fn insert(&mut self, work: Work, due: Instant, retries: u32) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.items.insert(seq, Pending { work, due, retries });
        self.order.insert((due, seq));
        seq
    }

    fn remove(&mut self, seq: u64) -> Option<Pending> {
        let item = self.items.remove(&seq)?;
        self.order.remove(&(item.due, seq));
        match &item.work {
            Work::Path { path, .. } => self.paths.remove(path),
            Work::Rename { from, to } => self.renames.remove(&(from.clone(), to.clone())),
        };
        Some(item)
    }

    fn is_recursive_path(&self, path: &RelPath) -> bool {
        self.paths
            .get(path)
            .and_then(|seq| self.items.get(seq))
            .is_some_and(|item| matches!(item.work, Work::Path { recursive: true, .. }))
    }

    /// A strict ancestor of `path` is pending recursively.
    fn pending_recursive_above(&self, path: &RelPath) -> bool {
        std::iter::successors(path.parent(), RelPath::parent).any(|a| self.is_recursive_path(&a))
    }

    /// `path` itself or an ancestor is pending recursively.
    fn covered_by_recursive(&self, path: &RelPath) -> bool {
        self.is_recursive_path(path) || self.pending_recursive_above(path)
    }

    /// Pending `Work::Path` items strictly below `path`, in path order.
    fn paths_below<'a>(&'a self, path: &'a RelPath) -> impl Iterator<Item = u64> + 'a {
        self.paths
            .range((Bound::Excluded(path), Bound::Unbounded))
            .take_while(move |(p, _)| p.starts_with(path))
            .map(|(_, &seq)| seq)
    }

    fn swallow_below(&mut self, path: &RelPath) {
        let below: Vec<u64> = self.paths_below(path).collect();
        for seq in below {
            self.remove(seq);
        }
    }

    fn is_blocked(&self, work: &Work) -> bool {
        if self.in_flight.iter().any(|(w, _, _)| w.overlaps(work)) {
            return true;
        }
        match work {
            Work::Path { path, recursive: false } => self.work_pending_below(path),
            _ => false,
        }
    }

    /// Work pending strictly below `path` would change REPLICA/`path` (a directory's mtime)
    /// again, so a non-recursive look at `path` should come after it.
    fn work_pending_below(&self, path: &RelPath) -> bool {
        let strictly_below = |p: &RelPath| p != path && p.starts_with(path);
        self.paths_below(path).next().is_some()
            || self.renames.keys().any(|(from, to)| strictly_below(from) || strictly_below(to))
    }
}

/// How many hints are moved from the channel into the set before looking for ready work,
/// so a burst is coalesced before workers start.
const HINT_BATCH: usize = 1024;

/// Runs the event queue until `cancel` fires: moves `hints` into a `PendingSet`, runs up to
/// `jobs` works at once through `work`, retries transient failures with backoff, and turns
/// `FullPass` hints into `full_pass.notify_one()` (the service runs full passes itself;
/// `Notify` keeps at most one permit, so a storm of them is one pass).
///
/// On cancellation it starts nothing new, waits for running works to finish (they watch
/// the same token themselves) and returns. A work that panics counts as failed.
pub async fn run_queue<F, Fut>(
    mut hints: mpsc::Receiver<Hint>,
    jobs: usize,
    full_pass: Arc<Notify>,
    work: F,
    stats: Arc<Stats>,
    cancel: CancellationToken,
) where
    F: Fn(Work) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let mut shell = Shell {
        set: PendingSet::default(),
        running: JoinSet::new(),
        tasks: HashMap::new(),
        jobs: jobs.max(1),
    };
    let mut hints_open = true;
    loop {
        shell.start_ready(&work);
        let depth = shell.set.len() + shell.set.in_flight();
        stats.set_queue(depth, shell.set.oldest().map(Instant::into_std));
        let wake = shell.set.next_due(Instant::now());
        tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            Some(joined) = shell.running.join_next_with_id() => shell.finished(joined),
            hint = hints.recv(), if hints_open => match hint {
                Some(hint) => {
                    stats.change_seen();
                    shell.set.push(hint, Instant::now());
                    for _ in 1..HINT_BATCH {
                        let Ok(hint) = hints.try_recv() else { break };
                        stats.change_seen();
                        shell.set.push(hint, Instant::now());
                    }
                    let folded = shell.set.folded();
                    if shell.set.take_full_pass() {
                        full_pass.notify_one();
                    }
                    if shell.set.folded() != folded {
                        tracing::info!(cap = PENDING_CAP, "too many pending changes at once: one full pass covers them instead");
                    }
                }
                None => hints_open = false,
            },
            () = sleep_until_some(wake) => {}
        }
    }
    while let Some(joined) = shell.running.join_next_with_id().await {
        shell.finished(joined);
    }
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The async half's state: the pure set plus the tasks running its works.
struct Shell {
    set: PendingSet,
    running: JoinSet<Outcome>,
    /// Which work each task runs, so a panicked task still releases its paths.
    tasks: HashMap<Id, Work>,
    jobs: usize,
}

impl Shell {
    fn start_ready<F, Fut>(&mut self, work: &F)
    where
        F: Fn(Work) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = Outcome> + Send + 'static,
    {
        while self.running.len() < self.jobs {
            let Some(next) = self.set.pop_ready(Instant::now()) else {
                return;
            };
            let handle = self.running.spawn(work(next.clone()));
            self.tasks.insert(handle.id(), next);
        }
    }

    fn finished(&mut self, joined: Result<(Id, Outcome), tokio::task::JoinError>) {
        let (id, outcome) = match joined {
            Ok(done) => done,
            Err(err) => {
                tracing::error!(error = %err, "queue work task ended abnormally");
                (err.id(), Outcome::Failed)
            }
        };
        let Some(work) = self.tasks.remove(&id) else {
            return;
        };
        match self.set.finish(&work, outcome, Instant::now()) {
            Finished::Done => {}
            Finished::Retry { retry, at } => {
                let delay = at.saturating_duration_since(Instant::now());
                tracing::debug!(work = %work, retry, ?delay, "source changed during copy; retrying");
            }
            Finished::GaveUp { retries } => {
                tracing::warn!(work = %work, retries, "source keeps changing; giving up until the next pass");
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use std::path::Path;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn rp(s: &str) -> RelPath {
        RelPath::new(Path::new(s)).unwrap()
    }

    #[test]
    fn past_the_cap_everything_pending_folds_into_one_full_pass() {
        // See: issue "Trust (2/3)" item 10
        let now = Instant::now();
        let mut set = PendingSet::default().with_cap(3);
        set.push(Hint::Path { path: rp("busy"), recursive: false }, now);
        let in_flight = set.pop_ready(now).unwrap();
        for name in ["a", "b", "c"] {
            set.push(Hint::Path { path: rp(name), recursive: false }, now);
        }
        assert_eq!((set.len(), set.folded()), (3, 0));
        assert!(!set.take_full_pass());
        set.push(Hint::Path { path: rp("d"), recursive: false }, now);
        assert_eq!((set.len(), set.folded()), (0, 1), "folded at the fourth");
        assert!(set.take_full_pass());
        assert!(set.pop_ready(now).is_none());
        // The work in flight is still known and finishes normally.
        assert_eq!(set.finish(&in_flight, Outcome::Success, now), Finished::Done);
    }
    fn hp(s: &str) -> Hint {
        Hint::Path { path: rp(s), recursive: false }
    }
    fn hr(s: &str) -> Hint {
        Hint::Path { path: rp(s), recursive: true }
    }
    fn hmv(a: &str, b: &str) -> Hint {
        Hint::Rename { from: rp(a), to: rp(b) }
    }
    fn wp(s: &str) -> Work {
        Work::Path { path: rp(s), recursive: false }
    }
    fn wr(s: &str) -> Work {
        Work::Path { path: rp(s), recursive: true }
    }
    fn wmv(a: &str, b: &str) -> Work {
        Work::Rename { from: rp(a), to: rp(b) }
    }
    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    impl PendingSet {
        /// Pending works in due order.
        fn pending(&self) -> Vec<Work> {
            self.order.iter().map(|(_, seq)| self.items[seq].work.clone()).collect()
        }
    }

    #[test]
    fn coalescing_rules() {
        let cases: Vec<(&str, Vec<Hint>, Vec<Work>)> = vec![
            ("duplicates coalesce", vec![hp("a"), hp("a"), hp("a")], vec![wp("a")]),
            ("non-recursive then recursive is recursive", vec![hp("a"), hr("a")], vec![wr("a")]),
            ("recursive then non-recursive stays recursive", vec![hr("a"), hp("a")], vec![wr("a")]),
            ("child folds into pending recursive parent", vec![hr("d"), hp("d/x")], vec![wr("d")]),
            ("deep child folds too", vec![hr("d"), hr("d/x/y")], vec![wr("d")]),
            (
                "child of non-recursive parent is kept",
                vec![hp("d"), hp("d/x")],
                vec![wp("d"), wp("d/x")],
            ),
            (
                "recursive parent swallows pending children",
                vec![hp("d/x"), hr("d/y/z"), hp("dd"), hr("d")],
                vec![wp("dd"), wr("d")],
            ),
            (
                "siblings sharing a name prefix are not children",
                vec![hp("d-x"), hp("d.x"), hp("d/x"), hr("d")],
                vec![wp("d-x"), wp("d.x"), wr("d")],
            ),
            (
                "upgrade to recursive swallows children and keeps its place",
                vec![hp("d"), hp("e"), hp("d/x"), hr("d")],
                vec![wr("d"), wp("e")],
            ),
            ("recursive root swallows everything", vec![hp("a"), hp("b/c"), hr("")], vec![wr("")]),
            (
                "full pass adds no work",
                vec![Hint::FullPass, hp("a"), Hint::FullPass],
                vec![wp("a")],
            ),
            ("duplicate renames coalesce", vec![hmv("a", "b"), hmv("a", "b")], vec![wmv("a", "b")]),
            (
                "rename is its own item",
                vec![hp("a"), hmv("a", "b"), hp("b")],
                vec![wp("a"), wmv("a", "b"), wp("b")],
            ),
            (
                "rename inside a pending recursive dir folds",
                vec![hr("d"), hmv("d/a", "d/b")],
                vec![wr("d")],
            ),
            (
                "rename leaving a pending recursive dir is kept",
                vec![hr("d"), hmv("d/a", "e/b")],
                vec![wr("d"), wmv("d/a", "e/b")],
            ),
            (
                "later recursive parent does not swallow a rename",
                vec![hmv("d/a", "d/b"), hr("d")],
                vec![wmv("d/a", "d/b"), wr("d")],
            ),
            ("rename onto itself is a recursive look", vec![hmv("a", "a")], vec![wr("a")]),
        ];
        for (name, hints, want) in cases {
            let now = Instant::now();
            let mut set = PendingSet::default();
            for hint in hints {
                set.push(hint, now);
            }
            assert_eq!(set.pending(), want, "{name}");
            assert_eq!(set.len(), want.len(), "{name}");
        }
    }

    #[test]
    fn full_passes_collapse_into_one_flag() {
        let now = Instant::now();
        let mut set = PendingSet::default();
        assert!(!set.take_full_pass());
        for _ in 0..5 {
            set.push(Hint::FullPass, now);
        }
        assert!(set.take_full_pass());
        assert!(!set.take_full_pass());
        assert!(set.is_empty());
    }

    /// One step of a scheduling script; times are milliseconds from the start.
    enum Step {
        Push(u64, Hint),
        Pop(u64, Option<Work>),
        Finish(u64, Work, Outcome, Expect),
    }
    enum Expect {
        Done,
        Retry(u32, u64),
        GaveUp(u32),
    }
    use Expect::{Done, GaveUp, Retry};
    use Step::{Finish, Pop, Push};

    fn run_script(name: &str, steps: Vec<Step>) {
        let t0 = Instant::now();
        let mut set = PendingSet::default();
        for (i, step) in steps.into_iter().enumerate() {
            match step {
                Push(at, hint) => set.push(hint, t0 + ms(at)),
                Pop(at, want) => assert_eq!(set.pop_ready(t0 + ms(at)), want, "{name}, step {i}"),
                Finish(at, work, outcome, expect) => {
                    let now = t0 + ms(at);
                    let want = match expect {
                        Done => Finished::Done,
                        Retry(retry, delay) => Finished::Retry { retry, at: now + ms(delay) },
                        GaveUp(retries) => Finished::GaveUp { retries },
                    };
                    assert_eq!(set.finish(&work, outcome, now), want, "{name}, step {i}");
                }
            }
        }
    }

    #[test]
    fn one_in_flight_per_overlapping_path() {
        let scripts: Vec<(&str, Vec<Step>)> = vec![
            (
                "same path waits for the running one",
                vec![
                    Push(0, hp("a")),
                    Pop(0, Some(wp("a"))),
                    Push(1, hp("a")),
                    Pop(1, None),
                    Finish(2, wp("a"), Outcome::Success, Done),
                    Pop(2, Some(wp("a"))),
                ],
            ),
            (
                "descendant waits for a running recursive ancestor, others do not",
                vec![
                    Push(0, hr("d")),
                    Pop(0, Some(wr("d"))),
                    Push(1, hp("d/x")),
                    Push(1, hp("e")),
                    Pop(1, Some(wp("e"))),
                    Pop(1, None),
                    Finish(2, wr("d"), Outcome::Success, Done),
                    Pop(2, Some(wp("d/x"))),
                ],
            ),
            (
                "ancestor waits for a running descendant",
                vec![
                    Push(0, hp("d/x/y")),
                    Pop(0, Some(wp("d/x/y"))),
                    Push(1, hr("d")),
                    Pop(1, None),
                    Finish(2, wp("d/x/y"), Outcome::Failed, Done),
                    Pop(2, Some(wr("d"))),
                ],
            ),
            (
                "siblings run together",
                vec![
                    Push(0, hp("d/x")),
                    Push(0, hp("d/y")),
                    Pop(0, Some(wp("d/x"))),
                    Pop(0, Some(wp("d/y"))),
                    Pop(0, None),
                ],
            ),
            (
                "a directory's own look comes after work below it",
                vec![
                    Push(0, hp("d")),
                    Push(0, hp("d/x")),
                    Pop(0, Some(wp("d/x"))),
                    Pop(0, None),
                    Finish(1, wp("d/x"), Outcome::Success, Done),
                    Pop(1, Some(wp("d"))),
                ],
            ),
            (
                "a directory's own look waits for a rename inside it",
                vec![
                    Push(0, hp("d")),
                    Push(0, hmv("d/a", "d/b")),
                    Pop(0, Some(wmv("d/a", "d/b"))),
                    Pop(0, None),
                    Finish(1, wmv("d/a", "d/b"), Outcome::Success, Done),
                    Pop(1, Some(wp("d"))),
                ],
            ),
            (
                "a running rename blocks both ends and their ancestors and descendants",
                vec![
                    Push(0, hmv("a/x", "b/y")),
                    Pop(0, Some(wmv("a/x", "b/y"))),
                    Push(1, hp("a/x")),
                    Push(1, hp("b/y/z")),
                    Push(1, hr("a")),
                    Push(1, hp("c")),
                    Pop(1, Some(wp("c"))),
                    Pop(1, None),
                    Finish(2, wmv("a/x", "b/y"), Outcome::Success, Done),
                    Pop(2, Some(wp("b/y/z"))),
                    Pop(2, Some(wr("a"))),
                ],
            ),
            (
                "a rename waits for work running on either end",
                vec![
                    Push(0, hp("b/y/deep")),
                    Pop(0, Some(wp("b/y/deep"))),
                    Push(1, hmv("a", "b/y")),
                    Pop(1, None),
                    Finish(2, wp("b/y/deep"), Outcome::Success, Done),
                    Pop(2, Some(wmv("a", "b/y"))),
                ],
            ),
            (
                "nothing is ready before it is due",
                vec![Push(10, hp("a")), Pop(9, None), Pop(10, Some(wp("a")))],
            ),
        ];
        for (name, steps) in scripts {
            run_script(name, steps);
        }
    }

    #[test]
    fn transient_failures_back_off_then_give_up() {
        let scripts: Vec<(&str, Vec<Step>)> = vec![
            (
                "200, 400, 800 ms, then give up",
                vec![
                    Push(0, hp("f")),
                    Pop(0, Some(wp("f"))),
                    Finish(0, wp("f"), Outcome::Transient, Retry(1, 200)),
                    Pop(199, None),
                    Pop(200, Some(wp("f"))),
                    Finish(200, wp("f"), Outcome::Transient, Retry(2, 400)),
                    Pop(599, None),
                    Pop(600, Some(wp("f"))),
                    Finish(600, wp("f"), Outcome::Transient, Retry(3, 800)),
                    Pop(1399, None),
                    Pop(1400, Some(wp("f"))),
                    Finish(1400, wp("f"), Outcome::Transient, GaveUp(3)),
                    Pop(100_000, None),
                ],
            ),
            (
                "a hard failure is not retried",
                vec![
                    Push(0, hp("f")),
                    Pop(0, Some(wp("f"))),
                    Finish(0, wp("f"), Outcome::Failed, Done),
                    Pop(100_000, None),
                ],
            ),
            (
                "a fresh event during backoff runs now and keeps the retry count",
                vec![
                    Push(0, hp("f")),
                    Pop(0, Some(wp("f"))),
                    Finish(0, wp("f"), Outcome::Transient, Retry(1, 200)),
                    Push(50, hp("f")),
                    Pop(50, Some(wp("f"))),
                    Finish(50, wp("f"), Outcome::Transient, Retry(2, 400)),
                ],
            ),
            (
                "renames are retried like paths",
                vec![
                    Push(0, hmv("a", "b")),
                    Pop(0, Some(wmv("a", "b"))),
                    Finish(0, wmv("a", "b"), Outcome::Transient, Retry(1, 200)),
                    Pop(200, Some(wmv("a", "b"))),
                ],
            ),
            (
                "a retry folds into a pending recursive parent",
                vec![
                    Push(0, hp("d/f")),
                    Pop(0, Some(wp("d/f"))),
                    Push(1, hr("d")),
                    Finish(2, wp("d/f"), Outcome::Transient, Retry(1, 200)),
                    Pop(2, Some(wr("d"))),
                    Pop(10_000, None),
                ],
            ),
        ];
        for (name, steps) in scripts {
            run_script(name, steps);
        }
    }

    #[test]
    fn next_due_and_counts() {
        let t0 = Instant::now();
        let mut set = PendingSet::default();
        assert_eq!(set.next_due(t0), None);
        set.push(hp("a"), t0);
        set.push(hp("b"), t0 + ms(5));
        assert_eq!(set.next_due(t0), Some(t0 + ms(5)), "a is due already: no need to sleep for it");
        assert_eq!(set.next_due(t0 - ms(1)), Some(t0));
        assert_eq!((set.len(), set.in_flight()), (2, 0));
        assert_eq!(set.pop_ready(t0), Some(wp("a")));
        assert_eq!((set.len(), set.in_flight()), (1, 1));
        assert_eq!(
            set.finish(&wp("a"), Outcome::Transient, t0),
            Finished::Retry { retry: 1, at: t0 + ms(200) }
        );
        assert_eq!(set.next_due(t0), Some(t0 + ms(5)));
        assert_eq!(set.pop_ready(t0 + ms(5)), Some(wp("b")));
        assert_eq!(set.next_due(t0 + ms(5)), Some(t0 + ms(200)));
        assert_eq!(set.next_due(t0 + ms(200)), None);
    }

    #[test]
    fn next_due_skips_due_work_to_find_a_blocking_retry() {
        let t0 = Instant::now();
        let mut set = PendingSet::default();
        set.push(hp("d/f"), t0);
        assert_eq!(set.pop_ready(t0), Some(wp("d/f")));
        set.finish(&wp("d/f"), Outcome::Transient, t0);
        set.push(hp("d"), t0 + ms(50));
        assert_eq!(set.pop_ready(t0 + ms(50)), None, "d waits for its child");
        assert_eq!(set.next_due(t0 + ms(50)), Some(t0 + ms(200)));
    }

    #[test]
    fn backoff_schedule_doubles() {
        let policy = RetryPolicy::default();
        let delays: Vec<Duration> = (1..=3).map(|r| policy.delay(r)).collect();
        assert_eq!(delays, vec![ms(200), ms(400), ms(800)]);
        assert_eq!(policy.max_retries, 3);
    }

    // ---- the async shell, under paused time ----

    /// A fake worker: records each call with its start time, checks that no two overlapping
    /// works run at once, and answers from a script.
    #[derive(Clone, Default)]
    struct Fake {
        calls: Arc<Mutex<Vec<(Work, Instant)>>>,
        active: Arc<Mutex<Vec<Work>>>,
        overlaps: Arc<AtomicUsize>,
        max_running: Arc<AtomicUsize>,
        /// How many more times each path answers `Transient`.
        transient: Arc<Mutex<HashMap<RelPath, u32>>>,
        busy: Duration,
    }

    impl Fake {
        fn with_busy(busy: Duration) -> Self {
            Fake { busy, ..Fake::default() }
        }

        fn worker(
            &self,
        ) -> impl Fn(Work) -> std::pin::Pin<Box<dyn Future<Output = Outcome> + Send>>
        + Clone
        + Send
        + 'static {
            let fake = self.clone();
            move |work: Work| {
                let fake = fake.clone();
                Box::pin(async move { fake.run(work).await })
            }
        }

        async fn run(self, work: Work) -> Outcome {
            self.calls.lock().unwrap().push((work.clone(), Instant::now()));
            {
                let mut active = self.active.lock().unwrap();
                if active.iter().any(|w| w.overlaps(&work)) {
                    self.overlaps.fetch_add(1, Ordering::SeqCst);
                }
                active.push(work.clone());
                self.max_running.fetch_max(active.len(), Ordering::SeqCst);
            }
            tokio::time::sleep(self.busy).await;
            self.active.lock().unwrap().retain(|w| w != &work);
            let Work::Path { path, .. } = &work else { return Outcome::Success };
            match self.transient.lock().unwrap().get_mut(path) {
                Some(left) if *left > 0 => {
                    *left -= 1;
                    Outcome::Transient
                }
                _ => Outcome::Success,
            }
        }

        fn works(&self) -> Vec<Work> {
            self.calls.lock().unwrap().iter().map(|(w, _)| w.clone()).collect()
        }
    }

    struct Running {
        hints: mpsc::Sender<Hint>,
        full_pass: Arc<Notify>,
        cancel: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    fn start(fake: &Fake, jobs: usize, prefill: Vec<Hint>) -> Running {
        let (tx, rx) = mpsc::channel(64);
        for hint in prefill {
            tx.try_send(hint).unwrap();
        }
        let full_pass = Arc::new(Notify::new());
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run_queue(
            rx,
            jobs,
            full_pass.clone(),
            fake.worker(),
            Arc::new(crate::stats::Stats::new()),
            cancel.clone(),
        ));
        Running { hints: tx, full_pass, cancel, task }
    }

    impl Running {
        async fn stop(self) {
            self.cancel.cancel();
            self.task.await.unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn shell_coalesces_a_burst_into_one_work_per_path() {
        let fake = Fake::with_busy(ms(10));
        let burst = vec![hp("a"), hp("a"), hp("d/x"), hp("a"), hr("d"), hp("d/y"), hp("a")];
        let run = start(&fake, 2, burst);
        tokio::time::sleep(Duration::from_secs(1)).await;
        run.stop().await;
        let mut works = fake.works();
        works.sort_by_key(|w| w.to_string());
        assert_eq!(works, vec![wp("a"), wr("d")]);
    }

    #[tokio::test(start_paused = true)]
    async fn shell_runs_at_most_jobs_at_once() {
        let fake = Fake::with_busy(ms(100));
        let hints = (0..10).map(|i| hp(&format!("f{i}"))).collect();
        let run = start(&fake, 3, hints);
        tokio::time::sleep(Duration::from_secs(2)).await;
        run.stop().await;
        assert_eq!(fake.works().len(), 10);
        assert_eq!(fake.max_running.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn shell_never_runs_overlapping_paths_together() {
        let fake = Fake::with_busy(ms(100));
        let run = start(&fake, 4, vec![hp("a"), hmv("x/1", "y/1")]);
        tokio::time::sleep(ms(10)).await;
        for hint in [hp("a"), hp("a/b"), hr("y"), hp("x/1/deep"), hp("b")] {
            run.hints.send(hint).await.unwrap();
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        run.stop().await;
        assert_eq!(fake.overlaps.load(Ordering::SeqCst), 0);
        let works = fake.works();
        assert_eq!(works.iter().filter(|w| **w == wp("a")).count(), 2, "{works:?}");
        assert_eq!(works.len(), 7, "{works:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn shell_retries_transient_failures_with_backoff_then_stops() {
        let fake = Fake::with_busy(Duration::ZERO);
        fake.transient.lock().unwrap().insert(rp("f"), u32::MAX);
        let run = start(&fake, 1, vec![hp("f")]);
        tokio::time::sleep(Duration::from_secs(10)).await;
        run.stop().await;
        let calls = fake.calls.lock().unwrap().clone();
        let gaps: Vec<Duration> = calls.windows(2).map(|w| w[1].1 - w[0].1).collect();
        assert_eq!(gaps, vec![ms(200), ms(400), ms(800)]);
    }

    #[tokio::test(start_paused = true)]
    async fn shell_turns_full_pass_hints_into_one_notification() {
        let fake = Fake::default();
        let run = start(&fake, 1, vec![Hint::FullPass, Hint::FullPass, Hint::FullPass]);
        tokio::time::timeout(ms(100), run.full_pass.notified()).await.unwrap();
        assert!(tokio::time::timeout(ms(100), run.full_pass.notified()).await.is_err());
        assert!(fake.works().is_empty());
        let full_pass = run.full_pass.clone();
        run.stop().await;
        assert!(tokio::time::timeout(ms(100), full_pass.notified()).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn shell_waits_for_running_work_on_cancel() {
        let fake = Fake::with_busy(Duration::from_secs(1));
        let run = start(&fake, 1, vec![hp("slow"), hp("queued")]);
        tokio::time::sleep(ms(100)).await;
        let cancelled_at = Instant::now();
        run.stop().await;
        assert!(Instant::now() - cancelled_at >= ms(900), "returned before the work finished");
        assert_eq!(fake.works(), vec![wp("slow")], "started new work after cancel");
        assert!(fake.active.lock().unwrap().is_empty());
    }

    /// A directory's own look waits for a child in backoff; the loop must still wake at the
    /// child's due time rather than wait for a hint that may never come.
    #[tokio::test(start_paused = true)]
    async fn shell_wakes_for_a_retry_that_a_due_parent_waits_on() {
        let fake = Fake::with_busy(Duration::ZERO);
        fake.transient.lock().unwrap().insert(rp("d/f"), 1);
        let run = start(&fake, 1, vec![hp("d/f")]);
        tokio::time::sleep(ms(50)).await;
        run.hints.send(hp("d")).await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        run.stop().await;
        assert_eq!(fake.works(), vec![wp("d/f"), wp("d/f"), wp("d")]);
    }
}

//! The SOURCE watcher: notify-debouncer-full on the canonical SOURCE root, its events mapped
//! to [`Hint`]s by the pure [`hints_from`] and bridged into tokio without ever blocking
//! notify's thread; watch errors classified once. Knows nothing of what a change means.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use notify::event::{CreateKind, ModifyKind, RemoveKind, RenameMode};
use notify::{Event, EventKind, RecursiveMode, Watcher};
use notify_debouncer_full::{DebounceEventResult, RecommendedCache, new_debouncer_opt};
use tokio::sync::{Notify, mpsc};

use crate::queue::Hint;
use crate::relpath::{Escaped, RelPath};

/// Prefix of replicad's temporary names (SPEC §4: `.replicad.tmp.*`); never mirrored, so
/// never hinted either.
const TEMP_PREFIX: &[u8] = b".replicad.tmp.";

/// Decides whether a path is excluded; the second argument says whether it is a directory.
/// The service wraps `Gitignore::matched_path_or_any_parents` (given a relative path, so it
/// cannot panic on paths outside the root).
pub type Excluder = Arc<dyn Fn(&RelPath, bool) -> bool + Send + Sync>;

/// A watcher that drops every `Access` event before the debouncer stores it.
///
/// notify 8.2.2 always asks inotify for `IN_OPEN`, so replicad's own reads of SOURCE (every
/// pass, every `--checksum` hash) would come back as events and could feed a loop; they
/// would also fill the debouncer's per-path map (NOTES §1.4.1).
#[derive(Debug)]
pub struct NoAccess<W = notify::RecommendedWatcher>(W);

impl<W: Watcher> Watcher for NoAccess<W> {
    fn new<F: notify::EventHandler>(mut inner: F, config: notify::Config) -> notify::Result<Self> {
        let filter = move |event: notify::Result<Event>| {
            if !matches!(&event, Ok(e) if e.kind.is_access()) {
                inner.handle_event(event);
            }
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

/// Maps one (debounced) event to hints for the queue. Pure: no I/O.
///
/// `need_rescan` (overflow) is checked before anything else, since it has no path. An event
/// on the root itself or outside it asks for a full pass (the deletion guard decides what a
/// vanished root means), except a plain attribute change of the root. Changed entries get a
/// hint for themselves and one for their parent, whose mtime the change (or our REPLICA
/// write) moves. Paths that are excluded or are our temporary names get no hint of their
/// own, but their creation, removal or renaming still changes the parent.
///
/// When the event does not say whether an entry is a directory (renames, attribute
/// changes), it counts as excluded if it would be as a file or as a directory: a wrongly
/// skipped entry waits for the next pass, a wrongly mirrored one would never be removed.
pub fn hints_from(
    event: &Event,
    source_root: &Path,
    is_excluded: &dyn Fn(&RelPath, bool) -> bool,
) -> Vec<Hint> {
    if event.need_rescan() {
        return vec![Hint::FullPass];
    }
    if event.kind.is_access() {
        return Vec::new();
    }
    if event.paths.is_empty() {
        return vec![Hint::FullPass];
    }
    let Some(paths) = relative(&event.paths, source_root) else {
        return vec![Hint::FullPass];
    };
    let mut out = Hints { hints: Vec::new(), is_excluded };
    if paths.iter().any(RelPath::is_root) {
        if is_attribute_change(event.kind) && paths.iter().all(RelPath::is_root) {
            out.push(RelPath::root(), false);
            return out.hints;
        }
        return vec![Hint::FullPass];
    }
    match event.kind {
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => match paths.as_slice() {
            [from, to] => out.rename(from, to),
            _ => return vec![Hint::FullPass],
        },
        kind => {
            let look = Look::of(kind);
            for path in &paths {
                out.look(path, look);
            }
        }
    }
    out.hints
}

/// The event's paths relative to the root; `None` if one lies outside it.
fn relative(paths: &[PathBuf], root: &Path) -> Option<Vec<RelPath>> {
    paths.iter().map(|p| RelPath::under(root, p)).collect()
}

fn is_attribute_change(kind: EventKind) -> bool {
    matches!(
        kind,
        EventKind::Modify(
            ModifyKind::Data(_) | ModifyKind::Metadata(_) | ModifyKind::Any | ModifyKind::Other
        )
    )
}

/// What one event says about one path.
#[derive(Clone, Copy, Debug)]
struct Look {
    /// Its contents may not have been reported (new or moved-in directory).
    recursive: bool,
    /// The parent's entries changed (create, remove, rename), not only this entry.
    namespace: bool,
    /// Whether it is a directory, when the event says.
    is_dir: Option<bool>,
}

impl Look {
    fn of(kind: EventKind) -> Look {
        let (recursive, namespace, is_dir) = match kind {
            EventKind::Create(CreateKind::File) => (false, true, Some(false)),
            EventKind::Create(CreateKind::Folder) => (true, true, Some(true)),
            // Create(Any/Other): may be a directory whose contents nobody reported.
            EventKind::Create(_) => (true, true, None),
            EventKind::Remove(RemoveKind::File) => (false, true, Some(false)),
            EventKind::Remove(RemoveKind::Folder) => (false, true, Some(true)),
            EventKind::Remove(_) => (false, true, None),
            EventKind::Modify(ModifyKind::Name(RenameMode::From)) => (false, true, None),
            // Moved in: inotify reports nothing of what it contains.
            EventKind::Modify(ModifyKind::Name(_)) => (true, true, None),
            // inotify sends IN_MODIFY only for non-directories.
            EventKind::Modify(ModifyKind::Data(_)) => (false, false, Some(false)),
            EventKind::Modify(_) => (false, false, None),
            // Kinds inotify does not produce: assume the worst.
            EventKind::Any | EventKind::Other | EventKind::Access(_) => (true, true, None),
        };
        Look { recursive, namespace, is_dir }
    }
}

/// Collects hints, applying the exclusion and temp-name rules.
struct Hints<'a> {
    hints: Vec<Hint>,
    is_excluded: &'a dyn Fn(&RelPath, bool) -> bool,
}

impl Hints<'_> {
    fn push(&mut self, path: RelPath, recursive: bool) {
        let hint = Hint::Path { path, recursive };
        // Events carry one or two paths, so this scan is short.
        if !self.hints.contains(&hint) {
            self.hints.push(hint);
        }
    }

    fn skipped(&self, path: &RelPath, is_dir: Option<bool>) -> bool {
        is_temp_name(path)
            || match is_dir {
                Some(is_dir) => (self.is_excluded)(path, is_dir),
                None => (self.is_excluded)(path, false) || (self.is_excluded)(path, true),
            }
    }

    /// The parent's mtime moves when an entry appears, vanishes or is renamed in it.
    fn parent_of(&mut self, path: &RelPath) {
        if let Some(parent) = path.parent().filter(|p| !self.skipped(p, Some(true))) {
            self.push(parent, false);
        }
    }

    fn look(&mut self, path: &RelPath, look: Look) {
        if self.skipped(path, look.is_dir) {
            if look.namespace {
                self.parent_of(path);
            }
            return;
        }
        self.push(path.clone(), look.recursive);
        self.parent_of(path);
    }

    fn rename(&mut self, from: &RelPath, to: &RelPath) {
        let from_look = Look::of(EventKind::Modify(ModifyKind::Name(RenameMode::From)));
        let to_look = Look::of(EventKind::Modify(ModifyKind::Name(RenameMode::To)));
        match (self.skipped(from, None), self.skipped(to, None)) {
            (false, false) => {
                self.hints.push(Hint::Rename { from: from.clone(), to: to.clone() });
                // The worker reconciles `from`'s parent itself; `to`'s is ours to report.
                if from.parent() != to.parent() {
                    self.parent_of(to);
                }
            }
            // An excluded end is invisible to the mirror: the rename is a create or remove.
            (true, false) => {
                self.parent_of(from);
                self.look(to, to_look);
            }
            (false, true) => {
                self.look(from, from_look);
                self.parent_of(to);
            }
            (true, true) => {
                self.parent_of(from);
                self.parent_of(to);
            }
        }
    }
}

fn is_temp_name(path: &RelPath) -> bool {
    path.names().any(|name| name.as_encoded_bytes().starts_with(TEMP_PREFIX))
}

/// A watch problem, classified by what the operator can do about it. Its `Display` is the
/// whole warning, naming the limit to raise.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// inotify's per-user watch limit is reached: part of SOURCE is not watched.
    #[error(
        "inotify watch limit reached{} (fs.inotify.max_user_watches = {}{}); changes there are \
         seen only by the periodic pass; raise it with `sysctl fs.inotify.max_user_watches=N`",
        at(.path.as_deref()),
        limit(*.max_user_watches),
        namespace_limit(*.max_user_watches, *.namespace_max_watches)
    )]
    TooManyWatches {
        /// The first directory that could not be watched, if known.
        path: Option<PathBuf>,
        /// The current value of `/proc/sys/fs/inotify/max_user_watches`, if readable.
        max_user_watches: Option<u64>,
        /// `/proc/sys/user/max_inotify_watches`: the user namespace's own limit (containers),
        /// which can be the lower one.
        namespace_max_watches: Option<u64>,
    },
    /// Too many inotify instances (fs.inotify.max_user_instances) or open files.
    #[error(
        "too many inotify instances or open files (fs.inotify.max_user_instances = {}): \
         {source}; running on periodic passes only",
        limit(*.max_user_instances)
    )]
    TooManyInstances {
        /// The current value of `/proc/sys/fs/inotify/max_user_instances`, if readable.
        max_user_instances: Option<u64>,
        /// The OS error (EMFILE or ENFILE).
        source: io::Error,
    },
    /// Any other watch failure.
    #[error("watch error{}: {reason}; changes there are seen only by the periodic pass", at(.path.as_deref()))]
    Failed {
        /// The path concerned, if any.
        path: Option<PathBuf>,
        /// notify's description.
        reason: String,
    },
}

fn at(path: Option<&Path>) -> String {
    path.map(|p| format!(" at {}", Escaped::path(p))).unwrap_or_default()
}

/// Names the user namespace's limit only when it is the one that bites.
fn namespace_limit(global: Option<u64>, namespace: Option<u64>) -> String {
    match (global, namespace) {
        (Some(g), Some(n)) if n < g => format!(", user.max_inotify_watches = {n}"),
        (None, Some(n)) => format!(", user.max_inotify_watches = {n}"),
        _ => String::new(),
    }
}

fn limit(value: Option<u64>) -> String {
    value.map_or_else(|| "unknown".to_owned(), |v| v.to_string())
}

/// The classes of [`WatchError`], decided from a notify error alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchErrorKind {
    /// `MaxFilesWatch`, or ENOSPC from inotify.
    TooManyWatches,
    /// EMFILE/ENFILE: too many inotify instances or open files.
    TooManyInstances,
    /// Anything else.
    Other,
}

/// Classifies a notify error. Pure: the boundary where OS errors get their meaning.
pub fn classify(err: &notify::Error) -> WatchErrorKind {
    match &err.kind {
        notify::ErrorKind::MaxFilesWatch => WatchErrorKind::TooManyWatches,
        notify::ErrorKind::Io(e) => match e.raw_os_error() {
            Some(libc::ENOSPC) => WatchErrorKind::TooManyWatches,
            Some(libc::EMFILE | libc::ENFILE) => WatchErrorKind::TooManyInstances,
            _ => WatchErrorKind::Other,
        },
        _ => WatchErrorKind::Other,
    }
}

impl WatchError {
    /// Classifies `err` and, for the limits, reads the current value from `/proc`.
    pub fn from_notify(err: &notify::Error) -> WatchError {
        let path = err.paths.first().cloned();
        match (classify(err), &err.kind) {
            (WatchErrorKind::TooManyWatches, _) => WatchError::TooManyWatches {
                path,
                max_user_watches: read_limit("/proc/sys/fs/inotify/max_user_watches"),
                namespace_max_watches: read_limit("/proc/sys/user/max_inotify_watches"),
            },
            (WatchErrorKind::TooManyInstances, notify::ErrorKind::Io(e)) => {
                WatchError::TooManyInstances {
                    max_user_instances: read_limit("/proc/sys/fs/inotify/max_user_instances"),
                    source: io::Error::new(e.kind(), e.to_string()),
                }
            }
            _ => WatchError::Failed { path, reason: err.kind_description() },
        }
    }

    /// Its class.
    pub fn kind(&self) -> WatchErrorKind {
        match self {
            WatchError::TooManyWatches { .. } => WatchErrorKind::TooManyWatches,
            WatchError::TooManyInstances { .. } => WatchErrorKind::TooManyInstances,
            WatchError::Failed { .. } => WatchErrorKind::Other,
        }
    }
}

/// notify's `Error` displays its paths with `{:?}`; keep only the kind, we show the path.
trait KindDescription {
    fn kind_description(&self) -> String;
}

impl KindDescription for notify::Error {
    fn kind_description(&self) -> String {
        match &self.kind {
            notify::ErrorKind::Generic(msg) => msg.clone(),
            notify::ErrorKind::Io(e) => e.to_string(),
            notify::ErrorKind::PathNotFound => "no such file or directory".to_owned(),
            notify::ErrorKind::WatchNotFound => "watch not found".to_owned(),
            notify::ErrorKind::InvalidConfig(c) => format!("invalid config {c:?}"),
            notify::ErrorKind::MaxFilesWatch => "watch limit reached".to_owned(),
        }
    }
}

fn read_limit(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Which warnings were already given; shared by `start` and the handler so each limit is
/// reported once per watcher (one watcher per process).
#[derive(Debug, Default)]
struct Reported {
    too_many_watches: AtomicBool,
    too_many_instances: AtomicBool,
}

impl Reported {
    /// True the first time for a limit; always true for other errors (they are rare).
    fn first(&self, kind: WatchErrorKind) -> bool {
        match kind {
            WatchErrorKind::TooManyWatches => !self.too_many_watches.swap(true, Ordering::Relaxed),
            WatchErrorKind::TooManyInstances => {
                !self.too_many_instances.swap(true, Ordering::Relaxed)
            }
            WatchErrorKind::Other => true,
        }
    }
}

/// The debouncer's handler: runs on notify's std thread and must never block.
struct Bridge {
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
    fn on_batch(&self, batch: DebounceEventResult) {
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
    /// `debounce` after its path went quiet. When `hints` is full, events are dropped and
    /// `full_pass` is notified instead, so notify's thread never waits.
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
        let reported = Arc::new(Reported::default());
        let bridge = Bridge {
            root: source_root.to_path_buf(),
            hints: hints.downgrade(),
            full_pass,
            is_excluded,
            reported: reported.clone(),
            lagging: AtomicBool::new(false),
        };
        let config = notify::Config::default().with_follow_symlinks(false);
        let mut debouncer = new_debouncer_opt::<_, NoAccess<W>, RecommendedCache>(
            debounce,
            Some(tick_for(debounce)),
            move |batch: DebounceEventResult| bridge.on_batch(batch),
            RecommendedCache::new(),
            config,
        )
        .map_err(|e| WatchError::from_notify(&e))?;
        let degraded = debouncer.watch(source_root, RecursiveMode::Recursive).err().map(|e| {
            let err = WatchError::from_notify(&e);
            // The caller reports this one; the handler must not repeat it.
            reported.first(err.kind());
            err
        });
        Ok(Watch { _debouncer: Box::new(debouncer), _hints: hints, degraded })
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
    use notify::event::{AccessKind, AccessMode, DataChange, Flag, MetadataKind};
    use std::sync::Mutex;

    const ROOT: &str = "/src";

    fn rp(s: &str) -> RelPath {
        RelPath::new(Path::new(s)).unwrap()
    }
    fn p(s: &str, recursive: bool) -> Hint {
        Hint::Path { path: rp(s), recursive }
    }
    fn mv(a: &str, b: &str) -> Hint {
        Hint::Rename { from: rp(a), to: rp(b) }
    }
    fn ev(kind: EventKind, paths: &[&str]) -> Event {
        paths.iter().fold(Event::new(kind), |e, path| {
            e.add_path(if path.starts_with('/') {
                PathBuf::from(path)
            } else {
                Path::new(ROOT).join(path)
            })
        })
    }

    /// `ign` anywhere, `*.o` files or dirs, and `build/` (directories only), as gitignore
    /// would say with `matched_path_or_any_parents`.
    fn excluded(path: &RelPath, is_dir: bool) -> bool {
        let names: Vec<_> = path.names().map(|n| n.to_string_lossy().into_owned()).collect();
        let last = names.len().saturating_sub(1);
        names.iter().enumerate().any(|(i, name)| {
            name == "ign" || name.ends_with(".o") || (name == "build" && (is_dir || i < last))
        })
    }

    const FILE: EventKind = EventKind::Create(CreateKind::File);
    const DIR: EventKind = EventKind::Create(CreateKind::Folder);
    const DATA: EventKind = EventKind::Modify(ModifyKind::Data(DataChange::Content));
    const ATTR: EventKind = EventKind::Modify(ModifyKind::Metadata(MetadataKind::Permissions));
    const RM_FILE: EventKind = EventKind::Remove(RemoveKind::File);
    const RM_DIR: EventKind = EventKind::Remove(RemoveKind::Folder);
    const BOTH: EventKind = EventKind::Modify(ModifyKind::Name(RenameMode::Both));
    const FROM: EventKind = EventKind::Modify(ModifyKind::Name(RenameMode::From));
    const TO: EventKind = EventKind::Modify(ModifyKind::Name(RenameMode::To));
    const OPEN: EventKind = EventKind::Access(AccessKind::Open(AccessMode::Any));

    #[test]
    fn events_to_hints() {
        let rescan = Event::new(EventKind::Other).set_flag(Flag::Rescan);
        let rescan_with_path = ev(FILE, &["a"]).set_flag(Flag::Rescan);
        let cases: Vec<(&str, Event, Vec<Hint>)> = vec![
            ("overflow is pathless: full pass", rescan, vec![Hint::FullPass]),
            ("rescan wins over paths", rescan_with_path, vec![Hint::FullPass]),
            ("access dropped", ev(OPEN, &["a"]), vec![]),
            ("pathless unknown event: full pass", ev(EventKind::Other, &[]), vec![Hint::FullPass]),
            (
                "file created: it and its parent",
                ev(FILE, &["d/f"]),
                vec![p("d/f", false), p("d", false)],
            ),
            ("directory created: recursive", ev(DIR, &["d"]), vec![p("d", true), p("", false)]),
            (
                "create of unknown kind: recursive",
                ev(EventKind::Create(CreateKind::Any), &["x"]),
                vec![p("x", true), p("", false)],
            ),
            ("content changed", ev(DATA, &["d/f"]), vec![p("d/f", false), p("d", false)]),
            ("attributes changed", ev(ATTR, &["d"]), vec![p("d", false), p("", false)]),
            ("file removed", ev(RM_FILE, &["d/f"]), vec![p("d/f", false), p("d", false)]),
            (
                "directory removed: not recursive",
                ev(RM_DIR, &["d/e"]),
                vec![p("d/e", false), p("d", false)],
            ),
            ("rename in one directory", ev(BOTH, &["d/a", "d/b"]), vec![mv("d/a", "d/b")]),
            (
                "rename across directories: also the target's parent",
                ev(BOTH, &["a/x", "b/y"]),
                vec![mv("a/x", "b/y"), p("b", false)],
            ),
            ("rename to the top", ev(BOTH, &["d/a", "b"]), vec![mv("d/a", "b"), p("", false)]),
            (
                "rename from an excluded name is a create",
                ev(BOTH, &["d/x.o", "d/x"]),
                vec![p("d", false), p("d/x", true)],
            ),
            (
                "rename to an excluded name is a remove",
                ev(BOTH, &["d/x", "d/x.o"]),
                vec![p("d/x", false), p("d", false)],
            ),
            (
                "rename out of an excluded tree",
                ev(BOTH, &["ign/a", "b"]),
                vec![p("b", true), p("", false)],
            ),
            ("rename within an excluded tree", ev(BOTH, &["ign/a", "ign/b"]), vec![]),
            ("rename with one path: full pass", ev(BOTH, &["a"]), vec![Hint::FullPass]),
            ("moved out", ev(FROM, &["d/a"]), vec![p("d/a", false), p("d", false)]),
            ("moved in: recursive", ev(TO, &["d/a"]), vec![p("d/a", true), p("d", false)]),
            ("root removed: full pass", ev(RM_DIR, &[""]), vec![Hint::FullPass]),
            ("root moved away: full pass", ev(FROM, &[""]), vec![Hint::FullPass]),
            ("root attributes: the root alone", ev(ATTR, &[""]), vec![p("", false)]),
            ("outside the root: full pass", ev(FILE, &["/elsewhere/x"]), vec![Hint::FullPass]),
            ("sibling of the root is outside", ev(FILE, &["/src2/x"]), vec![Hint::FullPass]),
            (
                "temp name created: only the parent",
                ev(FILE, &["d/.replicad.tmp.42"]),
                vec![p("d", false)],
            ),
            ("temp name written: nothing", ev(DATA, &["d/.replicad.tmp.42"]), vec![]),
            ("under a temp-named dir: nothing", ev(DATA, &[".replicad.tmp.x/f"]), vec![]),
            ("excluded file created: only the parent", ev(FILE, &["d/a.o"]), vec![p("d", false)]),
            ("excluded file written: nothing", ev(DATA, &["d/a.o"]), vec![]),
            ("inside an excluded dir: nothing", ev(FILE, &["ign/x"]), vec![]),
            ("dir-only pattern, directory", ev(DIR, &["build"]), vec![p("", false)]),
            ("dir-only pattern, file", ev(FILE, &["build"]), vec![p("build", false), p("", false)]),
            ("dir-only pattern, type unknown: excluded", ev(TO, &["build"]), vec![p("", false)]),
            (
                "several paths",
                ev(EventKind::Modify(ModifyKind::Any), &["a", "d/b"]),
                vec![p("a", false), p("", false), p("d/b", false), p("d", false)],
            ),
        ];
        for (name, event, want) in cases {
            assert_eq!(hints_from(&event, Path::new(ROOT), &excluded), want, "{name}");
        }
    }

    #[test]
    fn classifies_watch_errors() {
        let io = |errno| notify::Error::io(io::Error::from_raw_os_error(errno));
        let cases = vec![
            (
                "MaxFilesWatch",
                notify::Error::new(notify::ErrorKind::MaxFilesWatch),
                WatchErrorKind::TooManyWatches,
            ),
            ("ENOSPC", io(libc::ENOSPC), WatchErrorKind::TooManyWatches),
            ("EMFILE", io(libc::EMFILE), WatchErrorKind::TooManyInstances),
            ("ENFILE", io(libc::ENFILE), WatchErrorKind::TooManyInstances),
            ("EACCES", io(libc::EACCES), WatchErrorKind::Other),
            ("PathNotFound", notify::Error::path_not_found(), WatchErrorKind::Other),
            ("Generic", notify::Error::generic("boom"), WatchErrorKind::Other),
        ];
        for (name, err, want) in cases {
            assert_eq!(classify(&err), want, "{name}");
            assert_eq!(WatchError::from_notify(&err).kind(), want, "{name}");
        }
    }

    #[test]
    fn watch_limit_warning_names_the_sysctl_and_its_value() {
        let err = notify::Error::new(notify::ErrorKind::MaxFilesWatch).add_path("/src/deep".into());
        let text = WatchError::from_notify(&err).to_string();
        assert!(text.contains("fs.inotify.max_user_watches = "), "{text}");
        assert!(text.contains("/src/deep"), "{text}");
        if let Some(value) = read_limit("/proc/sys/fs/inotify/max_user_watches") {
            assert!(text.contains(&format!("= {value}")), "{text}");
        }
        let emfile =
            WatchError::from_notify(&notify::Error::io(io::Error::from_raw_os_error(libc::EMFILE)));
        assert!(emfile.to_string().contains("fs.inotify.max_user_instances"), "{emfile}");
    }

    #[test]
    fn each_limit_is_reported_once() {
        let reported = Reported::default();
        assert!(reported.first(WatchErrorKind::TooManyWatches));
        assert!(!reported.first(WatchErrorKind::TooManyWatches));
        assert!(reported.first(WatchErrorKind::TooManyInstances));
        assert!(!reported.first(WatchErrorKind::TooManyInstances));
        assert!(reported.first(WatchErrorKind::Other));
        assert!(reported.first(WatchErrorKind::Other));
    }

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
        assert_eq!(rest.await.unwrap(), vec![p("", false)], "the channel closes with the watch");
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

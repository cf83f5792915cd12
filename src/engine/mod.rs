//! The engine. `decide(source, replica)` is pure: it says what one entry needs. The rest
//! applies decisions through `ops`: `full_pass` reconciles the whole tree; `reconcile_path`
//! and `follow_rename` reconcile what an event pointed at. All three share one idempotent
//! per-entry path, run as tasks (a directory, or a batch of entries: no call-stack
//! recursion) on one pool of `--jobs` threads started once for the process. Blocking
//! code; knows nothing of events or timers.

use std::collections::HashSet;
use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rustix::fs::{Mode, OFlags};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::checksum::Md5Cache;
use crate::config::{Config, Excludes};
use crate::entry::{AttrDiff, Entry, Kind, MtimeStore};
use crate::error::{EntryError, EntryErrorKind, Fatal, GuardTrip, Op};
use crate::guard::{Guard, OpenRoots};
use crate::ops::{
    self, CopyCaps, CopyOptions, Expect, Handle, Making, TempNames, XattrChanges, XattrSupport,
    Xattrs,
};
use crate::relpath::RelPath;
use crate::stats::Stats;

mod horizon;
mod links;
use horizon::Horizon;
use links::{LinkGroups, LinkIndex, LinkRoots};

// =======================================================================================
// Deciding (pure)
// =======================================================================================

/// What one entry of REPLICA needs to match SOURCE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Already identical.
    Nothing,
    /// Present in REPLICA only: remove it (recursively for a directory).
    Remove,
    /// Missing in REPLICA: create it (copy a file).
    Create,
    /// Different type, symlink target or device number: replace it.
    Replace,
    /// A file whose size or mtime differ: copy the content again.
    Update,
    /// `--checksum`: size and mtime agree, the content must be compared by MD5.
    CompareContent,
    /// Only metadata differ.
    Attrs(AttrDiff),
    /// SOURCE has a directory: make sure REPLICA has one, then reconcile its children.
    Descend,
    /// A type that is not mirrored (sockets).
    Skip,
}

/// Rules that shape a decision.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rules {
    /// Owners are compared (root / CAP_CHOWN).
    pub owners: bool,
    /// Equal size and mtime must be confirmed by MD5.
    pub checksum: bool,
    /// What REPLICA's filesystem can store of a modification time.
    pub mtimes: MtimeStore,
    /// Hard links are mirrored: a replica file may have as many names as SOURCE's.
    pub hard_links: bool,
}

/// Decides what the replica entry needs. `same_link_target` is asked only when both sides
/// are symlinks (reading a link costs a syscall per side).
pub fn decide(
    src: Option<&Entry>,
    dst: Option<&Entry>,
    rules: Rules,
    same_link_target: impl FnOnce() -> bool,
) -> Action {
    let (src, dst) = match (src, dst) {
        (None, None) => return Action::Nothing,
        (None, Some(_)) => return Action::Remove,
        (Some(s), _) if s.kind == Kind::Dir => return Action::Descend,
        (Some(s), _) if s.kind == Kind::Socket => return Action::Skip,
        (Some(_), None) => return Action::Create,
        (Some(s), Some(d)) => (s, d),
    };
    if src.kind != dst.kind {
        return Action::Replace;
    }
    match src.kind {
        Kind::File
            if !src.same_size_and_mtime(dst, &rules.mtimes) || foreign_content(src, dst, rules) =>
        {
            Action::Update
        }
        Kind::File if rules.checksum => Action::CompareContent,
        Kind::Symlink if !same_link_target() => Action::Replace,
        Kind::CharDevice | Kind::BlockDevice if src.rdev != dst.rdev => Action::Replace,
        Kind::Dir => Action::Descend,
        _ => match src.attr_diff(dst, rules.owners, &rules.mtimes) {
            diff if diff.is_empty() => Action::Nothing,
            // Someone else's inode, maybe with a name outside REPLICA: replace, never change.
            _ if foreign_content(src, dst, rules) => Action::Replace,
            diff => Action::Attrs(diff),
        },
    }
}

/// A replica file whose content someone other than replicad may have put there: its inode
/// has more names than SOURCE's link group accounts for (perhaps one outside REPLICA), or
/// another owner than SOURCE's file. Its attributes are never changed in place — that
/// could hand SOURCE's owner or setuid bits to that content, or change a file outside
/// REPLICA — it is copied again instead. Setuid/setgid bits are never added in place to
/// an inode with a second name at all.
fn foreign_content(src: &Entry, dst: &Entry, rules: Rules) -> bool {
    let names = if rules.hard_links && src.kind == Kind::File { src.nlink.max(1) } else { 1 };
    let setid_to_shared = dst.nlink > 1 && src.mode & 0o6000 != 0 && src.mode != dst.mode;
    dst.nlink > names
        || setid_to_shared
        || (rules.owners && (src.uid, src.gid) != (dst.uid, dst.gid))
}

// =======================================================================================
// Reports
// =======================================================================================

/// Counts of one pass (or one event's work).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Source entries looked at.
    pub scanned: u64,
    /// Directories, symlinks, FIFOs and devices created.
    pub create: u64,
    /// Files copied that were missing.
    pub copy: u64,
    /// Files whose content was replaced.
    pub update: u64,
    /// Entries whose metadata only were corrected.
    pub attrs: u64,
    /// Renames that followed a rename in SOURCE.
    pub rename: u64,
    /// Names given to a REPLICA file because they share its inode in SOURCE (hard links).
    pub link: u64,
    /// Entries removed (a directory counts once).
    pub remove: u64,
    /// Entries that could not be mirrored.
    pub errors: u64,
    /// Entries skipped with a warning (sockets, devices without CAP_MKNOD).
    pub skipped: u64,
    /// SOURCE entries that vanished or changed while being mirrored (warnings).
    pub vanished: u64,
    /// Bytes copied.
    pub bytes: u64,
}

impl Counts {
    /// Number of changes made (or, in a dry run, that would be made).
    pub fn changes(&self) -> u64 {
        self.create + self.copy + self.update + self.attrs + self.rename + self.link + self.remove
    }

    fn add(&mut self, o: &Counts) {
        self.scanned += o.scanned;
        self.create += o.create;
        self.copy += o.copy;
        self.update += o.update;
        self.attrs += o.attrs;
        self.rename += o.rename;
        self.link += o.link;
        self.remove += o.remove;
        self.errors += o.errors;
        self.skipped += o.skipped;
        self.vanished += o.vanished;
        self.bytes += o.bytes;
    }
}

/// The outcome of a full pass or of one piece of event work.
#[derive(Clone, Debug, Default)]
pub struct PassReport {
    /// What was done.
    pub counts: Counts,
    /// How long it took.
    pub duration: Duration,
    /// Set when the deletion guard stopped the work (nothing was changed).
    pub guard: Option<GuardTrip>,
    /// Some file changed while being copied: worth retrying soon.
    pub transient: bool,
    /// Shutdown interrupted the work.
    pub cancelled: bool,
    /// Event work met a hard-linked file whose other names it could not find (a link made
    /// across directories): only a full pass can join them.
    pub links_unresolved: bool,
}

impl PassReport {
    /// The `--once` exit status: 0 in sync, 23 when some entries failed, 24 when the only
    /// trouble was SOURCE entries vanishing or changing under the pass, 1 when a guard
    /// refused the pass, 20 when SIGINT/SIGTERM stopped it (rsync's codes).
    pub fn exit_status(&self) -> u8 {
        if self.guard.is_some() {
            1
        } else if self.cancelled {
            20
        } else if self.counts.errors > 0 {
            23
        } else if self.counts.vanished > 0 {
            24
        } else {
            0
        }
    }

    /// Folds another report into this one (event work that reconciled several paths).
    pub fn merge(&mut self, other: PassReport) {
        self.counts.add(&other.counts);
        self.duration += other.duration;
        self.guard = self.guard.take().or(other.guard);
        self.transient |= other.transient;
        self.cancelled |= other.cancelled;
        self.links_unresolved |= other.links_unresolved;
    }

    /// The pass summary line (SPEC §3).
    pub fn log_summary(&self, dry_run: bool) {
        let c = &self.counts;
        info!(
            target: SUMMARY_TARGET,
            duration = self.duration.as_secs_f64(),
            scanned = c.scanned,
            create = c.create,
            copy = c.copy,
            update = c.update,
            attrs = c.attrs,
            rename = c.rename,
            link = c.link,
            remove = c.remove,
            errors = c.errors,
            skipped = c.skipped,
            vanished = c.vanished,
            bytes = c.bytes,
            dry_run,
            "pass complete"
        );
    }
}

/// One run's shared state: what it did, and the hard-linked names it met (settled once
/// the walk is done).
#[derive(Default)]
struct Counters {
    scanned: AtomicU64,
    create: AtomicU64,
    copy: AtomicU64,
    update: AtomicU64,
    attrs: AtomicU64,
    rename: AtomicU64,
    link: AtomicU64,
    remove: AtomicU64,
    errors: AtomicU64,
    skipped: AtomicU64,
    vanished: AtomicU64,
    bytes: AtomicU64,
    transient: AtomicBool,
    links_unresolved: AtomicBool,
    links: LinkGroups,
}

impl Counters {
    fn bump(counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Counts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Counts {
            scanned: get(&self.scanned),
            create: get(&self.create),
            copy: get(&self.copy),
            update: get(&self.update),
            attrs: get(&self.attrs),
            rename: get(&self.rename),
            link: get(&self.link),
            remove: get(&self.remove),
            errors: get(&self.errors),
            skipped: get(&self.skipped),
            vanished: get(&self.vanished),
            bytes: get(&self.bytes),
        }
    }

    /// Adds what another run's counters (a part of this run done on its own) counted.
    fn absorb(&self, other: &Counters) {
        let c = other.snapshot();
        for (to, by) in [
            (&self.scanned, c.scanned),
            (&self.create, c.create),
            (&self.copy, c.copy),
            (&self.update, c.update),
            (&self.attrs, c.attrs),
            (&self.rename, c.rename),
            (&self.link, c.link),
            (&self.remove, c.remove),
            (&self.errors, c.errors),
            (&self.skipped, c.skipped),
            (&self.vanished, c.vanished),
            (&self.bytes, c.bytes),
        ] {
            Counters::bump(to, by);
        }
        if other.transient.load(Ordering::Relaxed) {
            self.transient.store(true, Ordering::Relaxed);
        }
        if other.links_unresolved.load(Ordering::Relaxed) {
            self.links_unresolved.store(true, Ordering::Relaxed);
        }
    }

    /// True if anything went wrong (an error, a vanished entry, a copy to retry).
    fn troubled(&self) -> bool {
        let c = self.snapshot();
        c.errors + c.vanished > 0 || self.transient.load(Ordering::Relaxed)
    }
}

// =======================================================================================
// The engine
// =======================================================================================

/// Options of the engine, taken from `Config`.
#[derive(Clone, Copy, Debug)]
pub struct EngineOptions {
    /// Log actions, apply none.
    pub dry_run: bool,
    /// Compare MD5 when size and mtime agree.
    pub checksum: bool,
    /// Copy options (chown, fsync, verify).
    pub copy: CopyOptions,
    /// An empty SOURCE may empty REPLICA.
    pub allow_empty_source: bool,
    /// Mirror extended attributes and ACLs.
    pub xattrs: bool,
    /// Names sharing an inode in SOURCE share one in REPLICA.
    pub hard_links: bool,
    /// Do not descend into other filesystems mounted inside SOURCE.
    pub one_file_system: bool,
}

/// The pass summary's log target: `-q` still shows it (see `logging`).
pub const SUMMARY_TARGET: &str = "replicad::summary";

/// How many skipped paths are remembered so each is warned about once.
const SKIPS_REMEMBERED: usize = 10_000;

/// Reconciles REPLICA with SOURCE. Shared by the one-shot pass, the periodic passes and the
/// event queue; holds no per-file state (the optional MD5 cache is bounded).
pub struct Engine {
    guard: Guard,
    /// The process's filesystem workers: `--jobs` threads, started once.
    pool: rayon::ThreadPool,
    opts: EngineOptions,
    rules: Rules,
    /// What REPLICA's filesystem stores of an mtime, found by the first piece of work
    /// that passed the guards (a dry run writes nothing, not even a probe: it compares
    /// exactly).
    mtimes: OnceLock<MtimeStore>,
    mtimes_warned: AtomicBool,
    excludes: Excludes,
    temp_names: TempNames,
    caps: CopyCaps,
    /// Attribute namespaces REPLICA turned down.
    xattr_support: XattrSupport,
    /// SOURCE's multiply-linked inodes and their names, as last seen.
    links: LinkIndex,
    /// Since when unchanged entries need not have their xattrs read again.
    horizon: Horizon,
    md5: Option<Md5Cache>,
    cancel: CancellationToken,
    progress: AtomicU64,
    flushing: AtomicBool,
    /// Bind-mount boundaries already warned about (one warning each per run).
    boundaries_warned: Mutex<HashSet<RelPath>>,
    /// Paths already warned about as skipped (sockets, devices): a socket that stays in
    /// SOURCE is said once, not on every pass. Bounded by [`SKIPS_REMEMBERED`].
    skips_warned: Mutex<HashSet<RelPath>>,
    /// (device, inode) of files this process writes (its log): never mirrored or removed.
    own_files: Vec<(u64, u64)>,
    /// REPLICA's root was made by this run (a dry run: would be): the first pass says
    /// `create` for it, not `attrs`.
    fresh_replica: AtomicBool,
    /// Where entry errors are counted and the last ones kept (the status endpoint).
    stats: Arc<Stats>,
    /// The running full pass's counters, for progress shown while it runs.
    current_pass: Mutex<Option<Arc<Counters>>>,
}

impl Engine {
    /// Builds the engine for `config`; remembers what the roots are for the guards.
    pub fn new(
        config: &Config,
        excludes: Excludes,
        cancel: CancellationToken,
    ) -> Result<Engine, Fatal> {
        let guard = Guard::new(config)?;
        let jobs = config.jobs.max(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(jobs)
            .thread_name(|i| format!("replicad-fs-{i}"))
            .build()
            .map_err(|e| Fatal::Threads { jobs, reason: e.to_string() })?;
        let opts = EngineOptions {
            dry_run: config.dry_run,
            checksum: config.checksum,
            copy: CopyOptions { chown: config.chown, fsync: config.fsync, verify: config.verify },
            allow_empty_source: config.allow_empty_source,
            xattrs: config.xattrs,
            hard_links: config.hard_links,
            one_file_system: config.one_file_system,
        };
        Ok(Engine {
            guard,
            pool,
            rules: Rules {
                owners: config.chown,
                checksum: config.checksum,
                mtimes: MtimeStore::default(),
                hard_links: config.hard_links,
            },
            mtimes: OnceLock::new(),
            mtimes_warned: AtomicBool::new(false),
            opts,
            excludes,
            temp_names: TempNames::default(),
            caps: CopyCaps::default(),
            xattr_support: XattrSupport::default(),
            links: LinkIndex::default(),
            horizon: Horizon::new(local_clocks(config)),
            md5: (config.checksum || config.verify).then(Md5Cache::default),
            cancel,
            progress: AtomicU64::new(0),
            flushing: AtomicBool::new(false),
            boundaries_warned: Mutex::new(HashSet::new()),
            skips_warned: Mutex::new(HashSet::new()),
            own_files: config.own_files.clone(),
            fresh_replica: AtomicBool::new(config.replica_created),
            stats: Arc::new(Stats::new()),
            current_pass: Mutex::new(None),
        })
    }

    /// A number that moves while work moves (entries looked at or removed, chunks copied):
    /// the service feeds systemd's watchdog only while it does, so a stuck pass gets
    /// restarted.
    pub fn progress(&self) -> u64 {
        self.progress.load(Ordering::Relaxed)
    }

    /// True while the kernel flushes REPLICA (`syncfs` at the end of a pass): one call that
    /// moves no counter, yet the pass is not stuck.
    pub fn is_flushing(&self) -> bool {
        self.flushing.load(Ordering::Relaxed)
    }

    /// The excludes this engine honours (the watcher drops the same paths).
    pub fn excludes(&self) -> &Excludes {
        &self.excludes
    }

    /// Reconciles the whole tree.
    pub fn full_pass(&self) -> PassReport {
        let start = Horizon::pass_start();
        let report = self.run(|roots, counters| {
            let live = Arc::new(Counters::default());
            *self.current_pass.lock().unwrap_or_else(|e| e.into_inner()) = Some(live.clone());
            self.reconcile_root(roots, &live);
            *self.current_pass.lock().unwrap_or_else(|e| e.into_inner()) = None;
            counters.absorb(&live);
        });
        let clean = report.guard.is_none()
            && !report.cancelled
            && !report.transient
            && report.counts.errors == 0
            && !self.opts.dry_run;
        if clean && self.opts.xattrs {
            self.horizon.passed_clean(start);
        }
        report
    }

    /// True the first time `rel` is skipped (then it is warned about); past
    /// [`SKIPS_REMEMBERED`] paths, new ones are no longer warned (memory stays bounded).
    fn first_skip(&self, rel: &RelPath) -> bool {
        let mut warned = self.skips_warned.lock().unwrap_or_else(|e| e.into_inner());
        warned.len() < SKIPS_REMEMBERED && warned.insert(rel.clone())
    }

    /// What the running full pass has done so far; `None` between passes.
    pub fn pass_progress(&self) -> Option<Counts> {
        let current = self.current_pass.lock().unwrap_or_else(|e| e.into_inner()).clone();
        current.map(|c| c.snapshot())
    }

    /// The service's statistics, which this engine's entry errors feed.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Reconciles one path an event pointed at: the entry itself, its whole subtree when
    /// `recursive` (or when the replica lacks the directory), and its parent's attributes.
    pub fn reconcile_path(&self, rel: &RelPath, recursive: bool) -> PassReport {
        if rel.is_root() && recursive {
            return self.full_pass();
        }
        self.run(|roots, counters| match rel.is_root() {
            true => self.fix_root_attrs(&roots, counters),
            false => self.reconcile_below_root(&roots, rel, recursive, counters),
        })
    }

    /// A change to the SOURCE root's own metadata (or to an entry right under it, which
    /// moves its mtime): only the root's attributes, not a whole pass.
    fn fix_root_attrs(&self, roots: &OpenRoots, counters: &Counters) {
        if let Some(dst) = &roots.dst {
            self.fix_dir_attrs(&roots.src, dst, &RelPath::root(), counters);
        }
    }

    /// Follows a rename SOURCE `from` → `to` with a rename in REPLICA when REPLICA still has
    /// what `from` was and nothing at `to`; then reconciles both, recursively: `to`, and
    /// `from`, which removes it if the rename was not followed and, if SOURCE has `from`
    /// again (an exchange, or a rename onto it), mirrors whatever it now holds. Either fixes
    /// its parent, so the result is right whatever the rename did.
    pub fn follow_rename(&self, from: &RelPath, to: &RelPath) -> PassReport {
        self.run(|roots, counters| {
            // Either end excluded (as a file or as a directory): no shortcut, the two
            // reconciles below do what the exclusion allows.
            let excluded = |p: &RelPath| {
                self.excludes.matches_path_or_parent(p, false)
                    || self.excludes.matches_path_or_parent(p, true)
            };
            if !excluded(from) && !excluded(to) {
                self.try_rename(&roots, from, to, counters);
            }
            self.reconcile_below_root(&roots, to, true, counters);
            self.reconcile_below_root(&roots, from, true, counters);
        })
    }

    /// One piece of work on the pool: the roots are opened through the guards, `work` runs
    /// if they pass, and the counts become the report.
    fn run(&self, work: impl FnOnce(OpenRoots, &Counters) + Send) -> PassReport {
        self.in_pool(|| {
            self.horizon.check_clock();
            let started = Instant::now();
            let counters = Counters::default();
            let mut report = PassReport::default();
            match self.open_roots() {
                Err(trip) => report.guard = Some(trip),
                Ok(roots) => {
                    let link_roots = self.link_roots(&roots);
                    work(roots, &counters);
                    // Event work: the hard-linked names it met, settled as groups.
                    if let Some(link_roots) = link_roots {
                        self.settle_links(&link_roots, false, &counters);
                    }
                }
            }
            report.counts = counters.snapshot();
            report.transient = counters.transient.load(Ordering::Relaxed);
            report.links_unresolved = counters.links_unresolved.load(Ordering::Relaxed);
            report.cancelled = self.cancel.is_cancelled();
            report.duration = started.elapsed();
            report
        })
    }

    /// Second descriptors of both roots for settling link groups after the walk (which
    /// consumes the first); `None` without `--hard-links` or when they cannot be had (the
    /// names are then applied one by one, as separate files).
    fn link_roots(&self, roots: &OpenRoots) -> Option<LinkRoots> {
        if !self.opts.hard_links {
            return None;
        }
        let src = dup(&roots.src).ok()?;
        let dst = match &roots.dst {
            Some(d) => Some(dup(d).ok()?),
            None => None,
        };
        Some(LinkRoots { src, dst })
    }

    /// Opens both roots anew through the guards (see `guard`). Before the first piece of
    /// work, REPLICA must take a probe file (a read-only REPLICA is found before anything
    /// else is tried, and its filesystem's mtime precision with it).
    fn open_roots(&self) -> Result<OpenRoots, GuardTrip> {
        let probe = |roots: &OpenRoots| match (&roots.dst, self.opts.dry_run) {
            (Some(dst), false) if self.mtimes.get().is_none() => {
                let mtimes = ops::probe_replica(dst.as_fd(), &self.temp_names)
                    .map_err(|e| GuardTrip::ReplicaUnwritable(e.to_string()))?;
                let _ = self.mtimes.set(mtimes);
                Ok(())
            }
            _ => Ok(()),
        };
        self.guard.open(&|name| self.temp_names.is_ours(name), probe)
    }

    /// The decision rules, with REPLICA's mtime precision once it is known.
    fn rules(&self) -> Rules {
        Rules { mtimes: self.mtimes.get().copied().unwrap_or_default(), ..self.rules }
    }

    /// Says once per run that REPLICA cannot store `src`'s mtime exactly (it is compared as
    /// stored, so this costs no copies; the user should know the replica is not exact).
    fn note_mtime_precision(&self, rel: &dyn RelSource, src: &Entry) {
        let mtimes = self.rules().mtimes;
        if mtimes.is_exact() || mtimes.stored(src.mtime) == src.mtime {
            return;
        }
        if !self.mtimes_warned.swap(true, Ordering::Relaxed) {
            let range = |sec: i64| match sec {
                i64::MIN | i64::MAX => "unlimited".to_string(),
                sec => sec.to_string(),
            };
            warn!(
                path = %rel.rel(),
                granularity_ns = mtimes.granularity_ns,
                earliest = %range(mtimes.min_sec),
                latest = %range(mtimes.max_sec),
                "the replica's filesystem cannot store this modification time exactly: times are compared as it stores them (like rsync --modify-window), and files are not copied again because of it; said once"
            );
        }
    }

    // ---------------------------------------------------------------------------------
    // Walking
    // ---------------------------------------------------------------------------------

    fn reconcile_root(&self, roots: OpenRoots, counters: &Counters) {
        let root = RelPath::root();
        let (src, dst) = match (Entry::stat_fd(&roots.src), roots.dst.as_ref().map(Entry::stat_fd))
        {
            (Ok(s), None) => (s, None),
            (Ok(s), Some(Ok(d))) => (s, Some(d)),
            (Err(e), _) | (_, Some(Err(e))) => {
                return self.record(counters, EntryError::io(Op::Stat, &root, e));
            }
        };
        let replica_fs = roots.dst.as_ref().map(dup);
        let link_roots = self.link_roots(&roots);
        let fresh = self.fresh_replica.swap(false, Ordering::Relaxed);
        if fresh {
            info!(action = %"create", path = %root, kind = %"dir");
            Counters::bump(&counters.create, 1);
        }
        let open = Opening::Root { src: roots.src, dst: roots.dst, fresh };
        let job = DirJob { src, dst, open, parent: None };
        self.run_work(Work::Dir(job), counters);
        if let Some(link_roots) = &link_roots {
            self.settle_links(link_roots, true, counters);
        }
        let changed = counters.snapshot().changes() > 0;
        // A stop does not wait for the flush (it can take minutes on a slow disk); the
        // kernel writes the data back on its own, and every file was renamed complete.
        if changed && !self.opts.dry_run && !self.opts.copy.fsync && !self.cancel.is_cancelled() {
            debug!("flushing the replica's filesystem (syncfs)");
            self.flushing.store(true, Ordering::Relaxed);
            let synced =
                replica_fs.map_or(Ok(()), |fd| fd.and_then(|fd| ops::sync_filesystem(&fd)));
            self.flushing.store(false, Ordering::Relaxed);
            if let Err(e) = synced {
                // The copies may not be on disk: not "in sync", whatever else went well.
                self.record(counters, EntryError::io(Op::Sync, &root, e));
            }
        }
    }

    /// Opens the directories down to `rel`'s parent on both sides, then reconciles `rel`.
    /// A piece of event work changes nothing above its own path but for creating missing
    /// directories on the way (idempotent: a sibling's work may do the same at once). Where
    /// SOURCE lacks a directory on the way, `rel` went with it and that directory's own
    /// event removes it from REPLICA; where REPLICA has something else than a directory
    /// there, that directory's own event replaces it. Two works never touch one path.
    fn reconcile_below_root(
        &self,
        roots: &OpenRoots,
        rel: &RelPath,
        recursive: bool,
        counters: &Counters,
    ) {
        if self.excludes.matches_path_or_parent(rel, true)
            && self.excludes.matches_path_or_parent(rel, false)
        {
            return;
        }
        if rel.names().any(|n| ops::is_temp_name(n.as_bytes())) {
            return;
        }
        // Only a dry run has no replica root, and a dry run is a single full pass.
        let Some(dst_root) = &roots.dst else { return };
        let (mut src_fd, mut dst_fd) = match (dup(&roots.src), dup(dst_root)) {
            (Ok(s), Ok(d)) => (s, d),
            (Err(e), _) | (_, Err(e)) => {
                return self.record(counters, EntryError::io(Op::OpenDir, &RelPath::root(), e));
            }
        };
        let mut here = RelPath::root();
        let mut made = Vec::new();
        let names: Vec<&OsStr> = rel.names().collect();
        for (i, name) in names.iter().enumerate() {
            let child = here.join(name);
            if i + 1 == names.len() {
                self.reconcile_one(&src_fd, &dst_fd, &here, &child, recursive, counters);
                break;
            }
            let cname = c_name(name);
            let Ok(src_dir) = ops::open_dir_at(&src_fd, &cname) else { return };
            let (dst_dir, created) = match ops::open_dir_at(&dst_fd, &cname) {
                Ok(d) => (d, false),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    match self.make_dir_on_the_way(&dst_fd, &cname, &child, counters) {
                        Some(made) => made,
                        None => return,
                    }
                }
                Err(_) => return,
            };
            let ids = (Entry::stat_fd(&src_dir), Entry::stat_fd(&dst_dir));
            let (Ok(src_entry), Ok(dst_entry)) = ids else { return };
            if self.at_boundary(Some(&src_entry), Some(&dst_entry), &child)
                || self.other_filesystem(&src_entry, false)
            {
                return;
            }
            if created {
                match (dup(&src_dir), dup(&dst_dir)) {
                    (Ok(s), Ok(d)) => made.push((s, d, child.clone())),
                    (Err(e), _) | (_, Err(e)) => {
                        return self.record(counters, EntryError::io(Op::OpenDir, &child, e));
                    }
                }
            }
            src_fd = src_dir;
            dst_fd = dst_dir;
            here = child;
        }
        // Directories made on the way take SOURCE's attributes once their child is in.
        for (src_dir, dst_dir, dir_rel) in made.iter().rev() {
            self.fix_dir_attrs(src_dir, dst_dir, dir_rel, counters);
        }
    }

    /// Creates a directory missing on the way to an event's path; `(descriptor, created)`,
    /// or `None` (recorded) when it cannot be made. A sibling's work that made it a moment
    /// earlier is fine.
    fn make_dir_on_the_way(
        &self,
        parent: &OwnedFd,
        name: &CStr,
        rel: &RelPath,
        counters: &Counters,
    ) -> Option<(OwnedFd, bool)> {
        let created = match ops::make_dir(parent, name) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && is_dir_at(parent, name) => false,
            Err(e) => {
                self.record(counters, EntryError::io(Op::Create, rel, e));
                return None;
            }
        };
        if created {
            info!(action = %"create", path = %rel, kind = %"dir");
            Counters::bump(&counters.create, 1);
        }
        match ops::open_dir_at(parent, name) {
            Ok(fd) => Some((fd, created)),
            Err(e) => {
                self.record(counters, EntryError::io(Op::OpenDir, rel, e));
                None
            }
        }
    }

    /// Reconciles the single entry `rel` inside the open directories `src_dir`/`dst_dir`
    /// (which are `dir_rel`), then the directory's own attributes.
    fn reconcile_one(
        &self,
        src_dir: &OwnedFd,
        dst_dir: &OwnedFd,
        dir_rel: &RelPath,
        rel: &RelPath,
        recursive: bool,
        counters: &Counters,
    ) {
        let Some(name) = rel.file_name().map(c_name) else {
            return;
        };
        let Some((src, dst)) = self.stat_pair(src_dir, Some(dst_dir), &name, rel, counters) else {
            return;
        };
        let Some((src, dst)) = self.unexcluded(rel, src, dst, counters) else {
            return;
        };
        if self.at_boundary(src.as_ref(), dst.as_ref(), rel) {
            return;
        }
        if let Some(src) = &src {
            Counters::bump(&counters.scanned, 1);
            self.note_mtime_precision(rel, src);
        }
        let action =
            self.decide_at(src_dir, Some(dst_dir), &name, src.as_ref(), dst.as_ref(), false);
        let fresh_dir = !matches!(&dst, Some(d) if d.kind == Kind::Dir);
        match (action, src) {
            (Action::Descend, Some(src)) if recursive || fresh_dir => {
                let (src_parent, dst_parent) = match (dup(src_dir), dup(dst_dir)) {
                    (Ok(s), Ok(d)) => (s, d),
                    (Err(e), _) | (_, Err(e)) => {
                        return self.record(counters, EntryError::io(Op::OpenDir, dir_rel, e));
                    }
                };
                let parent = DirNode::detached(dir_rel.clone(), Some(dst_parent));
                let open = Opening::Child { src_parent: Arc::new(src_parent), name };
                let job = DirJob { src, dst, open, parent: Some(parent) };
                self.run_work(Work::Dir(job), counters);
            }
            (Action::Descend, Some(src)) => {
                if let Some(dst) = &dst {
                    let fixed =
                        self.apply_attrs(src_dir, Some(dst_dir), &name, rel, &src, dst, counters);
                    if let Err(e) = fixed {
                        self.record(counters, e);
                    }
                }
            }
            (action, src) => {
                if !self.defer_link(|| rel.clone(), src.as_ref(), dst.as_ref(), action, counters) {
                    let item = Item { name, src, dst, action };
                    self.apply(src_dir, Some(dst_dir), dir_rel, item, counters);
                }
            }
        }
        self.fix_dir_attrs(src_dir, dst_dir, dir_rel, counters);
    }

    /// After changing something inside a directory, its replica mtime moved: put the
    /// source's attributes back (silently: the change itself was logged).
    fn fix_dir_attrs(
        &self,
        src_dir: &OwnedFd,
        dst_dir: &OwnedFd,
        rel: &RelPath,
        counters: &Counters,
    ) {
        if self.opts.dry_run {
            return;
        }
        let result = Entry::stat_fd(src_dir).and_then(|src| {
            let dst = Entry::stat_fd(dst_dir)?;
            let diff = src.attr_diff(&dst, self.rules().owners, &self.rules().mtimes);
            // Attributes before the mode: user.* needs write permission on the directory.
            let want =
                self.xattrs().map(|_| Xattrs::read(Handle::Fd(src_dir.as_fd()))).transpose()?;
            self.dir_xattrs(want.as_ref(), dst_dir, true)?;
            if !diff.is_empty() {
                ops::set_attrs_fd(dst_dir, &src, diff)?;
            }
            Ok(())
        });
        if let Err(e) = result {
            self.record(counters, EntryError::io(Op::SetAttrs, rel, e));
        }
    }

    fn try_rename(&self, roots: &OpenRoots, from: &RelPath, to: &RelPath, counters: &Counters) {
        let Some(dst_root) = &roots.dst else { return };
        let (Some(from_parent), Some(to_parent)) = (from.parent(), to.parent()) else {
            return;
        };
        let (Some(from_name), Some(to_name)) =
            (from.file_name().map(c_name), to.file_name().map(c_name))
        else {
            return;
        };
        let opened = (
            open_path_at(&roots.src, &from_parent),
            open_path_at(&roots.src, &to_parent),
            open_path_at(dst_root, &from_parent),
            open_path_at(dst_root, &to_parent),
        );
        let (Ok(src_from_dir), Ok(src_to_dir), Ok(dst_from_dir), Ok(dst_to_dir)) = opened else {
            return;
        };
        let stats = (
            Entry::stat_at(&src_from_dir, &from_name),
            Entry::stat_at(&src_to_dir, &to_name),
            Entry::stat_at(&dst_from_dir, &from_name),
            Entry::stat_at(&dst_to_dir, &to_name),
        );
        // Only a clean move: SOURCE has `to` and no `from`; REPLICA has `from`, of the
        // same kind (and, for a file, the same content stamp), and nothing at `to`.
        let (Ok(None), Ok(Some(src)), Ok(Some(dst)), Ok(None)) = stats else {
            return;
        };
        let same = src.kind == dst.kind
            && match src.kind {
                Kind::File => src.same_size_and_mtime(&dst, &self.rules().mtimes),
                Kind::Symlink => read_link_pair(&src_to_dir, &to_name, &dst_from_dir, &from_name),
                _ => true,
            };
        // An anchored exclude can match below `from` and not below `to` (or the reverse):
        // moving the directory would carry excluded entries into mirrored places. Copy and
        // remove instead; the removal keeps what is excluded.
        if !same || (src.kind == Kind::Dir && self.excludes.depend_on_place()) {
            return;
        }
        if !self.opts.dry_run
            && let Err(e) = ops::rename_noreplace(&dst_from_dir, &from_name, &dst_to_dir, &to_name)
        {
            // Not fatal: the reconciles that follow copy and remove instead.
            debug!(path = %to, error = %e, "rename in replica failed; reconciling instead");
            return;
        }
        info!(action = %"rename", path = %to, from = %from);
        Counters::bump(&counters.rename, 1);
    }

    // ---------------------------------------------------------------------------------
    // The work list
    // ---------------------------------------------------------------------------------

    /// Runs `work` and everything it spawns on the engine's pool, and returns when all of
    /// it is done. Must be called on a pool thread (every entry point runs in `in_pool`).
    fn run_work(&self, work: Work, counters: &Counters) {
        rayon::scope(|scope| self.spawn(scope, work, counters));
    }

    /// Queues one piece of work on the pool. Work queued after shutdown began is dropped
    /// unstarted (its directories are then never finalized, which is what a stop wants).
    fn spawn<'s>(&'s self, scope: &rayon::Scope<'s>, work: Work, counters: &'s Counters) {
        // Log lines keep the caller's span (the dry run's) whichever thread runs the work.
        let span = tracing::Span::current();
        scope.spawn(move |scope| {
            let _entered = span.enter();
            if self.cancel.is_cancelled() {
                return;
            }
            match work {
                Work::Dir(job) => self.run_dir(job, scope, counters),
                Work::Items(batch) => self.run_items(batch, counters),
            }
        });
    }

    /// Runs `f` on the engine's pool: every filesystem operation of this process happens on
    /// one of its `--jobs` threads, however many passes and events ask at once.
    fn in_pool<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.pool.install(f)
    }

    /// Opens (creating if needed) one directory on both sides, lists both, decides every
    /// child, and queues the work: subdirectories as their own jobs, the rest in batches.
    fn run_dir<'s>(&'s self, job: DirJob, scope: &rayon::Scope<'s>, counters: &'s Counters) {
        let DirJob { src, dst, open, parent } = job;
        let (place, opened) = match open {
            Opening::Root { src, dst, fresh } => {
                (Place::Top(RelPath::root()), Ok((src, dst, fresh)))
            }
            Opening::Child { src_parent, name } => {
                let rel = || child_rel(parent.as_deref(), &name);
                let rel = LazyRel(&rel);
                let dst = dst.as_ref();
                let opened =
                    self.open_child_dir(&src_parent, parent.as_deref(), &name, &rel, dst, counters);
                (Place::Child(name), opened)
            }
        };
        let (src_fd, dst_fd, created) = match opened {
            Ok(fds) => fds,
            Err(e) => {
                self.record(counters, e);
                return complete(parent, self, counters);
            }
        };
        let src_xattrs = match self.xattrs().map(|_| Xattrs::read(Handle::Fd(src_fd.as_fd()))) {
            Some(Err(e)) => {
                // The directory is still mirrored; its attributes wait for a readable look.
                let rel = match &place {
                    Place::Top(rel) => rel.clone(),
                    Place::Child(name) => child_rel(parent.as_deref(), name),
                };
                self.record(counters, EntryError::source(Op::Read, &rel, e));
                None
            }
            other => other.and_then(Result::ok),
        };
        // The horizon vouches for an entry only while its directories, on both sides, have
        // not moved since the last clean pass (a rename of one moves its ctime, not theirs),
        // and only on SOURCE's own filesystem (one mounted inside it may be stamped by
        // another machine's clock).
        let settled = src.dev == self.guard.source_dev()
            && match &place {
                Place::Top(rel) if rel.is_root() => true,
                Place::Top(_) => false,
                Place::Child(_) => parent.as_ref().is_some_and(|p| p.settled),
            }
            && dst.as_ref().is_some_and(|d| self.horizon.unchanged(&src, d));
        let node = Arc::new(DirNode {
            place,
            src,
            src_xattrs,
            settled,
            dst_before: dst,
            dst_fd,
            created,
            finalize: true,
            pending: AtomicUsize::new(1),
            parent,
        });
        if let Err(e) = self.queue_children(&node, src_fd, scope, counters) {
            // A directory that cannot be listed is never "empty": nothing under it is
            // touched, and its attributes are left for when it can be read. Its parent is
            // released so the rest of the tree is finalized as usual.
            self.record(counters, e);
            let parent = node.parent.clone();
            drop(node);
            return complete(parent, self, counters);
        }
        complete(Some(node), self, counters);
    }

    fn open_child_dir(
        &self,
        src_parent: &OwnedFd,
        parent: Option<&DirNode>,
        name: &CStr,
        rel: &dyn RelSource,
        dst: Option<&Entry>,
        counters: &Counters,
    ) -> Result<(OwnedFd, Option<OwnedFd>, bool), EntryError> {
        let fail = |op, e| EntryError::io(op, &rel.rel(), e);
        let src_fd = ops::open_dir_at(src_parent, name)
            .map_err(|e| EntryError::source(Op::OpenDir, &rel.rel(), e))?;
        let dst_parent = parent.and_then(|p| p.dst_fd.as_ref());
        if let Some(existing) = dst.filter(|d| d.kind != Kind::Dir) {
            self.make_way(dst_parent, name, &rel.rel(), existing, counters)?;
        }
        let exists = dst.is_some_and(|d| d.kind == Kind::Dir);
        let logged_create = || {
            info!(action = %"create", path = %rel.rel(), kind = %"dir");
            Counters::bump(&counters.create, 1);
        };
        let Some(dst_parent) = dst_parent.filter(|_| !self.opts.dry_run) else {
            // Dry run: show what is below as if the directory were there and empty.
            if !exists {
                logged_create();
            }
            let dst_fd =
                if exists { dst_parent.and_then(|p| ops::open_dir_at(p, name).ok()) } else { None };
            return Ok((src_fd, dst_fd, !exists));
        };
        let mut created = false;
        if !exists {
            match ops::make_dir(dst_parent, name) {
                Ok(()) => {
                    created = true;
                    logged_create();
                }
                // Another piece of work made it a moment ago (events on two children).
                Err(e)
                    if e.kind() == io::ErrorKind::AlreadyExists && is_dir_at(dst_parent, name) => {}
                Err(e) => return Err(fail(Op::Create, e)),
            }
        }
        let dst_fd = ops::open_dir_at(dst_parent, name).map_err(|e| fail(Op::OpenDir, e))?;
        Ok((src_fd, Some(dst_fd), created))
    }

    fn queue_children<'s>(
        &'s self,
        node: &Arc<DirNode>,
        src_fd: OwnedFd,
        scope: &rayon::Scope<'s>,
        counters: &'s Counters,
    ) -> Result<(), EntryError> {
        // `-x`: a filesystem mounted here is not ours to read; its mount point is mirrored
        // as an empty directory.
        let mut src_names = if self.other_filesystem(&node.src, node.is_root()) {
            Vec::new()
        } else {
            ops::list_dir(&src_fd).map_err(|e| EntryError::source(Op::List, &node.rel(), e))?
        };
        let mut dst_names = match &node.dst_fd {
            Some(fd) => ops::list_dir(fd).map_err(|e| EntryError::io(Op::List, &node.rel(), e))?,
            None => Vec::new(),
        };
        src_names.retain(|i| !ops::is_temp_name(i.name.to_bytes()));
        dst_names.retain(|i| !self.temp_names.is_ours(i.name.to_bytes()));
        src_names.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        dst_names.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        Counters::bump(&counters.scanned, src_names.len() as u64);

        let src_fd = Arc::new(src_fd);
        let mut batch = Vec::new();
        for (i, name) in merge_names(&src_names, &dst_names).enumerate() {
            // A directory of a million entries must not hold up a stop.
            if i % 1024 == 1023 && self.cancel.is_cancelled() {
                break;
            }
            let Some(item) = self.decide_child(node, &src_fd, name, counters) else {
                continue;
            };
            match item {
                Item { action: Action::Descend, src: Some(src), dst, name } => {
                    let open = Opening::Child { src_parent: src_fd.clone(), name };
                    node.pending.fetch_add(1, Ordering::AcqRel);
                    let job = DirJob { src, dst, open, parent: Some(node.clone()) };
                    self.spawn(scope, Work::Dir(job), counters);
                }
                item => {
                    batch.push(item);
                    if batch.len() >= BATCH {
                        node.pending.fetch_add(1, Ordering::AcqRel);
                        let items = std::mem::take(&mut batch);
                        let batch = Batch { node: node.clone(), src_fd: src_fd.clone(), items };
                        self.spawn(scope, Work::Items(batch), counters);
                    }
                }
            }
        }
        if !batch.is_empty() {
            node.pending.fetch_add(1, Ordering::AcqRel);
            let batch = Batch { node: node.clone(), src_fd, items: batch };
            self.spawn(scope, Work::Items(batch), counters);
        }
        Ok(())
    }

    /// Stats one child on both sides and decides; `None` when there is nothing to do.
    fn decide_child(
        &self,
        node: &DirNode,
        src_fd: &OwnedFd,
        name: &CStr,
        counters: &Counters,
    ) -> Option<Item> {
        let rel = || node.rel().join(OsStr::from_bytes(name.to_bytes()));
        let (mut src, mut dst) =
            self.stat_pair(src_fd, node.dst_fd.as_ref(), name, &LazyRel(&rel), counters)?;
        if ops::is_temp_name(name.to_bytes()) {
            // Reserved: never mirrored from SOURCE; in REPLICA only a stray to remove.
            src = None;
        }
        if self.excludes_any() {
            (src, dst) = self.unexcluded(&rel(), src, dst, counters)?;
        }
        if self.at_boundary(src.as_ref(), dst.as_ref(), &LazyRel(&rel)) {
            return None;
        }
        if let Some(src) = &src {
            self.note_mtime_precision(&LazyRel(&rel), src);
        }
        let (dst_fd, settled) = (node.dst_fd.as_ref(), node.settled);
        let action = self.decide_at(src_fd, dst_fd, name, src.as_ref(), dst.as_ref(), settled);
        if self.defer_link(rel, src.as_ref(), dst.as_ref(), action, counters) {
            return None;
        }
        (action != Action::Nothing).then(|| Item { name: name.to_owned(), src, dst, action })
    }

    fn run_items(&self, batch: Batch, counters: &Counters) {
        let dir_rel = batch.node.rel();
        for item in batch.items {
            if self.cancel.is_cancelled() {
                break;
            }
            self.apply(&batch.src_fd, batch.node.dst_fd.as_ref(), &dir_rel, item, counters);
        }
        complete(Some(batch.node), self, counters);
    }

    /// Sets a finished directory's attributes (its children are final, so nothing will
    /// bump its mtime again in this pass).
    fn finalize_dir(&self, node: &DirNode, counters: &Counters) {
        if !node.finalize || self.cancel.is_cancelled() {
            return;
        }
        // Log only differences that were there before this pass: mtime moves caused by our
        // own changes to the children are repaired silently.
        let before = node.dst_before.as_ref().filter(|d| d.kind == Kind::Dir && !node.created);
        let mut to_log =
            before.map(|b| node.src.attr_diff(b, self.rules().owners, &self.rules().mtimes));
        let apply = !self.opts.dry_run;
        if let Some(dst_fd) = &node.dst_fd {
            let result = Entry::stat_fd(dst_fd).and_then(|now| {
                let diff = node.src.attr_diff(&now, self.rules().owners, &self.rules().mtimes);
                // Children never change a directory's attributes: what differs now, differed.
                // Set before the mode: user.* needs write permission on the directory.
                let changes = self.dir_xattrs(node.src_xattrs.as_ref(), dst_fd, apply)?;
                if apply && !diff.is_empty() {
                    ops::set_attrs_fd(dst_fd, &node.src, diff)?;
                }
                Ok(changes)
            });
            match result {
                Ok(changes) => {
                    if let Some(diff) = &mut to_log {
                        (diff.xattrs, diff.acl) = (changes.xattrs, changes.acl);
                    }
                }
                Err(e) => {
                    return self.record(counters, EntryError::io(Op::SetAttrs, &node.rel(), e));
                }
            }
        }
        if let Some(diff) = to_log.filter(|d| !d.is_empty()) {
            self.log_attrs(&node.rel(), diff);
            Counters::bump(&counters.attrs, 1);
        }
    }

    // ---------------------------------------------------------------------------------
    // One entry
    // ---------------------------------------------------------------------------------

    /// True if the name is one this engine must not touch: on either side a directory that
    /// is SOURCE or REPLICA (or holds one) met again through a bind mount, or a file this
    /// process writes (its log); in REPLICA, any mount (a bind mount of SOURCE's own
    /// subdirectory would be emptied through it). Neither entered nor removed; one warning.
    fn at_boundary(&self, src: Option<&Entry>, dst: Option<&Entry>, rel: &dyn RelSource) -> bool {
        let hit = [src, dst].into_iter().flatten().any(|e| self.untouchable(e))
            || dst.is_some_and(|d| d.mount_root);
        if hit {
            let rel = rel.rel();
            let mut warned = self.boundaries_warned.lock().unwrap_or_else(|e| e.into_inner());
            if warned.insert(rel.clone()) {
                warn!(path = %rel, "not mirrored: a mount inside the replica, the source or the replica itself mounted again here, or replicad's own log file; it is neither entered nor removed");
            }
        }
        hit
    }

    /// `--one-file-system`: `src` is a directory on another filesystem than SOURCE's root
    /// (or a bind mount), whose content is not mirrored.
    fn other_filesystem(&self, src: &Entry, is_root: bool) -> bool {
        self.opts.one_file_system
            && src.kind == Kind::Dir
            && !is_root
            && (src.dev != self.guard.source_dev() || src.mount_root)
    }

    /// SOURCE, REPLICA or a directory holding one (seen below a root), or a file of ours.
    fn untouchable(&self, e: &Entry) -> bool {
        self.guard.is_boundary(e) || self.own_files.contains(&(e.dev, e.ino))
    }

    fn excludes_any(&self) -> bool {
        !self.excludes.is_empty()
    }

    /// Applies the excludes to one name, judging each side's entry as its own type (a
    /// dir-only pattern such as `build/` can match REPLICA's directory and not SOURCE's
    /// file). `None`: the name is left alone; otherwise the entries the decision may see.
    /// An excluded REPLICA entry is never removed: where SOURCE has a mirrored entry of
    /// another type at its name, that entry cannot be placed (an entry error, as rsync's
    /// "could not make way").
    fn unexcluded(
        &self,
        rel: &RelPath,
        src: Option<Entry>,
        dst: Option<Entry>,
        counters: &Counters,
    ) -> Option<(Option<Entry>, Option<Entry>)> {
        let excluded = |e: &Option<Entry>| {
            e.as_ref().is_some_and(|e| self.excludes.matches(rel, e.kind == Kind::Dir))
        };
        match (excluded(&src), excluded(&dst)) {
            (false, false) => Some((src, dst)),
            // SOURCE's entry is not mirrored: REPLICA's (of a type the pattern misses) is a
            // stray like any other.
            (true, false) => Some((None, dst)),
            (false, true) if src.is_some() => {
                self.record(
                    counters,
                    EntryError::new(Op::Create, rel, EntryErrorKind::CannotMakeWay),
                );
                None
            }
            (_, true) => None,
        }
    }

    /// Stats `name` on both sides. A failure is recorded and the entry skipped entirely, so
    /// an unreadable source entry never leads to a deletion.
    fn stat_pair(
        &self,
        src_dir: &OwnedFd,
        dst_dir: Option<&OwnedFd>,
        name: &CStr,
        rel: &dyn RelSource,
        counters: &Counters,
    ) -> Option<(Option<Entry>, Option<Entry>)> {
        self.progress.fetch_add(1, Ordering::Relaxed);
        let src = match Entry::stat_at(src_dir, name) {
            Ok(s) => s,
            Err(e) => {
                self.record(counters, EntryError::io(Op::Stat, &rel.rel(), e));
                return None;
            }
        };
        let dst = match dst_dir.map(|d| Entry::stat_at(d, name)).transpose() {
            Ok(d) => d.flatten(),
            Err(e) => {
                self.record(counters, EntryError::io(Op::Stat, &rel.rel(), e));
                return None;
            }
        };
        Some((src, dst))
    }

    /// `settled`: the entry's directories are unchanged since the last clean pass on both
    /// sides, so the horizon may vouch for its attributes.
    fn decide_at(
        &self,
        src_dir: &OwnedFd,
        dst_dir: Option<&OwnedFd>,
        name: &CStr,
        src: Option<&Entry>,
        dst: Option<&Entry>,
        settled: bool,
    ) -> Action {
        let action = decide(src, dst, self.rules(), || {
            dst_dir.is_some_and(|d| read_link_pair(src_dir, name, d, name))
        });
        self.with_xattr_changes(action, src_dir, dst_dir, name, src, dst, settled)
    }

    /// What the replica entry `dst`, decided on against `src`, must still be when it is
    /// changed or read in place: a file of a link group may have SOURCE's group's names.
    fn expect<'a>(&self, src: &Entry, dst: &'a Entry) -> Expect<'a> {
        let grouped = self.opts.hard_links && src.kind == Kind::File && src.nlink > 1;
        if grouped && dst.nlink <= src.nlink { Expect::Linked(dst) } else { Expect::Same(dst) }
    }

    /// The namespaces still mirrored, or `None` with `--no-xattrs`.
    fn xattrs(&self) -> Option<&XattrSupport> {
        self.opts.xattrs.then_some(&self.xattr_support)
    }

    /// `statx` cannot see extended attributes: an entry that looks in sync, or that needs
    /// only attributes, has them read on both sides. (Directories: when finalized.)
    #[allow(clippy::too_many_arguments)]
    fn with_xattr_changes(
        &self,
        action: Action,
        src_dir: &OwnedFd,
        dst_dir: Option<&OwnedFd>,
        name: &CStr,
        src: Option<&Entry>,
        dst: Option<&Entry>,
        settled: bool,
    ) -> Action {
        let mut diff = match action {
            Action::Nothing => AttrDiff::default(),
            Action::Attrs(diff) => diff,
            _ => return action,
        };
        let (Some(support), Some(dst_dir), Some(src), Some(dst)) =
            (self.xattrs(), dst_dir, src, dst)
        else {
            return action;
        };
        if settled && self.horizon.unchanged(src, dst) {
            return action;
        }
        let read = |dir: &OwnedFd| Xattrs::read(Handle::At(dir.as_fd(), name));
        match (read(src_dir), read(dst_dir)) {
            // A capability or label goes only onto bytes replicad copies (`grants_security`).
            (Ok(want), Ok(have))
                if dst.kind == Kind::File && want.grants_security(&have, support) =>
            {
                return Action::Update;
            }
            (Ok(want), Ok(have)) => {
                let changes = want.changes(&have, support);
                (diff.xattrs, diff.acl) = (changes.xattrs, changes.acl);
            }
            // Unreadable: applying the attributes meets the error again and reports it.
            _ => diff.xattrs = true,
        }
        if diff.is_empty() { Action::Nothing } else { Action::Attrs(diff) }
    }

    /// SOURCE's extended attributes of `name`, when they are mirrored.
    fn source_xattrs(
        &self,
        src_dir: &OwnedFd,
        name: &CStr,
        rel: &RelPath,
    ) -> Result<Option<Xattrs>, EntryError> {
        self.xattrs()
            .map(|_| Xattrs::read(Handle::At(src_dir.as_fd(), name)))
            .transpose()
            .map_err(|e| EntryError::source(Op::Read, rel, e))
    }

    /// Makes an open REPLICA directory's extended attributes SOURCE's (`want`, read when
    /// the directory was listed); what differed. `apply: false` only compares (dry run).
    fn dir_xattrs(
        &self,
        want: Option<&Xattrs>,
        dst_fd: &OwnedFd,
        apply: bool,
    ) -> io::Result<XattrChanges> {
        let (Some(want), Some(support)) = (want, self.xattrs()) else {
            return Ok(XattrChanges::default());
        };
        let have = Xattrs::read(Handle::Fd(dst_fd.as_fd()))?;
        let changes = want.changes(&have, support);
        if apply && changes != XattrChanges::default() {
            want.apply(Handle::Fd(dst_fd.as_fd()), &have, support)?;
        }
        Ok(changes)
    }

    /// Carries out one non-directory decision (and removals of directories).
    fn apply(
        &self,
        src_dir: &OwnedFd,
        dst_dir: Option<&OwnedFd>,
        dir_rel: &RelPath,
        item: Item,
        counters: &Counters,
    ) {
        let rel = dir_rel.join(OsStr::from_bytes(item.name.to_bytes()));
        if let Err(e) = self.apply_inner(src_dir, dst_dir, &rel, &item, counters) {
            self.record(counters, e);
        }
    }

    fn apply_inner(
        &self,
        src_dir: &OwnedFd,
        dst_dir: Option<&OwnedFd>,
        rel: &RelPath,
        item: &Item,
        counters: &Counters,
    ) -> Result<(), EntryError> {
        let name = item.name.as_c_str();
        match (item.action, &item.src, &item.dst) {
            (Action::Remove, _, Some(dst)) => {
                self.remove_entry(dst_dir, name, rel, dst, counters).map(|_| ())
            }
            (Action::Skip, Some(src), dst) => {
                // Whatever REPLICA has there is stale: it goes, even though nothing replaces it.
                if let Some(dst) = dst {
                    self.make_way(dst_dir, name, rel, dst, counters)?;
                }
                if self.first_skip(rel) {
                    warn!(path = %rel, kind = %src.kind.name(), "skipped: sockets are not mirrored (said once per path)");
                } else {
                    debug!(path = %rel, kind = %src.kind.name(), "skipped: sockets are not mirrored");
                }
                Counters::bump(&counters.skipped, 1);
                Ok(())
            }
            (Action::Create | Action::Replace, Some(src), dst) => {
                if let Some(dst) = dst.as_ref().filter(|d| d.kind == Kind::Dir) {
                    self.make_way(dst_dir, name, rel, dst, counters)?;
                }
                let update =
                    src.kind == Kind::File && dst.as_ref().is_some_and(|d| d.kind == Kind::File);
                // A directory there was removed (and logged) just above.
                let dst = dst.as_ref().filter(|d| d.kind != Kind::Dir);
                self.create_entry(src_dir, dst_dir, name, rel, src, dst, update, counters)
            }
            (Action::Update, Some(src), dst) => {
                self.create_entry(src_dir, dst_dir, name, rel, src, dst.as_ref(), true, counters)
            }
            (Action::CompareContent, Some(src), Some(dst)) => {
                if self.same_content(src_dir, dst_dir, name, rel, src, dst)? {
                    self.apply_attrs(src_dir, dst_dir, name, rel, src, dst, counters)
                } else {
                    self.create_entry(src_dir, dst_dir, name, rel, src, Some(dst), true, counters)
                }
            }
            (Action::Attrs(_), Some(src), Some(dst)) => {
                self.apply_attrs(src_dir, dst_dir, name, rel, src, dst, counters)
            }
            _ => Ok(()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn apply_attrs(
        &self,
        src_dir: &OwnedFd,
        dst_dir: Option<&OwnedFd>,
        name: &CStr,
        rel: &RelPath,
        src: &Entry,
        dst: &Entry,
        counters: &Counters,
    ) -> Result<(), EntryError> {
        let mut diff = src.attr_diff(dst, self.rules().owners, &self.rules().mtimes);
        let mut want = None;
        if let (Some(support), Some(dir)) = (self.xattrs(), dst_dir) {
            let source = self.source_xattrs(src_dir, name, rel)?.unwrap_or_default();
            let have = Xattrs::read(Handle::At(dir.as_fd(), name))
                .map_err(|e| EntryError::io(Op::SetAttrs, rel, e))?;
            if dst.kind == Kind::File && source.grants_security(&have, support) {
                // Not in place: the bytes may not be the ones replicad copied.
                return self.create_entry(
                    src_dir,
                    dst_dir,
                    name,
                    rel,
                    src,
                    Some(dst),
                    true,
                    counters,
                );
            }
            let changes = source.changes(&have, support);
            (diff.xattrs, diff.acl) = (changes.xattrs, changes.acl);
            want = Some((source, support));
        }
        if diff.is_empty() {
            return Ok(());
        }
        if let Some(dir) = dst_dir.filter(|_| !self.opts.dry_run) {
            let xattrs = want.as_ref().map(|(w, s)| (w, *s));
            ops::set_attrs_at(dir.as_fd(), name, self.expect(src, dst), src, diff, xattrs)
                .map_err(|e| EntryError::io(Op::SetAttrs, rel, e))?;
        }
        self.log_attrs(rel, diff);
        Counters::bump(&counters.attrs, 1);
        Ok(())
    }

    /// Removes the replica entry `name`; a directory goes with everything under it except
    /// excluded entries. Returns false when a directory had to be kept because it holds
    /// excluded entries (it was emptied of the rest).
    fn remove_entry(
        &self,
        dst_dir: Option<&OwnedFd>,
        name: &CStr,
        rel: &RelPath,
        dst: &Entry,
        counters: &Counters,
    ) -> Result<bool, EntryError> {
        let Some(dir) = dst_dir else {
            // A dry run below a directory it would create: nothing there to look at.
            info!(action = %"remove", path = %rel, kind = %dst.kind.name());
            Counters::bump(&counters.remove, 1);
            return Ok(true);
        };
        if dst.kind != Kind::Dir && self.opts.dry_run {
            info!(action = %"remove", path = %rel, kind = %dst.kind.name());
            Counters::bump(&counters.remove, 1);
            return Ok(true);
        }
        if dst.kind != Kind::Dir {
            match ops::remove_file(dir, name) {
                // Already gone (someone else removed it): what this removal wanted.
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
                other => other.map_err(|e| EntryError::io(Op::Remove, rel, e))?,
            }
            info!(action = %"remove", path = %rel, kind = %dst.kind.name());
            Counters::bump(&counters.remove, 1);
            return Ok(true);
        }
        let excluded = |p: &RelPath, is_dir: bool| self.excludes.matches(p, is_dir);
        let stop = || {
            self.progress.fetch_add(1, Ordering::Relaxed);
            self.cancel.is_cancelled()
        };
        let rules = ops::Removal {
            keep: self.excludes_any().then_some(&excluded as _),
            boundary: &|e: &Entry| e.mount_root || self.untouchable(e),
            own: &|dev, ino| self.own_files.contains(&(dev, ino)),
            stop: &stop,
            dry_run: self.opts.dry_run,
        };
        debug!(path = %rel, "removing a directory tree");
        let removed = ops::remove_tree(dir.as_fd(), name, rel, &rules)
            .map_err(|e| EntryError::io(Op::Remove, rel, e))?;
        for inner in &removed.boundaries {
            self.record(counters, EntryError::new(Op::Remove, inner, EntryErrorKind::Boundary));
        }
        let entries = removed.entries;
        if removed.is_complete() {
            info!(action = %"remove", path = %rel, kind = %"dir", entries);
            Counters::bump(&counters.remove, 1);
            return Ok(true);
        }
        if removed.kept > 0 && entries > 0 {
            // Like rsync: excluded entries are never deleted, so their directory stays.
            info!(path = %rel, removed = entries, kept = removed.kept, "directory kept: it holds excluded entries; the rest was removed");
            Counters::bump(&counters.remove, 1);
        } else if removed.kept > 0 {
            debug!(path = %rel, kept = removed.kept, "directory kept: it holds excluded entries");
        }
        Ok(false)
    }

    /// Removes whatever REPLICA has at `name` so that SOURCE's entry can take its place.
    fn make_way(
        &self,
        dst_dir: Option<&OwnedFd>,
        name: &CStr,
        rel: &RelPath,
        dst: &Entry,
        counters: &Counters,
    ) -> Result<(), EntryError> {
        match self.remove_entry(dst_dir, name, rel, dst, counters)? {
            true => Ok(()),
            false => Err(EntryError::new(Op::Remove, rel, EntryErrorKind::CannotMakeWay)),
        }
    }

    /// Creates (or replaces with) the non-directory `src`: a file copy, a symlink, a FIFO
    /// or a device node. `dst` is what REPLICA has there (never a directory by now);
    /// `update` says a file's content is being replaced. A type change (a FIFO replaced by
    /// a file, say) is logged as the old entry's `remove` plus the new one's `copy` or
    /// `create`, once the atomic replacement happened.
    #[allow(clippy::too_many_arguments)]
    fn create_entry(
        &self,
        src_dir: &OwnedFd,
        dst_dir: Option<&OwnedFd>,
        name: &CStr,
        rel: &RelPath,
        src: &Entry,
        dst: Option<&Entry>,
        update: bool,
        counters: &Counters,
    ) -> Result<(), EntryError> {
        let dst_dir = dst_dir.filter(|_| !self.opts.dry_run);
        let replaced = || {
            if let Some(old) = dst.filter(|d| d.kind != src.kind) {
                info!(action = %"remove", path = %rel, kind = %old.kind.name());
                Counters::bump(&counters.remove, 1);
            }
        };
        match src.kind {
            Kind::File => {
                let size = match dst_dir {
                    Some(dir) => self.copy_with_retries(src_dir, dir, name, rel, counters)?,
                    None => src.size,
                };
                replaced();
                if update {
                    info!(action = %"update", path = %rel, size);
                    Counters::bump(&counters.update, 1);
                } else {
                    info!(action = %"copy", path = %rel, size);
                    Counters::bump(&counters.copy, 1);
                }
                Counters::bump(&counters.bytes, size);
            }
            Kind::Symlink => {
                if let Some(dir) = dst_dir {
                    // EINVAL: no longer a symlink; ENOENT: gone. Either way SOURCE moved on.
                    let target =
                        ops::read_link_at(src_dir, name).map_err(|e| match e.raw_os_error() {
                            Some(libc::EINVAL) => {
                                EntryError::new(Op::Read, rel, EntryErrorKind::Vanished(e))
                            }
                            _ => EntryError::source(Op::Read, rel, e),
                        })?;
                    let xattrs = self.source_xattrs(src_dir, name, rel)?;
                    let how = self.making(xattrs.as_ref());
                    ops::make_symlink(dir.as_fd(), name, &target, src, &how)
                        .map_err(|e| EntryError::io(Op::Create, rel, e))?;
                }
                replaced();
                info!(action = %"create", path = %rel, kind = %"symlink");
                Counters::bump(&counters.create, 1);
            }
            Kind::Fifo | Kind::CharDevice | Kind::BlockDevice => {
                if let Some(dir) = dst_dir {
                    let xattrs = self.source_xattrs(src_dir, name, rel)?;
                    match ops::make_special(dir.as_fd(), name, src, &self.making(xattrs.as_ref())) {
                        Err(e)
                            if e.raw_os_error() == Some(libc::EPERM) && src.kind != Kind::Fifo =>
                        {
                            if let Some(dst) = dst {
                                self.make_way(Some(dir), name, rel, dst, counters)?;
                            }
                            if self.first_skip(rel) {
                                warn!(path = %rel, kind = %src.kind.name(), error = %e, "skipped: this process may not create device nodes (needs CAP_MKNOD; said once per path)");
                            }
                            Counters::bump(&counters.skipped, 1);
                            return Ok(());
                        }
                        other => other.map_err(|e| EntryError::io(Op::Create, rel, e))?,
                    }
                }
                replaced();
                info!(action = %"create", path = %rel, kind = %src.kind.name());
                Counters::bump(&counters.create, 1);
            }
            Kind::Dir | Kind::Socket => {}
        }
        Ok(())
    }

    fn making<'a>(&'a self, xattrs: Option<&'a Xattrs>) -> Making<'a> {
        Making {
            chown: self.opts.copy.chown,
            temp_names: &self.temp_names,
            xattrs: xattrs.zip(self.xattrs()),
        }
    }

    /// Copies a file; when it changed during the copy, tries again a couple of times with
    /// a short pause, then gives up until the next pass (or the queue's retry).
    fn copy_with_retries(
        &self,
        src_dir: &OwnedFd,
        dst_dir: &OwnedFd,
        name: &CStr,
        rel: &RelPath,
        counters: &Counters,
    ) -> Result<u64, EntryError> {
        const PAUSES_MS: [u64; 2] = [10, 50];
        // Polled between chunks: also the place where a long copy shows it is moving.
        let cancelled = || {
            self.progress.fetch_add(1, Ordering::Relaxed);
            self.cancel.is_cancelled()
        };
        let mut attempt = 0;
        loop {
            let ctx = ops::CopyContext {
                temp_names: &self.temp_names,
                opts: self.opts.copy,
                caps: &self.caps,
                md5_cache: self.md5.as_ref(),
                cancelled: &cancelled,
                xattrs: self.xattrs(),
            };
            let result = ops::copy_file(src_dir.as_fd(), dst_dir.as_fd(), name, &ctx);
            match result {
                Err(EntryErrorKind::ChangedDuringCopy)
                    if attempt < PAUSES_MS.len() && !cancelled() =>
                {
                    std::thread::sleep(Duration::from_millis(PAUSES_MS[attempt]));
                    attempt += 1;
                }
                Err(EntryErrorKind::ChangedDuringCopy) => {
                    counters.transient.store(true, Ordering::Relaxed);
                    return Err(EntryError::new(Op::Copy, rel, EntryErrorKind::ChangedDuringCopy));
                }
                Err(kind) => {
                    let op = if matches!(kind, EntryErrorKind::VerifyMismatch { .. }) {
                        Op::Verify
                    } else {
                        Op::Copy
                    };
                    return Err(EntryError::new(op, rel, kind));
                }
                Ok(n) => return Ok(n),
            }
        }
    }

    /// `--checksum`: compares the MD5 of both files (cached by inode and timestamps).
    fn same_content(
        &self,
        src_dir: &OwnedFd,
        dst_dir: Option<&OwnedFd>,
        name: &CStr,
        rel: &RelPath,
        src: &Entry,
        dst: &Entry,
    ) -> Result<bool, EntryError> {
        let (Some(cache), Some(dst_dir)) = (&self.md5, dst_dir) else {
            return Ok(true);
        };
        debug!(path = %rel, "comparing content by MD5");
        let cancelled = || self.cancel.is_cancelled();
        let md5 = |fd: OwnedFd, entry: &Entry| cache.md5(&fd, entry, &cancelled);
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let a = rustix::fs::openat(src_dir, name, flags, Mode::empty())
            .map_err(|e| EntryError::source(Op::Read, rel, e))
            .and_then(|fd| md5(fd, src).map_err(|e| EntryError::io(Op::Read, rel, e)))?;
        // The replica side is opened only once it is known to be the file decided on (a
        // device node renamed onto the name must not even be opened).
        let b = ops::open_pinned_for_reading(dst_dir.as_fd(), name, self.expect(src, dst))
            .and_then(|fd| md5(fd, dst))
            .map_err(|e| EntryError::io(Op::Read, rel, e))?;
        Ok(a == b)
    }

    fn log_attrs(&self, rel: &RelPath, diff: AttrDiff) {
        let mut what = Vec::with_capacity(5);
        if diff.mode {
            what.push("mode");
        }
        if diff.mtime {
            what.push("mtime");
        }
        if diff.owner {
            what.push("owner");
        }
        if diff.xattrs {
            what.push("xattrs");
        }
        if diff.acl {
            what.push("acl");
        }
        info!(action = %"attrs", path = %rel, changed = %what.join(","));
    }

    fn record(&self, counters: &Counters, e: EntryError) {
        // Only a stop makes an interruption benign: a real EINTR (FUSE, NFS) is an error.
        if e.is_cancelled() && self.cancel.is_cancelled() {
            return;
        }
        if e.is_benign() {
            warn!(op = %e.op, path = %e.path, error = %e.kind, "source changed under the pass; the next look mirrors it");
            return Counters::bump(&counters.vanished, 1);
        }
        error!(op = %e.op, path = %e.path, error = %e.kind, "cannot mirror entry");
        self.stats.entry_error(e.op, &e.path, &e.kind);
        Counters::bump(&counters.errors, 1);
    }
}

/// Whether both roots are on filesystems stamped by this machine's clock (see `horizon`).
fn local_clocks(config: &Config) -> bool {
    let local = |p: &std::path::Path| std::fs::File::open(p).is_ok_and(horizon::is_local);
    local(&config.source) && local(&config.replica)
}

// =======================================================================================
// Work-list plumbing
// =======================================================================================

/// Non-directory work items per batch: big enough to amortise the queue, small enough
/// that a directory of many files is copied by all threads.
const BATCH: usize = 32;

enum Work {
    Dir(DirJob),
    Items(Batch),
}

/// How a directory job gets its descriptors.
enum Opening {
    /// Already open (the roots). The replica side may be absent in a dry run; `fresh`:
    /// REPLICA's root was made by this run.
    Root { src: OwnedFd, dst: Option<OwnedFd>, fresh: bool },
    /// The directory `name`, opened from the parent's SOURCE descriptor (held only until
    /// the child is open, so descriptors stay proportional to depth, not to width).
    Child { src_parent: Arc<OwnedFd>, name: CString },
}

/// Where a directory sits. Children know only their name: a full path per queued
/// directory would make memory grow with the square of the depth.
enum Place {
    /// The root, or the directory an event pointed into: its whole relative path.
    Top(RelPath),
    /// A child of its parent node.
    Child(CString),
}

struct DirJob {
    src: Entry,
    dst: Option<Entry>,
    open: Opening,
    parent: Option<Arc<DirNode>>,
}

struct Batch {
    node: Arc<DirNode>,
    src_fd: Arc<OwnedFd>,
    items: Vec<Item>,
}

struct Item {
    name: CString,
    src: Option<Entry>,
    dst: Option<Entry>,
    action: Action,
}

/// A directory being reconciled: its attributes are set when `pending` (its listing plus
/// its queued children) drops to zero, then its parent is told.
struct DirNode {
    place: Place,
    src: Entry,
    /// SOURCE's extended attributes, read when it was listed (`None`: not mirrored).
    src_xattrs: Option<Xattrs>,
    /// This directory and every one above it are unchanged on both sides since the last
    /// clean pass (see `horizon`); never for event work, which starts below the root.
    settled: bool,
    dst_before: Option<Entry>,
    dst_fd: Option<OwnedFd>,
    created: bool,
    finalize: bool,
    pending: AtomicUsize,
    parent: Option<Arc<DirNode>>,
}

/// The relative path of the directory `name` under `parent`.
fn child_rel(parent: Option<&DirNode>, name: &CStr) -> RelPath {
    parent.map(DirNode::rel).unwrap_or_default().join(OsStr::from_bytes(name.to_bytes()))
}

impl DirNode {
    /// This directory's path, rebuilt from the names up the parent chain (only needed for
    /// log lines and errors).
    fn rel(&self) -> RelPath {
        let mut names = Vec::new();
        let mut node = self;
        let base = loop {
            match &node.place {
                Place::Top(rel) => break rel.clone(),
                Place::Child(name) => {
                    names.push(name);
                    match node.parent.as_deref() {
                        Some(parent) => node = parent,
                        None => break RelPath::root(),
                    }
                }
            }
        };
        let mut path = base;
        for name in names.iter().rev() {
            path.push(OsStr::from_bytes(name.to_bytes()));
        }
        path
    }

    /// True for SOURCE's and REPLICA's root directory itself.
    fn is_root(&self) -> bool {
        matches!(&self.place, Place::Top(rel) if rel.is_root())
    }

    /// A parent for event work below it: provides its replica descriptor; its attributes
    /// are handled by the caller.
    fn detached(rel: RelPath, dst_fd: Option<OwnedFd>) -> Arc<DirNode> {
        let placeholder = Entry {
            kind: Kind::Dir,
            mode: 0,
            size: 0,
            blocks: 0,
            mtime: Default::default(),
            ctime: Default::default(),
            uid: 0,
            gid: 0,
            dev: 0,
            ino: 0,
            nlink: 1,
            rdev: 0,
            mount_root: false,
        };
        Arc::new(DirNode {
            place: Place::Top(rel),
            src: placeholder,
            src_xattrs: None,
            settled: false,
            dst_before: None,
            dst_fd,
            created: false,
            finalize: false,
            pending: AtomicUsize::new(1),
            parent: None,
        })
    }
}

impl Drop for DirNode {
    /// Unlinks the parent chain iteratively: a cancelled pass can drop a node 10,000 levels
    /// deep, and the default recursive drop would use one stack frame per level.
    fn drop(&mut self) {
        let mut next = self.parent.take();
        while let Some(parent) = next {
            next = match Arc::try_unwrap(parent) {
                Ok(mut node) => node.parent.take(),
                Err(_) => None,
            };
        }
    }
}

/// One unit of a node's work is done; finalize every ancestor whose work is now complete.
fn complete(mut node: Option<Arc<DirNode>>, engine: &Engine, counters: &Counters) {
    while let Some(n) = node {
        if n.pending.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        engine.finalize_dir(&n, counters);
        node = n.parent.clone();
    }
}

/// Names of both sorted listings, merged and deduplicated, in byte order.
fn merge_names<'a>(
    src: &'a [ops::DirItem],
    dst: &'a [ops::DirItem],
) -> impl Iterator<Item = &'a CStr> {
    let (mut i, mut j) = (0, 0);
    std::iter::from_fn(move || {
        let next = match (src.get(i), dst.get(j)) {
            (Some(a), Some(b)) if a.name == b.name => {
                i += 1;
                j += 1;
                &a.name
            }
            (Some(a), Some(b)) if a.name < b.name => {
                i += 1;
                &a.name
            }
            (Some(_), Some(b)) | (None, Some(b)) => {
                j += 1;
                &b.name
            }
            (Some(a), None) => {
                i += 1;
                &a.name
            }
            (None, None) => return None,
        };
        Some(next.as_c_str())
    })
}

// =======================================================================================
// Small helpers
// =======================================================================================

/// Something that can produce the relative path for an error message, lazily (building
/// a path per entry would cost an allocation on every entry of every pass).
trait RelSource {
    fn rel(&self) -> RelPath;
}

impl RelSource for RelPath {
    fn rel(&self) -> RelPath {
        self.clone()
    }
}

struct LazyRel<'a, F: Fn() -> RelPath>(&'a F);

impl<F: Fn() -> RelPath> RelSource for LazyRel<'_, F> {
    fn rel(&self) -> RelPath {
        (self.0)()
    }
}

fn c_name(name: &OsStr) -> CString {
    // Names read from the filesystem never contain NUL.
    CString::new(name.as_bytes()).unwrap_or_default()
}

/// Opens `rel` below `root` one component at a time, never following a symlink (works for
/// paths longer than PATH_MAX).
fn open_path_at(root: &OwnedFd, rel: &RelPath) -> io::Result<OwnedFd> {
    let mut fd = dup(root)?;
    for name in rel.names() {
        fd = ops::open_dir_at(&fd, &c_name(name))?;
    }
    Ok(fd)
}

fn dup(fd: &OwnedFd) -> io::Result<OwnedFd> {
    fd.try_clone()
}

/// True if `name` in `dir` is a directory now (never following a link).
fn is_dir_at(dir: &OwnedFd, name: &CStr) -> bool {
    matches!(Entry::stat_at(dir, name), Ok(Some(e)) if e.kind == Kind::Dir)
}

fn read_link_pair(a_dir: &OwnedFd, a: &CStr, b_dir: &OwnedFd, b: &CStr) -> bool {
    match (ops::read_link_at(a_dir, a), ops::read_link_at(b_dir, b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::Time;

    fn entry(kind: Kind) -> Entry {
        Entry {
            kind,
            mode: 0o644,
            size: 10,
            blocks: 8,
            mtime: Time { sec: 100, nsec: 5 },
            ctime: Time { sec: 100, nsec: 5 },
            uid: 1,
            gid: 1,
            dev: 1,
            ino: 1,
            nlink: 1,
            rdev: 0,
            mount_root: false,
        }
    }

    fn with(kind: Kind, change: impl FnOnce(&mut Entry)) -> Entry {
        let mut e = entry(kind);
        change(&mut e);
        e
    }

    /// name, source entry, replica entry, rules, "same link target", expected action.
    type Case = (&'static str, Option<Entry>, Option<Entry>, Rules, bool, Action);

    #[test]
    fn decide_table() {
        let file = entry(Kind::File);
        let dir = entry(Kind::Dir);
        let link = entry(Kind::Symlink);
        let fifo = entry(Kind::Fifo);
        let dev = with(Kind::CharDevice, |e| e.rdev = 7);
        let exact = MtimeStore::default();
        let plain = Rules { owners: true, checksum: false, mtimes: exact, hard_links: false };
        let checksum = Rules { checksum: true, ..plain };
        let no_owners = Rules { owners: false, ..plain };
        let links = Rules { hard_links: true, ..plain };
        let linked = |n: u64| with(Kind::File, |e| e.nlink = n);
        let setuid = with(Kind::File, |e| {
            e.nlink = 2;
            e.mode = 0o4755
        });
        let mode_only = AttrDiff { mode: true, ..AttrDiff::default() };
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            ("nothing on either side", None, None, plain, true, Action::Nothing),
            ("replica only: remove", None, Some(file.clone()), plain, true, Action::Remove),
            ("replica-only dir: remove", None, Some(dir.clone()), plain, true, Action::Remove),
            ("new file: create", Some(file.clone()), None, plain, true, Action::Create),
            ("source dir: descend", Some(dir.clone()), None, plain, true, Action::Descend),
            ("dir over a file: descend (replaces)", Some(dir.clone()), Some(file.clone()), plain, true, Action::Descend),
            ("socket: skip", Some(entry(Kind::Socket)), None, plain, true, Action::Skip),
            ("identical file", Some(file.clone()), Some(file.clone()), plain, true, Action::Nothing),
            ("size differs: update", Some(file.clone()), Some(with(Kind::File, |e| e.size = 11)), plain, true, Action::Update),
            ("mtime differs by 1 ns: update", Some(file.clone()), Some(with(Kind::File, |e| e.mtime.nsec = 6)), plain, true, Action::Update),
            ("--checksum confirms equal stamps", Some(file.clone()), Some(file.clone()), checksum, true, Action::CompareContent),
            ("mode differs: attrs", Some(file.clone()), Some(with(Kind::File, |e| e.mode = 0o600)), plain, true, Action::Attrs(mode_only)),
            ("file of another owner: copied again, never chowned in place", Some(file.clone()), Some(with(Kind::File, |e| e.uid = 2)), plain, true, Action::Update),
            ("file of another group: copied again", Some(file.clone()), Some(with(Kind::File, |e| e.gid = 2)), plain, true, Action::Update),
            ("owner ignored when we may not chown", Some(file.clone()), Some(with(Kind::File, |e| e.uid = 2)), no_owners, true, Action::Nothing),
            ("fifo of another owner: replaced, never chowned in place", Some(fifo.clone()), Some(with(Kind::Fifo, |e| e.uid = 2)), plain, true, Action::Replace),
            ("fifo of another owner, owners not mirrored: nothing", Some(fifo.clone()), Some(with(Kind::Fifo, |e| e.uid = 2)), no_owners, true, Action::Nothing),
            ("fifo mode differs, ours: attrs", Some(fifo.clone()), Some(with(Kind::Fifo, |e| e.mode = 0o600)), plain, true, Action::Attrs(mode_only)),
            ("hard-linked replica file: copied again even if equal", Some(file.clone()), Some(with(Kind::File, |e| e.nlink = 2)), plain, true, Action::Update),
            ("hard-linked fifo with a mode to fix: replace", Some(fifo.clone()), Some(with(Kind::Fifo, |e| { e.nlink = 2; e.mode = 0o600 })), plain, true, Action::Replace),
            ("link group as large as SOURCE's: nothing", Some(linked(2)), Some(linked(2)), links, true, Action::Nothing),
            ("link group smaller than SOURCE's (names outside): nothing", Some(linked(3)), Some(linked(2)), links, true, Action::Nothing),
            ("more names than SOURCE's group: copied again", Some(linked(2)), Some(linked(3)), links, true, Action::Update),
            ("linked, mode differs: attrs in place", Some(linked(2)), Some(with(Kind::File, |e| { e.nlink = 2; e.mode = 0o600 })), links, true, Action::Attrs(mode_only)),
            ("setuid never added in place to a shared inode", Some(setuid.clone()), Some(linked(2)), links, true, Action::Update),
            ("a fifo's second name is never a group", Some(with(Kind::Fifo, |e| e.nlink = 2)), Some(with(Kind::Fifo, |e| { e.nlink = 2; e.mode = 0o600 })), links, true, Action::Replace),
            ("hard-linked fifo already right: nothing", Some(fifo.clone()), Some(with(Kind::Fifo, |e| e.nlink = 2)), plain, true, Action::Nothing),
            ("file over a symlink: replace", Some(file.clone()), Some(link.clone()), plain, true, Action::Replace),
            ("fifo over a file: replace", Some(fifo.clone()), Some(file.clone()), plain, true, Action::Replace),
            ("symlink target differs: replace", Some(link.clone()), Some(link.clone()), plain, false, Action::Replace),
            ("same symlink: nothing", Some(link.clone()), Some(link.clone()), plain, true, Action::Nothing),
            ("symlink mode is never compared", Some(link.clone()), Some(with(Kind::Symlink, |e| e.mode = 0o777)), plain, true, Action::Nothing),
            ("device number differs: replace", Some(dev.clone()), Some(with(Kind::CharDevice, |e| e.rdev = 8)), plain, true, Action::Replace),
            ("same fifo: nothing", Some(fifo.clone()), Some(fifo.clone()), plain, true, Action::Nothing),
        ];
        for (name, src, dst, rules, same_target, want) in cases {
            let got = decide(src.as_ref(), dst.as_ref(), rules, || same_target);
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn link_targets_are_read_only_when_both_sides_are_links() {
        let file = entry(Kind::File);
        let asked = std::cell::Cell::new(false);
        decide(Some(&file), Some(&file), Rules::default(), || {
            asked.set(true);
            true
        });
        assert!(!asked.get(), "reading links costs syscalls; only symlink pairs need it");
    }

    #[test]
    fn exit_status_maps_outcomes() {
        let mut report = PassReport::default();
        assert_eq!(report.exit_status(), 0);
        report.counts.errors = 1;
        assert_eq!(report.exit_status(), 23);
        report.counts.errors = 0;
        report.counts.vanished = 1;
        assert_eq!(report.exit_status(), 24);
        report.counts.errors = 1;
        assert_eq!(report.exit_status(), 23, "a real error outweighs a vanished entry");
        report.cancelled = true;
        assert_eq!(report.exit_status(), 20);
        report.guard = Some(GuardTrip::SourceEmpty);
        assert_eq!(report.exit_status(), 1);
    }
}

//! The engine: `Engine` and its three entry points — `full_pass` (reconcile the whole
//! tree), `reconcile_path` and `follow_rename` (reconcile what an event pointed at) — as
//! short orchestration over the parts below. All three share one idempotent per-entry
//! path, run as tasks (a directory, or a batch of entries: no call-stack recursion) on one
//! pool of `--jobs` threads started once for the process. Blocking code; knows nothing of
//! events or timers.
//!
//! | file | holds |
//! |---|---|
//! | `walk` | the parallel walker: work list, directory jobs, batches, merge-join of listings |
//! | `dirs` | directories in flight (`DirNode`), opening/making them, their attributes when done |
//! | `events` | event work: one path, the directories on the way, a followed rename |
//! | `look` | stat both sides, decide with link targets and xattrs, what a decision relied on |
//! | `decide` | pure `decide(src, dst, rules) -> Action`, the decided `Item`, table tests |
//! | `apply` | carry out one decided entry: remove, create/copy, update, compare, attrs |
//! | `content` | file content: a copy with quick retries, `--checksum`'s MD5 comparison |
//! | `scope` | excludes, boundaries, `-x`, the said-once warnings |
//! | `links` | hard links: link groups settled after the walk, the SOURCE-inode index |
//! | `horizon` | when xattrs need not be read again (the last clean pass) |
//! | `report` | counts, the pass report, the exit status, the summary line |
//! | `names` | lazy relative paths for messages, C names, fd-relative path opening |
//! | `mirror` | the entry points as one object-safe trait, for the service |

mod apply;
mod content;
mod decide;
mod dirs;
mod events;
mod horizon;
mod links;
mod look;
mod mirror;
mod names;
mod report;
mod scope;
mod walk;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::checksum::Md5Cache;
use crate::config::{Config, Excludes};
use crate::entry::MtimeStore;
use crate::error::{EntryError, Fatal, GuardTrip};
use crate::guard::Guard;
use crate::ops::CopyOptions;
use crate::relpath::RelPath;
use crate::replica::{Local, Replica, Roots};
use crate::stats::Stats;

pub use decide::{Action, Rules, decide};
pub use mirror::Mirror;
pub use report::{Counts, PassReport, SUMMARY_TARGET};

use horizon::Horizon;
use links::{LinkIndex, LinkRoots};
use names::dup;
use report::Counters;

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
    /// Keep SOURCE's link index between runs, for event work (a `--once` run has none).
    pub link_index: bool,
    /// Do not descend into other filesystems mounted inside SOURCE.
    pub one_file_system: bool,
}

/// Reconciles REPLICA with SOURCE. Shared by the one-shot pass, the periodic passes and the
/// event queue; holds no per-file state (the optional MD5 cache is bounded). REPLICA is
/// reached only through `R` (see `replica`): the local directory tree by default.
pub struct Engine<R: Replica = Local> {
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
    /// The REPLICA side: every read and change of REPLICA goes through it.
    replica: R,
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
    /// SOURCE is said once, not on every pass. Bounded by [`scope::SKIPS_REMEMBERED`].
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
    /// Builds the engine for `config` with a local REPLICA; remembers what the roots are
    /// for the guards.
    pub fn new(
        config: &Config,
        excludes: Excludes,
        cancel: CancellationToken,
    ) -> Result<Engine, Fatal> {
        let copy = CopyOptions { chown: config.chown, fsync: config.fsync, verify: config.verify };
        Engine::with_replica(config, excludes, cancel, Local::new(copy, config.xattrs))
    }
}

impl<R: Replica> Engine<R> {
    /// Builds the engine for `config` writing through `replica`; remembers what the roots
    /// are for the guards. What the replica cannot hold (hard links) is not asked of it.
    pub fn with_replica(
        config: &Config,
        excludes: Excludes,
        cancel: CancellationToken,
        replica: R,
    ) -> Result<Engine<R>, Fatal> {
        let hard_links = config.hard_links && replica.caps().hard_links;
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
            hard_links,
            link_index: hard_links && !config.once,
            one_file_system: config.one_file_system,
        };
        Ok(Engine {
            guard,
            pool,
            rules: Rules {
                owners: config.chown,
                checksum: config.checksum,
                mtimes: MtimeStore::default(),
                hard_links,
            },
            mtimes: OnceLock::new(),
            mtimes_warned: AtomicBool::new(false),
            opts,
            excludes,
            replica,
            links: LinkIndex::default(),
            horizon: Horizon::new(
                local_clocks(config),
                config.state.clone(),
                vec![config.source.clone(), config.replica.clone()],
            ),
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

    /// The REPLICA side this engine reads and writes through.
    pub fn replica(&self) -> &R {
        &self.replica
    }

    /// Reconciles the whole tree.
    pub fn full_pass(&self) -> PassReport {
        let start = self.horizon.pass_start();
        let report = self.run(None, |roots, counters| {
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
            let refused = self.xattrs().is_some_and(|s| !s.refused().is_empty());
            self.horizon.passed_clean(start, !refused);
        }
        report
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
        self.run(Some(&[rel]), |roots, counters| match rel.is_root() {
            true => self.fix_root_attrs(&roots, counters),
            false => self.reconcile_below_root(&roots, rel, recursive, counters),
        })
    }

    /// A change to the SOURCE root's own metadata (or to an entry right under it, which
    /// moves its mtime): only the root's attributes, not a whole pass.
    fn fix_root_attrs(&self, roots: &Roots<R::Dir>, counters: &Counters) {
        if let Some(dst) = roots.dst.as_ref().filter(|_| self.replica.caps().root_attrs) {
            self.fix_dir_attrs(&roots.src, dst, &RelPath::root(), counters);
        }
    }

    /// Follows a rename SOURCE `from` → `to` with a rename in REPLICA when REPLICA still has
    /// what `from` was and nothing at `to`; then reconciles both, recursively: `to`, and
    /// `from`, which removes it if the rename was not followed and, if SOURCE has `from`
    /// again (an exchange, or a rename onto it), mirrors whatever it now holds. Either fixes
    /// its parent, so the result is right whatever the rename did.
    pub fn follow_rename(&self, from: &RelPath, to: &RelPath) -> PassReport {
        self.run(Some(&[from, to]), |mut roots, counters| {
            // Either end excluded (as a file or as a directory): no shortcut, the two
            // reconciles below do what the exclusion allows.
            let excluded = |p: &RelPath| {
                self.excludes.matches_path_or_parent(p, false)
                    || self.excludes.matches_path_or_parent(p, true)
            };
            if !excluded(from) && !excluded(to) && self.try_rename(&roots, from, to, counters) {
                // A listing taken before the rename no longer shows either end.
                if self.replica.caps().snapshot {
                    match self.open_roots(Some(&[from, to])) {
                        Ok(again) => roots = again,
                        Err(_) => return,
                    }
                }
            }
            self.reconcile_below_root(&roots, to, true, counters);
            self.reconcile_below_root(&roots, from, true, counters);
        })
    }

    /// One piece of work on the pool: the roots are opened through the guards (for event
    /// work, `scope`: the paths it looks at), `work` runs if they pass, and the counts
    /// become the report.
    fn run(
        &self,
        scope: Option<&[&RelPath]>,
        work: impl FnOnce(Roots<R::Dir>, &Counters) + Send,
    ) -> PassReport {
        self.in_pool(|| {
            self.horizon.check_clock();
            let started = Instant::now();
            let counters = Counters::default();
            let mut report = PassReport::default();
            match self.open_roots(scope) {
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
    fn link_roots(&self, roots: &Roots<R::Dir>) -> Option<LinkRoots<R::Dir>> {
        if !self.opts.hard_links {
            return None;
        }
        let src = dup(&roots.src).ok()?;
        let dst = match &roots.dst {
            Some(d) => Some(self.replica.try_clone_dir(d).ok()?),
            None => None,
        };
        Some(LinkRoots { src, dst })
    }

    /// Opens both roots anew through the guards (see `guard`). Before the first piece of
    /// work, REPLICA must take a probe file (a read-only REPLICA is found before anything
    /// else is tried, and its filesystem's mtime precision with it).
    fn open_roots(&self, scope: Option<&[&RelPath]>) -> Result<Roots<R::Dir>, GuardTrip> {
        let probe = |dst: &R::Dir| match self.opts.dry_run {
            false if self.mtimes.get().is_none() => {
                let mtimes = self
                    .replica
                    .probe(dst)
                    .map_err(|e| GuardTrip::ReplicaUnwritable(e.to_string()))?;
                let _ = self.mtimes.set(mtimes);
                Ok(())
            }
            _ => Ok(()),
        };
        match scope {
            None => self.replica.open_roots(&self.guard, &probe),
            Some(paths) => self.replica.open_roots_for(&self.guard, &probe, paths),
        }
    }

    /// The decision rules, with REPLICA's mtime precision once it is known.
    fn rules(&self) -> Rules {
        Rules { mtimes: self.mtimes.get().copied().unwrap_or_default(), ..self.rules }
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

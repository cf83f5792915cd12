//! The watcher as the service holds it: started (and, when SOURCE is replaced, started
//! again: inotify watches follow inodes, not paths) on the blocking pool, since its first
//! recursive walk of a large SOURCE takes seconds, and abandoned if a stop comes first.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::entry::Entry;
use crate::guard::open_dir_nofollow;
use crate::queue::Hint;
use crate::relpath::{Escaped, RelPath};
use crate::stats::Stats;
use crate::watch::{Excluder, Watch};

/// The watch, and what it needs to be started again.
pub struct Watcher {
    enabled: bool,
    source: PathBuf,
    debounce: Duration,
    hints: mpsc::Sender<Hint>,
    full_pass: Arc<Notify>,
    excluded: Excluder,
    watching: Option<(Watch, (u64, u64))>,
    /// When the watches were last counted (the count reads a /proc file whose size grows
    /// with the watches, so not on every pass of a large tree).
    counted: Option<std::time::Instant>,
}

/// How often the watches in use are counted for the status endpoint.
const COUNT_EVERY: Duration = Duration::from_secs(60);

impl Watcher {
    /// A watcher for `config`'s SOURCE, not started yet.
    pub fn new(config: &Config, hints: mpsc::Sender<Hint>, full_pass: Arc<Notify>) -> Watcher {
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
            counted: None,
        }
    }

    /// SOURCE's identity now, reached without following a symlink (a symlink put in its
    /// place is never watched: the guard refuses it).
    fn source_id(&self) -> Option<(u64, u64)> {
        let entry = open_dir_nofollow(&self.source).and_then(|fd| Entry::stat_fd(&fd)).ok()?;
        Some((entry.dev, entry.ino))
    }

    /// Starts watching (a no-op with `--no-watch`); false if `cancel` fired first.
    pub async fn start(&mut self, cancel: &CancellationToken) -> bool {
        if !self.enabled {
            return true;
        }
        let Some(id) = self.source_id() else { return true };
        let (source, debounce) = (self.source.clone(), self.debounce);
        let (hints, full_pass, excluded) =
            (self.hints.clone(), self.full_pass.clone(), self.excluded.clone());
        debug!("starting the watch (a walk of SOURCE)");
        let walk = tokio::task::spawn_blocking(move || {
            Watch::start(&source, debounce, hints, full_pass, excluded)
        });
        let started = tokio::select! {
            // The walk goes on in its thread; the process is on its way out.
            () = cancel.cancelled() => return false,
            joined = walk => joined,
        };
        match started {
            Ok(Ok(watch)) => {
                debug!("watch started");
                if let Some(problem) = watch.degraded() {
                    warn!("{problem}; changes there are picked up by the periodic pass");
                }
                self.watching = Some((watch, id));
            }
            Ok(Err(e)) => warn!("{e}; running on periodic passes only"),
            Err(e) => warn!("the watcher could not start ({e}); running on periodic passes only"),
        }
        true
    }

    /// Tells `stats` whether the watch is degraded (missing, or some of SOURCE not
    /// watched) and, at most every [`COUNT_EVERY`], how many watches are in use.
    pub async fn publish(&mut self, stats: &Arc<Stats>) {
        let degraded =
            self.enabled && self.watching.as_ref().is_none_or(|(w, _)| w.degraded().is_some());
        let (watches, _) = stats.watcher();
        let due = self.counted.is_none_or(|t| t.elapsed() >= COUNT_EVERY);
        let watches = match (self.enabled, due) {
            (false, _) => 0,
            (true, false) => watches,
            (true, true) => {
                self.counted = Some(std::time::Instant::now());
                tokio::task::spawn_blocking(count_inotify_watches).await.unwrap_or(watches)
            }
        };
        stats.set_watcher(watches, degraded);
    }

    /// Watches SOURCE again if it is another directory than the one watched (renamed away
    /// and back, remounted); false if `cancel` fired first.
    pub async fn rearm_if_source_replaced(&mut self, cancel: &CancellationToken) -> bool {
        let now = self.source_id();
        let watched = self.watching.as_ref().map(|(_, id)| *id);
        if !self.enabled || now.is_none() || now == watched {
            return true;
        }
        if watched.is_some() {
            info!(source = %Escaped::path(&self.source), "source was replaced: watching it again");
        }
        self.watching = None;
        self.start(cancel).await
    }
}

/// inotify watches this process holds: the `inotify wd:` lines of the fdinfo of each
/// inotify descriptor (the kernel's own count; notify does not expose one).
fn count_inotify_watches() -> u64 {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else { return 0 };
    let mut watches = 0;
    for fd in fds.flatten() {
        let is_inotify = std::fs::read_link(fd.path())
            .is_ok_and(|target| target.as_os_str() == "anon_inode:inotify");
        if !is_inotify {
            continue;
        }
        let info = std::path::Path::new("/proc/self/fdinfo").join(fd.file_name());
        if let Ok(text) = std::fs::read_to_string(info) {
            watches += text.lines().filter(|l| l.starts_with("inotify wd:")).count() as u64;
        }
    }
    watches
}

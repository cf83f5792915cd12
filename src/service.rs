//! Runs replicad: one pass (`--once`), or the long-lived service. The only module that
//! spawns tasks or knows about signals and systemd; everything it runs is the engine's
//! `reconcile`, driven by the interval and by the watcher's hints through the queue.

use rustix::process::{Resource, getrlimit, setrlimit};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::reconcile::Engine;
use crate::relpath::Escaped;

/// Runs what `config` asks for and returns the process exit status.
pub fn run_main(config: Config) -> u8 {
    raise_fd_limit();
    log_start(&config);
    let cancel = CancellationToken::new();
    let engine = match Engine::new(&config, config.excludes.clone(), cancel.clone()) {
        Ok(e) => e,
        Err(e) => {
            error!("{e}");
            return 1;
        }
    };
    run_once(&engine, config.dry_run)
}

/// One full pass; the status says whether REPLICA now matches SOURCE.
pub fn run_once(engine: &Engine, dry_run: bool) -> u8 {
    let span = dry_run.then(|| tracing::info_span!("dry_run").entered());
    let report = engine.full_pass();
    if let Some(trip) = &report.guard {
        error!("deletion guard: {trip}");
    }
    report.log_summary(dry_run);
    drop(span);
    report.exit_status()
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
        let _ = setrlimit(
            Resource::Nofile,
            rustix::process::Rlimit {
                current: Some(max),
                maximum: Some(max),
            },
        );
    }
}

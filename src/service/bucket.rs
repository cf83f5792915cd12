//! `replicad SOURCE s3://BUCKET[/PREFIX]`: the tokio runtime the bucket's requests run on
//! (the service's tasks share it), the start-up check (wrong credentials, a missing bucket
//! or an unreachable endpoint: one line, exit 1, nothing written), then the engine over
//! [`BucketReplica`] — one full pass with `--once`/`--dry-run`, else the live service,
//! the very `serve` a local REPLICA runs, through [`crate::engine::Mirror`].

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::bucket::error::one_line;
use crate::bucket::{BlockingBucket, Bucket, BucketUrl, Retries, S3Settings, UploadPolicy};
use crate::config::Config;
use crate::engine::{Engine, Mirror};
use crate::replica::BucketReplica;

use super::systemd::SHUTDOWN_GRACE;

/// Runs one pass into the bucket, or the service; the exit status.
pub fn run(
    config: Config,
    url: &BucketUrl,
    settings: &S3Settings,
    cancel: CancellationToken,
) -> u8 {
    let runtime = match super::runtime(config.jobs) {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the tokio runtime: {e}");
            return 1;
        }
    };
    let connect = Bucket::connect(url, settings, Retries::default(), UploadPolicy::default());
    let bucket = match runtime.block_on(connect) {
        Ok(b) => b,
        Err(e) => {
            error!("replica {}", one_line(&e));
            return 1;
        }
    };
    if config.verify {
        warn!("--verify has no effect on a bucket yet: objects are not read back after upload");
    }
    let blocking = BlockingBucket::new(bucket, runtime.handle().clone());
    let replica = BucketReplica::new(blocking, cancel.clone()).with_jobs(config.jobs);
    let engine: Arc<dyn Mirror> =
        match Engine::with_replica(&config, config.excludes.clone(), cancel.clone(), replica) {
            Ok(e) => Arc::new(e),
            Err(e) => {
                error!("{e}");
                return 1;
            }
        };
    let status = match config.once {
        true => runtime.block_on(super::once(engine, config.dry_run, cancel)),
        false => runtime.block_on(super::serve(config, engine, cancel)),
    };
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    status
}

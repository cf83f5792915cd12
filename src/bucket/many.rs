//! Many requests of one kind with bounded concurrency: the server-side copies and the
//! deletes of a renamed directory (thousands of keys). At most `jobs` requests in flight,
//! progress in the log every 500 keys, a stop between requests when the
//! cancellation token fires, the first error ends it (requests already sent finish).
//! Knows keys, not paths.

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::error::StoreError;
use super::store::Bucket;

/// A progress line every this many keys.
const PROGRESS_EVERY: usize = 500;

/// What to do to each key.
#[derive(Clone, Copy, Debug)]
pub enum Each {
    /// CopyObject `from` → `to` (metadata included).
    Copy,
    /// DELETE `from` (`to` unused).
    Delete,
}

impl Bucket {
    /// Runs `what` for every `(from, to)` pair, at most `jobs` at once; the ETag each copy
    /// returned (empty for deletes), in the order of `pairs`.
    pub async fn for_each(
        &self,
        what: Each,
        pairs: &[(String, String)],
        jobs: usize,
        cancel: &CancellationToken,
    ) -> Result<Vec<String>, StoreError> {
        let mut out = vec![String::new(); pairs.len()];
        let mut running = JoinSet::new();
        let mut next = 0;
        let mut done = 0;
        loop {
            while running.len() < jobs.max(1) && next < pairs.len() {
                if cancel.is_cancelled() {
                    running.abort_all();
                    return Err(StoreError::Cancelled { key: pairs[next].1.clone() });
                }
                let (from, to) = pairs[next].clone();
                let client = self.client().clone();
                let i = next;
                running.spawn(async move {
                    let r = match what {
                        Each::Copy => client.copy(&from, &to).await,
                        Each::Delete => client.delete(&from).await.map(|()| String::new()),
                    };
                    (i, r)
                });
                next += 1;
            }
            let Some(joined) = running.join_next().await else { break };
            let (i, result) = joined.map_err(|e| StoreError::Cancelled { key: e.to_string() })?;
            out[i] = result?;
            done += 1;
            if done % PROGRESS_EVERY == 0 {
                info!(done, total = pairs.len(), op = ?what, "bucket: server-side work in progress");
            }
        }
        Ok(out)
    }
}

//! The S3 client: an opendal operator built from [`super::config`], with retries and
//! timeouts, and one method per store request replicad makes. Knows keys and bytes, not
//! files or the mapping.
//!
//! Requests go through opendal's *service* layer (`Operator::service()`, the public
//! `opendal::raw` API that services and layers are written against), with only the retry
//! and timeout layers applied, rather than through `Operator::write`/`stat`/`delete` and
//! the layers `Operator::new` adds (those simulate directories: a HEAD of `d/` would be
//! answered from a LIST, without the marker's metadata):
//! the `Operator` front door normalises every path — it trims white space at both ends of
//! the whole key (`normalize_path` calls `str::trim`), so `a/b ` would silently become
//! `a/b` — and refuses to write a key ending in `/`, which is exactly what a directory
//! marker with metadata is. Keys here are passed to the store byte for byte.
//!
//! Retries: opendal marks 5xx, 429, `SlowDown`, `RequestTimeout`, `InternalError`,
//! `ServiceUnavailable`, transport errors and timeouts as temporary; the retry layer
//! retries those with exponential backoff and jitter and logs each retry. Anything else,
//! and a temporary error that outlasts the retries, is returned — a failed LIST is an
//! error, never an empty listing.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use opendal::BytesRange;
use opendal::layers::{RetryLayer, TimeoutLayer};
use opendal::raw::oio::{
    Copy as _, Delete as _, List as _, Read as _, ReadStream as _, Write as _,
};
use opendal::raw::{OpCopy, OpDelete, OpList, OpRead, OpStat, OpWrite, Service as _};
use opendal::{Buffer, Metadata, Operator};

use super::config::{BucketUrl, S3Settings};
use super::error::{StartupError, StoreError, StoreOp};

/// How hard to retry and how long to wait.
#[derive(Clone, Copy, Debug)]
pub struct Retries {
    /// Attempts after the first.
    pub max_times: usize,
    /// First backoff.
    pub min_delay: Duration,
    /// Backoff cap.
    pub max_delay: Duration,
    /// Bound on a request without a body (HEAD, LIST, DELETE, complete).
    pub timeout: Duration,
    /// Bound on each read or write of a body — a whole part or a single PUT is one write,
    /// so this is what a slow uplink has to move a part in (8 MiB in 300 s: ~28 KiB/s).
    pub io_timeout: Duration,
}

impl Default for Retries {
    fn default() -> Self {
        Retries {
            max_times: 6,
            min_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
            timeout: Duration::from_secs(60),
            io_timeout: Duration::from_secs(300),
        }
    }
}

/// One object as LIST reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// The full key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// The ETag, quotes removed.
    pub etag: String,
    /// Last-Modified in nanoseconds since the epoch, at the precision LIST gives.
    pub last_modified_ns: i128,
}

/// What HEAD says about an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    /// Size in bytes.
    pub size: u64,
    /// The ETag, quotes removed.
    pub etag: String,
    /// User metadata (keys lowercase, without `x-amz-meta-`).
    pub user_metadata: HashMap<String, String>,
}

/// The S3 client for one bucket: one operator per endpoint of `AWS_ENDPOINT_URL`, the
/// current one shared by every clone (requests go to one endpoint at a time).
#[derive(Clone, Debug)]
pub struct Client {
    /// Per endpoint: the store with retries, the same without the retry layer (for
    /// multipart writers: a part write a stop drops mid-flight leaves the retry layer's
    /// writer unable to abort, and the engine retries a failed upload whole anyway), and
    /// its URL.
    ops: Arc<[Endpoint]>,
    current: Arc<AtomicUsize>,
    bucket: String,
}

fn unquote(etag: &str) -> String {
    etag.trim_matches('"').to_owned()
}

/// A connection that cannot be made in this long is an unreachable endpoint, not a slow one.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn build(url: &BucketUrl, s: &S3Settings, endpoint: Option<&str>) -> opendal::Result<Operator> {
    let mut b = opendal::services::S3::default()
        .bucket(&url.bucket)
        .root("/")
        .region(&s.region)
        .access_key_id(&s.access_key_id)
        .secret_access_key(&s.secret_access_key)
        .disable_config_load();
    if let Some(e) = endpoint {
        b = b.endpoint(e);
    }
    if let Some(t) = &s.session_token {
        b = b.session_token(t);
    }
    // The bare service, without the layers `Operator::new` adds: its SimulateLayer answers
    // a HEAD of a key ending in `/` from a LIST (no metadata), since S3 has no directories.
    let service: opendal::raw::Servicer = Arc::new(opendal::Builder::build(b)?);
    let op = Operator::from_parts(opendal::OperationContext::default(), service);
    // A transport of this operator's own (opendal's default is a process-wide one that must
    // be installed first), with a connect timeout.
    let client =
        reqwest::Client::builder().connect_timeout(CONNECT_TIMEOUT).build().map_err(|e| {
            opendal::Error::new(opendal::ErrorKind::Unexpected, "building the HTTP client")
                .set_source(e)
        })?;
    let transport = opendal::HttpTransporter::new(
        opendal_http_transport_reqwest::ReqwestTransport::new(client),
    );
    let ctx = op.context().with_http_transport(transport);
    Ok(op.with_context(ctx))
}

impl Client {
    /// Builds the client (no request is made).
    pub fn new(url: &BucketUrl, s: &S3Settings, retries: Retries) -> Result<Client, StartupError> {
        let mut ops = Vec::new();
        for endpoint in s.endpoints() {
            let op = build(url, s, endpoint.as_deref())
                .map_err(|source| StartupError::Client { bucket: url.bucket.clone(), source })?;
            let shown = endpoint.unwrap_or_else(|| "https://s3.amazonaws.com".to_owned());
            let (retried, unretried) = with_layers(op, retries);
            ops.push(Endpoint { retried, unretried, url: shown });
        }
        Ok(Client { ops: ops.into(), current: Arc::default(), bucket: url.bucket.clone() })
    }

    /// The operator of the current endpoint.
    fn op(&self) -> &Operator {
        &self.current().retried
    }

    fn current(&self) -> &Endpoint {
        &self.ops[self.current.load(Ordering::Relaxed) % self.ops.len()]
    }

    /// Failover: the next endpoint of `AWS_ENDPOINT_URL` (wrapping around) becomes the
    /// current one, for every clone of this client; its URL, or `None` with a single
    /// endpoint. Called when a request could not reach the current one (see
    /// [`is_unreachable`]); requests in flight finish (or fail) where they were sent.
    pub fn failover(&self) -> Option<&str> {
        if self.ops.len() < 2 {
            return None;
        }
        let next = (self.current.fetch_add(1, Ordering::Relaxed) + 1) % self.ops.len();
        Some(&self.ops[next].url)
    }

    /// Makes the endpoint at `index` (in `AWS_ENDPOINT_URL`'s order) the current one.
    pub fn use_endpoint(&self, index: usize) {
        self.current.store(index % self.ops.len(), Ordering::Relaxed);
    }

    /// How many endpoints there are.
    pub fn endpoint_count(&self) -> usize {
        self.ops.len()
    }
}

/// One endpoint of `AWS_ENDPOINT_URL`.
#[derive(Debug)]
struct Endpoint {
    retried: Operator,
    unretried: Operator,
    url: String,
}

/// The timeout and retry layers every request goes through; also the store with the
/// timeouts only.
fn with_layers(op: Operator, retries: Retries) -> (Operator, Operator) {
    // A store that is down or throttling fails every request in flight: its first
    // retry is a warning, the later ones of the same request only debug lines (a
    // request that gives up is an error where it was made, and the replica guard
    // says once when the store is unusable and once when it is back).
    let notify = |e: opendal::layers::RetryEvent<'_>| match e.attempt {
        1 => {
            tracing::warn!(op = ?e.op, after = ?e.retry_after, error = %e.err, "bucket request failed; retrying with backoff")
        }
        _ => {
            tracing::debug!(op = ?e.op, attempt = e.attempt, after = ?e.retry_after, error = %e.err, "bucket request failed again; retrying")
        }
    };
    let timed = op.layer(
        TimeoutLayer::new().with_timeout(retries.timeout).with_io_timeout(retries.io_timeout),
    );
    let retried = timed.clone().layer(
        RetryLayer::new()
            .with_jitter()
            .with_max_times(retries.max_times)
            .with_min_delay(retries.min_delay)
            .with_max_delay(retries.max_delay)
            .with_notify(notify),
    );
    (retried, timed)
}

impl Client {
    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The endpoint requests go to.
    pub fn endpoint(&self) -> &str {
        &self.current().url
    }

    /// Every object whose key starts with `prefix` (all pages, in key order).
    pub async fn list(&self, prefix: &str) -> Result<Vec<Listed>, StoreError> {
        self.list_from(prefix, None, false).await
    }

    /// Like [`Client::list`], with the object named `prefix` itself when there is one (a
    /// directory's marker, when `prefix` is a directory key).
    pub async fn list_with_marker(&self, prefix: &str) -> Result<Vec<Listed>, StoreError> {
        self.list_from(prefix, None, true).await
    }

    /// The first object (in key order) whose key starts with `prefix`, the object named
    /// `prefix` itself included: one LIST request of one key. How event work looks at a
    /// key or a directory marker with LIST's own Last-Modified (what the manifest binds),
    /// without listing what surrounds it.
    pub async fn list_first(&self, prefix: &str) -> Result<Option<Listed>, StoreError> {
        Ok(self.list_from(prefix, Some(1), true).await?.into_iter().next())
    }

    async fn list_from(
        &self,
        prefix: &str,
        limit: Option<usize>,
        own_marker: bool,
    ) -> Result<Vec<Listed>, StoreError> {
        let err = |e| StoreError::from_opendal(StoreOp::List, prefix, e);
        let args = OpList::from(opendal::options::ListOptions {
            recursive: true,
            limit,
            ..Default::default()
        });
        // An empty prefix lists the whole bucket: opendal spells that "/".
        let path = if prefix.is_empty() { "/" } else { prefix };
        let mut lister =
            self.op().service().list_dyn(self.op().context(), path, args).map_err(err)?;
        let mut out = Vec::new();
        while let Some(entry) = lister.next().await.map_err(err)? {
            let (path, meta) = entry.into_parts();
            // opendal reports the listed prefix itself when it is a marker; the mirror's
            // root has none to keep, a directory looked at by event work has.
            let is_own = !prefix.is_empty() && path == prefix && meta.is_dir();
            if path == "/" || (is_own && !own_marker) {
                continue;
            }
            out.push(listed(path, &meta));
            if limit.is_some_and(|n| out.len() >= n) {
                break;
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Objects under `prefix`, at most `limit` (one LIST request; for the start-up check).
    pub async fn list_some(&self, prefix: &str, limit: usize) -> Result<(), opendal::Error> {
        let args = OpList::from(opendal::options::ListOptions {
            recursive: true,
            limit: Some(limit),
            ..Default::default()
        });
        let path = if prefix.is_empty() { "/" } else { prefix };
        let mut lister = self.op().service().list_dyn(self.op().context(), path, args)?;
        lister.next().await.map(|_| ())
    }

    /// HEAD: size, ETag and user metadata.
    pub async fn head(&self, key: &str) -> Result<Head, StoreError> {
        let rp = self
            .op()
            .service()
            .stat_dyn(self.op().context(), key, OpStat::new())
            .await
            .map_err(|e| StoreError::from_opendal(StoreOp::Head, key, e))?;
        let meta = rp.into_metadata();
        let user_metadata = meta
            .user_metadata()
            .map(|m| m.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned())).collect())
            .unwrap_or_default();
        Ok(Head {
            size: meta.content_length(),
            etag: meta.etag().map(unquote).unwrap_or_default(),
            user_metadata,
        })
    }

    /// GET the whole object (symlink targets, the manifest).
    pub async fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        let err = |e| StoreError::from_opendal(StoreOp::Get, key, e);
        let reader =
            self.op().service().read_dyn(self.op().context(), key, OpRead::new()).map_err(err)?;
        let (_, mut stream) = reader.open(BytesRange::default()).await.map_err(err)?;
        Ok(stream.read_all().await.map_err(err)?.to_vec())
    }

    /// Starts a write of `key` with `metadata`. Each `write` of the returned writer after
    /// the first becomes a multipart part; a writer that got only one `write` is sent as
    /// one PUT on `close`. `abort` drops every part already sent.
    pub fn writer(
        &self,
        key: &str,
        metadata: HashMap<String, String>,
        concurrent: usize,
    ) -> Result<opendal::raw::oio::Writer, StoreError> {
        writer_on(&self.current().unretried, key, metadata, concurrent)
    }

    /// One PUT of `body` with `metadata`; returns the ETag.
    pub async fn put(
        &self,
        key: &str,
        body: Vec<u8>,
        metadata: HashMap<String, String>,
    ) -> Result<String, StoreError> {
        let err = |e| StoreError::from_opendal(StoreOp::Put, key, e);
        // One PUT: the retry layer resends it whole on a 5xx or `SlowDown`.
        let mut w = writer_on(self.op(), key, metadata, 1)?;
        w.write(Buffer::from(body)).await.map_err(err)?;
        let meta: Metadata = w.close().await.map_err(err)?;
        Ok(meta.etag().map(unquote).unwrap_or_default())
    }

    /// DELETE one key (S3 answers success for a missing key too).
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let err = |e| StoreError::from_opendal(StoreOp::Delete, key, e);
        let mut d = self.op().service().delete_dyn(self.op().context()).map_err(err)?;
        d.delete(key, OpDelete::new()).await.map_err(err)?;
        d.close().await.map_err(err)
    }

    /// Server-side copy, metadata included (CopyObject's default directive); returns the
    /// new ETag. For renames (#13): no byte passes through replicad.
    pub async fn copy(&self, from: &str, to: &str) -> Result<String, StoreError> {
        let err = |e| StoreError::from_opendal(StoreOp::Copy, to, e);
        let mut c = self
            .op()
            .service()
            .copy_dyn(self.op().context(), from, to, OpCopy::new())
            .map_err(err)?;
        loop {
            match c.next().await {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    let _ = c.abort().await;
                    return Err(err(e));
                }
            }
        }
        match c.close().await {
            Ok(meta) => Ok(meta.etag().map(unquote).unwrap_or_default()),
            Err(e) => {
                let _ = c.abort().await;
                Err(err(e))
            }
        }
    }
}

/// True if `text` (an error's one line) says the request never reached the store (no
/// connection, a timeout): another endpoint may answer.
pub fn is_unreachable(text: &str) -> bool {
    text.contains("send http request") || text.contains("timeout") || text.contains("timed out")
}

fn listed(key: String, meta: &Metadata) -> Listed {
    Listed {
        key,
        size: meta.content_length(),
        etag: meta.etag().map(unquote).unwrap_or_default(),
        last_modified_ns: meta.last_modified().map(|t| t.into_inner().as_nanosecond()).unwrap_or(0),
    }
}

/// A writer of `key` on `op` (with or without the retry layer).
fn writer_on(
    op: &Operator,
    key: &str,
    metadata: HashMap<String, String>,
    concurrent: usize,
) -> Result<opendal::raw::oio::Writer, StoreError> {
    let err = |e| StoreError::from_opendal(StoreOp::Put, key, e);
    let options = opendal::options::WriteOptions {
        user_metadata: Some(metadata),
        concurrent,
        ..Default::default()
    };
    let (args, _) = OpWrite::from_options(&op.service().capability(), options).map_err(err)?;
    op.service().write_dyn(op.context(), key, args).map_err(err)
}

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

/// The S3 client for one bucket.
#[derive(Clone, Debug)]
pub struct Client {
    op: Operator,
    /// The same store without the retry layer, for multipart writers: a part write that
    /// a stop drops mid-flight leaves the retry layer's writer unable to abort, and the
    /// engine retries a failed upload whole anyway.
    unretried: Operator,
    bucket: String,
    endpoint: String,
}

fn unquote(etag: &str) -> String {
    etag.trim_matches('"').to_owned()
}

/// A connection that cannot be made in this long is an unreachable endpoint, not a slow one.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn build(url: &BucketUrl, s: &S3Settings) -> opendal::Result<Operator> {
    let mut b = opendal::services::S3::default()
        .bucket(&url.bucket)
        .root("/")
        .region(&s.region)
        .access_key_id(&s.access_key_id)
        .secret_access_key(&s.secret_access_key)
        .disable_config_load();
    if let Some(e) = &s.endpoint {
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
        let op = build(url, s)
            .map_err(|source| StartupError::Client { bucket: url.bucket.clone(), source })?;
        let notify = |e: opendal::layers::RetryEvent<'_>| {
            tracing::warn!(op = ?e.op, attempt = e.attempt, after = ?e.retry_after, error = %e.err, "bucket request failed; retrying");
        };
        let op = op.layer(
            TimeoutLayer::new().with_timeout(retries.timeout).with_io_timeout(retries.io_timeout),
        );
        let unretried = op.clone();
        let op = op.layer(
            RetryLayer::new()
                .with_jitter()
                .with_max_times(retries.max_times)
                .with_min_delay(retries.min_delay)
                .with_max_delay(retries.max_delay)
                .with_notify(notify),
        );
        let endpoint = s.endpoint.clone().unwrap_or_else(|| "https://s3.amazonaws.com".to_owned());
        Ok(Client { op, unretried, bucket: url.bucket.clone(), endpoint })
    }

    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The endpoint requests go to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Every object whose key starts with `prefix` (all pages, in key order).
    pub async fn list(&self, prefix: &str) -> Result<Vec<Listed>, StoreError> {
        let err = |e| StoreError::from_opendal(StoreOp::List, prefix, e);
        let args =
            OpList::from(opendal::options::ListOptions { recursive: true, ..Default::default() });
        // An empty prefix lists the whole bucket: opendal spells that "/".
        let path = if prefix.is_empty() { "/" } else { prefix };
        let mut lister = self.op.service().list_dyn(self.op.context(), path, args).map_err(err)?;
        let mut out = Vec::new();
        while let Some(entry) = lister.next().await.map_err(err)? {
            let (path, meta) = entry.into_parts();
            // opendal reports the listed prefix itself when it is a marker; keep real keys.
            if path == "/" || (!prefix.is_empty() && path == prefix && meta.is_dir()) {
                continue;
            }
            out.push(listed(path, &meta));
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
        let mut lister = self.op.service().list_dyn(self.op.context(), path, args)?;
        lister.next().await.map(|_| ())
    }

    /// HEAD: size, ETag and user metadata.
    pub async fn head(&self, key: &str) -> Result<Head, StoreError> {
        let rp = self
            .op
            .service()
            .stat_dyn(self.op.context(), key, OpStat::new())
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
            self.op.service().read_dyn(self.op.context(), key, OpRead::new()).map_err(err)?;
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
        writer_on(&self.unretried, key, metadata, concurrent)
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
        let mut w = writer_on(&self.op, key, metadata, 1)?;
        w.write(Buffer::from(body)).await.map_err(err)?;
        let meta: Metadata = w.close().await.map_err(err)?;
        Ok(meta.etag().map(unquote).unwrap_or_default())
    }

    /// DELETE one key (S3 answers success for a missing key too).
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let err = |e| StoreError::from_opendal(StoreOp::Delete, key, e);
        let mut d = self.op.service().delete_dyn(self.op.context()).map_err(err)?;
        d.delete(key, OpDelete::new()).await.map_err(err)?;
        d.close().await.map_err(err)
    }

    /// Server-side copy, metadata included (CopyObject's default directive); returns the
    /// new ETag. For renames (#13): no byte passes through replicad.
    pub async fn copy(&self, from: &str, to: &str) -> Result<String, StoreError> {
        let err = |e| StoreError::from_opendal(StoreOp::Copy, to, e);
        let mut c =
            self.op.service().copy_dyn(self.op.context(), from, to, OpCopy::new()).map_err(err)?;
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

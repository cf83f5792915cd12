//! Errors of the bucket side, each naming the operation and the key it concerns, and the
//! start-up check's verdict (one clear line for each way a bucket can be unusable).
//! Classifies opendal's errors once, here, so no caller inspects opendal types.

use std::io;

/// A bucket operation, the first word of an error line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreOp {
    /// ListObjectsV2.
    List,
    /// HeadObject.
    Head,
    /// GetObject.
    Get,
    /// PutObject, or a multipart upload.
    Put,
    /// DeleteObject.
    Delete,
    /// CopyObject.
    Copy,
    /// AbortMultipartUpload.
    Abort,
}

impl std::fmt::Display for StoreOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StoreOp::List => "list",
            StoreOp::Head => "head",
            StoreOp::Get => "get",
            StoreOp::Put => "put",
            StoreOp::Delete => "delete",
            StoreOp::Copy => "copy",
            StoreOp::Abort => "abort",
        })
    }
}

/// One failed bucket operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store answered with an error (after retries, when it was transient).
    #[error("{op} {key:?}: {source}")]
    Store {
        /// What was being done.
        op: StoreOp,
        /// The key (or prefix, for a list).
        key: String,
        /// opendal's error, which carries the S3 error code and message (boxed: it is
        /// large, and errors travel through every `Result` of the replica side).
        #[source]
        source: Box<opendal::Error>,
    },
    /// The object is not there (HEAD, GET, DELETE of a missing key).
    #[error("{op} {key:?}: no such object")]
    NotFound {
        /// What was being done.
        op: StoreOp,
        /// The key.
        key: String,
    },
    /// Reading the SOURCE file failed.
    #[error("reading the source of {key:?}: {source}")]
    Source {
        /// The key it was being uploaded to.
        key: String,
        /// The filesystem error.
        #[source]
        source: io::Error,
    },
    /// The SOURCE file kept changing while it was uploaded; nothing was made visible.
    #[error("{key:?}: the source changed during each of {attempts} uploads; nothing was written")]
    KeptChanging {
        /// The key.
        key: String,
        /// How many uploads were tried.
        attempts: u32,
    },
    /// The cancellation token fired; any multipart upload was aborted.
    #[error("{key:?}: cancelled; the upload was aborted")]
    Cancelled {
        /// The key.
        key: String,
    },
    /// An upload was abandoned and its abort failed too: the store may keep the parts
    /// until a lifecycle rule or the next abort removes them.
    #[error("{key:?}: upload failed ({first}) and aborting it failed too: {abort}")]
    AbortFailed {
        /// The key.
        key: String,
        /// Why the upload stopped.
        first: Box<StoreError>,
        /// Why the abort failed.
        abort: Box<opendal::Error>,
    },
    /// The manifest object could not be parsed (it is then ignored, never trusted).
    #[error("manifest {key:?} line {line}: {why}")]
    Manifest {
        /// The manifest's key.
        key: String,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        why: &'static str,
    },
}

impl StoreError {
    /// Wraps an opendal error, telling "not found" apart.
    pub fn from_opendal(op: StoreOp, key: &str, source: opendal::Error) -> StoreError {
        if source.kind() == opendal::ErrorKind::NotFound {
            StoreError::NotFound { op, key: key.to_owned() }
        } else {
            StoreError::Store { op, key: key.to_owned(), source: Box::new(source) }
        }
    }

    /// True for a missing object.
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }
}

/// Why the bucket cannot be used, found by the start-up check before anything is written.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The store refused the key id or the signature.
    #[error(
        "s3://{bucket}: the store rejected the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY): {detail}"
    )]
    WrongCredentials {
        /// The bucket.
        bucket: String,
        /// The store's own words.
        detail: String,
    },
    /// The credentials are valid but may not list the bucket.
    #[error(
        "s3://{bucket}: access denied (the key is valid but may not list this bucket): {detail}"
    )]
    AccessDenied {
        /// The bucket.
        bucket: String,
        /// The store's own words.
        detail: String,
    },
    /// There is no such bucket.
    #[error("s3://{bucket}: no such bucket at {endpoint}")]
    NoSuchBucket {
        /// The bucket.
        bucket: String,
        /// Where it was looked for.
        endpoint: String,
    },
    /// Nothing answered (connection refused, DNS, TLS, timeout).
    #[error("s3://{bucket}: cannot reach the endpoint {endpoint}: {detail}")]
    Unreachable {
        /// The bucket.
        bucket: String,
        /// The endpoint.
        endpoint: String,
        /// The transport's error.
        detail: String,
    },
    /// Anything else the store said.
    #[error("s3://{bucket}: {source}")]
    Other {
        /// The bucket.
        bucket: String,
        /// The error.
        #[source]
        source: opendal::Error,
    },
    /// Building the client failed (a setting opendal refused).
    #[error("s3://{bucket}: {source}")]
    Client {
        /// The bucket.
        bucket: String,
        /// opendal's error.
        #[source]
        source: opendal::Error,
    },
}

/// The first line of an error's display, with its sources (one line, never a dump).
pub fn one_line(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s.lines().next().unwrap_or_default().to_owned()
}

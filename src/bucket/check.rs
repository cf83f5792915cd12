//! The start-up check: one LIST of at most one key under the prefix, with short timeouts
//! and few retries, whose failure is sorted into one clear line — wrong credentials, access
//! denied, no such bucket, endpoint unreachable. Runs before anything is written.

use std::time::Duration;

use super::client::{Client, Retries};
use super::config::{BucketUrl, S3Settings};
use super::error::StartupError;

/// S3 error codes that mean the key id, secret or token is wrong (not merely unauthorised).
/// ("Invalid signature" and "No such key" are how Garage words a wrong secret and an
/// unknown key id under its generic `AccessDenied` code.)
const CREDENTIAL_CODES: [&str; 6] = [
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "Invalid signature",
    "No such key",
];

/// Fails with the [`StartupError`] that says why the bucket cannot be used. With several
/// endpoints, an unreachable one is passed over for the next; the index of the first that
/// answered (the last one's error if none did).
pub async fn startup_check(url: &BucketUrl, settings: &S3Settings) -> Result<usize, StartupError> {
    let quick = Retries {
        max_times: 2,
        min_delay: Duration::from_millis(100),
        max_delay: Duration::from_millis(500),
        timeout: Duration::from_secs(10),
        io_timeout: Duration::from_secs(10),
    };
    let client = Client::new(url, settings, quick)?;
    let mut index = 0;
    loop {
        client.use_endpoint(index);
        match client.list_some(url.prefix.as_str(), 1).await {
            Ok(()) => return Ok(index),
            Err(e) => match classify(url, &client, e) {
                StartupError::Unreachable { endpoint, detail, .. }
                    if index + 1 < client.endpoint_count() =>
                {
                    tracing::warn!(
                        endpoint,
                        detail,
                        "bucket endpoint unreachable; trying the next"
                    );
                    index += 1;
                }
                other => return Err(other),
            },
        }
    }
}

fn classify(url: &BucketUrl, client: &Client, e: opendal::Error) -> StartupError {
    let bucket = url.bucket.clone();
    let endpoint = client.endpoint().to_owned();
    let text = super::error::one_line(&e);
    match e.kind() {
        opendal::ErrorKind::PermissionDenied
            if CREDENTIAL_CODES.iter().any(|c| text.contains(c)) =>
        {
            StartupError::WrongCredentials { bucket, detail: s3_code(&text) }
        }
        opendal::ErrorKind::PermissionDenied => {
            StartupError::AccessDenied { bucket, detail: s3_code(&text) }
        }
        _ if text.contains("NoSuchBucket") => StartupError::NoSuchBucket { bucket, endpoint },
        // opendal's transport and timeout layers; an S3 answer always carries a response.
        opendal::ErrorKind::Unexpected
            if text.contains("send http request") || text.contains("timeout") =>
        {
            StartupError::Unreachable { bucket, endpoint, detail: transport_cause(&e) }
        }
        _ => StartupError::Other { bucket, source: e },
    }
}

/// The S3 `Code` and `Message` out of opendal's rendering of the error body.
fn s3_code(text: &str) -> String {
    let field = |name: &str| {
        let start = text.find(&format!("{name}: \""))? + name.len() + 3;
        let len = text[start..].find('"')?;
        Some(text[start..start + len].to_owned())
    };
    match (field("code"), field("message")) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c,
        _ => text.chars().take(200).collect(),
    }
}

/// The innermost cause (e.g. "Connection refused"), which is what a person needs to read.
fn transport_cause(e: &opendal::Error) -> String {
    let mut last = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        last = inner.to_string();
        source = inner.source();
    }
    last.lines().next().unwrap_or_default().to_owned()
}

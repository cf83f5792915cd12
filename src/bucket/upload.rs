//! Uploading one SOURCE file so that the object appears only complete and only with the
//! content the file had from start to end of the upload.
//!
//! - Below [`UploadPolicy::multipart_threshold`]: the file is read whole, `fstat`ed again,
//!   and sent as one PUT (S3 makes a PUT visible atomically). Its ETag is its MD5.
//! - From the threshold up: a multipart upload of `part_size` parts, `concurrency` in
//!   flight. The MD5 is computed first (rclone's convention: it goes into the `md5chksum`
//!   metadata, which must be sent when the upload starts), then the parts are read and
//!   sent, then the file is `fstat`ed again; the upload is *completed* only if every part is
//!   in and the file did not change. On any error, on a change, or when the cancellation
//!   token fires, the upload is *aborted* (AbortMultipartUpload), so no part outlives it.
//! - A file that changed (size, mtime, ctime or inode moved between the two `fstat`s) is
//!   uploaded again, up to [`UploadPolicy::max_attempts`] times.
//!
//! Reads and `fstat`s run on tokio's blocking pool (`spawn_blocking`), never on an async
//! worker. Do not drop the returned future to cancel it — fire the token: only then does the
//! abort run.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use md5::{Digest, Md5};
use opendal::Buffer;
use opendal::raw::oio::Write as _;
use tokio_util::sync::CancellationToken;

use crate::checksum::Md5Sum;
use crate::entry::{Entry, Time};

use super::client::Client;
use super::error::{StoreError, StoreOp};
use super::meta::{ObjectMeta, S_IFREG};

/// Sizes and limits of uploads.
#[derive(Clone, Copy, Debug)]
pub struct UploadPolicy {
    /// Files of at least this many bytes go multipart.
    pub multipart_threshold: u64,
    /// Bytes per part (S3: at least 5 MiB except the last).
    pub part_size: usize,
    /// Parts in flight per upload.
    pub concurrency: usize,
    /// Uploads of a file that keeps changing before giving up.
    pub max_attempts: u32,
}

impl Default for UploadPolicy {
    fn default() -> Self {
        UploadPolicy {
            multipart_threshold: 16 << 20,
            part_size: 8 << 20,
            concurrency: 4,
            max_attempts: 3,
        }
    }
}

/// What an upload wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uploaded {
    /// The ETag the store returned.
    pub etag: String,
    /// Bytes written.
    pub size: u64,
    /// The metadata sent (MD5 included when multipart).
    pub meta: ObjectMeta,
    /// The content's MD5.
    pub md5: Md5Sum,
    /// Parts sent (0 for a single PUT).
    pub parts: usize,
}

/// Runs blocking filesystem work off the async workers.
async fn blocking<T: Send + 'static>(
    key: &str,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<T, StoreError> {
    let source = |source| StoreError::Source { key: key.to_owned(), source };
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(source),
        Err(join) => Err(source(io::Error::other(join.to_string()))),
    }
}

/// `fstat` plus the access and birth times rclone records.
fn stat(file: &File) -> io::Result<(Entry, Option<Time>, Option<Time>)> {
    use rustix::fs::{AtFlags, StatxFlags};
    let st = rustix::fs::statx(
        file,
        c"",
        AtFlags::EMPTY_PATH,
        StatxFlags::BASIC_STATS | StatxFlags::BTIME,
    )?;
    let btime = StatxFlags::from_bits_retain(st.stx_mask)
        .contains(StatxFlags::BTIME)
        .then(|| Time::from(st.stx_btime));
    Ok((Entry::from_statx(&st), Some(Time::from(st.stx_atime)), btime))
}

/// Reads up to `len` bytes at `offset` (fewer only at the end of the file).
fn read_at(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut n = 0;
    while n < len {
        match file.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(n);
    Ok(buf)
}

fn meta_of(e: &Entry, atime: Option<Time>, btime: Option<Time>) -> ObjectMeta {
    ObjectMeta {
        mode: S_IFREG | e.mode,
        uid: e.uid,
        gid: e.gid,
        mtime: e.mtime,
        atime,
        btime,
        md5: None,
    }
}

/// Uploads the open regular file `file` to `key` (see the module doc).
pub async fn put_file(
    client: &Client,
    key: &str,
    file: File,
    policy: &UploadPolicy,
    cancel: &CancellationToken,
) -> Result<Uploaded, StoreError> {
    let file = Arc::new(file);
    for _ in 0..policy.max_attempts.max(1) {
        if cancel.is_cancelled() {
            return Err(StoreError::Cancelled { key: key.to_owned() });
        }
        let f = Arc::clone(&file);
        let (before, atime, btime) = blocking(key, move || stat(&f)).await?;
        let meta = meta_of(&before, atime, btime);
        let done = if before.size < policy.multipart_threshold {
            single(client, key, &file, &before, meta, cancel).await?
        } else {
            multipart(client, key, &file, &before, meta, policy, cancel).await?
        };
        if let Some(uploaded) = done {
            return Ok(uploaded);
        }
        tracing::info!(key, "source changed during upload; uploading again");
    }
    Err(StoreError::KeptChanging { key: key.to_owned(), attempts: policy.max_attempts.max(1) })
}

/// True if the file is still what `before` described.
async fn unchanged(key: &str, file: &Arc<File>, before: &Entry) -> Result<bool, StoreError> {
    let f = Arc::clone(file);
    let (after, _, _) = blocking(key, move || stat(&f)).await?;
    Ok(after.unchanged_since(before))
}

async fn single(
    client: &Client,
    key: &str,
    file: &Arc<File>,
    before: &Entry,
    meta: ObjectMeta,
    cancel: &CancellationToken,
) -> Result<Option<Uploaded>, StoreError> {
    let (f, len) = (Arc::clone(file), usize::try_from(before.size).unwrap_or(usize::MAX));
    let bytes = blocking(key, move || read_at(&f, 0, len.saturating_add(1))).await?;
    if bytes.len() as u64 != before.size || !unchanged(key, file, before).await? {
        return Ok(None);
    }
    if cancel.is_cancelled() {
        return Err(StoreError::Cancelled { key: key.to_owned() });
    }
    let md5: Md5Sum = Md5::digest(&bytes).into();
    let size = bytes.len() as u64;
    let etag = client.put(key, bytes, meta.to_user_metadata()).await?;
    Ok(Some(Uploaded { etag, size, meta, md5, parts: 0 }))
}

async fn multipart(
    client: &Client,
    key: &str,
    file: &Arc<File>,
    before: &Entry,
    mut meta: ObjectMeta,
    policy: &UploadPolicy,
    cancel: &CancellationToken,
) -> Result<Option<Uploaded>, StoreError> {
    let (f, c) = (Arc::clone(file), cancel.clone());
    let md5 = blocking(key, move || crate::checksum::md5_fd(&*f, &|| c.is_cancelled())).await;
    if cancel.is_cancelled() {
        return Err(StoreError::Cancelled { key: key.to_owned() });
    }
    meta.md5 = Some(md5?);
    let mut w = client.writer(key, meta.to_user_metadata(), policy.concurrency.max(1))?;
    let put_err = |e| StoreError::from_opendal(StoreOp::Put, key, e);
    let (mut offset, mut parts) = (0u64, 0usize);
    let outcome: Result<bool, StoreError> = async {
        loop {
            if cancel.is_cancelled() {
                return Err(StoreError::Cancelled { key: key.to_owned() });
            }
            let (f, part) = (Arc::clone(file), part_size(policy, before.size));
            let chunk = blocking(key, move || read_at(&f, offset, part)).await?;
            if chunk.is_empty() {
                break;
            }
            offset += chunk.len() as u64;
            parts += 1;
            // A part in flight can take long on a slow link: a stop must not wait for it
            // (the service gives a pass two seconds), so the write races the token and
            // the upload is aborted below.
            tokio::select! {
                written = w.write(Buffer::from(chunk)) => written.map_err(put_err)?,
                () = cancel.cancelled() => return Err(StoreError::Cancelled { key: key.to_owned() }),
            }
        }
        Ok(offset == before.size && unchanged(key, file, before).await?)
    }
    .await;
    let complete = match outcome {
        Ok(true) if !cancel.is_cancelled() => tokio::select! {
            closed = w.close() => closed.map_err(put_err),
            () = cancel.cancelled() => Err(StoreError::Cancelled { key: key.to_owned() }),
        },
        Ok(true) => Err(StoreError::Cancelled { key: key.to_owned() }),
        Ok(false) => {
            abort_within(&mut w, key).await?;
            return Ok(None);
        }
        Err(e) => Err(e),
    };
    match complete {
        Ok(done) => {
            let etag = done.etag().unwrap_or_default().trim_matches('"').to_owned();
            let md5 = meta.md5.unwrap_or_default();
            Ok(Some(Uploaded { etag, size: offset, meta, md5, parts }))
        }
        Err(first) => match abort_error(&mut w, key).await {
            Ok(()) => Err(first),
            Err(abort) => Err(StoreError::AbortFailed {
                key: key.to_owned(),
                first: Box::new(first),
                abort: Box::new(abort),
            }),
        },
    }
}

/// How long an abort may take: it must end before the service gives up on a stopping pass
/// (after which the runtime under it is shut down), yet outlast a request on a slow link.
const ABORT_DEADLINE: std::time::Duration = std::time::Duration::from_millis(1500);

/// Aborts the multipart upload of `w` (its parts are dropped, AbortMultipartUpload sent),
/// within [`ABORT_DEADLINE`].
async fn abort_within(w: &mut opendal::raw::oio::Writer, key: &str) -> Result<(), StoreError> {
    abort_error(w, key).await.map_err(|e| StoreError::from_opendal(StoreOp::Abort, key, e))
}

async fn abort_error(w: &mut opendal::raw::oio::Writer, _key: &str) -> Result<(), opendal::Error> {
    match tokio::time::timeout(ABORT_DEADLINE, w.abort_dyn()).await {
        Ok(done) => done,
        Err(_) => Err(opendal::Error::new(opendal::ErrorKind::Unexpected, "abort timed out")),
    }
}

/// S3 allows 10,000 parts: a file larger than 10,000 × `part_size` gets larger parts (in
/// whole MiB) rather than failing after uploading most of itself.
fn part_size(policy: &UploadPolicy, size: u64) -> usize {
    const MAX_PARTS: u64 = 10_000;
    let needed = size.div_ceil(MAX_PARTS).div_ceil(1 << 20) << 20;
    policy.part_size.max(usize::try_from(needed).unwrap_or(usize::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_grow_so_that_no_file_needs_more_than_ten_thousand() {
        let policy = UploadPolicy::default();
        assert_eq!(part_size(&policy, 1 << 30), policy.part_size, "1 GiB keeps 8 MiB parts");
        let huge = 200u64 << 30; // 200 GiB
        let part = part_size(&policy, huge) as u64;
        assert!(huge.div_ceil(part) <= 10_000, "{part}-byte parts make too many");
        assert_eq!(part % (1 << 20), 0, "whole MiB");
    }
}

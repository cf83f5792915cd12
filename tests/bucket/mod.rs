//! The bucket REPLICA side against a real S3 store (Garage) and real rclone: the oracle's
//! own tests, the store primitives, round trips (write a tree with replicad's bucket
//! module, restore it with `rclone copy --metadata --links`, compare strictly), and the
//! binary's `--once` into a bucket (`once`, `scale`).
//!
//! The store-level tests write trees with [`mirror_tree`], a few lines that call the
//! module's API directly (one put per entry, then `finish_pass`); `once` and `scale` run
//! the engine through the binary.

mod cluster;
mod comparer;
mod live;
mod measure;
mod once;
mod roundtrip;
mod scale;
mod store;

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use replicad::bucket::meta::ObjectMeta;
use replicad::bucket::{
    BlockingBucket, Bucket, BucketUrl, Manifest, ObjectKind, Retries, S3Settings, UploadPolicy,
};
use replicad::entry::Time;
use replicad::relpath::RelPath;
use tokio_util::sync::CancellationToken;
use walkdir::WalkDir;

use crate::support::garage::{BUCKET, Garage};

/// A bucket client with the runtime it runs on.
pub struct TestBucket {
    pub bucket: BlockingBucket,
    pub url: BucketUrl,
    pub settings: S3Settings,
    rt: tokio::runtime::Runtime,
}

impl TestBucket {
    /// Runs an async call of the bucket's client on the bucket's own runtime.
    pub fn run<T>(&self, fut: impl std::future::Future<Output = T>) -> T {
        self.rt.block_on(fut)
    }
}

impl std::ops::Deref for TestBucket {
    type Target = BlockingBucket;
    fn deref(&self) -> &BlockingBucket {
        &self.bucket
    }
}

/// Connects to `s3://BUCKET/prefix` on `g` (start-up check included).
pub fn connect(g: &Garage, prefix: &str) -> TestBucket {
    connect_with(g, prefix, UploadPolicy::default())
}

/// Like [`connect`], with an upload policy.
pub fn connect_with(g: &Garage, prefix: &str, policy: UploadPolicy) -> TestBucket {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let url = BucketUrl::parse(format!("s3://{BUCKET}/{prefix}").as_ref()).unwrap().unwrap();
    let settings = S3Settings::from_env(g.lookup()).unwrap();
    let bucket = rt
        .block_on(Bucket::connect(&url, &settings, Retries::default(), policy))
        .unwrap_or_else(|e| panic!("connect: {e}\n{}", g.log()));
    TestBucket { bucket: BlockingBucket::new(bucket, rt.handle().clone()), url, settings, rt }
}

/// The metadata of an entry, from `lstat`.
pub fn meta_of(path: &Path) -> ObjectMeta {
    let md = fs::symlink_metadata(path).expect("lstat");
    ObjectMeta {
        mode: md.mode(),
        uid: md.uid(),
        gid: md.gid(),
        mtime: Time { sec: md.mtime(), nsec: md.mtime_nsec() as u32 },
        atime: None,
        btime: None,
        md5: None,
    }
}

/// Opens a SOURCE file the way the engine does (never following a link, never blocking
/// on a FIFO).
pub fn open_source(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .expect("open SOURCE file")
}

/// Writes every entry of `src` into the bucket (FIFOs, sockets, devices skipped), then
/// binds the writes into the manifest.
pub fn mirror_tree(b: &TestBucket, src: &Path) -> Manifest {
    let mut manifest = b.load_manifest().expect("load manifest");
    for e in WalkDir::new(src).follow_links(false).min_depth(1).sort_by_file_name() {
        let e = e.expect("walk");
        let rel = RelPath::new(e.path().strip_prefix(src).unwrap()).unwrap();
        let ft = e.file_type();
        let kind = if ft.is_dir() {
            ObjectKind::Dir
        } else if ft.is_symlink() {
            ObjectKind::Symlink
        } else if ft.is_file() {
            ObjectKind::File
        } else {
            continue;
        };
        let key = b.inner().key(&rel, kind).unwrap_or_else(|e| panic!("{rel}: {e}"));
        match kind {
            ObjectKind::File => {
                let cancel = CancellationToken::new();
                b.put_file(&key, open_source(e.path()), &mut manifest, &cancel).expect("put file");
            }
            ObjectKind::Symlink => {
                let target = fs::read_link(e.path()).unwrap();
                b.put_symlink(&key, target.as_os_str(), meta_of(e.path()), &mut manifest)
                    .expect("put link");
            }
            ObjectKind::Dir => {
                b.put_dir(&key, meta_of(e.path()), &mut manifest).expect("put marker");
            }
        }
    }
    b.finish_pass(&mut manifest).expect("finish pass");
    manifest
}

/// How many multipart uploads rclone sees in progress in `bucket`.
pub fn multipart_uploads(g: &Garage, bucket: &str) -> usize {
    let out = g.rclone(&[
        "backend".as_ref(),
        "list-multipart-uploads".as_ref(),
        format!("G:{bucket}").as_ref(),
    ]);
    assert!(
        out.status.success(),
        "rclone list-multipart-uploads: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).matches("\"UploadId\"").count()
}

//! The REPLICA side in an S3-compatible bucket (`s3://BUCKET[/PREFIX]`): the store
//! requests and the mapping that `replica/bucket` puts behind the engine's seam. Knows
//! nothing of the engine, the walker, the queue or `decide`: it maps SOURCE entries to
//! objects and performs the store requests, safely.
//!
//! | file | holds |
//! |---|---|
//! | [`config`] | `s3://` URL parsing; the standard `AWS_*` variables |
//! | [`check`] | the start-up check: one clear line per way a bucket is unusable |
//! | [`encode`] | rclone's name encoding (byte-exact port), so rclone restores every name |
//! | [`mapping`] | entry → key (`NAME.rclonelink`, `DIR/` markers), key → entry, collisions |
//! | [`meta`] | object metadata exactly as rclone writes it (`mtime`, `mode`, `uid`, `gid`, …) |
//! | [`etag`] | which MD5 an object claims, for `--checksum` |
//! | [`manifest`] | the quick check: records trusted only while LIST shows the same object |
//! | [`client`] | the opendal S3 client: retries, timeouts, one method per request |
//! | [`upload`] | atomic uploads: one PUT, or multipart completed only whole, else aborted |
//! | [`store`] | [`Bucket`]: the operations the engine seam will call |
//! | [`blocking`] | [`BlockingBucket`]: the same for the engine's rayon threads |
//! | [`error`] | errors naming the operation and the key; start-up verdicts |
//!
//! # Why opendal, not object_store
//!
//! Both are well kept Apache crates with AWS SigV4 signing, retries and `AWS_*` handling.
//! The deciding points, checked in their sources (opendal 0.59.5, object_store 0.14.2):
//!
//! - **Keys.** rclone's conventions need keys that end in `/` (directory markers) and keys
//!   with control characters (S3's rclone encoding leaves them as they are).
//!   `object_store::path::Path` can hold neither: "Paths do not contain leading or trailing
//!   `/`" and "do not contain any ASCII control characters"; `Path::from` percent-encodes
//!   instead, which is not rclone's key. opendal's service layer passes a key byte for byte
//!   (its `Operator` front door trims white space at the ends of a key and refuses writes to
//!   `…/`, so [`client`] calls the public `opendal::raw` service API under the layers).
//! - **User metadata on put**: both (`WriteOptions::user_metadata`; `Attributes`).
//! - **Multipart with explicit abort**: both; opendal's writer turns each `write` into a
//!   part and exposes `abort()` (AbortMultipartUpload), and falls back to one PUT for a
//!   single write — exactly the shape of [`upload`].
//! - **Server-side copy**: both (CopyObject).
//! - **Conditional requests**: both (`If-Match`/`If-None-Match` on read, stat, write).
//! - **Errors**: opendal classifies S3 codes (`SlowDown`, 5xx, `RequestTimeout` → temporary;
//!   `NoSuchBucket`; 403) once, so retries and the start-up check need no string guessing
//!   beyond the code.
//! - **`AWS_*` variables**: object_store reads more of them by itself; replicad reads the
//!   few it supports in [`config`] and passes them explicitly, which also keeps tests
//!   independent of the process environment.
//!
//! # Sync or async
//!
//! The API is async ([`Bucket`], on tokio; SOURCE reads go to `spawn_blocking`), with a
//! small blocking wrapper ([`BlockingBucket`], `Handle::block_on`) for the engine's rayon
//! threads.

pub mod blocking;
pub mod check;
pub mod client;
pub mod config;
pub mod encode;
pub mod error;
pub mod etag;
pub mod manifest;
pub mod many;
pub mod mapping;
pub mod meta;
pub mod store;
pub mod upload;

pub use blocking::BlockingBucket;
pub use client::{Head, Listed, Retries};
pub use config::{BucketUrl, ConfigError, S3Settings};
pub use error::{StartupError, StoreError, StoreOp};
pub use manifest::Manifest;
pub use mapping::{MapError, ObjectKind, Prefix};
pub use meta::ObjectMeta;
pub use store::{Bucket, Known, Listing, Object};
pub use upload::{UploadPolicy, Uploaded};

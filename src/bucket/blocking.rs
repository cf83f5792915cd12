//! The bucket side for plain threads: each call blocks the calling thread on a tokio
//! runtime's handle. This is how the engine's rayon workers (which are not tokio workers)
//! will use [`Bucket`]; the network work runs on the runtime, SOURCE reads on its blocking
//! pool. Never call it from inside an async task: `block_on` there is a programming error
//! and tokio panics with "Cannot start a runtime from within a runtime".

use std::ffi::OsStr;
use std::fs::File;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use super::client::{Head, Listed};
use super::error::StoreError;
use super::manifest::Manifest;
use super::meta::ObjectMeta;
use super::store::{Bucket, Known, Listing};
use super::upload::Uploaded;

/// [`Bucket`] with blocking methods.
#[derive(Clone, Debug)]
pub struct BlockingBucket {
    rt: Handle,
    bucket: Bucket,
}

impl BlockingBucket {
    /// Wraps `bucket`; calls run on `rt`.
    pub fn new(bucket: Bucket, rt: Handle) -> BlockingBucket {
        BlockingBucket { rt, bucket }
    }

    /// The async bucket inside.
    pub fn inner(&self) -> &Bucket {
        &self.bucket
    }

    /// See [`Bucket::list`].
    pub fn list(&self) -> Result<Listing, StoreError> {
        self.rt.block_on(self.bucket.list())
    }

    /// See [`Bucket::list_scoped`].
    pub fn list_scoped(&self, paths: &[&crate::relpath::RelPath]) -> Result<Listing, StoreError> {
        self.rt.block_on(self.bucket.list_scoped(paths))
    }

    /// See [`Bucket::attrs`].
    pub fn attrs(&self, object: &Listed, manifest: &mut Manifest) -> Result<Known, StoreError> {
        self.rt.block_on(self.bucket.attrs(object, manifest))
    }

    /// See [`Bucket::head`].
    pub fn head(&self, key: &str) -> Result<Head, StoreError> {
        self.rt.block_on(self.bucket.head(key))
    }

    /// See [`Bucket::put_file`].
    pub fn put_file(
        &self,
        key: &str,
        file: File,
        manifest: &mut Manifest,
        cancel: &CancellationToken,
    ) -> Result<Uploaded, StoreError> {
        self.rt.block_on(self.bucket.put_file(key, file, manifest, cancel))
    }

    /// See [`Bucket::put_symlink`].
    pub fn put_symlink(
        &self,
        key: &str,
        target: &OsStr,
        meta: ObjectMeta,
        manifest: &mut Manifest,
    ) -> Result<String, StoreError> {
        self.rt.block_on(self.bucket.put_symlink(key, target, meta, manifest))
    }

    /// See [`Bucket::put_dir`].
    pub fn put_dir(
        &self,
        key: &str,
        meta: ObjectMeta,
        manifest: &mut Manifest,
    ) -> Result<String, StoreError> {
        self.rt.block_on(self.bucket.put_dir(key, meta, manifest))
    }

    /// See [`Bucket::read_symlink`].
    pub fn read_symlink(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        self.rt.block_on(self.bucket.read_symlink(key))
    }

    /// See [`Bucket::remove`].
    pub fn remove(&self, key: &str, manifest: &mut Manifest) -> Result<(), StoreError> {
        self.rt.block_on(self.bucket.remove(key, manifest))
    }

    /// See [`Bucket::copy`].
    pub fn copy(&self, from: &str, to: &str) -> Result<String, StoreError> {
        self.rt.block_on(self.bucket.copy(from, to))
    }

    /// See [`Bucket::for_each`].
    pub fn for_each(
        &self,
        what: super::many::Each,
        pairs: &[(String, String)],
        jobs: usize,
        cancel: &CancellationToken,
    ) -> Result<Vec<String>, StoreError> {
        self.rt.block_on(self.bucket.for_each(what, pairs, jobs, cancel))
    }

    /// See [`Bucket::load_manifest`].
    pub fn load_manifest(&self) -> Result<Manifest, StoreError> {
        self.rt.block_on(self.bucket.load_manifest())
    }

    /// See [`Bucket::finish_pass`].
    pub fn finish_pass(&self, manifest: &mut Manifest) -> Result<Vec<Listed>, StoreError> {
        self.rt.block_on(self.bucket.finish_pass(manifest))
    }
}

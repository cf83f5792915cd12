//! The bucket replica's reads that take bookkeeping: the manifest loaded once, an
//! object's key, replicad's own writes noted, and an object's metadata — from the
//! manifest while LIST still shows that very object (or replicad's own write of it),
//! else from a HEAD. Never holds the manifest's lock across a request.

use std::ffi::CStr;
use std::io;
use std::sync::atomic::Ordering;

use super::view::{Child, entry_of};
use super::{BucketDir, BucketReplica, io_err, lock, map_err, name_of, unusable};
use crate::bucket::manifest::Written;
use crate::bucket::meta::ObjectMeta;
use crate::bucket::{Listed, ObjectKind};
use crate::entry::Entry;
use crate::error::GuardTrip;
use crate::relpath::RelPath;

impl BucketReplica {
    /// Loads the manifest the first time; a failed GET is a guard trip (a missing or
    /// unreadable manifest is an empty one: a cache that costs HEADs).
    pub(super) fn load_manifest(&self) -> Result<(), GuardTrip> {
        if lock(&self.manifest).is_none() {
            let loaded = self.bucket.load_manifest().map_err(unusable)?;
            *lock(&self.manifest) = Some(loaded);
        }
        Ok(())
    }

    pub(super) fn key(&self, rel: &RelPath, kind: ObjectKind) -> io::Result<String> {
        self.bucket.inner().key(rel, kind).map_err(map_err)
    }

    /// Records replicad's own write of `key` (bound to a Last-Modified at the end of the
    /// pass).
    pub(super) fn wrote(&self, key: &str, written: Written) {
        if let Some(m) = lock(&self.manifest).as_mut() {
            m.note_write(key, written);
        }
        lock(&self.written).insert(key.to_owned());
    }

    /// The metadata of a listed object: remembered while LIST shows the same object, else
    /// from a HEAD (remembered for next time). `None`: not metadata replicad wrote.
    pub(super) fn meta(&self, listed: &Listed) -> io::Result<Option<ObjectMeta>> {
        let known =
            lock(&self.manifest).as_ref().and_then(|m| m.trusted_or_written(listed).cloned());
        if let Some(meta) = known {
            return Ok(Some(meta));
        }
        self.heads.fetch_add(1, Ordering::Relaxed);
        let head = self.bucket.head(&listed.key).map_err(io_err)?;
        let meta = ObjectMeta::from_user_metadata(
            head.user_metadata.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        );
        if let Some(meta) = &meta
            && head.etag == listed.etag
            && head.size == listed.size
            && let Some(m) = lock(&self.manifest).as_mut()
        {
            m.record_head(listed, meta.clone());
        }
        Ok(meta)
    }

    pub(super) fn entry(&self, child: &Child) -> io::Result<Entry> {
        let Some(listed) = &child.listed else {
            return Ok(entry_of(child.kind, 0, None));
        };
        let meta = self.meta(listed)?;
        Ok(entry_of(child.kind, listed.size, meta.as_ref()))
    }

    pub(super) fn child<'v>(&self, dir: &'v BucketDir, name: &CStr) -> io::Result<&'v Child> {
        dir.view.child(&dir.rel, name).ok_or_else(|| {
            let rel = dir.rel.join(name_of(name));
            io::Error::new(io::ErrorKind::NotFound, format!("{rel}: no object"))
        })
    }

    pub(super) fn object<'v>(&self, dir: &'v BucketDir, name: &CStr) -> io::Result<&'v Listed> {
        self.child(dir, name)?
            .listed
            .as_ref()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }
}

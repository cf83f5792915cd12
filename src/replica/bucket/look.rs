//! The bucket replica's looking: what an object stands for as an [`Entry`], with the
//! metadata the manifest remembers while LIST still shows the very same object (size,
//! ETag, Last-Modified), else with a HEAD whose answer is remembered for the next pass. A
//! no-op pass over a trusted manifest makes no request here at all.

use std::io;
use std::sync::atomic::Ordering;

use super::view::{Child, entry_of};
use super::{BucketReplica, io_err, lock};
use crate::bucket::Listed;
use crate::bucket::meta::ObjectMeta;
use crate::entry::Entry;

impl BucketReplica {
    /// The metadata of a listed object: remembered while LIST shows the same object, else
    /// from a HEAD (remembered for next time). `None`: not metadata replicad wrote.
    pub(super) fn meta(&self, listed: &Listed) -> io::Result<Option<ObjectMeta>> {
        if let Some(meta) = lock(&self.manifest).as_ref().and_then(|m| m.trusted(listed)) {
            return Ok(Some(meta.clone()));
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

    /// The entry `child` stands for (a directory without a marker: one no SOURCE
    /// directory equals, so its marker is written).
    pub(super) fn entry(&self, child: &Child) -> io::Result<Entry> {
        let Some(listed) = &child.listed else {
            return Ok(entry_of(child.kind, 0, None));
        };
        let meta = self.meta(listed)?;
        Ok(entry_of(child.kind, listed.size, meta.as_ref()))
    }
}

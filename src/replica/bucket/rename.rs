//! A SOURCE rename followed in the bucket without moving a byte through replicad: every
//! object of the old name (a file's, a link's, or a directory's marker and everything
//! below it) is copied server-side (CopyObject keeps the metadata) to its new key, then
//! the old keys are deleted — at most `--jobs` requests at once, progress in the log.
//!
//! Only objects replicad wrote and nobody changed since (the manifest's record, or
//! replicad's own write of it, still matches LIST's ETag and size) are moved; if any is
//! not, nothing is, and the engine falls back to reconciling both ends (an upload of the
//! new name, a removal of the old). A copy that fails leaves the old keys in place: the
//! same fallback then uploads what is missing.

use std::ffi::CStr;
use std::io;

use tracing::info;

use super::view::Child;
use super::{BucketDir, BucketReplica, io_err, lock, name_of};
use crate::bucket::ObjectKind;
use crate::bucket::manifest::Written;
use crate::bucket::many::Each;
use crate::bucket::meta::ObjectMeta;
use crate::relpath::RelPath;

/// Below this many objects a directory's move is not worth a progress line.
const SAY_ABOVE: usize = 100;

impl BucketReplica {
    pub(super) fn rename_objects(
        &self,
        from_dir: &BucketDir,
        from: &CStr,
        to_dir: &BucketDir,
        to: &CStr,
    ) -> io::Result<()> {
        let from_rel = from_dir.rel.join(name_of(from));
        let to_rel = to_dir.rel.join(name_of(to));
        let top = from_dir.view.child(&from_dir.rel, from).cloned().ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("{from_rel}: no object"))
        })?;
        let mut moving: Vec<(RelPath, Child)> = Vec::new();
        if top.kind == ObjectKind::Dir {
            moving.extend(from_dir.view.below(&from_rel));
        }
        moving.push((from_rel.clone(), top));
        // (old key, new key, what was written) for every object there is.
        let mut plan = Vec::new();
        for (rel, child) in &moving {
            let Some(listed) = &child.listed else { continue };
            let Some(meta) = self.ours(listed) else {
                let why =
                    format!("{}: not the object replicad wrote; uploading instead", listed.key);
                return Err(io::Error::other(why));
            };
            let rest = rel.as_path().strip_prefix(from_rel.as_path()).unwrap_or(rel.as_path());
            let new_rel = match rest.as_os_str().is_empty() {
                true => to_rel.clone(),
                false => {
                    RelPath::new(&to_rel.as_path().join(rest)).unwrap_or_else(|| to_rel.clone())
                }
            };
            let new_key = self.key(&new_rel, child.kind)?;
            plan.push((listed.key.clone(), new_key, listed.size, meta));
        }
        let pairs: Vec<(String, String)> =
            plan.iter().map(|(old, new, _, _)| (old.clone(), new.clone())).collect();
        let loud = pairs.len() > SAY_ABOVE;
        if loud {
            info!(objects = pairs.len(), from = %from_rel, to = %to_rel, "bucket: moving a directory by server-side copies");
        }
        let etags =
            self.bucket.for_each(Each::Copy, &pairs, self.jobs, &self.cancel).map_err(io_err)?;
        for ((_, new, size, meta), etag) in plan.iter().zip(etags) {
            self.wrote(new, Written { size: *size, etag, meta: meta.clone() });
        }
        self.bucket.for_each(Each::Delete, &pairs, self.jobs, &self.cancel).map_err(io_err)?;
        if let Some(m) = lock(&self.manifest).as_mut() {
            for (old, _) in &pairs {
                m.forget(old);
            }
        }
        if loud {
            info!(objects = pairs.len(), to = %to_rel, "bucket: directory moved; no byte uploaded");
        }
        Ok(())
    }

    /// The metadata replicad wrote with `listed`, if the object is still that write.
    fn ours(&self, listed: &crate::bucket::Listed) -> Option<ObjectMeta> {
        lock(&self.manifest).as_ref().and_then(|m| m.trusted_or_written(listed).cloned())
    }
}

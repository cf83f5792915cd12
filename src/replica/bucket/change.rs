//! The bucket replica's changes that take more than one request or some bookkeeping:
//! uploading a SOURCE file, making a name (and refusing one rclone could not restore
//! beside its twin), writing a link object, removing a directory's keys, and the end of a
//! pass (strays, the manifest). Every request runs without the manifest's lock held.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::Ordering;

use tracing::{debug, info, warn};

use super::view::{Child, meta_for};
use super::{BucketDir, BucketReplica, io_err, lock, name_of};
use crate::bucket::manifest::Written;
use crate::bucket::mapping::LINK_SUFFIX;
use crate::bucket::{Manifest, ObjectKind, StoreError};
use crate::entry::{Entry, Kind};
use crate::error::EntryErrorKind;
use crate::ops;
use crate::relpath::RelPath;
use crate::replica::{PassEnd, Removal, Removed};

impl BucketReplica {
    /// Uploads SOURCE's file `name` (opened from `src_dir`, never through a link) to its
    /// key; a file that kept changing is the engine's `ChangedDuringCopy`.
    pub(super) fn upload(
        &self,
        src_dir: BorrowedFd<'_>,
        dir: &BucketDir,
        name: &CStr,
    ) -> Result<u64, EntryErrorKind> {
        let key = self.key(&dir.rel.join(name_of(name)), ObjectKind::File)?;
        // As the local copy does: gone is benign, unreadable is an error, another type
        // than a file (swapped in since the stat) is a change under the copy.
        let file = ops::open_source_file(src_dir, name).map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT) => EntryErrorKind::Vanished(e),
            _ => EntryErrorKind::Io(e),
        })?;
        if Entry::stat_fd(&file)?.kind != Kind::File {
            return Err(EntryErrorKind::ChangedDuringCopy);
        }
        let mut scratch = Manifest::default();
        let up = match self.bucket.put_file(&key, file, &mut scratch, &self.cancel) {
            Ok(up) => up,
            Err(StoreError::KeptChanging { .. }) => return Err(EntryErrorKind::ChangedDuringCopy),
            Err(StoreError::Cancelled { .. }) => return Err(EntryErrorKind::Cancelled),
            Err(StoreError::Source { source, .. }) => return Err(EntryErrorKind::Io(source)),
            Err(e) => return Err(EntryErrorKind::Io(io_err(e))),
        };
        self.wrote(&key, Written { size: up.size, etag: up.etag, meta: up.meta });
        self.drop_other(dir, name, ObjectKind::File)?;
        Ok(up.size)
    }

    /// After `name` was written as `kind`: the object that stood for `name` as the other
    /// non-directory kind (a symlink replaced by a file, or the reverse) has another key,
    /// and goes now — locally the rename would have replaced it.
    pub(super) fn drop_other(
        &self,
        dir: &BucketDir,
        name: &CStr,
        kind: ObjectKind,
    ) -> io::Result<()> {
        match dir.view.child(&dir.rel, name) {
            Some(Child { kind: k, listed: Some(old) }) if *k != kind && *k != ObjectKind::Dir => {
                self.remove_key(&old.key)
            }
            _ => Ok(()),
        }
    }

    /// Notes that `name` in `dir` is being made as `kind`; refuses a name already there
    /// and a symlink/directory pair that rclone would restore under one name.
    pub(super) fn make(&self, dir: &BucketDir, name: &CStr, kind: ObjectKind) -> io::Result<()> {
        let mut made = lock(&dir.made);
        let here = made.entry(dir.rel.clone()).or_default();
        let seen = |n: &[u8], k: ObjectKind| {
            let Ok(n) = CString::new(n) else { return false };
            here.get(&n) == Some(&k) || dir.view.child(&dir.rel, &n).is_some_and(|c| c.kind == k)
        };
        let bytes = name.to_bytes();
        let twin = match kind {
            ObjectKind::Symlink => seen(&[bytes, LINK_SUFFIX.as_bytes()].concat(), ObjectKind::Dir),
            ObjectKind::Dir => bytes
                .strip_suffix(LINK_SUFFIX.as_bytes())
                .is_some_and(|stem| seen(stem, ObjectKind::Symlink)),
            ObjectKind::File => false,
        };
        if twin {
            let why =
                "a symlink x and a directory x.rclonelink would be one name after rclone's restore";
            return Err(io::Error::new(io::ErrorKind::InvalidInput, why));
        }
        // A non-directory listed here was removed by the engine to make way just before.
        let is_dir = |c: &Child| c.kind == ObjectKind::Dir;
        if kind == ObjectKind::Dir
            && (here.get(name) == Some(&ObjectKind::Dir)
                || dir.view.child(&dir.rel, name).is_some_and(is_dir))
        {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        here.insert(name.to_owned(), kind);
        Ok(())
    }

    /// Writes the `.rclonelink` object of `rel` with `target` and `src`'s attributes.
    pub(super) fn put_link(&self, rel: &RelPath, target: &[u8], src: &Entry) -> io::Result<()> {
        let key = self.key(rel, ObjectKind::Symlink)?;
        let meta = meta_for(src);
        let mut scratch = Manifest::default();
        let etag = self
            .bucket
            .put_symlink(&key, OsStr::from_bytes(target), meta.clone(), &mut scratch)
            .map_err(io_err)?;
        self.wrote(&key, Written { size: target.len() as u64, etag, meta });
        Ok(())
    }

    pub(super) fn remove_key(&self, key: &str) -> io::Result<()> {
        self.bucket.remove(key, &mut Manifest::default()).map_err(io_err)?;
        if let Some(m) = lock(&self.manifest).as_mut() {
            m.forget(key);
        }
        Ok(())
    }

    /// Deletes the keys at and below the directory `name` of `dir`, from the pass's
    /// listing, keeping excluded entries and the markers above them.
    pub(super) fn remove_below(
        &self,
        dir: &BucketDir,
        name: &CStr,
        rules: &Removal<'_>,
    ) -> io::Result<Removed> {
        let top = dir.rel.join(name_of(name));
        // Excluded: the entry, or a directory on its way below `top`, matches `keep`.
        let excluded = |path: &RelPath, is_dir: bool| {
            let Some(keep) = rules.keep else { return false };
            let mut p = path.clone();
            let mut p_is_dir = is_dir;
            while p != top && !p.is_root() {
                if keep(&p, p_is_dir) {
                    return true;
                }
                p = p.parent().unwrap_or_default();
                p_is_dir = true;
            }
            false
        };
        let mut removed = Removed::default();
        let mut kept: Vec<RelPath> = Vec::new();
        // Descendants come before their directory: a directory holding a kept entry stays.
        for (path, child) in dir.view.below(&top) {
            if (rules.stop)() {
                return Err(io::Error::from(io::ErrorKind::Interrupted));
            }
            let is_dir = child.kind == ObjectKind::Dir;
            if excluded(&path, is_dir) || (is_dir && kept.iter().any(|k| k.starts_with(&path))) {
                removed.kept += 1;
                kept.push(path);
                continue;
            }
            if let Some(listed) = child.listed.as_ref().filter(|_| !rules.dry_run) {
                self.remove_key(&listed.key)?;
            }
            removed.entries += 1;
        }
        if removed.kept == 0
            && !rules.dry_run
            && let Some(marker) = &self.child(dir, name)?.listed
        {
            self.remove_key(&marker.key)?;
        }
        Ok(removed)
    }

    /// The end of a pass: strays go after a clean one (a dry run only says so), then the
    /// manifest is saved if this pass wrote or learned anything. The strays removed.
    pub(super) fn finish(&self, root: &BucketDir, end: &PassEnd<'_>) -> io::Result<u64> {
        let mut removed = 0;
        if end.clean {
            let written = lock(&self.written).clone();
            let prefix = self.bucket.inner().prefix().as_str().to_owned();
            for stray in &root.view.strays {
                let key = &stray.listed.key;
                let is_dir = key.ends_with('/');
                let rel = stray.rel.clone().or_else(|| {
                    let rest = key.strip_prefix(&prefix)?.trim_matches('/');
                    RelPath::new(Path::new(rest))
                });
                if written.contains(key) || rel.is_some_and(|r| (end.keep)(&r, is_dir)) {
                    continue;
                }
                if root.view.ambiguous.contains(key) {
                    warn!(key = %key, "LIST shows this key twice (its XML cannot tell two names apart); not removed");
                    continue;
                }
                if !end.dry_run {
                    self.remove_key(key)?;
                }
                info!(action = %"remove", path = %key, kind = %"stray");
                removed += 1;
            }
        }
        if end.dry_run {
            return Ok(removed);
        }
        let heads = self.heads.load(Ordering::Relaxed);
        debug!(
            objects = root.view.objects(),
            heads, "bucket: objects listed, HEADs made this pass"
        );
        let mut manifest = lock(&self.manifest).take().unwrap_or_default();
        // Nothing written or learned: the manifest stands as loaded, and the LIST that
        // would bind writes is not needed (a no-op pass stays at ⌈N/1000⌉ LISTs).
        if lock(&self.written).is_empty() && !manifest.is_dirty() {
            *lock(&self.manifest) = Some(manifest);
            return Ok(removed);
        }
        let saved = self.bucket.finish_pass(&mut manifest);
        *lock(&self.manifest) = Some(manifest);
        saved.map(|_| removed).map_err(io_err)
    }
}

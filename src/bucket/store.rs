//! `Bucket`: the replica side's operations on an S3 prefix, in SOURCE terms (relative
//! paths, kinds, metadata) — what the engine seam will call. Joins the mapping, the
//! client, the uploader and the manifest; holds no policy about *when* to call them.
//!
//! All methods are async and must run inside a tokio runtime; [`super::blocking`] wraps
//! them for callers on plain threads (the engine's rayon pool).

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;

use tokio_util::sync::CancellationToken;

use crate::relpath::RelPath;

use super::client::{Client, Head, Listed, Retries};
use super::config::{BucketUrl, S3Settings};
use super::error::{StartupError, StoreError};
use super::manifest::{Manifest, Written};
use super::mapping::{self, Decoded, MapError, ObjectKind, Prefix};
use super::meta::ObjectMeta;
use super::upload::{self, UploadPolicy, Uploaded};

/// One object of the mirror, as LIST shows it and the mapping reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Object {
    /// The SOURCE path it stands for.
    pub rel: RelPath,
    /// How it is stored.
    pub kind: ObjectKind,
    /// The key is exactly the one replicad writes for (`rel`, `kind`); if not, the object
    /// is a stray to delete by its key.
    pub canonical: bool,
    /// What LIST said.
    pub listed: Listed,
}

/// A whole listing of the prefix.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    /// Objects that decode to SOURCE paths, in key order.
    pub objects: Vec<Object>,
    /// Keys under the prefix that no SOURCE path maps to (strays to delete by key).
    pub foreign: Vec<Listed>,
    /// Every listed object, replicad's own included, in key order (for the manifest).
    pub raw: Vec<Listed>,
}

/// What the bucket says about one object's attributes, and how replicad learned it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Known {
    /// From the manifest, confirmed by LIST: no request was made.
    Remembered(ObjectMeta),
    /// From a HEAD just now.
    Headed(ObjectMeta),
    /// HEAD shows metadata replicad did not write (or none): rewrite the object.
    Foreign,
}

/// The mirror's prefix in one bucket.
#[derive(Clone, Debug)]
pub struct Bucket {
    client: Client,
    prefix: Prefix,
    policy: UploadPolicy,
}

impl Bucket {
    /// Builds the client and runs the start-up check (one LIST of at most one key):
    /// wrong credentials, a missing bucket and an unreachable endpoint each come back as
    /// their own [`StartupError`]; nothing is written.
    pub async fn connect(
        url: &BucketUrl,
        settings: &S3Settings,
        retries: Retries,
        policy: UploadPolicy,
    ) -> Result<Bucket, StartupError> {
        let answered = super::check::startup_check(url, settings).await?;
        let client = Client::new(url, settings, retries)?;
        client.use_endpoint(answered);
        Ok(Bucket { client, prefix: url.prefix.clone(), policy })
    }

    /// The prefix.
    pub fn prefix(&self) -> &Prefix {
        &self.prefix
    }

    /// The underlying client (tests, the manifest).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The key of `rel` stored as `kind`.
    pub fn key(&self, rel: &RelPath, kind: ObjectKind) -> Result<String, MapError> {
        mapping::key_for(&self.prefix, rel, kind)
    }

    /// Lists the whole prefix (⌈N/1000⌉ requests). A failure is an error, never empty.
    pub async fn list(&self) -> Result<Listing, StoreError> {
        let raw = self.client.list(self.prefix.as_str()).await?;
        Ok(self.listing_of(raw))
    }

    /// What event work on `paths` needs, not the whole prefix: for each path, its parent's
    /// marker (or first key, which proves the directory), its file and link keys, and
    /// everything under its directory key — 3 one-key LISTs plus ⌈n/1000⌉ for the n
    /// objects below it. A failure is an error, never empty.
    pub async fn list_scoped(&self, paths: &[&RelPath]) -> Result<Listing, StoreError> {
        let mut raw = std::collections::BTreeMap::new();
        for rel in paths.iter().filter(|r| !r.is_root()) {
            let parent = rel.parent().unwrap_or_default();
            let firsts = [
                (!parent.is_root()).then(|| self.key(&parent, ObjectKind::Dir)),
                Some(self.key(rel, ObjectKind::File)),
                Some(self.key(rel, ObjectKind::Symlink)),
            ];
            // A name the mapping cannot hold has no object to find.
            for key in firsts.into_iter().flatten().filter_map(Result::ok) {
                if let Some(l) = self.client.list_first(&key).await? {
                    raw.insert(l.key.clone(), l);
                }
            }
            if let Ok(dir) = self.key(rel, ObjectKind::Dir) {
                for l in self.client.list_with_marker(&dir).await? {
                    raw.insert(l.key.clone(), l);
                }
            }
        }
        Ok(self.listing_of(raw.into_values().collect()))
    }

    fn listing_of(&self, raw: Vec<Listed>) -> Listing {
        let mut listing = Listing::default();
        for l in &raw {
            match mapping::decode_key(&self.prefix, &l.key) {
                Decoded::Entry { rel, kind, canonical } => {
                    listing.objects.push(Object { rel, kind, canonical, listed: l.clone() })
                }
                Decoded::Reserved => {}
                Decoded::Foreign => listing.foreign.push(l.clone()),
            }
        }
        listing.raw = raw;
        listing
    }

    /// The attributes of `object`: from the manifest if LIST still shows the object the
    /// record describes, else from a HEAD (recorded in the manifest for next time).
    pub async fn attrs(
        &self,
        object: &Listed,
        manifest: &mut Manifest,
    ) -> Result<Known, StoreError> {
        if let Some(meta) = manifest.trusted(object) {
            return Ok(Known::Remembered(meta.clone()));
        }
        let head = self.client.head(&object.key).await?;
        match ObjectMeta::from_user_metadata(
            head.user_metadata.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        ) {
            Some(meta) => {
                if head.etag == object.etag && head.size == object.size {
                    manifest.record_head(object, meta.clone());
                }
                Ok(Known::Headed(meta))
            }
            None => Ok(Known::Foreign),
        }
    }

    /// HEAD one key.
    pub async fn head(&self, key: &str) -> Result<Head, StoreError> {
        self.client.head(key).await
    }

    /// Uploads the open regular file `file` as `rel` (see [`upload`]); notes the write in
    /// `manifest`.
    pub async fn put_file(
        &self,
        key: &str,
        file: File,
        manifest: &mut Manifest,
        cancel: &CancellationToken,
    ) -> Result<Uploaded, StoreError> {
        let up = upload::put_file(&self.client, key, file, &self.policy, cancel).await?;
        manifest.note_write(
            key,
            Written { size: up.size, etag: up.etag.clone(), meta: up.meta.clone() },
        );
        Ok(up)
    }

    /// Writes the `NAME.rclonelink` object holding `target`.
    pub async fn put_symlink(
        &self,
        key: &str,
        target: &OsStr,
        meta: ObjectMeta,
        manifest: &mut Manifest,
    ) -> Result<String, StoreError> {
        let body = target.as_bytes().to_vec();
        let size = body.len() as u64;
        let etag = self.client.put(key, body, meta.to_user_metadata()).await?;
        manifest.note_write(key, Written { size, etag: etag.clone(), meta });
        Ok(etag)
    }

    /// Writes the `DIR/` marker with the directory's metadata.
    pub async fn put_dir(
        &self,
        key: &str,
        meta: ObjectMeta,
        manifest: &mut Manifest,
    ) -> Result<String, StoreError> {
        let etag = self.client.put(key, Vec::new(), meta.to_user_metadata()).await?;
        manifest.note_write(key, Written { size: 0, etag: etag.clone(), meta });
        Ok(etag)
    }

    /// Reads a symlink object's target.
    pub async fn read_symlink(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        self.client.get(key).await
    }

    /// Deletes one key.
    pub async fn remove(&self, key: &str, manifest: &mut Manifest) -> Result<(), StoreError> {
        self.client.delete(key).await?;
        manifest.forget(key);
        Ok(())
    }

    /// Server-side copy of `from` to `to`, metadata included (renames, #13).
    pub async fn copy(&self, from: &str, to: &str) -> Result<String, StoreError> {
        self.client.copy(from, to).await
    }

    /// Loads the manifest; a missing or unreadable one is an empty one (it is a cache).
    pub async fn load_manifest(&self) -> Result<Manifest, StoreError> {
        let key = self.prefix.manifest_key();
        match self.client.get(&key).await {
            Ok(bytes) => Ok(Manifest::decode(&bytes).unwrap_or_else(|(line, why)| {
                tracing::warn!(
                    key,
                    line,
                    why,
                    "manifest unreadable; every object will be HEADed once"
                );
                Manifest::default()
            })),
            Err(e) if e.is_not_found() => Ok(Manifest::default()),
            Err(e) => Err(e),
        }
    }

    /// After a pass: one more LIST binds this pass's writes, then the manifest is saved
    /// if it changed. Returns that listing.
    pub async fn finish_pass(&self, manifest: &mut Manifest) -> Result<Vec<Listed>, StoreError> {
        let listing = self.client.list(self.prefix.as_str()).await?;
        manifest.bind_writes(&listing);
        if manifest.is_dirty() {
            let key = self.prefix.manifest_key();
            self.client.put(&key, manifest.encode(), Default::default()).await?;
            manifest.mark_saved();
        }
        Ok(listing)
    }
}

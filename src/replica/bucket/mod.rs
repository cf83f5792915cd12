//! The bucket replica: [`Replica`] over [`BlockingBucket`], so the engine mirrors SOURCE
//! into `s3://BUCKET[/PREFIX]` with the same walker, `decide` and applier as locally.
//!
//! - **Looking.** Each piece of work starts with one LIST of the whole prefix (in
//!   [`Replica::open_roots`], behind SOURCE's guards: a failing LIST is a guard trip,
//!   never "empty"). The listing is grouped by directory once ([`view`]); a directory
//!   handle is its path plus that view, and `list`/`stat` answer from it. `stat` turns an
//!   object into an [`Entry`] with the metadata the manifest remembers while LIST still
//!   shows the same object, else with a HEAD: a no-op pass makes ⌈N/1000⌉ LISTs, no HEAD.
//!   Event work (the live service) lists only what it looks at
//!   ([`Replica::open_roots_for`]: the parent's marker, the path's file and link keys —
//!   one-key LISTs — and everything under its directory key), not the whole prefix; each
//!   opening has its own record of what it made, so concurrent event works never share
//!   one. The listing is a snapshot: after a rename the engine opens the roots again.
//! - **Writing.** A file is uploaded whole (one PUT, or a multipart upload completed only
//!   whole) from SOURCE's descriptor; one that changed meanwhile is the engine's
//!   `ChangedDuringCopy`. A symlink is a `NAME.rclonelink` object, a directory a `DIR/`
//!   marker written when its attributes are set (after its children). Metadata is part of
//!   an object, so a file whose attributes differ is uploaded again
//!   ([`Caps::file_attrs_in_place`]); a link's or marker's is rewritten by a new PUT.
//! - **Shared state.** The manifest is behind a mutex taken only around memory work,
//!   never across a request; uploads run in parallel on the engine's `--jobs` threads.
//! - **End of a pass** ([`Replica::end_pass`]): strays (keys no SOURCE path maps to) are
//!   removed after a clean pass, excluded paths kept; then one more LIST binds this pass's
//!   writes and the manifest is saved.
//!
//! Names the mapping cannot hold together are entry errors, never an overwrite: a regular
//! file `*.rclonelink` (rclone would restore a symlink), and a directory `x.rclonelink`
//! next to a symlink `x` (whichever comes second this pass is refused).

mod change;
mod look;
mod rename;
pub mod view;

use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use md5::{Digest, Md5};
use rustix::fs::FileType;
use tokio_util::sync::CancellationToken;

use super::{
    Caps, Copying, DirItem, Expect, PassEnd, Removal, Removed, Replica, Roots, XattrSupport, Xattrs,
};
use crate::bucket::etag::{content_md5, etag_md5};
use crate::bucket::manifest::Written;
use crate::bucket::mapping::MapError;
use crate::bucket::{BlockingBucket, Manifest, ObjectKind, StoreError};
use crate::checksum::{Md5Cache, Md5Sum};
use crate::entry::{AttrDiff, Entry, Kind, MtimeStore};
use crate::error::{EntryErrorKind, GuardTrip};
use crate::guard::Guard;
use crate::relpath::RelPath;

use view::{Child, View, meta_for};

/// Directories and symlinks made by one piece of work, by parent (new directories are
/// opened from here; a link and a directory that would share a name are caught here).
/// One per opening of the roots, with its listing: concurrent event works each have
/// their own, so none forgets what another made.
type Made = Mutex<HashMap<RelPath, HashMap<CString, ObjectKind>>>;

/// An open REPLICA directory: its path, the listing of this piece of work, and what this
/// piece of work made.
#[derive(Clone)]
pub struct BucketDir {
    rel: RelPath,
    view: Arc<View>,
    made: Arc<Made>,
}

impl BucketDir {
    fn root(view: View) -> BucketDir {
        BucketDir { rel: RelPath::root(), view: Arc::new(view), made: Arc::default() }
    }
}

/// REPLICA as a prefix of an S3 bucket.
pub struct BucketReplica {
    bucket: BlockingBucket,
    /// Fired on shutdown: an upload in flight is aborted, nothing half-written is left.
    cancel: CancellationToken,
    /// Loaded by the first piece of work; taken out only at the end of a pass.
    manifest: Mutex<Option<Manifest>>,
    /// Keys written this pass: never strays, whatever the listing said before.
    written: Mutex<HashSet<String>>,
    /// HEADs this pass (a no-op pass with a trusted manifest makes none; `-v` shows it).
    heads: AtomicU64,
    /// Requests at once for a renamed directory's copies and deletes (`--jobs`).
    jobs: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A store error as the engine's `io::Error` (its message names the key).
fn io_err(e: StoreError) -> io::Error {
    let kind = if e.is_not_found() { io::ErrorKind::NotFound } else { io::ErrorKind::Other };
    io::Error::new(kind, e.to_string())
}

/// A store that cannot be listed (or its manifest read): the guard holds, nothing is
/// read as empty.
fn unusable(e: StoreError) -> GuardTrip {
    GuardTrip::ReplicaUnusable(crate::bucket::error::one_line(&e))
}

impl BucketReplica {
    /// Like [`unusable`]; and when the store could not be reached at all, the next
    /// endpoint of `AWS_ENDPOINT_URL` is tried by the guard's next re-check.
    fn unreachable_or_unusable(&self, e: StoreError) -> GuardTrip {
        let trip = unusable(e);
        if let GuardTrip::ReplicaUnusable(text) = &trip
            && crate::bucket::client::is_unreachable(text)
            && let Some(next) = self.bucket.inner().client().failover()
        {
            tracing::warn!(
                endpoint = next,
                "bucket endpoint unreachable; failing over to the next"
            );
        }
        trip
    }
}

fn map_err(e: MapError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e.to_string())
}

fn name_of(name: &CStr) -> &OsStr {
    OsStr::from_bytes(name.to_bytes())
}

impl BucketReplica {
    /// The replica over `bucket`; `cancel` stops uploads in flight.
    pub fn new(bucket: BlockingBucket, cancel: CancellationToken) -> BucketReplica {
        BucketReplica {
            bucket,
            cancel,
            manifest: Mutex::new(None),
            written: Mutex::new(HashSet::new()),
            heads: AtomicU64::new(0),
            jobs: 4,
        }
    }

    /// The same replica making at most `jobs` requests at once for a renamed directory.
    pub fn with_jobs(mut self, jobs: usize) -> BucketReplica {
        self.jobs = jobs.max(1);
        self
    }
}

fn unsupported(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, what)
}

impl Replica for BucketReplica {
    type Dir = BucketDir;

    fn caps(&self) -> Caps {
        Caps {
            hard_links: false,
            special_files: false,
            file_attrs_in_place: false,
            root_attrs: false,
            snapshot: true,
        }
    }

    fn xattrs(&self) -> Option<&XattrSupport> {
        None
    }

    fn open_roots(
        &self,
        guard: &Guard,
        also: &dyn Fn(&BucketDir) -> Result<(), GuardTrip>,
    ) -> Result<Roots<BucketDir>, GuardTrip> {
        let open = || {
            self.load_manifest()?;
            let view = View::new(self.bucket.list().map_err(|e| self.unreachable_or_unusable(e))?);
            lock(&self.written).clear();
            self.heads.store(0, Ordering::Relaxed);
            let empty = view.is_empty();
            Ok((BucketDir::root(view), empty))
        };
        let (src, dst) = guard.open_with(open, also)?;
        Ok(Roots { src, dst: Some(dst) })
    }

    fn open_roots_for(
        &self,
        guard: &Guard,
        also: &dyn Fn(&BucketDir) -> Result<(), GuardTrip>,
        paths: &[&RelPath],
    ) -> Result<Roots<BucketDir>, GuardTrip> {
        let open = || {
            self.load_manifest()?;
            let listed = self.bucket.list_scoped(paths);
            let view = View::new(listed.map_err(|e| self.unreachable_or_unusable(e))?);
            // Not the whole prefix: never "empty", so an empty SOURCE trips the guard.
            Ok((BucketDir::root(view), false))
        };
        let (src, dst) = guard.open_with(open, also)?;
        Ok(Roots { src, dst: Some(dst) })
    }

    fn probe(&self, _root: &BucketDir) -> io::Result<MtimeStore> {
        // The `mtime` metadata is written to the nanosecond; the start-up check and the
        // LIST found the bucket usable.
        Ok(MtimeStore::default())
    }

    fn flush(&self, _root: &BucketDir) -> io::Result<()> {
        // Objects are durable once the store answered; the manifest is saved by `end_pass`.
        Ok(())
    }

    fn end_pass(&self, root: &BucketDir, end: &PassEnd<'_>) -> io::Result<u64> {
        self.finish(root, end)
    }

    fn try_clone_dir(&self, dir: &BucketDir) -> io::Result<BucketDir> {
        Ok(dir.clone())
    }

    fn open_dir(&self, parent: &BucketDir, name: &CStr) -> io::Result<BucketDir> {
        let listed = parent.view.child(&parent.rel, name).map(|c| c.kind);
        let made = lock(&parent.made).get(&parent.rel).and_then(|m| m.get(name).copied());
        // Made this pass first: it replaced whatever the listing showed there.
        match made.or(listed) {
            Some(ObjectKind::Dir) => Ok(BucketDir {
                rel: parent.rel.join(name_of(name)),
                view: parent.view.clone(),
                made: parent.made.clone(),
            }),
            Some(_) => Err(io::Error::from(io::ErrorKind::NotADirectory)),
            None => Err(io::Error::from(io::ErrorKind::NotFound)),
        }
    }

    fn list(&self, dir: &BucketDir) -> io::Result<Vec<DirItem>> {
        let items = dir.view.children(&dir.rel).map(|(name, child)| DirItem {
            name: name.clone(),
            kind_hint: match child.kind {
                ObjectKind::File => FileType::RegularFile,
                ObjectKind::Symlink => FileType::Symlink,
                ObjectKind::Dir => FileType::Directory,
            },
            ino: 0,
        });
        Ok(items.collect())
    }

    fn stat(&self, dir: &BucketDir, name: &CStr) -> io::Result<Option<Entry>> {
        match dir.view.child(&dir.rel, name).map(|c| self.entry(c)).transpose() {
            // Deleted between the LIST and the HEAD: nothing there, as an lstat would say.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            other => other,
        }
    }

    fn stat_dir(&self, dir: &BucketDir) -> io::Result<Entry> {
        let child = match (dir.rel.parent(), dir.rel.file_name()) {
            (Some(parent), Some(name)) => CString::new(name.as_bytes()).ok().and_then(|name| {
                let made = lock(&dir.made).get(&parent).is_some_and(|m| m.contains_key(&name));
                // Made this pass, in place of whatever the listing showed: no marker yet.
                (!made).then(|| dir.view.child(&parent, &name).cloned()).flatten()
            }),
            _ => None,
        };
        // The root, or a directory made this pass: no marker yet.
        let child = child.unwrap_or(Child { kind: ObjectKind::Dir, listed: None });
        self.entry(&child)
    }

    fn read_link(&self, dir: &BucketDir, name: &CStr) -> io::Result<CString> {
        let key = &self.object(dir, name)?.key;
        let bytes = self.bucket.read_symlink(key).map_err(io_err)?;
        CString::new(bytes)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "NUL in a link target"))
    }

    fn link_target_is(&self, dir: &BucketDir, name: &CStr, target: &CStr) -> bool {
        // A link object is one PUT: its ETag is the MD5 of the target, so an equal one needs
        // no GET. Any other (a changed target, or an ETag that is no MD5: SSE) is read.
        let want: [u8; 16] = Md5::digest(target.to_bytes()).into();
        match self.object(dir, name).ok().and_then(|l| etag_md5(&l.etag)) {
            Some(md5) if md5 == want => true,
            _ => self.read_link(dir, name).is_ok_and(|t| t.as_c_str() == target),
        }
    }

    fn read_xattrs(&self, _dir: &BucketDir, _name: Option<&CStr>) -> io::Result<Xattrs> {
        Ok(Xattrs::default())
    }

    fn md5(
        &self,
        dir: &BucketDir,
        name: &CStr,
        _dst: &Entry,
        _expect: Expect<'_>,
        _cache: &Md5Cache,
        _cancelled: &dyn Fn() -> bool,
    ) -> io::Result<Md5Sum> {
        let listed = self.object(dir, name)?;
        let meta = match etag_md5(&listed.etag) {
            Some(_) => None,
            None => self.meta(listed)?,
        };
        // No MD5 claimed at all (another tool's multipart upload): "different", so the
        // file is uploaded again — all zeros is no content's MD5 in practice.
        Ok(content_md5(&listed.etag, meta.as_ref()).unwrap_or([0; 16]))
    }

    fn make_dir(&self, parent: &BucketDir, name: &CStr) -> io::Result<()> {
        self.key(&parent.rel.join(name_of(name)), ObjectKind::Dir)?;
        // The marker is written with the directory's attributes, once its children are done.
        self.make(parent, name, ObjectKind::Dir)
    }

    fn copy_file(
        &self,
        src_dir: BorrowedFd<'_>,
        dir: &BucketDir,
        name: &CStr,
        _how: &Copying<'_>,
    ) -> Result<u64, EntryErrorKind> {
        self.upload(src_dir, dir, name)
    }

    fn make_symlink(
        &self,
        dir: &BucketDir,
        name: &CStr,
        target: &CStr,
        src: &Entry,
        _xattrs: Option<&Xattrs>,
    ) -> io::Result<()> {
        let rel = dir.rel.join(name_of(name));
        self.key(&rel, ObjectKind::Symlink)?;
        self.make(dir, name, ObjectKind::Symlink)?;
        self.put_link(&rel, target.to_bytes(), src)?;
        self.drop_other(dir, name, ObjectKind::Symlink)
    }

    fn make_special(
        &self,
        _: &BucketDir,
        _: &CStr,
        _: &Entry,
        _: Option<&Xattrs>,
    ) -> io::Result<()> {
        Err(unsupported("a bucket cannot hold FIFOs or device nodes"))
    }

    fn set_attrs(
        &self,
        dir: &BucketDir,
        name: &CStr,
        _expect: Expect<'_>,
        src: &Entry,
        _diff: AttrDiff,
        _xattrs: Option<&Xattrs>,
    ) -> io::Result<()> {
        if src.kind != Kind::Symlink {
            return Err(unsupported("a file's attributes are written with its content"));
        }
        // The link object again, same target, new metadata (a small GET and PUT).
        let target = self.read_link(dir, name)?;
        self.put_link(&dir.rel.join(name_of(name)), target.to_bytes(), src)
    }

    fn set_dir_attrs(&self, dir: &BucketDir, src: &Entry, _diff: AttrDiff) -> io::Result<()> {
        if dir.rel.is_root() {
            return Ok(());
        }
        let key = self.key(&dir.rel, ObjectKind::Dir)?;
        let meta = meta_for(src);
        let etag =
            self.bucket.put_dir(&key, meta.clone(), &mut Manifest::default()).map_err(io_err)?;
        self.wrote(&key, Written { size: 0, etag, meta });
        Ok(())
    }

    fn set_dir_xattrs(&self, _: &BucketDir, _: &Xattrs, _: &Xattrs) -> io::Result<()> {
        Ok(())
    }

    fn link(
        &self,
        _: &BucketDir,
        _: &CStr,
        _: &Entry,
        _: u64,
        _: &BucketDir,
        _: &CStr,
    ) -> io::Result<()> {
        Err(unsupported("a bucket has no hard links"))
    }

    fn rename(
        &self,
        from_dir: &BucketDir,
        from: &CStr,
        to_dir: &BucketDir,
        to: &CStr,
    ) -> io::Result<()> {
        self.rename_objects(from_dir, from, to_dir, to)
    }

    fn remove_file(&self, dir: &BucketDir, name: &CStr) -> io::Result<()> {
        let key = self.object(dir, name)?.key.clone();
        self.remove_key(&key)
    }

    fn remove_tree(
        &self,
        dir: &BucketDir,
        name: &CStr,
        _rel: &RelPath,
        rules: &Removal<'_>,
    ) -> io::Result<Removed> {
        self.remove_below(dir, name, rules)
    }
}

//! The REPLICA side as one seam: everything the engine does to or reads from REPLICA goes
//! through the [`Replica`] trait — open, make and list a directory, stat a child, read a
//! link target, xattrs or an MD5, copy a file in, make a symlink/FIFO/device, set
//! attributes, link, rename, remove. SOURCE stays local and fd-relative (`ops` directly);
//! `decide` stays pure. Two implementations: [`local`], the fd-relative directory tree,
//! and [`bucket`], an S3 prefix over `src/bucket` (issue #12) — not a second engine or
//! walker. Knows nothing of walking, deciding or counting.
//!
//! # Shape
//!
//! Every call is relative to an open directory handle, the associated type
//! [`Replica::Dir`], plus one child name (`&CStr`, raw bytes). Locally that handle is a
//! directory descriptor opened without following links, so every change is one name
//! relative to a pinned directory and a stranger's symlink swap fails instead of being
//! followed; in a bucket it is a key prefix together with one LIST of the whole prefix,
//! grouped by directory (a child's `stat` answers from it). The names the
//! walker merges come from [`Replica::list`] in both cases.
//!
//! Capabilities a replica may lack are asked, not discovered by failing:
//! [`Replica::caps`] (hard links, FIFOs and devices, file attributes changed without the
//! content, the root's own attributes) and [`Replica::xattrs`] (`None`: no extended
//! attributes). The engine turns a missing capability into what it already does when the
//! local filesystem refuses one: names of a link group are copied as files of their own, a
//! FIFO or device is skipped with one warning per path, xattrs are not compared, a file
//! whose attributes differ is copied again, the root's attributes are left alone. Two
//! hooks have a default that is the local behaviour: [`Replica::link_target_is`] (a bucket
//! answers from the ETag without a GET) and [`Replica::end_pass`] (a bucket removes strays
//! and saves its manifest).
//!
//! # Generic engine, not an enum or `dyn`
//!
//! `Engine<R: Replica = Local>` is generic. The walker runs the seam's methods once or
//! more per entry (stat, list, read a link or xattrs): monomorphised, the local side costs
//! exactly what the direct `ops` calls did (the default bench within 5% was the
//! condition), and `Dir` stays a plain `OwnedFd` with no boxing or matching. A
//! `dyn Replica` would have to fix `Dir` to one type (`dyn Replica<Dir = …>`), which is
//! exactly what the two sides do not share; an enum `Local | Bucket` would put a `match`
//! in every method and make both sides' handles one enum as well.
//!
//! The generics stop at the engine: the default type parameter means `Engine` in
//! `service`, `status`, `queue` and `main` still names `Engine<Local>`, unchanged. The
//! service picks the side once from the validated REPLICA (`Config::bucket`): a bucket runs
//! the one-shot pass (`service/bucket`) on `Engine<BucketReplica>` through the generic
//! `once`; the live service over a bucket (#13) will take `Engine<R>` the same way.
//!
//! # What is not one trait
//!
//! - **The guards** ([`crate::guard`]): REPLICA's identity (device, inode, no symlink in
//!   its path) and emptiness are filesystem facts. [`Replica::open_roots`] takes the
//!   `Guard` and returns both roots; the local side runs it as before. A bucket checks
//!   its own (the manifest's GET and the LIST work, emptiness by that LIST) behind the
//!   same method, through `Guard::open_with` (SOURCE's half and the deletion guard's rule
//!   unchanged).
//! - **Hard-link settling** (`engine/links`) needs inode identity on REPLICA: it compares
//!   the (device, inode) that [`Replica::stat`] reports for two names, and links with
//!   [`Replica::link`], pinned to the leader's inode. A replica without inodes answers
//!   `hard_links: false` in [`Caps`]; the engine then never groups names (each name is a
//!   file of its own, as when a filesystem refuses a link), so settling is never asked of
//!   it rather than being emulated.
//! - **Temporary names** are the local side's: it filters its own in-flight names from
//!   [`Replica::list`] and from the guard's emptiness check. A bucket writes objects
//!   whole (one PUT or a completed multipart upload) and has none.
//! - **`Expect`** (what a decision relied on) is passed to every in-place change; the
//!   local side re-checks it on a pinned descriptor before touching the entry. A bucket
//!   ignores it: an object has no second name to protect, and a HEAD per change would
//!   only narrow, not close, the window against another writer.

pub mod bucket;
pub mod local;

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

pub use crate::ops::{DirItem, Expect, Removal, Removed, XattrSupport, Xattrs};

use crate::checksum::{Md5Cache, Md5Sum};
use crate::entry::{AttrDiff, Entry, MtimeStore};
use crate::error::{EntryErrorKind, GuardTrip};
use crate::guard::Guard;
use crate::relpath::RelPath;

pub use bucket::BucketReplica;
pub use local::Local;

/// Both roots, opened for one piece of work after the guards passed.
pub struct Roots<D> {
    /// SOURCE's root directory.
    pub src: OwnedFd,
    /// REPLICA's root; absent only in a dry run whose REPLICA does not exist yet.
    pub dst: Option<D>,
}

/// What a replica can hold beyond files, directories and symlinks.
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    /// One file under several names (hard links), with (device, inode) identity in `stat`.
    pub hard_links: bool,
    /// FIFOs and device nodes.
    pub special_files: bool,
    /// A file's mode, owner and mtime can change without its content being written again
    /// (false: an object store, where metadata is part of the object; the file is copied
    /// again instead).
    pub file_attrs_in_place: bool,
    /// The root directory itself has attributes to mirror (false: a bucket prefix, which
    /// rclone neither writes nor restores a marker for).
    pub root_attrs: bool,
    /// Directory handles answer from a listing taken when the roots were opened (a
    /// bucket): after a rename moved names, the engine opens the roots again before it
    /// looks at either end.
    pub snapshot: bool,
}

/// How a full pass ended, for [`Replica::end_pass`].
pub struct PassEnd<'a> {
    /// No entry failed.
    pub clean: bool,
    /// `--dry-run`: say what would be done, write nothing.
    pub dry_run: bool,
    /// Excluded paths (and whether a directory): never removed.
    pub keep: &'a dyn Fn(&RelPath, bool) -> bool,
}

/// What a file copy needs from the engine.
pub struct Copying<'a> {
    /// Digest cache for `--verify`.
    pub md5_cache: Option<&'a Md5Cache>,
    /// Polled between chunks (it also shows progress); true: stop, leave nothing behind.
    pub cancelled: &'a dyn Fn() -> bool,
}

/// The REPLICA side. Every method is relative to an open directory `Dir` and, where it
/// concerns a child, that child's name. Errors are the OS's (or the store's, mapped to
/// `io::Error`): the engine attaches the operation and the path.
pub trait Replica: Send + Sync + 'static {
    /// An open REPLICA directory.
    type Dir: Send + Sync + 'static;

    /// What this replica can hold.
    fn caps(&self) -> Caps;

    /// The extended-attribute namespaces still mirrored; `None` when xattrs are not
    /// mirrored (`--no-xattrs`, or a replica that has none).
    fn xattrs(&self) -> Option<&XattrSupport>;

    /// Opens both roots through the guards, then `also` (the engine's first-use probe) on
    /// REPLICA's root when there is one.
    fn open_roots(
        &self,
        guard: &Guard,
        also: &dyn Fn(&Self::Dir) -> Result<(), GuardTrip>,
    ) -> Result<Roots<Self::Dir>, GuardTrip>;

    /// Opens both roots for event work that looks only at `paths` (each with what is
    /// below it, and its parent's own attributes). A replica whose handles hold a listing
    /// lists only that much instead of the whole tree; REPLICA is never reported empty
    /// (the deletion guard then holds whenever SOURCE is empty). Default: `open_roots`.
    fn open_roots_for(
        &self,
        guard: &Guard,
        also: &dyn Fn(&Self::Dir) -> Result<(), GuardTrip>,
        _paths: &[&RelPath],
    ) -> Result<Roots<Self::Dir>, GuardTrip> {
        self.open_roots(guard, also)
    }

    /// Finds out, by writing a probe, that REPLICA takes writes and what it keeps of an
    /// mtime.
    fn probe(&self, root: &Self::Dir) -> io::Result<MtimeStore>;

    /// Makes everything written so far durable (end of a pass without `--fsync`).
    fn flush(&self, root: &Self::Dir) -> io::Result<()>;

    /// The end of a full pass that was not stopped, whether or not it changed anything (a
    /// dry run included: then nothing may be written). Returns how many entries it removed
    /// (each logged by the replica), for the pass's counts. Locally nothing is left to do;
    /// a bucket removes the keys no SOURCE path maps to (after a clean pass only) and saves
    /// its quick-check manifest.
    fn end_pass(&self, _root: &Self::Dir, _end: &PassEnd<'_>) -> io::Result<u64> {
        Ok(0)
    }

    /// A second handle on the same directory.
    fn try_clone_dir(&self, dir: &Self::Dir) -> io::Result<Self::Dir>;

    // ---- looking --------------------------------------------------------------------

    /// Opens the child directory `name`; never through a symlink.
    fn open_dir(&self, parent: &Self::Dir, name: &CStr) -> io::Result<Self::Dir>;

    /// Every name in `dir` (unsorted), except this process's own temporary entries.
    fn list(&self, dir: &Self::Dir) -> io::Result<Vec<DirItem>>;

    /// What `name` is (`None`: nothing there), never following a link.
    fn stat(&self, dir: &Self::Dir, name: &CStr) -> io::Result<Option<Entry>>;

    /// What the open directory itself is now.
    fn stat_dir(&self, dir: &Self::Dir) -> io::Result<Entry>;

    /// The target of the symlink `name`.
    fn read_link(&self, dir: &Self::Dir, name: &CStr) -> io::Result<CString>;

    /// True if the symlink `name` points at `target` (a replica may know without reading
    /// the target: a bucket compares its MD5 with the object's ETag).
    fn link_target_is(&self, dir: &Self::Dir, name: &CStr, target: &CStr) -> bool {
        self.read_link(dir, name).is_ok_and(|t| t.as_c_str() == target)
    }

    /// The extended attributes of `name`, or of `dir` itself when `name` is `None`.
    fn read_xattrs(&self, dir: &Self::Dir, name: Option<&CStr>) -> io::Result<Xattrs>;

    /// The MD5 of the file `name` (`dst`, still as `expect` says: nothing else is read).
    fn md5(
        &self,
        dir: &Self::Dir,
        name: &CStr,
        dst: &Entry,
        expect: Expect<'_>,
        cache: &Md5Cache,
        cancelled: &dyn Fn() -> bool,
    ) -> io::Result<Md5Sum>;

    // ---- changing -------------------------------------------------------------------

    /// Creates the directory `name` (private until its attributes are set after its
    /// children); `AlreadyExists` when something is there.
    fn make_dir(&self, parent: &Self::Dir, name: &CStr) -> io::Result<()>;

    /// Copies SOURCE's file `name` in `src_dir` to `name` in `dir`, complete or not at all
    /// (replacing whatever non-directory is there), with SOURCE's attributes; the bytes
    /// copied. A SOURCE file that changed during the copy is `ChangedDuringCopy`.
    fn copy_file(
        &self,
        src_dir: BorrowedFd<'_>,
        dir: &Self::Dir,
        name: &CStr,
        how: &Copying<'_>,
    ) -> Result<u64, EntryErrorKind>;

    /// Creates (or replaces a non-directory with) the symlink `name -> target` with
    /// `src`'s attributes and `xattrs`.
    fn make_symlink(
        &self,
        dir: &Self::Dir,
        name: &CStr,
        target: &CStr,
        src: &Entry,
        xattrs: Option<&Xattrs>,
    ) -> io::Result<()>;

    /// Creates (or replaces a non-directory with) a FIFO or device node like `src`
    /// (asked only when [`Caps::special_files`]).
    fn make_special(
        &self,
        dir: &Self::Dir,
        name: &CStr,
        src: &Entry,
        xattrs: Option<&Xattrs>,
    ) -> io::Result<()>;

    /// Gives the non-directory `name`, still as `expect` says, `src`'s attributes named by
    /// `diff` (and `xattrs` when they differ).
    fn set_attrs(
        &self,
        dir: &Self::Dir,
        name: &CStr,
        expect: Expect<'_>,
        src: &Entry,
        diff: AttrDiff,
        xattrs: Option<&Xattrs>,
    ) -> io::Result<()>;

    /// Gives the open directory `src`'s attributes named by `diff`.
    fn set_dir_attrs(&self, dir: &Self::Dir, src: &Entry, diff: AttrDiff) -> io::Result<()>;

    /// Makes the open directory's extended attributes `want` (it has `have` now).
    fn set_dir_xattrs(&self, dir: &Self::Dir, want: &Xattrs, have: &Xattrs) -> io::Result<()>;

    /// Gives the file `target_name` in `target_dir` (still `target`, with fewer than
    /// `group` names) one more name, `name` in `dir`, replacing a non-directory there
    /// (asked only when [`Caps::hard_links`]).
    #[allow(clippy::too_many_arguments)]
    fn link(
        &self,
        target_dir: &Self::Dir,
        target_name: &CStr,
        target: &Entry,
        group: u64,
        dir: &Self::Dir,
        name: &CStr,
    ) -> io::Result<()>;

    /// Renames `from` to `to`, refusing to replace anything at `to`.
    fn rename(
        &self,
        from_dir: &Self::Dir,
        from: &CStr,
        to_dir: &Self::Dir,
        to: &CStr,
    ) -> io::Result<()>;

    /// Removes the non-directory `name`.
    fn remove_file(&self, dir: &Self::Dir, name: &CStr) -> io::Result<()>;

    /// Removes the directory `name` (at `rel`) and what is under it, as `rules` allow.
    fn remove_tree(
        &self,
        dir: &Self::Dir,
        name: &CStr,
        rel: &RelPath,
        rules: &Removal<'_>,
    ) -> io::Result<Removed>;
}

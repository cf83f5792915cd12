//! The two kinds of error, split by consequence: `Fatal` (configuration, roots, runtime
//! start → exit 1) and `EntryError` (one entry could not be mirrored: logged, counted, the
//! pass goes on → exit 23 in `--once`). Uses only `relpath`, std, and rustix's errno type.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::relpath::{Escaped, RelPath};

/// What replicad was doing to an entry when it failed; the first word of the error line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Reading an entry's metadata (lstat/statx).
    Stat,
    /// Listing a directory.
    List,
    /// Opening a directory.
    OpenDir,
    /// Reading a file or a symlink's target.
    Read,
    /// Copying a file's content.
    Copy,
    /// Checking a copy's MD5 against the source's (`--verify`).
    Verify,
    /// Creating a directory, symlink, FIFO or device node.
    Create,
    /// Setting mode, owner, mtime, extended attributes or ACLs.
    SetAttrs,
    /// Removing an entry (or a tree).
    Remove,
    /// Renaming inside REPLICA.
    Rename,
    /// Giving a REPLICA file another name of its link group (a hard link).
    Link,
    /// Flushing REPLICA's filesystem at the end of a pass (`syncfs`).
    Sync,
    /// An entry type that cannot be mirrored (socket; device node without CAP_MKNOD).
    Skip,
}

impl Op {
    /// The operation's name in log lines and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Op::Stat => "stat",
            Op::List => "list",
            Op::OpenDir => "open-dir",
            Op::Read => "read",
            Op::Copy => "copy",
            Op::Verify => "verify",
            Op::Create => "create",
            Op::SetAttrs => "attrs",
            Op::Remove => "remove",
            Op::Rename => "rename",
            Op::Link => "link",
            Op::Sync => "sync",
            Op::Skip => "skip",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why an entry could not be mirrored.
#[derive(Debug, thiserror::Error)]
pub enum EntryErrorKind {
    /// The OS refused.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The source file changed while it was being copied; the copy was discarded.
    #[error("source changed while being copied (retry later)")]
    ChangedDuringCopy,
    /// The SOURCE entry vanished (or became another type) between listing and acting:
    /// SOURCE is changing under the pass, like rsync's "file has vanished".
    #[error("vanished from the source while being mirrored ({0})")]
    Vanished(io::Error),
    /// `--verify`: the replica's MD5 did not match the source's.
    #[error("MD5 mismatch after copy (source {source_md5}, replica {replica_md5})")]
    VerifyMismatch {
        /// Hex MD5 of the source.
        source_md5: String,
        /// Hex MD5 of the replica copy.
        replica_md5: String,
    },
    /// A type replicad does not mirror (sockets), or cannot here (devices without CAP_MKNOD).
    #[error("{0}")]
    Unsupported(&'static str),
    /// An excluded REPLICA entry (or a directory holding excluded entries) is where the
    /// entry SOURCE has must go; excluded entries are kept, so it cannot be placed.
    #[error(
        "cannot make way: the replica entry here is excluded (or holds excluded entries), and is kept"
    )]
    CannotMakeWay,
    /// A directory below a root is SOURCE or REPLICA (or holds one), seen again through a
    /// bind mount: never entered, never removed.
    #[error("is the source or the replica (or holds one) mounted again here; not entered")]
    Boundary,
    /// Shutdown was requested mid-operation; nothing half-done was left behind.
    #[error("cancelled by shutdown")]
    Cancelled,
}

impl From<rustix::io::Errno> for EntryErrorKind {
    fn from(e: rustix::io::Errno) -> Self {
        EntryErrorKind::Io(e.into())
    }
}

/// One entry could not be mirrored. Logged with its path, counted, and the pass goes on.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {kind}")]
pub struct EntryError {
    /// What was being done.
    pub op: Op,
    /// The entry, relative to the roots.
    pub path: RelPath,
    /// What went wrong.
    #[source]
    pub kind: EntryErrorKind,
}

impl EntryError {
    /// An entry error from an OS error.
    pub fn io(op: Op, path: &RelPath, err: impl Into<io::Error>) -> Self {
        EntryError { op, path: path.clone(), kind: EntryErrorKind::Io(err.into()) }
    }

    /// An entry error of another kind.
    pub fn new(op: Op, path: &RelPath, kind: EntryErrorKind) -> Self {
        EntryError { op, path: path.clone(), kind }
    }

    /// An OS error on the SOURCE side: an entry that is no longer there (ENOENT), or no
    /// longer a directory (ENOTDIR), vanished while the pass worked; anything else is an
    /// error of the entry.
    pub fn source(op: Op, path: &RelPath, err: impl Into<io::Error>) -> Self {
        let err = err.into();
        let kind = match err.raw_os_error() {
            Some(libc::ENOENT | libc::ENOTDIR) => EntryErrorKind::Vanished(err),
            _ => EntryErrorKind::Io(err),
        };
        EntryError { op, path: path.clone(), kind }
    }

    /// A race with a changing SOURCE, not a failure: logged as a warning, counted apart,
    /// and the pass is still "in sync as far as SOURCE held still" (exit 24, rsync's code).
    pub fn is_benign(&self) -> bool {
        matches!(self.kind, EntryErrorKind::Vanished(_) | EntryErrorKind::ChangedDuringCopy)
    }

    /// The raw OS error number, if this came from the OS.
    pub fn errno(&self) -> Option<i32> {
        match &self.kind {
            EntryErrorKind::Io(e) => e.raw_os_error(),
            _ => None,
        }
    }

    /// Stopped by shutdown (a copy, a checksum or a removal noticed the cancellation):
    /// not an error of the entry.
    pub fn is_cancelled(&self) -> bool {
        match &self.kind {
            EntryErrorKind::Cancelled => true,
            EntryErrorKind::Io(e) => e.kind() == io::ErrorKind::Interrupted,
            _ => false,
        }
    }

    /// Worth retrying soon (the file was moving under us), rather than waiting for a pass.
    pub fn is_transient(&self) -> bool {
        matches!(self.kind, EntryErrorKind::ChangedDuringCopy)
    }
}

/// Errors that stop replicad before it starts (exit status 1): bad configuration, unusable
/// roots, a log file that cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum Fatal {
    /// SOURCE does not exist, is not a directory, or cannot be read.
    #[error("source {}: {reason}", Escaped::path(.path))]
    Source {
        /// The path as given.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// REPLICA exists but is not a directory, or cannot be created/opened.
    #[error("replica {}: {reason}", Escaped::path(.path))]
    Replica {
        /// The path as given.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// SOURCE and REPLICA are the same directory or nested.
    #[error("source {} and replica {}: {reason}", Escaped::path(.source_path), Escaped::path(.replica_path))]
    Overlap {
        /// SOURCE as given.
        source_path: PathBuf,
        /// REPLICA as given.
        replica_path: PathBuf,
        /// Same directory, or which one contains the other.
        reason: &'static str,
    },
    /// An `--exclude` pattern does not parse.
    #[error("exclude pattern {pattern:?}: {reason}")]
    Exclude {
        /// The pattern.
        pattern: String,
        /// The parser's complaint.
        reason: String,
    },
    /// The `--exclude-from` file cannot be read.
    #[error("exclude file {}: cannot read it", Escaped::path(.path))]
    ExcludeFrom {
        /// The path as given.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The filesystem worker threads cannot be started (a thread or process limit).
    #[error(
        "cannot start {jobs} filesystem worker threads ({reason}); lower --jobs or raise the limit"
    )]
    Threads {
        /// How many were asked for.
        jobs: usize,
        /// The OS's refusal.
        reason: String,
    },
    /// The log file lies inside SOURCE or REPLICA, or its path cannot be judged.
    #[error("log file {}: {reason}", Escaped::path(.path))]
    LogFileInside {
        /// The path as given.
        path: PathBuf,
        /// Which root it lies in, and why that cannot work.
        reason: &'static str,
    },
    /// The log file cannot be opened.
    #[error("log file {}: cannot open it", Escaped::path(.path))]
    LogFile {
        /// The path as given.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// `--state-dir` cannot be used.
    #[error("state directory {}: {reason}", Escaped::path(.path))]
    StateDir {
        /// The path as given.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An `s3://` REPLICA that cannot be used: a bad URL, missing or invalid `AWS_*`
    /// variables, a failed start-up check, or a mode not available for a bucket yet.
    #[error("replica {url}: {reason}")]
    Bucket {
        /// The URL as given (lossy only for this message).
        url: String,
        /// Why it cannot be used, one line.
        reason: String,
    },
}

/// Why a guard stopped a pass from changing anything.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardTrip {
    /// SOURCE cannot be opened any more.
    #[error("source has disappeared ({0}); nothing deleted, waiting for it to come back")]
    SourceGone(String),
    /// A component of SOURCE's path is now a symlink (or not a directory): never followed.
    #[error(
        "source path now passes through a symlink or a non-directory ({0}); it is not followed, nothing deleted, waiting for the directory to come back"
    )]
    SourceReplaced(String),
    /// SOURCE is now on another filesystem (typically: its disk was unmounted).
    #[error(
        "source is no longer on the filesystem it was on at start (was {was}, now {now}: unmounted?); nothing deleted, waiting for it to come back"
    )]
    SourceDeviceChanged {
        /// The filesystem at start (device number and filesystem id).
        was: String,
        /// The filesystem now.
        now: String,
    },
    /// SOURCE is empty while REPLICA is not.
    #[error(
        "source is empty but the replica is not; nothing deleted (pass --allow-empty-source if SOURCE is meant to be empty)"
    )]
    SourceEmpty,
    /// REPLICA's root has vanished; it is not re-created (its disk may be unmounted).
    #[error(
        "replica has disappeared ({0}); not re-created, nothing written, waiting for it to come back"
    )]
    ReplicaGone(String),
    /// REPLICA is now on another filesystem (its disk unmounted, or another one mounted).
    #[error(
        "replica is no longer on the filesystem it was on at start (was {was}, now {now}: unmounted, or another one mounted?); nothing written, waiting for it to come back"
    )]
    ReplicaDeviceChanged {
        /// The filesystem at start (device number and filesystem id).
        was: String,
        /// The filesystem now.
        now: String,
    },
    /// REPLICA's root cannot be opened (replaced by a file or a symlink, no permission).
    #[error("replica cannot be opened ({0}); nothing written")]
    ReplicaUnusable(String),
    /// Nothing can be created in REPLICA (a read-only mount, no permission).
    #[error("replica cannot be written ({0}); nothing done")]
    ReplicaUnwritable(String),
}

impl GuardTrip {
    /// Which guard tripped, as log lines name it.
    pub fn guard_name(&self) -> &'static str {
        match self {
            GuardTrip::SourceGone(_)
            | GuardTrip::SourceReplaced(_)
            | GuardTrip::SourceDeviceChanged { .. }
            | GuardTrip::SourceEmpty => "deletion guard",
            GuardTrip::ReplicaGone(_)
            | GuardTrip::ReplicaDeviceChanged { .. }
            | GuardTrip::ReplicaUnusable(_)
            | GuardTrip::ReplicaUnwritable(_) => "replica guard",
        }
    }
}

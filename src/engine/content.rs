//! File content: copying a SOURCE file into REPLICA (through the replica side, with a
//! couple of quick retries when the file changes during the copy) and `--checksum`'s
//! comparison of both files' MD5. The decisions and the logging stay in `apply`.

use std::ffi::CStr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::time::Duration;

use rustix::fs::{Mode, OFlags};
use tracing::debug;

use crate::entry::Entry;
use crate::error::{EntryError, EntryErrorKind, Op};
use crate::relpath::RelPath;
use crate::replica::{Copying, Replica};

use super::Engine;
use super::report::Counters;

impl<R: Replica> Engine<R> {
    /// Copies a file; when it changed during the copy, tries again a couple of times with
    /// a short pause, then gives up until the next pass (or the queue's retry).
    pub(super) fn copy_with_retries(
        &self,
        src_dir: &OwnedFd,
        dst_dir: &R::Dir,
        name: &CStr,
        rel: &RelPath,
        counters: &Counters,
    ) -> Result<u64, EntryError> {
        const PAUSES_MS: [u64; 2] = [10, 50];
        // Polled between chunks: also the place where a long copy shows it is moving.
        let cancelled = || {
            self.progress.fetch_add(1, Ordering::Relaxed);
            self.cancel.is_cancelled()
        };
        let mut attempt = 0;
        loop {
            let how = Copying { md5_cache: self.md5.as_ref(), cancelled: &cancelled };
            let result = self.replica.copy_file(src_dir.as_fd(), dst_dir, name, &how);
            match result {
                Err(EntryErrorKind::ChangedDuringCopy)
                    if attempt < PAUSES_MS.len() && !cancelled() =>
                {
                    std::thread::sleep(Duration::from_millis(PAUSES_MS[attempt]));
                    attempt += 1;
                }
                Err(EntryErrorKind::ChangedDuringCopy) => {
                    counters.transient.store(true, Ordering::Relaxed);
                    return Err(EntryError::new(Op::Copy, rel, EntryErrorKind::ChangedDuringCopy));
                }
                Err(kind) => {
                    let op = if matches!(kind, EntryErrorKind::VerifyMismatch { .. }) {
                        Op::Verify
                    } else {
                        Op::Copy
                    };
                    return Err(EntryError::new(op, rel, kind));
                }
                Ok(n) => return Ok(n),
            }
        }
    }

    /// `--checksum`: compares the MD5 of both files (cached by inode and timestamps).
    pub(super) fn same_content(
        &self,
        src_dir: &OwnedFd,
        dst_dir: Option<&R::Dir>,
        name: &CStr,
        rel: &RelPath,
        src: &Entry,
        dst: &Entry,
    ) -> Result<bool, EntryError> {
        let (Some(cache), Some(dst_dir)) = (&self.md5, dst_dir) else {
            return Ok(true);
        };
        debug!(path = %rel, "comparing content by MD5");
        let cancelled = || self.cancel.is_cancelled();
        let md5 = |fd: OwnedFd, entry: &Entry| cache.md5(&fd, entry, &cancelled);
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let a = rustix::fs::openat(src_dir, name, flags, Mode::empty())
            .map_err(|e| EntryError::source(Op::Read, rel, e))
            .and_then(|fd| md5(fd, src).map_err(|e| EntryError::io(Op::Read, rel, e)))?;
        // The replica side is read only once it is known to be the file decided on (a
        // device node renamed onto the name must not even be opened).
        let b = self
            .replica
            .md5(dst_dir, name, dst, self.expect(src, dst), cache, &cancelled)
            .map_err(|e| EntryError::io(Op::Read, rel, e))?;
        Ok(a == b)
    }
}

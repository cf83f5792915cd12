//! What REPLICA's filesystem can do, found once at start with a temporary file in its root:
//! whether it can be written at all (a read-only mount is refused before any pass runs),
//! and what it keeps of a modification time. Knows nothing of the tree.

use std::io;
use std::os::fd::BorrowedFd;

use rustix::fs::{Mode, OFlags};

use super::attrs::timestamps;
use super::{TempFile, TempNames, in_writable_dir};
use crate::entry::{Entry, MtimeStore, Time};

/// A time every filesystem with sub-second timestamps stores exactly, ending in
/// …1.999999999 s so that truncation to any power-of-ten or 2 s granularity shows.
const FINE: Time = Time { sec: 1_000_000_001, nsec: 999_999_999 };
/// Year 3000 and year 1800: beyond 32-bit timestamps on either side.
const LATE: Time = Time { sec: 32_503_680_000, nsec: 0 };
const EARLY: Time = Time { sec: -5_364_662_400, nsec: 0 };

/// Creates and removes a file in `dir`, finding what its filesystem stores of an mtime.
/// `dir`'s own mtime is put back afterwards: probing is not a change to mirror.
pub fn probe_replica(dir: BorrowedFd<'_>, names: &TempNames) -> io::Result<MtimeStore> {
    let dir_mtime = Entry::stat_fd(dir)?.mtime;
    let store = probe_in(dir, names);
    if Entry::stat_fd(dir)?.mtime != dir_mtime {
        rustix::fs::futimens(dir, &timestamps(dir_mtime))?;
    }
    store
}

fn probe_in(dir: BorrowedFd<'_>, names: &TempNames) -> io::Result<MtimeStore> {
    let mut temp = TempFile::new(dir, names);
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let create = || rustix::fs::openat(dir, temp.name(), flags, Mode::from_raw_mode(0o600));
    let fd = in_writable_dir(dir, create)?;
    temp.created();
    let kept = |t: Time| -> io::Result<Option<Time>> {
        match rustix::fs::futimens(&fd, &timestamps(t)) {
            Ok(()) => Ok(Some(Entry::stat_fd(&fd)?.mtime)),
            // Refused outright rather than clamped: nothing learned about the range.
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::OVERFLOW) => Ok(None),
            Err(e) => Err(e.into()),
        }
    };
    let fine = kept(FINE)?.unwrap_or(FINE);
    let late = kept(LATE)?.unwrap_or(LATE);
    let early = kept(EARLY)?.unwrap_or(EARLY);
    let lost = (i128::from(FINE.sec) - i128::from(fine.sec)) * 1_000_000_000
        + (i128::from(FINE.nsec) - i128::from(fine.nsec));
    let granularity_ns = u64::try_from(lost + 1).unwrap_or(1).max(1);
    let min_sec = if early.sec > EARLY.sec { early.sec } else { i64::MIN };
    let max_sec = if late.sec < LATE.sec { late.sec } else { i64::MAX };
    Ok(MtimeStore { granularity_ns, min_sec, max_sec })
}

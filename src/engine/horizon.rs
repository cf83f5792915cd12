//! The xattr horizon: what lets a service's periodic pass skip reading extended attributes
//! of entries that cannot have changed. `statx` does not show xattrs, but every change to
//! them moves the inode's ctime, which no one can set. So when the last *clean* full pass
//! (every entry looked at, no error) started at T, an entry whose SOURCE and REPLICA
//! ctimes are both older than T was looked at by that pass in the state it still has:
//! its attributes were equal, or that pass set them (which would have moved REPLICA's
//! ctime past T). Reading them again cannot find a difference — as long as the name still
//! pairs the same two inodes: a directory rename moves entries without moving their
//! ctimes, so the walk trusts the horizon only below directories whose ctimes, on both
//! sides and all the way up, are older than T as well.
//!
//! This holds only while ctimes and T come from one clock: both roots must be on local
//! filesystems (a network server stamps ctimes with its own clock), and the wall clock
//! must not have jumped since T (checked against the monotonic clock at every run). A
//! margin covers coarse timestamps. Anything else turns the horizon off: every entry is
//! read, as in a `--once` run, which has no earlier pass.

use std::os::fd::AsFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::entry::{Entry, Time};

/// Slack for filesystems that keep whole seconds and for the kernel's coarse clock.
const MARGIN: Duration = Duration::from_secs(2);

/// No horizon: every entry's attributes are read.
const NONE: i64 = i64::MIN;

/// Filesystems whose timestamps come from this machine's clock (statfs magic numbers).
const LOCAL: [i64; 10] = [
    0xEF53,      // ext2/3/4
    0x5846_5342, // xfs
    0x9123_683E, // btrfs
    0x0102_1994, // tmpfs
    0x8584_58f6, // ramfs
    0xF2F5_2010, // f2fs
    0x2FC1_2FC1, // zfs
    0xCA45_1A4E, // bcachefs
    0x794C_7630, // overlayfs
    0x3153_464A, // jfs
];

/// When the last clean full pass started, as far as it can be trusted.
pub(super) struct Horizon {
    /// Both roots are on local filesystems: ctimes and our clock agree.
    local: bool,
    /// The horizon in wall-clock nanoseconds since the epoch (`NONE`: off).
    wall_ns: AtomicI64,
    /// The clocks when the horizon was set, to notice a wall-clock jump since.
    set_at: Mutex<Option<(SystemTime, Instant)>>,
}

/// The clocks at the start of a full pass.
#[derive(Clone, Copy)]
pub(super) struct PassStart {
    wall: SystemTime,
    mono: Instant,
}

fn wall_ns(t: SystemTime) -> i64 {
    let ns = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    i64::try_from(ns).unwrap_or(i64::MAX)
}

fn time_ns(t: Time) -> i64 {
    t.sec.saturating_mul(1_000_000_000).saturating_add(i64::from(t.nsec))
}

/// True if the filesystem holding `fd` stamps ctimes with this machine's clock.
// `f_type`'s integer type differs between architectures.
#[allow(clippy::unnecessary_cast)]
pub(super) fn is_local(fd: impl AsFd) -> bool {
    rustix::fs::fstatfs(fd).is_ok_and(|s| LOCAL.contains(&(s.f_type as i64)))
}

impl Horizon {
    /// A horizon that is off until a clean pass sets it; never on unless `local`.
    pub(super) fn new(local: bool) -> Horizon {
        Horizon { local, wall_ns: AtomicI64::new(NONE), set_at: Mutex::new(None) }
    }

    /// The clocks now, to hand to [`Horizon::passed_clean`] when the pass ends.
    pub(super) fn pass_start() -> PassStart {
        PassStart { wall: SystemTime::now(), mono: Instant::now() }
    }

    /// A full pass that started at `start` looked at every entry without error.
    pub(super) fn passed_clean(&self, start: PassStart) {
        if !self.local {
            return;
        }
        let horizon = wall_ns(start.wall).saturating_sub(MARGIN.as_nanos() as i64);
        *self.lock() = Some((start.wall, start.mono));
        self.wall_ns.store(horizon, Ordering::Relaxed);
    }

    /// Called at the start of every run: the horizon is dropped when the wall clock has
    /// moved differently from the monotonic clock since it was set (a step of the clock).
    pub(super) fn check_clock(&self) {
        let set_at = *self.lock();
        let Some((wall, mono)) = set_at else { return };
        let by_mono = mono.elapsed();
        let jumped = match SystemTime::now().duration_since(wall) {
            Ok(by_wall) => by_wall.abs_diff(by_mono) > MARGIN / 2,
            Err(_) => true, // the wall clock went back past the mark
        };
        if jumped {
            self.wall_ns.store(NONE, Ordering::Relaxed);
            *self.lock() = None;
        }
    }

    /// True if neither side of this entry changed since the last clean pass looked at it.
    pub(super) fn unchanged(&self, src: &Entry, dst: &Entry) -> bool {
        let horizon = self.wall_ns.load(Ordering::Relaxed);
        horizon != NONE && time_ns(src.ctime) < horizon && time_ns(dst.ctime) < horizon
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(SystemTime, Instant)>> {
        self.set_at.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_ctime(sec: i64) -> Entry {
        let mut e = Entry::stat_fd(rustix::fs::CWD).expect("stat");
        e.ctime = Time { sec, nsec: 0 };
        e
    }

    #[test]
    fn only_entries_older_than_a_clean_pass_on_both_sides_are_skipped() {
        let h = Horizon::new(true);
        let old = with_ctime(1_000);
        assert!(!h.unchanged(&old, &old), "no clean pass yet");
        h.passed_clean(Horizon::pass_start());
        assert!(h.unchanged(&old, &old));
        let now = wall_ns(SystemTime::now()) / 1_000_000_000;
        assert!(!h.unchanged(&old, &with_ctime(now)), "REPLICA changed since");
        assert!(!h.unchanged(&with_ctime(now), &old), "SOURCE changed since");
        assert!(!h.unchanged(&with_ctime(now - 1), &old), "within the margin");
    }

    #[test]
    fn never_on_for_filesystems_with_another_clock() {
        let h = Horizon::new(false);
        h.passed_clean(Horizon::pass_start());
        assert!(!h.unchanged(&with_ctime(1_000), &with_ctime(1_000)));
    }

    #[test]
    fn a_wall_clock_jump_turns_it_off() {
        let h = Horizon::new(true);
        let start =
            PassStart { wall: SystemTime::now() - Duration::from_secs(3600), mono: Instant::now() };
        h.passed_clean(start);
        assert!(h.unchanged(&with_ctime(1_000), &with_ctime(1_000)));
        h.check_clock();
        assert!(!h.unchanged(&with_ctime(1_000), &with_ctime(1_000)), "an hour's jump went unseen");
    }
}

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
//! must not have jumped since T (checked against the boot clock at every run). A margin
//! covers coarse timestamps. Anything else turns the horizon off: every entry is read.
//!
//! T outlives the process (`state`): the next `--once` or a restarted service starts from
//! the mark of the last clean pass of the same configuration, in the same boot, while the
//! wall clock still agrees with the boot clock. Between two runs nothing of ours writes,
//! so what changed moved a ctime past T just the same.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use tracing::warn;

use crate::entry::{Entry, Time};
use crate::state::{self, Mark, StateFile};

/// Slack for filesystems that keep whole seconds and for the kernel's coarse clock.
const MARGIN: Duration = Duration::from_secs(2);

/// No horizon: every entry's attributes are read.
const NONE: i64 = i64::MIN;

/// Filesystems whose timestamps come from this machine's clock and that move an inode's
/// ctime on every attribute change (statfs magic numbers). Left out: zfs (ctime not moved
/// by every xattr change, openzfs#3644), overlayfs (its upper or lower layer may be
/// another machine's), and tmpfs before Linux 6.6 (`security.*`/`trusted.*` changes left
/// ctime alone) — see [`TMPFS`].
const LOCAL: [i64; 6] = [
    0xEF53,      // ext2/3/4
    0x5846_5342, // xfs
    0x9123_683E, // btrfs
    0xF2F5_2010, // f2fs
    0xCA45_1A4E, // bcachefs
    0x3153_464A, // jfs
];

/// tmpfs and ramfs: local, and since 6.6 every xattr change moves the ctime.
const TMPFS: [i64; 2] = [0x0102_1994, 0x8584_58f6];

/// When the last clean full pass started, as far as it can be trusted.
pub(super) struct Horizon {
    /// Both roots are on local filesystems: ctimes and our clock agree.
    local: bool,
    /// The horizon in wall-clock nanoseconds since the epoch (`NONE`: off).
    wall_ns: AtomicI64,
    /// The clocks when the horizon was set, to notice a wall-clock jump since.
    set_at: Mutex<Option<Mark>>,
    /// This boot's id: a mark from another boot is not believed.
    boot_id: String,
    /// Where the mark is kept for the next run, if anywhere.
    store: Option<StateFile>,
    /// A failed save is said once.
    save_warned: AtomicBool,
    /// Both roots, whose mounts (on and under them) a mark is only good for.
    roots: Vec<PathBuf>,
}

/// The clocks at the start of a full pass.
#[derive(Clone)]
pub(super) struct PassStart(Mark);

fn time_ns(t: Time) -> i64 {
    t.sec.saturating_mul(1_000_000_000).saturating_add(i64::from(t.nsec))
}

/// True if the filesystem holding `fd` stamps ctimes with this machine's clock.
// `f_type`'s integer type differs between architectures.
#[allow(clippy::unnecessary_cast)]
pub(super) fn is_local(fd: impl AsFd) -> bool {
    rustix::fs::fstatfs(fd).is_ok_and(|s| {
        let kind = s.f_type as i64;
        LOCAL.contains(&kind) || (TMPFS.contains(&kind) && kernel_at_least(6, 6))
    })
}

/// True if the running kernel's release is at least `major.minor`.
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse().ok());
    let (Some(have_major), Some(have_minor)) = (parts.next(), parts.next()) else { return false };
    (have_major, have_minor) >= (major, minor)
}

/// True if the wall clock moved as the boot clock did between `then` and `now` (nothing
/// stepped it), in the same boot.
fn same_clock(then: &Mark, now: &Mark) -> bool {
    let by_wall = now.wall_ns.saturating_sub(then.wall_ns);
    let by_boot = now.boot_ns.saturating_sub(then.boot_ns);
    !then.boot_id.is_empty()
        && then.boot_id == now.boot_id
        && by_wall >= 0
        && by_wall.abs_diff(by_boot) <= (MARGIN / 2).as_nanos() as u64
}

impl Horizon {
    /// A horizon that is off until a clean pass sets it — or set from the mark an earlier
    /// run left in `store`, if it is still good; never on unless `local`.
    pub(super) fn new(local: bool, store: Option<StateFile>, roots: Vec<PathBuf>) -> Horizon {
        let horizon = Horizon {
            local,
            wall_ns: AtomicI64::new(NONE),
            set_at: Mutex::new(None),
            boot_id: state::boot_id(),
            store,
            save_warned: AtomicBool::new(false),
            roots,
        };
        if let Some(mark) = horizon.store.as_ref().and_then(StateFile::load) {
            horizon.set(mark);
            horizon.check_clock();
        }
        horizon
    }

    /// The clocks now, to hand to [`Horizon::passed_clean`] when the pass ends.
    pub(super) fn pass_start(&self) -> PassStart {
        let mut mark = state::now(&self.boot_id);
        mark.layout = state::mount_layout(&self.roots);
        PassStart(mark)
    }

    /// A full pass that started at `start` looked at every entry without error.
    /// `keep`: the mark may outlive the process — false when REPLICA refused an attribute
    /// namespace, which the next process will try again on entries this one never set.
    pub(super) fn passed_clean(&self, start: PassStart, keep: bool) {
        if !self.local {
            return;
        }
        self.set(start.0.clone());
        let Some(store) = self.store.as_ref().filter(|_| keep) else { return };
        if let Err(e) = store.save(&start.0)
            && !self.save_warned.swap(true, Ordering::Relaxed)
        {
            let path = store.path().display();
            warn!(path = %path, error = %e, "cannot keep the pass mark for the next run; it will read every attribute again");
        }
    }

    fn set(&self, mark: Mark) {
        if !self.local {
            return;
        }
        let horizon = mark.wall_ns.saturating_sub(MARGIN.as_nanos() as i64);
        *self.lock() = Some(mark);
        self.wall_ns.store(horizon, Ordering::Relaxed);
    }

    /// Called at the start of every run: the horizon is dropped when the wall clock has
    /// moved differently from the boot clock since it was set (a step of the clock).
    pub(super) fn check_clock(&self) {
        let set_at = self.lock().clone();
        let Some(mark) = set_at else { return };
        if !same_clock(&mark, &state::now(&self.boot_id))
            || mark.layout != state::mount_layout(&self.roots)
        {
            self.wall_ns.store(NONE, Ordering::Relaxed);
            *self.lock() = None;
        }
    }

    /// True if neither side of this entry changed since the last clean pass looked at it.
    pub(super) fn unchanged(&self, src: &Entry, dst: &Entry) -> bool {
        let horizon = self.wall_ns.load(Ordering::Relaxed);
        horizon != NONE && time_ns(src.ctime) < horizon && time_ns(dst.ctime) < horizon
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Mark>> {
        self.set_at.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    use super::*;
    use crate::state::Fingerprint;

    fn with_ctime(sec: i64) -> Entry {
        let mut e = Entry::stat_fd(rustix::fs::CWD).expect("stat");
        e.ctime = Time { sec, nsec: 0 };
        e
    }

    fn now_sec() -> i64 {
        state::now("").wall_ns / 1_000_000_000
    }

    fn store(dir: &Path, options: &[(&'static str, bool)]) -> StateFile {
        let f = Fingerprint { source: dir, replica: dir, exclude_patterns: &[], options };
        StateFile::new(&dir.join("state"), &f).expect("state dir").expect("roots exist")
    }

    #[test]
    fn only_entries_older_than_a_clean_pass_on_both_sides_are_skipped() {
        let h = Horizon::new(true, None, vec![]);
        let old = with_ctime(1_000);
        assert!(!h.unchanged(&old, &old), "no clean pass yet");
        h.passed_clean(h.pass_start(), true);
        assert!(h.unchanged(&old, &old));
        let now = now_sec();
        assert!(!h.unchanged(&old, &with_ctime(now)), "REPLICA changed since");
        assert!(!h.unchanged(&with_ctime(now), &old), "SOURCE changed since");
        assert!(!h.unchanged(&with_ctime(now - 1), &old), "within the margin");
    }

    #[test]
    fn never_on_for_filesystems_with_another_clock() {
        let h = Horizon::new(false, None, vec![]);
        h.passed_clean(h.pass_start(), true);
        assert!(!h.unchanged(&with_ctime(1_000), &with_ctime(1_000)));
    }

    #[test]
    fn a_wall_clock_jump_turns_it_off() {
        let h = Horizon::new(true, None, vec![]);
        let mut start = h.pass_start();
        start.0.wall_ns -= 3_600_000_000_000;
        h.passed_clean(start, true);
        assert!(h.unchanged(&with_ctime(1_000), &with_ctime(1_000)));
        h.check_clock();
        assert!(!h.unchanged(&with_ctime(1_000), &with_ctime(1_000)), "an hour's jump went unseen");
    }

    #[test]
    fn the_next_run_starts_from_the_mark_of_the_last_clean_pass() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = Horizon::new(true, Some(store(dir.path(), &[("xattrs", true)])), vec![]);
        assert!(!first.unchanged(&with_ctime(1_000), &with_ctime(1_000)), "nothing kept yet");
        first.passed_clean(first.pass_start(), true);
        let next = Horizon::new(true, Some(store(dir.path(), &[("xattrs", true)])), vec![]);
        assert!(next.unchanged(&with_ctime(1_000), &with_ctime(1_000)), "the mark was lost");
        assert!(!next.unchanged(&with_ctime(now_sec()), &with_ctime(1_000)));
    }

    #[test]
    fn a_mark_is_not_believed_under_another_configuration_or_from_a_stranger() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kept = store(dir.path(), &[("xattrs", true)]);
        Horizon::new(true, Some(kept.clone()), vec![])
            .passed_clean(Horizon::new(true, None, vec![]).pass_start(), true);
        let believed = |s: StateFile| {
            Horizon::new(true, Some(s), vec![]).unchanged(&with_ctime(9), &with_ctime(9))
        };
        assert!(believed(kept.clone()), "precondition: the mark is good");
        assert!(!believed(store(dir.path(), &[("xattrs", true), ("x", true)])), "other options");
        assert!(
            !Horizon::new(false, Some(kept.clone()), vec![])
                .unchanged(&with_ctime(9), &with_ctime(9))
        );
        fs::set_permissions(kept.path(), fs::Permissions::from_mode(0o622)).expect("chmod");
        assert!(!believed(kept.clone()), "a file others may write was believed");
        fs::set_permissions(kept.path(), fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(believed(kept.clone()));
        let text = fs::read_to_string(kept.path()).expect("read");
        let other_boot = text.replace(&state::boot_id(), "another-boot");
        assert_ne!(text, other_boot, "precondition: the boot id is in the file");
        fs::write(kept.path(), other_boot).expect("write");
        assert!(!believed(kept), "a mark from another boot was believed");
    }

    #[test]
    fn a_mark_from_before_a_clock_step_is_not_believed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kept = store(dir.path(), &[]);
        let mut mark = state::now(&state::boot_id());
        mark.wall_ns += 3_600_000_000_000; // the clock was an hour ahead then
        kept.save(&mark).expect("save");
        let h = Horizon::new(true, Some(kept), vec![]);
        assert!(!h.unchanged(&with_ctime(1_000), &with_ctime(1_000)));
    }
}

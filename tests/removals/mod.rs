//! Regressions for the event path's removals (issue "Trust (2/3)", item 1): sequences that
//! notify-debouncer-full 0.7 folds so that a name which left SOURCE is never reported (a
//! rename whose target is renamed onto or removed again, a file created and removed within
//! one debounce). Each test runs the real service with `--interval 1h`, so only events can
//! explain a replica that catches up, changes SOURCE once, and asserts with the strict
//! oracle (parent mtimes included) within the debounce plus a slack for a loaded 2-core
//! machine; no second full pass may have run.
//!
//! Also holds the small service helpers the event-path property test (`prop::events`) uses.

use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{
    PASS_COMPLETE, Service, Tree, assert_same, compare, inotify_watched_inodes, wait_until,
};

/// Only the watcher can act within a test's lifetime.
pub const EVENTS_ONLY: &[&str] = &["--interval", "1h"];

/// replicad's default `--debounce`.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// Added to the debounce for a loaded CI machine: a bound on a hang, not an expectation
/// (the time each case took is printed).
pub const SLACK: Duration = Duration::from_secs(3);

/// An mtime far in the past, so a change that moves a directory's mtime is always visible.
const OLD: i64 = 1_500_000_000;

/// Starts `replicad SRC DST extra...` and waits for its first pass.
pub fn running(t: &Tree, extra: &[&str]) -> Service {
    let mut svc = t.spawn(extra);
    svc.wait_first_pass();
    svc
}

/// Waits up to `deadline` for REPLICA to compare equal to SOURCE, then asserts it strictly
/// and that no full pass but the first ran; returns how long it took. On failure, shows the
/// difference and the service log.
#[track_caller]
pub fn converges_by_events(t: &Tree, svc: &Service, deadline: Duration) -> Duration {
    let started = Instant::now();
    if !wait_until(deadline, || compare(t.src(), t.dst()).is_ok()) {
        let diff = compare(t.src(), t.dst()).err().map(|d| d.to_string()).unwrap_or_default();
        panic!("REPLICA did not converge within {deadline:?}\n{diff}\nservice log:\n{}", svc.log());
    }
    let took = started.elapsed();
    assert_same(t.src(), t.dst());
    assert_eq!(svc.count(PASS_COMPLETE), 1, "a full pass explains it, not events:\n{}", svc.log());
    took
}

/// One case: build SOURCE, start the service on events only, change SOURCE, and see REPLICA
/// follow within the debounce plus [`SLACK`].
#[track_caller]
fn case(name: &str, setup: impl FnOnce(&Tree), change: impl FnOnce(&Tree)) {
    let t = Tree::new();
    setup(&t);
    let svc = running(&t, EVENTS_ONLY);
    assert_same(t.src(), t.dst());
    change(&t);
    let took = converges_by_events(&t, &svc, DEBOUNCE + SLACK);
    eprintln!("{name}: converged {took:?} after the change");
}

#[test]
fn rename_onto_a_name_then_renamed_onto_again_removes_both_old_names() {
    // See: issue "Trust (2/3)", item 1 (`mv A M; mv B M`)
    case(
        "mv A M; mv B M",
        |t| {
            t.file("d/A", b"first").file("d/B", b"second!").file("keep", b"k").mtime("d", OLD, 0);
        },
        |t| {
            t.rename("d/A", "d/M").rename("d/B", "d/M");
        },
    );
}

#[test]
fn rename_then_remove_of_the_new_name_removes_the_old_name() {
    // See: issue "Trust (2/3)", item 1 (`mv C X; rm X`), across directories so both
    // parents' mtimes move.
    case(
        "mv C X; rm X",
        |t| {
            t.file("d/C", b"c").file("e/other", b"o").mtime("d", OLD, 0).mtime("e", OLD, 0);
        },
        |t| {
            t.rename("d/C", "e/X").remove("e/X");
        },
    );
}

#[test]
fn renamed_tree_removed_with_rm_rf_leaves_no_old_tree() {
    // See: issue "Trust (2/3)", item 1 (`mv D Y; rm -rf Y`, Y a tree). Three trees side by
    // side: notify 8.2.2 sometimes reports the old name anyway, through the moved
    // directory's own IN_MOVE_SELF under its stale path, which hid the bug about half the
    // time with one tree.
    case(
        "mv D Y; rm -rf Y (three trees)",
        |t| {
            for i in 0..3 {
                t.file(format!("D{i}/a/b/c/leaf"), b"1")
                    .file(format!("D{i}/a/x"), b"2")
                    .symlink(format!("D{i}/a/l"), "x")
                    .dir(format!("D{i}/empty"));
            }
            t.file("stays", b"s").mtime("", OLD, 0);
        },
        |t| {
            for i in 0..3 {
                t.rename(format!("D{i}"), format!("Y{i}")).remove(format!("Y{i}"));
            }
        },
    );
}

#[test]
fn rename_then_gzip_leaves_neither_old_name() {
    // See: issue "Trust (2/3)", item 1 (`mv report.txt archive.txt; gzip archive.txt`)
    case(
        "mv report.txt archive.txt; gzip archive.txt",
        |t| {
            t.file("logs/report.txt", "line of the report\n".repeat(200))
                .file("logs/older.gz", b"x")
                .mtime("logs", OLD, 0);
        },
        |t| {
            t.rename("logs/report.txt", "logs/archive.txt");
            let gzip = Command::new("gzip").arg(t.join("logs/archive.txt")).status();
            assert!(matches!(gzip, Ok(s) if s.success()), "gzip failed: {gzip:?}");
        },
    );
}

#[test]
fn lock_file_created_and_removed_within_a_debounce_leaves_the_parent_mtime_right() {
    // See: issue "Trust (2/3)", item 1 (a lock file created and removed within one
    // debounce: no event at all, but the directory's mtime moved twice).
    case(
        "touch d/.lock; rm d/.lock",
        |t| {
            t.file("d/f", b"data").mtime("d", OLD, 0);
        },
        |t| {
            t.file("d/.lock", b"1234\n").remove("d/.lock");
        },
    );
}

#[test]
fn lock_file_copied_by_a_recursive_reconcile_then_removed_is_removed() {
    // See: issue "Trust (2/3)", item 1 (the lock file was created inside a new directory
    // and copied by that directory's recursive reconcile; its removal comes within the
    // lock file's own debounce, so the debouncer drops its create and remove together).
    let debounce = Duration::from_millis(1000);
    let t = Tree::new();
    t.file("keep", b"k");
    let svc = running(&t, &["--interval", "1h", "--debounce", "1s"]);
    assert_same(t.src(), t.dst());
    t.file("d/f", b"data");
    let ino = t.lstat("d").ino();
    assert!(
        wait_until(SLACK, || inotify_watched_inodes(svc.pid()).contains(&ino)),
        "the new directory was never watched; log:\n{}",
        svc.log()
    );
    // Scenario timing, not a wait: the program writes its lock a moment after making the
    // directory, so the directory's event (and its recursive reconcile) comes first.
    std::thread::sleep(Duration::from_millis(200));
    let locked = Instant::now();
    t.file("d/.lock", b"1234\n");
    assert!(
        wait_until(debounce + SLACK, || t.replica().exists("d/.lock")),
        "the recursive reconcile of d never copied the lock file; log:\n{}",
        svc.log()
    );
    t.remove("d/.lock");
    if locked.elapsed() >= debounce {
        eprintln!("note: the lock lived longer than a debounce; its removal was an event");
    }
    let took = converges_by_events(&t, &svc, debounce + SLACK);
    eprintln!("lock copied then removed: converged {took:?} after the removal");
}

//! Never touch what is not ours ("Trust (1/3)"): regressions for each boundary hole, and
//! the mount games — REPLICA unmounted, replaced or removed under a running service,
//! SOURCE swapped for a symlink, REPLICA bind-mounted inside SOURCE and SOURCE inside
//! REPLICA, a log file inside either root, excluded entries under a removed directory,
//! stale entries where SOURCE has something that cannot be mirrored, planted content that
//! must not be handed SOURCE's owner or setuid bits.
//!
//! Mount tests run the binary in a private mount namespace (`unshare --mount`), so nothing
//! is mounted on the host; a test changes mounts inside it with `nsenter`. They need root,
//! as the whole suite does (README): where the namespace cannot be made they fail, naming
//! why, rather than pass having proved nothing.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::support::mounts::{
    SHOW, in_mount_namespace, nsenter, once_in_mount_namespace, roots_and, wait_more,
};
use crate::support::{
    CompareOptions, NOBODY, PASS_COMPLETE, Tree, assert_same, assert_same_with, assert_unchanged,
    compare, has_action, set_mtime, snapshot, wait_until,
};

/// The debug line a guard logs each time it is checked and still holds.
const STILL_HOLDING: &str = "still holding";

/// A service with passes every 300 ms and debug lines, so a test can count the guard's
/// re-checks instead of sleeping.
const BUSY: &[&str] = &["--interval", "300ms", "-v"];

// ---- REPLICA's own guard (#7.3) -------------------------------------------------------------

#[test]
fn unmounted_replica_is_not_refilled_onto_the_disk_below_and_a_new_disk_is_not_emptied() {
    // See: issue "Trust (1/3)" hole 3
    let t = Tree::new();
    t.file("a/one", b"1").file("two", b"2");
    t.replica().dir("");
    let setup = format!("mount -t tmpfs replica-disk '{}'", t.dst().display());
    let mut svc = t.spawn_command(in_mount_namespace(&setup, &roots_and(&t, BUSY)));
    svc.wait_first_pass();
    let pid = svc.pid();
    // Outside the namespace, REPLICA's path shows the directory below the mount.
    assert!(t.replica().names("").is_empty(), "the first pass wrote below the mount");

    nsenter(pid, &["umount", "-l", &t.dst().display().to_string()]);
    assert!(svc.wait_log(SHOW, "replica guard"), "no replica guard error; log:\n{}", svc.log());
    t.file("three", b"3"); // an event, too, must not write
    wait_more(&svc, STILL_HOLDING, 3);
    assert!(
        t.replica().names("").is_empty(),
        "REPLICA was refilled onto the filesystem below its mount point; log:\n{}",
        svc.log()
    );

    // Another disk mounted there: its data is not REPLICA's, and nothing is deleted.
    let dst = t.dst().display().to_string();
    nsenter(pid, &["mount", "-t", "tmpfs", "other-disk", &dst]);
    nsenter(pid, &["sh", "-c", &format!("echo precious > '{dst}/precious'")]);
    wait_more(&svc, STILL_HOLDING, 3);
    let kept = nsenter(pid, &["cat", &format!("{dst}/precious")]);
    assert_eq!(kept.stdout, b"precious\n", "another disk's data was deleted");
    let log = svc.log();
    let trips = log.lines().filter(|l| l.contains("ERROR") && l.contains("replica guard")).count();
    assert_eq!(trips, 1, "the trip is logged once:\n{log}");
    assert!(log.contains("no longer on the filesystem"), "the error says why:\n{log}");
}

#[test]
fn vanished_replica_is_an_error_not_re_created_until_it_is_back() {
    // See: issue "Trust (1/3)" hole 3 ("a vanished REPLICA is silently re-created")
    let t = Tree::new();
    t.file("a/one", b"1");
    let mut svc = t.spawn(BUSY);
    svc.wait_first_pass();
    fs::remove_dir_all(t.dst()).unwrap();
    assert!(svc.wait_log(SHOW, "replica has disappeared"), "log:\n{}", svc.log());
    wait_more(&svc, STILL_HOLDING, 3);
    assert!(!t.dst().exists(), "REPLICA was re-created; log:\n{}", svc.log());
    assert!(!svc.log().contains("source has disappeared"), "the error must name REPLICA");

    // Back on the same filesystem: the guard lets go and the copy is made again.
    fs::create_dir(t.dst()).unwrap();
    assert!(svc.wait_log(SHOW, "replica guard released"), "log:\n{}", svc.log());
    assert!(wait_until(SHOW, || compare(t.src(), t.dst()).is_ok()), "log:\n{}", svc.log());
    assert_same(t.src(), t.dst());
}

// ---- SOURCE resolved once (#7.2) ------------------------------------------------------------

#[test]
fn source_swapped_for_a_symlink_is_a_guard_trip_never_followed() {
    // See: issue "Trust (1/3)" hole 2
    let t = Tree::new();
    t.file("mine", b"mine").file("sub/also-mine", b"m");
    let elsewhere = t.base().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    fs::write(elsewhere.join("not-mine"), b"x").unwrap();
    let mut svc = t.spawn(BUSY);
    svc.wait_first_pass();
    let before = snapshot(t.dst());

    let away = t.base().join("src.away");
    fs::rename(t.src(), &away).unwrap();
    std::os::unix::fs::symlink(&elsewhere, t.src()).unwrap();
    assert!(svc.wait_log(SHOW, "passes through a symlink"), "log:\n{}", svc.log());
    wait_more(&svc, STILL_HOLDING, 3);
    assert_unchanged("REPLICA while SOURCE is a symlink", &before, &snapshot(t.dst()));
    let log = svc.log();
    assert!(!log.contains("not-mine"), "the symlinked directory was read:\n{log}");

    fs::remove_file(t.src()).unwrap();
    fs::rename(&away, t.src()).unwrap();
    assert!(svc.wait_log(SHOW, "deletion guard released"), "log:\n{}", svc.log());
    wait_more(&svc, PASS_COMPLETE, 2);
    assert_same(t.src(), t.dst());
    assert!(!has_action(&svc.log(), "remove", "mine"), "REPLICA was emptied:\n{}", svc.log());
}

// ---- Bind mounts (#7.4) ---------------------------------------------------------------------

#[test]
fn replica_bind_mounted_inside_source_is_not_copied_into_itself() {
    // See: issue "Trust (1/3)" hole 4
    let t = Tree::new();
    t.file("f", b"f").dir("mirror");
    t.replica().file("stale", b"s");
    let run = once_in_mount_namespace(&t, r#"mount --bind "$D" "$S/mirror""#, &[]);
    run.assert_code(0);
    assert_eq!(run.lines_with("mounted again here").len(), 1, "one warning:\n{run}");
    assert!(!t.replica().exists("mirror"), "REPLICA was copied into itself:\n{run}");
    assert_eq!(t.replica().read("f"), b"f");
    assert!(!t.replica().exists("stale"));
}

#[test]
fn source_bind_mounted_inside_replica_is_never_emptied() {
    // See: issue "Trust (1/3)" hole 4, the other way round: removing REPLICA/inner would
    // delete SOURCE through the mount.
    let t = Tree::new();
    t.file("f", b"f").file("sub/g", b"g");
    t.replica().dir("inner");
    let before = snapshot(t.src());
    let run = once_in_mount_namespace(&t, r#"mount --bind "$S" "$D/inner""#, &[]);
    assert_unchanged("SOURCE", &before, &snapshot(t.src()));
    assert!(!run.lines_with("mounted again here").is_empty(), "{run}");
    assert_eq!(t.replica().read("f"), b"f");
}

#[test]
fn source_bind_mounted_below_a_replica_directory_that_must_go_is_an_error_not_a_deletion() {
    let t = Tree::new();
    t.file("f", b"f").file("sub/g", b"g");
    t.replica().dir("old/deeper/inner").file("old/x", b"x");
    let before = snapshot(t.src());
    let run = once_in_mount_namespace(&t, r#"mount --bind "$S" "$D/old/deeper/inner""#, &[]);
    run.assert_code(23);
    assert_unchanged("SOURCE", &before, &snapshot(t.src()));
    assert!(!run.lines_with("old/deeper/inner").is_empty(), "the error names it:\n{run}");
    assert!(!t.replica().exists("old/x"), "the rest of the directory goes:\n{run}");
}

// ---- Files replicad writes itself (#7.5) ------------------------------------------------------

#[test]
fn log_file_inside_source_or_replica_is_refused_before_anything_is_touched() {
    // See: issue "Trust (1/3)" hole 5
    let t = Tree::new();
    t.file("f", b"f").dir("logs");
    let before = snapshot(t.src());
    let inside_source = t.src().join("logs/replicad.log");
    let run = t.once(&["--log-file", inside_source.to_str().unwrap()]);
    run.assert_code(1);
    assert!(run.stderr.contains("inside the source"), "{run}");
    assert_unchanged("SOURCE", &before, &snapshot(t.src()));
    assert!(!t.dst().exists(), "REPLICA was created:\n{run}");

    let inside_replica = t.dst().join("replicad.log");
    let run = t.once(&["--log-file", inside_replica.to_str().unwrap()]);
    run.assert_code(1);
    assert!(run.stderr.contains("inside the replica"), "{run}");
    assert!(!t.dst().exists(), "REPLICA was created:\n{run}");
}

#[test]
fn log_file_reached_through_a_symlinked_directory_into_source_is_refused() {
    let t = Tree::new();
    t.file("f", b"f");
    let link = t.base().join("logdir");
    std::os::unix::fs::symlink(t.src(), &link).unwrap();
    let run = t.once(&["--log-file", link.join("x.log").to_str().unwrap()]);
    run.assert_code(1);
    assert!(!t.src().join("x.log").exists(), "the log file was created in SOURCE:\n{run}");
}

// ---- Excluded entries are never removed (#7.6) ---------------------------------------------

#[test]
fn directory_that_must_go_keeps_its_excluded_entries() {
    // See: issue "Trust (1/3)" hole 6
    let t = Tree::new();
    t.file("f", b"f");
    t.replica().file("gone/keep.o", b"o").file("gone/drop.txt", b"d").file("gone/sub/x.o", b"x");
    t.replica().file("gone/sub/y", b"y");
    let run = t.once(&["--exclude", "*.o"]);
    run.assert_code(0);
    assert_eq!(t.replica().read("gone/keep.o"), b"o", "{run}");
    assert_eq!(t.replica().read("gone/sub/x.o"), b"x", "{run}");
    assert!(!t.replica().exists("gone/drop.txt") && !t.replica().exists("gone/sub/y"), "{run}");
    assert_eq!(run.lines_with("holds excluded entries").len(), 1, "one line says why:\n{run}");
    let excluded = |p: &Path| p.extension().is_some_and(|e| e == "o") || p.ends_with("sub");
    let opts = CompareOptions {
        exclude: &|p: &Path| excluded(p) || p.starts_with("gone"),
        ..CompareOptions::default()
    };
    assert_same_with(t.src(), t.dst(), &opts);
    // Nothing left to do: the second run changes nothing and says nothing at INFO.
    let again = t.once(&["--exclude", "*.o"]);
    again.assert_code(0);
    assert!(again.actions().is_empty() && again.lines_with("holds excluded").is_empty(), "{again}");
}

#[test]
fn file_cannot_replace_a_directory_that_holds_excluded_entries() {
    let t = Tree::new();
    t.file("build", b"now a file");
    t.replica().file("build/cache.o", b"o").file("build/other", b"x");
    let run = t.once(&["--exclude", "*.o"]);
    run.assert_code(23);
    assert!(!run.lines_with("cannot make way").is_empty(), "{run}");
    assert_eq!(t.replica().read("build/cache.o"), b"o");
}

#[test]
fn renamed_directory_does_not_carry_an_anchored_exclusion_away() {
    // See: issue "Trust (1/3)" hole 6, via follow_rename
    let t = Tree::new();
    t.file("a/f", b"f").file("a/cache/data", b"d");
    t.replica().file("a/cache/local-only", b"keep me");
    let mut svc = t.spawn(&["--interval", "1h", "--exclude", "/a/cache"]);
    svc.wait_first_pass();
    assert_eq!(t.replica().read("a/cache/local-only"), b"keep me");

    t.rename("a", "b");
    let moved = || {
        t.replica().exists("b/f")
            && t.replica().exists("b/cache/data")
            && !t.replica().exists("a/f")
    };
    assert!(wait_until(SHOW, moved), "the rename was not mirrored; log:\n{}", svc.log());
    assert_eq!(
        t.replica().read("a/cache/local-only"),
        b"keep me",
        "an excluded entry was moved or removed; log:\n{}",
        svc.log()
    );
}

// ---- Entries that must go even though nothing replaces them (#7.7) --------------------------

#[test]
fn stale_replica_entry_where_source_has_a_socket_is_removed() {
    // See: issue "Trust (1/3)" hole 7
    let t = Tree::new();
    t.socket("s").file("f", b"f");
    t.replica().file("s", b"stale").dir("d/inner");
    t.socket("d");
    let run = t.once(&[]);
    run.assert_code(0);
    assert!(!t.replica().exists("s") && !t.replica().exists("d"), "{run}");
    assert!(run.has_action("remove", "s") && run.has_action("remove", "d"), "{run}");
}

#[test]
fn stale_replica_entry_where_source_has_a_device_we_may_not_create_is_removed() {
    let t = Tree::new();
    t.chardev("dev", 1, 3).file("f", b"f");
    t.replica().file("dev", b"stale");
    t.give_to(NOBODY, NOBODY);
    let run = t.once_as_nobody(&[]);
    run.assert_code(0);
    assert!(!t.replica().exists("dev"), "{run}");
    assert_eq!(run.lines_with("CAP_MKNOD").len(), 1, "{run}");
}

#[test]
fn unprivileged_run_removes_directories_whose_mode_shuts_their_owner_out() {
    let t = Tree::new();
    t.file("f", b"f");
    t.replica().file("locked/a", b"a").file("locked/deep/b", b"b").file("readonly/c", b"c");
    t.give_to(NOBODY, NOBODY);
    t.replica().chmod("locked/deep", 0o000).chmod("locked", 0o000).chmod("readonly", 0o400);
    let run = t.once_as_nobody(&[]);
    run.assert_code(0);
    assert!(!t.replica().exists("locked") && !t.replica().exists("readonly"), "{run}");
    t.assert_mirrored();
}

// ---- Planted content never gets SOURCE's owner or setuid bits -------------------------------

#[test]
fn planted_file_with_sources_size_and_mtime_is_copied_again_not_chowned_in_place() {
    let t = Tree::new();
    t.file("tool", b"#!/bin/sh\necho real\n").chmod("tool", 0o4755).mtime("tool", 1_600_000_000, 1);
    t.replica().file("tool", b"#!/bin/sh\necho EVIL\n").mtime("tool", 1_600_000_000, 1);
    t.give_to(0, 0);
    t.replica().chown("tool", NOBODY, NOBODY);
    let run = t.once(&[]);
    run.assert_code(0);
    assert!(run.has_action("update", "tool"), "{run}");
    assert_eq!(t.replica().read("tool"), b"#!/bin/sh\necho real\n");
    t.assert_mirrored();
}

#[test]
fn replica_file_hard_linked_to_a_file_outside_is_replaced_and_the_outside_file_untouched() {
    let t = Tree::new();
    t.file("f", b"same").chmod("f", 0o600).mtime("f", 1_600_000_000, 0);
    let outside = t.base().join("outside");
    fs::write(&outside, b"same").unwrap();
    fs::set_permissions(&outside, fs::Permissions::from_mode(0o644)).unwrap();
    set_mtime(&outside, 1_600_000_000, 0);
    t.replica().dir("");
    fs::hard_link(&outside, t.dst().join("f")).unwrap();
    let before = fs::metadata(&outside).unwrap();
    let run = t.once(&[]);
    run.assert_code(0);
    let after = fs::metadata(&outside).unwrap();
    assert_eq!(
        (after.mode(), after.uid(), after.mtime()),
        (before.mode(), before.uid(), before.mtime())
    );
    assert_eq!(after.nlink(), 1, "REPLICA still shares the outside inode:\n{run}");
    t.assert_mirrored();
}

// ---- Review findings (adversarial review of the boundary fixes) ------------------------------

#[test]
fn dir_only_exclude_keeps_the_replica_directory_when_source_has_a_file_there() {
    // See: issue "Trust (3/3)" item 7; review finding 1
    let t = Tree::new();
    t.file("build", b"now a file").file("f", b"f");
    t.replica().file("build/keep/data", b"precious");
    let run = t.once(&["--exclude", "build/"]);
    run.assert_code(23);
    assert!(!run.lines_with("cannot make way").is_empty(), "{run}");
    assert_eq!(t.replica().read("build/keep/data"), b"precious", "{run}");
    assert_eq!(t.replica().read("f"), b"f");
}

#[test]
fn negated_exclude_keeps_the_replica_file_when_source_has_a_directory_there() {
    let t = Tree::new();
    t.file("notes/inside", b"i");
    t.replica().file("notes", b"an excluded file");
    // `notes` is excluded, but not as a directory: SOURCE's directory is mirrored.
    let run = t.once(&["--exclude", "notes", "--exclude", "!notes/"]);
    run.assert_code(23);
    assert_eq!(t.replica().read("notes"), b"an excluded file", "{run}");
}

#[test]
fn dir_only_exclude_holds_for_events_too() {
    let t = Tree::new();
    t.file("f", b"f");
    t.replica().file("build/keep/data", b"precious");
    let mut svc = t.spawn(&["--interval", "1h", "--exclude", "build/"]);
    svc.wait_first_pass();
    t.file("build", b"a file now");
    assert!(svc.wait_log(SHOW, "cannot make way"), "log:\n{}", svc.log());
    assert_eq!(t.replica().read("build/keep/data"), b"precious", "{}", svc.log());
}

#[test]
fn source_subdirectory_bind_mounted_into_replica_is_never_emptied() {
    // See: review finding 2: a mount inside REPLICA is neither entered nor removed.
    let t = Tree::new();
    t.file("photos/one.jpg", b"1").file("photos/two.jpg", b"2").file("f", b"f");
    t.replica().dir("view");
    let before = snapshot(t.src());
    let run = once_in_mount_namespace(&t, r#"mount --bind "$S/photos" "$D/view""#, &[]);
    assert_unchanged("SOURCE", &before, &snapshot(t.src()));
    assert!(!run.lines_with("a mount inside the replica").is_empty(), "{run}");
    assert_eq!(t.replica().read("photos/one.jpg"), b"1", "the rest is mirrored:\n{run}");
}

#[test]
fn replica_that_is_a_bind_mount_on_the_same_filesystem_is_guarded_when_unmounted() {
    // See: review finding 3: same device and filesystem id, but no longer a mount.
    let t = Tree::new();
    t.file("a", b"a");
    let real = t.base().join("real-replica");
    fs::create_dir(&real).unwrap();
    t.replica().file("other-service.db", b"not replicad's");
    let setup = format!("mount --bind '{}' '{}'", real.display(), t.dst().display());
    let mut svc = t.spawn_command(in_mount_namespace(&setup, &roots_and(&t, BUSY)));
    svc.wait_first_pass();
    assert_eq!(fs::read(real.join("a")).unwrap(), b"a", "the first pass went into the mount");
    nsenter(svc.pid(), &["umount", &t.dst().display().to_string()]);
    assert!(svc.wait_log(SHOW, "replica guard"), "log:\n{}", svc.log());
    wait_more(&svc, STILL_HOLDING, 2);
    assert_eq!(t.replica().read("other-service.db"), b"not replicad's", "{}", svc.log());
    assert!(!t.replica().exists("a"), "REPLICA was refilled below its mount:\n{}", svc.log());
}

#[test]
fn log_file_reached_through_a_bind_mount_of_a_replica_subdirectory_is_never_removed() {
    // See: review finding 4
    let t = Tree::new();
    t.file("f", b"f");
    t.replica().dir("logs");
    let logdir = t.base().join("logdir");
    fs::create_dir(&logdir).unwrap();
    let log = logdir.join("replicad.log");
    let setup = format!(r#"mount --bind "$D/logs" '{}'"#, logdir.display());
    let run = once_in_mount_namespace(&t, &setup, &["--log-file", log.to_str().unwrap()]);
    // The log went into REPLICA/logs through the mount: it must still be there.
    assert!(t.replica().exists("logs/replicad.log"), "replicad removed its own log:\n{run}");
}

#[test]
fn log_file_reached_through_a_bind_mount_of_a_source_subdirectory_is_never_mirrored() {
    let t = Tree::new();
    t.file("f", b"f").dir("logs");
    let logdir = t.base().join("logdir");
    fs::create_dir(&logdir).unwrap();
    let log = logdir.join("replicad.log");
    let setup = format!(r#"mount --bind "$S/logs" '{}'"#, logdir.display());
    let run = once_in_mount_namespace(&t, &setup, &["--log-file", log.to_str().unwrap()]);
    assert!(!t.replica().exists("logs/replicad.log"), "replicad mirrored its own log:\n{run}");
    assert!(!run.has_action("copy", "logs/replicad.log"), "{run}");
}

#[test]
fn log_file_path_with_dot_dot_is_refused() {
    // See: review finding 5
    let t = Tree::new();
    t.file("f", b"f");
    let sneaky = t.base().join("missing/../src/replicad.log");
    let run = t.once(&["--log-file", sneaky.to_str().unwrap()]);
    run.assert_code(1);
    assert!(run.stderr.contains(".."), "{run}");
    assert!(!t.src().join("replicad.log").exists());
}

#[test]
fn unprivileged_run_works_below_a_search_only_ancestor() {
    // See: review finding 6: the roots' ancestors need search permission only.
    let t = Tree::new();
    t.file("f", b"f");
    t.give_to(NOBODY, NOBODY);
    fs::set_permissions(t.base(), fs::Permissions::from_mode(0o711)).unwrap();
    let run = t.once_as_nobody(&[]);
    run.assert_code(0);
    t.assert_mirrored();
}

#[test]
fn planted_fifo_owned_by_someone_else_is_replaced_not_given_sources_owner() {
    // See: review finding 8
    let t = Tree::new();
    t.fifo("ctl").chmod("ctl", 0o600);
    t.replica().fifo("ctl").chmod("ctl", 0o600);
    t.replica().chown("ctl", NOBODY, NOBODY);
    let planted = t.replica().lstat("ctl").ino();
    let run = t.once(&[]);
    run.assert_code(0);
    assert_ne!(t.replica().lstat("ctl").ino(), planted, "the stranger's FIFO was kept:\n{run}");
    t.assert_mirrored();
}

#[test]
fn reserved_temporary_names_are_never_mirrored_and_leftovers_go() {
    // See: review finding 9
    let t = Tree::new();
    t.file(".replicad.tmp.1.x", b"reserved name in SOURCE").file("f", b"f");
    t.replica().file(".replicad.tmp.1.x", b"leftover");
    let run = t.once(&[]);
    run.assert_code(0);
    assert!(!t.replica().exists(".replicad.tmp.1.x"), "{run}");
}

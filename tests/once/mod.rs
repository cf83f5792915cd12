//! One-shot runs of the `replicad` binary (`--once`, `--dry-run`) against the contract in
//! SPEC.md: one test per row of §1 ("what exact copy means"), per refusal and usage error
//! of §2, the exit statuses, the log lines of §3, and the safety rules of §4 that a single
//! pass can show (deletion guard, unlistable directories, planted symlinks, temp leftovers),
//! then regressions for review findings (some in a PID or mount namespace, failing with a
//! clear message where `unshare` cannot make one). Every result is judged by the oracle in `support`, never by
//! replicad's own code.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::support::{
    CompareOptions, Dir, Kind, NOBODY, Run, Tree, action_lines, as_nobody, assert_same,
    assert_same_with, assert_unchanged, bin, build_chain, compare_chain, need_unshare,
    remove_chain, replicad, snapshot, temp_leftovers, wrapper,
};

/// A small tree with one of each mirrored kind, odd modes and explicit ns mtimes.
fn varied(t: &Tree) {
    t.file("a.txt", b"alpha")
        .file("empty", b"")
        .file("d/b.bin", [0u8, 1, 2, 255, 0, 0])
        .file("d/e/f/deep.txt", b"deep")
        .dir("void")
        .symlink("rel", "a.txt")
        .symlink("abs", "/nonexistent/target")
        .symlink("d/up", "../void")
        .fifo("pipe")
        .chmod("a.txt", 0o640)
        .chmod("d/e", 0o750)
        .mtime("a.txt", 1_500_000_000, 123_456_789)
        .mtime("rel", 1_500_000_001, 1)
        .mtime("d/e/f", 1_500_000_002, 999_999_999)
        .mtime("void", 1_400_000_000, 0);
}

/// Excludes exactly the given relative paths (and what is under them) from a comparison.
fn excluding(paths: &'static [&'static str]) -> impl Fn(&Path) -> bool {
    move |p: &Path| paths.iter().any(|x| p.starts_with(x))
}

/// Asserts a start-up refusal: exit 1, one non-empty line on stderr that names one of
/// `paths`.
#[track_caller]
fn assert_refused(run: &Run, paths: &[&Path]) {
    run.assert_code(1);
    let lines: Vec<&str> = run.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "a refusal is one clear line on stderr:\n{run}");
    assert!(
        paths.iter().any(|p| lines[0].contains(&*p.to_string_lossy())),
        "the refusal should name one of {paths:?}:\n{run}"
    );
}

// ---- SPEC §1: what "exact copy" means ----------------------------------------------------

#[test]
fn every_mirrored_kind_is_copied_into_a_new_replica() {
    let t = Tree::new();
    varied(&t);
    assert!(!t.dst().exists());
    t.once(&[]).assert_code(0);
    t.assert_mirrored();
}

#[test]
fn replica_is_created_with_its_parents() {
    let t = Tree::new();
    t.file("a.txt", b"a");
    let dst = t.base().join("p/q/replica");
    let run = Run::of(replicad().arg("--once").arg(t.src()).arg(&dst));
    run.assert_code(0);
    assert_same(t.src(), &dst);
}

#[test]
fn file_content_is_copied_byte_for_byte() {
    let t = Tree::new();
    let big: Vec<u8> =
        (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    t.file("big", &big).file("zeros", vec![0u8; 70_000]).file("empty", b"").file("nl", b"\n\r\n");
    t.once(&[]).assert_code(0);
    t.assert_mirrored();
}

#[test]
fn symlinks_are_copied_verbatim_and_never_followed() {
    let t = Tree::new();
    Dir::at(t.base().join("outside")).file("secret", b"s");
    t.dir("d")
        .file("d/x", b"x")
        .symlink("to_dir", "d")
        .symlink("escape", "../outside")
        .symlink("dangling", "/nonexistent/x")
        .symlink("odd", OsStr::from_bytes(b"caf\xff/../\x01"))
        .symlink("self", "self");
    t.once(&[]).assert_code(0);
    t.assert_mirrored();
    assert_eq!(t.replica().kind("to_dir"), Some(Kind::Symlink));
    assert_eq!(t.replica().kind("escape"), Some(Kind::Symlink));
}

#[test]
fn source_root_may_be_a_symlink_to_a_directory() {
    let t = Tree::new();
    varied(&t);
    let alias = t.base().join("alias");
    std::os::unix::fs::symlink(t.src(), &alias).unwrap();
    Run::of(replicad().arg("--once").arg(&alias).arg(t.dst())).assert_code(0);
    t.assert_mirrored();
}

#[test]
fn modes_including_setuid_setgid_and_sticky_are_mirrored() {
    let t = Tree::new();
    t.file("suid", b"#!/bin/sh\n")
        .file("sgid", b"x")
        .file("private", b"p")
        .file("none", b"n")
        .dir("tmp")
        .dir("shared")
        .dir("closed")
        .fifo("pipe")
        .chmod("suid", 0o4755)
        .chmod("sgid", 0o2711)
        .chmod("private", 0o600)
        .chmod("none", 0o000)
        .chmod("tmp", 0o1777)
        .chmod("shared", 0o2775)
        .chmod("closed", 0o700)
        .chmod("pipe", 0o620)
        .chmod("", 0o751);
    t.once(&[]).assert_code(0);
    t.assert_mirrored();
}

#[test]
fn mtimes_are_mirrored_to_the_nanosecond() {
    let t = Tree::new();
    t.file("f", b"f")
        .file("d/g", b"g")
        .symlink("l", "f")
        .mtime("f", 1_600_000_000, 1)
        .mtime("d/g", 4_102_444_800, 999_999_999)
        .mtime("l", 1_000_000_000, 500_000_001)
        .mtime("d", 1_234_567_890, 123_456_789)
        .mtime("", 1_111_111_111, 111_111_111);
    t.once(&[]).assert_code(0);
    t.assert_mirrored();
}

#[test]
fn directory_mtime_is_right_after_its_children_were_created() {
    let t = Tree::new();
    for i in 0..50 {
        t.file(format!("d/sub/f{i}"), b"child");
    }
    t.symlink("d/link", "sub").fifo("d/pipe").dir("d/sub/empty");
    t.mtime("d/sub", 1_000_000_000, 7).mtime("d", 1_000_000_001, 8).mtime("", 1_000_000_002, 9);
    t.once(&[]).assert_code(0);
    t.assert_mirrored();
}

#[test]
fn owners_are_mirrored_when_running_as_root() {
    let t = Tree::new();
    t.file("d/f", b"f").symlink("d/l", "f").fifo("p").dir("e");
    for rel in ["d/f", "d/l", "d", "p"] {
        t.chown(rel, 1234, 5678);
    }
    t.chown("e", 0, 5678).chown("", 4321, 8765);
    t.once(&[]).assert_code(0);
    t.assert_mirrored();
}

#[test]
fn char_device_is_recreated_when_running_as_root() {
    let t = Tree::new();
    t.chardev("null", 1, 3).chmod("null", 0o666).file("f", b"f");
    t.once(&[]).assert_code(0);
    t.assert_mirrored();
    assert_eq!(t.replica().kind("null"), Some(Kind::CharDev));
}

#[test]
fn socket_is_skipped_with_one_warning_naming_it() {
    let t = Tree::new();
    t.file("f", b"f").socket("the.sock");
    let run = t.once(&[]);
    run.assert_code(0);
    assert!(!t.replica().exists("the.sock"), "a socket must not be mirrored");
    let warnings: Vec<&str> =
        run.lines_with("the.sock").into_iter().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 1, "one warning naming the socket:\n{run}");
    assert_same_with(
        t.src(),
        t.dst(),
        &CompareOptions { exclude: &excluding(&["the.sock"]), ..Default::default() },
    );
}

#[test]
fn empty_directories_are_mirrored() {
    let t = Tree::new();
    t.dir("a/b/c").dir("x").dir("a/y").chmod("a/b/c", 0o700).mtime("a/b/c", 999, 9);
    t.once(&[]).assert_code(0);
    t.assert_mirrored();
}

#[test]
fn non_utf8_names_are_mirrored_and_logged_escaped() {
    let t = Tree::new();
    let file = Path::new(OsStr::from_bytes(b"caf\xff"));
    let dir = Path::new(OsStr::from_bytes(b"\xfe\xfd"));
    t.file(file, b"bytes")
        .file(dir.join("inéside"), b"i")
        .symlink("ln\x01", OsStr::from_bytes(b"\xff"));
    let run = t.once(&[]);
    run.assert_code(0);
    t.assert_mirrored();
    assert!(run.stderr.contains("caf\\xff"), "non-UTF-8 name not logged escaped:\n{run}");
    assert!(!run.stderr.contains('\u{fffd}'), "a name was logged lossily:\n{run}");
}

#[test]
fn edit_within_the_same_second_is_caught_by_the_nanoseconds() {
    let t = Tree::new();
    t.file("f", b"aaaa").mtime("f", 1_700_000_000, 100);
    t.once(&[]).assert_code(0);
    t.file("f", b"bbbb").mtime("f", 1_700_000_000, 200);
    let run = t.once(&[]);
    run.assert_code(0);
    t.assert_mirrored();
    assert!(run.has_action("update", "f"), "expected an update line:\n{run}");
}

/// A replica whose `f` differs from SOURCE in content only: same size, same mtime.
fn silently_corrupted_replica() -> Tree {
    let t = Tree::new();
    t.file("f", b"aaaa").mtime("f", 1_700_000_000, 5);
    t.once(&[]).assert_code(0);
    t.replica().file("f", b"bbbb").mtime("f", 1_700_000_000, 5);
    t
}

#[test]
fn same_size_same_mtime_difference_is_not_looked_for_without_checksum() {
    let t = silently_corrupted_replica();
    t.file("g", b"proof the pass ran");
    let run = t.once(&[]);
    run.assert_code(0);
    assert_eq!(
        t.replica().read("f"),
        b"bbbb",
        "without --checksum, size+mtime equal means unchanged (by design)"
    );
    assert_eq!(t.replica().read("g"), b"proof the pass ran");
    assert!(!run.has_action("update", "f"), "f looks unchanged without --checksum:\n{run}");
}

#[test]
fn checksum_catches_same_size_same_mtime_difference() {
    let t = silently_corrupted_replica();
    let run = t.once(&["--checksum"]);
    run.assert_code(0);
    t.assert_mirrored();
    assert!(run.has_action("update", "f"), "expected an update line:\n{run}");
}

#[test]
fn stray_file_and_directory_tree_in_replica_are_removed() {
    let t = Tree::new();
    varied(&t);
    t.once(&[]).assert_code(0);
    t.replica()
        .file("stray.txt", b"s")
        .file("junk/a/b/c", b"c")
        .file("junk/a/d", b"d")
        .symlink("d/stray-link", "/")
        .fifo("d/e/stray-pipe");
    let run = t.once(&[]);
    run.assert_code(0);
    t.assert_mirrored();
    assert!(run.has_action("remove", "junk"), "{run}");
    assert!(
        !run.stderr.contains("path=junk/"),
        "a removed directory is one line, not one per entry:\n{run}"
    );
}

#[test]
fn leftover_temp_files_in_replica_are_removed() {
    let t = Tree::new();
    varied(&t);
    t.once(&[]).assert_code(0);
    t.replica().file(".replicad.tmp.4242.1", b"torn").file("d/e/.replicad.tmp.1.99", b"torn");
    t.replica().mtime("", 1, 0);
    t.once(&[]).assert_code(0);
    t.assert_mirrored();
}

// ---- SOURCE is never written ---------------------------------------------------------------

#[test]
fn source_is_left_byte_for_byte_untouched() {
    let t = Tree::new();
    varied(&t);
    t.chown("d/b.bin", 1234, 5678).chmod("d/b.bin", 0o4755);
    let before = snapshot(t.src());
    t.once(&["--checksum", "--verify"]).assert_code(0);
    t.replica().file("a.txt", b"changed in replica").file("extra", b"x");
    t.once(&["--checksum", "--verify"]).assert_code(0);
    assert_unchanged("SOURCE", &before, &snapshot(t.src()));
    t.assert_mirrored();
}

// ---- deep trees ----------------------------------------------------------------------------

/// Removes chain trees without recursion when dropped (std's remove_dir_all recurses once
/// per level, which a 10,000-level tree turns into a stack overflow).
struct ChainCleanup<'a>(&'a [&'a Path]);

impl Drop for ChainCleanup<'_> {
    fn drop(&mut self) {
        for root in self.0 {
            remove_chain(root);
        }
    }
}

#[test]
fn tree_far_deeper_than_path_max_is_mirrored() {
    const DEPTH: usize = 10_000; // paths of 20,000 bytes: five times PATH_MAX
    let t = Tree::new();
    build_chain(t.src(), DEPTH, b"at the bottom");
    let _cleanup = ChainCleanup(&[t.src(), t.dst()]);
    // A debug build takes ~10 s alone here; allow for a loaded 2-core machine.
    let mut cmd = replicad();
    cmd.timeout(std::time::Duration::from_secs(240)).arg("--once").arg(t.src()).arg(t.dst());
    Run::of(&mut cmd).assert_code(0);
    match compare_chain(t.src(), t.dst()) {
        Ok(depth) => assert_eq!(depth, DEPTH, "replica chain is not as deep as the source"),
        Err(e) => panic!("deep replica differs: {e}"),
    }
}

// ---- REPLICA symlinks are never followed ---------------------------------------------------

#[test]
fn symlink_planted_in_replica_is_replaced_not_written_through() {
    let t = Tree::new();
    let elsewhere = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    Dir::at(elsewhere.path()).file("keep", b"k").file("f", b"not yours");
    Dir::at(other.path()).file("keep", b"k2");
    let (before, before_other) = (snapshot(elsewhere.path()), snapshot(other.path()));
    t.file("x/f", b"source f").file("x/sub/g", b"g").file("y/sub/h", b"h").file("a.txt", b"new");
    t.replica()
        .symlink("x", elsewhere.path())
        .symlink("y/sub", other.path())
        .symlink("a.txt", elsewhere.path().join("keep"));
    t.once(&[]).assert_code(0);
    assert_eq!(t.replica().kind("x"), Some(Kind::Dir));
    t.assert_mirrored();
    assert_unchanged(
        "the directory a planted link pointed to",
        &before,
        &snapshot(elsewhere.path()),
    );
    assert_unchanged(
        "the directory a planted link pointed to",
        &before_other,
        &snapshot(other.path()),
    );
}

// ---- SPEC §3: logging ----------------------------------------------------------------------

#[test]
fn first_pass_logs_each_change_with_its_action() {
    let t = Tree::new();
    t.file("d/a.txt", b"abc").symlink("l", "d").fifo("p");
    let run = t.once(&[]);
    run.assert_code(0);
    for (action, path) in [("create", "d"), ("copy", "d/a.txt"), ("create", "l"), ("create", "p")] {
        assert!(run.has_action(action, path), "no action={action} path={path} line:\n{run}");
    }
    let copy = run.lines_with("path=d/a.txt");
    assert!(copy.iter().any(|l| l.contains("size=3")), "a copy line carries the size:\n{run}");
    assert!(!run.lines_with("pass complete").is_empty(), "no summary line:\n{run}");
}

#[test]
fn each_kind_of_change_is_logged_with_its_action_word() {
    let t = Tree::new();
    t.file("upd", b"1111")
        .file("meta", b"m")
        .file("gone", b"g")
        .file("olddir/a", b"a")
        .file("olddir/b", b"b");
    t.once(&[]).assert_code(0);
    t.file("upd", b"22").chmod("meta", 0o600).remove("gone").remove("olddir");
    let run = t.once(&[]);
    run.assert_code(0);
    t.assert_mirrored();
    for (action, path) in
        [("update", "upd"), ("attrs", "meta"), ("remove", "gone"), ("remove", "olddir")]
    {
        assert!(run.has_action(action, path), "no action={action} path={path} line:\n{run}");
    }
}

#[test]
fn second_pass_on_an_unchanged_tree_logs_no_action() {
    let t = Tree::new();
    varied(&t);
    t.once(&[]).assert_code(0);
    let run = t.once(&[]);
    run.assert_code(0);
    assert!(run.actions().is_empty(), "an unchanged tree needs no action:\n{run}");
    assert!(!run.lines_with("pass complete").is_empty(), "no summary line:\n{run}");
    t.assert_mirrored();
}

#[test]
fn log_file_gets_the_same_action_lines_and_its_parents_are_created() {
    let t = Tree::new();
    varied(&t);
    let log = t.base().join("logs/nested/replicad.log");
    let run = t.once(&["--log-file", log.to_str().unwrap()]);
    run.assert_code(0);
    let file = fs::read_to_string(&log).expect("log file written");
    let tail = |text: &str| {
        let mut v: Vec<String> = action_lines(text)
            .iter()
            .filter_map(|l| l.find("action=").map(|i| l[i..].to_owned()))
            .collect();
        v.sort();
        v
    };
    assert!(!tail(&run.stderr).is_empty(), "no action lines on stderr:\n{run}");
    assert_eq!(tail(&file), tail(&run.stderr), "log file and stderr disagree; file:\n{file}");
}

#[test]
fn json_log_format_writes_one_object_per_line() {
    let t = Tree::new();
    t.file("a.txt", b"abc").dir("d");
    let run = t.once(&["--log-format", "json"]);
    run.assert_code(0);
    t.assert_mirrored();
    for line in run.stderr.lines().filter(|l| !l.trim().is_empty()) {
        let l = line.trim();
        assert!(l.starts_with('{') && l.ends_with('}'), "not a JSON object: {line:?}\n{run}");
    }
    assert!(
        run.stderr.lines().any(|l| l.contains("\"action\":\"copy\"") && l.contains("a.txt")),
        "no JSON copy line for a.txt:\n{run}"
    );
}

// ---- options -------------------------------------------------------------------------------

#[test]
fn dry_run_changes_nothing_and_logs_what_it_would_do() {
    let t = Tree::new();
    varied(&t);
    t.once(&[]).assert_code(0);
    t.file("new.txt", b"n").remove("empty").chmod("a.txt", 0o600);
    t.replica().file("stray", b"s");
    let before = snapshot(t.dst());
    let run = Run::of(replicad().arg("--dry-run").arg(t.src()).arg(t.dst()));
    run.assert_code(0);
    assert_unchanged("REPLICA under --dry-run", &before, &snapshot(t.dst()));
    for (action, path) in
        [("copy", "new.txt"), ("remove", "empty"), ("remove", "stray"), ("attrs", "a.txt")]
    {
        assert!(
            run.has_action(action, path),
            "dry run should log action={action} path={path}:\n{run}"
        );
    }
}

#[test]
fn dry_run_does_not_create_the_replica() {
    let t = Tree::new();
    varied(&t);
    let run = Run::of(replicad().arg("--dry-run").arg(t.src()).arg(t.dst()));
    run.assert_code(0);
    assert!(!t.dst().exists(), "--dry-run created REPLICA");
    assert!(run.has_action("copy", "a.txt"), "dry run should log the copy it would make:\n{run}");
}

#[test]
fn excluded_directory_pattern_is_neither_copied_nor_removed() {
    let t = Tree::new();
    t.file("build/x.o", b"o")
        .file("build/sub/y", b"y")
        .file("lib/build/z", b"z")
        .file("keep/build", b"a file, not a directory")
        .file("main.c", b"c");
    t.replica().file("build/old", b"stale but excluded");
    let run = t.once(&["--exclude", "build/"]);
    run.assert_code(0);
    assert_eq!(t.replica().read("build/old"), b"stale but excluded");
    assert!(
        !t.replica().exists("build/x.o") && !t.replica().exists("lib/build"),
        "excluded paths copied"
    );
    assert_eq!(
        t.replica().kind("keep/build"),
        Some(Kind::File),
        "`build/` matches directories only"
    );
    let opts =
        CompareOptions { exclude: &excluding(&["build", "lib/build"]), ..Default::default() };
    assert_same_with(t.src(), t.dst(), &opts);
}

#[test]
fn excluded_glob_pattern_is_neither_copied_nor_removed() {
    let t = Tree::new();
    t.file("a.o", b"o").file("d/b.o", b"o").file("d/c.c", b"c").file("main.c", b"m");
    t.replica().file("old.o", b"stale").file("d/keep.o", b"stale");
    let run = t.once(&["--exclude", "*.o"]);
    run.assert_code(0);
    assert!(!t.replica().exists("a.o") && !t.replica().exists("d/b.o"), "excluded files copied");
    assert!(
        t.replica().exists("old.o") && t.replica().exists("d/keep.o"),
        "excluded files removed"
    );
    let exclude = |p: &Path| p.extension() == Some(OsStr::new("o"));
    assert_same_with(t.src(), t.dst(), &CompareOptions { exclude: &exclude, ..Default::default() });
}

#[test]
fn verify_runs_clean_on_a_normal_tree() {
    let t = Tree::new();
    varied(&t);
    t.file("big", vec![7u8; 1_000_000]);
    let run = t.once(&["--verify"]);
    run.assert_code(0);
    t.assert_mirrored();
    assert!(run.lines_with("ERROR").is_empty(), "{run}");
}

#[test]
fn source_and_replica_can_come_from_the_environment() {
    let t = Tree::new();
    varied(&t);
    let run = Run::of(
        replicad().arg("--once").env("REPLICAD_SOURCE", t.src()).env("REPLICAD_REPLICA", t.dst()),
    );
    run.assert_code(0);
    t.assert_mirrored();
}

#[test]
fn bare_number_interval_means_seconds() {
    let t = Tree::new();
    t.file("f", b"f");
    t.once(&["--interval", "30"]).assert_code(0);
    t.assert_mirrored();
}

// ---- entries that cannot be mirrored (run unprivileged: root reads through mode 000) -------

#[test]
fn unreadable_file_exits_23_names_it_and_the_rest_is_mirrored() {
    let t = Tree::new();
    t.file("a.txt", b"a").file("d/b.txt", b"b").file("secret", b"s");
    t.give_to(NOBODY, NOBODY);
    t.chmod("secret", 0o000);
    let run = t.once_as_nobody(&[]);
    run.assert_code(23);
    let errors = run.lines_with("secret");
    assert!(
        errors.iter().any(|l| l.contains("ermission denied") || l.contains("os error 13")),
        "the error names the path and the OS error:\n{run}"
    );
    assert!(!t.replica().exists("secret"), "an unreadable file must not appear in REPLICA");
    assert_same_with(
        t.src(),
        t.dst(),
        &CompareOptions { exclude: &excluding(&["secret"]), ..Default::default() },
    );
}

#[test]
fn unlistable_source_directory_does_not_empty_its_replica_counterpart() {
    let t = Tree::new();
    t.file("a.txt", b"a").file("locked/x", b"x").file("locked/sub/y", b"y");
    t.once(&[]).assert_code(0);
    t.file("new.txt", b"n");
    t.give_to(NOBODY, NOBODY);
    t.chmod("locked", 0o000);
    let run = t.once_as_nobody(&[]);
    run.assert_code(23);
    assert!(!run.lines_with("locked").is_empty(), "the error names the directory:\n{run}");
    assert_eq!(
        t.replica().read("locked/x"),
        b"x",
        "contents under an unlistable directory were deleted"
    );
    assert_eq!(
        t.replica().read("locked/sub/y"),
        b"y",
        "contents under an unlistable directory were deleted"
    );
    assert_eq!(t.replica().read("new.txt"), b"n", "the rest of the tree is mirrored as usual");
}

// ---- type changes --------------------------------------------------------------------------

fn make(dir: &Dir, kind: Kind) {
    match kind {
        Kind::File => {
            dir.file("x", b"file content");
        }
        Kind::Dir => {
            dir.file("x/inner", b"i").dir("x/empty");
        }
        Kind::Symlink => {
            dir.symlink("x", "some/target");
        }
        Kind::Fifo => {
            dir.fifo("x");
        }
        other => unreachable!("{other}"),
    }
}

#[test]
fn type_changes_in_every_direction_are_followed() {
    let kinds = [Kind::File, Kind::Dir, Kind::Symlink, Kind::Fifo];
    let mut failures = Vec::new();
    for from in kinds {
        for to in kinds.into_iter().filter(|k| *k != from) {
            let t = Tree::new();
            make(t.source(), from);
            let first = t.once(&[]);
            t.remove("x");
            make(t.source(), to);
            let second = t.once(&[]);
            if first.code != Some(0) || second.code != Some(0) {
                failures.push(format!(
                    "{from} -> {to}: exit {:?} then {:?}\n{second}",
                    first.code, second.code
                ));
            } else if let Err(diff) = crate::support::compare(t.src(), t.dst()) {
                failures.push(format!("{from} -> {to}:\n{diff}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 12 type changes failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---- deletion guard (SPEC §4) --------------------------------------------------------------

#[test]
fn empty_source_with_non_empty_replica_trips_the_deletion_guard() {
    let t = Tree::new();
    t.replica().file("precious", b"p").file("d/more", b"m");
    let before = snapshot(t.dst());
    let run = t.once(&[]);
    run.assert_code(1);
    assert!(run.stderr.contains("--allow-empty-source"), "the error must name the way out:\n{run}");
    assert_unchanged("REPLICA behind the deletion guard", &before, &snapshot(t.dst()));
}

#[test]
fn allow_empty_source_empties_the_replica() {
    let t = Tree::new();
    t.replica().file("precious", b"p").file("d/more", b"m");
    let run = t.once(&["--allow-empty-source"]);
    run.assert_code(0);
    t.assert_mirrored();
}

// ---- SPEC §2: refused at start (exit 1, one line, nothing touched) -------------------------

#[test]
fn missing_source_is_refused() {
    let t = Tree::new();
    let (src, dst) = (t.base().join("nope"), t.base().join("new/replica"));
    assert_refused(&Run::of(replicad().arg("--once").arg(&src).arg(&dst)), &[&src]);
    assert!(!t.base().join("new").exists(), "a refused run created REPLICA");
}

#[test]
fn source_that_is_a_file_is_refused() {
    let t = Tree::new();
    let src = t.base().join("file");
    fs::write(&src, b"f").unwrap();
    assert_refused(&Run::of(replicad().arg("--once").arg(&src).arg(t.dst())), &[&src]);
    assert!(!t.dst().exists(), "a refused run created REPLICA");
}

#[test]
fn unreadable_source_is_refused() {
    let t = Tree::new();
    t.file("f", b"f");
    fs::set_permissions(t.base(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    t.chmod("", 0o000);
    let run = Run::of(as_nobody().arg("--once").arg(t.src()).arg(t.dst()));
    assert_refused(&run, &[t.src()]);
    assert!(!t.dst().exists(), "a refused run created REPLICA");
}

#[test]
fn replica_that_is_a_file_is_refused() {
    let t = Tree::new();
    t.file("f", b"f");
    fs::write(t.dst(), b"not a directory").unwrap();
    assert_refused(&t.once(&[]), &[t.dst()]);
    assert_eq!(fs::read(t.dst()).unwrap(), b"not a directory");
}

#[test]
fn same_directory_is_refused() {
    let t = Tree::new();
    varied(&t);
    let before = snapshot(t.src());
    assert_refused(&Run::of(replicad().arg("--once").arg(t.src()).arg(t.src())), &[t.src()]);
    assert_unchanged("SOURCE", &before, &snapshot(t.src()));
}

#[test]
fn same_directory_through_a_symlink_is_refused() {
    let t = Tree::new();
    varied(&t);
    let alias = t.base().join("alias");
    std::os::unix::fs::symlink(t.src(), &alias).unwrap();
    let before = snapshot(t.src());
    assert_refused(&Run::of(replicad().arg("--once").arg(t.src()).arg(&alias)), &[t.src(), &alias]);
    assert_unchanged("SOURCE", &before, &snapshot(t.src()));
}

#[test]
fn replica_inside_source_is_refused() {
    let t = Tree::new();
    varied(&t);
    let dst = t.join("sub/replica");
    let before = snapshot(t.src());
    assert_refused(&Run::of(replicad().arg("--once").arg(t.src()).arg(&dst)), &[t.src(), &dst]);
    assert_unchanged("SOURCE", &before, &snapshot(t.src()));
}

#[test]
fn source_inside_replica_is_refused() {
    let t = Tree::new();
    let outer = Dir::at(t.base().join("outer"));
    outer.file("inner/f", b"f").file("other", b"o");
    let before = snapshot(outer.path());
    let inner = outer.join("inner");
    assert_refused(
        &Run::of(replicad().arg("--once").arg(&inner).arg(outer.path())),
        &[&inner, outer.path()],
    );
    assert_unchanged("REPLICA that holds SOURCE", &before, &snapshot(outer.path()));
}

// ---- usage errors (exit 2, clap's own) -----------------------------------------------------

#[track_caller]
fn assert_usage_error(t: &Tree, extra: &[&str]) {
    let run = Run::of(replicad().args(extra).arg("--once").arg(t.src()).arg(t.dst()));
    run.assert_code(2);
    assert!(!run.stderr.trim().is_empty(), "a usage error says why:\n{run}");
    assert!(!t.dst().exists(), "a usage error created REPLICA");
}

#[test]
fn unknown_option_is_a_usage_error() {
    assert_usage_error(&Tree::new(), &["--no-such-option"]);
}

#[test]
fn unparsable_interval_is_a_usage_error() {
    assert_usage_error(&Tree::new(), &["--interval", "abc"]);
}

#[test]
fn zero_interval_is_a_usage_error() {
    assert_usage_error(&Tree::new(), &["--interval", "0s"]);
}

#[test]
fn unparsable_debounce_is_a_usage_error() {
    assert_usage_error(&Tree::new(), &["--debounce", "soon"]);
}

// ---- regressions (review findings) ---------------------------------------------------------

/// `lstat` of a REPLICA entry as (mode & 0o7777, mtime s, mtime ns).
fn mode_and_mtime(dir: &Dir, rel: &str) -> (u32, i64, i64) {
    let md = dir.lstat(rel);
    (md.mode() & 0o7777, md.mtime(), md.mtime_nsec())
}

#[test]
fn unusable_replica_root_is_an_error_not_a_silent_success() {
    // See: review finding 2
    let t = Tree::new();
    t.file("a.txt", b"a");
    t.give_to(NOBODY, NOBODY);
    // Writable and searchable by its owner, but not readable: it cannot be opened to list.
    t.replica().chmod("", 0o300);
    let run = t.once_as_nobody(&[]);
    run.assert_code(1);
    assert!(
        run.stderr.to_lowercase().contains("replica"),
        "the error says the replica is the problem:\n{run}"
    );
    assert!(
        !run.stderr.contains("action=copy"),
        "a copy was logged into a replica that cannot be opened:\n{run}"
    );
    assert!(!t.replica().exists("a.txt"), "nothing is written through an unusable replica");
}

#[test]
fn leftover_temp_files_are_removed_when_running_as_pid_1() {
    // See: review finding 3
    need_unshare(&["--pid", "--fork"], "a PID namespace");
    let t = Tree::new();
    t.file("a.txt", b"a").file("d/b.txt", b"b");
    // What a crashed run leaves in a container, where every run is PID 1 (the old naming
    // `<pid>.<n>` and the current `<pid>.<nonce>.<n>`).
    t.replica().file(".replicad.tmp.1.0", b"torn").file("d/.replicad.tmp.1.deadbeef.3", b"torn");
    let run = Run::of(
        wrapper("unshare")
            .args(["--pid", "--fork", "--mount-proc"])
            .arg(bin())
            .arg("--once")
            .arg(t.src())
            .arg(t.dst()),
    );
    run.assert_code(0);
    assert_eq!(temp_leftovers(t.dst()), Vec::<PathBuf>::new(), "leftovers kept:\n{run}");
    t.assert_mirrored();
}

#[test]
fn read_only_source_directory_takes_later_changes_when_unprivileged() {
    // See: review finding 4
    let t = Tree::new();
    t.file("ro/f", b"v1\n").file("top", b"t");
    t.give_to(NOBODY, NOBODY);
    t.chmod("ro", 0o555);
    t.once_as_nobody(&[]).assert_code(0);
    t.assert_mirrored();

    t.chmod("ro", 0o755);
    t.file("ro/f", b"v2\n").file("ro/g", b"new\n").chown("ro/g", NOBODY, NOBODY);
    // Same size as v1: only the mtime tells the edit apart; make sure it moved.
    t.mtime("ro/f", 1_700_000_000, 42);
    t.chmod("ro", 0o555);
    let run = t.once_as_nobody(&[]);
    run.assert_code(0);
    t.assert_mirrored();
    assert_eq!(mode_and_mtime(t.replica(), "ro").0, 0o555, "{run}");
}

#[test]
fn unlistable_directory_does_not_leave_its_ancestors_unfinalized() {
    // See: review finding 6
    need_unshare(&["--mount"], "a mount namespace");
    let t = Tree::new();
    t.file("a/b/f", b"f").file("a/g", b"g").dir("a/b/secret").file("top", b"t");
    t.chmod("a/b", 0o751).chmod("a", 0o705).chmod("", 0o750);
    // Deepest first: setting a child's mtime does not move its parent's, but be explicit.
    t.mtime("a/b", 1_300_000_000, 111).mtime("a", 1_300_000_001, 222).mtime("", 1_300_000_002, 333);
    // A directory that opens but cannot be listed: in a private mount namespace, `secret`
    // is covered by a bind mount of a directory that is then removed (getdents on a
    // removed directory fails with ENOENT). Mode 000 would not do: that fails the open.
    let gone = t.base().join("gone");
    fs::create_dir(&gone).unwrap();
    let run = Run::of(
        wrapper("unshare")
            .args([
                "--mount",
                "sh",
                "-c",
                r#"mount --bind "$1" "$2" && rmdir "$1" || exit 97; shift 2; exec "$@""#,
                "sh",
            ])
            .arg(&gone)
            .arg(t.join("a/b/secret"))
            .arg(bin())
            .arg("--once")
            .arg(t.src())
            .arg(t.dst()),
    );
    assert_ne!(run.code, Some(97), "setting up the unlistable directory failed:\n{run}");
    // getdents on a removed directory says ENOENT: to replicad it vanished under the pass
    // (a warning, exit 24); what matters here is that it was not taken for "empty".
    run.assert_code(24);
    assert!(!run.lines_with("a/b/secret").is_empty(), "the error names the directory:\n{run}");
    // `secret` itself cannot be mirrored; what this guards is that its ancestors were
    // still finalized (modes and mtimes are set after the children, so a stuck child
    // left them at the private 0700 with the mtime of their creation).
    for rel in ["a/b", "a", ""] {
        assert_eq!(
            mode_and_mtime(t.replica(), rel),
            mode_and_mtime(t.source(), rel),
            "REPLICA {rel:?} was not finalized (mode, mtime s, ns):\n{run}"
        );
    }
    assert_eq!(t.replica().read("a/b/f"), b"f");
    assert_eq!(t.replica().read("a/g"), b"g");
    assert_eq!(t.replica().read("top"), b"t");
}

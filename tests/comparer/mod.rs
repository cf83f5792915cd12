//! Tests of the oracle itself: for each kind of difference, a pair of trees differing in
//! exactly that way must fail the comparison (naming the path and the property), and must
//! pass again once the difference is undone. A comparer that missed mtime or mode would
//! make every other test lie. Knows nothing of replicad; never runs the binary.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use crate::support::{CompareOptions, Tree, What, assert_same, compare, compare_with, set_mtime};

/// SOURCE with one of each common kind and explicit mtimes, and REPLICA made from it by
/// `cp -a` (which keeps modes, owners, links, FIFOs and ns mtimes, roots included).
fn pair() -> Tree {
    let t = Tree::new();
    t.file("a.txt", b"hello")
        .file("d/big.bin", big_content())
        .dir("d/empty")
        .symlink("l", "a.txt")
        .fifo("p")
        .chmod("a.txt", 0o644)
        .mtime("a.txt", 1_600_000_000, 111_111_111)
        .mtime("d/big.bin", 1_600_000_001, 222_222_222)
        .mtime("d/empty", 1_600_000_002, 333_333_333)
        .mtime("l", 1_600_000_003, 444_444_444)
        .mtime("d", 1_600_000_004, 555_555_555)
        .mtime("", 1_600_000_005, 666_666_666);
    cp_a(&t.src().join("."), t.dst());
    assert_same(t.src(), t.dst());
    t
}

fn big_content() -> Vec<u8> {
    (0..200_000u32).map(|i| (i % 251) as u8).collect()
}

fn cp_a(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg("--no-target-directory")
        .arg(from)
        .arg(to)
        .status()
        .expect("run cp");
    assert!(st.success(), "cp -a {} {} failed", from.display(), to.display());
}

/// Gives REPLICA's `rel` the mtime SOURCE's `rel` has (undoing the bump a fixture edit made).
fn copy_mtime(t: &Tree, rel: impl AsRef<Path>) {
    let md = t.lstat(&rel);
    set_mtime(&t.replica().join(&rel), md.mtime(), md.mtime_nsec() as u32);
}

/// Asserts that the comparison fails with `what` at `path`.
#[track_caller]
fn assert_caught(t: &Tree, path: impl AsRef<Path>, what: What) {
    match compare(t.src(), t.dst()) {
        Ok(()) => panic!("comparer missed a {what:?} difference at {}", path.as_ref().display()),
        Err(diff) => assert!(
            diff.has(path.as_ref(), what),
            "expected a {what:?} difference at {}, got:\n{diff}",
            path.as_ref().display()
        ),
    }
}

#[test]
fn identical_trees_copied_with_cp_a_compare_equal() {
    let t = pair();
    t.chardev("null", 1, 3).socket("sock").chown("a.txt", 1234, 5678);
    std::fs::remove_dir_all(t.dst()).unwrap();
    cp_a(&t.src().join("."), t.dst());
    assert_same(t.src(), t.dst());
}

#[test]
fn missing_path_is_caught() {
    let t = pair();
    t.replica().remove("a.txt");
    copy_mtime(&t, "");
    assert_caught(&t, "a.txt", What::Missing);
    cp_a(&t.join("a.txt"), &t.replica().join("a.txt"));
    copy_mtime(&t, "");
    assert_same(t.src(), t.dst());
}

#[test]
fn extra_file_is_caught() {
    let t = pair();
    t.replica().file("d/stray", b"x");
    copy_mtime(&t, "d");
    assert_caught(&t, "d/stray", What::Extra);
    t.replica().remove("d/stray");
    copy_mtime(&t, "d");
    assert_same(t.src(), t.dst());
}

#[test]
fn extra_empty_dir_is_caught() {
    let t = pair();
    t.replica().dir("d/empty/sub");
    copy_mtime(&t, "d/empty");
    assert_caught(&t, "d/empty/sub", What::Extra);
    t.replica().remove("d/empty/sub");
    copy_mtime(&t, "d/empty");
    assert_same(t.src(), t.dst());
}

/// Replaces REPLICA's `a.txt` with another kind of entry (same mtime), checks the type
/// difference is caught, then restores it.
fn type_difference(make: impl Fn(&Tree)) {
    let t = pair();
    t.replica().remove("a.txt");
    make(&t);
    copy_mtime(&t, "a.txt");
    copy_mtime(&t, "");
    assert_caught(&t, "a.txt", What::Type);
    t.replica().remove("a.txt");
    cp_a(&t.join("a.txt"), &t.replica().join("a.txt"));
    copy_mtime(&t, "");
    assert_same(t.src(), t.dst());
}

#[test]
fn file_vs_dir_is_caught() {
    type_difference(|t| {
        t.replica().dir("a.txt").chmod("a.txt", 0o644);
    });
}

#[test]
fn file_vs_symlink_is_caught() {
    type_difference(|t| {
        t.replica().symlink("a.txt", "d/big.bin");
    });
}

#[test]
fn file_vs_fifo_is_caught() {
    type_difference(|t| {
        t.replica().fifo("a.txt");
    });
}

#[test]
fn content_with_same_size_is_caught() {
    let t = pair();
    t.replica().file("a.txt", b"hellO");
    copy_mtime(&t, "a.txt");
    assert_caught(&t, "a.txt", What::Content);
    t.replica().file("a.txt", b"hello");
    copy_mtime(&t, "a.txt");
    assert_same(t.src(), t.dst());
}

#[test]
fn content_with_different_size_is_caught() {
    let t = pair();
    t.replica().file("a.txt", b"hello!");
    copy_mtime(&t, "a.txt");
    assert_caught(&t, "a.txt", What::Content);
    t.replica().file("a.txt", b"hello");
    copy_mtime(&t, "a.txt");
    assert_same(t.src(), t.dst());
}

#[test]
fn one_byte_deep_in_a_large_file_is_caught() {
    let t = pair();
    let mut content = big_content();
    content[150_000] ^= 1;
    t.replica().file("d/big.bin", &content);
    copy_mtime(&t, "d/big.bin");
    let diff = compare(t.src(), t.dst()).unwrap_err();
    assert!(diff.has("d/big.bin", What::Content), "{diff}");
    assert!(diff.to_string().contains("offset 150000"), "{diff}");
    t.replica().file("d/big.bin", big_content());
    copy_mtime(&t, "d/big.bin");
    assert_same(t.src(), t.dst());
}

#[test]
fn symlink_target_is_caught() {
    let t = pair();
    t.replica().remove("l").symlink("l", "a.tx");
    copy_mtime(&t, "l");
    copy_mtime(&t, "");
    assert_caught(&t, "l", What::Target);
    t.replica().remove("l").symlink("l", "a.txt");
    copy_mtime(&t, "l");
    copy_mtime(&t, "");
    assert_same(t.src(), t.dst());
}

#[test]
fn mode_is_caught() {
    let t = pair();
    t.replica().chmod("a.txt", 0o640);
    assert_caught(&t, "a.txt", What::Mode);
    t.replica().chmod("a.txt", 0o644);
    assert_same(t.src(), t.dst());
}

#[test]
fn special_mode_bits_are_caught() {
    let t = pair();
    t.chmod("d", 0o1777);
    t.replica().chmod("d", 0o777);
    assert_caught(&t, "d", What::Mode);
    t.replica().chmod("d", 0o1777);
    assert_same(t.src(), t.dst());
}

#[test]
fn file_mtime_one_nanosecond_off_is_caught() {
    let t = pair();
    t.replica().mtime("a.txt", 1_600_000_000, 111_111_112);
    assert_caught(&t, "a.txt", What::Mtime);
    t.replica().mtime("a.txt", 1_600_000_000, 111_111_111);
    assert_same(t.src(), t.dst());
}

#[test]
fn symlink_mtime_one_nanosecond_off_is_caught() {
    let t = pair();
    t.replica().mtime("l", 1_600_000_003, 444_444_445);
    assert_caught(&t, "l", What::Mtime);
    t.replica().mtime("l", 1_600_000_003, 444_444_444);
    assert_same(t.src(), t.dst());
}

#[test]
fn directory_mtime_is_caught() {
    let t = pair();
    t.replica().mtime("d", 1_600_000_004, 555_555_556);
    assert_caught(&t, "d", What::Mtime);
    t.replica().mtime("d", 1_600_000_004, 555_555_555);
    assert_same(t.src(), t.dst());
}

#[test]
fn root_attributes_are_caught() {
    let t = pair();
    t.replica().mtime("", 1_600_000_005, 0);
    assert_caught(&t, "", What::Mtime);
    t.replica().mtime("", 1_600_000_005, 666_666_666);
    t.replica().chmod("", 0o700);
    t.source().chmod("", 0o755);
    assert_caught(&t, "", What::Mode);
    t.replica().chmod("", 0o755);
    t.replica().chown("", 1234, 1234);
    assert_caught(&t, "", What::Owner);
    t.replica().chown("", 0, 0);
    assert_same(t.src(), t.dst());
}

#[test]
fn owner_is_caught_unless_skipped() {
    let t = pair();
    t.replica().chown("a.txt", 1234, 0);
    assert_caught(&t, "a.txt", What::Owner);
    let skip = CompareOptions { skip_owner: true, ..CompareOptions::default() };
    assert!(compare_with(t.src(), t.dst(), &skip).is_ok());
    t.replica().chown("a.txt", 0, 0);
    assert_same(t.src(), t.dst());
}

#[test]
fn group_is_caught() {
    let t = pair();
    t.replica().chown("l", 0, 5678);
    assert_caught(&t, "l", What::Owner);
    t.replica().chown("l", 0, 0);
    assert_same(t.src(), t.dst());
}

#[test]
fn device_number_is_caught() {
    let t = pair();
    t.chardev("dev", 1, 3);
    t.replica().chardev("dev", 1, 5);
    copy_mtime(&t, "");
    assert_caught(&t, "dev", What::Rdev);
    t.replica().remove("dev").chardev("dev", 1, 3);
    copy_mtime(&t, "");
    assert_same(t.src(), t.dst());
}

#[test]
fn non_utf8_names_are_compared_as_bytes_and_printed_escaped() {
    let t = pair();
    let good = Path::new(OsStr::from_bytes(b"caf\xff"));
    let bad = Path::new(OsStr::from_bytes(b"caf\xfe"));
    t.file(good, b"x").mtime(good, 1, 1).mtime("", 1_600_000_005, 666_666_666);
    t.replica().file(bad, b"x").mtime(bad, 1, 1);
    copy_mtime(&t, "");
    let diff = compare(t.src(), t.dst()).unwrap_err();
    assert!(diff.has(good, What::Missing) && diff.has(bad, What::Extra), "{diff}");
    let shown = diff.to_string();
    assert!(
        shown.contains("caf\\xff") && shown.contains("caf\\xfe"),
        "names not escaped:\n{shown}"
    );
    t.replica().rename(bad, good);
    copy_mtime(&t, "");
    assert_same(t.src(), t.dst());
}

#[test]
fn excluded_paths_are_ignored_on_both_sides() {
    let t = pair();
    t.file("build/out.o", b"src side");
    t.replica().file("build/other.o", b"replica side").file("junk.o", b"j");
    copy_mtime(&t, "");
    assert!(compare(t.src(), t.dst()).is_err());
    let exclude = |p: &Path| p.starts_with("build") || p.extension() == Some(OsStr::new("o"));
    let opts = CompareOptions { exclude: &exclude, ..CompareOptions::default() };
    if let Err(diff) = compare_with(t.src(), t.dst(), &opts) {
        panic!("excluded paths were compared:\n{diff}");
    }
}

#[test]
fn every_difference_is_reported_and_both_trees_are_listed() {
    let t = pair();
    t.replica().chmod("a.txt", 0o600).mtime("l", 5, 5).remove("p");
    copy_mtime(&t, "");
    let diff = compare(t.src(), t.dst()).unwrap_err();
    assert_eq!(diff.whats(), vec![What::Mode, What::Mtime, What::Missing], "{diff}");
    let shown = diff.to_string();
    for needle in
        ["SOURCE tree:", "REPLICA tree:", "fifo", "symlink", "-> a.txt", "1600000000.111111111"]
    {
        assert!(shown.contains(needle), "{needle:?} not in:\n{shown}");
    }
}

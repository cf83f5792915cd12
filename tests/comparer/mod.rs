//! Tests of the oracle itself: for each kind of difference, a pair of trees differing in
//! exactly that way must fail the comparison (naming the path and the property), and must
//! pass again once the difference is undone. A comparer that missed mtime or mode would
//! make every other test lie. The same holds for what "exact" grew to mean: link groups,
//! xattrs in each namespace (on files, directories, symlinks and the root), file
//! capabilities and ACLs made by the real `setcap`/`setfacl`, and holes (allocated
//! blocks); and each `skip_*` option must skip its property and nothing else. Knows
//! nothing of replicad; never runs the binary.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use crate::support::{
    CompareOptions, SnapEntry, Tree, What, assert_same, compare, compare_with, set_mtime, snapshot,
    user_xattrs_supported,
};

/// SOURCE with one of each common kind and explicit mtimes, and REPLICA made from it by
/// `cp -a` (which keeps modes, owners, links, FIFOs, ns mtimes, hard links, xattrs and
/// ACLs, roots included).
fn pair() -> Tree {
    pair_with(|_| {})
}

/// Like [`pair`], with `extra` applied to SOURCE before the copy.
fn pair_with(extra: impl FnOnce(&Tree)) -> Tree {
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
    extra(&t);
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

// ------------------------------------------------------------------------------------------
// Link groups, xattrs, ACLs, file capabilities and allocated blocks

/// One MiB.
const MIB: u64 = 1024 * 1024;

/// Asserts that the comparison fails with exactly the differences `expected` (path and
/// property, any order) and nothing else; returns the report for checks of its wording.
#[track_caller]
fn assert_exactly(t: &Tree, expected: &[(&str, What)]) -> String {
    assert_exactly_with(t, &CompareOptions::default(), expected)
}

#[track_caller]
fn assert_exactly_with(t: &Tree, opts: &CompareOptions<'_>, expected: &[(&str, What)]) -> String {
    let diff = match compare_with(t.src(), t.dst(), opts) {
        Ok(()) => panic!("comparer missed the differences {expected:?}"),
        Err(diff) => diff,
    };
    let found: Vec<(&Path, What)> = diff.diffs.iter().map(|d| (d.path.as_path(), d.what)).collect();
    let wanted: Vec<(&Path, What)> = expected.iter().map(|(p, w)| (Path::new(*p), *w)).collect();
    assert!(
        found.iter().all(|f| wanted.contains(f)) && wanted.iter().all(|w| found.contains(w)),
        "expected exactly {expected:?}, got:\n{diff}"
    );
    diff.to_string()
}

/// True if the temp filesystem (where [`Tree::new`] makes its trees) stores `user.*`
/// xattrs; otherwise prints a visible SKIP for the calling test.
fn user_xattrs_here(test: &str) -> bool {
    let tmp = std::env::temp_dir();
    if user_xattrs_supported(&tmp) {
        return true;
    }
    eprintln!("SKIP {test}: the filesystem of {} stores no user.* xattrs", tmp.display());
    false
}

/// Replaces REPLICA's `rel` with a copy of itself (`cp -a`: same bytes, mode, mtime,
/// owner, xattrs and ACLs) under a new inode, so it leaves its link group; the parent's
/// mtime is restored.
fn split_off_in_replica(t: &Tree, rel: &str) {
    let p = t.replica().join(rel);
    let tmp = p.with_file_name(".split-off");
    cp_a(&p, &tmp);
    fs::rename(&tmp, &p).unwrap();
    copy_mtime(t, Path::new(rel).parent().unwrap());
}

/// Replaces REPLICA's `rel` with a dense copy of SOURCE's (every hole written as zeros;
/// all attributes kept), restoring the parent's mtime; asserts it really is dense.
fn densify_in_replica(t: &Tree, rel: &str) {
    let tmp = t.replica().join(rel).with_file_name(".dense");
    let st = Command::new("cp")
        .args(["--preserve=all", "--sparse=never"])
        .arg(t.join(rel))
        .arg(&tmp)
        .status()
        .expect("run cp");
    assert!(st.success(), "cp --sparse=never failed");
    fs::rename(&tmp, t.replica().join(rel)).unwrap();
    copy_mtime(t, Path::new(rel).parent().unwrap());
    let size = t.lstat(rel).len();
    assert!(t.replica().allocated(rel) >= size, "cp --sparse=never left holes in {rel}");
}

/// SOURCE gets a 4 MiB file `rel` holding 4 KiB at each end and a hole between; `None`
/// (and a SKIP for `test`) if the temp filesystem allocated the hole anyway.
fn sparse_source(t: &Tree, rel: &str, test: &str) -> Option<()> {
    let block = vec![0x5a_u8; 4096];
    t.sparse(rel, 4 * MIB, &[(0, &block), (4 * MIB - 4096, &block)]);
    if t.allocated(rel) >= MIB {
        eprintln!("SKIP {test}: the temp filesystem keeps no holes ({} bytes)", t.allocated(rel));
        return None;
    }
    Some(())
}

#[test]
fn links_xattrs_acls_caps_and_holes_copied_with_cp_a_compare_equal() {
    let user = user_xattrs_supported(&std::env::temp_dir());
    let t = pair_with(|t| {
        t.hard_link("d/a-link", "a.txt")
            .hard_link("a-link-2", "a.txt")
            .file("b", b"b")
            .hard_link("d/empty/b-link", "b")
            .set_xattr("d", "trusted.tag", b"\x00\x01binary")
            .set_xattr("l", "trusted.on-the-link", "x")
            .setcap("d/big.bin", "cap_net_raw+ep")
            .setfacl("d/big.bin", &["-m", "u:1234:rw,g:5678:r"])
            .setfacl("d", &["-d", "-m", "u:1234:rx"])
            .sparse("sparse", 4 * MIB, &[(MIB, b"middle")]);
        if user {
            t.set_xattr("a.txt", "user.origin", "https://example.org/a");
        }
    });
    // cp -a kept all of it (else this test would prove nothing about the comparer).
    assert_eq!(t.replica().lstat("a.txt").ino(), t.replica().lstat("d/a-link").ino());
    assert!(t.replica().xattrs("d/big.bin").get("security.capability").is_some());
    assert!(t.replica().xattrs("d").get("system.posix_acl_default").is_some());
    assert!(t.replica().xattrs("l").get("trusted.on-the-link").is_some());
}

#[test]
fn link_group_split_in_replica_is_caught() {
    let t = pair_with(|t| {
        t.hard_link("d/a-link", "a.txt");
    });
    assert_eq!(t.replica().lstat("a.txt").ino(), t.replica().lstat("d/a-link").ino());
    split_off_in_replica(&t, "d/a-link");
    let shown = assert_exactly(&t, &[("a.txt", What::Links), ("d/a-link", What::Links)]);
    assert!(shown.contains("linked with d/a-link") && shown.contains("alone"), "{shown}");
    t.replica().remove("d/a-link").hard_link("d/a-link", "a.txt");
    copy_mtime(&t, "d");
    assert_same(t.src(), t.dst());
}

#[test]
fn a_link_group_split_three_ways_names_every_other_name() {
    let t = pair_with(|t| {
        t.hard_link("x1", "a.txt").hard_link("d/x2", "a.txt");
    });
    split_off_in_replica(&t, "d/x2");
    let shown =
        assert_exactly(&t, &[("a.txt", What::Links), ("x1", What::Links), ("d/x2", What::Links)]);
    assert!(shown.contains("linked with d/x2, x1"), "{shown}");
    t.replica().remove("d/x2").hard_link("d/x2", "a.txt");
    copy_mtime(&t, "d");
    assert_same(t.src(), t.dst());
}

#[test]
fn separate_files_joined_in_replica_are_caught() {
    // A twin of a.txt in every attribute but its inode, so only the link differs.
    let t = pair_with(|t| {
        t.file("d/twin", b"hello").chmod("d/twin", 0o644).mtime(
            "d/twin",
            1_600_000_000,
            111_111_111,
        );
    });
    t.replica().remove("d/twin").hard_link("d/twin", "a.txt");
    copy_mtime(&t, "d");
    let shown = assert_exactly(&t, &[("a.txt", What::Links), ("d/twin", What::Links)]);
    assert!(shown.contains("source alone / replica linked with d/twin"), "{shown}");
    t.replica().remove("d/twin");
    cp_a(&t.join("d/twin"), &t.replica().join("d/twin"));
    copy_mtime(&t, "d");
    assert_same(t.src(), t.dst());
}

#[test]
fn links_to_names_outside_the_tree_do_not_count() {
    // Planted links to files outside a root (as the attack tests do) leave each name in
    // the tree a group of one: nothing to compare.
    let t = pair();
    fs::hard_link(t.join("a.txt"), t.base().join("outside-source")).unwrap();
    fs::hard_link(t.replica().join("d/big.bin"), t.base().join("outside-replica")).unwrap();
    assert_same(t.src(), t.dst());
}

#[test]
fn a_missing_user_xattr_is_caught() {
    if !user_xattrs_here("a_missing_user_xattr_is_caught") {
        return;
    }
    let t = pair_with(|t| {
        t.set_xattr("a.txt", "user.origin", "https://example.org/a");
    });
    t.replica().remove_xattr("a.txt", "user.origin");
    let shown = assert_exactly(&t, &[("a.txt", What::Xattr)]);
    assert!(
        shown.contains("source user.origin=\"https://example.org/a\" / replica no user.origin"),
        "{shown}"
    );
    t.replica().set_xattr("a.txt", "user.origin", "https://example.org/a");
    assert_same(t.src(), t.dst());
}

#[test]
fn an_extra_user_xattr_is_caught() {
    if !user_xattrs_here("an_extra_user_xattr_is_caught") {
        return;
    }
    let t = pair();
    t.replica().set_xattr("d/empty", "user.stray", "");
    let shown = assert_exactly(&t, &[("d/empty", What::Xattr)]);
    assert!(shown.contains("source no user.stray / replica user.stray=\"\""), "{shown}");
    t.replica().remove_xattr("d/empty", "user.stray");
    assert_same(t.src(), t.dst());
}

#[test]
fn a_different_user_xattr_value_is_caught() {
    if !user_xattrs_here("a_different_user_xattr_value_is_caught") {
        return;
    }
    let t = pair_with(|t| {
        t.set_xattr("d/big.bin", "user.sum", "abc");
    });
    t.replica().set_xattr("d/big.bin", "user.sum", "abd");
    let shown = assert_exactly(&t, &[("d/big.bin", What::Xattr)]);
    assert!(shown.contains("user.sum=\"abc\"") && shown.contains("user.sum=\"abd\""), "{shown}");
    // Values are bytes: a binary value that differs in one byte is caught and shown in hex.
    t.replica().set_xattr("d/big.bin", "user.sum", b"ab\xff");
    let shown = assert_exactly(&t, &[("d/big.bin", What::Xattr)]);
    assert!(shown.contains("user.sum=0x6162ff"), "{shown}");
    t.replica().set_xattr("d/big.bin", "user.sum", "abc");
    assert_same(t.src(), t.dst());
}

#[test]
fn a_trusted_xattr_on_a_directory_is_caught() {
    let t = pair_with(|t| {
        t.set_xattr("d", "trusted.backup", "tag1");
    });
    t.replica().set_xattr("d", "trusted.backup", "tag2");
    let shown = assert_exactly(&t, &[("d", What::Xattr)]);
    assert!(shown.contains("trusted.backup=\"tag1\""), "{shown}");
    t.replica().remove_xattr("d", "trusted.backup");
    assert_exactly(&t, &[("d", What::Xattr)]);
    t.replica().set_xattr("d", "trusted.backup", "tag1");
    assert_same(t.src(), t.dst());
}

#[test]
fn a_trusted_xattr_on_the_root_is_caught() {
    let t = pair_with(|t| {
        t.set_xattr("", "trusted.root", "r");
    });
    t.replica().remove_xattr("", "trusted.root");
    assert_exactly(&t, &[("", What::Xattr)]);
    t.replica().set_xattr("", "trusted.root", "r");
    assert_same(t.src(), t.dst());
}

#[test]
fn an_xattr_on_a_symlink_itself_is_caught() {
    let t = pair_with(|t| {
        t.set_xattr("l", "trusted.note", "on the link");
    });
    // The attribute is the link's own, not its target's.
    assert!(t.xattrs("a.txt").get("trusted.note").is_none());
    t.replica().remove_xattr("l", "trusted.note");
    let shown = assert_exactly(&t, &[("l", What::Xattr)]);
    assert!(shown.contains("trusted.note"), "{shown}");
    // The same attribute on the link's target instead is another difference.
    t.replica().set_xattr("a.txt", "trusted.note", "on the link");
    assert_exactly(&t, &[("l", What::Xattr), ("a.txt", What::Xattr)]);
    t.replica().remove_xattr("a.txt", "trusted.note").set_xattr("l", "trusted.note", "on the link");
    assert_same(t.src(), t.dst());
}

#[test]
fn a_file_capability_is_caught() {
    let t = pair_with(|t| {
        t.setcap("a.txt", "cap_net_raw+ep");
    });
    assert!(t.replica().xattrs("a.txt").get("security.capability").is_some());
    t.replica().setcap("a.txt", "-r");
    let shown = assert_exactly(&t, &[("a.txt", What::Xattr)]);
    assert!(shown.contains("replica no security.capability"), "{shown}");
    t.replica().setcap("a.txt", "cap_net_admin+ep");
    assert_exactly(&t, &[("a.txt", What::Xattr)]);
    t.replica().setcap("a.txt", "cap_net_raw+ep");
    assert_same(t.src(), t.dst());
}

#[test]
fn an_access_acl_on_a_file_is_caught() {
    let t = pair_with(|t| {
        t.setfacl("a.txt", &["-m", "u:1234:r"]);
    });
    // Another named user with the same permissions: the mask, and so the mode, stay.
    t.replica().setfacl("a.txt", &["-x", "u:1234", "-m", "u:4321:r"]);
    let shown = assert_exactly(&t, &[("a.txt", What::Acl)]);
    assert!(shown.contains("u:1234:r--") && shown.contains("u:4321:r--"), "{shown}");
    // No ACL at all (mode unchanged: the owning group had r already).
    t.replica().setfacl("a.txt", &["-b"]);
    let shown = assert_exactly(&t, &[("a.txt", What::Acl)]);
    assert!(shown.contains("replica no system.posix_acl_access"), "{shown}");
    t.replica().setfacl("a.txt", &["-m", "u:1234:r"]);
    assert_same(t.src(), t.dst());
}

#[test]
fn a_default_acl_on_a_directory_is_caught() {
    let t = pair_with(|t| {
        t.setfacl("d", &["-d", "-m", "u:1234:rx"]);
    });
    t.replica().setfacl("d", &["-k"]);
    let shown = assert_exactly(&t, &[("d", What::Acl)]);
    assert!(shown.contains("replica no system.posix_acl_default"), "{shown}");
    t.replica().setfacl("d", &["-d", "-m", "u:1234:rwx"]);
    let shown = assert_exactly(&t, &[("d", What::Acl)]);
    assert!(shown.contains("u:1234:r-x") && shown.contains("u:1234:rwx"), "{shown}");
    t.replica().setfacl("d", &["-d", "-m", "u:1234:rx"]);
    assert_same(t.src(), t.dst());
}

#[test]
fn a_sparse_file_copied_densely_is_caught() {
    let t = pair();
    if sparse_source(&t, "sparse", "a_sparse_file_copied_densely_is_caught").is_none() {
        return;
    }
    cp_a(&t.join("sparse"), &t.replica().join("sparse"));
    copy_mtime(&t, "");
    assert_same(t.src(), t.dst());
    densify_in_replica(&t, "sparse");
    let shown = assert_exactly(&t, &[("sparse", What::Blocks)]);
    assert!(shown.contains("bytes allocated (size 4194304)"), "{shown}");
    t.replica().remove("sparse");
    cp_a(&t.join("sparse"), &t.replica().join("sparse"));
    copy_mtime(&t, "");
    assert_same(t.src(), t.dst());
}

#[test]
fn fewer_blocks_in_replica_are_fine() {
    // Zeros written as zeros in SOURCE may become holes in REPLICA: same content, less disk.
    let t = pair_with(|t| {
        t.file("zeros", vec![0u8; MIB as usize]);
    });
    let tmp = t.replica().join(".holes");
    let st = Command::new("cp")
        .args(["--preserve=all", "--sparse=always"])
        .arg(t.join("zeros"))
        .arg(&tmp)
        .status()
        .expect("run cp");
    assert!(st.success(), "cp --sparse=always failed");
    fs::rename(&tmp, t.replica().join("zeros")).unwrap();
    copy_mtime(&t, "");
    if t.replica().allocated("zeros") >= t.allocated("zeros") {
        eprintln!("SKIP fewer_blocks_in_replica_are_fine: the temp filesystem punched no holes");
        return;
    }
    assert_same(t.src(), t.dst());
}

#[test]
fn each_skip_option_skips_only_its_property() {
    let t = pair_with(|t| {
        t.hard_link("d/a-link", "a.txt")
            .set_xattr("d", "trusted.tag", "1")
            .setfacl("d/big.bin", &["-m", "u:1234:r"]);
    });
    if sparse_source(&t, "sparse", "each_skip_option_skips_only_its_property").is_none() {
        return;
    }
    cp_a(&t.join("sparse"), &t.replica().join("sparse"));
    split_off_in_replica(&t, "d/a-link");
    t.replica().set_xattr("d", "trusted.tag", "2").setfacl("d/big.bin", &["-b"]);
    densify_in_replica(&t, "sparse");

    let links = [("a.txt", What::Links), ("d/a-link", What::Links)];
    let (xattr, acl, blocks) =
        (("d", What::Xattr), ("d/big.bin", What::Acl), ("sparse", What::Blocks));
    let all = CompareOptions::default();
    assert_exactly_with(&t, &all, &[links[0], links[1], xattr, acl, blocks]);
    let opts = CompareOptions { skip_links: true, ..CompareOptions::default() };
    assert_exactly_with(&t, &opts, &[xattr, acl, blocks]);
    // Skipping xattrs skips the ACLs (which are xattrs) too.
    let opts = CompareOptions { skip_xattrs: true, ..CompareOptions::default() };
    assert_exactly_with(&t, &opts, &[links[0], links[1], blocks]);
    let opts = CompareOptions { skip_blocks: true, ..CompareOptions::default() };
    assert_exactly_with(&t, &opts, &[links[0], links[1], xattr, acl]);
    let opts = CompareOptions {
        skip_links: true,
        skip_xattrs: true,
        skip_blocks: true,
        ..CompareOptions::default()
    };
    if let Err(diff) = compare_with(t.src(), t.dst(), &opts) {
        panic!("everything that differs was skipped, yet:\n{diff}");
    }
}

#[test]
fn snapshots_include_xattrs() {
    let t = Tree::new();
    t.file("f", b"x")
        .set_xattr("f", "trusted.a", "1")
        .symlink("l", "f")
        .set_xattr("l", "trusted.own", "2")
        .set_xattr("", "trusted.root", "3")
        .setfacl("f", &["-m", "u:1234:r"]);
    let xattrs_of = |snap: &[SnapEntry], rel: &str| {
        snap.iter().find(|e| e.path == Path::new(rel)).expect("entry in snapshot").xattrs.clone()
    };
    let before = snapshot(t.src());
    assert_eq!(xattrs_of(&before, "f").get("trusted.a"), Some(&b"1"[..]));
    assert!(xattrs_of(&before, "f").get("system.posix_acl_access").is_some());
    assert_eq!(xattrs_of(&before, "l").get("trusted.own"), Some(&b"2"[..]));
    assert_eq!(xattrs_of(&before, "").get("trusted.root"), Some(&b"3"[..]));
    t.set_xattr("f", "trusted.a", "9");
    let after = snapshot(t.src());
    assert_eq!(xattrs_of(&after, "f").get("trusted.a"), Some(&b"9"[..]));
    // The readable form names the attribute and shows the decoded ACL.
    let shown = format!("{:?}", xattrs_of(&after, "f"));
    assert!(shown.contains("trusted.a: \"9\"") && shown.contains("u:1234:r--"), "{shown}");
}

#[test]
fn a_root_given_as_a_symlink_is_compared_by_its_target() {
    // The comparer resolves a root that is a symlink; its xattrs are the directory's too.
    let t = pair_with(|t| {
        t.set_xattr("", "trusted.root", "r");
    });
    let link = t.base().join("src-link");
    std::os::unix::fs::symlink(t.src(), &link).unwrap();
    assert_same(&link, t.dst());
    t.replica().remove_xattr("", "trusted.root");
    let diff = compare(&link, t.dst()).unwrap_err();
    assert!(diff.has("", What::Xattr), "{diff}");
}

// Content is compared hole-aware (only where either file holds data); these make sure no
// data range is skipped: not a later one, nor data on one side facing a hole on the other.

/// SOURCE `holes` (4 MiB): data at 0, a hole, data at 2 MiB, a hole to the end; REPLICA a
/// copy that keeps the holes (`cp -a`). `None` (with a SKIP) if holes are not kept here.
fn holey_pair(test: &str) -> Option<Tree> {
    let t = pair();
    t.sparse("holes", 4 * MIB, &[(0, &[1u8; 4096]), (2 * MIB, &[2u8; 8192])]);
    cp_a(&t.join("holes"), &t.replica().join("holes"));
    copy_mtime(&t, "");
    if t.allocated("holes") >= MIB || t.replica().allocated("holes") >= MIB {
        eprintln!("SKIP {test}: the temp filesystem keeps no holes");
        return None;
    }
    assert_same(t.src(), t.dst());
    Some(t)
}

/// Writes `bytes` into REPLICA's `holes` at `offset` in place, keeping its mtime.
fn poke_replica_holes(t: &Tree, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new().write(true).open(t.replica().join("holes")).unwrap();
    f.write_all_at(bytes, offset).unwrap();
    copy_mtime(t, "holes");
}

#[test]
fn a_byte_in_a_later_data_range_is_caught() {
    let Some(t) = holey_pair("a_byte_in_a_later_data_range_is_caught") else { return };
    poke_replica_holes(&t, 2 * MIB + 5000, &[9]);
    let shown = assert_exactly(&t, &[("holes", What::Content)]);
    assert!(shown.contains(&format!("offset {}", 2 * MIB + 5000)), "{shown}");
    poke_replica_holes(&t, 2 * MIB + 5000, &[2]);
    assert_same(t.src(), t.dst());
}

#[test]
fn data_where_the_other_side_has_a_hole_is_caught() {
    let Some(t) = holey_pair("data_where_the_other_side_has_a_hole_is_caught") else { return };
    // In a hole of SOURCE, and in the last hole (after every data range of SOURCE).
    for at in [MIB + 17, 3 * MIB + 1] {
        poke_replica_holes(&t, at, &[7]);
        let shown = assert_exactly(&t, &[("holes", What::Content)]);
        assert!(shown.contains(&format!("offset {at}")), "{shown}");
        // Zeros written into the hole are the same content (now allocated, within slack).
        poke_replica_holes(&t, at, &[0]);
        assert_same(t.src(), t.dst());
    }
}

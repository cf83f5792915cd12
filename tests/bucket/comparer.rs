//! The bucket oracle's own tests: for each kind of difference, an in-memory bucket that
//! differs from the exact mirror in exactly that way must fail the comparison, naming the
//! key and the property; the exact mirror must pass. No store needed.

use replicad::bucket::mapping::Prefix;

use crate::support::Tree;
use crate::support::bucket::{BWhat, Objects, compare_bucket, expected};

fn source() -> (Tree, Prefix) {
    let t = Tree::new();
    t.file("a.txt", b"hello")
        .file("d/b.bin", [0u8, 1, 2, 255])
        .dir("d/empty")
        .symlink("l", "a.txt")
        .fifo("p")
        .chmod("a.txt", 0o640)
        .mtime("a.txt", 1_600_000_000, 123_456_789)
        .mtime("d/empty", 1_600_000_001, 0);
    (t, Prefix::new("pre"))
}

/// Applies `change` to the exact mirror and returns the differences found.
fn differences(change: impl FnOnce(&mut Objects)) -> crate::support::bucket::BucketDiff {
    let (t, p) = source();
    let mut bucket = expected(t.src(), &p);
    change(&mut bucket);
    compare_bucket(t.src(), &p, &bucket).expect_err("the comparer must notice")
}

fn one(change: impl FnOnce(&mut Objects), key: &str, what: BWhat) {
    let diff = differences(change);
    assert!(diff.has(key, what), "{what:?} on {key} not reported:\n{diff:?}");
    assert_eq!(diff.diffs.len(), 1, "exactly one difference expected:\n{diff:?}");
}

#[test]
fn bucket_comparer_accepts_the_exact_mirror() {
    let (t, p) = source();
    let bucket = expected(t.src(), &p);
    // The FIFO has no object; the root has no marker; everything else does.
    let keys: Vec<&str> = bucket.keys().map(String::as_str).collect();
    assert_eq!(keys, ["pre/a.txt", "pre/d/", "pre/d/b.bin", "pre/d/empty/", "pre/l.rclonelink"]);
    compare_bucket(t.src(), &p, &bucket).unwrap();
    // replicad's own objects are not part of the mirror.
    let mut with_manifest = bucket.clone();
    with_manifest.insert("pre/.replicad/manifest".into(), bucket["pre/a.txt"].clone());
    compare_bucket(t.src(), &p, &with_manifest).unwrap();
}

#[test]
fn bucket_comparer_notices_a_missing_object() {
    one(|b| drop(b.remove("pre/d/b.bin")), "pre/d/b.bin", BWhat::Missing);
}

#[test]
fn bucket_comparer_notices_a_missing_directory_marker() {
    one(|b| drop(b.remove("pre/d/empty/")), "pre/d/empty/", BWhat::Missing);
}

#[test]
fn bucket_comparer_notices_an_extra_object() {
    one(|b| drop(b.insert("pre/stray".into(), b["pre/a.txt"].clone())), "pre/stray", BWhat::Extra);
}

#[test]
fn bucket_comparer_notices_wrong_bytes() {
    one(|b| b.get_mut("pre/d/b.bin").unwrap().bytes[3] = 254, "pre/d/b.bin", BWhat::Content);
}

#[test]
fn bucket_comparer_notices_a_wrong_link_target() {
    one(
        |b| b.get_mut("pre/l.rclonelink").unwrap().bytes = b"d/b.bin".to_vec(),
        "pre/l.rclonelink",
        BWhat::Target,
    );
}

#[test]
fn bucket_comparer_notices_wrong_metadata() {
    let set = |key: &'static str, k: &'static str, v: &'static str| {
        move |b: &mut Objects| drop(b.get_mut(key).unwrap().meta.insert(k.into(), v.into()))
    };
    one(set("pre/a.txt", "mtime", "1600000000.123456788"), "pre/a.txt", BWhat::Mtime);
    one(set("pre/a.txt", "mode", "100644"), "pre/a.txt", BWhat::Mode);
    one(set("pre/d/empty/", "mode", "40700"), "pre/d/empty/", BWhat::Mode);
    one(set("pre/a.txt", "uid", "1"), "pre/a.txt", BWhat::Owner);
    one(set("pre/l.rclonelink", "gid", "9"), "pre/l.rclonelink", BWhat::Owner);
    one(|b| drop(b.get_mut("pre/d/").unwrap().meta.remove("mtime")), "pre/d/", BWhat::Mtime);
}

#[test]
fn bucket_comparer_expects_rclones_formats() {
    let (t, p) = source();
    let b = expected(t.src(), &p);
    assert_eq!(b["pre/a.txt"].meta["mtime"], "1600000000.123456789");
    assert_eq!(b["pre/a.txt"].meta["mode"], "100640");
    assert_eq!(b["pre/d/empty/"].meta["mtime"], "1600000001");
    assert!(b["pre/d/"].meta["mode"].starts_with("40"));
    assert_eq!(b["pre/l.rclonelink"].meta["mode"], "120777");
    assert_eq!(b["pre/l.rclonelink"].bytes, "a.txt".as_bytes());
}

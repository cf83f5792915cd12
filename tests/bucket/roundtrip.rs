//! Round trips through real tools: a tree written with replicad's bucket module and the
//! mapping is restored by `rclone copy --metadata --links --create-empty-src-dirs` and
//! compared strictly (exempting only what rclone does not restore by design); and a tree
//! uploaded by rclone itself is compared with what the mapping expects, which checks that
//! replicad's keys and metadata formats are rclone's.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use replicad::bucket::mapping::Prefix;

use super::{connect, mirror_tree};
use crate::support::bucket::{
    BWhat, compare_bucket, compare_restored, rclone_restore, read_bucket,
};
use crate::support::garage::{BUCKET, Garage};
use crate::support::{CompareOptions, Tree, compare_with};

/// Every kind of entry and attribute the mapping promises to carry.
pub(super) fn rich_tree() -> Tree {
    let t = Tree::new();
    t.file("plain.txt", b"hello\n")
        .file("modes/setuid", b"#!/bin/sh\n")
        .chmod("modes/setuid", 0o4755)
        .file("modes/private", b"secret")
        .chmod("modes/private", 0o600)
        .file("modes/empty", b"")
        .dir("modes/closed")
        .chmod("modes/closed", 0o700)
        .dir("empty/deeper/still")
        .file("owned/by-someone", b"x")
        .chown("owned/by-someone", 1234, 5678)
        .dir("owned/dir")
        .chown("owned/dir", 4321, 8765)
        .symlink("links/rel", "../plain.txt")
        .symlink("links/abs", "/etc/hostname")
        .symlink("links/dangling", "no/such/thing")
        .fifo("special/fifo")
        .mtime("plain.txt", 1_700_000_000, 123_456_789)
        .mtime("modes/setuid", 1_500_000_000, 1)
        .mtime("modes/empty", 0, 0)
        .mtime("links/rel", 1_650_000_000, 999_999_999);
    for name in [
        &b"\xff\xfe-non-utf8"[..],
        &[b'n'; 255][..],
        "‛‛quoted".as_bytes(),
        "．".as_bytes(),
        "a／b".as_bytes(),
        b"ctl\x01",
        b"trailing ",
    ] {
        let name = OsStr::from_bytes(name);
        t.file(Path::new("names").join(name), name.as_bytes());
    }
    t.symlink(
        Path::new("names").join(OsStr::from_bytes(b"link\xff")),
        OsStr::from_bytes(b"target\xfe"),
    );
    t
}

fn skip_special(p: &Path) -> bool {
    p == Path::new("special/fifo")
}

#[test]
fn bucket_round_trip_through_rclone_is_exact() {
    let Some(g) = Garage::start("bucket_round_trip_through_rclone_is_exact") else { return };
    let t = rich_tree();
    let b = connect(&g, "rt/tree");
    mirror_tree(&b, t.src());
    crate::support::bucket::assert_bucket_mirrors(t.src(), &b.settings, &b.url);

    let restored = t.base().join("restored");
    std::fs::create_dir(&restored).unwrap();
    rclone_restore(&g, BUCKET, &b.url.prefix, &restored);
    // FIFOs have no object (skipped with a warning by the engine); nothing else is left out.
    std::fs::remove_file(t.src().join("special/fifo")).unwrap();
    if let Err(diff) = compare_restored(t.src(), &restored) {
        panic!("rclone's restore of the bucket differs from SOURCE\n{diff}");
    }
}

#[test]
fn bucket_exemptions_are_exactly_what_rclone_drops() {
    let Some(g) = Garage::start("bucket_exemptions_are_exactly_what_rclone_drops") else { return };
    let t = rich_tree();
    let b = connect(&g, "rt/exempt");
    mirror_tree(&b, t.src());
    let restored = t.base().join("restored");
    std::fs::create_dir(&restored).unwrap();
    rclone_restore(&g, BUCKET, &b.url.prefix, &restored);
    let opts = CompareOptions { exclude: &skip_special, ..Default::default() };
    let diff = compare_with(t.src(), &restored, &opts).expect_err("rclone drops some attributes");
    let exempt: Vec<String> = diff
        .diffs
        .iter()
        .filter(|d| crate::support::bucket::rclone_exempt(t.src(), d))
        .map(|d| format!("{} {:?}", d.path.display(), d.what))
        .collect();
    // setuid is dropped; directory mtimes, modes and owners are not set: each exemption
    // is real, not vacuous.
    for expected in ["modes/setuid Mode", "modes Mtime", "modes/closed Mode", "owned/dir Owner"] {
        assert!(exempt.iter().any(|d| d == expected), "{expected} not seen: {exempt:?}");
    }
    // And nothing that is not exempt differs.
    let rest: Vec<_> =
        diff.diffs.iter().filter(|d| !crate::support::bucket::rclone_exempt(t.src(), d)).collect();
    assert!(rest.is_empty(), "{rest:?}");
}

/// rclone's own upload of a tree holds the keys, bytes and file/link metadata the mapping
/// expects — the check that replicad writes what rclone writes.
#[test]
fn bucket_mapping_matches_what_rclone_writes() {
    let Some(g) = Garage::start("bucket_mapping_matches_what_rclone_writes") else { return };
    let t = rich_tree();
    std::fs::remove_file(t.src().join("special/fifo")).unwrap();
    let remote = format!("G:{BUCKET}/by-rclone");
    let args: Vec<&OsStr> =
        ["sync", "--metadata", "--links", "--s3-directory-markers", "--create-empty-src-dirs"]
            .iter()
            .map(OsStr::new)
            .chain([t.src().as_os_str(), OsStr::new(&remote)])
            .collect();
    let out = g.rclone(&args);
    assert!(out.status.success(), "rclone sync: {}", String::from_utf8_lossy(&out.stderr));
    let b = connect(&g, "by-rclone");
    let prefix = Prefix::new("by-rclone");
    let objects = read_bucket(&b.settings, &b.url);
    match compare_bucket(t.src(), &prefix, &objects) {
        Ok(()) => {}
        Err(diff) => {
            // rclone's directory markers carry only an mtime of "now" (it writes no mode
            // or owner for them): those are the only differences allowed.
            let unexpected: Vec<_> = diff
                .diffs
                .iter()
                .filter(|d| {
                    !(d.key.ends_with('/')
                        && matches!(d.what, BWhat::Mtime | BWhat::Mode | BWhat::Owner))
                })
                .collect();
            assert!(
                unexpected.is_empty(),
                "rclone wrote something else than the mapping:\n{unexpected:#?}\n{diff:?}"
            );
        }
    }
}

//! The bucket replica at size, through the binary: a 200 MiB file goes up as a multipart
//! upload that leaves no upload behind, and 10,000 files then a no-op pass that writes
//! nothing and asks no HEAD (every object's metadata from the manifest, confirmed by LIST).

use std::fs;
use std::io::Write;

use super::{connect, multipart_uploads};
use crate::support::Tree;
use crate::support::bucket::{assert_bucket_mirrors, read_bucket};
use crate::support::garage::{BUCKET, Garage};
use crate::support::replicad;

fn once(g: &Garage, t: &Tree, prefix: &str, args: &[&str]) -> std::process::Output {
    let url = format!("s3://{BUCKET}/{prefix}");
    let mut cmd = replicad();
    cmd.envs(g.env()).arg(t.src()).arg(url).arg("--once").args(args);
    cmd.timeout(std::time::Duration::from_secs(600));
    cmd.output().expect("run replicad")
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn changes(o: &std::process::Output) -> usize {
    stderr(o).lines().filter(|l| l.contains(" action=")).count()
}

#[test]
fn bucket_once_uploads_200_mib_as_multipart_and_leaves_no_upload() {
    let Some(g) = Garage::start("bucket_once_uploads_200_mib_as_multipart") else { return };
    let t = Tree::new();
    let mut f = fs::File::create(t.src().join("big.bin")).unwrap();
    // Not zeros: every 1 MiB block differs, so a misplaced part shows.
    let mut block = vec![0u8; 1 << 20];
    for i in 0..200u32 {
        for (j, b) in block.iter_mut().enumerate() {
            *b = (j as u32).wrapping_mul(2_654_435_761).wrapping_add(i).to_le_bytes()[1];
        }
        f.write_all(&block).unwrap();
    }
    drop(f);
    let first = once(&g, &t, "big", &[]);
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    assert_eq!(multipart_uploads(&g, BUCKET), 0, "no multipart upload left behind");
    let b = connect(&g, "big");
    let objects = read_bucket(&b.settings, &b.url);
    let big = &objects["big/big.bin"];
    assert_eq!(big.bytes.len(), 200 << 20);
    assert!(big.meta.contains_key("md5chksum"), "multipart: MD5 in metadata {:?}", big.meta);
    assert_bucket_mirrors(t.src(), &b.settings, &b.url);
    // Its ETag is no MD5: --checksum reads md5chksum and finds it equal.
    let again = once(&g, &t, "big", &["--checksum"]);
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert_eq!(changes(&again), 0, "{}", stderr(&again));
}

#[test]
fn bucket_once_ten_thousand_files_then_a_no_op_without_heads() {
    let Some(g) = Garage::start("bucket_once_ten_thousand_files") else { return };
    let t = Tree::new();
    for d in 0..100 {
        for f in 0..100 {
            t.file(format!("d{d:03}/f{f:03}"), format!("{d}/{f}\n"));
        }
    }
    let first = once(&g, &t, "many", &[]);
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    assert_eq!(changes(&first), 10_100, "every file copied, every directory created");
    let before = g.s3_requests();
    let noop = once(&g, &t, "many", &["-v"]);
    let after = g.s3_requests();
    assert_eq!(noop.status.code(), Some(0), "{}", stderr(&noop));
    let made: std::collections::BTreeMap<&str, u64> = after
        .iter()
        .map(|(k, n)| (k.as_str(), n - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    eprintln!("requests of a no-op pass over 10,100 objects: {made:?}");
    // The start-up check's LIST of one key, the manifest's GET, and one LIST per 1,000 keys
    // (10,101 with the manifest): nothing else.
    let lists = made.get("ListObjectsV2").copied().unwrap_or(0);
    assert_eq!(lists, 1 + 11, "{made:?}");
    assert_eq!(made.get("GetObject"), Some(&1), "{made:?}");
    assert_eq!(made.values().sum::<u64>(), lists + 1, "no HEAD, PUT or DELETE: {made:?}");
    assert_eq!(changes(&noop), 0, "{}", stderr(&noop));
    let err = stderr(&noop);
    assert!(err.contains("objects=10100 heads=0"), "every object from the manifest\n{err}");
    let b = connect(&g, "many");
    assert_bucket_mirrors(t.src(), &b.settings, &b.url);
}

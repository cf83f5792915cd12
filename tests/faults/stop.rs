//! SIGTERM in every phase ("Trust (2/3)" item 5): during the watch's first walk of 100,000
//! directories, mid-walk of a first pass, mid-removal of a 100,000-file tree, mid-MD5 of
//! 1 GiB, mid-flush — the service, and `--once`, stop within the README's couple of
//! seconds with no temporary file left. Each test waits for the phase's own debug line
//! (`-v`) and checks the phase had not ended when the signal went, so a test cannot pass
//! by signalling too late.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::{PASS_COMPLETE, Service, Tree, temp_leftovers};

/// The README's bound ("within about 2 seconds"), plus slack for a loaded 2-core machine.
const STOP_WITHIN: Duration = Duration::from_secs(4);

/// How long setting a phase up may take.
const SETUP: Duration = Duration::from_secs(60);

/// `n` empty directories under `root/<prefix>`, 1,000 to a parent.
fn many_dirs(root: &Path, prefix: &str, n: usize) {
    for i in 0..n {
        fs::create_dir_all(root.join(format!("{prefix}/{}/{i}", i / 1000))).unwrap();
    }
}

/// `n` one-byte files under `root/<prefix>`, 1,000 to a directory.
fn many_files(root: &Path, prefix: &str, n: usize) {
    for i in 0..n / 1000 {
        fs::create_dir_all(root.join(format!("{prefix}/{i}"))).unwrap();
    }
    for i in 0..n {
        fs::write(root.join(format!("{prefix}/{}/{i}", i / 1000)), b"x").unwrap();
    }
}

/// A file of `mib` MiB of real (non-zero, non-sparse) bytes.
fn real_file(path: &Path, mib: usize) {
    let block: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251 + 1) as u8).collect();
    let mut f = BufWriter::new(File::create(path).unwrap());
    for _ in 0..mib {
        f.write_all(&block).unwrap();
    }
    f.flush().unwrap();
}

/// Waits for `marker` in the log, checks `unfinished` (the phase is still on), sends
/// SIGTERM, and asserts the service stops in time, cleanly, leaving no temporary file.
#[track_caller]
fn stop_during(t: &Tree, mut svc: Service, marker: &str, unfinished: &str) {
    assert!(svc.wait_log(SETUP, marker), "the phase never began ({marker:?}); log:\n{}", svc.log());
    svc.freeze();
    let log = svc.log();
    assert!(
        !log.contains(unfinished),
        "the phase ended before the signal ({unfinished:?}):\n{log}"
    );
    let asked = Instant::now();
    svc.terminate();
    svc.resume();
    let status = svc.wait_exit(Duration::from_secs(20));
    let took = asked.elapsed();
    let log = svc.log();
    assert_eq!(status.and_then(|s| s.code()), Some(0), "exit status after {took:?}; log:\n{log}");
    assert!(took < STOP_WITHIN, "took {took:?} to stop during {marker:?}; log:\n{log}");
    assert!(log.contains("stopped"), "{log}");
    assert!(!log.contains("pass complete"), "an interrupted pass claimed completion:\n{log}");
    // A copy, checksum or removal cut short by the stop is not an error of its entry.
    assert!(!log.contains("ERROR"), "the stop was reported as an error:\n{log}");
    assert_eq!(temp_leftovers(t.dst()), Vec::<std::path::PathBuf>::new(), "{log}");
}

#[test]
fn stop_during_the_watch_setup_walk_of_100k_directories() {
    let t = Tree::new();
    many_dirs(t.src(), "d", 100_000);
    let svc = t.spawn(&["-v", "--interval", "1h"]);
    stop_during(&t, svc, "starting the watch", "watch started");
}

#[test]
fn stop_mid_walk_of_a_first_pass() {
    let t = Tree::new();
    many_files(t.src(), "f", 20_000);
    let svc = t.spawn(&["-v", "--interval", "1h", "--no-watch"]);
    stop_during(&t, svc, "action=copy", PASS_COMPLETE);
}

#[test]
fn stop_mid_removal_of_a_100k_file_tree() {
    let t = Tree::new();
    t.file("keep", b"k");
    many_files(t.dst(), "gone", 100_000);
    let svc = t.spawn(&["-v", "--interval", "1h", "--no-watch"]);
    stop_during(&t, svc, "removing a directory tree", "action=remove");
}

#[test]
fn stop_mid_md5_of_1gib() {
    let t = Tree::new();
    t.replica().dir("");
    real_file(&t.join("big"), 1024);
    fs::copy(t.join("big"), t.dst().join("big")).unwrap();
    let m = fs::metadata(t.join("big")).unwrap();
    let mtime = filetime_of(&m);
    crate::support::set_mtime(&t.dst().join("big"), mtime.0, mtime.1);
    let svc = t.spawn(&["-v", "--interval", "1h", "--no-watch", "--checksum"]);
    stop_during(&t, svc, "comparing content by MD5", PASS_COMPLETE);
}

#[test]
fn stop_mid_flush_after_a_large_copy() {
    let t = Tree::new();
    real_file(&t.join("big"), 1024);
    let svc = t.spawn(&["-v", "--interval", "1h", "--no-watch"]);
    stop_during(&t, svc, "flushing the replica", PASS_COMPLETE);
}

fn filetime_of(m: &fs::Metadata) -> (i64, u32) {
    use std::os::unix::fs::MetadataExt;
    (m.mtime(), m.mtime_nsec() as u32)
}

//! The live service into a bucket (#13): the binary as a service against a real Garage,
//! driven by SOURCE's events alone (`--interval 1h`, so no periodic pass hides a missed
//! event), checked with the bucket oracle while polling with deadlines.

use std::path::Path;
use std::time::Duration;

use crate::support::bucket::{compare_bucket, try_read_bucket};
use crate::support::garage::{BUCKET, Garage};
use crate::support::{Service, Tree, wait_until};

use super::{TestBucket, connect};

/// How long an event may take to reach the bucket in these tests (a loaded CI machine).
const CONVERGE: Duration = Duration::from_secs(30);

/// `replicad SRC s3://BUCKET/PREFIX ARGS…` as a service with Garage's environment; waits
/// for its first pass.
pub fn live(g: &Garage, t: &Tree, prefix: &str, args: &[&str]) -> Service {
    let mut cmd = std::process::Command::new(crate::support::bin());
    cmd.envs(g.env()).arg(t.src()).arg(format!("s3://{BUCKET}/{prefix}"));
    cmd.args(["--debounce", "50ms"]).args(args);
    let mut svc = Service::start_command(t.base(), cmd);
    svc.wait_first_pass();
    svc
}

/// Waits until the bucket mirrors `src` exactly; panics with the difference and the log.
#[track_caller]
pub fn converges(b: &TestBucket, src: &Path, svc: &Service, what: &str) {
    let mut last = None;
    let same = wait_until(CONVERGE, || {
        let Some(objects) = try_read_bucket(&b.settings, &b.url) else { return false };
        let diff = compare_bucket(src, &b.url.prefix, &objects);
        let ok = diff.is_ok();
        last = diff.err();
        ok
    });
    assert!(same, "{what}: not mirrored within {CONVERGE:?}\n{last:?}\nlog:\n{}", svc.log());
}

/// The actions the service logged (`action=…` fields), in order.
#[allow(dead_code)] // used by the rename tests below once they land
pub fn actions(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("action=")))
        .map(|a| a.trim_matches('"').to_owned())
        .collect()
}

#[test]
fn bucket_live_events_reach_the_bucket() {
    let Some(g) = Garage::start("bucket_live_events_reach_the_bucket") else { return };
    let t = Tree::new();
    t.file("keep.txt", "kept").file("d/old.txt", "old");
    let svc = live(&g, &t, "ev", &["--interval", "1h"]);
    let b = connect(&g, "ev");
    converges(&b, t.src(), &svc, "first pass");
    let check = |what: &str| converges(&b, t.src(), &svc, what);
    t.file("new.txt", "hello");
    check("create");
    t.file("new.txt", "hello, again");
    check("modify");
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(t.src().join("new.txt"))
            .expect("open for append");
        f.write_all(b" and more").expect("append");
    }
    check("append");
    t.chmod("new.txt", 0o600);
    check("chmod");
    t.mtime("keep.txt", 1_600_000_000, 123_456_789);
    check("touch");
    t.symlink("link", "keep.txt");
    check("symlink");
    t.dir("p/q/r").file("p/q/r/deep.txt", "deep");
    check("mkdir -p");
    t.remove("keep.txt");
    check("delete");
    t.remove("p");
    check("rm -r");
    t.rename("d/old.txt", "d/renamed.txt");
    check("file rename");
    t.dir("e").rename("new.txt", "e/new.txt");
    check("rename into a new directory");
    let log = svc.log();
    assert!(!log.contains("ERROR"), "no errors:\n{log}");
    assert_eq!(log.matches("pass complete").count(), 1, "events only, one pass:\n{log}");
}

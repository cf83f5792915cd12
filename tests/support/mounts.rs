//! Mount games for tests: a binary run in a private mount namespace (`unshare --mount`),
//! so nothing is mounted on the host, and `nsenter` to change mounts inside it while the
//! service runs. They need root, as the whole suite does: where the namespace cannot be
//! made, the test fails naming why rather than passing having proved nothing.

use std::ffi::OsString;
use std::process::Command;
use std::time::Duration;

use super::{Run, Service, Tree, bin, wait_until, wrapper};

/// How long a guard or a change may take to show (slack for a loaded 2-core machine).
pub const SHOW: Duration = Duration::from_secs(15);

/// Waits until the service has logged `n` more lines containing `needle` than now.
#[track_caller]
pub fn wait_more(svc: &Service, needle: &str, n: usize) {
    let start = svc.count(needle);
    assert!(
        wait_until(SHOW, || svc.count(needle) >= start + n),
        "expected {n} more {needle:?} lines; log:\n{}",
        svc.log()
    );
}

/// `unshare --mount --propagation private sh -c "<setup> && exec replicad ARGS"`: the
/// service's pid is the namespace's, so `nsenter -t PID -m` reaches its mounts.
pub fn in_mount_namespace(setup: &str, args: &[OsString]) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!("{setup} || exit 97; exec \"$0\" \"$@\""))
        .arg(bin())
        .args(args);
    cmd
}

/// Runs `args` inside the mount namespace of process `pid`.
#[track_caller]
pub fn nsenter(pid: u32, args: &[&str]) -> std::process::Output {
    let out = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-m", "--"])
        .args(args)
        .output()
        .expect("run nsenter");
    assert!(out.status.success(), "nsenter {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

pub fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

pub fn roots_and(t: &Tree, extra: &[&str]) -> Vec<OsString> {
    let mut args = vec![t.src().as_os_str().to_owned(), t.dst().as_os_str().to_owned()];
    args.extend(os(extra));
    args
}

/// A one-shot run in a private mount namespace after `setup` (a shell line; `$S` and `$D`
/// are SOURCE and REPLICA). Fails the test if the setup itself failed.
#[track_caller]
pub fn once_in_mount_namespace(t: &Tree, setup: &str, extra: &[&str]) -> Run {
    let mut args = os(&["--once"]);
    args.extend(roots_and(t, extra));
    let mut cmd = wrapper("env");
    cmd.arg(format!("S={}", t.src().display()))
        .arg(format!("D={}", t.dst().display()))
        .arg("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!("{setup} || exit 97; exec \"$0\" \"$@\""))
        .arg(bin())
        .args(&args);
    let run = Run::of(&mut cmd);
    assert_ne!(run.code, Some(97), "the mount setup failed (this test needs root):\n{run}");
    run
}

//! Running it the way production does: SIGHUP after logrotate moved the log file, and the
//! container recipe — the binary as PID 1 in fresh PID and mount namespaces, configured
//! only by `REPLICAD_*` variables, JSON logs, probed over HTTP, stopped by SIGTERM — plus
//! the deploy/ YAML files parse. See: issue #11.

use std::process::Command;
use std::time::Duration;

use crate::status::{get, sample};
use crate::support::{CONVERGE, Tree, bin, running, wait_until};

// See: issue #11 — SIGHUP killed the process (exit 129) instead of reopening the log.
#[test]
fn sighup_opens_the_log_file_again() {
    let t = Tree::new();
    let log = t.base().join("logs/replicad.log");
    let log_arg = log.to_str().unwrap();
    let svc = running(&t, &["--interval", "1h", "--log-file", log_arg]);
    let rotated = t.base().join("logs/replicad.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    svc.signal(rustix::process::Signal::HUP);
    assert!(svc.wait_log(CONVERGE, "log file opened again"), "{}", svc.log());
    t.file("after-rotation", "x");
    assert!(
        wait_until(CONVERGE, || std::fs::read_to_string(&log)
            .is_ok_and(|l| l.contains("after-rotation"))),
        "the new log file never got the next line; stderr:\n{}",
        svc.log()
    );
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(old.contains("pass complete") && !old.contains("after-rotation"), "{old}");
    assert!(t.replica().exists("after-rotation"), "the service stopped mirroring");
}

#[test]
fn sighup_without_a_log_file_is_harmless() {
    let t = Tree::new();
    let mut svc = running(&t, &["--interval", "1h"]);
    svc.signal(rustix::process::Signal::HUP);
    assert!(svc.wait_log(CONVERGE, "no log file to open again"), "{}", svc.log());
    assert!(svc.wait_exit(Duration::from_millis(300)).is_none(), "SIGHUP ended the process");
}

/// How long a SIGTERM may take to end the container (the pod's grace period is sized
/// from this: deploy/kubernetes.yaml).
const STOP_WITHIN: Duration = Duration::from_secs(5);

#[test]
fn as_pid_1_in_a_container_configured_by_environment_only() {
    let probe = Command::new("unshare").args(["--pid", "--fork", "--mount-proc", "true"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        let test = "as_pid_1_in_a_container_configured_by_environment_only";
        crate::support::skip(test, "unshare --pid unavailable");
        return;
    }
    let t = Tree::new();
    t.file("data/a", "x");
    let sock = t.base().join("status.sock");
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc", "--kill-child"])
        .arg(bin())
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("REPLICAD_SOURCE", t.src())
        .env("REPLICAD_REPLICA", t.dst())
        .env("REPLICAD_LOG_FORMAT", "json")
        .env("REPLICAD_INTERVAL", "1h")
        .env("REPLICAD_STATUS_ADDR", format!("unix:{}", sock.display()))
        // What Kubernetes injects for a Service called replicad: warned, not refused.
        .env("REPLICAD_SERVICE_HOST", "10.0.0.1");
    let mut svc = t.spawn_command(cmd);
    assert!(
        wait_until(CONVERGE, || get(&sock, "/readyz").is_some_and(|a| a.code == 200)),
        "never ready; log:\n{}",
        svc.log()
    );
    assert_eq!(get(&sock, "/healthz").unwrap().code, 200);
    let metrics = get(&sock, "/metrics").unwrap().body;
    assert_eq!(sample(&metrics, "replicad_in_sync"), Some(1.0), "{metrics}");
    t.assert_mirrored();
    let log = svc.log();
    for line in log.lines() {
        let parsed: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(parsed.get("level").is_some(), "{line}");
        if let Some(duration) = parsed.get("duration") {
            assert!(duration.is_f64(), "durations are numbers of seconds: {line}");
        }
    }
    assert!(log.contains("REPLICAD_SERVICE_HOST"), "no warning for the unknown variable");

    // `unshare --kill-child` forwards nothing: signal the PID 1 itself, by its host pid.
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", svc.pid()))
        .unwrap_or_default();
    let inner: i32 = children.split_whitespace().next().and_then(|p| p.parse().ok()).unwrap();
    let status = std::fs::read_to_string(format!("/proc/{inner}/status")).unwrap();
    let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap_or_default();
    assert!(nspid.trim_end().ends_with("\t1"), "not PID 1 in its namespace: {nspid}");
    let asked = std::time::Instant::now();
    let pid = rustix::process::Pid::from_raw(inner).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let exit = svc.wait_exit(STOP_WITHIN);
    assert!(exit.is_some(), "no exit within {STOP_WITHIN:?} of SIGTERM; log:\n{}", svc.log());
    assert_eq!(exit.and_then(|s| s.code()), Some(0), "{}", svc.log());
    assert!(asked.elapsed() < STOP_WITHIN);
}

#[test]
fn the_deploy_yaml_files_parse() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    assert!(files.len() >= 2, "expected the Kubernetes and compose examples in {dir:?}");
    let check = "import sys, yaml\nfor f in sys.argv[1:]:\n    docs = [d for d in yaml.safe_load_all(open(f)) if d]\n    assert docs, f + ' is empty'\n    print(f, len(docs))\n";
    let out = Command::new("python3").arg("-c").arg(check).args(&files).output();
    let Ok(out) = out else {
        crate::support::skip("the_deploy_yaml_files_parse", "no python3");
        return;
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("No module named 'yaml'") {
        crate::support::skip("the_deploy_yaml_files_parse", "python3-yaml is not installed");
        return;
    }
    assert!(out.status.success(), "{stderr}");
}

// See: issue #11 — one "unable to remove watch descriptor" line per directory on `rm -r`.
#[test]
fn rm_r_leaves_no_notify_noise_in_the_log() {
    let t = Tree::new();
    t.file("keep", "k").dir("x/y/z").dir("x/w");
    let svc = running(&t, &["--interval", "1h"]);
    crate::support::wait_until(CONVERGE, || {
        crate::support::inotify_watched_inodes(svc.pid()).len() >= 5
    });
    std::fs::remove_dir_all(t.src().join("x")).unwrap();
    assert!(wait_until(CONVERGE, || !t.replica().exists("x")), "{}", svc.log());
    assert!(svc.wait_log(CONVERGE, "action=remove"), "{}", svc.log());
    assert!(!svc.log().contains("watch descriptor"), "notify noise:\n{}", svc.log());
}

// See: issue #11 — `-q` hid the pass summary, the only sign of life of a quiet service.
#[test]
fn quiet_still_prints_each_pass_summary() {
    let t = Tree::new();
    t.file("a", "x");
    let r = t.once(&["-q"]);
    r.assert_code(0);
    assert_eq!(r.lines_with("pass complete").len(), 1, "{r}");
    assert!(r.actions().is_empty(), "-q shows no action lines:\n{r}");
}

// See: issue #11 — a socket in SOURCE was warned about on every pass.
#[test]
fn a_skipped_socket_is_warned_once_per_path() {
    let t = Tree::new();
    t.socket("sock");
    let svc = running(&t, &["--interval", "100ms"]);
    assert!(wait_until(CONVERGE, || svc.count("pass complete") >= 4), "{}", svc.log());
    assert_eq!(svc.count("skipped: sockets"), 1, "{}", svc.log());
    t.socket("other");
    assert!(wait_until(CONVERGE, || svc.count("skipped: sockets") == 2), "{}", svc.log());
}

/// A progress line on a terminal during the first pass (its end held 1.5 s by strace so
/// the line is drawn at least once), never when stderr is a pipe.
#[test]
fn progress_line_on_a_terminal_only() {
    let have =
        |p: &str| Command::new(p).arg("--version").output().is_ok_and(|o| o.status.success());
    if !have("script") || !have("strace") {
        crate::support::skip(
            "progress_line_on_a_terminal_only",
            "needs script (util-linux) and strace",
        );
        return;
    }
    let t = Tree::new();
    t.file("a", "12345").file("b", "12345");
    let held = format!(
        "strace -f -qq -o /dev/null -e trace=syncfs -e inject=syncfs:delay_enter=1500000 {} --once {} {}",
        bin().display(),
        t.src().display(),
        t.dst().display()
    );
    // `script` gives the command a pseudo-terminal and copies what it shows to stdout.
    let out = Command::new("script").args(["-qec", &held, "/dev/null"]).output().unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("first pass: 2 entries scanned, 2 files copied"), "{shown}");
    assert!(shown.contains("pass complete"), "log lines print too:\n{shown}");
    t.assert_mirrored();

    let piped = Tree::new();
    piped.file("a", "12345");
    let run = piped.once(&[]);
    run.assert_code(0);
    assert!(!run.stderr.contains("entries scanned"), "progress on a pipe:\n{run}");
}

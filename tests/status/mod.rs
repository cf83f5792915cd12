//! The status endpoint (`--status-addr`): every route's status code in each state of the
//! service (first pass running, ready, guard holding, stopped), the replication lag rising
//! while a change is held and falling back to zero, and the in-sync time moving only after
//! an exact pass. Requests are plain HTTP/1.1 written by hand, over the Unix socket (no
//! port to collide with parallel tests) or TCP.
//! See: issue #11.

mod page;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::{CONVERGE, Service, Tree, bin, wait_until};

/// An HTTP answer: status code and body.
pub struct Answer {
    pub code: u16,
    pub body: String,
}

/// `GET path` over `stream`; `None` if the connection failed.
fn get_over(mut stream: impl Read + Write, path: &str) -> Option<Answer> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: replicad\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some(Answer { code, body: body.to_owned() })
}

/// `GET path` on the Unix socket `sock`.
pub fn get(sock: &Path, path: &str) -> Option<Answer> {
    let stream = UnixStream::connect(sock).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    get_over(stream, path)
}

/// `GET path` on TCP `addr`.
pub fn get_tcp(addr: &str, path: &str) -> Option<Answer> {
    let stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    get_over(stream, path)
}

/// The value of the sample `name` (exact series, labels included) in a `/metrics` body.
pub fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The status socket's path for a tree.
pub fn socket(t: &Tree) -> PathBuf {
    t.base().join("status.sock")
}

/// Starts the service with the endpoint on a Unix socket and waits until it answers.
pub fn serve(t: &Tree, extra: &[&str]) -> (Service, PathBuf) {
    let sock = socket(t);
    let addr = format!("unix:{}", sock.display());
    let mut args = vec!["--status-addr", addr.as_str()];
    args.extend_from_slice(extra);
    let svc = t.spawn(&args);
    let up = wait_until(CONVERGE, || get(&sock, "/healthz").is_some());
    assert!(up, "the endpoint never answered; log:\n{}", svc.log());
    (svc, sock)
}

fn metric(sock: &Path, name: &str) -> Option<f64> {
    sample(&get(sock, "/metrics")?.body, name)
}

#[test]
fn guard_holding_then_ready_then_stopped() {
    let t = Tree::new();
    t.replica().file("precious", "p");
    // SOURCE empty, REPLICA not: the deletion guard holds.
    let (mut svc, sock) = serve(&t, &["--interval", "1h"]);
    let holding =
        wait_until(CONVERGE, || get(&sock, "/readyz").is_some_and(|a| a.body.contains("guard")));
    assert!(holding, "the guard never held; log:\n{}", svc.log());
    let ready = get(&sock, "/readyz").unwrap();
    assert_eq!(ready.code, 503, "{}", ready.body);
    assert!(ready.body.contains("guard"), "the reason names the guard: {}", ready.body);
    assert_eq!(ready.body.trim().lines().count(), 1, "one line: {}", ready.body);
    assert_eq!(get(&sock, "/healthz").unwrap().code, 200, "holding is alive");
    assert_eq!(metric(&sock, "replicad_guard_holding"), Some(1.0));
    assert_eq!(metric(&sock, "replicad_ready"), Some(0.0));

    t.file("a", "x");
    assert!(
        wait_until(CONVERGE, || get(&sock, "/readyz").is_some_and(|a| a.code == 200)),
        "never ready after SOURCE filled; log:\n{}",
        svc.log()
    );
    assert_eq!(metric(&sock, "replicad_guard_holding"), Some(0.0));
    let status: serde_json::Value =
        serde_json::from_str(&get(&sock, "/status").unwrap().body).unwrap();
    assert_eq!(status["ready"], true);
    assert_eq!(status["guard"], serde_json::Value::Null);
    assert!(status["uptime_seconds"].is_f64(), "durations are numbers: {status}");
    assert!(status["last_pass"]["duration_seconds"].is_f64(), "{status}");

    svc.terminate();
    let exit = svc.wait_exit(Duration::from_secs(10));
    assert_eq!(exit.and_then(|s| s.code()), Some(0), "{}", svc.log());
    assert!(get(&sock, "/healthz").is_none(), "still answering after the stop");
    assert!(!sock.exists(), "the socket file was left behind");
}

#[test]
fn tcp_port_and_unknown_route() {
    let t = Tree::new();
    t.file("a", "x");
    let svc = t.spawn(&["--status-addr", "127.0.0.1:0", "--interval", "1h"]);
    assert!(svc.wait_log(CONVERGE, "status endpoint listening"), "{}", svc.log());
    let log = svc.log();
    let addr = log
        .lines()
        .find(|l| l.contains("status endpoint listening"))
        .and_then(|l| l.split("addr=").nth(1))
        .map(|a| a.split_whitespace().next().unwrap_or_default().to_owned())
        .unwrap();
    assert!(
        wait_until(CONVERGE, || get_tcp(&addr, "/readyz").is_some_and(|a| a.code == 200)),
        "{}",
        svc.log()
    );
    let metrics = get_tcp(&addr, "/metrics").unwrap();
    assert_eq!(metrics.code, 200);
    assert_eq!(sample(&metrics.body, "replicad_passes_total"), Some(1.0), "{}", metrics.body);
    assert_eq!(sample(&metrics.body, "replicad_actions_total{action=\"copy\"}"), Some(1.0));
    assert_eq!(sample(&metrics.body, "replicad_copied_bytes_total"), Some(1.0));
    assert_eq!(get_tcp(&addr, "/nonexistent").unwrap().code, 404);
}

#[test]
fn the_socket_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let t = Tree::new();
    let (_svc, sock) = serve(&t, &["--interval", "1h"]);
    let mode = std::fs::symlink_metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");
}

#[test]
fn a_port_in_use_is_refused_at_start() {
    let t = Tree::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let r = crate::support::replicad()
        .arg("--status-addr")
        .arg(&addr)
        .arg(t.src())
        .arg(t.dst())
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(1), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(String::from_utf8_lossy(&r.stderr).contains("--status-addr"));
}

/// The first pass's end (its syncfs) is held 6 s by strace: meanwhile the service is
/// alive but not ready, and a change made then waits in the queue (event work waits for
/// the pass), so the lag rises; once the pass ends the change is applied and the lag falls
/// to zero. That pass saw a change arrive, so it does not make REPLICA "in sync"; the next
/// one (nothing changing) does, and a change afterwards clears the gauge but not the time.
#[test]
fn first_pass_running_lag_and_in_sync_time() {
    if Command::new("strace").arg("-V").output().is_err() {
        crate::support::skip("first_pass_running_lag_and_in_sync_time", "strace is not installed");
        return;
    }
    let t = Tree::new();
    t.file("a", "x");
    let sock = socket(&t);
    let mut cmd = Command::new("strace");
    // --seccomp-bpf: only syncfs stops the tracee, so the rest (the watcher's thread
    // above all) runs at full speed on a loaded machine.
    cmd.args(["-f", "--seccomp-bpf", "-qq", "-o", "/dev/null", "-e", "trace=syncfs"])
        .args(["-e", "inject=syncfs:delay_enter=6000000:when=1", "--"])
        .arg(bin())
        .arg(format!("--status-addr=unix:{}", sock.display()))
        // The next pass comes at 8 s, 2 s after the held one ends: time to look at the
        // state between the two.
        .args(["--interval", "8s"])
        .arg(t.src())
        .arg(t.dst());
    let svc = t.spawn_command(cmd);
    // strace's tracee outlives strace if strace is killed: stop it by its own pid.
    let _stop = StopTracee(svc.pid());
    assert!(
        wait_until(CONVERGE, || get(&sock, "/readyz").is_some()),
        "no answer; log:\n{}",
        svc.log()
    );
    let ready = get(&sock, "/readyz").unwrap();
    assert_eq!(ready.code, 503, "ready during the held first pass? {}", ready.body);
    assert!(ready.body.contains("first full pass"), "{}", ready.body);
    assert_eq!(get(&sock, "/healthz").unwrap().code, 200, "a flushing pass is alive");
    let status: serde_json::Value =
        serde_json::from_str(&get(&sock, "/status").unwrap().body).unwrap();
    assert_eq!(status["first_pass_done"], false, "{status}");

    // Once the pass has copied `a`, all it has left is its held flush: `b` is for the
    // event queue, whose work waits for the pass.
    assert!(svc.wait_log(CONVERGE, "path=a"), "{}", svc.log());
    t.file("b", "during the pass");
    let lagging = wait_until(CONVERGE, || {
        metric(&sock, "replicad_replication_lag_seconds").is_some_and(|l| l > 0.0)
    });
    assert!(lagging, "no lag while a change waited; log:\n{}", svc.log());
    assert!(!t.replica().exists("b"), "not held: b was copied while lag showed");
    assert!(
        wait_until(CONVERGE, || get(&sock, "/readyz").is_some_and(|a| a.code == 200)),
        "never ready; log:\n{}",
        svc.log()
    );
    assert!(wait_until(CONVERGE, || t.replica().exists("b")), "b never copied");
    assert!(
        wait_until(CONVERGE, || metric(&sock, "replicad_replication_lag_seconds") == Some(0.0)),
        "the lag did not fall back to zero"
    );
    // The first pass saw a change arrive: REPLICA was not proven exact by it.
    assert_eq!(metric(&sock, "replicad_passes_total"), Some(1.0));
    assert_eq!(metric(&sock, "replicad_in_sync"), Some(0.0));
    assert_eq!(metric(&sock, "replicad_last_in_sync_timestamp_seconds"), Some(0.0));

    // The next pass (at 8 s) changes nothing while nothing changes: in sync.
    assert!(
        wait_until(Duration::from_secs(20), || metric(&sock, "replicad_in_sync") == Some(1.0)),
        "never in sync; log:\n{}",
        svc.log()
    );
    let since = metric(&sock, "replicad_last_in_sync_timestamp_seconds").unwrap();
    assert!(since > 0.0);
    t.file("c", "after");
    assert!(
        wait_until(CONVERGE, || metric(&sock, "replicad_in_sync") == Some(0.0)),
        "a change did not clear in_sync"
    );
    assert_eq!(
        metric(&sock, "replicad_last_in_sync_timestamp_seconds"),
        Some(since),
        "the time moved without an exact pass"
    );
}

/// Sends SIGKILL, on drop, to the process that `tracer` (strace) started.
struct StopTracee(u32);

impl Drop for StopTracee {
    fn drop(&mut self) {
        let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.0));
        for pid in children.unwrap_or_default().split_whitespace() {
            if let Some(pid) = pid.parse().ok().and_then(rustix::process::Pid::from_raw) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

//! Faults as ordinary tests ("Trust (2/3)"): a full REPLICA (ENOSPC, no inodes left), a
//! REPLICA remounted read-only mid-run or read-only from the start, a filesystem that
//! cannot store the times, a log file on `/dev/full` or a FIFO nobody reads, a stalled
//! stderr, thread limits, SIGINT/SIGTERM during `--once`, sibling events racing on one
//! missing directory. Each checks the exit status and the log say what happened, that no
//! temporary or torn file is left, and that replicad recovers once the fault is gone.
//! Mount faults run in a private mount namespace (see `support::mounts`); `stop` sends
//! SIGTERM in every phase.

mod stop;

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::mounts::{
    SHOW, in_mount_namespace, nsenter, once_in_mount_namespace, roots_and,
};
use crate::support::{
    Dir, NOBODY, PASS_COMPLETE, Run, Tree, assert_same, bin, compare, temp_leftovers, wait_until,
    wrapper,
};

// ---- REPLICA full, read-only, or unable to keep the times ----------------------------------

#[test]
fn full_replica_is_an_entry_error_with_nothing_torn_and_recovers_when_space_is_back() {
    let t = Tree::new();
    t.file("small", b"fits").file("big", vec![7u8; 3 << 20]).file("d/also", b"fits too");
    t.replica().dir("");
    // 2 MiB of tmpfs: the 3 MiB file cannot fit, the rest can. Then the same REPLICA gets
    // room (remount) and the next run converges. Both runs, and a look for temporary
    // files in between, happen inside one private mount namespace.
    let script = r#"mount -t tmpfs -o size=2m full "$D" || exit 97
        "$0" "$@"; first=$?
        find "$D" -name '.replicad.tmp.*' | grep -q . && exit 98
        test -e "$D/big" && exit 99
        mount -o remount,size=8m "$D" || exit 97
        "$0" "$@"; second=$?
        cmp -s "$S/big" "$D/big" || exit 96
        echo "codes $first $second" >&2"#;
    let mut cmd = wrapper("env");
    cmd.arg(format!("S={}", t.src().display()))
        .arg(format!("D={}", t.dst().display()))
        .args(["unshare", "--mount", "--propagation", "private", "sh", "-c", script])
        .arg(bin())
        .arg("--once")
        .args(roots_and(&t, &[]));
    let run = Run::of(&mut cmd);
    assert_ne!(run.code, Some(97), "the tmpfs setup failed (this test needs root):\n{run}");
    assert_ne!(run.code, Some(98), "a temporary file was left behind:\n{run}");
    assert_ne!(run.code, Some(99), "a partial copy went live:\n{run}");
    assert_ne!(run.code, Some(96), "the recovered copy differs:\n{run}");
    assert!(run.stderr.contains("codes 23 0"), "exit statuses 23 then 0:\n{run}");
    assert!(!run.lines_with("No space left on device").is_empty(), "{run}");
    assert!(run.has_action("copy", "small") && run.has_action("copy", "d/also"), "{run}");
    assert_eq!(run.lines_with("action=copy path=big").len(), 1, "copied once, when it fit:\n{run}");
}

#[test]
fn replica_out_of_inodes_leaves_no_temporary_file_and_says_which_entries_failed() {
    let t = Tree::new();
    for i in 0..40 {
        t.file(format!("f{i:02}"), b"x");
    }
    t.replica().dir("");
    // A private tmpfs with room for 20 inodes; list it from inside before it goes away.
    let script = r#"mount -t tmpfs -o nr_inodes=20 tiny "$D" && "$0" "$@"; code=$?; find "$D" -name '.replicad.tmp.*' | grep -q . && exit 98; exit $code"#;
    let mut cmd = wrapper("env");
    cmd.arg(format!("D={}", t.dst().display()))
        .args(["unshare", "--mount", "--propagation", "private", "sh", "-c", script])
        .arg(bin())
        .arg("--once")
        .args(roots_and(&t, &[]));
    let run = Run::of(&mut cmd);
    assert_ne!(run.code, Some(98), "a temporary file was left behind:\n{run}");
    run.assert_code(23);
    assert!(!run.lines_with("No space left on device").is_empty(), "{run}");
}

#[test]
fn read_only_replica_is_refused_before_any_work() {
    let t = Tree::new();
    t.file("a", b"a").file("d/b", b"b");
    t.replica().dir("");
    let run = once_in_mount_namespace(&t, r#"mount -t tmpfs -o ro ro "$D""#, &[]);
    run.assert_code(1);
    assert!(!run.lines_with("replica cannot be written").is_empty(), "{run}");
    assert!(run.actions().is_empty(), "actions were claimed on a read-only REPLICA:\n{run}");
}

#[test]
fn read_only_replica_stops_the_service_with_status_1() {
    let t = Tree::new();
    t.file("a", b"a");
    t.replica().dir("");
    let setup = format!("mount -t tmpfs -o ro ro '{}'", t.dst().display());
    let mut svc = t.spawn_command(in_mount_namespace(&setup, &roots_and(&t, &[])));
    let status = svc.wait_exit(SHOW);
    assert_eq!(status.and_then(|s| s.code()), Some(1), "log:\n{}", svc.log());
    assert!(svc.log().contains("replica cannot be written"), "{}", svc.log());
}

#[test]
fn replica_remounted_read_only_mid_run_is_reported_then_recovers() {
    let t = Tree::new();
    t.file("a", b"a");
    t.replica().dir("");
    let setup = format!("mount -t tmpfs rw '{}'", t.dst().display());
    let args = roots_and(&t, &["--interval", "300ms"]);
    let mut svc = t.spawn_command(in_mount_namespace(&setup, &args));
    svc.wait_first_pass();
    let dst = t.dst().display().to_string();
    nsenter(svc.pid(), &["mount", "-o", "remount,ro", &dst]);
    t.file("b", b"new while read-only");
    assert!(
        wait_until(SHOW, || svc.log().contains("Read-only file system")),
        "the failure was not reported; log:\n{}",
        svc.log()
    );
    assert!(!svc.log().contains("action=copy path=b"), "a failed copy was claimed:\n{}", svc.log());
    nsenter(svc.pid(), &["mount", "-o", "remount,rw", &dst]);
    assert!(
        wait_until(SHOW, || svc.log().contains("action=copy path=b")),
        "no recovery once writable again; log:\n{}",
        svc.log()
    );
    let leftovers = nsenter(svc.pid(), &["find", &dst, "-name", ".replicad.tmp.*"]);
    assert!(leftovers.stdout.is_empty(), "temporary files left: {:?}", leftovers.stdout);
}

#[test]
fn replica_that_keeps_whole_seconds_until_2038_is_in_sync_after_one_pass_and_never_recopied() {
    // See: issue "Trust (2/3)" item 8
    let t = Tree::new();
    t.file("ns", b"nanoseconds").mtime("ns", 1_700_000_000, 123_456_789);
    t.file("late", b"year 2100").mtime("late", 4_102_444_800, 5);
    t.file("plain", b"whole second").mtime("plain", 1_600_000_000, 0);
    let image = t.base().join("ext4-128.img");
    let made = Command::new("truncate").arg("-s").arg("16M").arg(&image).status();
    assert!(made.is_ok_and(|s| s.success()), "truncate");
    let mkfs = Command::new("mkfs.ext4").args(["-q", "-F", "-I", "128"]).arg(&image).output();
    let mkfs = mkfs.expect("mkfs.ext4 (e2fsprogs) is needed for this test");
    assert!(mkfs.status.success(), "mkfs.ext4: {}", String::from_utf8_lossy(&mkfs.stderr));
    t.replica().dir("");
    let setup = format!(r#"mount -o loop '{}' "$D""#, image.display());
    let script =
        format!(r#"{setup} || exit 97; "$0" "$@"; a=$?; "$0" "$@"; b=$?; echo "codes $a $b" >&2"#);
    let mut cmd = wrapper("env");
    cmd.arg(format!("D={}", t.dst().display()))
        .args(["unshare", "--mount", "--propagation", "private", "sh", "-c", &script])
        .arg(bin())
        .arg("--once")
        .args(roots_and(&t, &[]));
    let run = Run::of(&mut cmd);
    assert_ne!(run.code, Some(97), "the loop mount failed (this test needs root):\n{run}");
    assert!(run.stderr.contains("codes 0 0"), "both runs must report in sync:\n{run}");
    assert_eq!(
        run.lines_with("cannot store this modification time").len(),
        2,
        "once per run:\n{run}"
    );
    // Three copies in the first run, nothing at all in the second.
    let copies = run.lines_with("action=copy");
    assert_eq!(copies.len(), 3, "files were copied again:\n{run}");
}

// ---- Logging that cannot be written ---------------------------------------------------------

#[test]
fn log_file_on_dev_full_is_reported_and_fails_the_run() {
    let t = Tree::new();
    t.file("a", b"a");
    let run = t.once(&["--log-file", "/dev/full"]);
    run.assert_code(1);
    assert!(!run.lines_with("log file could not be written").is_empty(), "{run}");
    t.assert_mirrored();
}

#[test]
fn fifo_log_file_with_no_reader_is_refused_at_once() {
    let t = Tree::new();
    t.file("a", b"a");
    Dir::at(t.base()).fifo("log.fifo");
    let fifo = t.base().join("log.fifo");
    let started = Instant::now();
    let run = t.once(&["--log-file", fifo.to_str().unwrap()]);
    run.assert_code(1);
    assert!(started.elapsed() < Duration::from_secs(10), "the start hung on the FIFO");
    assert!(run.stderr.contains("nothing is reading it"), "{run}");
    assert!(!t.dst().exists(), "REPLICA was created:\n{run}");
}

#[test]
fn sigterm_is_obeyed_while_stderr_is_stalled() {
    // See: issue "Trust (2/3)" item 3
    let t = Tree::new();
    for i in 0..3000 {
        t.file(format!("d{}/file-with-a-longish-name-{i}", i % 10), b"x");
    }
    let log = t.base().join("replicad.log");
    let mut child = Command::new(bin())
        .arg(t.src())
        .arg(t.dst())
        .args(["--interval", "1h", "--log-file"])
        .arg(&log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped()) // never read: 3,000 lines overflow the 64 KiB pipe
        .spawn()
        .unwrap();
    let first_pass = || fs::read_to_string(&log).unwrap_or_default().contains(PASS_COMPLETE);
    assert!(wait_until(SHOW, first_pass), "no first pass in the log file");
    let asked = Instant::now();
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let mut status = None;
    wait_until(Duration::from_secs(10), || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    let _ = child.kill();
    let took = asked.elapsed();
    assert_eq!(status.and_then(|s| s.code()), Some(0), "SIGTERM was not obeyed ({took:?})");
    assert!(took < Duration::from_secs(5), "took {took:?} to stop");
    let text = fs::read_to_string(&log).unwrap();
    assert!(text.contains("stopped"), "the log file was not flushed at the end:\n{text}");
}

// ---- Stopping --once ------------------------------------------------------------------------

#[test]
fn once_stops_on_sigterm_and_sigint_without_leaving_a_temporary_file() {
    for signal in [rustix::process::Signal::TERM, rustix::process::Signal::INT] {
        let t = Tree::new();
        let block: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251 + 1) as u8).collect();
        let mut big = Vec::with_capacity(600 << 20);
        for _ in 0..600 {
            big.extend_from_slice(&block);
        }
        t.file("big", &big);
        drop(big);
        let mut child = Command::new(bin())
            .arg("--once")
            .arg(t.src())
            .arg(t.dst())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = rustix::process::Pid::from_child(&child);
        let mut in_flight = false;
        wait_until(Duration::from_secs(30), || {
            in_flight = !temp_leftovers(t.dst()).is_empty();
            if in_flight {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::STOP);
            }
            in_flight || child.try_wait().ok().flatten().is_some()
        });
        assert!(in_flight && !temp_leftovers(t.dst()).is_empty(), "copy never caught in flight");
        rustix::process::kill_process(pid, signal).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::CONT).unwrap();
        let mut status = None;
        wait_until(Duration::from_secs(10), || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        let _ = child.kill();
        assert_eq!(status.and_then(|s| s.code()), Some(20), "{signal:?}: exit status");
        assert_eq!(temp_leftovers(t.dst()), Vec::<std::path::PathBuf>::new(), "{signal:?}");
        assert!(!t.replica().exists("big"), "{signal:?}: a partial copy went live");
    }
}

// ---- Limits -----------------------------------------------------------------------------------

#[test]
fn too_many_jobs_for_the_process_limit_is_a_clear_error_not_a_panic() {
    // See: issue "Trust (2/3)" item 2 (exit 101 from std::thread::scope)
    let t = Tree::new();
    t.file("a", b"a");
    t.give_to(NOBODY, NOBODY);
    // RLIMIT_NPROC counts the user's processes and threads; root is exempt, so as nobody.
    let mut cmd = wrapper("prlimit");
    cmd.args(["--nproc=40", "--", "setpriv"])
        .args([format!("--reuid={NOBODY}"), format!("--regid={NOBODY}"), "--clear-groups".into()])
        .arg(bin())
        .args(["--once", "-j", "200"])
        .arg(t.src())
        .arg(t.dst());
    let run = Run::of(&mut cmd);
    run.assert_code(1);
    assert!(run.stderr.contains("--jobs"), "the error names the way out:\n{run}");
}

// ---- Events racing on one missing directory --------------------------------------------------

#[test]
fn sibling_events_under_a_missing_replica_directory_do_not_race() {
    // See: issue "Trust (2/3)" item 9
    let t = Tree::new();
    for d in 0..30 {
        t.file(format!("d{d}/a"), b"a").file(format!("d{d}/b"), b"b");
    }
    let mut svc = t.spawn(&["--interval", "1h", "--debounce", "20ms"]);
    svc.wait_first_pass();
    // REPLICA loses the directories (no event: REPLICA is not watched); then SOURCE
    // changes two files in each, so two works find the same directory missing at once.
    for d in 0..30 {
        fs::remove_dir_all(t.dst().join(format!("d{d}"))).unwrap();
    }
    for d in 0..30 {
        t.file(format!("d{d}/a"), b"a2").file(format!("d{d}/b"), b"b2");
    }
    assert!(
        wait_until(SHOW, || compare(t.src(), t.dst()).is_ok()),
        "did not converge; log:\n{}",
        svc.log()
    );
    assert_same(t.src(), t.dst());
    let errors: Vec<String> =
        svc.log().lines().filter(|l| l.contains("ERROR")).map(String::from).collect();
    assert!(errors.is_empty(), "sibling works raced:\n{}", errors.join("\n"));
}

// ---- SOURCE changing under a pass -----------------------------------------------------------

#[test]
fn entries_vanishing_under_a_pass_are_warnings_with_exit_24_never_errors() {
    // See: issue "Trust (3/3)" item 3 (rsync: "file has vanished", exit 24)
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let t = Tree::new();
    for d in 0..20 {
        for f in 0..50 {
            t.file(format!("d{d}/f{f}"), vec![b'x'; 4096]);
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let (src, stop) = (t.src().to_path_buf(), stop.clone());
        std::thread::spawn(move || {
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) {
                round += 1;
                for d in 0..20 {
                    for f in 0..50 {
                        let p = src.join(format!("d{d}/f{f}"));
                        // Remove and put back: listed names keep vanishing and returning.
                        let _ = fs::remove_file(&p);
                        if round.is_multiple_of(2) {
                            let _ = fs::write(&p, b"back");
                        }
                    }
                    if round.is_multiple_of(3) {
                        let _ = fs::remove_dir_all(src.join(format!("d{d}")));
                        let _ = fs::create_dir(src.join(format!("d{d}")));
                    }
                }
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    let (mut runs, mut vanished_runs) = (0, 0);
    while Instant::now() < deadline && (runs < 10 || vanished_runs == 0) {
        let run = t.once(&["--allow-empty-source"]);
        runs += 1;
        assert!(matches!(run.code, Some(0) | Some(24)), "run {runs}: a race was an error:\n{run}");
        assert!(run.lines_with("ERROR").is_empty(), "run {runs}: ERROR lines:\n{run}");
        if run.code == Some(24) {
            vanished_runs += 1;
            assert!(!run.lines_with("source changed under the pass").is_empty(), "{run}");
        }
    }
    stop.store(true, Ordering::Relaxed);
    churn.join().unwrap();
    assert!(
        vanished_runs > 0,
        "no run met a vanishing entry in {runs} runs: the test proved nothing"
    );
    let last = t.once(&["--allow-empty-source"]);
    last.assert_code(0);
    assert_same(t.src(), t.dst());
}

// ---- Action lines only after success --------------------------------------------------------

/// `chattr -i` on drop, so a failing test still leaves a removable temp dir.
struct Immutable(std::path::PathBuf);

impl Immutable {
    fn set(path: std::path::PathBuf) -> Immutable {
        let ok = Command::new("chattr").arg("+i").arg(&path).status();
        assert!(ok.is_ok_and(|s| s.success()), "chattr +i (e2fsprogs, ext4) is needed here");
        Immutable(path)
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

#[test]
fn attrs_that_fail_are_an_error_never_an_action_line() {
    // See: issue "Trust (3/3)" item 5
    let t = Tree::new();
    t.file("locked", b"same").chmod("locked", 0o640).mtime("locked", 1_600_000_000, 0);
    t.file("free", b"same").chmod("free", 0o640).mtime("free", 1_600_000_000, 0);
    t.once(&[]).assert_code(0);
    t.chmod("locked", 0o600).chmod("free", 0o600);
    let _guard = Immutable::set(t.dst().join("locked"));
    let run = t.once(&[]);
    run.assert_code(23);
    assert!(run.has_action("attrs", "free"), "{run}");
    assert!(!run.has_action("attrs", "locked"), "a failed chmod was logged as done:\n{run}");
    assert!(!run.lines_with("op=attrs path=locked").is_empty(), "the error names it:\n{run}");
    assert!(run.stderr.contains("attrs=1 "), "only the real fix is counted:\n{run}");
}

#[test]
fn a_log_file_that_stops_taking_lines_stalls_nothing_and_fails_the_run() {
    // See: adversarial review of "Trust (2/3)": a FIFO log whose reader stopped reading
    // froze every thread, and no SIGTERM got through.
    let t = Tree::new();
    // 70,000 action lines: more than the log file's buffer holds once its reader hangs.
    for d in 0..70 {
        fs::create_dir(t.join(format!("d{d:02}"))).unwrap();
        for f in 0..1000 {
            fs::write(t.join(format!("d{d:02}/f{f}")), b"").unwrap();
        }
    }
    Dir::at(t.base()).fifo("log.fifo");
    let fifo = t.base().join("log.fifo");
    // A log shipper that opened the FIFO and then hangs: the read end stays open, unread.
    // (Read-write, so its open does not wait for a writer; `ready` says it is open, so
    // replicad never meets a FIFO nobody has opened yet.)
    let ready = t.base().join("reader-ready");
    let mut reader = Command::new("sh")
        .arg("-c")
        .arg(r#"exec 3<> "$1"; : > "$2"; sleep 120"#)
        .arg("sh")
        .arg(&fifo)
        .arg(&ready)
        .spawn()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || ready.exists()),
        "the FIFO reader never started"
    );
    let mut svc = t.spawn(&["--interval", "1h", "--log-file", fifo.to_str().unwrap()]);
    svc.wait_first_pass();
    let asked = Instant::now();
    svc.terminate();
    let status = svc.wait_exit(Duration::from_secs(20));
    let took = asked.elapsed();
    let _ = reader.kill();
    let _ = reader.wait();
    let log = svc.log();
    assert!(took < Duration::from_secs(5), "took {took:?} to stop; log tail:\n{}", tail(&log));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(1),
        "lost lines must fail the run:\n{}",
        tail(&log)
    );
    assert!(log.contains("the log file stopped taking lines"), "{}", tail(&log));
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

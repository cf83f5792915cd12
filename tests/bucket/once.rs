//! `replicad SOURCE s3://BUCKET/PREFIX --once` end to end: the binary, a real Garage, the
//! bucket oracle and a real rclone restore. Every file type, a second pass that does
//! nothing, excludes, a dry run, strays, repairs of objects changed behind replicad's back,
//! `--checksum`, the `.rclonelink` collision, and the refusals (start-up failures, the
//! deletion guard, the live service). Non-UTF-8 and 255-byte names, setuid, owners and ns
//! mtimes are in `rich_tree`.

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::Duration;

use replicad::bucket::Manifest;
use replicad::bucket::meta::ObjectMeta;

use super::roundtrip::rich_tree;
use super::{TestBucket, connect, multipart_uploads};
use crate::support::bucket::{
    assert_bucket_mirrors, compare_restored, rclone_restore, read_bucket,
};
use crate::support::garage::{BUCKET, Garage};
use crate::support::{Tree, as_nobody, bin, replicad, wait_until};

/// `replicad SRC s3://BUCKET/PREFIX --once ARGS…` with Garage's environment.
fn once(g: &Garage, src: &Path, prefix: &str, args: &[&str]) -> Output {
    once_env(g, src, &format!("s3://{BUCKET}/{prefix}"), args, &[])
}

fn once_env(g: &Garage, src: &Path, url: &str, args: &[&str], env: &[(&str, String)]) -> Output {
    let mut cmd = replicad();
    cmd.envs(g.env()).envs(env.iter().map(|(k, v)| (k, v)));
    cmd.arg(src).arg(url).args(args);
    if !args.contains(&"--dry-run") {
        cmd.arg("--once");
    }
    cmd.output().expect("run replicad")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn assert_status(o: &Output, code: i32) {
    assert_eq!(o.status.code(), Some(code), "exit status\n{}", stderr(o));
}

/// The actions a run logged (`action=…` fields), in order.
fn actions(o: &Output) -> Vec<String> {
    stderr(o)
        .lines()
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("action=")))
        .map(|a| a.trim_matches('"').to_owned())
        .collect()
}

fn put_raw(b: &TestBucket, key: &str, body: &[u8], meta: Option<&ObjectMeta>) {
    let meta = meta.map(ObjectMeta::to_user_metadata).unwrap_or_default();
    b.run(b.inner().client().put(key, body.to_vec(), meta)).expect("put behind replicad's back");
}

fn keys(b: &TestBucket) -> Vec<String> {
    read_bucket(&b.settings, &b.url).into_keys().collect()
}

#[test]
fn bucket_once_mirrors_every_type_then_does_nothing() {
    let Some(g) = Garage::start("bucket_once_mirrors_every_type_then_does_nothing") else {
        return;
    };
    let t = rich_tree();
    t.socket("special/sock").chardev("special/null", 1, 3);
    let first = once(&g, t.src(), "m", &[]);
    assert_status(&first, 0);
    let err = stderr(&first);
    for special in ["special/fifo", "special/sock", "special/null"] {
        let warned: Vec<&str> = err.lines().filter(|l| l.contains(special)).collect();
        assert_eq!(warned.len(), 1, "one warning for {special}\n{err}");
        assert!(warned[0].contains("WARN") && warned[0].contains("skipped"), "{err}");
    }
    let b = connect(&g, "m");
    assert_bucket_mirrors(t.src(), &b.settings, &b.url);
    assert!(keys(&b).iter().any(|k| k == "m/.replicad/manifest"), "the manifest is saved");

    // rclone restores it exactly, but for what it drops by design.
    let restored = t.base().join("restored");
    fs::create_dir(&restored).unwrap();
    rclone_restore(&g, BUCKET, &b.url.prefix, &restored);
    let without_fifo = t.base().join("src-without-fifo");
    let cp = std::process::Command::new("cp").arg("-a").arg(t.src()).arg(&without_fifo).status();
    assert!(cp.unwrap().success());
    for special in ["special/fifo", "special/sock", "special/null"] {
        fs::remove_file(without_fifo.join(special)).unwrap();
    }
    if let Err(diff) = compare_restored(&without_fifo, &restored) {
        panic!("rclone's restore of replicad's bucket differs from SOURCE\n{diff}");
    }

    // Nothing changed: nothing is written, and the manifest answers for every object.
    let second = once(&g, t.src(), "m", &["-v"]);
    assert_status(&second, 0);
    assert_eq!(actions(&second), Vec::<String>::new(), "{}", stderr(&second));
    assert!(stderr(&second).contains("heads=0"), "no HEAD on a no-op pass\n{}", stderr(&second));
    assert_bucket_mirrors(t.src(), &b.settings, &b.url);
}

#[test]
fn bucket_once_repairs_what_changed_behind_its_back() {
    let Some(g) = Garage::start("bucket_once_repairs_what_changed_behind_its_back") else {
        return;
    };
    let t = Tree::new();
    t.file("a.txt", b"alpha").file("d/b.txt", b"bravo").file("d/c.txt", b"charlie");
    t.dir("empty").symlink("l", "a.txt").chmod("d", 0o750);
    assert_status(&once(&g, t.src(), "r", &[]), 0);
    let b = connect(&g, "r");
    // Edited (other bytes, no metadata), deleted (a file and a marker), metadata changed,
    // extra objects (a mirrored-looking one and keys no path maps to).
    put_raw(&b, "r/a.txt", b"tampered", None);
    b.remove("r/d/b.txt", &mut Manifest::default()).unwrap();
    b.remove("r/empty/", &mut Manifest::default()).unwrap();
    let mut meta = super::meta_of(&t.src().join("d/c.txt"));
    meta.mode = 0o100777;
    put_raw(&b, "r/d/c.txt", b"charlie", Some(&meta));
    put_raw(&b, "r/extra.txt", b"not in SOURCE", None);
    put_raw(&b, "r/d/sub/deeper", b"not in SOURCE either", None);
    put_raw(&b, "r/odd//key", b"foreign", None);
    let repair = once(&g, t.src(), "r", &[]);
    assert_status(&repair, 0);
    assert_bucket_mirrors(t.src(), &b.settings, &b.url);
    let err = stderr(&repair);
    assert!(err.contains("kind=stray") && err.contains("odd//key"), "{err}");
    // And the next pass finds nothing to do.
    let again = once(&g, t.src(), "r", &[]);
    assert_status(&again, 0);
    assert_eq!(actions(&again), Vec::<String>::new(), "{}", stderr(&again));
}

#[test]
fn bucket_once_follows_type_changes_in_one_pass() {
    let Some(g) = Garage::start("bucket_once_follows_type_changes_in_one_pass") else { return };
    let t = Tree::new();
    t.file("file-to-link", b"f").symlink("link-to-file", "x").file("file-to-dir", b"f");
    t.file("dir-to-file/inner", b"i").symlink("link-to-dir", "y").file("keep", b"k");
    assert_status(&once(&g, t.src(), "t", &[]), 0);
    t.remove("file-to-link").symlink("file-to-link", "now a link");
    t.remove("link-to-file").file("link-to-file", b"now a file");
    t.remove("file-to-dir").file("file-to-dir/inside", b"now a dir");
    t.remove("dir-to-file").file("dir-to-file", b"now a file");
    t.remove("link-to-dir").dir("link-to-dir");
    let changed = once(&g, t.src(), "t", &[]);
    assert_status(&changed, 0);
    let b = connect(&g, "t");
    // Exactly SOURCE's objects: the old kind's key of each name is gone in the same pass.
    assert_bucket_mirrors(t.src(), &b.settings, &b.url);
    let again = once(&g, t.src(), "t", &[]);
    assert_status(&again, 0);
    assert_eq!(actions(&again), Vec::<String>::new(), "{}", stderr(&again));
}

#[test]
fn bucket_once_checksum_compares_md5() {
    let Some(g) = Garage::start("bucket_once_checksum_compares_md5") else { return };
    let t = Tree::new();
    t.file("same-size.txt", b"original");
    assert_status(&once(&g, t.src(), "c", &[]), 0);
    let b = connect(&g, "c");
    // Same size and metadata, other bytes: only --checksum can tell.
    let meta = super::meta_of(&t.src().join("same-size.txt"));
    put_raw(&b, "c/same-size.txt", b"ORIGINAL", Some(&meta));
    let quick = once(&g, t.src(), "c", &[]);
    assert_status(&quick, 0);
    assert_eq!(actions(&quick), Vec::<String>::new(), "{}", stderr(&quick));
    let checked = once(&g, t.src(), "c", &["--checksum"]);
    assert_status(&checked, 0);
    assert_eq!(actions(&checked), vec!["update"], "{}", stderr(&checked));
    assert_bucket_mirrors(t.src(), &b.settings, &b.url);
}

#[test]
fn bucket_once_excludes_and_dry_run() {
    let Some(g) = Garage::start("bucket_once_excludes_and_dry_run") else { return };
    let t = Tree::new();
    t.file("keep.txt", b"k").file("skip.log", b"s").file("cache/x", b"x").file("d/y.log", b"y");
    let b = connect(&g, "x");
    // An excluded path already in the bucket is neither mirrored nor removed; a key no
    // path maps to is a stray, which the dry run only names.
    put_raw(&b, "x/old.log", b"kept", None);
    put_raw(&b, "x/odd//key", b"stray", None);

    let dry = once(&g, t.src(), "x", &["--dry-run", "--exclude", "*.log", "--exclude", "/cache"]);
    assert_status(&dry, 0);
    assert!(actions(&dry).contains(&"copy".to_owned()), "{}", stderr(&dry));
    assert!(stderr(&dry).contains("kind=stray"), "{}", stderr(&dry));
    assert_eq!(keys(&b), vec!["x/odd//key", "x/old.log"], "a dry run writes nothing");

    let run = once(&g, t.src(), "x", &["--exclude", "*.log", "--exclude", "/cache"]);
    assert_status(&run, 0);
    let mut got = keys(&b);
    got.retain(|k| !k.starts_with("x/.replicad/"));
    assert_eq!(got, vec!["x/d/", "x/keep.txt", "x/old.log"]);
}

#[test]
fn bucket_once_refuses_a_link_suffix_collision() {
    let Some(g) = Garage::start("bucket_once_refuses_a_link_suffix_collision") else { return };
    let t = Tree::new();
    t.symlink("x", "the-target").file("x.rclonelink", b"a real file");
    let run = once(&g, t.src(), "k", &[]);
    assert_status(&run, 23);
    let err = stderr(&run);
    assert!(err.contains("cannot mirror entry") && err.contains("x.rclonelink"), "{err}");
    let b = connect(&g, "k");
    let objects = read_bucket(&b.settings, &b.url);
    assert_eq!(objects["k/x.rclonelink"].bytes, b"the-target", "the symlink's object stands");

    // A directory `y.rclonelink` beside a symlink `y`: rclone would restore both as one
    // name; whichever comes second is refused, on every pass, and nothing is overwritten.
    t.remove("x.rclonelink").symlink("y", "why").file("y.rclonelink/inside", b"i");
    for _ in 0..2 {
        let run = once(&g, t.src(), "k", &[]);
        assert_status(&run, 23);
        let err = stderr(&run);
        let refused: Vec<&str> =
            err.lines().filter(|l| l.contains("cannot mirror entry")).collect();
        assert_eq!(refused.len(), 1, "{err}");
        assert!(refused[0].contains("rclone's restore"), "{err}");
        let objects = read_bucket(&b.settings, &b.url);
        let link = objects.get("k/y.rclonelink").map(|o| o.bytes.as_slice());
        let dir = objects.contains_key("k/y.rclonelink/");
        assert!(
            (link == Some(&b"why"[..])) ^ dir,
            "exactly one of the two is stored: {:?}",
            objects.keys()
        );
    }
}

/// What is wrong, the URL, and the variables that differ from Garage's.
type Case = (&'static str, String, Vec<(&'static str, String)>);

#[test]
fn bucket_once_startup_failures_are_one_line() {
    let Some(g) = Garage::start("bucket_once_startup_failures_are_one_line") else { return };
    let t = Tree::new();
    t.file("f", b"f");
    let url = format!("s3://{BUCKET}/s");
    let cases: [Case; 3] = [
        ("wrong key", url.clone(), vec![("AWS_SECRET_ACCESS_KEY", "0".repeat(64))]),
        ("missing bucket", "s3://no-such-bucket/s".to_owned(), vec![]),
        (
            "unreachable endpoint",
            url.clone(),
            vec![("AWS_ENDPOINT_URL", "http://127.0.0.1:9".to_owned())],
        ),
    ];
    for (what, url, env) in cases {
        let out = once_env(&g, t.src(), &url, &[], &env);
        assert_status(&out, 1);
        let err = stderr(&out);
        let errors: Vec<&str> = err.lines().filter(|l| l.contains("ERROR")).collect();
        assert_eq!(errors.len(), 1, "{what}: one line\n{err}");
        assert!(errors[0].contains("replica s3://"), "{what}: {err}");
    }
    let b = connect(&g, "s");
    assert_eq!(keys(&b), Vec::<String>::new(), "nothing written");
}

#[test]
fn bucket_once_deletion_guard_refuses_an_empty_source() {
    let Some(g) = Garage::start("bucket_once_deletion_guard_refuses_an_empty_source") else {
        return;
    };
    let t = Tree::new();
    t.file("f", b"f").dir("d");
    assert_status(&once(&g, t.src(), "g", &[]), 0);
    let b = connect(&g, "g");
    let before = read_bucket(&b.settings, &b.url);
    fs::remove_file(t.src().join("f")).unwrap();
    fs::remove_dir(t.src().join("d")).unwrap();
    let refused = once(&g, t.src(), "g", &[]);
    assert_status(&refused, 1);
    assert!(stderr(&refused).contains("source is empty"), "{}", stderr(&refused));
    assert_eq!(read_bucket(&b.settings, &b.url), before, "nothing deleted");
    let allowed = once(&g, t.src(), "g", &["--allow-empty-source"]);
    assert_status(&allowed, 0);
    let mut left = keys(&b);
    left.retain(|k| !k.starts_with("g/.replicad/"));
    assert_eq!(left, Vec::<String>::new());
}

#[test]
fn bucket_once_unreadable_source_file_is_an_error_not_a_vanish() {
    let Some(g) = Garage::start("bucket_once_unreadable_source_file_is_an_error") else {
        return;
    };
    let t = Tree::new();
    t.file("readable", b"r").file("secret", b"s").chmod("secret", 0o000);
    fs::set_permissions(t.base(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let url = format!("s3://{BUCKET}/u");
    let out = as_nobody().envs(g.env()).arg("--once").arg(t.src()).arg(&url).output().unwrap();
    // 23 like locally (an entry error), not 24 (vanished): the file is there, unreadable.
    assert_status(&out, 23);
    let err = stderr(&out);
    assert!(err.contains("cannot mirror entry") && err.contains("path=secret"), "{err}");
    let b = connect(&g, "u");
    let keys = keys(&b);
    assert!(keys.contains(&"u/readable".to_owned()) && !keys.contains(&"u/secret".to_owned()));
}

/// A tree rclone uploaded (`rclone sync --metadata --links --s3-directory-markers`) is
/// adopted without uploading a file again: rclone's file and link metadata is the
/// mapping's; only directory markers (rclone writes them without mode or owner) are
/// rewritten.
#[test]
fn bucket_once_adopts_what_rclone_uploaded() {
    let Some(g) = Garage::start("bucket_once_adopts_what_rclone_uploaded") else { return };
    let t = rich_tree();
    fs::remove_file(t.src().join("special/fifo")).unwrap();
    let remote = format!("G:{BUCKET}/adopt");
    let args: Vec<&OsStr> =
        ["sync", "--metadata", "--links", "--s3-directory-markers", "--create-empty-src-dirs"]
            .iter()
            .map(OsStr::new)
            .chain([t.src().as_os_str(), OsStr::new(&remote)])
            .collect();
    let out = g.rclone(&args);
    assert!(out.status.success(), "rclone sync: {}", String::from_utf8_lossy(&out.stderr));
    let run = once(&g, t.src(), "adopt", &[]);
    assert_status(&run, 0);
    let acts = actions(&run);
    assert!(acts.iter().all(|a| a == "attrs"), "only directory markers change: {acts:?}");
    assert!(!acts.is_empty(), "rclone's markers carry no mode: they are rewritten");
    let b = connect(&g, "adopt");
    assert_bucket_mirrors(t.src(), &b.settings, &b.url);
}

/// What rclone lists under `prefix`, as JSON.
fn rclone_listing(g: &Garage, prefix: &str) -> String {
    let out = g.rclone(&[
        OsStr::new("lsjson"),
        OsStr::new("-R"),
        OsStr::new("--files-only"),
        OsStr::new(&format!("G:{BUCKET}/{prefix}")),
    ]);
    assert!(out.status.success(), "rclone lsjson: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn bucket_once_never_takes_a_cr_name_for_its_lf_twin() {
    // S3's XML listing hands `a\rb` back as `a\nb`. A key LIST shows twice — here because
    // rclone stored `a\rb` beside `a\nb`, and SOURCE holds only `a\nb` — is never removed
    // as a stray by a clean pass: it names a real object. And replicad refuses to map a
    // name with a carriage return (an entry error).
    let Some(g) = Garage::start("bucket_once_never_takes_a_cr_name_for_its_lf_twin") else {
        return;
    };
    let theirs = Tree::new();
    theirs.file("a\rb", b"CR-file").file("a\nb", b"LF-file");
    let copied = g.rclone(&[
        OsStr::new("copy"),
        theirs.src().as_os_str(),
        OsStr::new(&format!("G:{BUCKET}/crlf")),
    ]);
    assert!(copied.status.success(), "rclone copy: {}", String::from_utf8_lossy(&copied.stderr));
    let t = Tree::new();
    t.file("a\nb", b"LF-file").file("other", b"o");
    for pass in 1..=3 {
        let out = once(&g, t.src(), "crlf", &[]);
        assert_status(&out, 0);
        // rclone shows both keys as `a␊b` too (its listing is XML as well): two objects.
        let listing = rclone_listing(&g, "crlf");
        let twins = listing.matches(r#""Name":"a␊b""#).count();
        assert_eq!(twins, 2, "pass {pass}: an object of the pair is gone\n{listing}");
        assert!(!stderr(&out).contains("kind=stray"), "pass {pass}:\n{}", stderr(&out));
    }
    t.file("a\rc", b"CR-file");
    let refused = once(&g, t.src(), "crlf", &[]);
    assert_status(&refused, 23);
    assert!(stderr(&refused).contains("carriage return"), "{}", stderr(&refused));
}

#[test]
fn bucket_once_keeps_an_mtime_beyond_2262_and_its_manifest() {
    // Nanoseconds past 2262 do not fit an i64: such a file was uploaded again on every
    // pass, and its manifest line threw the whole manifest away.
    let Some(g) = Garage::start("bucket_once_keeps_an_mtime_beyond_2262_and_its_manifest") else {
        return;
    };
    let t = Tree::new();
    t.file("now", b"n").file("future", b"f");
    crate::support::set_mtime(&t.src().join("future"), 10_413_792_000, 0); // 2300-01-01
    assert_status(&once(&g, t.src(), "fut", &[]), 0);
    let second = once(&g, t.src(), "fut", &["-v"]);
    assert_status(&second, 0);
    assert_eq!(actions(&second), Vec::<String>::new(), "not a no-op:\n{}", stderr(&second));
    assert!(
        stderr(&second).contains("heads=0"),
        "the manifest was not trusted:\n{}",
        stderr(&second)
    );
}

/// A loopback TCP proxy to `target` whose client-to-server direction runs at `rate` bytes/s
/// (a slow uplink). Runs until the test process ends.
fn slow_proxy(target: u16, rate: usize) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
    let port = listener.local_addr().expect("addr").port();
    thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else { continue };
            let (mut c2, mut s2) =
                (client.try_clone().expect("clone"), server.try_clone().expect("clone"));
            let (mut c, mut s) = (client, server);
            thread::spawn(move || {
                let mut buf = vec![0u8; rate / 20];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    thread::sleep(Duration::from_secs_f64(n as f64 / rate as f64));
                }
                let _ = s.shutdown(std::net::Shutdown::Write);
            });
            thread::spawn(move || {
                let _ = std::io::copy(&mut s2, &mut c2);
                let _ = c2.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    port
}

/// SIGTERM while a part is in flight on a slow link (1 MiB/s): the part write races the
/// token and the upload is aborted within the service's stop time — exit without a panic
/// and no multipart upload left (found by an adversarial review: the pass used to wait
/// for the part, the service gave up after 2 s and the abort never ran).
#[test]
fn bucket_once_sigterm_on_a_slow_link_leaves_no_multipart_upload() {
    let Some(g) = Garage::start("bucket_once_sigterm_on_a_slow_link") else { return };
    let t = Tree::new();
    let big: Vec<u8> =
        (0..40u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    t.file("big", &big);
    let s3_port: u16 = g.endpoint().rsplit(':').next().and_then(|p| p.parse().ok()).expect("port");
    let proxy = slow_proxy(s3_port, 1 << 20);
    let mut cmd = Command::new(bin());
    cmd.envs(g.env())
        .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{proxy}"))
        .arg(t.src())
        .arg(format!("s3://{BUCKET}/slow"))
        .arg("--once")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn replicad");
    let started = wait_until(Duration::from_secs(60), || multipart_uploads(&g, BUCKET) == 1);
    assert!(started, "the multipart upload never started");
    let term = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    assert!(term.is_ok_and(|s| s.success()));
    let exited =
        wait_until(Duration::from_secs(120), || child.try_wait().is_ok_and(|s| s.is_some()));
    assert!(exited, "replicad did not stop after SIGTERM");
    let out = child.wait_with_output().expect("output");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "no panic on shutdown\n{err}");
    assert_eq!(multipart_uploads(&g, BUCKET), 0, "the upload was aborted\n{err}");
}

//! The bucket module's primitives against a real Garage: the start-up check's verdicts,
//! put/list/head/delete, the quick check, multipart (200 MiB), abort on cancellation and on
//! a changing file (nothing left in ListMultipartUploads), server-side copy, and names that
//! S3 keys hold only through rclone's encoding.

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use replicad::bucket::meta::{S_IFDIR, S_IFLNK};
use replicad::bucket::{Bucket, Manifest};
use replicad::bucket::{
    BucketUrl, Known, ObjectKind, Retries, S3Settings, StartupError, StoreError, UploadPolicy,
};
use replicad::relpath::RelPath;
use tokio_util::sync::CancellationToken;

use super::{connect, connect_with, meta_of, multipart_uploads, open_source};
use crate::support::garage::{BUCKET, Garage};
use crate::support::{Tree, wait_until};

fn startup(g: &Garage, url: &str, env: &[(&str, String)]) -> Result<(), StartupError> {
    let url = BucketUrl::parse(url.as_ref()).unwrap().unwrap();
    let lookup = |k: &str| {
        env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()).or_else(|| g.lookup()(k))
    };
    let settings = S3Settings::from_env(lookup).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(Bucket::connect(&url, &settings, Retries::default(), UploadPolicy::default()))
        .map(|_| ())
}

#[test]
fn bucket_startup_check_names_each_failure() {
    let Some(g) = Garage::start("bucket_startup_check_names_each_failure") else { return };
    startup(&g, &format!("s3://{BUCKET}/p"), &[]).expect("the default key and bucket work");

    let wrong_secret = [("AWS_SECRET_ACCESS_KEY", "0".repeat(64))];
    let e = startup(&g, &format!("s3://{BUCKET}"), &wrong_secret).unwrap_err();
    assert!(matches!(e, StartupError::WrongCredentials { .. }), "{e:?}");

    let unknown_key = [("AWS_ACCESS_KEY_ID", format!("GK{}", "1".repeat(24)))];
    let e = startup(&g, &format!("s3://{BUCKET}"), &unknown_key).unwrap_err();
    assert!(matches!(e, StartupError::WrongCredentials { .. }), "{e:?}");

    let (id, secret) = g.create_key("no-rights");
    let e = startup(
        &g,
        &format!("s3://{BUCKET}"),
        &[("AWS_ACCESS_KEY_ID", id), ("AWS_SECRET_ACCESS_KEY", secret)],
    )
    .unwrap_err();
    assert!(matches!(e, StartupError::AccessDenied { .. }), "{e:?}");

    let e = startup(&g, "s3://no-such-bucket/x", &[]).unwrap_err();
    assert!(matches!(e, StartupError::NoSuchBucket { .. }), "{e:?}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let e = startup(
        &g,
        &format!("s3://{BUCKET}"),
        &[("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{closed}"))],
    )
    .unwrap_err();
    assert!(matches!(e, StartupError::Unreachable { .. }), "{e:?}");

    // The verdict is one line a person can act on.
    let line = e.to_string();
    assert!(!line.contains('\n') && line.contains("cannot reach"), "{line}");
}

#[test]
fn bucket_put_list_head_delete_and_quick_check() {
    let Some(g) = Garage::start("bucket_put_list_head_delete_and_quick_check") else { return };
    let t = Tree::new();
    t.file("d/f", b"content").chmod("d/f", 0o640).mtime("d/f", 1_700_000_000, 123_456_789);
    t.symlink("l", "d/f").dir("e").chmod("e", 0o700);
    let b = connect(&g, "quick");
    let manifest = super::mirror_tree(&b, t.src());
    assert_eq!(manifest.len(), 4, "every object bound after the pass: {manifest:?}");

    let listing = b.list().unwrap();
    let kinds: Vec<_> =
        listing.objects.iter().map(|o| (o.rel.to_string(), o.kind, o.canonical)).collect();
    assert_eq!(
        kinds,
        [
            ("d".into(), ObjectKind::Dir, true),
            ("d/f".into(), ObjectKind::File, true),
            ("e".into(), ObjectKind::Dir, true),
            ("l".into(), ObjectKind::Symlink, true)
        ]
    );
    assert!(listing.foreign.is_empty());
    assert!(listing.raw.iter().any(|l| l.key == "quick/.replicad/manifest"), "manifest saved");
    let f = &listing.objects[1].listed;
    assert_eq!(f.etag, "9a0364b9e99bb480dd25e1f0284c8555", "single-part ETag is the MD5");

    // A no-op pass: every attribute comes from the manifest, confirmed by LIST alone.
    let mut m = b.load_manifest().unwrap();
    for o in &listing.objects {
        let known = b.attrs(&o.listed, &mut m).unwrap();
        assert!(matches!(known, Known::Remembered(_)), "{}: {known:?}", o.rel);
    }
    let Known::Remembered(meta) = b.attrs(f, &mut m).unwrap() else { unreachable!() };
    assert_eq!(meta, meta_of(&t.src().join("d/f")));
    let head = b.head("quick/e/").unwrap();
    assert_eq!(head.user_metadata["mode"], format!("{:o}", S_IFDIR | 0o700));
    assert_eq!(
        b.head("quick/l.rclonelink").unwrap().user_metadata["mode"],
        format!("{:o}", S_IFLNK | 0o777)
    );

    // Behind replicad's back: same bytes, other metadata. LIST shows a new Last-Modified,
    // so the record is not trusted and HEAD sees the change.
    let mut other = meta.clone();
    other.mode = 0o100600;
    b.run(b.inner().client().put("quick/d/f", b"content".to_vec(), other.to_user_metadata()))
        .unwrap();
    let relisted = b.list().unwrap();
    let f2 = &relisted.objects[1].listed;
    assert_eq!((f2.etag.as_str(), f2.size), (f.etag.as_str(), f.size), "same bytes, same ETag");
    assert_ne!(f2.last_modified_ns, f.last_modified_ns, "a rewrite moves Last-Modified");
    match b.attrs(f2, &mut m).unwrap() {
        Known::Headed(seen) => assert_eq!(seen.mode, 0o100600),
        known => panic!("a rewritten object must be HEADed again, got {known:?}"),
    }
    // ...and from then on it is remembered again, with the new metadata.
    assert!(matches!(b.attrs(f2, &mut m).unwrap(), Known::Remembered(x) if x.mode == 0o100600));

    // An object without replicad's metadata is foreign.
    b.run(b.inner().client().put("quick/bare", b"x".to_vec(), Default::default())).unwrap();
    let bare = b.list().unwrap().objects.into_iter().find(|o| o.rel.to_string() == "bare").unwrap();
    assert_eq!(b.attrs(&bare.listed, &mut m).unwrap(), Known::Foreign);

    // Delete: gone from LIST and from the manifest at the end of the pass.
    b.remove("quick/d/f", &mut m).unwrap();
    assert!(b.head("quick/d/f").unwrap_err().is_not_found());
    b.finish_pass(&mut m).unwrap();
    assert!(b.list().unwrap().objects.iter().all(|o| o.rel.to_string() != "d/f"));
}

/// A file of `mib` MiB with content that depends on the offset (so a misplaced part shows).
fn big_file(t: &Tree, name: &str, mib: usize) -> std::path::PathBuf {
    let path = t.src().join(name);
    let mut f = fs::File::create(&path).unwrap();
    let mut block = vec![0u8; 1 << 20];
    for i in 0..mib {
        for (j, b) in block.iter_mut().enumerate() {
            *b = ((i * 7 + j / 4096) % 251) as u8;
        }
        f.write_all(&block).unwrap();
    }
    path
}

#[test]
fn bucket_multipart_200_mib_completes_with_md5chksum() {
    let Some(g) = Garage::start("bucket_multipart_200_mib_completes_with_md5chksum") else {
        return;
    };
    let t = Tree::new();
    let path = big_file(&t, "big.bin", 200);
    let b = connect(&g, "mp");
    let mut m = Manifest::default();
    let started = std::time::Instant::now();
    let up =
        b.put_file("mp/big.bin", open_source(&path), &mut m, &CancellationToken::new()).unwrap();
    eprintln!("200 MiB multipart upload: {:.2?}, {} parts", started.elapsed(), up.parts);
    assert_eq!(up.size, 200 << 20);
    assert_eq!(up.parts, 25, "8 MiB parts");
    assert!(up.etag.ends_with("-25"), "a multipart ETag: {}", up.etag);
    let head = b.head("mp/big.bin").unwrap();
    assert_eq!(head.size, 200 << 20);
    let md5 = std::process::Command::new("md5sum").arg(&path).output().unwrap();
    let hex = String::from_utf8_lossy(&md5.stdout)[..32].to_owned();
    let meta = replicad::bucket::ObjectMeta::from_user_metadata(
        head.user_metadata.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    )
    .unwrap();
    assert_eq!(replicad::checksum::hex(&meta.md5.unwrap()), hex, "md5chksum is the content's MD5");
    assert_eq!(replicad::bucket::etag::content_md5(&head.etag, Some(&meta)), meta.md5);
    // The bytes are the file's.
    let back = b.run(b.inner().client().get("mp/big.bin")).unwrap();
    assert!(back == fs::read(&path).unwrap(), "downloaded bytes differ");
    assert_eq!(multipart_uploads(&g, BUCKET), 0);
}

#[test]
fn bucket_multipart_cancelled_is_aborted_leaving_nothing() {
    let Some(g) = Garage::start("bucket_multipart_cancelled_is_aborted_leaving_nothing") else {
        return;
    };
    let t = Tree::new();
    let path = big_file(&t, "big.bin", 200);
    // One part in flight at a time, so the upload lasts long enough to be seen.
    let policy = UploadPolicy { concurrency: 1, ..UploadPolicy::default() };
    let b = Arc::new(connect_with(&g, "cancel", policy));
    let cancel = CancellationToken::new();
    let uploader = {
        let (b, cancel, file) = (Arc::clone(&b), cancel.clone(), open_source(&path));
        std::thread::spawn(move || {
            b.put_file("cancel/big.bin", file, &mut Manifest::default(), &cancel)
        })
    };
    let seen = wait_until(Duration::from_secs(60), || {
        uploader.is_finished() || multipart_uploads(&g, BUCKET) == 1
    });
    assert!(
        seen && !uploader.is_finished(),
        "the multipart upload never showed in ListMultipartUploads"
    );
    cancel.cancel();
    let result = uploader.join().unwrap();
    assert!(matches!(result, Err(StoreError::Cancelled { .. })), "{result:?}");
    assert_eq!(multipart_uploads(&g, BUCKET), 0, "the upload was aborted");
    assert!(b.head("cancel/big.bin").unwrap_err().is_not_found(), "no object appeared");
}

#[test]
fn bucket_file_changing_during_upload_is_never_published() {
    let Some(g) = Garage::start("bucket_file_changing_during_upload_is_never_published") else {
        return;
    };
    let t = Tree::new();
    let path = big_file(&t, "moving.bin", 40);
    let b = connect_with(&g, "moving", UploadPolicy { concurrency: 1, ..UploadPolicy::default() });
    let stop = Arc::new(AtomicBool::new(false));
    let toucher = {
        let (stop, path) = (Arc::clone(&stop), path.clone());
        std::thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                crate::support::set_mtime(&path, 1_600_000_000 + i64::from(n), 0);
                std::thread::yield_now();
            }
        })
    };
    let result = b.put_file(
        "moving/m.bin",
        open_source(&path),
        &mut Manifest::default(),
        &CancellationToken::new(),
    );
    stop.store(true, Ordering::Relaxed);
    toucher.join().unwrap();
    assert!(matches!(result, Err(StoreError::KeptChanging { attempts: 3, .. })), "{result:?}");
    assert!(b.head("moving/m.bin").unwrap_err().is_not_found(), "nothing was published");
    assert_eq!(multipart_uploads(&g, BUCKET), 0, "every attempt was aborted");
}

#[test]
fn bucket_server_side_copy_keeps_bytes_and_metadata() {
    let Some(g) = Garage::start("bucket_server_side_copy_keeps_bytes_and_metadata") else { return };
    let t = Tree::new();
    t.file("a", b"abc").mtime("a", 1_650_000_000, 1);
    let b = connect(&g, "copy");
    let mut m = Manifest::default();
    b.put_file("copy/a", open_source(&t.src().join("a")), &mut m, &CancellationToken::new())
        .unwrap();
    let etag = b.copy("copy/a", "copy/b").unwrap();
    let (ha, hb) = (b.head("copy/a").unwrap(), b.head("copy/b").unwrap());
    assert_eq!((ha.etag.as_str(), ha.size), (etag.as_str(), hb.size));
    assert_eq!(ha.user_metadata, hb.user_metadata);
    assert_eq!(b.run(b.inner().client().get("copy/b")).unwrap(), b"abc");
}

/// Names an S3 key holds only through rclone's encoding, or that opendal's front door
/// would have changed: each goes in as a file and a directory and lists back as itself.
#[test]
fn bucket_names_survive_real_keys() {
    let Some(g) = Garage::start("bucket_names_survive_real_keys") else { return };
    let names: Vec<Vec<u8>> = vec![
        b"plain".to_vec(),
        b"\xff\xfe non-utf8 \xc3(".to_vec(),
        vec![b'n'; 255],
        "ü".repeat(127).into_bytes(),
        b"ctl\x01\x1f\x7f".to_vec(),
        b"trailing space ".to_vec(),
        b" leading space".to_vec(),
        b"tab\tnew\nline".to_vec(),
        "‛‛quoted".as_bytes().to_vec(),
        "．".as_bytes().to_vec(),
        "．．".as_bytes().to_vec(),
        "a／b".as_bytes().to_vec(),
        "␀".as_bytes().to_vec(),
        "\u{fffd}".as_bytes().to_vec(),
        b"%41%2F+&?#=".to_vec(),
    ];
    let t = Tree::new();
    for n in &names {
        let name = OsStr::from_bytes(n);
        t.file(std::path::Path::new("f").join(name), n).dir(std::path::Path::new("d").join(name));
    }
    let b = connect(&g, "names");
    super::mirror_tree(&b, t.src());
    let listing = b.list().unwrap();
    assert!(listing.foreign.is_empty(), "{:?}", listing.foreign);
    for n in &names {
        let name = OsStr::from_bytes(n);
        for (dir, kind) in [("f", ObjectKind::File), ("d", ObjectKind::Dir)] {
            let rel = RelPath::new(&std::path::Path::new(dir).join(name)).unwrap();
            let found = listing.objects.iter().find(|o| o.rel == rel && o.kind == kind);
            assert!(
                found.is_some_and(|o| o.canonical),
                "{rel} ({kind:?}) did not list back as itself"
            );
        }
    }
    crate::support::bucket::assert_bucket_mirrors(t.src(), &b.settings, &b.url);
}

#[test]
fn bucket_list_reads_every_page() {
    let Some(g) = Garage::start("bucket_list_reads_every_page") else { return };
    let b = connect(&g, "pages");
    let client = b.inner().client();
    // More than one LIST page (S3 returns at most 1,000 keys a page).
    let keys: Vec<String> = (0..1_050).map(|i| format!("pages/k{i:04}")).collect();
    b.run(async {
        for k in &keys {
            client.put(k, k.as_bytes().to_vec(), Default::default()).await.unwrap();
        }
    });
    let listed: Vec<String> =
        b.run(client.list("pages/")).unwrap().into_iter().map(|l| l.key).collect();
    assert_eq!(listed, keys);
}

#[test]
fn bucket_store_down_is_an_error_then_retried_until_back() {
    let Some(mut g) = Garage::start("bucket_store_down_is_an_error_then_retried_until_back") else {
        return;
    };
    let t = Tree::new();
    t.file("a", b"a");
    let b = connect(&g, "down");
    super::mirror_tree(&b, t.src());
    g.stop();
    // Retries that give up fast: a LIST that cannot be made is an error, never "empty".
    let impatient = Retries {
        max_times: 1,
        min_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(10),
        ..Retries::default()
    };
    let client = replicad::bucket::client::Client::new(&b.url, &b.settings, impatient).unwrap();
    let r = b.run(client.list("down/"));
    assert!(r.is_err(), "a LIST against a stopped store must fail, got {r:?}");
    // With the default backoff (0.2 s doubling, 6 retries), a store back within a second
    // or two is retried through: the LIST succeeds and shows what is there.
    let restarter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(800)); // the outage itself, not a wait
        g.start_again();
        g
    });
    let listing = b.list().expect("retried until the store came back");
    let _g = restarter.join().unwrap();
    assert!(listing.objects.iter().any(|o| o.rel.to_string() == "a"), "{listing:?}");
}

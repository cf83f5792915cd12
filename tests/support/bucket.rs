//! The oracle for a bucket REPLICA: what a SOURCE tree must look like as objects under a
//! prefix (keys, bytes, user metadata, directory markers, `.rclonelink` objects), compared
//! with what the bucket holds; and the round-trip check that restores a prefix with real
//! `rclone copy --metadata --links --create-empty-src-dirs` and compares the result with
//! the strict tree comparer.
//!
//! Independent of replicad's writer: the expected metadata values (`mtime` as swift's
//! fixed-point seconds, `mode` in octal with the type bits, `uid`, `gid`) are computed here
//! from `lstat`, not by replicad's `meta` module. Key *names* come from replicad's mapping
//! (the rclone encoding is checked independently by the rclone round trip), and the bucket is
//! read through replicad's thin S3 client, which passes keys byte for byte.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use replicad::bucket::client::{Client, Retries};
use replicad::bucket::config::{BucketUrl, S3Settings};
use replicad::bucket::mapping::{ObjectKind, Prefix, RESERVED, key_for};
use replicad::relpath::RelPath;
use walkdir::WalkDir;

use super::{CompareOptions, Kind, TreeDiff, What, compare_with, escape};

/// One object: its bytes and user metadata (keys lowercase).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Obj {
    pub bytes: Vec<u8>,
    pub meta: BTreeMap<String, String>,
}

/// Key → object, for one prefix.
pub type Objects = BTreeMap<String, Obj>;

/// What differs between the expected and the actual bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BWhat {
    /// Expected, not in the bucket (a file, link or directory marker).
    Missing,
    /// In the bucket, not expected.
    Extra,
    /// A file's bytes.
    Content,
    /// A `.rclonelink` object's bytes.
    Target,
    /// `mtime` metadata.
    Mtime,
    /// `mode` metadata.
    Mode,
    /// `uid`/`gid` metadata.
    Owner,
}

/// One difference.
#[derive(Clone, Debug)]
pub struct BDiff {
    pub key: String,
    pub what: BWhat,
    pub expected: String,
    pub actual: String,
}

/// All differences, with both sides listed.
pub struct BucketDiff {
    pub diffs: Vec<BDiff>,
    listing: String,
}

impl BucketDiff {
    /// True if `key` has a difference of kind `what`.
    pub fn has(&self, key: &str, what: BWhat) -> bool {
        self.diffs.iter().any(|d| d.key == key && d.what == what)
    }
}

impl fmt::Debug for BucketDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} difference(s) between SOURCE and the bucket:", self.diffs.len())?;
        for d in &self.diffs {
            writeln!(
                f,
                "  {:?} {:?}: expected {} / actual {}",
                d.what, d.key, d.expected, d.actual
            )?;
        }
        write!(f, "{}", self.listing)
    }
}

/// swift's `nsToFloatString`, written out again here so the oracle does not share code
/// with the writer it checks.
pub fn float_seconds(sec: i64, nsec: i64) -> String {
    let ns = i128::from(sec) * 1_000_000_000 + i128::from(nsec);
    let sign = if ns < 0 { "-" } else { "" };
    let digits = format!("{:010}", ns.abs());
    let (int, frac) = digits.split_at(digits.len() - 9);
    let frac = frac.trim_end_matches('0');
    if frac.is_empty() { format!("{sign}{int}") } else { format!("{sign}{int}.{frac}") }
}

/// The objects `src` must produce under `prefix` (FIFOs, sockets and devices have none).
pub fn expected(src: &Path, prefix: &Prefix) -> Objects {
    let mut out = Objects::new();
    for e in WalkDir::new(src).follow_links(false).min_depth(1).sort_by_file_name() {
        let e = e.expect("walk SOURCE");
        let rel = e.path().strip_prefix(src).expect("under SOURCE");
        let md = fs::symlink_metadata(e.path()).expect("lstat");
        let kind = Kind::of(&md);
        let (object, bytes) = match kind {
            Kind::File => (ObjectKind::File, fs::read(e.path()).expect("read file")),
            Kind::Symlink => (
                ObjectKind::Symlink,
                fs::read_link(e.path()).expect("readlink").into_os_string().into_vec(),
            ),
            Kind::Dir => (ObjectKind::Dir, Vec::new()),
            _ => continue,
        };
        let relpath = RelPath::new(rel).expect("relative path");
        let key = key_for(prefix, &relpath, object)
            .unwrap_or_else(|e| panic!("{} has no key: {e}", escape(rel.as_os_str())));
        let meta = BTreeMap::from([
            ("mtime".to_owned(), float_seconds(md.mtime(), md.mtime_nsec())),
            ("mode".to_owned(), format!("{:o}", md.mode())),
            ("uid".to_owned(), md.uid().to_string()),
            ("gid".to_owned(), md.gid().to_string()),
        ]);
        out.insert(key, Obj { bytes, meta });
    }
    out
}

use std::os::unix::ffi::OsStringExt as _;

fn field(o: &Obj, k: &str) -> String {
    o.meta.get(k).cloned().unwrap_or_else(|| "(none)".to_owned())
}

/// Compares the objects `src` must produce under `prefix` with `actual` (keys under the
/// reserved `.replicad/` are replicad's own and ignored).
pub fn compare_bucket(src: &Path, prefix: &Prefix, actual: &Objects) -> Result<(), BucketDiff> {
    let want = expected(src, prefix);
    let reserved = format!("{}{RESERVED}/", prefix.as_str());
    let mut diffs = Vec::new();
    let mut push = |key: &str, what, expected: String, actual: String| {
        diffs.push(BDiff { key: key.to_owned(), what, expected, actual });
    };
    for (key, w) in &want {
        let Some(a) = actual.get(key) else {
            push(key, BWhat::Missing, "present".into(), "absent".into());
            continue;
        };
        if w.bytes != a.bytes {
            let what = if key.ends_with(".rclonelink") { BWhat::Target } else { BWhat::Content };
            push(key, what, format!("{} bytes", w.bytes.len()), format!("{} bytes", a.bytes.len()));
        }
        for (k, what) in [
            ("mtime", BWhat::Mtime),
            ("mode", BWhat::Mode),
            ("uid", BWhat::Owner),
            ("gid", BWhat::Owner),
        ] {
            if field(w, k) != field(a, k) {
                push(key, what, format!("{k}={}", field(w, k)), format!("{k}={}", field(a, k)));
            }
        }
    }
    for key in actual.keys() {
        if !want.contains_key(key) && !key.starts_with(&reserved) {
            push(key, BWhat::Extra, "absent".into(), "present".into());
        }
    }
    if diffs.is_empty() {
        return Ok(());
    }
    let mut listing = String::from("expected:\n");
    for (k, o) in &want {
        listing.push_str(&format!("  {k:?} {} bytes {:?}\n", o.bytes.len(), o.meta));
    }
    listing.push_str("actual:\n");
    for (k, o) in actual {
        listing.push_str(&format!("  {k:?} {} bytes {:?}\n", o.bytes.len(), o.meta));
    }
    Err(BucketDiff { diffs, listing })
}

/// Runs `fut` to completion on a fresh single-threaded runtime.
pub fn block_on<T>(fut: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(fut)
}

/// Reads every object under the URL's prefix: bytes and user metadata (with a client and
/// runtime of its own).
pub fn read_bucket(settings: &S3Settings, url: &BucketUrl) -> Objects {
    let client = Client::new(url, settings, Retries::default()).expect("client");
    let prefix = &url.prefix;
    block_on(async {
        let mut out = Objects::new();
        for l in client.list(prefix.as_str()).await.expect("list the bucket") {
            let head = client.head(&l.key).await.expect("head");
            let bytes =
                if l.size == 0 { Vec::new() } else { client.get(&l.key).await.expect("get") };
            out.insert(l.key, Obj { bytes, meta: head.user_metadata.into_iter().collect() });
        }
        out
    })
}

/// Like [`read_bucket`], for a bucket a running service is changing: an object deleted
/// between the LIST and its HEAD or GET, or a store that does not answer, is `None` (read
/// again later) rather than a panic.
pub fn try_read_bucket(settings: &S3Settings, url: &BucketUrl) -> Option<Objects> {
    let client = Client::new(url, settings, Retries { max_times: 0, ..Retries::default() }).ok()?;
    let prefix = &url.prefix;
    block_on(async {
        let mut out = Objects::new();
        for l in client.list(prefix.as_str()).await.ok()? {
            let head = client.head(&l.key).await.ok()?;
            let bytes = if l.size == 0 { Vec::new() } else { client.get(&l.key).await.ok()? };
            out.insert(l.key, Obj { bytes, meta: head.user_metadata.into_iter().collect() });
        }
        Some(out)
    })
}

/// Panics with both sides listed unless the bucket holds exactly what `src` must produce.
#[track_caller]
pub fn assert_bucket_mirrors(src: &Path, settings: &S3Settings, url: &BucketUrl) {
    if let Err(diff) = compare_bucket(src, &url.prefix, &read_bucket(settings, url)) {
        panic!("the bucket is not an exact mirror of SOURCE\n{diff:?}");
    }
}

// ------------------------------------------------------------------------------------------
// The round trip through rclone

/// What `rclone copy --metadata` does not restore from S3, by design, and so what the
/// round-trip comparison exempts — nothing else. Measured with rclone 1.75.2 against
/// Garage (`bucket_exemptions_are_exactly_what_rclone_drops` proves each is real):
///
/// - setuid/setgid/sticky bits of files (dropped unless `--metadata-restore-special`);
/// - every attribute of a directory — mtime, mode, owner: rclone's S3 backend reads no
///   metadata for directories (markers included), so restored directories get rclone's
///   defaults. The markers in the bucket do hold them (the bucket oracle checks that).
pub fn rclone_exempt(src: &Path, d: &super::Difference) -> bool {
    let is_dir = fs::symlink_metadata(src.join(&d.path)).is_ok_and(|m| m.is_dir());
    match d.what {
        What::Mtime | What::Owner => is_dir,
        What::Mode if is_dir => true,
        What::Mode => {
            let (s, r) = (octal(&d.source), octal(&d.replica));
            matches!((s, r), (Some(s), Some(r)) if s & 0o777 == r && s & 0o7000 != 0)
        }
        _ => false,
    }
}

fn octal(s: &str) -> Option<u32> {
    u32::from_str_radix(s, 8).ok()
}

/// rclone's metadata mapper for restores: keeps only the keys the local backend applies to
/// the file itself. rclone 1.75 writes every other key it reads from S3 (`tier`, which it
/// always reports, and `content-type`) as a `user.*` xattr, which Linux refuses on a
/// symlink (EPERM: the link's copy fails) and which would add xattrs SOURCE never had.
pub const RESTORE_MAPPER: &str = r#"import json, sys
i = json.load(sys.stdin)
keep = ("mtime", "atime", "mode", "uid", "gid")
json.dump({"Metadata": {k: v for k, v in i["Metadata"].items() if k in keep}}, sys.stdout)
"#;

/// Restores `bucket/prefix` into `dest` with real rclone (`G:` from [`super::garage`]):
/// `rclone copy --metadata --links --create-empty-src-dirs --exclude "/.replicad/**"
/// --metadata-mapper "python3 MAPPER"`.
pub fn rclone_restore(g: &super::garage::Garage, bucket: &str, prefix: &Prefix, dest: &Path) {
    let remote = format!("G:{bucket}/{}", prefix.as_str());
    let mapper = dest.with_extension("mapper.py");
    fs::write(&mapper, RESTORE_MAPPER).expect("write the metadata mapper");
    let mapper_cmd = format!("python3 {}", mapper.display());
    let args: Vec<&OsStr> = vec![
        OsStr::new("copy"),
        OsStr::new("--metadata"),
        OsStr::new("--links"),
        OsStr::new("--create-empty-src-dirs"),
        OsStr::new("--exclude"),
        OsStr::new("/.replicad/**"),
        OsStr::new("--metadata-mapper"),
        OsStr::new(&mapper_cmd),
        OsStr::new("--retries"),
        OsStr::new("1"),
        OsStr::new(&remote),
        dest.as_os_str(),
    ];
    let out = g.rclone(&args);
    assert!(
        out.status.success(),
        "rclone copy failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The strict comparison of SOURCE with an rclone restore, minus exactly
/// [`rclone_exempt`]. The root's own attributes are not in the bucket (rclone writes no
/// marker for it), so `dest`'s root is given SOURCE root's mode and owner first.
pub fn compare_restored(src: &Path, dest: &Path) -> Result<(), TreeDiff> {
    let root = fs::metadata(src).expect("stat SOURCE");
    fs::set_permissions(dest, fs::Permissions::from_mode(root.mode() & 0o7777))
        .expect("chmod dest");
    std::os::unix::fs::lchown(dest, Some(root.uid()), Some(root.gid())).expect("chown dest");
    match compare_with(src, dest, &CompareOptions::default()) {
        Ok(()) => Ok(()),
        Err(mut diff) => {
            diff.diffs.retain(|d| !rclone_exempt(src, d));
            if diff.diffs.is_empty() { Ok(()) } else { Err(diff) }
        }
    }
}

use std::os::unix::fs::PermissionsExt as _;

/// A path's bytes as a `PathBuf` (tests build non-UTF-8 names).
pub fn path(bytes: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(bytes))
}

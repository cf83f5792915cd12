//! Test support: the strict tree comparer (the oracle every test trusts), a tree builder
//! with domain verbs, the binary runner, `wait_until`, and snapshots that prove a tree was
//! not touched.
//!
//! Knows nothing of replicad's internals: it looks only at the filesystem (through
//! `walkdir` and std, independent of the engine's own walker) and runs the `replicad`
//! binary. Paths stay bytes (`OsStr`) throughout and are printed escaped, never lossily.
#![allow(dead_code)] // each test module uses a different part of the harness

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fmt::{self, Write as _};
use std::fs::{self, File, Metadata};
use std::hash::Hasher;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rustix::fs::{AtFlags, CWD, Mode, OFlags, Timespec, Timestamps};
use tempfile::TempDir;
use walkdir::WalkDir;

pub mod mounts;

/// Hard bound on one `--once` run: a hang fails the test in seconds, not never.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// The unprivileged user the permission tests run the binary as (`nobody`).
pub const NOBODY: u32 = 65534;

// ------------------------------------------------------------------------------------------
// Escaping

/// `os` with control characters, backslashes and invalid UTF-8 bytes escaped (`\xff`), so
/// distinct names always print distinctly.
pub fn escape(os: &OsStr) -> String {
    let mut out = String::new();
    for chunk in os.as_bytes().utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() || c == '\\' {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
        for byte in chunk.invalid() {
            let _ = write!(out, "\\x{byte:02x}");
        }
    }
    out
}

fn show(rel: &Path) -> String {
    if rel.as_os_str().is_empty() { ".".to_owned() } else { escape(rel.as_os_str()) }
}

// ------------------------------------------------------------------------------------------
// What one lstat says

/// The type of a filesystem entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    Fifo,
    CharDev,
    BlockDev,
    Socket,
}

impl Kind {
    /// The kind `md` (from `symlink_metadata`) describes.
    pub fn of(md: &Metadata) -> Kind {
        let ft = md.file_type();
        if ft.is_symlink() {
            Kind::Symlink
        } else if ft.is_dir() {
            Kind::Dir
        } else if ft.is_file() {
            Kind::File
        } else if ft.is_fifo() {
            Kind::Fifo
        } else if ft.is_char_device() {
            Kind::CharDev
        } else if ft.is_block_device() {
            Kind::BlockDev
        } else {
            Kind::Socket
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Kind::Dir => "dir",
            Kind::File => "file",
            Kind::Symlink => "symlink",
            Kind::Fifo => "fifo",
            Kind::CharDev => "chardev",
            Kind::BlockDev => "blockdev",
            Kind::Socket => "socket",
        };
        f.pad(name)
    }
}

/// The attributes of one entry that the comparer looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Node {
    kind: Kind,
    mode: u32,
    size: u64,
    mtime: (i64, i64),
    uid: u32,
    gid: u32,
    rdev: u64,
    target: Option<OsString>,
}

impl Node {
    fn read(path: &Path, md: &Metadata) -> io::Result<Node> {
        let kind = Kind::of(md);
        let target = match kind {
            Kind::Symlink => Some(fs::read_link(path)?.into_os_string()),
            _ => None,
        };
        Ok(Node {
            kind,
            mode: md.mode() & 0o7777,
            size: md.size(),
            mtime: (md.mtime(), md.mtime_nsec()),
            uid: md.uid(),
            gid: md.gid(),
            rdev: md.rdev(),
            target,
        })
    }

    fn line(&self, rel: &Path) -> String {
        let mut s = format!(
            "{:<8} {:04o} {:>9} {}.{:09} {}:{} {}",
            self.kind,
            self.mode,
            self.size,
            self.mtime.0,
            self.mtime.1,
            self.uid,
            self.gid,
            show(rel)
        );
        if let Some(t) = &self.target {
            let _ = write!(s, " -> {}", escape(t));
        }
        if matches!(self.kind, Kind::CharDev | Kind::BlockDev) {
            let _ = write!(s, " rdev={:#x}", self.rdev);
        }
        s
    }
}

fn fmt_mtime(t: (i64, i64)) -> String {
    format!("{}.{:09}", t.0, t.1)
}

// ------------------------------------------------------------------------------------------
// The comparer (the oracle)

/// Which property of a path differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum What {
    /// In SOURCE, not in REPLICA.
    Missing,
    /// In REPLICA, not in SOURCE.
    Extra,
    Type,
    Content,
    Target,
    Mode,
    Mtime,
    Owner,
    Rdev,
    /// The comparer itself could not read an entry on one side.
    Unreadable,
}

/// One difference: the relative path, what differs, and the value on each side.
#[derive(Clone, Debug)]
pub struct Difference {
    pub path: PathBuf,
    pub what: What,
    pub source: String,
    pub replica: String,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {:?}: source {} / replica {}",
            show(&self.path),
            self.what,
            self.source,
            self.replica
        )
    }
}

/// Every difference between two trees, plus a listing of both for diagnosis.
pub struct TreeDiff {
    pub diffs: Vec<Difference>,
    source_listing: String,
    replica_listing: String,
}

impl TreeDiff {
    /// True if `path` (relative; `""` is the root) has a difference of kind `what`.
    pub fn has(&self, path: impl AsRef<Path>, what: What) -> bool {
        self.diffs.iter().any(|d| d.path == path.as_ref() && d.what == what)
    }

    /// The kinds of difference found, in order.
    pub fn whats(&self) -> Vec<What> {
        self.diffs.iter().map(|d| d.what).collect()
    }
}

impl fmt::Display for TreeDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} difference(s) between SOURCE and REPLICA:", self.diffs.len())?;
        for d in &self.diffs {
            writeln!(f, "  {d}")?;
        }
        writeln!(f, "SOURCE tree:\n{}", self.source_listing)?;
        write!(f, "REPLICA tree:\n{}", self.replica_listing)
    }
}

impl fmt::Debug for TreeDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn exclude_nothing(_: &Path) -> bool {
    false
}

/// How strict the comparer is.
pub struct CompareOptions<'a> {
    /// Do not compare uid/gid.
    pub skip_owner: bool,
    /// Relative paths (never the root) to ignore on both sides; an ignored directory
    /// is ignored with everything under it.
    pub exclude: &'a dyn Fn(&Path) -> bool,
}

impl Default for CompareOptions<'_> {
    fn default() -> Self {
        CompareOptions { skip_owner: false, exclude: &exclude_nothing }
    }
}

/// Compares two trees strictly: same paths, types, bytes, link targets, modes, mtimes to
/// the nanosecond, owners and device numbers, roots included.
pub fn compare(src: &Path, dst: &Path) -> Result<(), TreeDiff> {
    compare_with(src, dst, &CompareOptions::default())
}

/// Panics with both trees listed unless `src` and `dst` compare equal.
#[track_caller]
pub fn assert_same(src: &Path, dst: &Path) {
    if let Err(diff) = compare(src, dst) {
        panic!("REPLICA is not an exact copy of SOURCE\n{diff}");
    }
}

/// Panics with both trees listed unless `src` and `dst` compare equal under `opts`.
#[track_caller]
pub fn assert_same_with(src: &Path, dst: &Path, opts: &CompareOptions<'_>) {
    if let Err(diff) = compare_with(src, dst, opts) {
        panic!("REPLICA is not an exact copy of SOURCE\n{diff}");
    }
}

type Listing = BTreeMap<PathBuf, Node>;

/// Walks `root` without following links (the root itself is resolved), skipping excluded
/// paths; comparer-side read errors are returned with their paths.
fn list(root: &Path, exclude: &dyn Fn(&Path) -> bool) -> (Listing, Vec<(PathBuf, String)>) {
    let mut nodes = Listing::new();
    let mut errors = Vec::new();
    let walk = WalkDir::new(root)
        .follow_links(false)
        .follow_root_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| {
            e.depth() == 0 || !exclude(e.path().strip_prefix(root).unwrap_or(e.path()))
        });
    for entry in walk {
        match entry {
            Ok(e) => {
                let rel = e.path().strip_prefix(root).unwrap_or(e.path()).to_path_buf();
                let md = if e.depth() == 0 {
                    fs::metadata(e.path())
                } else {
                    fs::symlink_metadata(e.path())
                };
                match md.and_then(|md| Node::read(e.path(), &md)) {
                    Ok(node) => {
                        nodes.insert(rel, node);
                    }
                    Err(err) => errors.push((rel, err.to_string())),
                }
            }
            Err(err) => {
                let rel = err
                    .path()
                    .map(|p| p.strip_prefix(root).unwrap_or(p).to_path_buf())
                    .unwrap_or_default();
                errors.push((rel, err.to_string()));
            }
        }
    }
    (nodes, errors)
}

fn render(nodes: &Listing, errors: &[(PathBuf, String)]) -> String {
    const MAX_LINES: usize = 400;
    let mut s = String::new();
    for (rel, node) in nodes.iter().take(MAX_LINES) {
        let _ = writeln!(s, "  {}", node.line(rel));
    }
    if nodes.len() > MAX_LINES {
        let _ = writeln!(s, "  ... {} more entries", nodes.len() - MAX_LINES);
    }
    for (rel, err) in errors {
        let _ = writeln!(s, "  UNREADABLE {}: {err}", show(rel));
    }
    s
}

/// Like [`compare`], with options.
pub fn compare_with(src: &Path, dst: &Path, opts: &CompareOptions<'_>) -> Result<(), TreeDiff> {
    let (src_nodes, src_errors) = list(src, opts.exclude);
    let (dst_nodes, dst_errors) = list(dst, opts.exclude);
    let mut diffs = Vec::new();
    let mut push = |path: &Path, what, source: String, replica: String| {
        diffs.push(Difference { path: path.to_path_buf(), what, source, replica });
    };
    for (rel, err) in &src_errors {
        push(rel, What::Unreadable, err.clone(), "-".into());
    }
    for (rel, err) in &dst_errors {
        push(rel, What::Unreadable, "-".into(), err.clone());
    }
    for (rel, s) in &src_nodes {
        let Some(d) = dst_nodes.get(rel) else {
            push(rel, What::Missing, s.kind.to_string(), "absent".into());
            continue;
        };
        if s.kind != d.kind {
            push(rel, What::Type, s.kind.to_string(), d.kind.to_string());
            continue;
        }
        match s.kind {
            Kind::File if s.size != d.size => {
                push(rel, What::Content, format!("size {}", s.size), format!("size {}", d.size));
            }
            Kind::File => match first_difference(&src.join(rel), &dst.join(rel)) {
                Ok(None) => {}
                Ok(Some(at)) => {
                    push(rel, What::Content, format!("bytes differ at offset {at}"), String::new())
                }
                Err(err) => {
                    push(rel, What::Unreadable, format!("reading content: {err}"), String::new())
                }
            },
            Kind::Symlink if s.target != d.target => {
                let t = |n: &Node| n.target.as_deref().map(escape).unwrap_or_default();
                push(rel, What::Target, t(s), t(d));
            }
            Kind::CharDev | Kind::BlockDev if s.rdev != d.rdev => {
                push(rel, What::Rdev, format!("{:#x}", s.rdev), format!("{:#x}", d.rdev));
            }
            _ => {}
        }
        if s.kind != Kind::Symlink && s.mode != d.mode {
            push(rel, What::Mode, format!("{:04o}", s.mode), format!("{:04o}", d.mode));
        }
        if matches!(s.kind, Kind::File | Kind::Dir | Kind::Symlink) && s.mtime != d.mtime {
            push(rel, What::Mtime, fmt_mtime(s.mtime), fmt_mtime(d.mtime));
        }
        if !opts.skip_owner && (s.uid, s.gid) != (d.uid, d.gid) {
            push(rel, What::Owner, format!("{}:{}", s.uid, s.gid), format!("{}:{}", d.uid, d.gid));
        }
    }
    for (rel, d) in &dst_nodes {
        if !src_nodes.contains_key(rel) {
            push(rel, What::Extra, "absent".into(), d.kind.to_string());
        }
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(TreeDiff {
            diffs,
            source_listing: render(&src_nodes, &src_errors),
            replica_listing: render(&dst_nodes, &dst_errors),
        })
    }
}

/// Reads into `buf` until it is full or the reader is at its end.
fn fill(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Streams two regular files side by side; the offset of the first differing byte, if any.
fn first_difference(a: &Path, b: &Path) -> io::Result<Option<u64>> {
    const CHUNK: usize = 64 * 1024;
    let (mut fa, mut fb) = (File::open(a)?, File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let mut offset = 0u64;
    loop {
        let na = fill(&mut fa, &mut ba)?;
        let nb = fill(&mut fb, &mut bb)?;
        let n = na.min(nb);
        if let Some(i) = ba[..n].iter().zip(&bb[..n]).position(|(x, y)| x != y) {
            return Ok(Some(offset + i as u64));
        }
        if na != nb {
            return Ok(Some(offset + n as u64));
        }
        if na == 0 {
            return Ok(None);
        }
        offset += na as u64;
    }
}

// ------------------------------------------------------------------------------------------
// Snapshots: proof that a tree was not touched

/// Everything observable about one entry, including inode and ctime (which nothing but a
/// change can move) and a hash of the content. Not atime: reading moves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapEntry {
    pub path: PathBuf,
    pub kind: Kind,
    pub mode: u32,
    pub size: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
    pub ino: u64,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub target: Option<OsString>,
    pub content_hash: u64,
}

/// A snapshot of the tree at `root` (root included, as `""`). Panics on read errors.
pub fn snapshot(root: &Path) -> Vec<SnapEntry> {
    let mut out = Vec::new();
    for entry in WalkDir::new(root).follow_links(false).sort_by_file_name() {
        let e = entry.unwrap_or_else(|err| panic!("snapshot of {}: {err}", root.display()));
        let md =
            if e.depth() == 0 { fs::metadata(e.path()) } else { fs::symlink_metadata(e.path()) };
        let md = md.unwrap_or_else(|err| panic!("snapshot: lstat {}: {err}", e.path().display()));
        let node = Node::read(e.path(), &md)
            .unwrap_or_else(|err| panic!("snapshot: {}: {err}", e.path().display()));
        let content_hash = if node.kind == Kind::File {
            hash_file(e.path())
                .unwrap_or_else(|err| panic!("snapshot: read {}: {err}", e.path().display()))
        } else {
            0
        };
        out.push(SnapEntry {
            path: e.path().strip_prefix(root).unwrap_or(e.path()).to_path_buf(),
            kind: node.kind,
            mode: node.mode,
            size: node.size,
            mtime: node.mtime,
            ctime: (md.ctime(), md.ctime_nsec()),
            ino: md.ino(),
            uid: node.uid,
            gid: node.gid,
            rdev: node.rdev,
            target: node.target,
            content_hash,
        });
    }
    out
}

fn hash_file(path: &Path) -> io::Result<u64> {
    let mut f = File::open(path)?;
    let mut h = std::hash::DefaultHasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = fill(&mut f, &mut buf)?;
        h.write(&buf[..n]);
        if n < buf.len() {
            return Ok(h.finish());
        }
    }
}

/// Panics, naming every entry that changed, appeared or vanished, unless the snapshots agree.
#[track_caller]
pub fn assert_unchanged(what: &str, before: &[SnapEntry], after: &[SnapEntry]) {
    if before == after {
        return;
    }
    let index =
        |s: &[SnapEntry]| s.iter().map(|e| (e.path.clone(), e.clone())).collect::<BTreeMap<_, _>>();
    let (b, a) = (index(before), index(after));
    let mut report = String::new();
    for (path, eb) in &b {
        match a.get(path) {
            None => {
                let _ = writeln!(report, "  vanished: {}", show(path));
            }
            Some(ea) if ea != eb => {
                let _ = writeln!(
                    report,
                    "  changed: {}\n    before {eb:?}\n    after  {ea:?}",
                    show(path)
                );
            }
            Some(_) => {}
        }
    }
    for path in a.keys().filter(|p| !b.contains_key(*p)) {
        let _ = writeln!(report, "  appeared: {}", show(path));
    }
    panic!("{what} was modified:\n{report}");
}

// ------------------------------------------------------------------------------------------
// Building trees

/// A directory to build entries in, with paths relative to it. Every verb panics on failure
/// (a broken fixture is a broken test) and returns `&Self` so calls can chain.
pub struct Dir {
    root: PathBuf,
}

impl Dir {
    /// A builder for the directory at `root` (which need not exist yet).
    pub fn at(root: impl Into<PathBuf>) -> Dir {
        Dir { root: root.into() }
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// `rel` under this directory.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.root.join(rel)
    }

    fn parents(&self, rel: &Path) {
        if let Some(parent) = self.join(rel).parent() {
            fs::create_dir_all(parent)
                .unwrap_or_else(|e| panic!("mkdir -p {}: {e}", parent.display()));
        }
    }

    /// Writes a regular file (parents created), replacing its content if it exists.
    pub fn file(&self, rel: impl AsRef<Path>, content: impl AsRef<[u8]>) -> &Self {
        let rel = rel.as_ref();
        self.parents(rel);
        fs::write(self.join(rel), content)
            .unwrap_or_else(|e| panic!("write {}: {e}", rel.display()));
        self
    }

    /// Creates a directory and its parents (fine if it exists).
    pub fn dir(&self, rel: impl AsRef<Path>) -> &Self {
        let p = self.join(rel);
        fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir -p {}: {e}", p.display()));
        self
    }

    /// Creates a symlink `rel -> target` (parents created); the target is stored verbatim.
    pub fn symlink(&self, rel: impl AsRef<Path>, target: impl AsRef<Path>) -> &Self {
        let rel = rel.as_ref();
        self.parents(rel);
        std::os::unix::fs::symlink(target, self.join(rel))
            .unwrap_or_else(|e| panic!("symlink {}: {e}", rel.display()));
        self
    }

    /// Creates a FIFO (mode 0644, parents created).
    pub fn fifo(&self, rel: impl AsRef<Path>) -> &Self {
        self.mknod(rel, rustix::fs::FileType::Fifo, 0)
    }

    /// Creates a character device node `major:minor` (needs root).
    pub fn chardev(&self, rel: impl AsRef<Path>, major: u32, minor: u32) -> &Self {
        self.mknod(rel, rustix::fs::FileType::CharacterDevice, rustix::fs::makedev(major, minor))
    }

    fn mknod(&self, rel: impl AsRef<Path>, ft: rustix::fs::FileType, dev: u64) -> &Self {
        let rel = rel.as_ref();
        self.parents(rel);
        rustix::fs::mknodat(CWD, self.join(rel), ft, Mode::from_raw_mode(0o644), dev)
            .unwrap_or_else(|e| panic!("mknod {}: {e}", rel.display()));
        self.chmod(rel, 0o644)
    }

    /// Creates a unix socket file (the listener is closed at once; the file stays).
    pub fn socket(&self, rel: impl AsRef<Path>) -> &Self {
        let rel = rel.as_ref();
        self.parents(rel);
        std::os::unix::net::UnixListener::bind(self.join(rel))
            .unwrap_or_else(|e| panic!("bind {}: {e}", rel.display()));
        self
    }

    /// Sets the permission bits exactly (`mode & 0o7777`, umask does not apply).
    pub fn chmod(&self, rel: impl AsRef<Path>, mode: u32) -> &Self {
        let p = self.join(rel);
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
        self
    }

    /// Sets the mtime (never following a symlink); atime is left alone.
    pub fn mtime(&self, rel: impl AsRef<Path>, secs: i64, nanos: u32) -> &Self {
        set_mtime(&self.join(rel), secs, nanos);
        self
    }

    /// Sets uid/gid (never following a symlink).
    pub fn chown(&self, rel: impl AsRef<Path>, uid: u32, gid: u32) -> &Self {
        let p = self.join(rel);
        std::os::unix::fs::lchown(&p, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
        self
    }

    /// Gives the whole tree, this directory included, to `uid:gid`.
    pub fn chown_all(&self, uid: u32, gid: u32) -> &Self {
        for e in WalkDir::new(&self.root).follow_links(false) {
            let e = e.unwrap_or_else(|e| panic!("walk {}: {e}", self.root.display()));
            std::os::unix::fs::lchown(e.path(), Some(uid), Some(gid))
                .unwrap_or_else(|err| panic!("chown {}: {err}", e.path().display()));
        }
        self
    }

    /// Removes an entry of any type; a directory goes with its contents (links not followed).
    pub fn remove(&self, rel: impl AsRef<Path>) -> &Self {
        let p = self.join(rel);
        let md = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
        let r = if md.is_dir() { fs::remove_dir_all(&p) } else { fs::remove_file(&p) };
        r.unwrap_or_else(|e| panic!("remove {}: {e}", p.display()));
        self
    }

    /// Renames `from` to `to` inside this directory (parents of `to` created).
    pub fn rename(&self, from: impl AsRef<Path>, to: impl AsRef<Path>) -> &Self {
        let to = to.as_ref();
        self.parents(to);
        fs::rename(self.join(&from), self.join(to)).unwrap_or_else(|e| {
            panic!("rename {} -> {}: {e}", from.as_ref().display(), to.display())
        });
        self
    }

    /// The content of a regular file.
    pub fn read(&self, rel: impl AsRef<Path>) -> Vec<u8> {
        let p = self.join(rel);
        fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
    }

    /// True if an entry of any type (a dangling symlink too) is at `rel`.
    pub fn exists(&self, rel: impl AsRef<Path>) -> bool {
        fs::symlink_metadata(self.join(rel)).is_ok()
    }

    /// The type of the entry at `rel`, if there is one.
    pub fn kind(&self, rel: impl AsRef<Path>) -> Option<Kind> {
        fs::symlink_metadata(self.join(rel)).ok().map(|md| Kind::of(&md))
    }

    /// `lstat` of `rel`.
    pub fn lstat(&self, rel: impl AsRef<Path>) -> Metadata {
        let p = self.join(rel);
        fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()))
    }

    /// The names directly in `rel` (sorted by bytes).
    pub fn names(&self, rel: impl AsRef<Path>) -> Vec<OsString> {
        let p = self.join(rel);
        let mut names: Vec<OsString> = fs::read_dir(&p)
            .unwrap_or_else(|e| panic!("read_dir {}: {e}", p.display()))
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("read_dir {}: {e}", p.display()));
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        names
    }
}

/// Sets the mtime of `path` without following a final symlink; atime is left alone.
pub fn set_mtime(path: &Path, secs: i64, nanos: u32) {
    let times = Timestamps {
        last_access: Timespec { tv_sec: 0, tv_nsec: rustix::fs::UTIME_OMIT },
        last_modification: Timespec { tv_sec: secs, tv_nsec: i64::from(nanos) },
    };
    rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW)
        .unwrap_or_else(|e| panic!("utimensat {}: {e}", path.display()));
}

/// A fresh pair of roots in a temporary directory: `src/` exists (empty), `dst/` does not,
/// so tests can check that replicad creates it. Builder verbs on a `Tree` act on SOURCE
/// (via `Deref`); use [`Tree::replica`] to plant things in REPLICA.
pub struct Tree {
    tmp: TempDir,
    source: Dir,
    replica: Dir,
}

impl Default for Tree {
    fn default() -> Self {
        Tree::new()
    }
}

impl std::ops::Deref for Tree {
    type Target = Dir;
    fn deref(&self) -> &Dir {
        &self.source
    }
}

impl Tree {
    /// A new temp directory holding an empty `src/` and no `dst/`.
    pub fn new() -> Tree {
        let tmp =
            tempfile::Builder::new().prefix("replicad-test.").tempdir().expect("create temp dir");
        let source = Dir::at(tmp.path().join("src"));
        let replica = Dir::at(tmp.path().join("dst"));
        fs::create_dir(source.path()).expect("create src");
        Tree { tmp, source, replica }
    }

    /// The temp directory holding both roots (for other fixtures and logs).
    pub fn base(&self) -> &Path {
        self.tmp.path()
    }

    /// SOURCE.
    pub fn src(&self) -> &Path {
        self.source.path()
    }

    /// REPLICA (may not exist yet).
    pub fn dst(&self) -> &Path {
        self.replica.path()
    }

    /// The SOURCE builder (same as the `Deref` target).
    pub fn source(&self) -> &Dir {
        &self.source
    }

    /// The REPLICA builder, to plant entries the run must fix.
    pub fn replica(&self) -> &Dir {
        &self.replica
    }

    /// Panics with both trees listed unless REPLICA is an exact copy of SOURCE.
    #[track_caller]
    pub fn assert_mirrored(&self) {
        assert_same(self.src(), self.dst());
    }

    /// Lets `uid:gid` work on the fixture: both trees are given to it and the temp dir is
    /// opened for traversal (REPLICA is created first, since the base is not writable to it).
    pub fn give_to(&self, uid: u32, gid: u32) {
        fs::set_permissions(self.base(), fs::Permissions::from_mode(0o755)).expect("chmod base");
        self.replica.dir("");
        self.source.chown_all(uid, gid);
        self.replica.chown_all(uid, gid);
    }

    /// `replicad --once SRC DST extra...`, run to completion (bounded by [`RUN_TIMEOUT`]).
    pub fn once(&self, extra: &[&str]) -> Run {
        let mut cmd = replicad();
        cmd.arg("--once").arg(self.src()).arg(self.dst()).args(extra);
        Run::of(&mut cmd)
    }

    /// Like [`Tree::once`], but as the unprivileged user `nobody` (see [`Tree::give_to`]).
    pub fn once_as_nobody(&self, extra: &[&str]) -> Run {
        let mut cmd = as_nobody();
        cmd.arg("--once").arg(self.src()).arg(self.dst()).args(extra);
        Run::of(&mut cmd)
    }

    /// Starts `replicad SRC DST extra...` as a service; its stderr goes to a file in the
    /// temp dir. Killed when the returned [`Service`] is dropped.
    pub fn spawn(&self, extra: &[&str]) -> Service {
        let mut args: Vec<OsString> = vec![self.src().into(), self.dst().into()];
        args.extend(extra.iter().map(OsString::from));
        Service::start(self.base(), &args)
    }

    /// `replicad SRC DST extra...` as a command not yet started, for a test to give it an
    /// environment (`NOTIFY_SOCKET`, say) before [`Tree::spawn_command`].
    pub fn service_command(&self, extra: &[&str]) -> std::process::Command {
        let mut cmd = std::process::Command::new(bin());
        cmd.arg(self.src()).arg(self.dst()).args(extra);
        cmd
    }

    /// Starts `cmd` as a service, its stderr in a file in the temp dir (see
    /// [`Service::start_command`]).
    pub fn spawn_command(&self, cmd: std::process::Command) -> Service {
        Service::start_command(self.base(), cmd)
    }
}

// ------------------------------------------------------------------------------------------
// Running the binary

/// Path of the `replicad` binary built for these tests.
pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_replicad"))
}

/// The `replicad` binary with a clean environment for its own variables (a developer's
/// `RUST_LOG` or `REPLICAD_*` must not change what tests see) and a hard timeout.
pub fn replicad() -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::new(bin());
    clean_env(&mut cmd);
    cmd.timeout(RUN_TIMEOUT);
    cmd
}

/// The binary run through `setpriv` as `nobody`, no supplementary groups.
pub fn as_nobody() -> assert_cmd::Command {
    let mut cmd = wrapper("setpriv");
    cmd.args([format!("--reuid={NOBODY}"), format!("--regid={NOBODY}"), "--clear-groups".into()])
        .arg(bin());
    cmd
}

/// `program` (a wrapper such as `unshare` that runs the binary given as its argument), with
/// the same clean environment and hard timeout as [`replicad`].
pub fn wrapper(program: &str) -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::new(program);
    clean_env(&mut cmd);
    cmd.timeout(RUN_TIMEOUT);
    cmd
}

/// The environment variables replicad reads besides its own `REPLICAD_*` (all of which
/// are cleared too); a developer's values must not leak into tests.
const OWN_ENV: [&str; 3] = ["RUST_LOG", "NOTIFY_SOCKET", "WATCHDOG_USEC"];

/// Every variable of this process that replicad would read.
fn own_env() -> Vec<OsString> {
    let replicad = std::env::vars_os()
        .map(|(k, _)| k)
        .filter(|k| k.as_encoded_bytes().starts_with(b"REPLICAD_"));
    OWN_ENV.iter().map(OsString::from).chain(replicad).collect()
}

fn clean_env(cmd: &mut assert_cmd::Command) {
    for var in own_env() {
        cmd.env_remove(var);
    }
}

/// The outcome of one finished run.
pub struct Run {
    /// Exit status; `None` if killed by a signal (the timeout, say).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Runs `cmd` to completion.
    pub fn of(cmd: &mut assert_cmd::Command) -> Run {
        let out = cmd.output().expect("run replicad");
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Panics, showing the output, unless the exit status is `code`.
    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, Some(code), "unexpected exit status; output:\n{self}");
        self
    }

    /// The log lines that record a change (`action=...`; JSON lines use `"action":`).
    pub fn actions(&self) -> Vec<&str> {
        action_lines(&self.stderr)
    }

    /// True if some action line names `action` and `path` (as a whole field value).
    pub fn has_action(&self, action: &str, path: &str) -> bool {
        has_action(&self.stderr, action, path)
    }

    /// The stderr lines containing `needle`.
    pub fn lines_with(&self, needle: &str) -> Vec<&str> {
        self.stderr.lines().filter(|l| l.contains(needle)).collect()
    }
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exit status: {:?}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// The lines of a log that record a change.
pub fn action_lines(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains("action=") || l.contains("\"action\":")).collect()
}

/// True if a text log line carries `action=<action>` and `path=<path>` as whole fields
/// (either value may be quoted).
pub fn has_action(log: &str, action: &str, path: &str) -> bool {
    let field = |k: &str, v: &str| [format!("{k}={v}"), format!("{k}=\"{v}\"")];
    let (a, p) = (field("action", action), field("path", path));
    log.lines().any(|l| {
        let fields: Vec<&str> = l.split_whitespace().collect();
        let has = |alts: &[String; 2]| alts.iter().any(|x| fields.contains(&x.as_str()));
        has(&a) && has(&p)
    })
}

static SERVICES: AtomicUsize = AtomicUsize::new(0);

/// How long a change may take to reach REPLICA (debounce is 100 ms; this is slack for a
/// loaded 2-core CI machine, not an expectation).
pub const CONVERGE: Duration = Duration::from_secs(10);

/// Only the watcher (or an explicit full-pass request) can act within a test's lifetime.
pub const EVENTS_ONLY: &[&str] = &["--interval", "1h"];

/// Starts `replicad SRC DST extra...` and waits for its first pass.
pub fn running(t: &Tree, extra: &[&str]) -> Service {
    let mut svc = t.spawn(extra);
    svc.wait_first_pass();
    svc
}

/// What the summary line of every full pass contains.
pub const PASS_COMPLETE: &str = "pass complete";

/// Hard bound on a service's start and first pass.
pub const FIRST_PASS_TIMEOUT: Duration = Duration::from_secs(60);

/// The prefix of replicad's temporary names in REPLICA (SPEC §4).
pub const TEMP_PREFIX: &str = ".replicad.tmp.";

/// Every entry under `root` whose name starts with [`TEMP_PREFIX`] (none if `root` is
/// missing; entries that vanish during the walk are passed over).
pub fn temp_leftovers(root: &Path) -> Vec<PathBuf> {
    WalkDir::new(root)
        .follow_links(false)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().as_bytes().starts_with(TEMP_PREFIX.as_bytes()))
        .map(|e| e.path().to_path_buf())
        .collect()
}

/// True if two regular files have the same size and bytes.
pub fn same_content(a: &Path, b: &Path) -> io::Result<bool> {
    if fs::metadata(a)?.len() != fs::metadata(b)?.len() {
        return Ok(false);
    }
    Ok(first_difference(a, b)?.is_none())
}

/// A running `replicad` service; killed (SIGKILL) and reaped on drop if still running.
pub struct Service {
    child: Child,
    log: PathBuf,
}

impl Service {
    /// Spawns the binary with `args`, stderr to a fresh file under `dir`.
    pub fn start(dir: &Path, args: &[OsString]) -> Service {
        let mut cmd = std::process::Command::new(bin());
        cmd.args(args);
        Service::start_command(dir, cmd)
    }

    /// Spawns `cmd` (the binary, or a wrapper that `exec`s it, so the child's pid is the
    /// service's) with replicad's own environment variables cleared unless `cmd` sets them,
    /// no stdin/stdout, and stderr to a fresh file under `dir`.
    pub fn start_command(dir: &Path, mut cmd: std::process::Command) -> Service {
        let log = dir.join(format!("service-{}.stderr", SERVICES.fetch_add(1, Ordering::Relaxed)));
        let file = File::create(&log).expect("create service log");
        let set: Vec<OsString> = cmd.get_envs().map(|(k, _)| k.to_owned()).collect();
        for var in own_env().iter().filter(|v| !set.contains(v)) {
            cmd.env_remove(var);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .expect("spawn replicad");
        Service { child, log }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the service wrote to stderr so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// Sends `sig` to the service (ignored if it has already exited).
    pub fn signal(&self, sig: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process(pid, sig);
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        self.signal(rustix::process::Signal::TERM);
    }

    /// Sends SIGINT.
    pub fn interrupt(&self) {
        self.signal(rustix::process::Signal::INT);
    }

    /// Freezes the process (SIGSTOP); [`Service::resume`] thaws it.
    pub fn freeze(&self) {
        self.signal(rustix::process::Signal::STOP);
    }

    /// Thaws a frozen process (SIGCONT).
    pub fn resume(&self) {
        self.signal(rustix::process::Signal::CONT);
    }

    /// Kills the process outright (SIGKILL, as a crash or `kill -9` would) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The number of log lines containing `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    /// Waits up to `deadline` for a log line containing `needle`.
    pub fn wait_log(&self, deadline: Duration, needle: &str) -> bool {
        wait_until(deadline, || self.log().contains(needle))
    }

    /// Waits for the summary line of the first full pass; panics with the log after
    /// [`FIRST_PASS_TIMEOUT`] (or if the service died first).
    #[track_caller]
    pub fn wait_first_pass(&mut self) {
        let mut exited = None;
        let seen = wait_until(FIRST_PASS_TIMEOUT, || {
            exited = self.child.try_wait().ok().flatten();
            exited.is_some() || self.log().contains(PASS_COMPLETE)
        });
        assert!(
            seen && exited.is_none(),
            "no first pass within {FIRST_PASS_TIMEOUT:?} (exit: {exited:?}); log:\n{}",
            self.log()
        );
    }

    /// The log written after the first pass's summary line (empty if there was none yet).
    pub fn log_after_first_pass(&self) -> String {
        let log = self.log();
        match log.find(PASS_COMPLETE) {
            Some(at) => {
                log[at..].split_once('\n').map(|(_, rest)| rest.to_owned()).unwrap_or_default()
            }
            None => String::new(),
        }
    }

    /// Waits up to `deadline` for the process to exit.
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<ExitStatus> {
        let mut status = None;
        wait_until(deadline, || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        status
    }
}

/// The inode numbers process `pid` holds inotify watches on (read from
/// `/proc/<pid>/fdinfo`), so a test can wait until the watcher sees into a new directory.
/// Empty if the process is gone.
pub fn inotify_watched_inodes(pid: u32) -> Vec<u64> {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut inodes = Vec::new();
    for fd in fds.filter_map(Result::ok) {
        let is_inotify =
            fs::read_link(fd.path()).is_ok_and(|l| l == Path::new("anon_inode:inotify"));
        if !is_inotify {
            continue;
        }
        let info = fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.file_name().display()))
            .unwrap_or_default();
        // "inotify wd:3 ino:a40008 sdev:fe00000 mask:3ee ..."; ino is hexadecimal.
        inodes.extend(
            info.lines()
                .filter(|l| l.starts_with("inotify "))
                .flat_map(str::split_whitespace)
                .filter_map(|field| field.strip_prefix("ino:"))
                .filter_map(|hex| u64::from_str_radix(hex, 16).ok()),
        );
    }
    inodes
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Fails the test, naming what is missing, unless `unshare ARGS true` succeeds here. The
/// suite runs as root with util-linux by contract (README "Build, run, test"): a namespace
/// that cannot be made is a broken environment, never a reason to pass having proved nothing.
#[track_caller]
pub fn need_unshare(args: &[&str], what: &str) {
    let why = match std::process::Command::new("unshare").args(args).arg("true").output() {
        Ok(out) if out.status.success() => return,
        Ok(out) => format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()),
        Err(e) => e.to_string(),
    };
    panic!(
        "this test needs {what} (`unshare {}`), which cannot be made here ({why}); the suite \
         runs as root with util-linux (README \"Build, run, test\")",
        args.join(" ")
    );
}

// ------------------------------------------------------------------------------------------
// Waiting

/// Polls `cond` every 10 ms until it holds (true) or `deadline` has passed (false). The
/// only place in the tests that sleeps.
pub fn wait_until(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ------------------------------------------------------------------------------------------
// Trees deeper than PATH_MAX: fd-relative only (std and walkdir use whole paths)

fn open_dir_at(dir: impl std::os::fd::AsFd, name: &str) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Builds `root/d/d/.../d/leaf` with `depth` directories named `d`, fd-relative, so the
/// path of `leaf` is far longer than PATH_MAX.
pub fn build_chain(root: &Path, depth: usize, leaf: &[u8]) {
    let mut fd =
        open_dir_at(CWD, root.to_str().expect("utf-8 temp path")).expect("open chain root");
    for _ in 0..depth {
        rustix::fs::mkdirat(&fd, "d", Mode::from_raw_mode(0o755)).expect("mkdirat");
        fd = open_dir_at(&fd, "d").expect("openat d");
    }
    let file = rustix::fs::openat(
        &fd,
        "leaf",
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )
    .expect("create leaf");
    io::Write::write_all(&mut File::from(file), leaf).expect("write leaf");
}

fn entries_at(dir: &OwnedFd) -> io::Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    for e in rustix::fs::Dir::read_from(dir)? {
        let name = e?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Compares two trees that may be deeper than PATH_MAX, fd-relative, level by level: same
/// names, and per entry the same type, mode, mtime (ns), owner, size and file bytes. Each
/// directory may hold at most one subdirectory (a chain, like [`build_chain`] makes).
/// Returns the depth reached.
pub fn compare_chain(src: &Path, dst: &Path) -> Result<usize, String> {
    let open_root = |p: &Path| {
        open_dir_at(CWD, p.to_str().unwrap_or_default())
            .map_err(|e| format!("open {}: {e}", p.display()))
    };
    let (mut s, mut d) = (open_root(src)?, open_root(dst)?);
    // Root attributes first (like the walkdir comparer).
    let stat_fd = |fd: &OwnedFd| rustix::fs::fstat(fd).map_err(|e| e.to_string());
    let (rs, rd) = (stat_fd(&s)?, stat_fd(&d)?);
    if (rs.st_mode & 0o7777, rs.st_mtime, rs.st_mtime_nsec, rs.st_uid)
        != (rd.st_mode & 0o7777, rd.st_mtime, rd.st_mtime_nsec, rd.st_uid)
    {
        return Err("root attributes differ".into());
    }
    let mut depth = 0;
    loop {
        let where_ =
            |name: &[u8]| format!("depth {depth}, name {}", escape(OsStr::from_bytes(name)));
        let (ns, nd) = (
            entries_at(&s).map_err(|e| e.to_string())?,
            entries_at(&d).map_err(|e| e.to_string())?,
        );
        if ns != nd {
            return Err(format!(
                "depth {depth}: names differ: source {:?} / replica {:?}",
                ns.iter().map(|n| escape(OsStr::from_bytes(n))).collect::<Vec<_>>(),
                nd.iter().map(|n| escape(OsStr::from_bytes(n))).collect::<Vec<_>>()
            ));
        }
        let mut next = None;
        for name in &ns {
            let name_os = OsStr::from_bytes(name);
            let st = |fd: &OwnedFd| {
                rustix::fs::statat(fd, name_os, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| format!("{}: {e}", where_(name)))
            };
            let (a, b) = (st(&s)?, st(&d)?);
            let key = |x: &rustix::fs::Stat| {
                (x.st_mode, x.st_mtime, x.st_mtime_nsec, x.st_uid, x.st_gid, x.st_size)
            };
            if key(&a) != key(&b) {
                return Err(format!(
                    "{}: (mode, mtime, ns, uid, gid, size) {:?} / {:?}",
                    where_(name),
                    key(&a),
                    key(&b)
                ));
            }
            match rustix::fs::FileType::from_raw_mode(a.st_mode) {
                rustix::fs::FileType::Directory => {
                    if next.is_some() {
                        return Err(format!("{}: more than one subdirectory", where_(name)));
                    }
                    let name_str = std::str::from_utf8(name).map_err(|e| e.to_string())?.to_owned();
                    next = Some(name_str);
                }
                rustix::fs::FileType::RegularFile => {
                    let read = |fd: &OwnedFd| -> Result<Vec<u8>, String> {
                        let f = rustix::fs::openat(
                            fd,
                            name_os,
                            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                            Mode::empty(),
                        )
                        .map_err(|e| e.to_string())?;
                        let mut v = Vec::new();
                        File::from(f).read_to_end(&mut v).map_err(|e| e.to_string())?;
                        Ok(v)
                    };
                    if read(&s)? != read(&d)? {
                        return Err(format!("{}: content differs", where_(name)));
                    }
                }
                _ => {}
            }
        }
        match next {
            None => return Ok(depth),
            Some(name) => {
                s = open_dir_at(&s, &name)
                    .map_err(|e| format!("open {}: {e}", where_(name.as_bytes())))?;
                d = open_dir_at(&d, &name)
                    .map_err(|e| format!("open {}: {e}", where_(name.as_bytes())))?;
                depth += 1;
            }
        }
    }
}

/// Removes a chain tree (see [`build_chain`]) bottom-up without recursion or long paths,
/// leaving `root` itself (std's `remove_dir_all` recurses once per level). Best effort.
pub fn remove_chain(root: &Path) {
    let Ok(top) = open_dir_at(CWD, root.to_str().unwrap_or_default()) else {
        return;
    };
    let mut stack = vec![top];
    // Descend, remembering every level (RLIMIT_NOFILE here is 20000; depth is 10000).
    while let Some(fd) = stack.last() {
        match open_dir_at(fd, "d") {
            Ok(next) => stack.push(next),
            Err(_) => break,
        }
    }
    while let Some(fd) = stack.pop() {
        for name in entries_at(&fd).unwrap_or_default() {
            let name = OsStr::from_bytes(&name);
            if rustix::fs::unlinkat(&fd, name, AtFlags::empty()).is_err() {
                let _ = rustix::fs::unlinkat(&fd, name, AtFlags::REMOVEDIR);
            }
        }
    }
}

/// Says, visibly, that a test could not run here and why. Written straight to the
/// process's stderr: libtest captures `println!`/`eprintln!` of passing tests, and a skip
/// hidden that way would read as a pass.
pub fn skip(test: &str, why: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "SKIP {test}: {why}");
}

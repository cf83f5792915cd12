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
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rustix::fs::{AtFlags, CWD, Mode, OFlags, SeekFrom, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;
use tempfile::TempDir;
use walkdir::WalkDir;

pub mod bucket;
pub mod garage;
pub mod garage_cluster;
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
    /// `(st_dev, st_ino)`: names with the same key are one file (a link group).
    inode: (u64, u64),
    nlink: u64,
    /// `st_blocks`, in 512-byte units whatever the filesystem's block size.
    blocks: u64,
    /// Empty when the caller asked not to read them.
    xattrs: Xattrs,
}

impl Node {
    /// Reads what `md` (the entry's `lstat`, or `stat` for a root, which is resolved)
    /// says, the link target, and — if `xattrs` — every extended attribute, following
    /// `path` only if `follow` (so a symlink's own attributes are read, never its target's).
    fn read(path: &Path, md: &Metadata, follow: bool, xattrs: bool) -> io::Result<Node> {
        let kind = Kind::of(md);
        let target = match kind {
            Kind::Symlink => Some(fs::read_link(path)?.into_os_string()),
            _ => None,
        };
        let xattrs = if xattrs { read_xattrs(path, follow)? } else { Xattrs::default() };
        Ok(Node {
            kind,
            mode: md.mode() & 0o7777,
            size: md.size(),
            mtime: (md.mtime(), md.mtime_nsec()),
            uid: md.uid(),
            gid: md.gid(),
            rdev: md.rdev(),
            target,
            inode: (md.dev(), md.ino()),
            nlink: md.nlink(),
            blocks: md.blocks(),
            xattrs,
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
        if self.kind == Kind::File {
            let _ = write!(s, " alloc={}", self.blocks * 512);
            if self.nlink > 1 {
                let _ = write!(s, " nlink={} ino={}", self.nlink, self.inode.1);
            }
        }
        if !self.xattrs.0.is_empty() {
            let names: Vec<String> = self.xattrs.0.keys().map(|n| escape(n)).collect();
            let _ = write!(s, " xattrs=[{}]", names.join(","));
        }
        s
    }
}

fn fmt_mtime(t: (i64, i64)) -> String {
    format!("{}.{:09}", t.0, t.1)
}

// ------------------------------------------------------------------------------------------
// Extended attributes and POSIX ACLs

/// The xattr holding a POSIX access ACL (files and directories).
pub const ACL_ACCESS: &str = "system.posix_acl_access";

/// The xattr holding a directory's POSIX default ACL (inherited by new entries).
pub const ACL_DEFAULT: &str = "system.posix_acl_default";

/// True for the xattrs that are POSIX ACLs (reported as [`What::Acl`], not [`What::Xattr`]).
pub fn is_acl(name: &OsStr) -> bool {
    name == ACL_ACCESS || name == ACL_DEFAULT
}

/// Every extended attribute of one entry, by name, values byte for byte. Its `Debug` form
/// prints names and values escaped (ACLs decoded), so snapshots stay readable.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Xattrs(pub BTreeMap<OsString, Vec<u8>>);

impl Xattrs {
    /// The value of `name`, if the entry has it.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.0.get(OsStr::new(name)).map(Vec::as_slice)
    }
}

impl fmt::Debug for Xattrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (name, value) in &self.0 {
            m.key(&format_args!("{}", escape(name)))
                .value(&format_args!("{}", show_xattr_value(name, value)));
        }
        m.finish()
    }
}

/// Runs a size query and then the read it sized, again if the value grew in between.
fn sized_read(
    query: impl Fn() -> rustix::io::Result<usize>,
    read: impl Fn(&mut [u8]) -> rustix::io::Result<usize>,
) -> rustix::io::Result<Vec<u8>> {
    for _ in 0..16 {
        let n = query()?;
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; n];
        match read(&mut buf) {
            Ok(len) => {
                buf.truncate(len);
                return Ok(buf);
            }
            Err(Errno::RANGE) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Errno::RANGE)
}

/// Every xattr of `path` the process can read: `llistxattr`/`lgetxattr`, so a symlink's
/// own attributes, unless `follow` (a root, which the comparer resolves). A filesystem
/// without xattr support has none; an attribute removed between list and read is passed
/// over (the trees are meant to be quiescent; this only avoids a spurious failure).
pub fn read_xattrs(path: &Path, follow: bool) -> io::Result<Xattrs> {
    let names = sized_read(
        || {
            if follow {
                rustix::fs::listxattr_query(path)
            } else {
                rustix::fs::llistxattr_query(path)
            }
        },
        |buf| {
            if follow {
                rustix::fs::listxattr(path, buf)
            } else {
                rustix::fs::llistxattr(path, buf)
            }
        },
    );
    let names = match names {
        Ok(names) => names,
        Err(Errno::NOTSUP) => return Ok(Xattrs::default()),
        Err(e) => return Err(io::Error::new(e.kind(), format!("listxattr: {e}"))),
    };
    let mut out = Xattrs::default();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = OsStr::from_bytes(name);
        let value = sized_read(
            || {
                if follow {
                    rustix::fs::getxattr_query(path, name)
                } else {
                    rustix::fs::lgetxattr_query(path, name)
                }
            },
            |buf| {
                if follow {
                    rustix::fs::getxattr(path, name, buf)
                } else {
                    rustix::fs::lgetxattr(path, name, buf)
                }
            },
        );
        match value {
            Ok(value) => {
                out.0.insert(name.to_owned(), value);
            }
            Err(Errno::NODATA) => {}
            Err(e) => {
                return Err(io::Error::new(e.kind(), format!("getxattr {}: {e}", escape(name))));
            }
        }
    }
    Ok(out)
}

/// A readable rendering of one xattr value: a POSIX ACL decoded (`u::rw-,u:1234:r--,...`),
/// printable text quoted and escaped, anything else in hex; long values are cut.
pub fn show_xattr_value(name: &OsStr, value: &[u8]) -> String {
    const MAX: usize = 64;
    if is_acl(name)
        && let Some(acl) = decode_acl(value)
    {
        return acl;
    }
    let cut = &value[..value.len().min(MAX)];
    let mut s = match std::str::from_utf8(cut) {
        Ok(text) if !text.chars().any(char::is_control) => format!("{:?}", text),
        _ => {
            let mut hex = String::from("0x");
            for b in cut {
                let _ = write!(hex, "{b:02x}");
            }
            hex
        }
    };
    if value.len() > MAX {
        let _ = write!(s, "... ({} bytes)", value.len());
    }
    s
}

/// Decodes the kernel's POSIX ACL xattr format (a little-endian `u32` version 2, then
/// `(u16 tag, u16 perm, u32 id)` entries) in `getfacl`'s short form; `None` if malformed.
pub fn decode_acl(value: &[u8]) -> Option<String> {
    let (version, entries) = value.split_first_chunk::<4>()?;
    if u32::from_le_bytes(*version) != 2 || entries.len() % 8 != 0 {
        return None;
    }
    let mut out = Vec::new();
    for e in entries.chunks_exact(8) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let perm = u16::from_le_bytes([e[2], e[3]]);
        let id = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
        let (kind, qualifier) = match tag {
            0x01 => ("u", None),
            0x02 => ("u", Some(id)),
            0x04 => ("g", None),
            0x08 => ("g", Some(id)),
            0x10 => ("m", None),
            0x20 => ("o", None),
            _ => return None,
        };
        let rwx: String = [(4, 'r'), (2, 'w'), (1, 'x')]
            .iter()
            .map(|&(bit, c)| if perm & bit != 0 { c } else { '-' })
            .collect();
        out.push(match qualifier {
            Some(id) => format!("{kind}:{id}:{rwx}"),
            None => format!("{kind}::{rwx}"),
        });
    }
    Some(out.join(","))
}

/// True if the filesystem holding `dir` stores `user.*` xattrs on regular files (tmpfs
/// before Linux 6.6 and some network filesystems do not). Probes with a scratch file.
pub fn user_xattrs_supported(dir: &Path) -> bool {
    let probe = tempfile::Builder::new()
        .prefix(".xattr-probe.")
        .tempfile_in(dir)
        .unwrap_or_else(|e| panic!("create a probe file in {}: {e}", dir.display()));
    rustix::fs::fsetxattr(probe.as_file(), "user.replicad.probe", b"1", XattrFlags::empty()).is_ok()
}

/// Runs a command-line tool, panicking with its output (and the Debian package that
/// brings it, since CI installs it) unless it succeeds.
#[track_caller]
pub fn run_tool(program: &str, package: &str, args: &[&OsStr]) {
    let out = std::process::Command::new(program).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run {program} ({e}); it comes with the Debian package {package}")
    });
    assert!(
        out.status.success(),
        "{program} {:?} failed: {}: {}",
        args,
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
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
    /// A regular file's link group (the other names in the tree that share its inode)
    /// differs: SOURCE's links were split in REPLICA, or separate files were joined.
    Links,
    /// An extended attribute (any namespace but the POSIX ACLs) is missing, extra or has
    /// another value; the description names it.
    Xattr,
    /// A POSIX ACL (`system.posix_acl_access` or `system.posix_acl_default`) differs.
    Acl,
    /// A regular file takes more disk space in REPLICA than in SOURCE (plus
    /// [`BLOCKS_SLACK`]): a sparse file was copied densely.
    Blocks,
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

/// How strict the comparer is. The default is strictest; each `skip_*` is for a test
/// whose run is told (or whose filesystem forces it) to leave that property alone.
pub struct CompareOptions<'a> {
    /// Do not compare uid/gid.
    pub skip_owner: bool,
    /// Do not compare link groups (runs with `--no-hard-links`).
    pub skip_links: bool,
    /// Do not read or compare xattrs, POSIX ACLs included (runs with `--no-xattrs`, or a
    /// REPLICA filesystem that cannot store them).
    pub skip_xattrs: bool,
    /// Do not compare allocated blocks.
    pub skip_blocks: bool,
    /// Relative paths (never the root) to ignore on both sides; an ignored directory
    /// is ignored with everything under it.
    pub exclude: &'a dyn Fn(&Path) -> bool,
}

impl Default for CompareOptions<'_> {
    fn default() -> Self {
        CompareOptions {
            skip_owner: false,
            skip_links: false,
            skip_xattrs: false,
            skip_blocks: false,
            exclude: &exclude_nothing,
        }
    }
}

/// How many bytes more a regular file may take on disk in REPLICA than in SOURCE before
/// [`What::Blocks`] is reported. Not zero because two copies of the same extents need
/// not cost the same: ext4 spends a 4 KiB extent-tree block once a file has more than
/// four extents, XFS and btrfs round differently, and a filesystem with 64 KiB blocks
/// allocates a whole block for one byte. Small enough that densely copying any hole of
/// 64 KiB or more (the 10 GiB sparse file of the tests, or a 1 MiB hole) is caught.
pub const BLOCKS_SLACK: u64 = 64 * 1024;

/// Compares two trees strictly: same paths, types, bytes, link targets, modes, mtimes to
/// the nanosecond, owners, device numbers, link groups (regular files sharing an inode in
/// one tree share one in the other), xattrs in every namespace the process can read,
/// POSIX ACLs, and no more allocated blocks in REPLICA than SOURCE has (plus
/// [`BLOCKS_SLACK`]), roots included.
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
/// paths, reading xattrs only if `xattrs`; comparer-side read errors are returned with
/// their paths.
fn list(
    root: &Path,
    exclude: &dyn Fn(&Path) -> bool,
    xattrs: bool,
) -> (Listing, Vec<(PathBuf, String)>) {
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
                let is_root = e.depth() == 0;
                let md =
                    if is_root { fs::metadata(e.path()) } else { fs::symlink_metadata(e.path()) };
                match md.and_then(|md| Node::read(e.path(), &md, is_root, xattrs)) {
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

/// The link groups of one tree: for each inode, the names of the regular files in `names`
/// that are that inode. A name whose other links lie outside the tree (or are excluded,
/// or are no regular file on the other side) is alone in its group.
fn link_groups<'a>(
    nodes: &'a Listing,
    names: &[&'a PathBuf],
) -> BTreeMap<&'a Path, std::rc::Rc<Vec<&'a Path>>> {
    let mut by_inode: BTreeMap<(u64, u64), Vec<&Path>> = BTreeMap::new();
    for rel in names {
        by_inode.entry(nodes[*rel].inode).or_default().push(rel.as_path());
    }
    let mut out = BTreeMap::new();
    for group in by_inode.into_values() {
        let group = std::rc::Rc::new(group);
        for name in group.iter() {
            out.insert(*name, group.clone());
        }
    }
    out
}

/// "linked with b, c" (the group's other names), or "alone".
fn describe_group(rel: &Path, group: &[&Path]) -> String {
    const MAX: usize = 8;
    let others: Vec<String> =
        group.iter().filter(|n| **n != rel).take(MAX).map(|n| show(n)).collect();
    let more = (group.len() - 1).saturating_sub(MAX);
    match (others.is_empty(), more) {
        (true, _) => "alone".into(),
        (false, 0) => format!("linked with {}", others.join(", ")),
        (false, more) => format!("linked with {} and {more} more", others.join(", ")),
    }
}

/// One side of an xattr difference: `name=value`, or `no name`.
fn describe_xattr(name: &OsStr, value: Option<&Vec<u8>>) -> String {
    match value {
        Some(v) => format!("{}={}", escape(name), show_xattr_value(name, v)),
        None => format!("no {}", escape(name)),
    }
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
    let (src_nodes, src_errors) = list(src, opts.exclude, !opts.skip_xattrs);
    let (dst_nodes, dst_errors) = list(dst, opts.exclude, !opts.skip_xattrs);
    // Link groups are compared over the names that are regular files on both sides: a
    // name missing (or of another type) on one side is reported as such, not again as a
    // link difference of every other name in its group.
    let files: Vec<&PathBuf> = src_nodes
        .iter()
        .filter(|(rel, s)| {
            s.kind == Kind::File && dst_nodes.get(*rel).is_some_and(|d| d.kind == Kind::File)
        })
        .map(|(rel, _)| rel)
        .collect();
    let (src_groups, dst_groups) = if opts.skip_links {
        (BTreeMap::new(), BTreeMap::new())
    } else {
        (link_groups(&src_nodes, &files), link_groups(&dst_nodes, &files))
    };
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
        if s.kind == Kind::File
            && !opts.skip_blocks
            && d.blocks * 512 > s.blocks * 512 + BLOCKS_SLACK
        {
            let alloc = |n: &Node| format!("{} bytes allocated (size {})", n.blocks * 512, n.size);
            push(rel, What::Blocks, alloc(s), alloc(d));
        }
        if let (Some(sg), Some(dg)) = (src_groups.get(rel.as_path()), dst_groups.get(rel.as_path()))
            && sg != dg
        {
            push(rel, What::Links, describe_group(rel, sg), describe_group(rel, dg));
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
        // Both maps are empty when xattrs were not read (skip_xattrs).
        let names: std::collections::BTreeSet<&OsString> =
            s.xattrs.0.keys().chain(d.xattrs.0.keys()).collect();
        for name in names {
            let (sv, dv) = (s.xattrs.0.get(name), d.xattrs.0.get(name));
            if sv != dv {
                let what = if is_acl(name) { What::Acl } else { What::Xattr };
                push(rel, what, describe_xattr(name, sv), describe_xattr(name, dv));
            }
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

/// The offset of the first byte at which two regular files differ (the shorter one's
/// length if one is a prefix of the other), if any.
///
/// Sparse-aware, so a 10 GiB file holding a few MiB is compared in milliseconds: where
/// `SEEK_DATA` says neither file holds data both read as zeros and are skipped; every
/// range where either holds data is read from both. `SEEK_DATA` may report a hole as data
/// (filesystems without hole support say "all data"), which only costs reading; it never
/// reports data as a hole, so nothing that differs is skipped.
fn first_difference(a: &Path, b: &Path) -> io::Result<Option<u64>> {
    let (fa, fb) = (File::open(a)?, File::open(b)?);
    let (la, lb) = (fa.metadata()?.len(), fb.metadata()?.len());
    let len = la.min(lb);
    let mut pos = 0;
    while pos < len {
        // Before `data` both files are in a hole.
        let data = next_data(&fa, pos, len).min(next_data(&fb, pos, len));
        if data >= len {
            break;
        }
        // From `data` on, compare until both are in a hole again.
        let mut end = next_hole(&fa, data, len).max(next_hole(&fb, data, len));
        if end <= data {
            end = len; // a filesystem that answers oddly: read the rest
        }
        if let Some(at) = first_difference_in(&fa, &fb, data, end)? {
            return Ok(Some(at));
        }
        pos = end;
    }
    Ok(if la == lb { None } else { Some(len) })
}

/// `lseek(SEEK_DATA)` from `pos`, within `len`; `len` if no data follows, `pos` (read
/// it) if the filesystem cannot tell.
fn next_data(f: &File, pos: u64, len: u64) -> u64 {
    match rustix::fs::seek(f.as_fd(), SeekFrom::Data(pos)) {
        Ok(at) => at.min(len),
        Err(Errno::NXIO) => len,
        Err(_) => pos,
    }
}

/// `lseek(SEEK_HOLE)` from `pos`, within `len`; `len` (read everything) if the
/// filesystem cannot tell.
fn next_hole(f: &File, pos: u64, len: u64) -> u64 {
    rustix::fs::seek(f.as_fd(), SeekFrom::Hole(pos)).map_or(len, |at| at.min(len))
}

/// Reads `[from, to)` of both files side by side; the offset of the first differing byte.
fn first_difference_in(a: &File, b: &File, from: u64, to: u64) -> io::Result<Option<u64>> {
    const CHUNK: u64 = 256 * 1024;
    let (mut ba, mut bb) = (vec![0u8; CHUNK as usize], vec![0u8; CHUNK as usize]);
    let mut offset = from;
    while offset < to {
        let n = CHUNK.min(to - offset) as usize;
        let (na, nb) =
            (read_at_full(a, &mut ba[..n], offset)?, read_at_full(b, &mut bb[..n], offset)?);
        // Slice equality is a memcmp; only a differing chunk is searched byte by byte.
        if ba[..na.min(nb)] != bb[..na.min(nb)] {
            let m = na.min(nb);
            let i = ba[..m].iter().zip(&bb[..m]).position(|(x, y)| x != y).unwrap_or(0);
            return Ok(Some(offset + i as u64));
        }
        if na != nb || na < n {
            // Shrunk while being compared: it differs where the shorter one ends.
            return Ok(Some(offset + na.min(nb) as u64));
        }
        offset += n as u64;
    }
    Ok(None)
}

/// `pread`s into `buf` until it is full or the file ends.
fn read_at_full(f: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
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
    /// Every extended attribute, POSIX ACLs included.
    pub xattrs: Xattrs,
}

/// A snapshot of the tree at `root` (root included, as `""`). Panics on read errors.
pub fn snapshot(root: &Path) -> Vec<SnapEntry> {
    let mut out = Vec::new();
    for entry in WalkDir::new(root).follow_links(false).sort_by_file_name() {
        let e = entry.unwrap_or_else(|err| panic!("snapshot of {}: {err}", root.display()));
        let md =
            if e.depth() == 0 { fs::metadata(e.path()) } else { fs::symlink_metadata(e.path()) };
        let md = md.unwrap_or_else(|err| panic!("snapshot: lstat {}: {err}", e.path().display()));
        let node = Node::read(e.path(), &md, e.depth() == 0, true)
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
            xattrs: node.xattrs,
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

impl Dir {
    /// Makes `rel` another name of the existing `existing` (a hard link; parents created).
    pub fn hard_link(&self, rel: impl AsRef<Path>, existing: impl AsRef<Path>) -> &Self {
        let rel = rel.as_ref();
        self.parents(rel);
        fs::hard_link(self.join(&existing), self.join(rel)).unwrap_or_else(|e| {
            panic!("ln {} {}: {e}", existing.as_ref().display(), rel.display())
        });
        self
    }

    /// Sets the xattr `name` of `rel` to `value` (never following a symlink, so on a
    /// symlink it is the link's own attribute: `trusted.*` as root).
    pub fn set_xattr(&self, rel: impl AsRef<Path>, name: &str, value: impl AsRef<[u8]>) -> &Self {
        let p = self.join(rel);
        rustix::fs::lsetxattr(&p, name, value.as_ref(), XattrFlags::empty())
            .unwrap_or_else(|e| panic!("setxattr {name} on {}: {e}", p.display()));
        self
    }

    /// Removes the xattr `name` of `rel` (never following a symlink); it must exist.
    pub fn remove_xattr(&self, rel: impl AsRef<Path>, name: &str) -> &Self {
        let p = self.join(rel);
        rustix::fs::lremovexattr(&p, name)
            .unwrap_or_else(|e| panic!("removexattr {name} on {}: {e}", p.display()));
        self
    }

    /// Every xattr of `rel` (never following a symlink), ACLs included.
    pub fn xattrs(&self, rel: impl AsRef<Path>) -> Xattrs {
        let p = self.join(rel);
        read_xattrs(&p, false).unwrap_or_else(|e| panic!("xattrs of {}: {e}", p.display()))
    }

    /// Runs the real `setfacl ARGS... rel` (`-m u:1234:r`, `-d -m u:1234:rx`, `-x u:1234`,
    /// `-b`, `-k`), so ACLs are made the way an administrator makes them.
    pub fn setfacl(&self, rel: impl AsRef<Path>, args: &[&str]) -> &Self {
        let p = self.join(rel);
        let mut argv: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        argv.push(p.as_os_str());
        run_tool("setfacl", "acl", &argv);
        self
    }

    /// Runs the real `setcap CAPS rel` (`cap_net_raw+ep`; `-r` removes them).
    pub fn setcap(&self, rel: impl AsRef<Path>, caps: &str) -> &Self {
        let p = self.join(rel);
        run_tool("setcap", "libcap2-bin", &[OsStr::new(caps), p.as_os_str()]);
        self
    }

    /// Writes a sparse regular file of `len` bytes holding `segments` (offset, bytes) and
    /// zeros (holes, where the filesystem has them) everywhere else.
    pub fn sparse(&self, rel: impl AsRef<Path>, len: u64, segments: &[(u64, &[u8])]) -> &Self {
        let rel = rel.as_ref();
        self.parents(rel);
        let p = self.join(rel);
        let f = File::create(&p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
        f.set_len(len).unwrap_or_else(|e| panic!("truncate {}: {e}", p.display()));
        for (offset, bytes) in segments {
            f.write_all_at(bytes, *offset)
                .unwrap_or_else(|e| panic!("write {} at {offset}: {e}", p.display()));
        }
        self
    }

    /// The bytes `rel` takes on disk (`st_blocks` × 512).
    pub fn allocated(&self, rel: impl AsRef<Path>) -> u64 {
        self.lstat(rel).blocks() * 512
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
const OWN_ENV: [&str; 6] =
    ["RUST_LOG", "NOTIFY_SOCKET", "WATCHDOG_USEC", "STATE_DIRECTORY", "XDG_STATE_HOME", "HOME"];

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

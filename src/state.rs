//! What one run leaves for the next: the mark of the last clean full pass (the xattr
//! horizon, see `engine::horizon`), so that a `--once` from cron or a restarted service
//! need not read every extended attribute again when nothing moved since.
//!
//! One small file per SOURCE/REPLICA pair in the state directory (`--state-dir`, else
//! systemd's `$STATE_DIRECTORY`, else `$XDG_STATE_HOME/replicad`, else
//! `~/.local/state/replicad`). A mark is only believed when everything that decided what
//! the marking pass compared is still the same — the fingerprint: both roots (path, device,
//! inode), the excludes, the options that change what is compared, the user, the version —
//! and when the file is ours (owned by this user, writable by no one else). A lost, stale
//! or foreign file only costs one slower pass; it can never make a pass skip work it must do.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

/// Format of the file; a different one is ignored (and overwritten).
const FORMAT: u32 = 1;

/// What a clean pass compares of attributes. Change it whenever a pass starts comparing
/// more (another namespace, another kind of entry): marks of older binaries then lapse.
const COMPARES: &str =
    "xattrs: user trusted security system.posix_acl_*; files dirs symlinks fifos devices";

/// The clocks when a clean full pass started, and the boot they belong to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// Wall clock, ns since the epoch.
    pub wall_ns: i64,
    /// `CLOCK_BOOTTIME`, ns: with `wall_ns`, shows whether the wall clock was stepped since.
    pub boot_ns: i64,
    /// The kernel's boot id: `boot_ns` means nothing across a reboot.
    pub boot_id: String,
    /// The mounts on and under both roots when the pass started (`mount_layout`): a mount
    /// or an unmount there pairs names with other inodes and moves no ctime.
    #[serde(default)]
    pub layout: String,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    format: u32,
    fingerprint: String,
    mark: Mark,
}

/// The state file of one SOURCE/REPLICA pair under one configuration.
#[derive(Clone, Debug)]
pub struct StateFile {
    path: PathBuf,
    fingerprint: String,
}

/// What makes two runs compare the same things, fed to [`StateFile::new`].
pub struct Fingerprint<'a> {
    /// SOURCE, canonical.
    pub source: &'a Path,
    /// REPLICA, canonical.
    pub replica: &'a Path,
    /// `--exclude` patterns, as given.
    pub exclude_patterns: &'a [String],
    /// Options that change what a pass compares, by name (`"xattrs"`, `"x"`, …).
    pub options: &'a [(&'static str, bool)],
}

impl StateFile {
    /// The state file for this pair in `dir` (created 0700 if missing). `None` when a root
    /// cannot be looked at (REPLICA not there yet: nothing to remember).
    pub fn new(dir: &Path, f: &Fingerprint<'_>) -> io::Result<Option<StateFile>> {
        let (Ok(source), Ok(replica)) = (fs::metadata(f.source), fs::metadata(f.replica)) else {
            return Ok(None);
        };
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        let mut pair = Md5::new();
        for root in [f.source, f.replica] {
            pair.update(root.as_os_str().as_encoded_bytes());
            pair.update([0]);
        }
        let mut all = pair.clone();
        for (dev, ino) in [(source.dev(), source.ino()), (replica.dev(), replica.ino())] {
            all.update(dev.to_le_bytes());
            all.update(ino.to_le_bytes());
        }
        all.update(COMPARES.as_bytes());
        for pattern in f.exclude_patterns {
            // Length first: a pattern may hold any byte, a separator could be forged.
            all.update((pattern.len() as u64).to_le_bytes());
            all.update(pattern.as_bytes());
        }
        for (name, on) in f.options {
            all.update(name.as_bytes());
            all.update([u8::from(*on)]);
        }
        all.update(rustix::process::geteuid().as_raw().to_le_bytes());
        // What the process may see and set (trusted.* is invisible without CAP_SYS_ADMIN).
        let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
        let caps = status.lines().find(|l| l.starts_with("CapEff:")).unwrap_or_default();
        all.update(caps.as_bytes());
        all.update(env!("CARGO_PKG_VERSION").as_bytes());
        let path = dir.join(format!("horizon-{}.json", hex(&pair.finalize())));
        Ok(Some(StateFile { path, fingerprint: hex(&all.finalize()) }))
    }

    /// Where the mark is kept.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The mark left by an earlier run under the same fingerprint, if the file is ours.
    pub fn load(&self) -> Option<Mark> {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&self.path)
            .ok()?;
        let meta = file.metadata().ok()?;
        let ours = meta.is_file()
            && meta.uid() == rustix::process::geteuid().as_raw()
            && meta.mode() & 0o022 == 0;
        if !ours {
            return None;
        }
        let stored: Stored = serde_json::from_reader(io::BufReader::new(file.take(4096))).ok()?;
        (stored.format == FORMAT && stored.fingerprint == self.fingerprint).then_some(stored.mark)
    }

    /// Replaces the mark (temp file + rename: a crash leaves the old one or the new one).
    pub fn save(&self, mark: &Mark) -> io::Result<()> {
        let stored =
            Stored { format: FORMAT, fingerprint: self.fingerprint.clone(), mark: mark.clone() };
        let text = serde_json::to_vec(&stored).map_err(io::Error::other)?;
        // Unique per process and call: two processes (PID 1 of two containers sharing the
        // directory) never write or remove each other's temporary file.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let temp = self.path.with_extension(format!("tmp{}-{nanos}", std::process::id()));
        let mut file: File = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&temp)?;
        let written = file.write_all(&text).and_then(|()| fs::rename(&temp, &self.path));
        if written.is_err() {
            let _ = fs::remove_file(&temp);
        }
        written
    }
}

/// The state directory when none is given: systemd's, else the XDG one.
pub fn default_dir() -> Option<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dirs) = var("STATE_DIRECTORY") {
        // systemd lists one directory per `StateDirectory=` entry, colon-separated.
        let first = dirs.as_os_str().as_bytes().split(|b| *b == b':').next()?;
        return Some(PathBuf::from(OsStr::from_bytes(first)));
    }
    var("XDG_STATE_HOME")
        .filter(|p| p.is_absolute())
        .or_else(|| var("HOME").map(|h| h.join(".local/state")))
        .map(|p| p.join("replicad"))
}

/// The wall clock and the boot clock now, for a [`Mark`].
pub fn now(boot_id: &str) -> Mark {
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    let boot = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    let boot_ns = boot.tv_sec.saturating_mul(1_000_000_000).saturating_add(boot.tv_nsec);
    Mark { wall_ns: wall, boot_ns, boot_id: boot_id.to_owned(), layout: String::new() }
}

/// The mounts whose mount point is one of `roots` or lies below one (from
/// /proc/self/mountinfo: id, parent, device, root, mount point), one per line.
pub fn mount_layout(roots: &[PathBuf]) -> String {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else { return "?".into() };
    // mountinfo writes space, tab, newline and backslash as \ooo.
    let unescape = |f: &str| {
        let b = f.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            let octal = (b[i] == b'\\' && i + 4 <= b.len())
                .then(|| std::str::from_utf8(&b[i + 1..i + 4]).ok())
                .flatten()
                .and_then(|digits| u8::from_str_radix(digits, 8).ok());
            match octal {
                Some(n) => {
                    out.push(n);
                    i += 4;
                }
                None => {
                    out.push(b[i]);
                    i += 1;
                }
            }
        }
        PathBuf::from(OsStr::from_bytes(&out))
    };
    let mut out = String::new();
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').take(5).collect();
        let Some(point) = fields.get(4) else { continue };
        let point = unescape(point);
        if roots.iter().any(|r| point.starts_with(r)) {
            out.push_str(&fields.join(" "));
            out.push_str(&format!(" {}\n", unique_mount_id(&point)));
        }
    }
    // The roots' own mounts by an id never reused (Linux 6.8+): a filesystem unmounted,
    // restored to an older image and mounted again keeps its device, inodes and mountinfo
    // line, and brings back old ctimes.
    for root in roots {
        out.push_str(&format!("root {}\n", unique_mount_id(root)));
    }
    out
}

/// `STATX_MNT_ID_UNIQUE` of `path` (0 where the kernel does not give it).
fn unique_mount_id(path: &Path) -> u64 {
    const STATX_MNT_ID_UNIQUE: u32 = 0x4000;
    let mask = rustix::fs::StatxFlags::from_bits_retain(STATX_MNT_ID_UNIQUE);
    match rustix::fs::statx(rustix::fs::CWD, path, rustix::fs::AtFlags::empty(), mask) {
        Ok(st) if st.stx_mask & STATX_MNT_ID_UNIQUE != 0 => st.stx_mnt_id,
        _ => 0,
    }
}

/// This boot's id (empty if the kernel does not say: then no mark survives the process).
pub fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

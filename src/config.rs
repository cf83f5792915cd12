//! `Config`: the validated configuration, built once from `cli::Args`. Canonical roots,
//! the safety checks of SPEC §2 (missing, not a directory, same directory, nesting — by
//! device and inode so symlinks and bind mounts cannot fool them), and compiled excludes.
//! Nothing past this module sees `Args`. Knows nothing of tokio.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ignore::gitignore::{Gitignore, GitignoreBuilder};

use crate::bucket::{BucketUrl, S3Settings};
use crate::cli::{Args, LogFormat};
use crate::error::Fatal;
use crate::relpath::RelPath;
use crate::state::{self, Fingerprint, StateFile};

/// Everything replicad needs to run, checked.
#[derive(Debug)]
pub struct Config {
    /// SOURCE, canonical (a symlinked root is resolved once, here).
    pub source: PathBuf,
    /// REPLICA, canonical (may not exist yet in `--dry-run`).
    pub replica: PathBuf,
    /// Time between full passes.
    pub interval: Duration,
    /// Quiet time before events are acted on.
    pub debounce: Duration,
    /// One pass, then exit.
    pub once: bool,
    /// Log actions, apply none.
    pub dry_run: bool,
    /// React to filesystem events.
    pub watch: bool,
    /// Compare MD5 when size and mtime agree.
    pub checksum: bool,
    /// Check each copy's MD5 against the source's.
    pub verify: bool,
    /// fdatasync each file before rename.
    pub fsync: bool,
    /// An empty SOURCE may empty REPLICA.
    pub allow_empty_source: bool,
    /// Parallel filesystem operations.
    pub jobs: usize,
    /// The log file, already opened for appending (so a bad path is refused before
    /// anything is created); `logging` takes it.
    pub log_file: Option<File>,
    /// Where the log file is, to open it again on SIGHUP (after logrotate moved it).
    pub log_path: Option<PathBuf>,
    /// Text or JSON lines.
    pub log_format: LogFormat,
    /// -v minus -q.
    pub verbosity: i8,
    /// Compiled `--exclude` patterns.
    pub excludes: Excludes,
    /// Whether owners are mirrored (root or CAP_CHOWN).
    pub chown: bool,
    /// (device, inode) of files replicad writes itself (the log file): never mirrored and
    /// never removed, wherever a mount makes them appear.
    pub own_files: Vec<(u64, u64)>,
    /// REPLICA did not exist: this run creates it (or, in a dry run, would).
    pub replica_created: bool,
    /// Names sharing an inode in SOURCE share one in REPLICA.
    pub hard_links: bool,
    /// Extended attributes and POSIX ACLs are mirrored.
    pub xattrs: bool,
    /// Other filesystems mounted inside SOURCE are not descended into.
    pub one_file_system: bool,
    /// Where the mark of the last clean pass is kept for the next run, if anywhere.
    pub state: Option<StateFile>,
    /// Where the status endpoint listens, if anywhere.
    pub status_addr: Option<crate::cli::StatusAddr>,
    /// One line per `REPLICAD_*` variable that is set but not read (logged at start).
    pub env_warnings: Vec<String>,
    /// REPLICA is `s3://BUCKET[/PREFIX]` (then `replica` holds the URL as given, for
    /// messages only), with the store's settings from the `AWS_*` variables.
    pub bucket: Option<(BucketUrl, S3Settings)>,
}

impl Config {
    /// Validates `args`. Creates REPLICA (with parents) only after every check passed, and
    /// never in `--dry-run`.
    pub fn from_args(args: Args) -> Result<Config, Fatal> {
        let source = check_source(&args.source)?;
        let bucket = check_bucket(&args)?;
        let replica = match &bucket {
            Some(_) => args.replica.clone(),
            None => check_replica(&args.replica, &source, &args.source)?,
        };
        let mut patterns = args.exclude.clone();
        if let Some(file) = &args.exclude_from {
            patterns.extend(read_exclude_file(file)?);
        }
        // REPLICAD_EXCLUDE splits on newlines; a file written on Windows leaves a '\r'.
        patterns.retain(|p| !p.trim().is_empty());
        let patterns: Vec<String> =
            patterns.into_iter().map(|p| p.trim_end_matches('\r').to_owned()).collect();
        let excludes = Excludes::new(&source, &patterns)?;
        if let Some(log) = &args.log_file {
            check_log_file(log, &source, &replica)?;
        }
        let log_file = args.log_file.as_deref().map(open_log_file).transpose()?;
        let own_files =
            log_file.iter().filter_map(|f| f.metadata().ok()).map(|m| (m.dev(), m.ino())).collect();
        let replica_created = bucket.is_none() && !replica.exists();
        if !args.dry_run && replica_created {
            fs::create_dir_all(&replica).map_err(|e| Fatal::Replica {
                path: args.replica.clone(),
                reason: format!("cannot create it: {e}"),
            })?;
        }
        let options = [
            ("xattrs", !args.no_xattrs),
            ("hard-links", !args.no_hard_links),
            ("one-file-system", args.one_file_system),
            ("owners", may_chown()),
        ];
        let fingerprint = Fingerprint {
            source: &source,
            replica: &replica,
            exclude_patterns: &patterns,
            options: &options,
        };
        let state = state_file(args.state_dir.as_deref(), &fingerprint, args.dry_run)?;
        let jobs = match args.jobs {
            Some(n) => usize::from(n),
            None => std::thread::available_parallelism().map_or(2, usize::from),
        };
        Ok(Config {
            source,
            replica,
            interval: args.interval,
            debounce: args.debounce,
            once: args.once || args.dry_run,
            dry_run: args.dry_run,
            watch: !args.no_watch,
            checksum: args.checksum,
            verify: args.verify,
            fsync: args.fsync,
            allow_empty_source: args.allow_empty_source,
            jobs,
            log_file,
            log_path: args.log_file.clone(),
            log_format: args.log_format,
            verbosity: clamp_verbosity(args.verbose, args.quiet),
            excludes,
            chown: may_chown(),
            own_files,
            replica_created,
            hard_links: !args.no_hard_links,
            xattrs: !args.no_xattrs,
            one_file_system: args.one_file_system,
            state,
            status_addr: args.status_addr,
            env_warnings: crate::cli::unknown_env_warnings(std::env::vars_os().map(|(k, _)| k)),
            bucket,
        })
    }
}

/// An `s3://` REPLICA, validated once: the URL and the `AWS_*` variables.
fn check_bucket(args: &Args) -> Result<Option<(BucketUrl, S3Settings)>, Fatal> {
    let fail =
        |reason: String| Fatal::Bucket { url: args.replica.to_string_lossy().into_owned(), reason };
    let Some(url) = BucketUrl::parse(args.replica.as_os_str()).map_err(|e| fail(e.to_string()))?
    else {
        return Ok(None);
    };
    let settings =
        S3Settings::from_env(|k| std::env::var(k).ok()).map_err(|e| fail(e.to_string()))?;
    Ok(Some((url, settings)))
}

/// The patterns of an `--exclude-from` file: one per line; blank lines and `#` comments
/// are left to the gitignore parser, which skips them.
fn read_exclude_file(path: &Path) -> Result<Vec<String>, Fatal> {
    let text = fs::read_to_string(path)
        .map_err(|source| Fatal::ExcludeFrom { path: path.to_path_buf(), source })?;
    Ok(text.lines().map(str::to_owned).collect())
}

/// Opens the log file for appending, creating its parent directories. Opened without
/// blocking: a FIFO nobody reads would otherwise hang the start with no word said.
pub fn open_log_file(path: &Path) -> Result<File, Fatal> {
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |source| Fatal::LogFile { path: path.to_path_buf(), source };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(fail)?;
    }
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENXIO) => {
                fail(std::io::Error::new(e.kind(), "it is a FIFO and nothing is reading it"))
            }
            _ => fail(e),
        })?;
    // Back to blocking writes (the writer thread may wait; replicad does not).
    let flags = rustix::fs::fcntl_getfl(&file).map_err(|e| fail(e.into()))?;
    rustix::fs::fcntl_setfl(&file, flags - rustix::fs::OFlags::NONBLOCK)
        .map_err(|e| fail(e.into()))?;
    Ok(file)
}

/// Files replicad writes itself are never mirrored: a log file inside SOURCE would be copied
/// on every line it logs (a loop), one inside REPLICA deleted by the next pass. Both are
/// refused, by path and by device and inode (a bind mount does not hide them).
fn check_log_file(path: &Path, source: &Path, replica: &Path) -> Result<(), Fatal> {
    let refuse = |reason| Fatal::LogFileInside { path: path.to_path_buf(), reason };
    // `missing/../x` would be judged without `missing` but opened after creating it.
    if path.components().any(|c| c == std::path::Component::ParentDir) {
        return Err(refuse("it contains '..'; give the path without it"));
    }
    let log = canonical_to_be(path)
        .map_err(|e| Fatal::LogFile { path: path.to_path_buf(), source: e })?;
    let chain = existing_ancestor_ids(&log);
    let inside =
        |root: &Path| log.starts_with(root) || file_id(root).is_ok_and(|id| chain.contains(&id));
    if inside(source) {
        return Err(refuse(
            "it lies inside the source, so every line logged would be mirrored again",
        ));
    }
    if inside(replica) {
        return Err(refuse("it lies inside the replica, so the next pass would delete it"));
    }
    Ok(())
}

/// The state file in `--state-dir`, else in the default directory if there is one. A
/// directory inside SOURCE or REPLICA is refused (mirrored or deleted with every mark);
/// given one is an error, the default one is silently not used (then every run reads all).
fn state_file(
    given: Option<&Path>,
    fingerprint: &Fingerprint<'_>,
    dry_run: bool,
) -> Result<Option<StateFile>, Fatal> {
    let (dir, explicit) = match given {
        Some(dir) => (dir.to_path_buf(), true),
        None => match state::default_dir() {
            Some(dir) => (dir, false),
            None => return Ok(None),
        },
    };
    let fail = |reason: String| Fatal::StateDir { path: dir.clone(), reason };
    let checked = canonical_to_be(&dir).map_err(|e| fail(e.to_string())).and_then(|canonical| {
        let chain = existing_ancestor_ids(&canonical);
        for (root, what) in [(fingerprint.source, "source"), (fingerprint.replica, "replica")] {
            if canonical.starts_with(root) || file_id(root).is_ok_and(|id| chain.contains(&id)) {
                return Err(fail(format!("it lies inside the {what}")));
            }
        }
        // A default directory comes from the environment (a `sudo -E` keeps a user's
        // HOME): used only if no one else could have placed it or a link on its way.
        let lexical = std::path::absolute(&dir).map_err(|e| fail(e.to_string()))?;
        if !explicit && (lexical != canonical || !owned_safely(&canonical)) {
            return Err(fail("another user could change it".into()));
        }
        // A dry run writes nothing, not even the state directory.
        if dry_run {
            return Ok(None);
        }
        StateFile::new(&canonical, fingerprint).map_err(|e| fail(e.to_string()))
    });
    match checked {
        Ok(file) => Ok(file),
        Err(e) if explicit => Err(e),
        Err(_) => Ok(None),
    }
}

/// True if every existing directory on `path` belongs to this user or root and no one
/// else may write to it (a root-owned sticky directory such as /tmp aside: others may
/// not rename or remove what is ours in it).
fn owned_safely(path: &Path) -> bool {
    let me = rustix::process::geteuid().as_raw();
    path.ancestors().filter_map(|p| fs::symlink_metadata(p).ok()).all(|m| {
        let sticky_root = m.uid() == 0 && m.mode() & 0o1000 != 0;
        (m.uid() == me || m.uid() == 0) && (m.mode() & 0o022 == 0 || sticky_root)
    })
}

fn clamp_verbosity(verbose: u8, quiet: u8) -> i8 {
    let v = i16::from(verbose) - i16::from(quiet);
    v.clamp(-3, 3) as i8
}

fn check_source(given: &Path) -> Result<PathBuf, Fatal> {
    let fail = |reason: String| Fatal::Source { path: given.to_path_buf(), reason };
    let meta = fs::metadata(given).map_err(|e| fail(describe(&e)))?;
    if !meta.is_dir() {
        return Err(fail("not a directory".into()));
    }
    // Listing proves readability now, rather than as a confusing error in the first pass.
    let mut listing = fs::read_dir(given).map_err(|e| fail(format!("cannot be read: {e}")))?;
    if let Some(Err(e)) = listing.next() {
        return Err(fail(format!("cannot be read: {e}")));
    }
    fs::canonicalize(given).map_err(|e| fail(describe(&e)))
}

fn check_replica(given: &Path, source: &Path, source_given: &Path) -> Result<PathBuf, Fatal> {
    let fail = |reason: String| Fatal::Replica { path: given.to_path_buf(), reason };
    let replica = match fs::symlink_metadata(given) {
        Ok(_) => {
            let meta = fs::metadata(given).map_err(|e| fail(describe(&e)))?;
            if !meta.is_dir() {
                return Err(fail("exists and is not a directory".into()));
            }
            fs::canonicalize(given).map_err(|e| fail(describe(&e)))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            canonical_to_be(given).map_err(|e| fail(format!("cannot resolve its parent: {e}")))?
        }
        Err(e) => return Err(fail(describe(&e))),
    };
    let overlap = |reason| Fatal::Overlap {
        source_path: source_given.to_path_buf(),
        replica_path: given.to_path_buf(),
        reason,
    };
    let source_id = file_id(source).map_err(|e| fail(describe(&e)))?;
    let replica_chain = existing_ancestor_ids(&replica);
    if replica_chain.first() == Some(&source_id) && replica.exists() {
        return Err(overlap("are the same directory"));
    }
    if replica_chain.contains(&source_id) {
        return Err(overlap("the replica lies inside the source"));
    }
    if replica.exists() {
        let replica_id = file_id(&replica).map_err(|e| fail(describe(&e)))?;
        if existing_ancestor_ids(source).contains(&replica_id) {
            return Err(overlap("the source lies inside the replica"));
        }
    } else if source.starts_with(&replica) {
        return Err(overlap("the source lies inside the replica"));
    }
    Ok(replica)
}

/// The canonical form a not-yet-existing path will have: its nearest existing ancestor
/// canonicalised, plus the missing components.
fn canonical_to_be(path: &Path) -> std::io::Result<PathBuf> {
    let absolute = std::path::absolute(path)?;
    let mut existing = absolute.as_path();
    let mut missing = Vec::new();
    while !existing.exists() {
        missing.push(existing.file_name().unwrap_or_default().to_owned());
        existing = existing.parent().unwrap_or(Path::new("/"));
    }
    let mut out = fs::canonicalize(existing)?;
    out.extend(missing.iter().rev());
    Ok(out)
}

/// (device, inode) of `path` and each existing ancestor, innermost first.
fn existing_ancestor_ids(path: &Path) -> Vec<(u64, u64)> {
    path.ancestors().filter_map(|p| file_id(p).ok()).collect()
}

fn file_id(path: &Path) -> std::io::Result<(u64, u64)> {
    let meta = fs::metadata(path)?;
    Ok((meta.dev(), meta.ino()))
}

fn describe(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "does not exist".into(),
        _ => e.to_string(),
    }
}

/// Owners are mirrored only when the process may chown: effective root, or CAP_CHOWN.
fn may_chown() -> bool {
    rustix::process::geteuid().is_root() || has_capability(0)
}

fn has_capability(bit: u32) -> bool {
    let Ok(status) = fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << bit) != 0)
}

/// The compiled `--exclude` patterns (gitignore syntax, relative to SOURCE).
#[derive(Clone, Debug)]
pub struct Excludes {
    set: Option<Gitignore>,
    /// Some pattern has a slash before its end, so it matches at one place only: moving a
    /// directory can change what is excluded below it.
    anchored: bool,
}

impl Excludes {
    /// Compiles the patterns; an invalid one is fatal.
    pub fn new(source: &Path, patterns: &[String]) -> Result<Excludes, Fatal> {
        if patterns.is_empty() {
            return Ok(Excludes::none());
        }
        let mut builder = GitignoreBuilder::new(source);
        for pattern in patterns {
            builder
                .add_line(None, pattern)
                .map_err(|e| Fatal::Exclude { pattern: pattern.clone(), reason: e.to_string() })?;
        }
        let set = builder
            .build()
            .map_err(|e| Fatal::Exclude { pattern: patterns.join(" "), reason: e.to_string() })?;
        let anchored = patterns.iter().any(|p| p.trim_end_matches('/').contains('/'));
        Ok(Excludes { set: Some(set), anchored })
    }

    /// No patterns at all.
    pub fn none() -> Excludes {
        Excludes { set: None, anchored: false }
    }

    /// True when there are no patterns (walks then skip building paths to match).
    pub fn is_empty(&self) -> bool {
        self.set.is_none()
    }

    /// True if what is excluded below a directory can change when the directory moves
    /// (some pattern is anchored to a place). Such moves are not followed as renames in
    /// REPLICA: an excluded entry would come along and stop being excluded.
    pub fn depend_on_place(&self) -> bool {
        self.anchored
    }

    /// Whether `path` itself matches (for walks, which never descend into an excluded
    /// directory, so parents need no check).
    pub fn matches(&self, path: &RelPath, is_dir: bool) -> bool {
        match &self.set {
            Some(set) if !path.is_root() => set.matched(path.as_path(), is_dir).is_ignore(),
            _ => false,
        }
    }

    /// Whether `path` or any of its parents matches (for single paths from events).
    pub fn matches_path_or_parent(&self, path: &RelPath, is_dir: bool) -> bool {
        match &self.set {
            Some(set) if !path.is_root() => {
                set.matched_path_or_any_parents(path.as_path(), is_dir).is_ignore()
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(s: &str) -> RelPath {
        RelPath::new(Path::new(s)).unwrap_or_default()
    }

    #[test]
    fn excludes_follow_gitignore_rules() -> Result<(), Fatal> {
        let ex = Excludes::new(Path::new("/src"), &["build/".into(), "*.o".into()])?;
        assert!(ex.matches(&rel("build"), true));
        assert!(!ex.matches(&rel("build"), false), "build/ only matches directories");
        assert!(ex.matches(&rel("a/x.o"), false));
        assert!(!ex.matches(&rel("build/x.c"), false));
        assert!(ex.matches_path_or_parent(&rel("build/x.c"), false));
        assert!(!ex.matches(&RelPath::root(), true));
        assert!(!ex.depend_on_place(), "build/ and *.o match anywhere");
        assert!(Excludes::new(Path::new("/src"), &["/a/cache".into()])?.depend_on_place());
        assert!(Excludes::new(Path::new("/src"), &["a/cache/".into()])?.depend_on_place());
        Ok(())
    }

    #[test]
    fn verbosity_is_clamped() {
        assert_eq!(clamp_verbosity(0, 0), 0);
        assert_eq!(clamp_verbosity(9, 0), 3);
        assert_eq!(clamp_verbosity(0, 2), -2);
    }
}

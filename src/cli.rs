//! The command line as clap sees it: options, help texts, environment variables, and the
//! DURATION parser. Nothing here touches the filesystem; `config` validates.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Parser, ValueEnum};

/// Keeps REPLICA an exact one-way copy of SOURCE: a full reconciliation pass every
/// interval, plus filesystem events so changes show up within a fraction of a second.
#[derive(Debug, Parser)]
#[command(
    name = "replicad",
    version,
    about,
    max_term_width = 100,
    after_help = "Also: `replicad completions bash|zsh|fish` prints shell completions, `replicad man` the man page."
)]
pub struct Args {
    /// Directory to mirror; replicad never writes to it.
    #[arg(env = "REPLICAD_SOURCE", value_name = "SOURCE")]
    pub source: PathBuf,

    /// Directory kept identical to SOURCE; created (with parents) if missing.
    #[arg(env = "REPLICAD_REPLICA", value_name = "REPLICA")]
    pub replica: PathBuf,

    /// Time between full reconciliation passes (250ms, 30s, 5m, 1h30m, or bare seconds;
    /// at least 100ms).
    #[arg(short, long, env = "REPLICAD_INTERVAL", default_value = "60s", value_parser = parse_interval, value_name = "DURATION")]
    pub interval: Duration,

    /// Also write the log to this file (appended, parents created); stderr always gets it.
    #[arg(short, long, env = "REPLICAD_LOG_FILE", value_name = "PATH")]
    pub log_file: Option<PathBuf>,

    /// Run one full pass, then exit: 0 in sync, 23 if some entries failed, 1 if refused.
    #[arg(long, env = "REPLICAD_ONCE", value_parser = BoolishValueParser::new())]
    pub once: bool,

    /// Periodic passes only, no filesystem events.
    #[arg(long, env = "REPLICAD_NO_WATCH", value_parser = BoolishValueParser::new())]
    pub no_watch: bool,

    /// How long a path must be quiet before its events are acted on.
    #[arg(long, env = "REPLICAD_DEBOUNCE", default_value = "100ms", value_parser = parse_duration, value_name = "DURATION")]
    pub debounce: Duration,

    /// Also compare file content by MD5 when size and mtime match.
    #[arg(long, env = "REPLICAD_CHECKSUM", value_parser = BoolishValueParser::new())]
    pub checksum: bool,

    /// After each copy, re-read the replica file and check its MD5 against the source's.
    #[arg(long, env = "REPLICAD_VERIFY", value_parser = BoolishValueParser::new())]
    pub verify: bool,

    /// Gitignore-style pattern, relative to SOURCE; excluded paths are neither copied nor
    /// removed. Repeatable; in REPLICAD_EXCLUDE, one pattern per line.
    #[arg(long, env = "REPLICAD_EXCLUDE", value_name = "PATTERN", action = ArgAction::Append, value_delimiter = '\n')]
    pub exclude: Vec<String>,

    /// Read more --exclude patterns from this file, one per line (gitignore syntax: blank
    /// lines and lines starting with # are ignored).
    #[arg(long, env = "REPLICAD_EXCLUDE_FROM", value_name = "PATH")]
    pub exclude_from: Option<PathBuf>,

    /// Log what would change, change nothing; implies --once.
    #[arg(long, env = "REPLICAD_DRY_RUN", value_parser = BoolishValueParser::new())]
    pub dry_run: bool,

    /// Turn off the emptiness check of the deletion guard (an empty SOURCE empties REPLICA).
    #[arg(long, env = "REPLICAD_ALLOW_EMPTY_SOURCE", value_parser = BoolishValueParser::new())]
    pub allow_empty_source: bool,

    /// Make each file durable before it is renamed into place (fdatasync, then fsync of its
    /// directory); without it, one syncfs of REPLICA ends each pass.
    #[arg(long, env = "REPLICAD_FSYNC", value_parser = BoolishValueParser::new())]
    pub fsync: bool,

    /// Copy each name of a hard-linked SOURCE file as its own file (as `rsync -a` without
    /// `-H`); by default names that share an inode in SOURCE share one in REPLICA.
    #[arg(long, env = "REPLICAD_NO_HARD_LINKS", value_parser = clap::builder::BoolishValueParser::new(), default_value_t = false, num_args = 0, default_missing_value = "true")]
    pub no_hard_links: bool,

    /// Do not mirror extended attributes and POSIX ACLs (as `rsync -a` without `-AX`).
    #[arg(long, env = "REPLICAD_NO_XATTRS", value_parser = clap::builder::BoolishValueParser::new(), default_value_t = false, num_args = 0, default_missing_value = "true")]
    pub no_xattrs: bool,

    /// Do not descend into other filesystems mounted inside SOURCE; their mount-point
    /// directories are mirrored empty (as `rsync -x`).
    #[arg(short = 'x', long, env = "REPLICAD_ONE_FILE_SYSTEM", value_parser = clap::builder::BoolishValueParser::new(), default_value_t = false, num_args = 0, default_missing_value = "true")]
    pub one_file_system: bool,

    /// Where to keep what one run leaves for the next (the mark of the last clean pass,
    /// which spares re-reading unchanged attributes) [default: $STATE_DIRECTORY, else
    /// $XDG_STATE_HOME/replicad, else ~/.local/state/replicad].
    #[arg(long, env = "REPLICAD_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// How many filesystem operations run at once [default: CPU count].
    #[arg(short, long, env = "REPLICAD_JOBS", value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: Option<u16>,

    /// Log line format on the console and in the file.
    #[arg(long, env = "REPLICAD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Serve /healthz, /readyz, /metrics, /status and a status page over HTTP on this
    /// address: 127.0.0.1:PORT, [::1]:PORT, 0.0.0.0:PORT (a pod's probes), or
    /// unix:/path.sock (mode 0600). Off by default.
    #[arg(long, env = "REPLICAD_STATUS_ADDR", value_name = "ADDR", value_parser = parse_status_addr)]
    pub status_addr: Option<StatusAddr>,

    /// More logging (-v debug, -vv trace). RUST_LOG, when set, wins.
    #[arg(short, long, env = "REPLICAD_VERBOSE", action = ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,

    /// Less logging (-q warnings and errors only, -qq errors only). RUST_LOG, when set, wins.
    #[arg(short, long, env = "REPLICAD_QUIET", action = ArgAction::Count)]
    pub quiet: u8,
}

/// Where the status endpoint listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StatusAddr {
    /// A TCP address and port.
    Tcp(std::net::SocketAddr),
    /// A Unix socket path (created with mode 0600).
    Unix(PathBuf),
}

/// Parses `HOST:PORT` (an IP address, IPv6 in brackets) or `unix:/path`.
pub fn parse_status_addr(text: &str) -> Result<StatusAddr, String> {
    if let Some(path) = text.strip_prefix("unix:") {
        if !path.starts_with('/') {
            return Err("a unix socket path must be absolute (unix:/run/replicad.sock)".into());
        }
        return Ok(StatusAddr::Unix(PathBuf::from(path)));
    }
    text.parse()
        .map(StatusAddr::Tcp)
        .map_err(|_| "expected IP:PORT ([::1]:PORT for IPv6) or unix:/path.sock".to_string())
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Parses `250ms`, `30s`, `5m`, `1h30m`, `1h 30m`, or a bare number of seconds. Zero is
/// refused (an interval or debounce of nothing makes no sense); negatives never parse.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let parsed = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse::<u64>().map(Duration::from_secs).map_err(|e| e.to_string())
    } else {
        humantime::parse_duration(text).map_err(|e| e.to_string())
    }?;
    if parsed.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(parsed)
}

/// The shortest interval between passes: below it passes would run back to back (each
/// one's summary line, each one's syncfs), which is a busy loop, not a schedule.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// A DURATION of at least [`MIN_INTERVAL`].
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let parsed = parse_duration(text)?;
    if parsed < MIN_INTERVAL {
        return Err(format!("must be at least {}", humantime::format_duration(MIN_INTERVAL)));
    }
    Ok(parsed)
}

/// The `REPLICAD_*` variables replicad reads: one per option, from clap's definitions, so
/// an option added later is known here without a second list to keep.
pub fn known_env_names() -> Vec<String> {
    use clap::CommandFactory;
    Args::command()
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect()
}

/// One warning per `REPLICAD_*` variable in `names` that replicad does not read, naming
/// the closest one it does: a typo (`REPLICAD_DRYRUN`) must not be silently ignored. Not a
/// refusal: Kubernetes injects `REPLICAD_SERVICE_HOST` and friends into pods when a Service
/// is called `replicad`, and scripts keep their own `REPLICAD_BIN`.
pub fn unknown_env_warnings<I, S>(names: I) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let known = known_env_names();
    let mut unknown: Vec<String> = names
        .into_iter()
        .map(|n| n.as_ref().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("REPLICAD_") && !known.contains(n))
        .collect();
    unknown.sort();
    unknown
        .into_iter()
        .map(|name| {
            let closest = known.iter().min_by_key(|k| edit_distance(&name, k));
            match closest {
                Some(k) => format!(
                    "environment variable {name} is not one replicad reads and is ignored \
                     (closest known: {k})"
                ),
                None => format!("environment variable {name} is not one replicad reads"),
            }
        })
        .collect()
}

/// Levenshtein distance, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn verify_cli() {
        Args::command().debug_assert();
    }

    /// Every option can be given the way a unit file or a container gives it. Enumerates
    /// clap's own definitions, so an option added later without `env = ...` fails here.
    #[test]
    fn every_option_has_an_environment_variable() {
        let command = Args::command();
        let args: Vec<_> = command
            .get_arguments()
            .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
            .collect();
        assert!(args.len() >= 18, "clap lists only {} options", args.len());
        for arg in args {
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
            let id = arg.get_id().as_str().to_uppercase();
            assert_eq!(
                env,
                Some(format!("REPLICAD_{id}")),
                "option {id} has no REPLICAD_ variable"
            );
        }
    }

    #[test]
    fn unknown_variables_are_named_with_the_closest_known_one() {
        let warnings = unknown_env_warnings([
            "REPLICAD_DRYRUN",
            "REPLICAD_SOURCE",
            "PATH",
            "REPLICAD_SERVICE_HOST",
        ]);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0].contains("REPLICAD_DRYRUN") && warnings[0].contains("REPLICAD_DRY_RUN")
        );
        assert!(warnings[1].contains("REPLICAD_SERVICE_HOST"));
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn durations() {
        let ok = [
            ("250ms", Duration::from_millis(250)),
            ("30s", Duration::from_secs(30)),
            ("5m", Duration::from_secs(300)),
            ("1h30m", Duration::from_secs(5400)),
            ("1h 30m", Duration::from_secs(5400)),
            ("45", Duration::from_secs(45)),
        ];
        for (text, want) in ok {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
        for bad in ["0", "0s", "-5s", "abc", "", "5 parsecs"] {
            assert!(parse_duration(bad).is_err(), "{bad} should be refused");
        }
        assert_eq!(parse_interval("100ms"), Ok(MIN_INTERVAL));
        assert!(matches!(parse_status_addr("127.0.0.1:9"), Ok(StatusAddr::Tcp(_))));
        assert!(matches!(parse_status_addr("[::1]:9"), Ok(StatusAddr::Tcp(_))));
        assert_eq!(parse_status_addr("unix:/r.sock"), Ok(StatusAddr::Unix("/r.sock".into())));
        for bad in ["localhost:9", "9", "unix:r.sock", "127.0.0.1"] {
            assert!(parse_status_addr(bad).is_err(), "{bad} should be refused");
        }
        for busy in ["1ns", "99ms"] {
            assert!(parse_interval(busy).is_err(), "{busy} is a busy loop, not an interval");
        }
    }
}

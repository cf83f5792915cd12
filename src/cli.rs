//! The command line as clap sees it: options, help texts, environment variables, and the
//! DURATION parser. Nothing here touches the filesystem; `config` validates.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser, ValueEnum};

/// Keeps REPLICA an exact one-way copy of SOURCE: a full reconciliation pass every
/// interval, plus filesystem events so changes show up within a fraction of a second.
#[derive(Debug, Parser)]
#[command(name = "replicad", version, about, max_term_width = 100)]
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
    #[arg(long)]
    pub once: bool,

    /// Periodic passes only, no filesystem events.
    #[arg(long)]
    pub no_watch: bool,

    /// How long a path must be quiet before its events are acted on.
    #[arg(long, env = "REPLICAD_DEBOUNCE", default_value = "100ms", value_parser = parse_duration, value_name = "DURATION")]
    pub debounce: Duration,

    /// Also compare file content by MD5 when size and mtime match.
    #[arg(long)]
    pub checksum: bool,

    /// After each copy, re-read the replica file and check its MD5 against the source's.
    #[arg(long)]
    pub verify: bool,

    /// Gitignore-style pattern, relative to SOURCE; excluded paths are neither copied nor
    /// removed. Repeatable.
    #[arg(long, value_name = "PATTERN", action = ArgAction::Append)]
    pub exclude: Vec<String>,

    /// Log what would change, change nothing; implies --once.
    #[arg(long)]
    pub dry_run: bool,

    /// Turn off the emptiness check of the deletion guard (an empty SOURCE empties REPLICA).
    #[arg(long)]
    pub allow_empty_source: bool,

    /// Make each file durable before it is renamed into place (fdatasync, then fsync of its
    /// directory); without it, one syncfs of REPLICA ends each pass.
    #[arg(long)]
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

    /// How many filesystem operations run at once [default: CPU count].
    #[arg(short, long, env = "REPLICAD_JOBS", value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: Option<u16>,

    /// Log line format on the console and in the file.
    #[arg(long, env = "REPLICAD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// More logging (-v debug, -vv trace). RUST_LOG, when set, wins.
    #[arg(short, long, action = ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,

    /// Less logging (-q warnings and errors only, -qq errors only). RUST_LOG, when set, wins.
    #[arg(short, long, action = ArgAction::Count)]
    pub quiet: u8,
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn verify_cli() {
        Args::command().debug_assert();
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
        for busy in ["1ns", "99ms"] {
            assert!(parse_interval(busy).is_err(), "{busy} is a busy loop, not an interval");
        }
    }
}

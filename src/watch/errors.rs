//! Watch problems, classified once by what the operator can do about them (watch limit,
//! instance limit, anything else), and reported once each.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::relpath::Escaped;

/// A watch problem, classified by what the operator can do about it. Its `Display` is the
/// whole warning, naming the limit to raise.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// inotify's per-user watch limit is reached: part of SOURCE is not watched.
    #[error(
        "inotify watch limit reached{} (fs.inotify.max_user_watches = {}{}); changes there are \
         seen only by the periodic pass; raise it with `sysctl fs.inotify.max_user_watches=N`",
        at(.path.as_deref()),
        limit(*.max_user_watches),
        namespace_limit(*.max_user_watches, *.namespace_max_watches)
    )]
    TooManyWatches {
        /// The first directory that could not be watched, if known.
        path: Option<PathBuf>,
        /// The current value of `/proc/sys/fs/inotify/max_user_watches`, if readable.
        max_user_watches: Option<u64>,
        /// `/proc/sys/user/max_inotify_watches`: the user namespace's own limit (containers),
        /// which can be the lower one.
        namespace_max_watches: Option<u64>,
    },
    /// Too many inotify instances (fs.inotify.max_user_instances) or open files.
    #[error(
        "too many inotify instances or open files (fs.inotify.max_user_instances = {}): \
         {source}; running on periodic passes only",
        limit(*.max_user_instances)
    )]
    TooManyInstances {
        /// The current value of `/proc/sys/fs/inotify/max_user_instances`, if readable.
        max_user_instances: Option<u64>,
        /// The OS error (EMFILE or ENFILE).
        source: io::Error,
    },
    /// Any other watch failure.
    #[error("watch error{}: {reason}; changes there are seen only by the periodic pass", at(.path.as_deref()))]
    Failed {
        /// The path concerned, if any.
        path: Option<PathBuf>,
        /// notify's description.
        reason: String,
    },
}

fn at(path: Option<&Path>) -> String {
    path.map(|p| format!(" at {}", Escaped::path(p))).unwrap_or_default()
}

/// Names the user namespace's limit only when it is the one that bites.
fn namespace_limit(global: Option<u64>, namespace: Option<u64>) -> String {
    match (global, namespace) {
        (Some(g), Some(n)) if n < g => format!(", user.max_inotify_watches = {n}"),
        (None, Some(n)) => format!(", user.max_inotify_watches = {n}"),
        _ => String::new(),
    }
}

fn limit(value: Option<u64>) -> String {
    value.map_or_else(|| "unknown".to_owned(), |v| v.to_string())
}

/// The classes of [`WatchError`], decided from a notify error alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchErrorKind {
    /// `MaxFilesWatch`, or ENOSPC from inotify.
    TooManyWatches,
    /// EMFILE/ENFILE: too many inotify instances or open files.
    TooManyInstances,
    /// Anything else.
    Other,
}

/// Classifies a notify error. Pure: the boundary where OS errors get their meaning.
pub fn classify(err: &notify::Error) -> WatchErrorKind {
    match &err.kind {
        notify::ErrorKind::MaxFilesWatch => WatchErrorKind::TooManyWatches,
        notify::ErrorKind::Io(e) => match e.raw_os_error() {
            Some(libc::ENOSPC) => WatchErrorKind::TooManyWatches,
            Some(libc::EMFILE | libc::ENFILE) => WatchErrorKind::TooManyInstances,
            _ => WatchErrorKind::Other,
        },
        _ => WatchErrorKind::Other,
    }
}

impl WatchError {
    /// Classifies `err` and, for the limits, reads the current value from `/proc`.
    pub fn from_notify(err: &notify::Error) -> WatchError {
        let path = err.paths.first().cloned();
        match (classify(err), &err.kind) {
            (WatchErrorKind::TooManyWatches, _) => WatchError::TooManyWatches {
                path,
                max_user_watches: read_limit("/proc/sys/fs/inotify/max_user_watches"),
                namespace_max_watches: read_limit("/proc/sys/user/max_inotify_watches"),
            },
            (WatchErrorKind::TooManyInstances, notify::ErrorKind::Io(e)) => {
                WatchError::TooManyInstances {
                    max_user_instances: read_limit("/proc/sys/fs/inotify/max_user_instances"),
                    source: io::Error::new(e.kind(), e.to_string()),
                }
            }
            _ => WatchError::Failed { path, reason: err.kind_description() },
        }
    }

    /// Its class.
    pub fn kind(&self) -> WatchErrorKind {
        match self {
            WatchError::TooManyWatches { .. } => WatchErrorKind::TooManyWatches,
            WatchError::TooManyInstances { .. } => WatchErrorKind::TooManyInstances,
            WatchError::Failed { .. } => WatchErrorKind::Other,
        }
    }
}

/// notify's `Error` displays its paths with `{:?}`; keep only the kind, we show the path.
trait KindDescription {
    fn kind_description(&self) -> String;
}

impl KindDescription for notify::Error {
    fn kind_description(&self) -> String {
        match &self.kind {
            notify::ErrorKind::Generic(msg) => msg.clone(),
            notify::ErrorKind::Io(e) => e.to_string(),
            notify::ErrorKind::PathNotFound => "no such file or directory".to_owned(),
            notify::ErrorKind::WatchNotFound => "watch not found".to_owned(),
            notify::ErrorKind::InvalidConfig(c) => format!("invalid config {c:?}"),
            notify::ErrorKind::MaxFilesWatch => "watch limit reached".to_owned(),
        }
    }
}

fn read_limit(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Which warnings were already given; shared by `start` and the handler so each limit is
/// reported once per watcher (one watcher per process).
#[derive(Debug, Default)]
pub(super) struct Reported {
    too_many_watches: AtomicBool,
    too_many_instances: AtomicBool,
}

impl Reported {
    /// True the first time for a limit; always true for other errors (they are rare).
    pub(super) fn first(&self, kind: WatchErrorKind) -> bool {
        match kind {
            WatchErrorKind::TooManyWatches => !self.too_many_watches.swap(true, Ordering::Relaxed),
            WatchErrorKind::TooManyInstances => {
                !self.too_many_instances.swap(true, Ordering::Relaxed)
            }
            WatchErrorKind::Other => true,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn classifies_watch_errors() {
        let io = |errno| notify::Error::io(io::Error::from_raw_os_error(errno));
        let cases = vec![
            (
                "MaxFilesWatch",
                notify::Error::new(notify::ErrorKind::MaxFilesWatch),
                WatchErrorKind::TooManyWatches,
            ),
            ("ENOSPC", io(libc::ENOSPC), WatchErrorKind::TooManyWatches),
            ("EMFILE", io(libc::EMFILE), WatchErrorKind::TooManyInstances),
            ("ENFILE", io(libc::ENFILE), WatchErrorKind::TooManyInstances),
            ("EACCES", io(libc::EACCES), WatchErrorKind::Other),
            ("PathNotFound", notify::Error::path_not_found(), WatchErrorKind::Other),
            ("Generic", notify::Error::generic("boom"), WatchErrorKind::Other),
        ];
        for (name, err, want) in cases {
            assert_eq!(classify(&err), want, "{name}");
            assert_eq!(WatchError::from_notify(&err).kind(), want, "{name}");
        }
    }

    #[test]
    fn watch_limit_warning_names_the_sysctl_and_its_value() {
        let err = notify::Error::new(notify::ErrorKind::MaxFilesWatch).add_path("/src/deep".into());
        let text = WatchError::from_notify(&err).to_string();
        assert!(text.contains("fs.inotify.max_user_watches = "), "{text}");
        assert!(text.contains("/src/deep"), "{text}");
        if let Some(value) = read_limit("/proc/sys/fs/inotify/max_user_watches") {
            assert!(text.contains(&format!("= {value}")), "{text}");
        }
        let emfile =
            WatchError::from_notify(&notify::Error::io(io::Error::from_raw_os_error(libc::EMFILE)));
        assert!(emfile.to_string().contains("fs.inotify.max_user_instances"), "{emfile}");
    }

    #[test]
    fn each_limit_is_reported_once() {
        let reported = Reported::default();
        assert!(reported.first(WatchErrorKind::TooManyWatches));
        assert!(!reported.first(WatchErrorKind::TooManyWatches));
        assert!(reported.first(WatchErrorKind::TooManyInstances));
        assert!(!reported.first(WatchErrorKind::TooManyInstances));
        assert!(reported.first(WatchErrorKind::Other));
        assert!(reported.first(WatchErrorKind::Other));
    }
}

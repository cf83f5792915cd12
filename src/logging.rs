//! The tracing subscriber: every line to stderr and, with `--log-file`, to that file too;
//! text or JSON. `RUST_LOG`, when set, wins over -v/-q. Knows nothing of the sync logic.
//!
//! Both outputs go through non-blocking writers that never make a caller wait, so no log
//! line can stall the mirror, the main loop or a stop. Each buffers lines for its own
//! thread to write; when an output stops taking them (a stuck journald, Docker's blocking
//! log mode, a frozen filesystem, a FIFO whose reader hangs) lines are dropped and
//! counted. Console losses are reported; the log file is the record, so any line lost
//! there (dropped, or a write error such as a full disk) is reported and makes the exit
//! status 1.

use std::fs::File;
use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tracing::{error, warn};
use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::cli::LogFormat;
use crate::logfmt::Logfmt;

/// Keeps the writer threads alive; dropping it flushes the last lines (waiting about a
/// second at most for a stalled output).
#[must_use = "dropping the guard stops the log writers"]
pub struct LogGuard {
    console_dropped: ErrorCounter,
    file_failure: Arc<OnceLock<String>>,
    file_dropped: Option<ErrorCounter>,
}

/// The writer threads' guards. Kept here, not only through [`LogGuard`] in `main`, so that
/// an exit that never returns to `main` (a second signal) can still flush what was logged.
static WRITERS: Mutex<Option<Writers>> = Mutex::new(None);

struct Writers {
    _console: WorkerGuard,
    _file: Option<WorkerGuard>,
}

fn take_writers() -> Option<Writers> {
    WRITERS.lock().unwrap_or_else(|e| e.into_inner()).take()
}

/// How long an exit that cannot wait (a second signal) gives the log to be written out.
const EXIT_FLUSH: Duration = Duration::from_millis(500);

/// Exits the process now with `code`, after giving the log writers a bounded time
/// to write out what was logged (half a second): a stalled output does not hold the exit up.
pub fn exit_now(code: i32) -> ! {
    if let Some(writers) = take_writers() {
        let (done, flushed) = std::sync::mpsc::channel();
        let flush =
            std::thread::Builder::new().name("replicad-exit-flush".into()).spawn(move || {
                drop(writers);
                let _ = done.send(());
            });
        if flush.is_ok() {
            let _ = flushed.recv_timeout(EXIT_FLUSH);
        }
    }
    std::process::exit(code)
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        drop(take_writers());
    }
}

impl LogGuard {
    /// Says what was lost (console lines dropped, a log file that failed) and returns
    /// whether the log file lost lines, which `main` turns into a failing exit status.
    pub fn report_losses(&self) -> bool {
        let dropped = self.console_dropped.dropped_lines();
        if dropped > 0 {
            warn!(dropped, "stderr was not being read: console lines were dropped");
        }
        let stalled = self.file_dropped.as_ref().map_or(0, ErrorCounter::dropped_lines);
        match (self.file_failure.get(), stalled) {
            (Some(e), _) => {
                error!(error = %e, "the log file could not be written: lines were lost");
                true
            }
            (None, dropped) if dropped > 0 => {
                error!(
                    dropped,
                    "the log file stopped taking lines (a stalled disk or reader): lines were lost"
                );
                true
            }
            (None, _) => false,
        }
    }
}

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// Console lines buffered while stderr is slow, before they are dropped (and counted).
const CONSOLE_LINES: usize = 8_192;

/// Log-file lines buffered while the disk is slow, before lines are dropped (and the run
/// fails for it).
const FILE_LINES: usize = 65_536;

/// The log file and where it is, for [`reopen`] (SIGHUP, after logrotate moved it).
static LOG_FILE: OnceLock<(PathBuf, Arc<Mutex<File>>)> = OnceLock::new();

/// Opens the log file again at its path and writes there from now on: logrotate renames
/// the file, then sends SIGHUP. Blocking (an open); call it off the async workers. `Ok(false)`
/// when there is no log file.
pub fn reopen() -> Result<bool, String> {
    let Some((path, shared)) = LOG_FILE.get() else { return Ok(false) };
    let fresh = crate::config::open_log_file(path).map_err(|e| {
        let reason = std::error::Error::source(&e).map(ToString::to_string).unwrap_or_default();
        format!("{e}: {reason}")
    })?;
    *shared.lock().unwrap_or_else(|e| e.into_inner()) = fresh;
    Ok(true)
}

/// The log file, shared with [`reopen`], which swaps it; a write holds the lock only for
/// itself (uncontended but for a SIGHUP).
struct SharedFile(Arc<Mutex<File>>);

impl Write for SharedFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).flush()
    }
}

/// Installs the global subscriber (the log file was opened by `config`; `log_path` is
/// where it is, for [`reopen`]).
pub fn init(
    format: LogFormat,
    verbosity: i8,
    log_file: Option<File>,
    log_path: Option<PathBuf>,
) -> LogGuard {
    let ansi = std::io::stderr().is_terminal();
    // The channel's slots are allocated up front (32 B a line): the lossy console needs
    // only enough for a burst, the lossless file enough to ride out a slow disk.
    let (console, console_guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(CONSOLE_LINES)
        .thread_name("replicad-stderr")
        .finish(Console { bar: progress_bar_for(format, ansi) });
    let console_dropped = console.error_counter();
    let mut layers: Vec<BoxedLayer> = vec![layer(format, console, ansi)];
    let file_failure = Arc::new(OnceLock::new());
    let mut file_guard = None;
    let mut file_dropped = None;
    if let Some(file) = log_file {
        let shared = Arc::new(Mutex::new(file));
        if let Some(path) = log_path {
            let _ = LOG_FILE.set((path, shared.clone()));
        }
        let watched = Watched { inner: SharedFile(shared), failure: file_failure.clone() };
        // Lossy too: a log file that stops taking lines (a frozen filesystem, a FIFO whose
        // reader hangs) must not stop the mirror, nor a stop. Every line lost is counted
        // and fails the run, so the record is complete or says it is not.
        let (writer, guard) = NonBlockingBuilder::default()
            .lossy(true)
            .buffered_lines_limit(FILE_LINES)
            .thread_name("replicad-log-file")
            .finish(watched);
        file_dropped = Some(writer.error_counter());
        layers.push(layer(format, writer, false));
        file_guard = Some(guard);
    }
    // try_init: tests may install a subscriber more than once in one process.
    let installed = tracing_subscriber::registry().with(layers).with(filter(verbosity)).try_init();
    if installed.is_ok() {
        let writers = Writers { _console: console_guard, _file: file_guard };
        *WRITERS.lock().unwrap_or_else(|e| e.into_inner()) = Some(writers);
    }
    LogGuard { console_dropped, file_failure, file_dropped }
}

/// The progress line, when stderr is a terminal and the log is text: never on journald,
/// files, pipes or JSON, where it would be noise in the record.
static PROGRESS: OnceLock<indicatif::ProgressBar> = OnceLock::new();

/// The progress line, if this process shows one (see [`PROGRESS`]).
pub fn progress_bar() -> Option<&'static indicatif::ProgressBar> {
    PROGRESS.get()
}

fn progress_bar_for(format: LogFormat, terminal: bool) -> Option<&'static indicatif::ProgressBar> {
    if !terminal || format != LogFormat::Text {
        return None;
    }
    let target = indicatif::ProgressDrawTarget::stderr_with_hz(4);
    let bar = indicatif::ProgressBar::with_draw_target(None, target);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    Some(PROGRESS.get_or_init(|| bar))
}

/// stderr, with the progress line (if any) lifted out of the way of each log line, so
/// the lines print above it and it is redrawn below them. Runs on the writer thread.
struct Console {
    bar: Option<&'static indicatif::ProgressBar>,
}

impl Write for Console {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.bar {
            Some(bar) => bar.suspend(|| io::stderr().write(buf)),
            None => io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// A writer that remembers its first error (the appender's thread ignores them).
struct Watched<W> {
    inner: W,
    failure: Arc<OnceLock<String>>,
}

impl<W> Watched<W> {
    fn note<T>(&self, result: io::Result<T>) -> io::Result<T> {
        if let Err(e) = &result {
            let _ = self.failure.set(e.to_string());
        }
        result
    }
}

impl<W: Write> Write for Watched<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let result = self.inner.write(buf);
        self.note(result)
    }

    fn flush(&mut self) -> io::Result<()> {
        let result = self.inner.flush();
        self.note(result)
    }
}

fn filter(verbosity: i8) -> EnvFilter {
    if let Ok(from_env) = EnvFilter::try_from_default_env() {
        return from_env;
    }
    let level = match verbosity {
        i8::MIN..=-3 => "off",
        -2 => "error",
        -1 => "warn",
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    // Dependencies stay at info so -v shows replicad's own decisions, not notify's. -q
    // keeps each pass's summary line: the one sign of life a quiet service gives.
    let directive = match verbosity {
        1.. => format!("info,replicad={level}"),
        -1 => format!("{level},{}=info", crate::engine::SUMMARY_TARGET),
        _ => level.to_string(),
    };
    // notify says "unable to remove watch descriptor" at info for every directory of an
    // `rm -r` (the kernel dropped the watch already): noise, never a problem. Its warnings
    // stay.
    let directive = match verbosity {
        -1.. => format!("{directive},notify::inotify=warn"),
        _ => directive,
    };
    EnvFilter::new(directive)
}

fn layer<W>(format: LogFormat, writer: W, ansi: bool) -> BoxedLayer
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let base = tracing_subscriber::fmt::layer().with_writer(writer).with_target(false);
    match format {
        LogFormat::Text => base.fmt_fields(Logfmt).with_ansi(ansi).boxed(),
        LogFormat::Json => base.json().flatten_event(true).with_span_list(false).boxed(),
    }
}

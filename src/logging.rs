//! The tracing subscriber: every line to stderr and, with `--log-file`, to that file too
//! (appended, through a lossless non-blocking writer whose guard `main` keeps until exit);
//! text or JSON. `RUST_LOG`, when set, wins over -v/-q. Knows nothing of the sync logic.

use std::fs::File;
use std::io::IsTerminal;

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::cli::LogFormat;

/// Keeps the log file's writer thread alive; dropping it flushes the last lines.
#[must_use = "dropping the guard stops the log file writer"]
pub struct LogGuard {
    _file: Option<WorkerGuard>,
}

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// Installs the global subscriber (the log file was opened by `config`).
pub fn init(format: LogFormat, verbosity: i8, log_file: Option<File>) -> LogGuard {
    let mut layers: Vec<BoxedLayer> =
        vec![layer(format, std::io::stderr, std::io::stderr().is_terminal())];
    let mut guard = None;
    if let Some(file) = log_file {
        let (writer, g) = NonBlockingBuilder::default().lossy(false).finish(file);
        layers.push(layer(format, writer, false));
        guard = Some(g);
    }
    // try_init: tests may install a subscriber more than once in one process.
    let _ = tracing_subscriber::registry().with(layers).with(filter(verbosity)).try_init();
    LogGuard { _file: guard }
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
    // Dependencies stay at info so -v shows replicad's own decisions, not notify's.
    let directive =
        if verbosity > 0 { format!("info,replicad={level}") } else { level.to_string() };
    EnvFilter::new(directive)
}

fn layer<W>(format: LogFormat, writer: W, ansi: bool) -> BoxedLayer
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let base = tracing_subscriber::fmt::layer().with_writer(writer).with_target(false);
    match format {
        LogFormat::Text => base.with_ansi(ansi).boxed(),
        LogFormat::Json => base.json().flatten_event(true).with_span_list(false).boxed(),
    }
}

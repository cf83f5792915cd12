//! SIGINT/SIGTERM: the first cancels (a graceful stop: everything watches the one token),
//! the second exits at once (its log line flushed first, bounded). Cancelling comes before
//! logging, so a stalled stderr can never keep a stop from happening.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Installs the handlers now (before any work, so no signal kills the process without a
/// cleanup) and returns the task that waits for them.
pub fn listen(cancel: CancellationToken) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        cancel.cancel();
        // Log writes never wait (see `logging`), so this cannot keep the second signal
        // from being heard.
        info!("{name} received: stopping (send it again to exit at once)");
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        warn!("second signal: exiting now");
        crate::logging::exit_now(1);
    }))
}

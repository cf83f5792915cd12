//! SIGINT/SIGTERM: the first cancels (a graceful stop: everything watches the one token),
//! the second exits at once (its log line flushed first, bounded). Cancelling comes before
//! logging, so a stalled stderr can never keep a stop from happening. SIGHUP opens the log
//! file again (logrotate), instead of killing the process.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// Installs the handlers now (before any work, so no signal kills the process without a
/// cleanup) and returns the task that waits for them.
pub fn listen(cancel: CancellationToken) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let hangups = tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match tokio::task::spawn_blocking(crate::logging::reopen).await {
                Ok(Ok(true)) => info!("SIGHUP received: log file opened again"),
                Ok(Ok(false)) => info!("SIGHUP received: no log file to open again"),
                Ok(Err(e)) => error!("SIGHUP received, but {e}; still writing to the old file"),
                Err(_) => error!("SIGHUP received, but opening the log file again panicked"),
            }
        }
    });
    Ok(tokio::spawn(async move {
        let _hangups = AbortOnDrop(hangups);
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

/// Stops the SIGHUP task when the signal task ends (it is aborted when the service stops).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

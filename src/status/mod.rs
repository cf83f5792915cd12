//! The status endpoint (`--status-addr`): `/healthz`, `/readyz`, `/metrics`, `/status`
//! and `/`, served by axum on the service's runtime. Every answer is built from
//! [`Stats`] (atomics, and mutexes held only to copy) and the engine's live pass counters:
//! no lock is held across a request and nothing walks the filesystem, so scrapes cannot
//! slow the mirror. Knows nothing of how the numbers are produced.

mod page;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::cli::StatusAddr;
use crate::engine::Mirror;
use crate::stats::Stats;

/// What the handlers read.
pub struct StatusState {
    /// The service's statistics.
    pub stats: Arc<Stats>,
    /// The engine, for the running pass's progress.
    pub engine: Arc<dyn Mirror>,
    /// SOURCE, as displayed.
    pub source: String,
    /// REPLICA, as displayed.
    pub replica: String,
}

/// A bound listener, before it serves.
pub enum Listener {
    /// TCP.
    Tcp(tokio::net::TcpListener),
    /// A Unix socket, and its path (removed when the server stops).
    Unix(tokio::net::UnixListener, PathBuf),
}

/// Binds `addr` now, so that a port in use or an unwritable socket directory is refused
/// at start. A Unix socket is made with mode 0600 (the umask is narrowed around the
/// bind: nothing else creates files this early); a stale socket at the path is replaced,
/// anything else there is refused.
pub async fn bind(addr: &StatusAddr) -> std::io::Result<Listener> {
    match addr {
        StatusAddr::Tcp(a) => Ok(Listener::Tcp(tokio::net::TcpListener::bind(a).await?)),
        StatusAddr::Unix(path) => {
            use std::os::unix::fs::FileTypeExt;
            match std::fs::symlink_metadata(path) {
                Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
                Ok(_) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "something other than a socket is there",
                    ));
                }
                Err(_) => {}
            }
            let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o177));
            let bound = tokio::net::UnixListener::bind(path);
            rustix::process::umask(old);
            Ok(Listener::Unix(bound?, path.clone()))
        }
    }
}

impl Listener {
    /// Where it listens, for the log: the bound port when port 0 was asked for.
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string()),
            Listener::Unix(_, path) => format!("unix:{}", crate::relpath::Escaped::path(path)),
        }
    }
}

/// The routes.
pub fn router(state: Arc<StatusState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/", get(index))
        .with_state(state)
}

/// Serves until `cancel` fires (the service's one token), then stops accepting and lets
/// requests in flight finish.
pub async fn serve(listener: Listener, state: Arc<StatusState>, cancel: CancellationToken) {
    let app = router(state);
    let stop = cancel.clone();
    let result = match listener {
        Listener::Tcp(l) => {
            axum::serve(l, app).with_graceful_shutdown(stop.cancelled_owned()).await
        }
        Listener::Unix(l, path) => {
            let served = axum::serve(l, app).with_graceful_shutdown(stop.cancelled_owned()).await;
            let _ = std::fs::remove_file(&path);
            served
        }
    };
    if let Err(e) = result {
        tracing::error!("the status endpoint stopped: {e}");
    }
}

async fn healthz(State(s): State<Arc<StatusState>>) -> Response {
    match s.stats.alive(Instant::now()) {
        true => (StatusCode::OK, "alive\n").into_response(),
        false => (StatusCode::SERVICE_UNAVAILABLE, "main loop not responding\n").into_response(),
    }
}

async fn readyz(State(s): State<Arc<StatusState>>) -> Response {
    match s.stats.ready() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()).into_response(),
        Err(reason) => {
            let line = reason.replace('\n', " ");
            (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {line}\n")).into_response()
        }
    }
}

async fn metrics(State(s): State<Arc<StatusState>>) -> Response {
    let body = s.stats.metrics.encode(&s.stats, Instant::now());
    let kind = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

async fn status(State(s): State<Arc<StatusState>>) -> Response {
    let doc = page::document(&s);
    ([(header::CONTENT_TYPE, "application/json")], doc.to_string()).into_response()
}

async fn index(State(s): State<Arc<StatusState>>) -> Html<String> {
    Html(page::html(&page::document(&s)))
}

//! [`Mirror`]: the engine's entry points as one object-safe trait, so the live service
//! (`service`, `status`) drives `Engine<Local>` and `Engine<BucketReplica>` through one
//! `Arc<dyn Mirror>` without being generic itself. Knows nothing of how a replica works.
//!
//! A trait object rather than generic service functions: the service's state (the status
//! endpoint's axum state, the watchdog, the queue's work closure) would otherwise all carry
//! the replica's type parameter, and the cost is one virtual call per piece of work or
//! per progress poll — nothing next to the filesystem or network work behind it. The
//! engine stays generic inside, where the per-entry calls are (see `replica`).

use std::sync::Arc;

use crate::relpath::RelPath;
use crate::replica::Replica;
use crate::stats::Stats;

use super::{Counts, Engine, PassReport};

/// What the service asks of an engine, whatever its REPLICA.
pub trait Mirror: Send + Sync + 'static {
    /// See [`Engine::full_pass`].
    fn full_pass(&self) -> PassReport;
    /// See [`Engine::reconcile_path`].
    fn reconcile_path(&self, rel: &RelPath, recursive: bool) -> PassReport;
    /// See [`Engine::follow_rename`].
    fn follow_rename(&self, from: &RelPath, to: &RelPath) -> PassReport;
    /// See [`Engine::stats`].
    fn stats(&self) -> &Arc<Stats>;
    /// See [`Engine::pass_progress`].
    fn pass_progress(&self) -> Option<Counts>;
    /// See [`Engine::progress`].
    fn progress(&self) -> u64;
    /// See [`Engine::is_flushing`].
    fn is_flushing(&self) -> bool;
}

impl<R: Replica> Mirror for Engine<R> {
    fn full_pass(&self) -> PassReport {
        Engine::full_pass(self)
    }
    fn reconcile_path(&self, rel: &RelPath, recursive: bool) -> PassReport {
        Engine::reconcile_path(self, rel, recursive)
    }
    fn follow_rename(&self, from: &RelPath, to: &RelPath) -> PassReport {
        Engine::follow_rename(self, from, to)
    }
    fn stats(&self) -> &Arc<Stats> {
        Engine::stats(self)
    }
    fn pass_progress(&self) -> Option<Counts> {
        Engine::pass_progress(self)
    }
    fn progress(&self) -> u64 {
        Engine::progress(self)
    }
    fn is_flushing(&self) -> bool {
        Engine::is_flushing(self)
    }
}

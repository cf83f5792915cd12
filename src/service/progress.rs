//! The live progress line on a terminal (indicatif): entries scanned, files and bytes
//! copied, rate — for the first pass, and for any pass still running after a few seconds.
//! Cleared when the pass ends. `logging` decides whether there is a terminal to draw on
//! and keeps log lines printing above it.

use std::time::{Duration, Instant};

use crate::engine::Mirror;
use crate::logging::progress_bar;

/// A later pass shows progress only once it has run this long.
const SHOW_AFTER: Duration = Duration::from_secs(3);

/// The progress line of one pass.
pub struct Progress {
    bar: Option<&'static indicatif::ProgressBar>,
    started: Instant,
    first: bool,
    shown: bool,
}

impl Progress {
    /// Progress of a pass starting now; `first` shows it at once.
    pub fn begin(first: bool) -> Progress {
        Progress { bar: progress_bar(), started: Instant::now(), first, shown: false }
    }

    /// Redraws the line from the running pass's counters.
    pub fn update(&mut self, engine: &dyn Mirror) {
        let Some(bar) = self.bar else { return };
        let elapsed = self.started.elapsed();
        if !self.first && elapsed < SHOW_AFTER {
            return;
        }
        let Some(c) = engine.pass_progress() else { return };
        if !self.shown {
            bar.reset();
            self.shown = true;
        }
        let rate = c.bytes as f64 / elapsed.as_secs_f64().max(0.001);
        let which = if self.first { "first pass" } else { "pass" };
        bar.set_message(format!(
            "{which}: {} entries scanned, {} files copied, {} ({}/s)",
            c.scanned,
            c.copy + c.update,
            indicatif::HumanBytes(c.bytes),
            indicatif::HumanBytes(rate as u64),
        ));
        bar.tick();
    }
}

impl Drop for Progress {
    /// The pass ended (or was abandoned): the line goes.
    fn drop(&mut self) {
        if let (Some(bar), true) = (self.bar, self.shown) {
            bar.finish_and_clear();
        }
    }
}

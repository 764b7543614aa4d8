//! Training progress: a bar redrawn in place on a terminal, plain lines otherwise.

use std::io::{IsTerminal, Write};
use std::time::Instant;

use crate::alloc;

pub struct Progress {
    total: u64,
    tty: bool,
    started: Instant,
    /// Plain lines are printed every this many steps (and the first and last).
    every: u64,
}

impl Progress {
    pub fn new(total: u64) -> Self {
        let every = (total / 20).max(1);
        Self { total, tty: std::io::stderr().is_terminal(), started: Instant::now(), every }
    }

    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Shows step `step` (1-based) of the run.
    pub fn update(&self, step: u64, loss: f64, lr: f64, tokens_per_s: f64, skipped: bool) {
        let peak = alloc::human(alloc::peak());
        let note = if skipped { " (overflow: step skipped)" } else { "" };
        let stats = format!("loss {loss:.4}  lr {lr:.3e}  {tokens_per_s:.0} tok/s  peak {peak}{note}");
        let mut err = std::io::stderr();
        if self.tty {
            let width = 24;
            let done = ((step as f64 / self.total as f64) * width as f64).round() as usize;
            let bar = format!("{}{}", "█".repeat(done.min(width)), "░".repeat(width - done.min(width)));
            let _ = write!(err, "\r\x1b[2K{bar} {step}/{}  {stats}", self.total);
            if step == self.total {
                let _ = writeln!(err);
            }
            let _ = err.flush();
        } else if step == 1 || step == self.total || step.is_multiple_of(self.every) || skipped {
            let _ = writeln!(err, "step {step}/{}  {stats}", self.total);
        }
    }

    /// A message that does not break the bar.
    pub fn message(&self, text: &str) {
        if self.tty {
            lomo_cli::note!("\r\x1b[2K");
        }
        lomo_cli::noteln!("{text}");
    }
}

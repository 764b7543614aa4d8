//! SIGINT and SIGTERM for the commands that run until stopped (`train`, `launch`,
//! `coordinator`): once caught ([`StopRequest::catch`]), the first asks the command to stop at
//! its next safe point (`train`: the end of the current step, after saving; `launch`: its ranks
//! stopped), and a second ends the process at once with the signal's status, which is safe
//! because every checkpoint is written crash-safely (`lomo_cli::save_dir`). A command stopped
//! as asked says so in one line and exits 128 + the signal's number (130, 143), as a shell
//! reports a process the signal ended.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// A signal that asks a command to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM (`kill`, a scheduler ending a job).
    Terminate,
}

impl Signal {
    fn from_number(number: i32) -> Option<Self> {
        match number {
            SIGINT => Some(Self::Interrupt),
            SIGTERM => Some(Self::Terminate),
            _ => None,
        }
    }

    /// The signal's number (2, 15).
    pub fn number(self) -> i32 {
        match self {
            Self::Interrupt => SIGINT,
            Self::Terminate => SIGTERM,
        }
    }

    /// The number, back from what [`Signal::number`] gave.
    pub fn from_code(code: u32) -> Option<Self> {
        Self::from_number(i32::try_from(code).ok()?)
    }

    /// `SIGINT`, `SIGTERM`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Interrupt => "SIGINT",
            Self::Terminate => "SIGTERM",
        }
    }

    /// The status of a command this signal stopped: 128 + its number (130, 143).
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Interrupt => 130,
            Self::Terminate => 143,
        }
    }

    /// The same signal, to send to another process.
    pub fn to_rustix(self) -> rustix::process::Signal {
        match self {
            Self::Interrupt => rustix::process::Signal::INT,
            Self::Terminate => rustix::process::Signal::TERM,
        }
    }
}

/// SIGINT and SIGTERM caught from [`StopRequest::catch`] on: the first is kept for the command
/// to find ([`StopRequest::received`], [`StopRequest::wait`]); a second ends the process at once.
pub struct StopRequest {
    received: Arc<OnceLock<Signal>>,
    first: Receiver<Signal>,
}

impl StopRequest {
    /// Catches SIGINT and SIGTERM from now on, on a thread of its own (no work happens in the
    /// signal handler). The second one prints a line and exits with its status.
    pub fn catch() -> Result<Self> {
        let mut signals = Signals::new([SIGINT, SIGTERM]).context("catching SIGINT and SIGTERM")?;
        let received = Arc::new(OnceLock::new());
        let (tell, first) = mpsc::channel();
        let kept = received.clone();
        std::thread::Builder::new()
            .name("lomo signals".into())
            .spawn(move || {
                for signal in signals.forever().filter_map(Signal::from_number) {
                    if kept.set(signal).is_ok() {
                        let _ = tell.send(signal);
                        continue;
                    }
                    lomo_cli::noteln!(
                        "stopped at once by a second {} (a checkpoint being written is finished or removed at the next start)",
                        signal.name()
                    );
                    std::process::exit(signal.exit_code().into());
                }
            })
            .context("starting the signal thread")?;
        Ok(Self { received, first })
    }

    /// The first signal caught, if one came.
    pub fn received(&self) -> Option<Signal> {
        self.received.get().copied()
    }

    /// Waits for the first signal, at most `timeout`.
    pub fn wait(&self, timeout: Duration) -> Option<Signal> {
        match self.first.recv_timeout(timeout) {
            Ok(signal) => Some(signal),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => self.received(),
        }
    }

    /// Waits for the first signal, however long it takes.
    pub fn wait_forever(&self) -> Signal {
        loop {
            if let Some(signal) = self.wait(Duration::from_secs(3600)) {
                return signal;
            }
        }
    }
}

/// A command that stopped as a signal asked, having said so in its own line: `main` exits
/// with [`Signal::exit_code`] and prints nothing more.
#[derive(Debug)]
pub struct Interrupted(pub Signal);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stopped by {}", self.0.name())
    }
}

impl std::error::Error for Interrupted {}

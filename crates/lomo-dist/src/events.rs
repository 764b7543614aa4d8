//! Everything a rank waits for, in one queue with one deadline: the coordinator's barrier (a
//! round released, a rank lost, the coordinator gone) and burn-collective's calls, each run on
//! a helper thread because they block without a deadline of their own.
//!
//! burn-collective 0.21 and burn-communication panic inside their own threads when a peer goes
//! away (`data_service.rs`: "Failed to receive message from websocket", "Failed to connect to
//! data server"; `worker.rs`: "Can close the websocket stream") and sometimes in the calling
//! thread. A call's panic is caught here ([`std::panic::catch_unwind`]) and becomes a
//! [`DistError`]; the panic hook installed by [`silence_burn_panics`] keeps those panics' text
//! and backtraces off stderr, so a rank that loses its group says so in one line.

use std::any::Any;
use std::panic::{self, AssertUnwindSafe};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Once;
use std::time::{Duration, Instant};

use crate::DistError;

/// Something a rank waits for.
pub(crate) enum Event {
    /// The barrier released a round: every rank arrived. `stop`: the largest stop request any
    /// rank made on arriving, if one did.
    Go { stop: Option<u32> },
    /// A rank's connection to the coordinator closed before the rank said it was finishing.
    Lost { rank: usize },
    /// The connection to the coordinator closed or failed.
    CoordinatorGone { reason: String },
    /// Call number `call` returned its boxed `Result<T, CollectiveError>`, or panicked with
    /// the text given.
    Returned { call: u64, outcome: Result<Box<dyn Any + Send>, String> },
}

/// Why the group cannot go on; kept, so every later wait fails at once with the same cause.
enum Broken {
    Lost(usize),
    CoordinatorGone(String),
}

impl Broken {
    fn error(&self, what: &str) -> DistError {
        match self {
            Broken::Lost(rank) => DistError::RankLost { rank: *rank, what: what.into() },
            Broken::CoordinatorGone(reason) => DistError::CoordinatorGone { what: what.into(), reason: reason.clone() },
        }
    }
}

/// How long a failed call waits for the barrier's news of a lost rank or coordinator.
const LOSS_NEWS: Duration = Duration::from_secs(5);

/// The queue of one rank's [`Event`]s and the deadline of every wait on it.
pub(crate) struct Events {
    sender: Sender<Event>,
    receiver: Receiver<Event>,
    timeout: Duration,
    calls: u64,
    broken: Option<Broken>,
}

impl Events {
    pub(crate) fn new(timeout: Duration) -> Self {
        let (sender, receiver) = mpsc::channel();
        Self { sender, receiver, timeout, calls: 0, broken: None }
    }

    /// Where the barrier's reader sends what the coordinator says.
    pub(crate) fn sender(&self) -> Sender<Event> {
        self.sender.clone()
    }

    /// Runs `call` on a helper thread and waits for it, at most the timeout, failing at once
    /// when a rank or the coordinator is lost meanwhile. A call given up keeps its thread until
    /// the process exits (which a failed rank then does); a call that panics is an error
    /// carrying the panic's message.
    pub(crate) fn call<T: Send + 'static>(
        &mut self,
        what: &str,
        call: impl FnOnce() -> Result<T, burn_collective::CollectiveError> + Send + 'static,
    ) -> Result<T, DistError> {
        self.calls += 1;
        let (id, sender) = (self.calls, self.sender.clone());
        std::thread::Builder::new()
            .name(format!("{CALL_THREAD}{what}"))
            .spawn(move || {
                let outcome = panic::catch_unwind(AssertUnwindSafe(call))
                    .map(|result| Box::new(result) as Box<dyn Any + Send>)
                    .map_err(|payload| panic_text(payload.as_ref()));
                let _ = sender.send(Event::Returned { call: id, outcome });
            })
            .map_err(|e| DistError::Collective { what: what.into(), message: e.to_string() })?;
        let outcome = self.wait(what, |event| match event {
            Event::Returned { call, outcome } if call == id => Some(outcome),
            _ => None,
        })?;
        let failed = |message: String| DistError::Collective { what: what.into(), message };
        let error = match outcome {
            Ok(boxed) => match boxed.downcast::<Result<T, burn_collective::CollectiveError>>() {
                Ok(result) => match *result {
                    Ok(value) => return Ok(value),
                    Err(e) => failed(format!("{e:?}")),
                },
                Err(_) => failed("the call returned an unexpected type".into()),
            },
            Err(panic) => failed(format!("burn-collective failed: {panic}")),
        };
        Err(self.loss_behind(what).unwrap_or(error))
    }

    /// The lost rank or coordinator behind a failed call, if the barrier tells of one soon. A
    /// peer's death fails burn-collective's calls (`LocalServerMissing`, a panic) at the same
    /// moment as it closes the peer's connection to the coordinator, whose news can come a
    /// little later; the name of the rank is worth that short wait.
    fn loss_behind(&mut self, what: &str) -> Option<DistError> {
        let deadline = Instant::now() + LOSS_NEWS.min(self.timeout);
        while self.broken.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.receiver.recv_timeout(left) {
                Ok(Event::Lost { rank }) => self.broken = Some(Broken::Lost(rank)),
                Ok(Event::CoordinatorGone { reason }) => self.broken = Some(Broken::CoordinatorGone(reason)),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        self.broken.as_ref().map(|b| b.error(what))
    }

    /// Waits, at most the timeout, for the first event `pick` takes (it returns `None` for
    /// the ones it leaves, stale returns of calls given up). A lost rank or coordinator ends
    /// the wait with its error.
    pub(crate) fn wait<R>(&mut self, what: &str, mut pick: impl FnMut(Event) -> Option<R>) -> Result<R, DistError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Some(broken) = &self.broken {
                return Err(broken.error(what));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.receiver.recv_timeout(left) {
                Ok(Event::Lost { rank }) => self.broken = Some(Broken::Lost(rank)),
                Ok(Event::CoordinatorGone { reason }) => self.broken = Some(Broken::CoordinatorGone(reason)),
                Ok(event) => {
                    if let Some(picked) = pick(event) {
                        return Ok(picked);
                    }
                }
                // This queue holds a sender itself, so it never disconnects.
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    return Err(DistError::Timeout { what: what.into(), seconds: self.timeout.as_secs() })
                }
            }
        }
    }
}

/// The name of every thread [`Events::call`] starts (followed by the call).
const CALL_THREAD: &str = "lomo-dist call: ";

/// A panic's message, as `std`'s hook would print it.
fn panic_text(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".into()
    }
}

/// Installs (once per process) a panic hook that keeps quiet about panics raised inside
/// burn-collective or burn-communication, and in the threads of [`Events::call`] (whose panic
/// becomes an error with its message); every other panic goes to the hook that was there
/// before. Those crates panic on their own tokio threads whenever a peer disconnects, which
/// here is always also seen, and reported in one line, through the coordinator's barrier.
pub(crate) fn silence_burn_panics() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let in_burn = info.location().is_some_and(|l| {
                std::path::Path::new(l.file()).components().any(|c| {
                    let c = c.as_os_str().to_string_lossy();
                    c.starts_with("burn-collective") || c.starts_with("burn-communication")
                })
            });
            let in_call = std::thread::current().name().is_some_and(|n| n.starts_with(CALL_THREAD));
            if !(in_burn || in_call) {
                previous(info);
            }
        }));
    });
}

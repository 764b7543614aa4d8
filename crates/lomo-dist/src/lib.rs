//! Data parallelism for the fused step, over burn-collective: every rank (a process, on this
//! machine or another) runs the same step on its own slice of each batch, and
//! [`Collective`] — a [`lomo_optim::StepReducer`] — sums the gradients, the target count and
//! the loss across the ranks, so every rank applies the update of the whole batch.
//!
//! The ranks meet at a coordinator (burn-collective's global orchestrator, a websocket
//! server: [`Coordinator`]); each rank also serves its tensors to the others on a port of its
//! own. Facts of burn-collective 0.21 this is built around: across processes only all-reduce
//! works; the default global strategy (`Ring`) fails on tensors whose largest dimension is
//! smaller than the number of nodes, so `Tree(2)` is used; every rank must make the same calls
//! in the same order (the fused step guarantees it, see [`lomo_optim::reduce`]); and its calls
//! block without a deadline, so each one here runs on a helper thread and is given up after
//! [`DistConfig::timeout`]: a rank that died or never came makes the others fail, never hang.

use std::io::{BufRead, BufReader, Write};
use std::marker::PhantomData;
use std::net::{TcpListener, TcpStream};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn_collective::{AllReduceStrategy, CollectiveConfig, PeerId, ReduceOperation};
use lomo_optim::{OptimError, StepReducer};

/// What can go wrong joining or running a data-parallel group.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DistError {
    /// A flag or variable is out of range.
    #[error("{0}")]
    Config(String),
    /// A collective call did not finish within the timeout (a rank died or never connected).
    #[error("{what}: no answer from the other ranks within {seconds} s (a rank died or never connected; see --collective-timeout)")]
    Timeout {
        /// The call.
        what: String,
        /// The timeout.
        seconds: u64,
    },
    /// burn-collective reported an error.
    #[error("{what}: {message}")]
    Collective {
        /// The call.
        what: String,
        /// Its error.
        message: String,
    },
    /// The coordinator could not start.
    #[error("coordinator: {0}")]
    Coordinator(String),
}

impl From<DistError> for OptimError {
    fn from(e: DistError) -> Self {
        OptimError::Collective(e.to_string())
    }
}

/// One rank's place in a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistConfig {
    /// Ranks in all.
    pub world_size: usize,
    /// This rank, `0..world_size`.
    pub rank: usize,
    /// The coordinator, `ws://HOST:PORT`.
    pub coordinator: String,
    /// This rank's address as the others reach it, `ws://HOST:PORT`; its port serves this
    /// rank's tensors.
    pub node_address: String,
    /// How long any collective call may take.
    pub timeout: Duration,
}

impl DistConfig {
    /// Checks the fields.
    pub fn validate(&self) -> Result<(), DistError> {
        if self.world_size < 2 {
            return Err(DistError::Config(format!(
                "--world-size: a group needs at least 2 ranks, got {}",
                self.world_size
            )));
        }
        if self.rank >= self.world_size {
            return Err(DistError::Config(format!(
                "--rank {}: must be below --world-size {}",
                self.rank, self.world_size
            )));
        }
        for (flag, address) in [("--coordinator", &self.coordinator), ("--node-address", &self.node_address)] {
            if port_of(address).is_none() {
                return Err(DistError::Config(format!("{flag} {address}: expected ws://HOST:PORT")));
            }
        }
        if self.timeout.is_zero() {
            return Err(DistError::Config("--collective-timeout: must be at least 1 second".into()));
        }
        Ok(())
    }

    fn data_port(&self) -> u16 {
        port_of(&self.node_address).expect("validated")
    }
}

/// burn-communication installs a global INFO-level log printer when a server starts (every
/// connection and tensor download on stderr); a silent one installed first keeps lomo's output
/// its own. Errors still arrive as errors.
fn quiet_logs() {
    let _ = tracing::subscriber::set_global_default(tracing::subscriber::NoSubscriber::default());
}

/// The port of `ws://HOST:PORT`.
pub fn port_of(address: &str) -> Option<u16> {
    let rest = address.strip_prefix("ws://")?;
    let (host, port) = rest.rsplit_once(':')?;
    if host.is_empty() {
        return None;
    }
    port.trim_end_matches('/').parse().ok()
}

/// A TCP port free on this machine now (the OS picks it).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A port `P` for a [`Coordinator`], with `P + 1` (its barrier) free too.
pub fn free_coordinator_port() -> std::io::Result<u16> {
    for _ in 0..100 {
        let p = free_port()?;
        if p < u16::MAX && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return Ok(p);
        }
    }
    Err(std::io::Error::other("no two consecutive free ports"))
}

/// Runs `call` on a helper thread and waits at most `timeout` for it: burn-collective's calls
/// block with no deadline of their own. A call given up keeps its thread until the process
/// exits (which a failed rank then does).
fn bounded<T: Send + 'static>(
    what: &str,
    timeout: Duration,
    call: impl FnOnce() -> Result<T, burn_collective::CollectiveError> + Send + 'static,
) -> Result<T, DistError> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name(format!("lomo-dist {what}"))
        .spawn(move || {
            let _ = tx.send(call());
        })
        .map_err(|e| DistError::Collective { what: what.into(), message: e.to_string() })?;
    match rx.recv_timeout(timeout) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(DistError::Collective { what: what.into(), message: format!("{e:?}") }),
        Err(mpsc::RecvTimeoutError::Timeout) => {
            Err(DistError::Timeout { what: what.into(), seconds: timeout.as_secs() })
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            Err(DistError::Collective { what: what.into(), message: "the collective call panicked".into() })
        }
    }
}

/// This process's membership of a group, as a [`StepReducer`] for the fused step.
pub struct Collective<B: Backend> {
    peer: PeerId,
    /// The coordinator's barrier (see [`Collective::all_reduce`]).
    barrier: BufReader<TcpStream>,
    /// What registering takes, kept to register again after every operation (below).
    config: CollectiveConfig,
    world_size: usize,
    timeout: Duration,
    device: B::Device,
    calls: u64,
    _backend: PhantomData<B>,
}

impl<B: Backend> std::fmt::Debug for Collective<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collective").field("peer", &self.peer).field("world_size", &self.world_size).finish()
    }
}

impl<B: Backend> Collective<B>
where
    B::Device: Send + 'static,
    FloatTensor<B>: Send + 'static,
{
    /// Joins the group: registers with the coordinator, waiting at most the timeout for it
    /// to answer. One rank per process (burn-collective keeps one local server per backend).
    pub fn join(config: &DistConfig, device: &B::Device) -> Result<Self, DistError> {
        config.validate()?;
        quiet_logs();
        let parse = |flag: &str, a: &str| {
            a.parse::<burn_communication::Address>().map_err(|e| DistError::Config(format!("{flag} {a}: {e}")))
        };
        let collective = CollectiveConfig::default()
            .with_num_devices(1)
            .with_num_nodes(config.world_size as u32)
            .with_global_address(parse("--coordinator", &config.coordinator)?)
            .with_node_address(parse("--node-address", &config.node_address)?)
            .with_data_service_port(config.data_port())
            .with_global_all_reduce_strategy(AllReduceStrategy::Centralized);
        let peer = PeerId(config.rank as u32);
        let barrier = connect_barrier(&config.coordinator, config.world_size, config.timeout)?;
        let (dev, c) = (device.clone(), collective.clone());
        bounded("joining the group", config.timeout, move || burn_collective::register::<B>(peer, dev, c))?;
        Ok(Self {
            peer,
            barrier,
            config: collective,
            world_size: config.world_size,
            timeout: config.timeout,
            device: device.clone(),
            calls: 0,
            _backend: PhantomData,
        })
    }

    /// Waits, as long as the collective timeout, until every rank of the group has come here:
    /// a point the ranks pass together (`lomo train`'s final checkpoint, written by rank 0
    /// while the others wait). Every rank calls it, the same number of times.
    pub fn barrier(&mut self, what: &str) -> Result<(), DistError> {
        self.meet(what)
    }

    /// Leaves the group (after the last step; every rank calls it).
    pub fn finish(self) -> Result<(), DistError> {
        let peer = self.peer;
        bounded("leaving the group", self.timeout, move || burn_collective::finish_collective::<B>(peer))
    }

    /// A global all-reduce (sum). burn-collective 0.21 completes one global operation per
    /// registration: its end-of-operation sync clears a copy of the list of synced peers instead
    /// of the list (`global/node/sync.rs`), so a second operation waits forever. Each
    /// operation is therefore followed by leaving and joining again, with every rank meeting
    /// at the coordinator's barrier before leaving and before joining (otherwise a fast rank's
    /// new registration meets a slow rank's old one and the two wait on different sessions).
    /// The fused step sends one tensor per stage to keep these rounds few.
    fn all_reduce(&mut self, tensor: FloatTensor<B>) -> Result<FloatTensor<B>, DistError> {
        self.calls += 1;
        let (peer, what) = (self.peer, format!("all-reduce #{}", self.calls));
        // With stages placed on several devices, a stage's gradients are summed on the device
        // this rank registered and come back to theirs.
        let home = B::float_device(&tensor);
        let tensor = if home == self.device { tensor } else { B::float_to_device(tensor, &self.device) };
        let sum =
            bounded(&what, self.timeout, move || burn_collective::all_reduce::<B>(peer, tensor, ReduceOperation::Sum))?;
        let sum = if home == self.device { sum } else { B::float_to_device(sum, &home) };
        self.meet(&what)?;
        bounded(&what, self.timeout, move || burn_collective::finish_collective::<B>(peer))?;
        self.meet(&what)?;
        let (device, config) = (self.device.clone(), self.config.clone());
        bounded(&what, self.timeout, move || burn_collective::register::<B>(peer, device, config))?;
        Ok(sum)
    }

    /// Waits until every rank has reached the same point.
    fn meet(&mut self, what: &str) -> Result<(), DistError> {
        let lost = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                DistError::Timeout { what: format!("{what} (barrier)"), seconds: self.timeout.as_secs() }
            }
            _ => DistError::Collective { what: format!("{what} (barrier)"), message: e.to_string() },
        };
        self.barrier.get_mut().write_all(b"arrive\n").map_err(lost)?;
        let mut line = String::new();
        let n = self.barrier.read_line(&mut line).map_err(lost)?;
        if n == 0 || line.trim() != "go" {
            return Err(DistError::Collective {
                what: format!("{what} (barrier)"),
                message: "the coordinator closed the connection".into(),
            });
        }
        Ok(())
    }
}

impl<B: Backend> StepReducer<B> for Collective<B>
where
    B::Device: Send + 'static,
    FloatTensor<B>: Send + 'static,
{
    fn world_size(&self) -> usize {
        self.world_size
    }

    /// Scalars travel as one f64 tensor where the backend has f64, else f32 (exact for counts
    /// below 2^24; a loss sum to about 7 digits).
    fn sum_scalars(&mut self, values: &mut [f64]) -> Result<(), OptimError> {
        use burn::tensor::{Tensor, TensorData, TensorPrimitive};
        let tensor = Tensor::<B, 1>::from_data(
            TensorData::new(values.iter().map(|&v| v as f32).collect::<Vec<_>>(), [values.len()]),
            &self.device,
        );
        let sum = self.all_reduce(tensor.into_primitive().tensor())?;
        let sum = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(sum)).into_data();
        let sum = sum.convert::<f32>().to_vec::<f32>().map_err(|e| OptimError::Collective(format!("{e:?}")))?;
        for (v, s) in values.iter_mut().zip(sum) {
            *v = f64::from(s);
        }
        Ok(())
    }

    fn sum_grad(&mut self, grad: FloatTensor<B>) -> Result<FloatTensor<B>, OptimError> {
        Ok(self.all_reduce(grad)?)
    }
}

/// The coordinator's barrier address for `ws://HOST:PORT`: `HOST:PORT+1`.
fn barrier_address(coordinator: &str) -> Result<String, DistError> {
    let port = port_of(coordinator)
        .ok_or_else(|| DistError::Config(format!("--coordinator {coordinator}: expected ws://HOST:PORT")))?;
    let host = coordinator.trim_start_matches("ws://").rsplit_once(':').map(|(h, _)| h).unwrap_or("127.0.0.1");
    let next = port
        .checked_add(1)
        .ok_or_else(|| DistError::Config(format!("--coordinator {coordinator}: the barrier needs port {port} + 1")))?;
    Ok(format!("{host}:{next}"))
}

/// Connects to the coordinator's barrier (retrying until `timeout`) and says the group's size.
fn connect_barrier(coordinator: &str, world_size: usize, timeout: Duration) -> Result<BufReader<TcpStream>, DistError> {
    let address = barrier_address(coordinator)?;
    let deadline = std::time::Instant::now() + timeout;
    let stream = loop {
        match TcpStream::connect(&address) {
            Ok(s) => break s,
            Err(_) if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(_) => {
                return Err(DistError::Timeout {
                    what: format!("joining the group (barrier {address})"),
                    seconds: timeout.as_secs(),
                })
            }
        }
    };
    let err = |e: std::io::Error| DistError::Collective { what: format!("barrier {address}"), message: e.to_string() };
    stream.set_read_timeout(Some(timeout)).map_err(err)?;
    let mut writer = stream.try_clone().map_err(err)?;
    writer.write_all(format!("hello {world_size}\n").as_bytes()).map_err(err)?;
    Ok(BufReader::new(stream))
}

/// The barrier: every connection says `hello N` once, then `arrive` at each meeting; when N
/// have arrived, each gets `go`. A connection that closes fails the waiting ones (their
/// connections are closed), so a rank that dies never leaves the others waiting.
fn serve_barrier(listener: TcpListener) {
    struct Round {
        waiting: Vec<TcpStream>,
        world: usize,
    }
    let round = Arc::new(Mutex::new(Round { waiting: Vec::new(), world: 0 }));
    for stream in listener.incoming().flatten() {
        let round = round.clone();
        std::thread::spawn(move || {
            let Ok(reply) = stream.try_clone() else { return };
            let mut lines = BufReader::new(stream).lines();
            while let Some(Ok(line)) = lines.next() {
                let mut r = round.lock().expect("the barrier's lock");
                if let Some(n) = line.strip_prefix("hello ") {
                    r.world = n.trim().parse().unwrap_or(0);
                } else if line == "arrive" {
                    let Ok(me) = reply.try_clone() else { break };
                    r.waiting.push(me);
                    if r.world > 0 && r.waiting.len() >= r.world {
                        for mut w in r.waiting.drain(..) {
                            let _ = w.write_all(b"go\n");
                        }
                    }
                }
            }
            // Gone: fail whoever waits.
            let mut r = round.lock().expect("the barrier's lock");
            for w in r.waiting.drain(..) {
                let _ = w.shutdown(std::net::Shutdown::Both);
            }
        });
    }
}

/// burn-collective's global orchestrator, serving on a port of this machine until the process
/// exits, and the ranks' barrier on the next port.
#[derive(Debug)]
pub struct Coordinator {
    /// `ws://127.0.0.1:PORT` (other machines reach it by this machine's name).
    pub address: String,
}

impl Coordinator {
    /// Starts the orchestrator on `port` on a thread of its own (with its own tokio runtime),
    /// and waits until it accepts connections (at most 10 s).
    pub fn start(port: u16) -> Result<Self, DistError> {
        quiet_logs();
        let next =
            port.checked_add(1).ok_or_else(|| DistError::Coordinator(format!("the barrier needs port {port} + 1")))?;
        let listener = TcpListener::bind(("0.0.0.0", next))
            .map_err(|e| DistError::Coordinator(format!("barrier on port {next}: {e}")))?;
        std::thread::Builder::new()
            .name("lomo-dist barrier".into())
            .spawn(move || serve_barrier(listener))
            .map_err(|e| DistError::Coordinator(e.to_string()))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| DistError::Coordinator(e.to_string()))?;
        std::thread::Builder::new()
            .name("lomo-dist coordinator".into())
            .spawn(move || runtime.block_on(burn_collective::start_global_orchestrator(port)))
            .map_err(|e| DistError::Coordinator(e.to_string()))?;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if std::time::Instant::now() > deadline {
                return Err(DistError::Coordinator(format!("nothing listens on port {port} after 10 s")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self { address: format!("ws://127.0.0.1:{port}") })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_ws_host_port() {
        assert_eq!(port_of("ws://127.0.0.1:3000"), Some(3000));
        assert_eq!(port_of("ws://node-7:29500/"), Some(29500));
        assert_eq!(port_of("http://a:1"), None);
        assert_eq!(port_of("ws://:1"), None);
        assert_eq!(port_of("ws://a"), None);
    }

    #[test]
    fn configs_are_checked() {
        let ok = DistConfig {
            world_size: 2,
            rank: 1,
            coordinator: "ws://127.0.0.1:1".into(),
            node_address: "ws://127.0.0.1:2".into(),
            timeout: Duration::from_secs(5),
        };
        assert!(ok.validate().is_ok());
        assert!(DistConfig { rank: 2, ..ok.clone() }.validate().unwrap_err().to_string().contains("--rank 2"));
        assert!(DistConfig { world_size: 1, rank: 0, ..ok.clone() }.validate().is_err());
        assert!(DistConfig { coordinator: "127.0.0.1:1".into(), ..ok }
            .validate()
            .unwrap_err()
            .to_string()
            .contains("ws://HOST:PORT"));
    }
}

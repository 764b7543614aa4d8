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
//! in the same order (the fused step guarantees it, see [`lomo_optim::reduce`]); its calls
//! block without a deadline, so each one here runs on a helper thread and is given up after
//! [`DistConfig::timeout`]: a rank that died or never came makes the others fail, never hang;
//! and it panics on its own threads when a peer disconnects. Beside the orchestrator the
//! coordinator serves a barrier of ours (`barrier.rs`), whose connections tell every rank at
//! once that another one is gone; the panics are caught or kept quiet (`events.rs`), so a rank
//! that loses its group exits with one line naming the rank it lost.

mod barrier;
mod events;

use std::marker::PhantomData;
use std::net::TcpListener;
use std::time::Duration;

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn_collective::{AllReduceStrategy, CollectiveConfig, PeerId, ReduceOperation};
use lomo_optim::{OptimError, StepReducer};

use barrier::BarrierClient;
use events::{silence_burn_panics, Event, Events};

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
    /// A rank's connection to the coordinator closed before the rank finished: its process
    /// died or was killed, or its machine became unreachable.
    #[error("rank {rank} left the group during {what}: its connection to the coordinator closed before it finished (the process died or was killed)")]
    RankLost {
        /// The rank.
        rank: usize,
        /// The call this rank was in.
        what: String,
    },
    /// The coordinator went away.
    #[error("{what}: lost the coordinator: {reason}")]
    CoordinatorGone {
        /// The call this rank was in.
        what: String,
        /// How it was lost.
        reason: String,
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

/// This process's membership of a group, as a [`StepReducer`] for the fused step.
pub struct Collective<B: Backend> {
    peer: PeerId,
    /// The coordinator's barrier (see [`Collective::all_reduce`]).
    barrier: BarrierClient,
    /// What this rank waits for: the barrier's answers and burn-collective's calls.
    events: Events,
    /// What registering takes, kept to register again after every operation (below).
    config: CollectiveConfig,
    world_size: usize,
    device: B::Device,
    all_reduces: u64,
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
    /// Installs, once, a panic hook that keeps burn-collective's internal panics quiet (a
    /// lost peer is reported through the barrier instead, as [`DistError::RankLost`]).
    pub fn join(config: &DistConfig, device: &B::Device) -> Result<Self, DistError> {
        config.validate()?;
        quiet_logs();
        silence_burn_panics();
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
        let mut events = Events::new(config.timeout);
        let barrier = BarrierClient::connect(
            &config.coordinator,
            config.world_size,
            config.rank,
            config.timeout,
            events.sender(),
        )?;
        let (dev, c) = (device.clone(), collective.clone());
        events.call("joining the group", move || burn_collective::register::<B>(peer, dev, c))?;
        Ok(Self {
            peer,
            barrier,
            events,
            config: collective,
            world_size: config.world_size,
            device: device.clone(),
            all_reduces: 0,
            _backend: PhantomData,
        })
    }

    /// Waits, as long as the collective timeout, until every rank of the group has come here:
    /// a point the ranks pass together (`lomo train`'s final checkpoint, written by rank 0
    /// while the others wait). Every rank calls it, the same number of times.
    pub fn barrier(&mut self, what: &str) -> Result<(), DistError> {
        self.meet(what, None).map(drop)
    }

    /// Whether the group stops here: every rank calls it at the same points, `request` saying
    /// why this rank wants to stop (a code the caller gives its meaning; `lomo train` passes a
    /// signal's number) or `None`, and every rank gets the same answer, the largest code any
    /// rank asked with. A barrier, so as cheap as one round trip to the coordinator.
    pub fn stop_together(&mut self, request: Option<u32>) -> Result<Option<u32>, DistError> {
        self.meet("the end-of-step check for a stop", request)
    }

    /// Leaves the group (after the last step; every rank calls it), telling the coordinator
    /// that this rank is done, so its going is no loss to the others.
    pub fn finish(mut self) -> Result<(), DistError> {
        let peer = self.peer;
        let left = self.events.call("leaving the group", move || burn_collective::finish_collective::<B>(peer));
        self.barrier.leave();
        left
    }

    /// A global all-reduce (sum). burn-collective 0.21 completes one global operation per
    /// registration: its end-of-operation sync clears a copy of the list of synced peers instead
    /// of the list (`global/node/sync.rs`), so a second operation waits forever. Each
    /// operation is therefore followed by leaving and joining again, with every rank meeting
    /// at the coordinator's barrier before leaving and before joining (otherwise a fast rank's
    /// new registration meets a slow rank's old one and the two wait on different sessions).
    /// The fused step sends one tensor per stage to keep these rounds few.
    fn all_reduce(&mut self, tensor: FloatTensor<B>) -> Result<FloatTensor<B>, DistError> {
        self.all_reduces += 1;
        let (peer, what) = (self.peer, format!("all-reduce #{}", self.all_reduces));
        // With stages placed on several devices, a stage's gradients are summed on the device
        // this rank registered and come back to theirs.
        let home = B::float_device(&tensor);
        let tensor = if home == self.device { tensor } else { B::float_to_device(tensor, &self.device) };
        let sum =
            self.events.call(&what, move || burn_collective::all_reduce::<B>(peer, tensor, ReduceOperation::Sum))?;
        let sum = if home == self.device { sum } else { B::float_to_device(sum, &home) };
        self.meet(&what, None)?;
        self.events.call(&what, move || burn_collective::finish_collective::<B>(peer))?;
        self.meet(&what, None)?;
        let (device, config) = (self.device.clone(), self.config.clone());
        self.events.call(&what, move || burn_collective::register::<B>(peer, device, config))?;
        Ok(sum)
    }

    /// Waits until every rank has reached the same point; the answer is the largest stop
    /// request made there.
    fn meet(&mut self, what: &str, stop: Option<u32>) -> Result<Option<u32>, DistError> {
        let what = format!("{what} (barrier)");
        self.barrier.arrive(&what, stop)?;
        self.events.wait(&what, |event| match event {
            Event::Go { stop } => Some(stop),
            _ => None,
        })
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

/// burn-collective's global orchestrator, serving on a port of this machine until the process
/// exits or gets SIGINT or SIGTERM (burn-collective listens for them itself and stops serving;
/// a process that must outlive a signal runs the coordinator in another process), and the
/// ranks' barrier on the next port.
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
        silence_burn_panics();
        let next =
            port.checked_add(1).ok_or_else(|| DistError::Coordinator(format!("the barrier needs port {port} + 1")))?;
        let listener = TcpListener::bind(("0.0.0.0", next))
            .map_err(|e| DistError::Coordinator(format!("barrier on port {next}: {e}")))?;
        std::thread::Builder::new()
            .name("lomo-dist barrier".into())
            .spawn(move || barrier::serve(listener))
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

//! The coordinator's barrier, a line protocol on the coordinator's port + 1 beside
//! burn-collective's orchestrator: the ranks meet there between burn-collective's operations,
//! agree there whether to stop, and learn there, at once, that one of them is gone.
//!
//! A rank says `hello WORLD RANK` once, then `arrive` (or `arrive stop CODE`, asking the group
//! to stop) at each meeting; when WORLD have arrived, each gets `go` (or `go stop CODE`, the
//! largest code asked for). A rank that is done says `bye` before it closes. A connection that
//! closes without `bye` is a rank lost: every other rank gets `lost RANK`, whatever it is doing.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::events::Event;
use crate::{port_of, DistError};

/// A rank's connection to the barrier. What the coordinator says is read on a thread of its
/// own and sent to the rank's event queue.
pub(crate) struct BarrierClient {
    stream: TcpStream,
    address: String,
}

impl BarrierClient {
    /// Connects to the barrier of `coordinator` (retrying until `timeout`), says who this rank
    /// is, and starts reading the coordinator's lines into `events`.
    pub(crate) fn connect(
        coordinator: &str,
        world_size: usize,
        rank: usize,
        timeout: Duration,
        events: Sender<Event>,
    ) -> Result<Self, DistError> {
        let address = barrier_address(coordinator)?;
        let deadline = Instant::now() + timeout;
        let mut stream = loop {
            match TcpStream::connect(&address) {
                Ok(s) => break s,
                // The coordinator may still be starting; no event can end this wait early.
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                Err(_) => {
                    return Err(DistError::Timeout {
                        what: format!("joining the group (barrier {address})"),
                        seconds: timeout.as_secs(),
                    })
                }
            }
        };
        let err =
            |e: std::io::Error| DistError::Collective { what: format!("barrier {address}"), message: e.to_string() };
        let reader = stream.try_clone().map_err(err)?;
        stream.write_all(format!("hello {world_size} {rank}\n").as_bytes()).map_err(err)?;
        std::thread::Builder::new()
            .name("lomo-dist barrier reader".into())
            .spawn(move || read_coordinator(reader, &events))
            .map_err(err)?;
        Ok(Self { stream, address })
    }

    /// Arrives at the next meeting, asking the group to stop there when `stop` is given.
    pub(crate) fn arrive(&mut self, what: &str, stop: Option<u32>) -> Result<(), DistError> {
        let line = match stop {
            Some(code) => format!("arrive stop {code}\n"),
            None => "arrive\n".to_string(),
        };
        self.stream.write_all(line.as_bytes()).map_err(|e| DistError::CoordinatorGone {
            what: what.into(),
            reason: format!("writing to its barrier {}: {e}", self.address),
        })
    }

    /// Says this rank is done, so that its going is no loss to the others, and closes.
    pub(crate) fn leave(mut self) {
        let _ = self.stream.write_all(b"bye\n");
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// Reads the coordinator's lines until the connection ends, turning each into an [`Event`].
fn read_coordinator(stream: TcpStream, events: &Sender<Event>) {
    let gone = |reason: String| {
        let _ = events.send(Event::CoordinatorGone { reason });
    };
    for line in BufReader::new(stream).lines() {
        let line = match line {
            Ok(line) => line,
            Err(e) => return gone(format!("its connection failed: {e}")),
        };
        let event = match line.split_whitespace().collect::<Vec<_>>()[..] {
            ["go"] => Event::Go { stop: None },
            ["go", "stop", code] => Event::Go { stop: Some(code.parse().unwrap_or(1)) },
            ["lost", rank] => match rank.parse() {
                Ok(rank) => Event::Lost { rank },
                Err(_) => continue,
            },
            _ => continue,
        };
        if events.send(event).is_err() {
            return;
        }
    }
    gone("it closed the connection (it stopped or died)".into());
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

/// The group as the barrier sees it.
#[derive(Default)]
struct Group {
    /// Open connections by number: the rank each said it is, and where to answer it.
    members: HashMap<u64, Member>,
    /// The connections waiting at the current meeting.
    arrived: Vec<u64>,
    /// Ranks in all, as the first `hello` said.
    world: usize,
    /// The largest stop code asked for at the current meeting.
    stop: Option<u32>,
}

struct Member {
    rank: Option<usize>,
    reply: TcpStream,
}

impl Group {
    /// Everyone has arrived: each gets `go`, with the stop request if one was made.
    fn release(&mut self) {
        let line = match self.stop.take() {
            Some(code) => format!("go stop {code}\n"),
            None => "go\n".to_string(),
        };
        for id in self.arrived.drain(..) {
            if let Some(m) = self.members.get_mut(&id) {
                let _ = m.reply.write_all(line.as_bytes());
            }
        }
    }
}

/// A lock that outlives a panicked holder: the group's state stays usable.
fn lock(group: &Mutex<Group>) -> MutexGuard<'_, Group> {
    group.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Serves the barrier on `listener` until the process exits, a thread per connection.
pub(crate) fn serve(listener: TcpListener) {
    let group = Arc::new(Mutex::new(Group::default()));
    for (id, stream) in (0u64..).zip(listener.incoming()) {
        let Ok(stream) = stream else { continue };
        let group = group.clone();
        let _ = std::thread::Builder::new()
            .name("lomo-dist barrier".into())
            .spawn(move || serve_member(id, stream, &group));
    }
}

/// One rank's connection, from `hello` to `bye` or its end.
fn serve_member(id: u64, stream: TcpStream, group: &Mutex<Group>) {
    let Ok(reply) = stream.try_clone() else { return };
    lock(group).members.insert(id, Member { rank: None, reply });
    let mut said_bye = false;
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { break };
        let mut g = lock(group);
        match line.split_whitespace().collect::<Vec<_>>()[..] {
            ["hello", world, rank] => {
                g.world = world.parse().unwrap_or(0);
                if let Some(m) = g.members.get_mut(&id) {
                    m.rank = rank.parse().ok();
                }
            }
            ["arrive", ref stop @ ..] => {
                if let ["stop", code] = stop {
                    let code = code.parse().unwrap_or(1);
                    g.stop = Some(g.stop.map_or(code, |c| c.max(code)));
                }
                g.arrived.push(id);
                if g.world > 0 && g.arrived.len() >= g.world {
                    g.release();
                }
            }
            ["bye"] => {
                said_bye = true;
                break;
            }
            _ => {}
        }
    }
    let mut g = lock(group);
    let gone = g.members.remove(&id);
    g.arrived.retain(|&a| a != id);
    if let (false, Some(Member { rank: Some(rank), .. })) = (said_bye, gone) {
        for m in g.members.values_mut() {
            let _ = m.reply.write_all(format!("lost {rank}\n").as_bytes());
        }
    }
    if g.members.is_empty() {
        // The group is over; the next one starts afresh.
        *g = Group::default();
    }
}

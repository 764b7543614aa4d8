//! `lomo launch` (a coordinator and N ranks of `lomo train` on this machine, as `torchrun
//! --nproc-per-node N` does) and `lomo coordinator` (the coordinator alone, for ranks on
//! several machines). Both stop cleanly on SIGINT (Ctrl-C) and SIGTERM; `lomo launch` passes
//! the signal on to its ranks, which finish their step and save, and waits for them.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use lomo_dist::{free_coordinator_port, free_port, Coordinator};
use rustix::process::Pid;

use crate::args::{CoordinatorArgs, LaunchArgs};
use crate::signals::{Interrupted, Signal, StopRequest};

/// Flags `lomo launch` sets on each rank; the command must not set them itself.
const SET_BY_LAUNCH: [&str; 4] = ["--world-size", "--rank", "--coordinator", "--node-address"];

pub fn run(args: LaunchArgs) -> Result<()> {
    if args.nproc < 2 {
        bail!("--nproc: a data-parallel group needs at least 2 ranks, got {}", args.nproc);
    }
    if args.command.first().map(String::as_str) != Some("train") {
        bail!("lomo launch: the command after `--` must be `train …`");
    }
    if let Some(flag) =
        args.command.iter().find(|a| SET_BY_LAUNCH.iter().any(|f| a.as_str() == *f || a.starts_with(&format!("{f}="))))
    {
        bail!("lomo launch: {flag} is set by launch for each rank; leave it out of the command");
    }
    let port = match args.port {
        Some(p) => p,
        None => free_coordinator_port().context("finding free ports for the coordinator")?,
    };
    // Caught before any rank starts, so that from then on a signal stops the ranks cleanly.
    let signals = StopRequest::catch()?;
    let exe = std::env::current_exe().context("finding the lomo executable")?;
    let mut coordinator = start_coordinator(&exe, port)?;
    lomo_cli::noteln!("coordinator on ws://127.0.0.1:{port}; starting {} ranks", args.nproc);
    let mut children: Vec<(usize, Child)> = Vec::new();
    let mut started = Ok(());
    for rank in 0..args.nproc {
        let node = match free_port().context("finding a free port for a rank") {
            Ok(node) => node,
            Err(e) => {
                started = Err(e);
                break;
            }
        };
        let mut command = Command::new(&exe);
        command.args(&args.command).args(["--world-size", &args.nproc.to_string(), "--rank", &rank.to_string()]).args(
            ["--coordinator", &format!("ws://127.0.0.1:{port}"), "--node-address", &format!("ws://127.0.0.1:{node}")],
        );
        match detached(&mut command).spawn().with_context(|| format!("starting rank {rank}")) {
            Ok(c) => children.push((rank, c)),
            Err(e) => {
                started = Err(e);
                break;
            }
        }
    }
    let result = match started {
        Ok(()) => wait_for_ranks(&mut children, &signals),
        Err(e) => {
            kill_all(&mut children);
            Err(e)
        }
    };
    let _ = coordinator.kill();
    let _ = coordinator.wait();
    result
}

/// A child of launch in a process group of its own, so that a Ctrl-C at the terminal reaches
/// launch alone, which passes it on once (a rank that got it twice would stop at once, without
/// saving), and sent SIGTERM when launch dies, even by SIGKILL, instead of running on alone.
fn detached(command: &mut Command) -> &mut Command {
    command.process_group(0);
    // SAFETY: between fork and exec the closure makes one system call (prctl, which is
    // async-signal-safe) and allocates nothing.
    unsafe {
        command.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))
                .map_err(std::io::Error::from)
        })
    }
}

/// The coordinator, as a `lomo coordinator` process of its own, once it serves. burn-collective's
/// orchestrator stops serving at the first SIGINT or SIGTERM its process gets (it listens for
/// them itself), which in launch's process would strand the ranks while they finish their step
/// and save; in a process group of its own it gets neither, and serves until the ranks are done.
fn start_coordinator(exe: &std::path::Path, port: u16) -> Result<Child> {
    let mut command = Command::new(exe);
    command.args(["coordinator", "--port", &port.to_string()]).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = detached(&mut command).spawn().context("starting the coordinator")?;
    // Its first line says it serves (or why it could not); nothing more is read.
    let first = child.stderr.take().and_then(|e| BufReader::new(e).lines().next()).and_then(|l| l.ok());
    match first {
        Some(line) if line.starts_with("coordinator serving") => Ok(child),
        other => {
            let _ = child.kill();
            let _ = child.wait();
            let said = other.map(|l| l.trim_start_matches("error: ").to_string());
            bail!("the coordinator did not start: {}", said.unwrap_or_else(|| "it said nothing".into()))
        }
    }
}

/// Waits for every rank: the first to fail takes the others down; a signal is passed on.
fn wait_for_ranks(children: &mut [(usize, Child)], signals: &StopRequest) -> Result<()> {
    loop {
        let mut running = false;
        for (rank, child) in children.iter_mut() {
            match child.try_wait().with_context(|| format!("waiting for rank {rank}"))? {
                Some(status) if !status.success() => {
                    let rank = *rank;
                    kill_all(children);
                    bail!("rank {rank} failed ({status}); the other ranks were stopped");
                }
                Some(_) => {}
                None => running = true,
            }
        }
        if !running {
            return Ok(());
        }
        // The ranks' exits are polled; a signal ends the wait at once.
        if let Some(signal) = signals.wait(Duration::from_millis(50)) {
            return stop_ranks(children, signal);
        }
    }
}

/// Passes `signal` on to every rank still running and waits for them all (they finish their
/// step, rank 0 saves, each exits with the signal's status). Rank 0 has said what happened
/// and where its checkpoint is when it stopped so; otherwise launch says how each rank ended.
fn stop_ranks(children: &mut [(usize, Child)], signal: Signal) -> Result<()> {
    for (_, child) in children.iter_mut() {
        if let Ok(None) = child.try_wait() {
            let _ = rustix::process::kill_process(Pid::from_child(child), signal.to_rustix());
        }
    }
    let mut rank_0_reported = false;
    let mut ends = Vec::new();
    for (rank, child) in children.iter_mut() {
        let status = child.wait().with_context(|| format!("waiting for rank {rank}"))?;
        rank_0_reported |= *rank == 0 && status.code() == Some(signal.exit_code().into());
        ends.push(format!("rank {rank}: {status}"));
    }
    if !rank_0_reported {
        lomo_cli::noteln!("interrupted by {}: the ranks stopped ({})", signal.name(), ends.join(", "));
    }
    Err(Interrupted(signal).into())
}

fn kill_all(children: &mut [(usize, Child)]) {
    for (_, child) in children.iter_mut() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

pub fn coordinator(args: CoordinatorArgs) -> Result<()> {
    let signals = StopRequest::catch()?;
    let _serving = Coordinator::start(args.port)?;
    lomo_cli::noteln!(
        "coordinator serving on port {} (ranks: --coordinator ws://THIS_HOST:{}); Ctrl-C stops it",
        args.port,
        args.port
    );
    let signal = signals.wait_forever();
    lomo_cli::noteln!("coordinator on port {} stopped by {}", args.port, signal.name());
    Err(Interrupted(signal).into())
}

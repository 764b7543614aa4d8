//! `lomo launch` (a coordinator and N ranks of `lomo train` on this machine, as `torchrun
//! --nproc-per-node N` does) and `lomo coordinator` (the coordinator alone, for ranks on
//! several machines).

use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use lomo_dist::{free_coordinator_port, free_port, Coordinator};

use crate::args::{CoordinatorArgs, LaunchArgs};

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
    let coordinator = Coordinator::start(port)?;
    lomo_cli::noteln!("coordinator on {}; starting {} ranks", coordinator.address, args.nproc);
    let exe = std::env::current_exe().context("finding the lomo executable")?;
    let mut children: Vec<(usize, Child)> = Vec::new();
    for rank in 0..args.nproc {
        let node = free_port().context("finding a free port for a rank")?;
        let child = Command::new(&exe)
            .args(&args.command)
            .args(["--world-size", &args.nproc.to_string(), "--rank", &rank.to_string()])
            .args(["--coordinator", &coordinator.address, "--node-address", &format!("ws://127.0.0.1:{node}")])
            .spawn()
            .with_context(|| format!("starting rank {rank}"));
        match child {
            Ok(c) => children.push((rank, c)),
            Err(e) => {
                kill_all(&mut children);
                return Err(e);
            }
        }
    }
    // Wait for all; the first rank to fail takes the others down.
    loop {
        let mut running = false;
        for i in 0..children.len() {
            let (rank, child) = &mut children[i];
            match child.try_wait().with_context(|| format!("waiting for rank {rank}"))? {
                Some(status) if !status.success() => {
                    let rank = *rank;
                    kill_all(&mut children);
                    bail!("rank {rank} failed ({status}); the other ranks were stopped");
                }
                Some(_) => {}
                None => running = true,
            }
        }
        if !running {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn kill_all(children: &mut [(usize, Child)]) {
    for (_, child) in children.iter_mut() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

pub fn coordinator(args: CoordinatorArgs) -> Result<()> {
    let c = Coordinator::start(args.port)?;
    lomo_cli::noteln!(
        "coordinator serving on port {} (ranks: --coordinator ws://THIS_HOST:{}); Ctrl-C stops it",
        args.port,
        args.port
    );
    let _ = c;
    loop {
        std::thread::park();
    }
}

//! Stopping the long-running commands from outside: SIGINT and SIGTERM to `lomo train`,
//! `lomo launch` and `lomo coordinator`, and a data-parallel rank killed under the others. Each
//! test waits on what the processes print (or log), with a deadline, never on a guessed sleep.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use lomo_testutil::shared;
use rustix::process::{kill_process, Pid, Signal};

/// How long anything here may take on a loaded machine before the test fails.
const PATIENCE: Duration = Duration::from_secs(300);

fn tmp(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A `lomo` process whose stderr is read line by line as it comes; killed if the test ends
/// first.
struct Lomo {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Lomo {
    fn start<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lomo"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run lomo");
        let (tx, lines) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self { child, lines, seen: Vec::new() }
    }

    /// Reads stderr until a line `wanted` takes has come.
    fn wait_for_line(&mut self, what: &str, wanted: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let done = wanted(&line);
                    self.seen.push(line);
                    if done {
                        return;
                    }
                }
                Err(e) => panic!("no {what} on stderr ({e}); it said:\n{}", self.seen.join("\n")),
            }
        }
    }

    fn signal(&self, signal: Signal) {
        kill_process(Pid::from_child(&self.child), signal).unwrap();
    }

    /// Waits for the exit, and returns it with the stderr lines that came after those seen.
    fn exit(&mut self) -> (ExitStatus, Vec<String>) {
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "still running after {PATIENCE:?}; it said:\n{}", self.seen.join("\n"));
            std::thread::sleep(Duration::from_millis(20));
        };
        // The reader ends with the stream, which the process held until it exited.
        let rest: Vec<String> = self.lines.iter().collect();
        self.seen.extend(rest.iter().cloned());
        (status, rest)
    }
}

impl Drop for Lomo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `lomo train`'s flags for a run much longer than any test waits for.
fn long_run(model: &Path, data: &Path, optimizer: &str, save: &Path) -> Vec<String> {
    let flags = ["--optimizer", optimizer, "--lr", "0.01", "--steps", "100000", "--batch-size", "2", "--max-len", "64"];
    let mut args = vec!["train".to_string(), "--model".into(), model.display().to_string()];
    args.extend(["--data".to_string(), data.display().to_string()]);
    args.extend(flags.map(String::from));
    args.extend(["--seed".to_string(), "3".into(), "--save".into(), save.display().to_string()]);
    args
}

/// Checks what a run stopped by `signal` printed after its last progress line (`lines`): one
/// line, naming the step it stopped after and the checkpoint it saved there, and no error or
/// panic. Returns that step.
fn stopped_after(lines: &[String], signal: &str, save: &Path) -> u64 {
    let all = lines.join("\n");
    assert!(!all.contains("panicked") && !all.contains("error"), "{all}");
    let said: Vec<&String> = lines.iter().filter(|l| l.contains("interrupted")).collect();
    assert_eq!(said.len(), 1, "one line says what happened:\n{all}");
    assert_eq!(lines.last(), Some(said[0]), "and it is the last:\n{all}");
    let prefix = format!("interrupted by {signal} after step ");
    let step: u64 = said[0]
        .strip_prefix(&prefix)
        .and_then(|r| r.split(' ').next())
        .unwrap_or_else(|| panic!("{all}"))
        .parse()
        .unwrap();
    let checkpoint = save.join(format!("step-{step}"));
    assert!(said[0].contains(&format!("saved {}", checkpoint.display())), "{all}");
    step
}

fn trainer_state(checkpoint: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(checkpoint.join("trainer_state.json")).unwrap()).unwrap()
}

/// `(step, loss)` of every whole training line of a `--log` file.
fn logged_losses(log: &Path) -> Vec<(u64, f64)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some((v["step"].as_u64()?, v["loss"].as_f64()?)))
        .collect()
}

/// Waits until `log` has a training line of step `step` or later.
fn wait_for_logged_step(log: &Path, step: u64) {
    let deadline = Instant::now() + PATIENCE;
    while logged_losses(log).last().is_none_or(|(s, _)| *s < step) {
        assert!(Instant::now() < deadline, "{} never reached step {step}", log.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM stops a run after the step it came in, saving `step-N` through the crash-safe save
/// and exiting 143 with one line naming the checkpoint; the run resumed from it is stopped the
/// same way by SIGINT (130), and the two together logged the losses of a run stopped neither
/// time, step for step: the checkpoint resumes exactly.
#[test]
fn sigterm_and_sigint_stop_training_after_a_step_with_a_checkpoint_that_resumes() {
    let (Some(model), Some(data)) = (shared("models/stories260K"), shared("data/tinystories_sample.txt")) else {
        return;
    };
    let dir = tmp("signals-train");
    let (out, log) = (dir.join("out"), dir.join("log.jsonl"));
    let mut args = long_run(&model, &data, "adalomo", &out);
    args.extend(["--log".to_string(), log.display().to_string()]);
    let mut run = Lomo::start(&args);
    run.wait_for_line("step 1", |l| l.starts_with("step 1/"));
    run.signal(Signal::TERM);
    let (status, rest) = run.exit();
    assert_eq!(status.code(), Some(143), "{rest:?}");
    let first = stopped_after(&rest, "SIGTERM", &out);
    assert_eq!(trainer_state(&out.join(format!("step-{first}")))["step"], first);

    // Resumed from it (every flag from the checkpoint), and stopped by SIGINT a step later or more.
    let mut resumed = Lomo::start(&["train", "--resume", out.join(format!("step-{first}")).to_str().unwrap()]);
    wait_for_logged_step(&log, first + 1);
    resumed.signal(Signal::INT);
    let (status, rest) = resumed.exit();
    assert_eq!(status.code(), Some(130), "{rest:?}");
    let second = stopped_after(&rest, "SIGINT", &out);
    assert!(second > first, "{second} after {first}");
    assert_eq!(trainer_state(&out.join(format!("step-{second}")))["step"], second);

    // The same run, not interrupted before that step.
    let (reference_out, reference_log) = (dir.join("reference"), dir.join("reference.jsonl"));
    let mut args = long_run(&model, &data, "adalomo", &reference_out);
    args.extend(["--log".to_string(), reference_log.display().to_string()]);
    let mut reference = Lomo::start(&args);
    wait_for_logged_step(&reference_log, second);
    reference.signal(Signal::TERM);
    assert_eq!(reference.exit().0.code(), Some(143));
    let upto = |log: &Path| -> Vec<(u64, f64)> { logged_losses(log).into_iter().take(second as usize).collect() };
    assert_eq!(upto(&log), upto(&reference_log), "stopped twice and resumed vs not stopped");
}

/// The processes whose command line names `path` (a run's save directory names its ranks).
fn processes_naming(path: &Path) -> Vec<String> {
    let needle = path.display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&needle))
        .collect()
}

/// SIGINT to `lomo launch` stops its ranks after the same step: rank 0 saves `step-N`, and
/// launch exits 130, with one line, once no rank runs.
#[test]
fn launch_stops_its_ranks_on_sigint_with_a_checkpoint() {
    let (Some(model), Some(data)) = (shared("models/stories260K"), shared("data/tinystories_sample.txt")) else {
        return;
    };
    let dir = tmp("signals-launch");
    let out = dir.join("out");
    let mut args: Vec<String> = ["launch", "--nproc", "2", "--"].map(String::from).to_vec();
    args.extend(long_run(&model, &data, "lomo", &out));
    args.extend(["--collective-timeout", "120"].map(String::from));
    let mut launch = Lomo::start(&args);
    launch.wait_for_line("step 1", |l| l.starts_with("step 1/"));
    launch.signal(Signal::INT);
    let (status, rest) = launch.exit();
    assert_eq!(status.code(), Some(130), "{rest:?}");
    let step = stopped_after(&rest, "SIGINT", &out);
    let state = trainer_state(&out.join(format!("step-{step}")));
    assert_eq!((state["step"].as_u64(), state["world_size"].as_u64()), (Some(step), Some(2)));
    assert_eq!(processes_naming(&out), Vec::<String>::new(), "ranks left running");
}

/// `lomo coordinator` stops on SIGINT (Ctrl-C, as its banner says) and on SIGTERM, with one
/// line and the signal's status.
#[test]
fn the_coordinator_stops_on_sigint_and_sigterm() {
    for (signal, name, code) in [(Signal::INT, "SIGINT", 130), (Signal::TERM, "SIGTERM", 143)] {
        let port = lomo_dist::free_coordinator_port().unwrap();
        let mut coordinator = Lomo::start(&["coordinator", "--port", &port.to_string()]);
        coordinator.wait_for_line("the banner", |l| l.contains("Ctrl-C stops it"));
        coordinator.signal(signal);
        let (status, rest) = coordinator.exit();
        assert_eq!(status.code(), Some(code), "{rest:?}");
        assert_eq!(rest, [format!("coordinator on port {port} stopped by {name}")]);
    }
}

/// A coordinator and two ranks of a long run, once rank 0 has logged its first step.
fn group_after_one_step(model: &Path, data: &Path, save: &Path, timeout: u64) -> (Lomo, Vec<Lomo>) {
    let port = lomo_dist::free_coordinator_port().unwrap();
    let mut coordinator = Lomo::start(&["coordinator", "--port", &port.to_string()]);
    coordinator.wait_for_line("the banner", |l| l.contains("Ctrl-C stops it"));
    let mut ranks: Vec<Lomo> = (0..2)
        .map(|rank| {
            let node = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let mut args = long_run(model, data, "lomo", save);
            args.extend(["--collective-timeout".to_string(), timeout.to_string(), "--world-size".into(), "2".into()]);
            args.extend(["--rank".to_string(), rank.to_string()]);
            args.extend(["--coordinator".to_string(), format!("ws://127.0.0.1:{port}")]);
            args.extend(["--node-address".to_string(), format!("ws://127.0.0.1:{node}")]);
            Lomo::start(&args)
        })
        .collect();
    ranks[0].wait_for_line("step 1", |l| l.starts_with("step 1/"));
    (coordinator, ranks)
}

/// A rank left running after `fault` (at `since`, when it had printed `before` lines) exits
/// 2 within `timeout` seconds, with one more line, an error containing `expected`, and no
/// panic text anywhere.
fn exits_with_one_line(survivor: &mut Lomo, before: usize, since: Instant, timeout: u64, fault: &str, expected: &str) {
    let (status, _) = survivor.exit();
    let took = since.elapsed();
    let all = survivor.seen.join("\n");
    assert_eq!(status.code(), Some(2), "{fault}: {all}");
    assert!(took < Duration::from_secs(timeout), "{fault}: the survivor took {took:?}");
    assert!(!all.contains("panicked") && !all.contains("backtrace"), "{fault}: {all}");
    let said = &survivor.seen[before..];
    assert_eq!(said.len(), 1, "{fault}: one line after it:\n{all}");
    assert!(said[0].starts_with("error: ") && said[0].contains(expected), "{fault}: {all}");
}

/// A rank killed (SIGKILL) after the first step makes the other exit non-zero, well within
/// `--collective-timeout`, with one line naming the rank it lost, and no panic text:
/// burn-collective's threads panic when a peer goes, and that stays inside.
#[test]
fn a_killed_rank_makes_the_other_exit_with_one_line_naming_it() {
    let (Some(model), Some(data)) = (shared("models/stories260K"), shared("data/tinystories_sample.txt")) else {
        return;
    };
    let dir = tmp("signals-dead-rank");
    let timeout = 120;
    for killed in [1, 0] {
        let (_coordinator, mut ranks) =
            group_after_one_step(&model, &data, &dir.join(format!("out-{killed}")), timeout);
        let before = ranks[1 - killed].seen.len();
        ranks[killed].child.kill().unwrap();
        let fault = format!("rank {killed} killed");
        let expected = format!("rank {killed} left the group");
        exits_with_one_line(&mut ranks[1 - killed], before, Instant::now(), timeout, &fault, &expected);
    }
}

/// The coordinator killed (SIGKILL) under a group makes each rank exit non-zero, well within
/// `--collective-timeout`, with one line saying it lost the coordinator, and no panic text.
#[test]
fn a_killed_coordinator_makes_each_rank_exit_with_one_line() {
    let (Some(model), Some(data)) = (shared("models/stories260K"), shared("data/tinystories_sample.txt")) else {
        return;
    };
    let dir = tmp("signals-dead-coordinator");
    let timeout = 120;
    let (mut coordinator, mut ranks) = group_after_one_step(&model, &data, &dir.join("out"), timeout);
    let before: Vec<usize> = ranks.iter().map(|r| r.seen.len()).collect();
    coordinator.child.kill().unwrap();
    let since = Instant::now();
    for (rank, survivor) in ranks.iter_mut().enumerate() {
        let fault = format!("the coordinator killed, rank {rank}");
        exits_with_one_line(survivor, before[rank], since, timeout, &fault, "lost the coordinator");
    }
}

//! Fault injection at every syscall that changes a file in a run's saves (each `step-N`, the
//! rotation `--save-total-limit` makes, the final checkpoint) and in `lomo export`: strace kills
//! `lomo` (SIGKILL) or fails the call (EIO) at the 1st, 2nd, … Nth such call in turn, and after
//! each the next start's recovery (`save_dir::prepare`, what `lomo train` runs first) must give
//! back every checkpoint complete before the fault, bit for bit, and leave nothing half-written.
//!
//! strace counts a `when=K` injection per syscall and per thread ("Accounting of syscalls that
//! are subject to injection is done per syscall and per tracee", `man strace`), so one fault is
//! injected into one syscall name at the K-th call of that name by the thread that saves, K read
//! off a clean run's trace of every call of that name. The faulted run's own trace then shows
//! that the call it stopped at is the one meant: same thread, syscall and paths (up to the
//! process id), so K walks the save's calls in order.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use lomo_cli::save_dir::COMPLETE;
use lomo_testutil::shared;

fn ok(out: &Output) {
    assert!(out.status.success(), "lomo failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
}

fn tmp(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Whether strace, which injects the faults, is here; if not, says how to get it (a failure
/// under `CI`, whose `.ci/run` installs it).
fn have_strace() -> bool {
    if Command::new("strace").arg("-V").output().is_ok_and(|o| o.status.success()) {
        return true;
    }
    let note = "strace is missing: `apt-get install strace` (the fault-injection tests inject with it)";
    assert!(std::env::var_os("CI").is_none(), "{note}");
    eprintln!("skipping: {note}");
    false
}

/// `lomo train`'s flags for a short stories260K run saving to `base/out` (the kill test's in
/// `cli.rs`), a `step-N` after every step, only the newest `limit` of them kept.
fn short_run(model: &Path, data: &Path, base: &Path, limit: &str) -> Vec<String> {
    std::fs::create_dir_all(base).unwrap();
    let (model, data, save) = (model.to_str().unwrap(), data.to_str().unwrap(), base.join("out"));
    let flags = ["train", "--model", model, "--data", data, "--optimizer", "adalomo", "--lr", "0.01", "--steps", "3"];
    let more =
        ["--batch-size", "2", "--max-len", "64", "--seed", "3", "--save-every", "1", "--save-total-limit", limit];
    let mut args: Vec<String> = flags.iter().chain(&more).map(|s| s.to_string()).collect();
    args.extend(["--save".to_string(), save.to_str().unwrap().to_string()]);
    args
}

/// The syscalls that change files (`openat` only with `O_CREAT`): what a save, a rotation and an
/// export are made of. The trace of a clean run lists which of them each one really makes.
const CHANGING: &[&str] = &[
    "openat",
    "creat",
    "mkdir",
    "mkdirat",
    "write",
    "pwrite64",
    "writev",
    "pwritev",
    "pwritev2",
    "copy_file_range",
    "sendfile",
    "ftruncate",
    "fallocate",
    "fsync",
    "fdatasync",
    "sync_file_range",
    "rename",
    "renameat",
    "renameat2",
    "link",
    "linkat",
    "unlink",
    "unlinkat",
    "rmdir",
];

/// One traced call: its thread (0 for the process's main thread, which saves; another's id,
/// which differs from run to run), the syscall, the paths it names (its quoted path arguments and
/// the paths strace's `-y` prints for its descriptors, with the run's directory cut to `B` and
/// the process id to `PID`), and which call of its syscall in its thread it is (1-based: what
/// strace's `when=` counts).
#[derive(Debug, Clone)]
struct Call {
    tid: u32,
    name: String,
    paths: Vec<String>,
    nth: usize,
    /// It returned an error (a `mkdir` of a directory that is there): failing it changes nothing.
    failed: bool,
}

impl Call {
    /// The same call of another run: thread, syscall, paths and count, whatever it returned.
    fn same(&self, other: &Call) -> bool {
        (self.tid, &self.name, &self.paths, self.nth) == (other.tid, &other.name, &other.paths, other.nth)
    }

    fn show(&self) -> String {
        format!("{}({})", self.name, self.paths.join(", "))
    }
}

/// The calls of `CHANGING` in an `strace -f -y` log of a run in `base` whose process is `pid`
/// (the first line's), in order.
fn calls(log: &str, base: &Path) -> Vec<Call> {
    let base = base.display().to_string();
    let pid = log.split_whitespace().next().unwrap_or_default().to_string();
    let mut seen: BTreeMap<(u32, String), usize> = BTreeMap::new();
    let mut out = Vec::new();
    for line in log.lines() {
        let Some((tid, rest)) = line.split_once(' ') else { continue };
        let Ok(tid) = tid.parse::<u32>() else { continue };
        let tid = if tid.to_string() == pid { 0 } else { tid };
        let rest = rest.trim_start();
        let Some((name, args)) = rest.split_once('(') else { continue };
        if name.starts_with('<') || !CHANGING.contains(&name) {
            continue;
        }
        let nth = seen.entry((tid, name.to_string())).or_default();
        *nth += 1;
        if name == "openat" && !args.contains("O_CREAT") {
            continue;
        }
        let paths = quoted_paths(args.split(") = ").next().unwrap_or(args))
            .map(|p| {
                let p = p.replace(&base, "B");
                ["tmp-", "old-", "del-", "check-"]
                    .iter()
                    .fold(p, |p, k| p.replace(&format!("{k}{pid}"), &format!("{k}PID")))
            })
            .collect();
        let failed = args.rsplit_once(") = ").is_some_and(|(_, ret)| ret.starts_with("-1"));
        out.push(Call { tid, name: name.to_string(), paths, nth: *nth, failed });
    }
    out
}

/// The absolute paths in a call's arguments: quoted (`"/…"`, escapes skipped) or a
/// descriptor's (`3</…>`); a quoted buffer is passed over whole, whatever it holds.
fn quoted_paths(args: &str) -> impl Iterator<Item = String> + '_ {
    let mut chars = args.chars();
    let mut after_digit = false;
    std::iter::from_fn(move || {
        while let Some(c) = chars.next() {
            let close = match c {
                '"' => '"',
                '<' if after_digit => '>',
                _ => {
                    after_digit = c.is_ascii_digit();
                    continue;
                }
            };
            after_digit = false;
            let mut text = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '\\' if close == '"' => {
                        chars.next();
                        text.push('?');
                    }
                    c if c == close => break,
                    c => text.push(c),
                }
            }
            if text.starts_with('/') {
                return Some(text);
            }
        }
        None
    })
}

/// The calls of the save (or export) under test: those of `CHANGING` naming `B` itself (the
/// `fsync` of the directory a checkpoint or a file is renamed in) or a path in `B/` that starts
/// with one of `under`, except `--save`'s writability probe at the start.
fn points(calls: &[Call], under: &[&str]) -> Vec<Call> {
    calls
        .iter()
        .filter(|c| c.paths.iter().any(|p| p == "B" || under.iter().any(|u| p.starts_with(&format!("B/{u}")))))
        .filter(|c| !c.paths.iter().any(|p| p.contains(".lomo-write-check")))
        .cloned()
        .collect()
}

/// A fault at call `at`: `signal=SIGKILL` or `error=EIO`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    Kill,
    Fail,
}

/// Runs `lomo args` under strace in `base` (its log `base/strace.log`), with `fault` injected at
/// `at`, and returns its output and the calls it made.
fn traced(base: &Path, args: &[String], fault: Option<(Fault, &Call)>) -> (Output, Vec<Call>) {
    let log = base.join("strace.log");
    let mut command = Command::new("strace");
    command.args(["-f", "-qq", "-y", "-e", &format!("trace={}", CHANGING.join(",")), "-o"]).arg(&log);
    if let Some((fault, at)) = fault {
        let how = match fault {
            Fault::Kill => "signal=SIGKILL",
            Fault::Fail => "error=EIO",
        };
        command.args(["-e", &format!("inject={}:{how}:when={}", at.name, at.nth)]);
    }
    let out = command.arg(env!("CARGO_BIN_EXE_lomo")).args(args).output().expect("run strace");
    let calls = calls(&std::fs::read_to_string(&log).unwrap(), base);
    (out, calls)
}

/// Checks that a run faulted at `at` stopped there: killed at it, or failing (exit 2, one error
/// line, no panic) with it as its last changing call in the saving thread but for the removal
/// of what the failed write had staged.
fn stopped_at(out: &Output, calls: &[Call], fault: Fault, at: &Call, what: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    match fault {
        Fault::Kill => {
            assert_eq!(out.status.signal(), Some(9), "{what}: no kill at {}\n{err}", at.show());
            let last = calls.iter().rev().find(|c| c.tid == at.tid);
            assert!(last.is_some_and(|l| l.same(at)), "{what}: killed at {last:?}");
        }
        Fault::Fail => {
            assert_eq!(out.status.code(), Some(2), "{what}: at {}\n{err}", at.show());
            assert!(!err.contains("panicked"), "{what}: {err}");
            assert!(err.trim_end().lines().last().is_some_and(|l| l.starts_with("error: ")), "{what}: {err}");
            let failed = calls.iter().find(|c| c.same(at));
            assert!(failed.is_some_and(|c| c.failed), "{what}: the failure was meant for {}", at.show());
        }
    }
}

/// The regular files directly in `dir` and their bytes, the run directory's path in a text
/// file cut to `B` (`lomo_config.toml` names `--save`).
fn files(dir: &Path, base: &Path) -> BTreeMap<String, Vec<u8>> {
    let base = base.display().to_string();
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            let bytes = match String::from_utf8(bytes) {
                Ok(text) => text.replace(&base, "B").into_bytes(),
                Err(e) => e.into_bytes(),
            };
            out.insert(path.file_name().unwrap().to_string_lossy().into_owned(), bytes);
        }
    }
    out
}

/// What a killed or failed save may leave only until the next start has recovered it.
fn leftovers(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.contains(".tmp") || name.contains(".old-") || name.contains(".del-") || name == COMPLETE {
            found.push(path.clone());
        }
        if path.is_dir() {
            found.extend(leftovers(&path));
        }
    }
    found
}

/// The checkpoint each call completes: the rename of a mark into `…/.NAME.tmp-PID` makes `…/NAME`
/// complete (as `out` or `out/step-N`).
fn completes(call: &Call) -> Option<String> {
    let to = call.paths.get(1).filter(|_| call.name.starts_with("rename"))?;
    let staged = to.strip_prefix("B/")?.strip_suffix(&format!("/{COMPLETE}"))?;
    let (parent, file) = staged.rsplit_once('/').unwrap_or(("", staged));
    let name = file.strip_prefix('.')?.strip_suffix(".tmp-PID")?;
    Some(if parent.is_empty() { name.to_string() } else { format!("{parent}/{name}") })
}

/// Whether `call` begins removing checkpoint `name` (`B/NAME`): an unlink or rmdir in it, or a
/// rename of it to a name recovery removes.
fn removes(call: &Call, name: &str) -> bool {
    let inside = |p: &String| p == &format!("B/{name}") || p.starts_with(&format!("B/{name}/"));
    match call.name.as_str() {
        "unlink" | "unlinkat" | "rmdir" => call.paths.iter().any(inside),
        n if n.starts_with("rename") => {
            call.paths.first().is_some_and(inside) && call.paths.get(1).is_some_and(|to| to.contains(".del-"))
        }
        _ => false,
    }
}

/// Runs `check(fault, i, call)` for a kill at every call of `points` and a failure at every one
/// that did not fail already, on as many threads as there are cores (at most 4): each case is
/// one short `lomo` run, mostly spent starting up under strace.
fn each_fault(points: &[Call], check: impl Fn(Fault, usize, &Call) + Sync) {
    let cases: Vec<(Fault, usize)> = [Fault::Kill, Fault::Fail]
        .into_iter()
        .flat_map(|fault| {
            (0..points.len()).filter(move |&i| fault == Fault::Kill || !points[i].failed).map(move |i| (fault, i))
        })
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                while let Some(&(fault, i)) = cases.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) {
                    check(fault, i, &points[i]);
                }
            });
        }
    });
}

/// The files of each checkpoint a run leaves, by name (`out`, `out/step-N`).
type Checkpoints = BTreeMap<String, BTreeMap<String, Vec<u8>>>;

/// After a fault at `what` and the next start's recovery in `base`: every checkpoint of `must`
/// is in place; every checkpoint there (`out` once it holds files, each `out/step-N`) has
/// exactly the files of the uninterrupted run's, bit for bit; and nothing of the interrupted
/// save is left over.
fn recovered(base: &Path, expected: &Checkpoints, must: &[&String], what: &str) {
    let out = base.join("out");
    lomo_cli::save_dir::prepare(&out).unwrap_or_else(|e| panic!("{what}: recovery failed: {e:#}"));
    for name in must {
        assert!(base.join(name).join("trainer_state.json").exists(), "{name} lost by {what}");
    }
    let mut there: Vec<String> = std::fs::read_dir(&out)
        .into_iter()
        .flatten()
        .map(|e| format!("out/{}", e.unwrap().file_name().to_string_lossy()))
        .filter(|n| n.starts_with("out/step-"))
        .collect();
    there.push("out".into());
    for name in there {
        let got = files(&base.join(&name), base);
        if name == "out" && got.is_empty() {
            continue; // the run's directory, before its final checkpoint
        }
        let want = expected.get(&name).unwrap_or_else(|| panic!("{what}: {name} is no checkpoint of the run"));
        assert!(
            &got == want,
            "{what}: {name} differs from the uninterrupted run's (files {:?}, expected {:?})",
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>()
        );
    }
    let left = leftovers(base);
    assert!(left.is_empty(), "{what}: left {left:?}");
}

/// A fault at each call that changes a file in a run's saves, in turn (every `openat(O_CREAT)`,
/// `mkdir`, `write`, `copy_file_range`, `fsync`, `rename`, `unlink`, `unlinkat` and `rmdir`
/// the run makes under `--save`: `step-1`, `step-2` with the rotation that removes `step-1`,
/// and the final checkpoint with its carry-over of `step-2` and its swap), as a kill and as a
/// failed call, loses nothing: after the next start's recovery, every checkpoint complete
/// before the fault is in place (a rotated one may be gone once its removal began), each
/// checkpoint on disk is the uninterrupted run's bit for bit, and nothing half-written is left.
///
/// On stories260K (AdaLomo, 3 steps) that is 167 calls: 70 `fsync`, 24 `openat(O_CREAT)`, 24
/// `write`, 15 `rename`, 12 `copy_file_range`, 10 `mkdir`, 9 `unlinkat`, 3 `unlink`; 167 kills
/// and 161 failures (the 6 `mkdir`s of a directory already there fail in the clean run too).
#[test]
fn a_fault_at_any_call_of_a_save_or_rotation_loses_no_checkpoint() {
    let (Some(model), Some(data)) = (shared("models/stories260K"), shared("data/tinystories_sample.txt")) else {
        return;
    };
    if !have_strace() {
        return;
    }
    let dir = tmp("faults-save");
    let args = |base: &Path, limit: &str| short_run(&model, &data, base, limit);
    // The checkpoints of the uninterrupted run, all kept (the run under test keeps one, which
    // its `lomo_config.toml` records; nothing else of a run depends on the limit).
    let reference = dir.join("reference");
    ok(&Command::new(env!("CARGO_BIN_EXE_lomo")).args(args(&reference, "9")).output().expect("run lomo"));
    let expected: Checkpoints = ["out", "out/step-1", "out/step-2"]
        .into_iter()
        .map(|name| {
            let mut files = files(&reference.join(name), &reference);
            let config = files.get_mut("lomo_config.toml").expect("a run config");
            let text = String::from_utf8(std::mem::take(config)).unwrap();
            assert!(text.contains("save_total_limit = 9\n"), "{text}");
            *config = text.replace("save_total_limit = 9\n", "save_total_limit = 1\n").into_bytes();
            (name.to_string(), files)
        })
        .collect();

    let clean = dir.join("clean");
    let (out, calls) = traced(&clean, &args(&clean, "1"), None);
    ok(&out);
    let points = points(&calls, &["out", ".out."]);
    assert!(points.iter().all(|c| c.tid == 0), "the saves run on the main thread: {points:?}");
    let complete: Vec<(usize, String)> =
        points.iter().enumerate().filter_map(|(i, c)| Some((i, completes(c)?))).collect();
    let names: Vec<&str> = complete.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names, ["out/step-1", "out/step-2", "out"], "{points:#?}");
    let rotation = points.iter().position(|c| removes(c, "out/step-1")).expect("the rotation of step-1");
    assert!(!clean.join("out/step-1").exists() && clean.join("out/step-2").exists());
    recovered(&clean, &expected, &[], "the clean run");

    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    points.iter().for_each(|c| *counts.entry(c.name.as_str()).or_default() += 1);
    eprintln!("faults at {} calls of the saves: {counts:?}", points.len());
    each_fault(&points, |fault, i, at| {
        let what = format!("{fault:?} at call {} of {} ({})", i + 1, points.len(), at.show());
        let base = dir.join(format!("{fault:?}-{}", i + 1));
        let (out, calls) = traced(&base, &args(&base, "1"), Some((fault, at)));
        stopped_at(&out, &calls, fault, at, &what);
        let must: Vec<&String> =
            complete.iter().filter(|(j, n)| *j < i && !(n == "out/step-1" && rotation < i)).map(|(_, n)| n).collect();
        recovered(&base, &expected, &must, &what);
        std::fs::remove_dir_all(&base).unwrap();
    });
}

/// A fault at each call that changes a file in `lomo export --gguf x.gguf` over an older
/// `x.gguf` (its `openat(O_CREAT)`, `write`s, `fsync`s and `rename`), as a kill and as a
/// failed call, leaves `x.gguf` the old file or the new one, whole, never part of one: the
/// kill may leave the temporary `x.gguf.tmp` beside it (the next export writes over it), a
/// failure removes it. Six calls: `openat(O_CREAT)`, 2 `write`, `fsync`, `rename`, and the
/// directory's `fsync`.
#[test]
fn a_fault_at_any_call_of_an_export_leaves_the_old_file_or_the_new_one() {
    let Some(model) = shared("models/stories260K") else { return };
    if !have_strace() {
        return;
    }
    let dir = tmp("faults-export");
    let export = |base: &Path, ty: &str| {
        std::fs::create_dir_all(base).unwrap();
        let gguf = base.join("x.gguf").to_str().unwrap().to_string();
        ["export", "--model", model.to_str().unwrap(), "--gguf", &gguf, "--type", ty].map(String::from).to_vec()
    };
    let lomo = |args: Vec<String>| Command::new(env!("CARGO_BIN_EXE_lomo")).args(args).output().expect("run lomo");
    ok(&lomo(export(&dir.join("old"), "q8_0")));
    ok(&lomo(export(&dir.join("new"), "f32")));
    let (old, new) = (std::fs::read(dir.join("old/x.gguf")).unwrap(), std::fs::read(dir.join("new/x.gguf")).unwrap());
    let start = |base: &Path| {
        std::fs::create_dir_all(base).unwrap();
        std::fs::write(base.join("x.gguf"), &old).unwrap();
    };
    let clean = dir.join("clean");
    start(&clean);
    let (out, calls) = traced(&clean, &export(&clean, "f32"), None);
    ok(&out);
    assert_eq!(std::fs::read(clean.join("x.gguf")).unwrap(), new);
    let points = points(&calls, &["x.gguf"]);
    assert!(points.iter().all(|c| c.tid == 0), "the export writes on the main thread: {points:?}");
    assert!(points.iter().any(|c| c.name.starts_with("rename")), "{points:#?}");
    eprintln!(
        "faults at {} calls of the export: {:?}",
        points.len(),
        points.iter().map(Call::show).collect::<Vec<_>>()
    );
    each_fault(&points, |fault, i, at| {
        let what = format!("{fault:?} at call {} of {} ({})", i + 1, points.len(), at.show());
        let base = dir.join(format!("{fault:?}-{}", i + 1));
        start(&base);
        let (out, calls) = traced(&base, &export(&base, "f32"), Some((fault, at)));
        stopped_at(&out, &calls, fault, at, &what);
        let now = std::fs::read(base.join("x.gguf")).unwrap();
        assert!(now == old || now == new, "{what}: x.gguf is neither file ({} bytes)", now.len());
        let mut names: Vec<String> = std::fs::read_dir(&base)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "strace.log")
            .collect();
        names.sort();
        let allowed: &[&str] = if fault == Fault::Kill { &["x.gguf", "x.gguf.tmp"] } else { &["x.gguf"] };
        assert!(names.iter().all(|n| allowed.contains(&n.as_str())), "{what}: left {names:?}");
        if names.len() == 2 {
            // The next export writes over what the killed one left.
            ok(&lomo(export(&base, "f32")));
            assert_eq!(std::fs::read(base.join("x.gguf")).unwrap(), new, "{what}: the export after it");
            assert!(!base.join("x.gguf.tmp").exists(), "{what}: the export after it left x.gguf.tmp");
        }
        std::fs::remove_dir_all(&base).unwrap();
    });
}

/// A resumed run keeps its `--log`'s lines up to the checkpoint's step: a fault at each call
/// that changes the log or its chart while the resumed run starts and trains (a kill and a
/// failure) leaves those lines in the log, never an emptied or cut log.
#[test]
fn a_fault_while_a_resumed_run_rewrites_its_log_keeps_the_logged_steps() {
    let (Some(model), Some(data)) = (shared("models/stories260K"), shared("data/tinystories_sample.txt")) else {
        return;
    };
    if !have_strace() {
        return;
    }
    let dir = tmp("faults-log");
    let first = dir.join("first");
    let mut args = short_run(&model, &data, &first, "9");
    args.extend(["--log".to_string(), first.join("log.jsonl").to_str().unwrap().to_string()]);
    ok(&Command::new(env!("CARGO_BIN_EXE_lomo")).args(&args).output().expect("run lomo"));
    let log = std::fs::read_to_string(first.join("log.jsonl")).unwrap();
    let kept: String = log.lines().filter(|l| !l.contains("\"step\":3")).map(|l| format!("{l}\n")).collect();
    assert_eq!(kept.lines().count(), 2, "{log}");
    // Each case resumes from step-2 of a copy of the first run's directory, with its log.
    let start = |base: &Path| {
        std::fs::create_dir_all(base.join("out/step-2")).unwrap();
        for entry in std::fs::read_dir(first.join("out/step-2")).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, base.join("out/step-2").join(path.file_name().unwrap())).unwrap();
        }
        std::fs::write(base.join("log.jsonl"), &log).unwrap();
        let (step, log) = (base.join("out/step-2"), base.join("log.jsonl"));
        ["train", "--resume", step.to_str().unwrap(), "--log", log.to_str().unwrap()].map(String::from).to_vec()
    };
    let clean = dir.join("clean");
    let (out, calls) = traced(&clean, &start(&clean), None);
    ok(&out);
    let again = std::fs::read_to_string(clean.join("log.jsonl")).unwrap();
    assert!(again.starts_with(&kept) && again.lines().count() == 3, "step 3 logged again: {again}");
    let points = points(&calls, &["log.jsonl", "loss.svg"]);
    assert!(points.iter().all(|c| c.tid == 0), "{points:?}");
    eprintln!("faults at {} calls of the log: {:?}", points.len(), points.iter().map(Call::show).collect::<Vec<_>>());
    each_fault(&points, |fault, i, at| {
        let what = format!("{fault:?} at call {} of {} ({})", i + 1, points.len(), at.show());
        let base = dir.join(format!("{fault:?}-{}", i + 1));
        let (out, calls) = traced(&base, &start(&base), Some((fault, at)));
        stopped_at(&out, &calls, fault, at, &what);
        let now = std::fs::read_to_string(base.join("log.jsonl")).unwrap();
        assert!(now.starts_with(&kept), "{what}: the log holds {now:?}");
        std::fs::remove_dir_all(&base).unwrap();
    });
}

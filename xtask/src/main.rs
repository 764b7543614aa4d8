//! Workspace tasks:
//! - `cargo xtask profile [--suite quick|paper|scale] [--backend cpu|cuda|tch]`: the peak memory
//!   and the time of one training step per case (model shape × optimizer × mode × dtype ×
//!   batch) next to the planner's prediction; see `profile/mod.rs`.
//! - `cargo xtask bench [--peer] …`: the step's throughput, side by side with PyTorch + the
//!   LOMO authors' package; see `bench/mod.rs`.

mod backend;
mod bench;
mod profile;

use std::process::ExitCode;

use backend::BackendKind;

// The profile's peak-heap numbers come from this allocator.
#[global_allocator]
static ALLOCATOR: lomo_io::memory::CountingAllocator = lomo_io::memory::CountingAllocator;

const USAGE: &str = "usage: cargo xtask profile|bench|bench-report RUN.json …  (cargo xtask bench --help for the bench)
       cargo xtask profile [--suite quick|paper|scale] [--backend cpu|cuda|tch] [--case LABEL]... [--replan]
  --case    run only this case (`fused lomo`, `full sgd`, ...; repeatable); the others keep their
            results from target/profile/<suite>.json when it has them
  --replan  recompute the planner's predictions for the measurements in target/profile/<suite>.json";

/// A command line that is not understood: exit status 2 with the message and the usage.
struct UsageError(String);

struct ProfileArgs {
    suite: String,
    backend: BackendKind,
    /// `profile-case`'s JSON case.
    case: Option<String>,
    /// Recompute the predictions for stored measurements instead of running.
    replan: bool,
    /// `--case`: the labels of the cases to run (all when empty).
    only: Vec<String>,
}

fn parse_profile_args(args: &[String], hidden_case: bool) -> Result<ProfileArgs, UsageError> {
    let mut parsed =
        ProfileArgs { suite: "quick".into(), backend: BackendKind::Cpu, case: None, replan: false, only: Vec::new() };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |flag: &str| it.next().cloned().ok_or_else(|| UsageError(format!("{flag}: missing value")));
        match arg.as_str() {
            "--suite" if !hidden_case => {
                let suite = value("--suite")?;
                if !profile::suites::SUITES.contains(&suite.as_str()) {
                    return Err(UsageError(format!(
                        "--suite: unknown suite `{suite}` ({})",
                        profile::suites::SUITES.join(", ")
                    )));
                }
                parsed.suite = suite;
            }
            "--replan" if !hidden_case => parsed.replan = true,
            "--case" if !hidden_case => parsed.only.push(value("--case")?),
            "--backend" => {
                let backend: BackendKind = value("--backend")?.parse().map_err(UsageError)?;
                backend.check_built().map_err(|e| UsageError(e.to_string()))?;
                parsed.backend = backend;
            }
            other if hidden_case && parsed.case.is_none() && !other.starts_with("--") => {
                parsed.case = Some(other.into())
            }
            other => return Err(UsageError(format!("unexpected argument `{other}`"))),
        }
    }
    if !parsed.only.is_empty() && parsed.replan {
        return Err(UsageError("--case and --replan: --replan runs nothing, so it takes no --case".into()));
    }
    if !parsed.only.is_empty() {
        let labels = profile::suites::cases(&parsed.suite)
            .map_err(|e| UsageError(e.to_string()))?
            .iter()
            .map(|c| c.label())
            .collect::<Vec<_>>();
        if let Some(unknown) = parsed.only.iter().find(|l| !labels.contains(l)) {
            return Err(UsageError(format!(
                "--case: suite `{}` has no case `{unknown}` ({})",
                parsed.suite,
                labels.join(", ")
            )));
        }
    }
    if hidden_case && parsed.case.is_none() {
        return Err(UsageError("profile-case: missing the case (JSON)".into()));
    }
    Ok(parsed)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("profile") => match parse_profile_args(&args[1..], false) {
            Ok(a) => profile::profile(&a.suite, a.backend, a.replan, &a.only).map(|_| ()),
            Err(e) => return usage(&e.0),
        },
        Some("bench") if args[1..].iter().any(|a| a == "--help" || a == "-h") => {
            println!("{}", bench::USAGE);
            return ExitCode::SUCCESS;
        }
        Some("bench") => match bench::parse_args(&args[1..]) {
            Ok(a) => bench::bench(&a).map(|_| ()),
            Err(e) => {
                eprintln!("error: {e}\n{}", bench::USAGE);
                return ExitCode::from(2);
            }
        },
        // The md and svg of a bench run again from its json (after a change to the report).
        Some("bench-report") => match args.get(1) {
            Some(path) => bench::redraw(std::path::Path::new(path)),
            None => return usage("bench-report: give the run's .json"),
        },
        // Hidden: one bench case in this process, for `bench`'s child processes.
        Some("bench-case") => match parse_profile_args(&args[1..], true) {
            Ok(a) => bench::bench_case(a.case.as_deref().unwrap_or_default(), a.backend),
            Err(e) => return usage(&e.0),
        },
        // Hidden: one case in this process, for `profile`'s child processes.
        Some("profile-case") => match parse_profile_args(&args[1..], true) {
            Ok(a) => profile::profile_case(a.case.as_deref().unwrap_or_default(), a.backend),
            Err(e) => return usage(&e.0),
        },
        Some("--help" | "-h" | "help") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some(other) => return usage(&format!("unknown task `{other}`")),
        None => return usage("no task given"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn usage(message: &str) -> ExitCode {
    eprintln!("error: {message}\n{USAGE}");
    ExitCode::from(2)
}

//! Workspace tasks:
//! - `cargo xtask profile [--suite quick|paper|scale|offload] [--backend cpu|cuda|tch]`: the peak
//!   memory and the time of one training step per case (model shape × optimizer × mode × dtype
//!   × batch) next to the planner's prediction; see `profile/mod.rs`.
//! - `cargo xtask bench [--peer] …`: the step's throughput, side by side with PyTorch + the
//!   LOMO authors' package; see `bench/mod.rs`.

mod backend;
mod bench;
mod profile;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use backend::BackendKind;

// The profile's peak-heap numbers come from this allocator.
#[global_allocator]
static ALLOCATOR: lomo_io::memory::CountingAllocator = lomo_io::memory::CountingAllocator;

/// The tasks.
#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "lomo's workspace tasks: the profile suites and the bench"
)]
enum Task {
    /// The peak memory and the time of one training step per case (model shape × optimizer ×
    /// mode × dtype × batch) next to the planner's prediction, written to
    /// target/profile/SUITE.{json,md,svg}.
    Profile(ProfileArgs),
    /// The training step's throughput, side by side with PyTorch + the LOMO authors' package
    /// on the same checkpoint and batch, written to target/bench/NAME.{json,md,svg}.
    Bench(Box<bench::BenchArgs>),
    /// The md and svg of a bench run again from its json (after a change to the report).
    BenchReport {
        /// The run's .json.
        #[arg(value_name = "RUN.json")]
        json: PathBuf,
    },
    /// One bench case in this process, for `bench`'s child processes.
    #[command(hide = true)]
    BenchCase(CaseArgs),
    /// One profile case in this process, for `profile`'s child processes.
    #[command(hide = true)]
    ProfileCase(CaseArgs),
}

/// `cargo xtask profile`'s flags.
#[derive(Debug, clap::Args)]
struct ProfileArgs {
    /// The suite.
    #[arg(long, default_value = "quick", value_parser = clap::builder::PossibleValuesParser::new(profile::suites::SUITES))]
    suite: String,
    /// The backend.
    #[arg(long, value_enum, default_value_t = BackendKind::Cpu)]
    backend: BackendKind,
    /// Run only this case (`fused lomo`, `full sgd`, ...; repeatable); the others keep their
    /// results from target/profile/SUITE.json when it has them.
    #[arg(long = "case", value_name = "LABEL")]
    only: Vec<String>,
    /// Recompute the planner's predictions for the measurements in
    /// target/profile/SUITE.json (runs nothing, so it takes no --case).
    #[arg(long, conflicts_with = "only")]
    replan: bool,
}

/// The hidden subcommands' flags: one case, as JSON.
#[derive(Debug, clap::Args)]
struct CaseArgs {
    /// The backend.
    #[arg(long, value_enum, default_value_t = BackendKind::Cpu)]
    backend: BackendKind,
    /// The case (JSON).
    case: String,
}

/// A command line of `task` that parses but is not usable: clap's usage error with the task's
/// usage line, exit status 2.
fn usage_error(task: &str, message: impl std::fmt::Display) -> ! {
    let mut command = Task::command();
    command.build();
    let mut task = command.find_subcommand(task).cloned().unwrap_or(command);
    task.error(clap::error::ErrorKind::InvalidValue, message).exit()
}

impl ProfileArgs {
    /// Checks the backend and the `--case` labels against the suite.
    fn check(&self) {
        backend::check_built(self.backend).unwrap_or_else(|e| usage_error("profile", e));
        if self.only.is_empty() {
            return;
        }
        let labels = match profile::suites::cases(&self.suite) {
            Ok(cases) => cases.iter().map(|c| c.label()).collect::<Vec<_>>(),
            Err(e) => usage_error("profile", e),
        };
        if let Some(unknown) = self.only.iter().find(|l| !labels.contains(l)) {
            usage_error(
                "profile",
                format!("--case: suite `{}` has no case `{unknown}` ({})", self.suite, labels.join(", ")),
            );
        }
    }
}

fn main() -> ExitCode {
    let result = match Task::parse() {
        Task::Profile(a) => {
            a.check();
            profile::profile(&a.suite, a.backend, a.replan, &a.only).map(|_| ())
        }
        Task::Bench(a) => {
            let a = a.resolve().unwrap_or_else(|e| usage_error("bench", e));
            bench::bench(&a).map(|_| ())
        }
        Task::BenchReport { json } => bench::redraw(&json),
        Task::BenchCase(a) => bench::bench_case(&a.case, a.backend),
        Task::ProfileCase(a) => profile::profile_case(&a.case, a.backend),
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

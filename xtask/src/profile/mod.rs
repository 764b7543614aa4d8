//! `cargo xtask profile`: peak memory and time of one training step per case, next to the
//! planner's prediction (`lomo_models::plan`), written to `target/profile/<suite>.{json,md,svg}`.
//!
//! Each case runs in a child process (this binary's hidden `profile-case` subcommand), so
//! that its counting allocator and its VmHWM see that case alone.

pub mod case;
mod report;
pub mod suites;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use lomo_models::plan::MemoryPlan;
use serde::{Deserialize, Serialize};

use crate::backend::BackendKind;
use case::{Case, Measurement};

/// One case's prediction and measurement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaseResult {
    /// What ran.
    pub case: Case,
    /// Parameters of the model.
    pub params: u64,
    /// The planner's prediction.
    pub plan: MemoryPlan,
    /// What the child measured; `None` when it failed.
    pub measured: Option<Measurement>,
    /// Why the child failed.
    pub error: Option<String>,
}

impl CaseResult {
    /// Measured peak heap over predicted total, where both exist.
    pub fn plan_error(&self) -> Option<f64> {
        let heap = self.measured.as_ref()?.peak_heap?;
        Some(self.plan.total as f64 / heap as f64 - 1.0)
    }
}

/// A suite's results, as written to `<suite>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SuiteResult {
    /// The suite's name.
    pub suite: String,
    /// The backend the cases ran on.
    pub backend: BackendKind,
    /// Whether the binary was optimised (`--release`).
    pub release: bool,
    /// One entry per case, in order.
    pub cases: Vec<CaseResult>,
}

/// The workspace's `target/`, or `$CARGO_TARGET_DIR`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| {
        // xtask lives one level below the workspace root it was built in; a binary copied to
        // another machine (a GPU host without cargo) writes under the current directory.
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask has a parent");
        if workspace.join("Cargo.toml").is_file() {
            workspace.join("target")
        } else {
            PathBuf::from("target")
        }
    })
}

/// Where the reports go: `<workspace>/target/profile`, or `$CARGO_TARGET_DIR/profile`.
pub(crate) fn out_dir() -> PathBuf {
    target_dir().join("profile")
}

/// Runs one case in a child process of this binary.
fn run_child(case: &Case, backend: BackendKind) -> Result<Measurement, String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding this executable: {e}"))?;
    let json = serde_json::to_string(case).map_err(|e| e.to_string())?;
    let output = Command::new(exe)
        .args(["profile-case", "--backend", backend.name(), &json])
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("starting the case's process: {e}"))?;
    if !output.status.success() {
        use std::os::unix::process::ExitStatusExt;
        return Err(match output.status.signal() {
            Some(9) => "killed (signal 9: out of memory?)".to_string(),
            Some(sig) => format!("killed by signal {sig}"),
            None => format!("exited with {}", output.status),
        });
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().ok_or("the case printed nothing")?;
    serde_json::from_str(line).map_err(|e| format!("reading the case's result: {e}"))
}

/// `cargo xtask profile --suite <suite> --backend <backend>`. With `replan`, runs nothing:
/// recomputes the predictions for the measurements stored in `<suite>.json` (after a change
/// to the planner). With `only` (labels), runs those cases and keeps the others' results
/// from `<suite>.json` (same backend and build), if it has them.
pub fn profile(suite: &str, backend: BackendKind, replan: bool, only: &[String]) -> Result<SuiteResult> {
    crate::backend::check_built(backend)?;
    if replan {
        let path = out_dir().join(format!("{suite}.json"));
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let mut result: SuiteResult =
            serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
        for c in &mut result.cases {
            c.plan = c.case.plan(result.backend).with_context(|| format!("planning {}", c.case.label()))?;
        }
        return write_reports(result);
    }
    let cases = suites::cases(suite)?;
    let earlier = if only.is_empty() { Vec::new() } else { earlier_results(suite, backend) };
    let total = cases.len();
    let mut results = Vec::with_capacity(total);
    for (i, case) in cases.into_iter().enumerate() {
        let plan = case.plan(backend).with_context(|| format!("planning {}", case.label()))?;
        if !only.is_empty() && !only.contains(&case.label()) {
            // Not asked for: the stored result of the same case (re-planned), if any.
            let same = |r: &&CaseResult| serde_json::to_value(&r.case).ok() == serde_json::to_value(&case).ok();
            if let Some(mut kept) = earlier.iter().find(same).cloned() {
                kept.plan = plan;
                results.push(kept);
            }
            continue;
        }
        let params = case.config()?.num_params();
        eprintln!("[{}/{}] {} {} {}: running", i + 1, total, case.model_name, case.dtype, case.label());
        // A dtype the backend does not store (bf16 on wgpu) is the case's error, not a run.
        let runnable = lomo_cli::backend::check_dtype(backend, case.storage_dtype()?, None);
        let (measured, error) = match runnable.map_err(|e| e.to_string()).and_then(|()| run_child(&case, backend)) {
            Ok(m) => (Some(m), None),
            Err(e) => {
                eprintln!("  failed: {e}");
                (None, Some(e))
            }
        };
        results.push(CaseResult { case, params, plan, measured, error });
        // Written after every case, so that an interrupted suite (a long `paper` or `scale`
        // run) still leaves the cases it finished.
        let partial =
            SuiteResult { suite: suite.into(), backend, release: !cfg!(debug_assertions), cases: results.clone() };
        write_files(&partial)?;
    }
    let result = SuiteResult { suite: suite.into(), backend, release: !cfg!(debug_assertions), cases: results };
    write_reports(result)
}

/// The results stored in `<suite>.json` if they were measured on `backend` by a build like
/// this one; none otherwise.
fn earlier_results(suite: &str, backend: BackendKind) -> Vec<CaseResult> {
    let path = out_dir().join(format!("{suite}.json"));
    let Ok(text) = std::fs::read_to_string(&path) else { return Vec::new() };
    match serde_json::from_str::<SuiteResult>(&text) {
        Ok(r) if r.backend == backend && r.release != cfg!(debug_assertions) => r.cases,
        _ => Vec::new(),
    }
}

/// Writes `<suite>.{json,md,svg}` and prints the table.
fn write_reports(result: SuiteResult) -> Result<SuiteResult> {
    let table = write_files(&result)?;
    println!("{table}");
    println!("written: {}", out_dir().join(format!("{}.{{json,md,svg}}", result.suite)).display());
    Ok(result)
}

/// Writes `<suite>.{json,md,svg}`; returns the markdown table.
fn write_files(result: &SuiteResult) -> Result<String> {
    let dir = out_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let write = |ext: &str, text: &str| -> Result<()> {
        let path = dir.join(format!("{}.{ext}", result.suite));
        lomo_io::atomic::write(&path, text).with_context(|| format!("writing {}", path.display()))
    };
    write("json", &serde_json::to_string_pretty(result)?)?;
    let table = report::markdown(result);
    write("md", &table)?;
    write("svg", &report::svg(result)?)?;
    Ok(table)
}

/// The hidden `profile-case` subcommand: runs one case here, prints its measurement as one
/// JSON line.
pub fn profile_case(json: &str, backend: BackendKind) -> Result<()> {
    let case: Case = serde_json::from_str(json).context("profile-case: reading the case")?;
    let m = case::run_case(&case, backend)?;
    println!("{}", serde_json::to_string(&m)?);
    Ok(())
}

//! `cargo xtask bench`: the training step's throughput, measured side by side with PyTorch +
//! the LOMO authors' package on the same checkpoint and batch.
//!
//! The bench writes the model as an HF checkpoint and the batch as JSON under
//! `target/bench/work/`; each case then runs in a child process of this binary (`bench-case`,
//! so that its peak RSS is its own), and with `--peer` the same step runs in PyTorch through
//! `xtask/peer/torch_lomo.py` twice: with the LOMO authors' package and with PyTorch's own
//! fused-in-backward hooks (`peer.rs`; the script is compiled into this binary, so a built
//! `xtask` benches where there is no cargo or source tree). With `--backend cuda` both sides run
//! on the GPU, one after the other, each step timed to the device's end of it, and the device
//! memory is reported (`gpu.rs`). Results go to `target/bench/<name>.{json,md,svg}`.

pub mod case;
mod generate;
mod gpu;
mod peer;
mod report;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use lomo_models::rng::SplitMix64;
use lomo_models::{HfConfig, Llama, LlamaConfig, SaveOptions, StorageDtype};
use serde::{Deserialize, Serialize};

use crate::backend::BackendKind;
use case::{BenchCase, CaseKind, OursResult};
use gpu::DeviceMemoryPoll;
pub use peer::{Peer, PeerResult};

/// Token ids as `--prompt-ids` gives them (a type of its own, so that clap takes the list as
/// one value).
type TokenIds = Vec<i64>;

/// `cargo xtask bench`'s command line.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "The default model is a 134M LLaMA (hidden 768, 12 layers, FFN 2048, 12 heads, vocab 32000, \
untied) with random weights; the default batch 2 × 256 random tokens; the default case lomo.")]
pub struct BenchArgs {
    /// The model: an HF checkpoint directory or a GGUF file.
    #[arg(long, value_name = "DIR|FILE.gguf", conflicts_with = "preset")]
    model: Option<PathBuf>,
    /// A preset model (`lomo_models::presets`), with random weights.
    #[arg(long, value_name = "NAME")]
    preset: Option<String>,
    /// The storage dtype: f32, bf16 or f16.
    #[arg(long, default_value = "f32", value_name = "f32|bf16|f16")]
    dtype: StorageDtype,
    /// Rows per step.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = at_least::<1>)]
    batch_size: usize,
    /// Tokens per row (the prompt's length with --generate): default 256, with --generate 32.
    #[arg(long = "tokens", value_name = "N", value_parser = at_least::<2>)]
    tokens_flag: Option<usize>,
    /// Tokens per row, resolved from `--tokens` and `--generate`.
    #[arg(skip)]
    tokens: usize,
    /// A case: lomo, lomo-clip, adalomo or adamw (repeatable; default lomo).
    #[arg(long = "case", value_name = "lomo|lomo-clip|adalomo|adamw")]
    cases: Vec<CaseKind>,
    /// Measured steps.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = at_least::<1>)]
    steps: usize,
    /// Warm-up steps before them (not in the statistics).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = at_least::<0>)]
    warmup: usize,
    /// Threads for both sides (RAYON_NUM_THREADS for ours, torch.set_num_threads for the peer);
    /// default: every core.
    #[arg(long, value_name = "N", value_parser = at_least::<1>)]
    threads: Option<usize>,
    /// The backend of ours.
    #[arg(long, value_enum, default_value_t = BackendKind::Cpu)]
    backend: BackendKind,
    /// Also run the step in PyTorch on the same checkpoint and batch (`xtask/peer/torch_lomo.py`,
    /// on the GPU with --backend cuda), twice: with the LOMO authors' package (lomo-optim) and
    /// with PyTorch's own fused-in-backward hooks (the lomo case only); needs a Python with
    /// torch, transformers, safetensors and lomo-optim.
    #[arg(long)]
    peer: bool,
    /// The device's peak TFLOP/s for the MFU column (model FLOPs: 8 × parameters × tokens per
    /// step, forward + recompute + backward); default on CUDA, bf16/f16: the data sheet's dense
    /// figure for the GPU `nvidia-smi` names, where known. No MFU without one.
    #[arg(long, value_name = "TFLOPS")]
    peak_tflops: Option<f64>,
    /// Wait for the device at every phase of our step, so that the phase table holds device
    /// time on CUDA (each wait drains the queue, so s/step rises a little: compare s/step
    /// without it). On the CPU it changes nothing.
    #[arg(long)]
    synced_timings: bool,
    /// On a GPU: each kernel of ours timed on the device (cubecl's profiler, `LOMO_KERNEL_PROFILE`
    /// in the case's process), and the report adds, per case, the kernels of the last measured
    /// step by device time. Every kernel is synchronised on its own, so s/step rises: take
    /// s/step from a run without it.
    #[arg(long)]
    kernel_profile: bool,
    /// The peer's Python.
    #[arg(long, value_name = "PATH", default_value = "python3")]
    python: String,
    /// The reports' name (`target/bench/<name>.{json,md,svg}`): default step, with --generate
    /// generate.
    #[arg(long = "name", value_name = "NAME", value_parser = file_name)]
    name_flag: Option<String>,
    /// The reports' name, resolved from `--name` and `--generate`.
    #[arg(skip)]
    name: String,
    /// The seed of the random weights and tokens.
    #[arg(long, value_name = "N", default_value_t = 0)]
    seed: u64,
    /// Greedy decoding speed instead of the training step (prefill and tokens/s), on the backend
    /// without autodiff; with --peer beside HF transformers' `generate` on the same weights and
    /// prompt ids (the prompt: --prompt-ids, else --tokens random ids).
    #[arg(long)]
    generate: bool,
    /// The prompt of --generate, as token ids.
    #[arg(long, value_name = "1,2,3", value_parser = token_ids)]
    prompt_ids: Option<TokenIds>,
    /// Tokens --generate decodes.
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = at_least::<2>)]
    max_new_tokens: usize,
    /// Ours as N data-parallel ranks (processes on this machine, the threads shared, each with
    /// batch-size / N rows, summing over lomo-dist); reports the all-reduce time.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = at_least::<1>)]
    nproc: usize,
}

/// A whole number of at least `MIN`.
fn at_least<const MIN: usize>(v: &str) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(n) if n >= MIN => Ok(n),
        _ => Err(format!("expected a whole number ≥ {MIN}, got `{v}`")),
    }
}

fn token_ids(v: &str) -> Result<TokenIds, String> {
    match v.split(',').map(|t| t.trim().parse::<i64>()).collect::<Result<Vec<_>, _>>() {
        Ok(ids) if !ids.is_empty() => Ok(ids),
        _ => Err(format!("expected comma-separated token ids, got `{v}`")),
    }
}

fn file_name(name: &str) -> Result<String, String> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(format!("`{name}` is not a file name of letters, digits, `-`, `_`, `.`"));
    }
    Ok(name.to_string())
}

impl BenchArgs {
    /// Checks the flags that depend on each other and fills in the defaults that depend on
    /// `--generate`; the message names the flags.
    pub fn resolve(mut self) -> Result<Self, String> {
        crate::backend::check_built(self.backend).map_err(|e| e.to_string())?;
        lomo_cli::backend::check_dtype(self.backend, self.dtype, None).map_err(|e| e.to_string())?;
        self.tokens = self.tokens_flag.unwrap_or(if self.generate { 32 } else { 256 });
        self.name = self.name_flag.clone().unwrap_or_else(|| if self.generate { "generate" } else { "step" }.into());
        if self.generate && !self.cases.is_empty() {
            return Err("--generate and --case: decoding has no training cases".into());
        }
        if self.cases.is_empty() {
            self.cases.push(CaseKind::Lomo);
        }
        if self.nproc > 1 {
            if self.generate || self.peer {
                return Err(
                    "--nproc: data parallel measures our training step alone (not with --generate or --peer)".into()
                );
            }
            if !self.batch_size.is_multiple_of(self.nproc) {
                return Err(format!("--nproc {}: must divide --batch-size {}", self.nproc, self.batch_size));
            }
            if self.cases.contains(&CaseKind::Adamw) {
                return Err("--nproc: the adamw case (full backward) has no data parallel".into());
            }
        }
        self.cases.dedup();
        Ok(self)
    }
}

/// The default model: the 134M LLaMA of the side-by-side table.
fn default_config() -> Result<LlamaConfig> {
    let hf: HfConfig = serde_json::from_value(serde_json::json!({
        "model_type": "llama", "vocab_size": 32000, "hidden_size": 768, "intermediate_size": 2048,
        "num_hidden_layers": 12, "num_attention_heads": 12, "num_key_value_heads": 12,
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": false, "bos_token_id": 1, "eos_token_id": 2,
    }))?;
    Ok(hf.resolve(Path::new("llama-134m"))?)
}

/// One case's results, ours and the peer's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaseResult {
    /// The update.
    pub kind: CaseKind,
    /// Ours; `None` with `error`.
    pub ours: Option<OursResult>,
    /// Why ours failed.
    pub error: Option<String>,
    /// PyTorch + lomo-optim, with `--peer` where it has the case.
    pub peer: Option<PeerResult>,
    /// Why the peer did not run or failed.
    pub peer_error: Option<String>,
    /// PyTorch's own fused-in-backward hooks, with `--peer` where it has the case (lomo).
    #[serde(default)]
    pub hooks: Option<PeerResult>,
    /// Why the hooks peer did not run or failed.
    #[serde(default)]
    pub hooks_error: Option<String>,
}

/// A bench run, as written to `<name>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchResult {
    /// `--name`.
    pub name: String,
    /// What the model is.
    pub model: String,
    /// Parameters.
    pub params: u64,
    /// Storage dtype.
    pub dtype: String,
    /// Rows per step.
    pub batch_size: usize,
    /// Tokens per row.
    pub tokens: usize,
    /// Warm-up steps (not in the statistics).
    pub warmup: usize,
    /// Backend of ours.
    pub backend: BackendKind,
    /// Threads given to both sides; `None`: every core.
    pub threads: Option<usize>,
    /// Data-parallel ranks of ours (`--nproc`), sharing the threads.
    #[serde(default = "one")]
    pub nproc: usize,
    /// Cores of this machine.
    pub cores: usize,
    /// Whether this binary was optimised.
    pub release: bool,
    /// The peak the MFU divides by, TFLOP/s, and where it comes from.
    #[serde(default)]
    pub peak: Option<PeakFlops>,
    /// Whether our phase timers waited for the device (`--synced-timings`).
    #[serde(default)]
    pub synced_timings: bool,
    /// Whether each of our kernels was timed on the device (`--kernel-profile`).
    #[serde(default)]
    pub kernel_profile: bool,
    /// One entry per case.
    pub cases: Vec<CaseResult>,
}

/// The device's peak for the MFU.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeakFlops {
    /// TFLOP/s.
    pub tflops: f64,
    /// `--peak-tflops`, or the data-sheet table and the GPU's name.
    pub source: String,
}

fn one() -> usize {
    1
}

/// Where reports go: `<workspace>/target/bench`, or `$CARGO_TARGET_DIR/bench`.
pub fn out_dir() -> PathBuf {
    crate::profile::target_dir().join("bench")
}

/// The model `--model` / `--preset` name (the default one without either), on the CPU, and
/// what to call it in the report.
fn load_model(a: &BenchArgs) -> Result<(Llama<burn::backend::Flex>, String)> {
    let device = burn::backend::flex::FlexDevice;
    Ok(match (&a.model, &a.preset) {
        (Some(path), _) if path.is_dir() => (
            lomo_models::load(
                lomo_models::TensorSource::Hf(path.as_ref()),
                lomo_models::Residency::Resident,
                a.dtype,
                &device,
            )
            .map(|l| l.model)
            .with_context(|| format!("--model {}", path.display()))?,
            path.display().to_string(),
        ),
        (Some(path), _) if path.extension().is_some_and(|e| e == "gguf") => (
            lomo_models::GgufFile::open(path)
                .and_then(|f| {
                    lomo_models::load(
                        lomo_models::TensorSource::Gguf(&f),
                        lomo_models::Residency::Resident,
                        a.dtype,
                        &device,
                    )
                })
                .map(|l| l.model)
                .with_context(|| format!("--model {}", path.display()))?,
            path.display().to_string(),
        ),
        (Some(path), _) => bail!("--model {}: expected an HF checkpoint directory or a .gguf file", path.display()),
        (None, Some(name)) => {
            let config = lomo_models::presets::preset(name).with_context(|| format!("--preset {name}"))?;
            (
                lomo_models::load(
                    lomo_models::TensorSource::Init { config: &config, seed: a.seed },
                    lomo_models::Residency::Resident,
                    a.dtype,
                    &device,
                )?
                .model,
                format!("preset {name} (random weights)"),
            )
        }
        (None, None) => (
            lomo_models::load(
                lomo_models::TensorSource::Init { config: &default_config()?, seed: a.seed },
                lomo_models::Residency::Resident,
                a.dtype,
                &device,
            )?
            .model,
            "LLaMA 134M (random weights)".into(),
        ),
    })
}

/// Runs every case, ours (in child processes) then each peer's where it is ready (`ready`: per
/// peer, `Err` why not) and has the case.
fn run_cases(
    a: &BenchArgs,
    model_dir: &Path,
    batch_path: &Path,
    input_ids: &[i64],
    ready: &[(Peer, Result<(), String>); 2],
) -> Vec<CaseResult> {
    let mut results = Vec::new();
    for &kind in &a.cases {
        let case = BenchCase {
            kind,
            model_dir: model_dir.to_path_buf(),
            dtype: a.dtype.to_string(),
            batch_size: a.batch_size,
            tokens: a.tokens,
            input_ids: input_ids.to_vec(),
            lr: 1e-4,
            warmup: a.warmup,
            steps: a.steps,
            dist: None,
            synced_timings: a.synced_timings,
        };
        eprintln!(
            "{}: ours ({} backend{})",
            kind.name(),
            a.backend.name(),
            if a.nproc > 1 { format!(", {} ranks", a.nproc) } else { String::new() }
        );
        let result = if a.nproc > 1 {
            run_group(&case, a.backend, a.threads, a.nproc)
        } else {
            let profile = a.kernel_profile.then(|| out_dir().join(format!("{}.{}.kernels.log", a.name, kind.name())));
            run_child(&case, a.backend, a.threads, profile.as_deref())
        };
        let (ours, error) = match result {
            Ok(r) => (Some(r), None),
            Err(e) => {
                eprintln!("  failed: {e}");
                (None, Some(e))
            }
        };
        let mut sides = ready.iter().map(|(peer, ready)| {
            let optimizer = match (peer, kind.peer_optimizer()) {
                (Peer::Hooks, _) if kind != CaseKind::Lomo => None,
                (_, optimizer) => optimizer,
            };
            match (ready, optimizer) {
                (Err(e), _) => (None, Some(e.clone())),
                (Ok(()), None) => (None, Some(format!("{} has no `{}` case", peer.label(), kind.name()))),
                (Ok(()), Some(optimizer)) => {
                    eprintln!("{}: {}", kind.name(), peer.label());
                    match peer::run(a, *peer, model_dir, batch_path, optimizer, kind.clip_grad_norm()) {
                        Ok(p) => (Some(p), None),
                        Err(e) => {
                            eprintln!("  {} failed: {e}", peer.label());
                            (None, Some(e))
                        }
                    }
                }
            }
        });
        let (peer, peer_error) = sides.next().unwrap_or_default();
        let (hooks, hooks_error) = sides.next().unwrap_or_default();
        results.push(CaseResult { kind, ours, error, peer, peer_error, hooks, hooks_error });
    }
    results
}

/// The peak the MFU divides by: `--peak-tflops`, else on CUDA the data sheet's for the GPU.
fn peak_flops(a: &BenchArgs) -> Option<PeakFlops> {
    if let Some(tflops) = a.peak_tflops {
        return Some(PeakFlops { tflops, source: "--peak-tflops".into() });
    }
    if a.backend != BackendKind::Cuda {
        return None;
    }
    let name = gpu::name()?;
    let tflops = gpu::peak_tflops(&name, &a.dtype.to_string())?;
    Some(PeakFlops { tflops, source: format!("data sheet, dense {}, {name}", a.dtype) })
}

/// `cargo xtask bench …`.
pub fn bench(a: &BenchArgs) -> Result<Option<BenchResult>> {
    crate::backend::check_built(a.backend)?;
    if let Some(n) = a.threads {
        // Before anything runs on rayon's pool (ours runs in this process for --generate).
        let _ = rayon::ThreadPoolBuilder::new().num_threads(n).build_global();
    }
    let work = out_dir().join("work").join(&a.name);
    let model_dir = work.join("model");
    // The model, written once as an HF checkpoint in its storage dtype: ours and the peer read
    // these very bytes.
    let (model, description) = load_model(a)?;
    if a.generate {
        generate::bench_generate(a, model, description)?;
        return Ok(None);
    }
    let config = model.config().clone();
    if a.tokens > config.max_position_embeddings {
        bail!("--tokens {}: the model's context is {} positions", a.tokens, config.max_position_embeddings);
    }
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("clearing {}", work.display()))?;
    }
    model.save_hf(&model_dir, &SaveOptions::default()).with_context(|| format!("writing {}", model_dir.display()))?;
    drop(model);
    let mut rng = SplitMix64::new(a.seed ^ 0xbe7c_4a11);
    let input_ids: Vec<i64> =
        (0..a.batch_size * a.tokens).map(|_| (rng.next_u64() % config.vocab_size as u64) as i64).collect();
    let batch_path = work.join("batch.json");
    let rows: Vec<&[i64]> = input_ids.chunks(a.tokens).collect();
    let batch_json = serde_json::json!({ "input_ids": rows, "attention_mask": vec![vec![1; a.tokens]; a.batch_size], "labels": rows });
    std::fs::write(&batch_path, batch_json.to_string()).with_context(|| format!("writing {}", batch_path.display()))?;

    let ready = [Peer::LomoOptim, Peer::Hooks].map(|peer| {
        let ready = if a.peer { peer::check(&a.python, peer) } else { Err("not asked for (--peer)".to_string()) };
        if let (true, Err(e)) = (a.peer, &ready) {
            eprintln!("{}: {e}\n  running without it (then --python peer/bin/python)", peer.label());
        }
        (peer, ready)
    });

    let results = run_cases(a, &model_dir, &batch_path, &input_ids, &ready);
    let result = BenchResult {
        name: a.name.clone(),
        model: description,
        params: config.num_params(),
        dtype: a.dtype.to_string(),
        batch_size: a.batch_size,
        tokens: a.tokens,
        warmup: a.warmup,
        backend: a.backend,
        threads: a.threads,
        nproc: a.nproc,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        release: !cfg!(debug_assertions),
        peak: peak_flops(a),
        synced_timings: a.synced_timings,
        kernel_profile: a.kernel_profile,
        cases: results,
    };
    let dir = out_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let table = report::markdown(&result);
    for (ext, text) in
        [("json", serde_json::to_string_pretty(&result)?), ("md", table.clone()), ("svg", report::svg(&result)?)]
    {
        let path = dir.join(format!("{}.{ext}", a.name));
        lomo_io::atomic::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{table}");
    println!("written: {}", dir.join(format!("{}.{{json,md,svg}}", a.name)).display());
    Ok(Some(result))
}

/// `cargo xtask bench-report RUN.json`: writes `RUN.md` and `RUN.svg` beside it again.
pub fn redraw(json: &Path) -> Result<()> {
    let text = std::fs::read_to_string(json).with_context(|| format!("reading {}", json.display()))?;
    let result: BenchResult =
        serde_json::from_str(&text).with_context(|| format!("{}: not a bench run", json.display()))?;
    for (ext, text) in [("md", report::markdown(&result)), ("svg", report::svg(&result)?)] {
        let path = json.with_extension(ext);
        lomo_io::atomic::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("written: {}", path.display());
    }
    Ok(())
}

/// Runs one case as `nproc` ranks of a data-parallel group (child processes of this binary, each
/// with its slice of the batch and its share of the threads), with a coordinator in this
/// process; rank 0's measurement is the case's (its timers hold the sums' time, `reduce`).
fn run_group(
    case: &BenchCase,
    backend: BackendKind,
    threads: Option<usize>,
    nproc: usize,
) -> Result<OursResult, String> {
    let port = lomo_dist::free_coordinator_port().map_err(|e| format!("finding ports: {e}"))?;
    let coordinator = lomo_dist::Coordinator::start(port).map_err(|e| e.to_string())?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_rank = (threads.unwrap_or(cores) / nproc).max(1);
    let rows = case.batch_size / nproc;
    let ranks: Vec<_> = (0..nproc)
        .map(|rank| {
            let mut mine = case.clone();
            mine.input_ids = case.input_ids[rank * rows * case.tokens..(rank + 1) * rows * case.tokens].to_vec();
            mine.dist = Some(case::CaseDist { world_size: nproc, rank, coordinator: coordinator.address.clone() });
            std::thread::spawn(move || run_child(&mine, backend, Some(per_rank), None))
        })
        .collect();
    let mut results: Vec<Result<OursResult, String>> =
        ranks.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("a rank's thread panicked".into()))).collect();
    if let Some(e) = results.iter().find_map(|r| r.as_ref().err()) {
        return Err(format!("a rank failed: {e}"));
    }
    results.swap_remove(0)
}

/// Runs one case of ours in a child process of this binary.
fn run_child(
    case: &BenchCase,
    backend: BackendKind,
    threads: Option<usize>,
    kernel_profile: Option<&Path>,
) -> Result<OursResult, String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding this executable: {e}"))?;
    let json = serde_json::to_string(case).map_err(|e| e.to_string())?;
    let mut command = Command::new(exe);
    command.args(["bench-case", "--backend", backend.name(), &json]).stderr(Stdio::inherit());
    if let Some(n) = threads {
        command.env("RAYON_NUM_THREADS", n.to_string());
    }
    if let Some(file) = kernel_profile {
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        }
        command.env("LOMO_KERNEL_PROFILE", file);
    }
    command.stdout(Stdio::piped());
    let child = command.spawn().map_err(|e| format!("starting the case's process: {e}"))?;
    let poll = (backend == BackendKind::Cuda).then(|| DeviceMemoryPoll::start(child.id()));
    let output = child.wait_with_output().map_err(|e| format!("waiting for the case's process: {e}"))?;
    let nvidia_smi_peak = poll.and_then(DeviceMemoryPoll::finish);
    if !output.status.success() {
        return Err(format!("the case's process exited with {}", output.status));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().ok_or("the case printed nothing")?;
    let mut result: OursResult = serde_json::from_str(line).map_err(|e| format!("reading the case's result: {e}"))?;
    result.nvidia_smi_peak = nvidia_smi_peak;
    if let Some(file) = kernel_profile {
        let log = std::fs::read_to_string(file).map_err(|e| format!("reading {}: {e}", file.display()))?;
        result.kernels = Some(report::last_kernel_table(&log).ok_or_else(|| {
            format!("{}: no table of kernels in cubecl's profile (is this a GPU backend?)", file.display())
        })?);
    }
    Ok(result)
}

/// The hidden `bench-case` subcommand: runs one case here, prints its result as one JSON line.
pub fn bench_case(json: &str, backend: BackendKind) -> Result<()> {
    let case: BenchCase = serde_json::from_str(json).context("bench-case: reading the case")?;
    let r = case::run_case(&case, backend)?;
    println!("{}", serde_json::to_string(&r)?);
    Ok(())
}

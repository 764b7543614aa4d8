//! The PyTorch peers: the script (compiled into this binary, so that the bench runs where there
//! is no source tree), its checks, and running it for a case.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use super::gpu::DeviceMemoryPoll;
use super::BenchArgs;
use crate::backend::BackendKind;

/// `xtask/peer/torch_lomo.py`: PyTorch + lomo-optim, and PyTorch's own fused-in-backward hooks.
const TORCH_LOMO: &str = include_str!("../../peer/torch_lomo.py");
/// `xtask/peer/hf_generate.py`: HF transformers' `generate`.
const HF_GENERATE: &str = include_str!("../../peer/hf_generate.py");

/// Which PyTorch peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// PyTorch + the LOMO authors' package (lomo-optim), gradient checkpointing on.
    LomoOptim,
    /// PyTorch's own fused-in-backward: a post-accumulate-grad hook per parameter applying SGD
    /// and freeing the gradient (torchtune's `optimizer_in_bwd`), gradient checkpointing on.
    Hooks,
}

impl Peer {
    /// The name in the bench's log and reports.
    pub fn label(self) -> &'static str {
        match self {
            Peer::LomoOptim => "PyTorch + lomo-optim",
            Peer::Hooks => "PyTorch hooks",
        }
    }
}

/// What the peer script printed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerResult {
    /// Every step, warm-up first.
    pub steps: Vec<PeerStep>,
    /// Peak RSS of the Python process, bytes.
    pub peak_rss: u64,
    /// torch's intra-op threads.
    pub threads: usize,
    /// Versions of torch, transformers and lomo-optim.
    pub versions: serde_json::Value,
    /// HF's attention implementation (sdpa, eager).
    pub attn_implementation: Option<String>,
    /// Where it ran (`cpu`, `cuda`, `cuda:0`).
    #[serde(default)]
    pub device: Option<String>,
    /// On CUDA: the GPU's name.
    #[serde(default)]
    pub device_name: Option<String>,
    /// On CUDA: `torch.cuda.max_memory_allocated`, bytes (torch's tensors at their peak).
    #[serde(default)]
    pub max_memory_allocated: Option<u64>,
    /// On CUDA: `torch.cuda.max_memory_reserved`, bytes (its caching allocator's peak).
    #[serde(default)]
    pub max_memory_reserved: Option<u64>,
    /// On CUDA: the process's peak device memory by `nvidia-smi`, polled by the bench, bytes
    /// (context and pool included).
    #[serde(default)]
    pub nvidia_smi_peak: Option<u64>,
}

/// One peer step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerStep {
    /// Wall seconds (on CUDA, between two `torch.cuda.synchronize()`).
    pub seconds: f64,
    /// Process CPU seconds.
    pub cpu_seconds: f64,
    /// Loss before the step's update.
    pub loss: f64,
}

/// Writes the embedded scripts beside the bench's work files, once per run; returns the path
/// of `name` (`torch_lomo.py`, `hf_generate.py`).
pub fn script(name: &str) -> Result<PathBuf, String> {
    let text = match name {
        "torch_lomo.py" => TORCH_LOMO,
        "hf_generate.py" => HF_GENERATE,
        other => return Err(format!("no peer script {other}")),
    };
    let dir = super::out_dir().join("work").join("peer");
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let path = dir.join(name);
    lomo_io::atomic::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(path)
}

/// Whether `python` imports what `peer` needs; the error says what is missing.
pub fn check(python: &str, peer: Peer) -> Result<(), String> {
    match peer {
        Peer::LomoOptim => check_python(python, "import torch, transformers, safetensors, lomo_optim"),
        Peer::Hooks => check_python(python, "import torch, transformers, safetensors"),
    }
}

/// Whether `python` runs `imports`; the error names the interpreter and the import that failed.
pub fn check_python(python: &str, imports: &str) -> Result<(), String> {
    let out = Command::new(python).args(["-c", imports]).output().map_err(|e| format!("`{python}`: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or("").to_string();
        return Err(format!("`{python}` cannot `{imports}` ({last}); make a peer with `python3 -m venv peer && peer/bin/pip install torch transformers safetensors lomo-optim`"));
    }
    Ok(())
}

/// The peer's `--device`: the GPU where ours runs on CUDA, else the CPU (PyTorch has no wgpu
/// device; which GPU a ROCm or MPS torch would name is not ours to guess).
pub fn device(backend: BackendKind) -> &'static str {
    match backend {
        BackendKind::Cuda => "cuda",
        BackendKind::Cpu | BackendKind::Wgpu | BackendKind::Tch => "cpu",
    }
}

/// Runs `peer` for one case (`optimizer`: the script's `--optimizer` for lomo-optim).
pub fn run(
    a: &BenchArgs,
    peer: Peer,
    model_dir: &Path,
    batch: &Path,
    optimizer: &str,
    clip: Option<f64>,
) -> Result<PeerResult, String> {
    let script = script("torch_lomo.py")?;
    let optimizer = if peer == Peer::Hooks { "hooks" } else { optimizer };
    let mut command = Command::new(&a.python);
    command
        .arg(&script)
        .args(["--model", &model_dir.display().to_string(), "--batch", &batch.display().to_string()])
        .args(["--optimizer", optimizer, "--dtype", &a.dtype.to_string(), "--lr", "1e-4"])
        .args(["--steps", &(a.warmup + a.steps).to_string(), "--device", device(a.backend)])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(c) = clip {
        command.args(["--clip-grad-norm", &c.to_string()]);
    }
    let threads = a.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    command.args(["--threads", &threads.to_string()]).env("OMP_NUM_THREADS", threads.to_string());
    let child = command.spawn().map_err(|e| format!("starting `{}`: {e}", a.python))?;
    let poll = (a.backend == BackendKind::Cuda).then(|| DeviceMemoryPoll::start(child.id()));
    let output = child.wait_with_output().map_err(|e| format!("waiting for `{}`: {e}", a.python))?;
    let nvidia_smi_peak = poll.and_then(DeviceMemoryPoll::finish);
    if !output.status.success() {
        return Err(format!("{} exited with {}", script.display(), output.status));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().ok_or("the peer printed nothing")?;
    let mut result: PeerResult = serde_json::from_str(line).map_err(|e| format!("reading the peer's result: {e}"))?;
    result.nvidia_smi_peak = nvidia_smi_peak;
    Ok(result)
}

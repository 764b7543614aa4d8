//! The command line. Long flag names are a public interface: scripts and docs use them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::backend::BackendKind;

/// Full-parameter fine-tuning of LLaMA-family models with LOMO on limited memory.
#[derive(Debug, Parser)]
#[command(name = "lomo", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once; boxing buys nothing
pub enum Command {
    /// Fine-tune a model (fused LOMO / AdaLomo, or full-backward SGD / AdamW).
    #[command(allow_negative_numbers = true)]
    Train(TrainArgs),
    /// Loss and perplexity on a dataset, or accuracy on a SuperGLUE task.
    #[command(allow_negative_numbers = true)]
    Eval(EvalArgs),
    /// Continue a prompt.
    #[command(allow_negative_numbers = true)]
    Generate(GenerateArgs),
    /// Write a checkpoint as a GGUF file for llama.cpp / Ollama.
    Export(ExportArgs),
    /// Data parallel on this machine: start a coordinator and N ranks of `lomo train`
    /// (`lomo launch --nproc 2 -- train --model … --batch-size 8 …`).
    Launch(LaunchArgs),
    /// Serve the coordinator of a data-parallel group spanning machines.
    Coordinator(CoordinatorArgs),
    /// Predict the peak memory of a training step before running it.
    #[command(allow_negative_numbers = true)]
    Plan(PlanArgs),
    /// Fine-tune a small LLaMA with LOMO on synthetic addition, and measure LOMO's memory
    /// against AdamW's: no download, a few minutes on a CPU.
    #[command(allow_negative_numbers = true)]
    Demo(DemoArgs),
}

/// The update rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// Fused LOMO: SGD inside a stage-wise backward pass.
    Lomo,
    /// Fused AdaLomo: LOMO with a factored adaptive rate.
    Adalomo,
    /// Full backward, then AdamW (the memory baseline).
    Adamw,
    /// Full backward, then SGD.
    Sgd,
}

/// Where `--offload` keeps the weights of the stages that are not running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OffloadArg {
    /// Host memory (the device holds the running stage).
    Host,
    /// A directory of safetensors files, one per stage.
    Disk,
}

/// Storage dtype of the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DtypeArg {
    F32,
    Bf16,
    F16,
}

impl DtypeArg {
    pub fn storage(self) -> lomo_models::StorageDtype {
        match self {
            Self::F32 => lomo_models::StorageDtype::F32,
            Self::Bf16 => lomo_models::StorageDtype::BF16,
            Self::F16 => lomo_models::StorageDtype::F16,
        }
    }
}

/// The learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleArg {
    Constant,
    Linear,
    Cosine,
}

/// A dataset format, overriding detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FormatArg {
    /// `{"input_ids": [...], "labels": [...]}` per line.
    Pretokenized,
    /// Plain text (`.txt`, or JSONL with "text"), packed into windows.
    Text,
    /// Alpaca `{instruction, input, output}` (JSON or JSONL).
    Alpaca,
    /// Chat JSONL `{"messages": [{role, content}]}`.
    Chat,
    /// A SuperGLUE task's JSONL (needs --task).
    Superglue,
}

/// Where the model comes from.
#[derive(Debug, Clone, PartialEq, Args, serde::Serialize)]
#[group(required = false, multiple = false)]
pub struct ModelSourceArgs {
    /// An HF checkpoint directory (config.json + safetensors) or a .gguf file.
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// Random weights of a preset's shape (stories260k, smollm2-135m, tinyllama-1.1b,
    /// llama-3.2-1b, llama-3.2-3b, llama-7b, llama-13b, llama-30b, llama-65b).
    #[arg(long, value_name = "NAME")]
    pub preset: Option<String>,
}

/// `lomo train`'s flags. Serialized (snake_case keys) as the run's resolved config,
/// `lomo_config.toml`, which `--config` reads back: see [`crate::config`].
#[derive(Debug, Clone, PartialEq, Args, serde::Serialize)]
pub struct TrainArgs {
    /// Read flags from a TOML file: each flag as a snake_case key (`batch_size = 8`,
    /// `data = ["a.jsonl"]`, `no_shuffle = true`); flags on the command line override it.
    #[arg(long, value_name = "FILE.toml")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    #[serde(flatten)]
    pub source: ModelSourceArgs,
    /// Training data; repeat to concatenate several files (e.g. a task's train and dev32).
    #[arg(long, value_name = "PATH", required = true)]
    pub data: Vec<PathBuf>,
    /// Data format (detected from the file when absent).
    #[arg(long, value_enum, value_name = "F")]
    pub format: Option<FormatArg>,
    /// SuperGLUE task of --data (rte, cb, copa, boolq, wic, wsc, multirc).
    #[arg(long, value_name = "T")]
    pub task: Option<String>,
    #[arg(long, value_enum, value_name = "NAME")]
    pub optimizer: OptimizerKind,
    /// Peak learning rate.
    #[arg(long, value_name = "F")]
    pub lr: f64,
    #[arg(long, value_enum, default_value = "constant")]
    pub schedule: ScheduleArg,
    /// Fraction of the steps that warm up linearly.
    #[arg(long, value_name = "F", default_value_t = 0.0)]
    pub warmup_ratio: f64,
    /// Optimizer steps to run.
    #[arg(long, value_name = "N", conflicts_with = "epochs", required_unless_present = "epochs")]
    pub steps: Option<u64>,
    /// Passes over the data.
    #[arg(long, value_name = "N")]
    pub epochs: Option<u64>,
    /// Examples per optimizer step.
    #[arg(long, value_name = "N")]
    pub batch_size: usize,
    /// Examples per forward/backward (gradient accumulation inside the fused step).
    #[arg(long, value_name = "N")]
    pub micro_batch_size: Option<usize>,
    /// Longest example in tokens (longer ones are truncated, keeping the answer).
    #[arg(long, value_name = "N", default_value_t = 512)]
    pub max_len: usize,
    /// Skip examples whose answer alone is longer than --max-len (counted), instead of failing.
    #[arg(long)]
    pub skip_overlong: bool,
    /// Clip by global gradient norm (costs a second backward pass in the fused step).
    #[arg(long, value_name = "F")]
    pub clip_grad_norm: Option<f64>,
    /// Clamp each gradient element to [-F, F].
    #[arg(long, value_name = "F")]
    pub clip_grad_value: Option<f64>,
    #[arg(long, value_name = "F", default_value_t = 0.0)]
    pub weight_decay: f64,
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DtypeArg,
    #[arg(long, value_enum, default_value = "cpu")]
    pub backend: BackendKind,
    /// Place the stages on several devices, a contiguous range each, split by the planner
    /// (`lomo plan --devices N` prints the split): `cuda:0,cuda:1,…` or `all` with `--backend
    /// cuda`; `cuda:N`, `cpu`, `mps` with `--backend tch`; `wgpu` (the default adapter), `wgpu:N`
    /// (the N-th discrete GPU), `wgpu:integrated:N`, `wgpu:cpu` or `all` (every discrete GPU) with
    /// `--backend wgpu`; `cpu` (repeated) on the CPU backend, which has one device: the placement
    /// runs and nothing moves. Fused step only.
    #[arg(long, value_name = "LIST")]
    pub devices: Option<String>,
    /// Keep each stage's weights off the device while the stage is not running, bringing them
    /// in just before it runs and writing the update back after: `host` (host memory; on the CPU
    /// backend nothing moves) or `disk` (a working copy, one safetensors file per stage, in
    /// --offload-dir; the model is never whole in memory). Fused step only.
    #[arg(long, value_enum, value_name = "WHERE")]
    pub offload: Option<OffloadArg>,
    /// The working copy of `--offload disk` (default: `offload` inside --save). Made from
    /// --model (never written) or --preset at the start of a run, or from --resume's checkpoint.
    #[arg(long, value_name = "DIR")]
    pub offload_dir: Option<PathBuf>,
    /// Seed of the shuffle, the random init of a preset, and sampling.
    #[arg(long, value_name = "N", default_value_t = 42)]
    pub seed: u64,
    /// Keep the data in file order.
    #[arg(long)]
    pub no_shuffle: bool,
    /// Evaluation data (loss, and accuracy with --task).
    #[arg(long, value_name = "PATH", requires = "eval_every")]
    pub eval: Option<PathBuf>,
    /// Evaluate every N steps (and at the end).
    #[arg(long, value_name = "N", requires = "eval")]
    pub eval_every: Option<u64>,
    /// Write the final checkpoint (HF layout) here.
    #[arg(long, value_name = "DIR")]
    pub save: Option<PathBuf>,
    /// Also write a checkpoint every N steps (to DIR/step-N).
    #[arg(long, value_name = "N", requires = "save")]
    pub save_every: Option<u64>,
    /// Keep only the newest N `step-*` checkpoints of --save-every (older ones are deleted).
    #[arg(long, value_name = "N", requires = "save_every")]
    pub save_total_limit: Option<usize>,
    /// With --save-total-limit, also keep the `step-*` checkpoint with the lowest eval loss.
    #[arg(long, requires_all = ["save_total_limit", "eval"])]
    pub keep_best: bool,
    /// Continue from a checkpoint written by --save (weights, optimizer state, step, data position).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["model", "preset"])]
    pub resume: Option<PathBuf>,
    /// One JSON object per step.
    #[arg(long, value_name = "FILE.jsonl")]
    pub log: Option<PathBuf>,
    /// Target positions (all rows together) per chunk of the loss stage: smaller, less
    /// memory for the logits. Only positions with a target reach the LM head.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub loss_chunk_tokens: usize,
    /// fp16 dynamic loss scaling's first scale (only with --dtype f16).
    #[arg(long, value_name = "F", default_value_t = 65536.0)]
    pub loss_scale: f64,
    /// Data parallel: the number of ranks (processes) in the group; each takes an equal slice
    /// of every batch. `lomo launch` sets this and the three flags below.
    #[arg(long, value_name = "N", env = "WORLD_SIZE", default_value_t = 1)]
    pub world_size: usize,
    /// Data parallel: this process's rank, 0..world-size (rank 0 logs, evaluates and saves).
    #[arg(long, value_name = "R", env = "RANK", default_value_t = 0)]
    #[serde(skip)]
    pub rank: usize,
    /// Data parallel: the coordinator (`lomo coordinator`, or the one `lomo launch` starts).
    #[arg(long, value_name = "ws://HOST:PORT", env = "LOMO_COORDINATOR")]
    #[serde(skip)]
    pub coordinator: Option<String>,
    /// Data parallel: this rank's address as the other ranks reach it; its port serves this
    /// rank's tensors (default ws://127.0.0.1 and a free port: one machine).
    #[arg(long, value_name = "ws://HOST:PORT", env = "LOMO_NODE_ADDRESS")]
    #[serde(skip)]
    pub node_address: Option<String>,
    /// Data parallel: seconds any sum across the ranks may take before this rank gives up
    /// with an error (a rank that died or never connected). Longer than an eval on rank 0.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub collective_timeout: u64,
}

/// `lomo launch`.
#[derive(Debug, Clone, Args)]
pub struct LaunchArgs {
    /// Ranks to start on this machine.
    #[arg(long, value_name = "N")]
    pub nproc: usize,
    /// The coordinator's port (default: a free one); PORT + 1 serves the ranks' barrier.
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// `train` and its flags, after `--`.
    #[arg(last = true, required = true, value_name = "train …")]
    pub command: Vec<String>,
}

/// `lomo coordinator`.
#[derive(Debug, Clone, Args)]
pub struct CoordinatorArgs {
    /// The port to serve on (the ranks' --coordinator ws://THIS_HOST:PORT); PORT + 1 serves
    /// the ranks' barrier.
    #[arg(long, value_name = "PORT")]
    pub port: u16,
}

#[derive(Debug, Clone, Args)]
pub struct EvalArgs {
    /// An HF checkpoint directory or a .gguf file.
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    #[arg(long, value_name = "PATH")]
    pub data: PathBuf,
    #[arg(long, value_enum, value_name = "F")]
    pub format: Option<FormatArg>,
    /// SuperGLUE task: accuracy by scoring every candidate answer.
    #[arg(long, value_name = "T")]
    pub task: Option<String>,
    #[arg(long, value_name = "N", default_value_t = 512)]
    pub max_len: usize,
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub batch_size: usize,
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DtypeArg,
    #[arg(long, value_enum, default_value = "cpu")]
    pub backend: BackendKind,
    /// Place the stages on several devices, as `lomo train --devices` does.
    #[arg(long, value_name = "LIST")]
    pub devices: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct GenerateArgs {
    /// An HF checkpoint directory or a .gguf file.
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    #[arg(long, value_name = "TEXT")]
    pub prompt: String,
    /// Wrap the prompt as a user turn in the model's chat template (ChatML if it has none).
    #[arg(long)]
    pub chat: bool,
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub max_new_tokens: usize,
    /// 0 (the default) is greedy.
    #[arg(long, value_name = "F", default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, value_name = "F", default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, value_name = "N", default_value_t = 42)]
    pub seed: u64,
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DtypeArg,
    #[arg(long, value_enum, default_value = "cpu")]
    pub backend: BackendKind,
    /// Place the stages on several devices, as `lomo train --devices` does.
    #[arg(long, value_name = "LIST")]
    pub devices: Option<String>,
}

/// The tensor type of an exported GGUF's matrices (norms stay F32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GgufTypeArg {
    F32,
    F16,
    #[value(name = "q8_0")]
    Q8_0,
}

#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// An HF checkpoint directory (e.g. written by `lomo train --save`) or a .gguf file.
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    /// The GGUF file to write.
    #[arg(long, value_name = "OUT.gguf")]
    pub gguf: PathBuf,
    /// f16 (llama.cpp's default), q8_0 (8-bit, half the size) or f32.
    #[arg(long = "type", value_enum, default_value = "f16")]
    pub r#type: GgufTypeArg,
    /// `general.name` (default: the checkpoint's directory or file name).
    #[arg(long, value_name = "TEXT")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub source: ModelSourceArgs,
    #[arg(long, value_enum, value_name = "NAME")]
    pub optimizer: OptimizerKind,
    #[arg(long, value_name = "N")]
    pub batch_size: usize,
    #[arg(long, value_name = "N")]
    pub micro_batch_size: Option<usize>,
    #[arg(long, value_name = "N")]
    pub max_len: usize,
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DtypeArg,
    /// Target positions per chunk of the loss stage (as `lomo train --loss-chunk-tokens`).
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub loss_chunk_tokens: usize,
    /// The backend the step would run on (the CPU backend casts through an f64 copy).
    #[arg(long, value_enum, default_value = "cpu")]
    pub backend: BackendKind,
    /// Split the stages over N devices (as `lomo train --devices` does) and print each
    /// device's peak.
    #[arg(long, value_name = "N")]
    pub devices: Option<usize>,
    /// Plan the step with the weights offloaded (as `lomo train --offload`): the resident
    /// stages' weights, the peak, and the bytes read and written per step.
    #[arg(long, value_enum, value_name = "WHERE")]
    pub offload: Option<OffloadArg>,
    /// The step clips by global norm (as `lomo train --clip-grad-norm`): one more pass over
    /// the stages, which offload reads once more.
    #[arg(long, value_name = "F")]
    pub clip_grad_norm: Option<f64>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Fine-tune this checkpoint (HF directory or .gguf) instead of the built-in small model.
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// Optimizer steps.
    #[arg(long, value_name = "N", default_value_t = 1500)]
    pub steps: u64,
    /// The optimizer. The default, AdaLomo, is the fused LOMO step with AdaLomo's adaptive rate:
    /// plain LOMO (SGD) does not learn addition from random weights in a few CPU minutes.
    #[arg(long, value_enum, default_value = "adalomo")]
    pub optimizer: OptimizerKind,
    /// Peak learning rate (cosine schedule, 5% warmup).
    #[arg(long, value_name = "F", default_value_t = 0.05)]
    pub lr: f64,
    /// Problems per step.
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub batch_size: usize,
    /// Width of the built-in model.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub hidden: usize,
    /// Decoder blocks of the built-in model.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub layers: usize,
    #[arg(long, value_name = "N", default_value_t = 42)]
    pub seed: u64,
    #[arg(long, value_enum, default_value = "cpu")]
    pub backend: BackendKind,
}

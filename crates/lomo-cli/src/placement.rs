//! What `lomo plan` and `--devices` share: the model's shape read without its weights, the
//! step's shape from the flags, and the planner's split of the stages over the devices listed.

use anyhow::{bail, Context, Result};
use lomo_models::plan::PlanConfig;
use lomo_models::{GgufFile, LlamaConfig, LossChunking, StorageDtype};

use crate::args::{ModelSourceArgs, OptimizerKind};
use crate::backend::BackendKind;

/// What a step's memory depends on besides the model's shape.
#[derive(Debug, Clone, Copy)]
pub struct StepShape {
    pub optimizer: OptimizerKind,
    pub dtype: StorageDtype,
    pub batch_size: usize,
    pub micro_batch_size: usize,
    pub max_len: usize,
    pub loss_chunk_tokens: usize,
    pub backend: BackendKind,
}

impl StepShape {
    /// The planner's request for `model`.
    pub fn plan_config(&self, model: LlamaConfig) -> PlanConfig {
        let (optimizer, mode) = self.optimizer.plan();
        PlanConfig {
            model,
            dtype: self.dtype,
            optimizer,
            mode,
            batch_size: self.batch_size,
            micro_batch_size: self.micro_batch_size,
            max_tokens: self.max_len,
            loss_chunking: LossChunking::Tokens(self.loss_chunk_tokens),
            f64_cast_staging: self.backend == BackendKind::Cpu,
        }
    }
}

/// The model's shape: a preset, an HF directory's config.json, or a GGUF's metadata, read
/// without loading a weight; and what it is, for messages.
pub fn config_of(source: &ModelSourceArgs) -> Result<(LlamaConfig, String)> {
    match (&source.model, &source.preset) {
        (_, Some(name)) => {
            Ok((lomo_models::presets::preset(name).with_context(|| format!("--preset {name}"))?, name.clone()))
        }
        (Some(path), None) => Ok((config_of_path(path)?, path.display().to_string())),
        (None, None) => bail!("give --model PATH or --preset NAME"),
    }
}

/// The shape of the checkpoint at `path` (HF directory or .gguf).
pub fn config_of_path(path: &std::path::Path) -> Result<LlamaConfig> {
    if path.is_dir() {
        let file = path.join("config.json");
        return LlamaConfig::from_file(&file).with_context(|| format!("reading {}", file.display()));
    }
    if path.extension().and_then(|e| e.to_str()) == Some("gguf") {
        let gguf = GgufFile::open(path).with_context(|| format!("reading {}", path.display()))?;
        return Ok(gguf.config()?);
    }
    if !path.exists() {
        bail!("--model {}: no such file or directory", path.display());
    }
    bail!("--model {}: expected an HF checkpoint directory or a .gguf file", path.display())
}

/// `--devices LIST`: the devices named, and the planner's split of `config`'s stages over them
/// for a step of `shape` (contiguous ranges, the smallest largest per-device peak).
pub fn split_devices<B: burn::tensor::backend::Backend>(
    list: &str,
    shape: &StepShape,
    config: LlamaConfig,
) -> Result<(lomo_models::Placement<B::Device>, lomo_models::plan::DevicePlan)> {
    place::<B>(list, shape.backend, &shape.plan_config(config))
}

/// `--devices LIST` for a command that runs the model forward only (`lomo eval`, `lomo
/// generate`): the split of [`PlanConfig::inference`] for `batch × max_len` tokens in `dtype`.
pub fn inference_placement<B: burn::tensor::backend::Backend>(
    list: &str,
    backend: BackendKind,
    model: &std::path::Path,
    dtype: StorageDtype,
    batch: usize,
    max_len: usize,
) -> Result<lomo_models::Placement<B::Device>> {
    let plan = PlanConfig::inference(config_of_path(model)?, dtype, batch, max_len, backend == BackendKind::Cpu);
    let (placement, split) = place::<B>(list, backend, &plan)?;
    lomo_cli::note!("stages on {} devices:\n{split}", split.devices.len());
    Ok(placement)
}

/// The devices `list` names on `backend`, and `plan`'s stages placed over them.
fn place<B: burn::tensor::backend::Backend>(
    list: &str,
    backend: BackendKind,
    plan: &PlanConfig,
) -> Result<(lomo_models::Placement<B::Device>, lomo_models::plan::DevicePlan)> {
    let devices = crate::backend::parse_devices::<B>(backend, list)?;
    if devices.is_empty() {
        bail!("--devices: no device listed");
    }
    plan.place(&devices).map_err(|e| anyhow::anyhow!("--devices {list}: {e}"))
}

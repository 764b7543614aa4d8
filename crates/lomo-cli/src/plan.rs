//! `lomo plan`: the predicted peak memory of a training step (weights, gradients, optimizer
//! state, activations, total) from the model's shape alone: nothing is allocated. With
//! `--devices N`, the stages split over N devices and each device's peak; `lomo train
//! --devices` places the stages by the same split.

use anyhow::{bail, Context, Result};
use lomo_models::plan::{PlanConfig, PlanOptimizer, StepMode};
use lomo_models::{GgufFile, LlamaConfig, LossChunking, StorageDtype};

use crate::args::{ModelSourceArgs, OptimizerKind, PlanArgs};
use crate::backend::BackendKind;

pub fn run(args: PlanArgs) -> Result<()> {
    if args.batch_size == 0 || args.max_len == 0 || args.loss_chunk_tokens == 0 {
        bail!("--batch-size, --max-len and --loss-chunk-tokens: must be at least 1");
    }
    let micro = args.micro_batch_size.unwrap_or(args.batch_size);
    if micro == 0 || !args.batch_size.is_multiple_of(micro) {
        bail!("--micro-batch-size: must divide --batch-size {} (got {micro})", args.batch_size);
    }
    let (model, what) = config_of(&args.source)?;
    let params = model.num_params();
    let shape = StepShape {
        optimizer: args.optimizer,
        dtype: args.dtype.storage(),
        batch_size: args.batch_size,
        micro_batch_size: micro,
        max_len: args.max_len,
        loss_chunk_tokens: args.loss_chunk_tokens,
        backend: args.backend,
    };
    let config = shape.plan_config(model);
    let (optimizer, mode) = (config.optimizer, config.mode);
    let heading = format!(
        "{what}: {params} parameters, {:?}, {} {} step, batch {} (micro-batches of {micro}) × {} tokens",
        args.dtype,
        optimizer.name(),
        mode.name(),
        args.batch_size,
        args.max_len
    );
    if let Some(target) = args.offload {
        if args.devices.is_some() {
            bail!("--offload with --devices: give one (the offload plan is for one device)");
        }
        let target = match target {
            crate::args::OffloadArg::Host => lomo_models::plan::OffloadTarget::Host,
            crate::args::OffloadArg::Disk => lomo_models::plan::OffloadTarget::Disk,
        };
        let norm_pass = args.clip_grad_norm.is_some() || args.dtype == crate::args::DtypeArg::F16;
        let plan = config.plan_offload(target, norm_pass).context("--offload")?;
        if args.json {
            println!("{}", serde_json::to_string(&plan)?);
        } else {
            println!(
                "{heading}, weights offloaded to {}",
                if target == lomo_models::plan::OffloadTarget::Host { "host memory" } else { "disk" }
            );
            print!("{plan}");
        }
        return Ok(());
    }
    match args.devices {
        None => {
            let plan = config.plan()?;
            if args.json {
                println!("{}", serde_json::to_string(&plan)?);
            } else {
                println!("{heading}");
                print!("{plan}");
            }
        }
        Some(n) => {
            let plan = config.plan_devices(n).with_context(|| format!("--devices {n}"))?;
            if args.json {
                println!("{}", serde_json::to_string(&plan)?);
            } else {
                println!("{heading}, stages split over {n} devices");
                print!("{plan}");
            }
        }
    }
    Ok(())
}

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
        let (optimizer, mode) = match self.optimizer {
            OptimizerKind::Lomo => (PlanOptimizer::Lomo, StepMode::Fused),
            OptimizerKind::Adalomo => (PlanOptimizer::AdaLomo, StepMode::Fused),
            OptimizerKind::Sgd => (PlanOptimizer::Sgd, StepMode::Full),
            OptimizerKind::Adamw => (PlanOptimizer::AdamW, StepMode::Full),
        };
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
    let devices = crate::backend::parse_devices::<B>(shape.backend, list)?;
    if devices.is_empty() {
        bail!("--devices: no device listed");
    }
    let split =
        shape.plan_config(config).plan_devices(devices.len()).map_err(|e| anyhow::anyhow!("--devices {list}: {e}"))?;
    let placement = lomo_models::Placement::from_assignment(&devices, &split.assignment)?;
    Ok((placement, split))
}

/// `--devices LIST` for a command that runs the model forward only (`lomo eval`, `lomo
/// generate`): the split the planner makes for a fused LOMO step of `batch × max_len` tokens in
/// `dtype` (the weights dominate it, as they do inference).
pub fn inference_placement<B: burn::tensor::backend::Backend>(
    list: &str,
    backend: BackendKind,
    model: &std::path::Path,
    dtype: StorageDtype,
    batch: usize,
    max_len: usize,
) -> Result<lomo_models::Placement<B::Device>> {
    let shape = StepShape {
        optimizer: OptimizerKind::Lomo,
        dtype,
        batch_size: batch,
        micro_batch_size: batch,
        max_len,
        loss_chunk_tokens: 1024,
        backend,
    };
    let (placement, split) = split_devices::<B>(list, &shape, config_of_path(model)?)?;
    eprint!("stages on {} devices:\n{split}", split.devices.len());
    Ok(placement)
}

//! `lomo plan`: the predicted peak memory of a training step (weights, gradients, optimizer
//! state, activations, total) from the model's shape alone: nothing is allocated.

use anyhow::{bail, Context, Result};
use lomo_models::plan::{PlanConfig, PlanOptimizer, StepMode};
use lomo_models::{GgufFile, LlamaConfig, LossChunking};

use crate::args::{OptimizerKind, PlanArgs};

pub fn run(args: PlanArgs) -> Result<()> {
    if args.batch_size == 0 || args.max_len == 0 || args.loss_chunk_tokens == 0 {
        bail!("--batch-size, --max-len and --loss-chunk-tokens: must be at least 1");
    }
    let micro = args.micro_batch_size.unwrap_or(args.batch_size);
    if micro == 0 || !args.batch_size.is_multiple_of(micro) {
        bail!("--micro-batch-size: must divide --batch-size {} (got {micro})", args.batch_size);
    }
    let (model, what) = config_of(&args)?;
    let (optimizer, mode) = match args.optimizer {
        OptimizerKind::Lomo => (PlanOptimizer::Lomo, StepMode::Fused),
        OptimizerKind::Adalomo => (PlanOptimizer::AdaLomo, StepMode::Fused),
        OptimizerKind::Sgd => (PlanOptimizer::Sgd, StepMode::Full),
        OptimizerKind::Adamw => (PlanOptimizer::AdamW, StepMode::Full),
    };
    let params = model.num_params();
    let config = PlanConfig {
        model,
        dtype: args.dtype.storage(),
        optimizer,
        mode,
        batch_size: args.batch_size,
        micro_batch_size: micro,
        max_tokens: args.max_len,
        loss_chunking: LossChunking::Tokens(args.loss_chunk_tokens),
        f64_cast_staging: args.backend == crate::backend::BackendKind::Cpu,
    };
    let plan = config.plan()?;
    if args.json {
        println!("{}", serde_json::to_string(&plan)?);
    } else {
        println!(
            "{what}: {params} parameters, {:?}, {} {} step, batch {} (micro-batches of {micro}) × {} tokens",
            args.dtype,
            optimizer.name(),
            mode.name(),
            args.batch_size,
            args.max_len
        );
        print!("{plan}");
    }
    Ok(())
}

/// The model's shape: a preset, an HF directory's config.json, or a GGUF's metadata.
fn config_of(args: &PlanArgs) -> Result<(LlamaConfig, String)> {
    match (&args.source.model, &args.source.preset) {
        (_, Some(name)) => Ok((lomo_models::presets::preset(name).with_context(|| format!("--preset {name}"))?, name.clone())),
        (Some(path), None) if path.is_dir() => {
            let file = path.join("config.json");
            Ok((LlamaConfig::from_file(&file).with_context(|| format!("reading {}", file.display()))?, path.display().to_string()))
        }
        (Some(path), None) if path.extension().and_then(|e| e.to_str()) == Some("gguf") => {
            let gguf = GgufFile::open(path).with_context(|| format!("reading {}", path.display()))?;
            Ok((gguf.config()?, path.display().to_string()))
        }
        (Some(path), None) => bail!("--model {}: expected an HF checkpoint directory or a .gguf file", path.display()),
        (None, None) => bail!("give --model PATH or --preset NAME"),
    }
}

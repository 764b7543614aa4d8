//! `lomo train`: the flags checked, then a [`run::Run`] set up and trained step by step.

mod log;
mod run;
mod setup;
mod store;

use anyhow::{bail, Result};

use crate::args::{OffloadArg, TrainArgs};
use crate::backend::with_backend;
use crate::checkpoint;

/// The coordinator: `--coordinator` / `LOMO_COORDINATOR`, else torchrun's `MASTER_ADDR` and
/// `MASTER_PORT` as `ws://MASTER_ADDR:MASTER_PORT`.
fn coordinator_of(args: &TrainArgs) -> Option<String> {
    args.coordinator.clone().or_else(|| {
        let host = std::env::var("MASTER_ADDR").ok()?;
        let port = std::env::var("MASTER_PORT").ok()?;
        Some(format!("ws://{host}:{port}"))
    })
}

/// Refuses flag values and combinations that cannot work, before anything is loaded (in this
/// order, so that of several wrong flags the same one is named first).
fn validate(args: &TrainArgs) -> Result<()> {
    validate_rates(args)?;
    validate_batches(args)?;
    validate_lengths(args)?;
    validate_offload(args)?;
    if !(args.loss_scale >= 1.0 && args.loss_scale.is_finite()) {
        bail!("--loss-scale: must be a finite number >= 1, got {}", args.loss_scale);
    }
    if args.dtype == crate::args::DtypeArg::F16 && !args.optimizer.fused() {
        bail!("--dtype f16 with --optimizer {:?}: fp16 training needs loss scaling, which only the fused optimizers (lomo, adalomo) do; use --dtype bf16", args.optimizer);
    }
    Ok(())
}

/// `--lr`, the clipping thresholds, `--weight-decay` and `--warmup-ratio`.
fn validate_rates(args: &TrainArgs) -> Result<()> {
    let positive = |name: &str, v: Option<f64>| -> Result<()> {
        match v {
            Some(x) if !(x > 0.0 && x.is_finite()) => bail!("--{name}: must be a finite number > 0, got {x}"),
            _ => Ok(()),
        }
    };
    positive("lr", Some(args.lr))?;
    positive("clip-grad-norm", args.clip_grad_norm)?;
    positive("clip-grad-value", args.clip_grad_value)?;
    if !(args.weight_decay >= 0.0 && args.weight_decay.is_finite()) {
        bail!("--weight-decay: must be a finite number >= 0, got {}", args.weight_decay);
    }
    if !(0.0..=1.0).contains(&args.warmup_ratio) {
        bail!("--warmup-ratio: must be in [0, 1], got {}", args.warmup_ratio);
    }
    Ok(())
}

/// `--batch-size`, the data-parallel flags and `--micro-batch-size`.
fn validate_batches(args: &TrainArgs) -> Result<()> {
    if args.batch_size == 0 {
        bail!("--batch-size: must be at least 1");
    }
    if args.world_size == 0 {
        bail!("--world-size: must be at least 1");
    }
    let per_rank = args.batch_size / args.world_size.max(1);
    if args.world_size > 1 {
        if !args.batch_size.is_multiple_of(args.world_size) {
            bail!(
                "--batch-size {}: must be a multiple of --world-size {} (each rank takes an equal slice)",
                args.batch_size,
                args.world_size
            );
        }
        if args.rank >= args.world_size {
            bail!("--rank {}: must be below --world-size {}", args.rank, args.world_size);
        }
        if coordinator_of(args).is_none() {
            bail!("--world-size {}: give --coordinator ws://HOST:PORT, or MASTER_ADDR and MASTER_PORT (or run under `lomo launch`)", args.world_size);
        }
        if args.collective_timeout == 0 {
            bail!("--collective-timeout: must be at least 1 second");
        }
    }
    if let Some(m) = args.micro_batch_size {
        if m == 0 || m > per_rank || !per_rank.is_multiple_of(m) {
            if args.world_size > 1 {
                bail!("--micro-batch-size: must divide a rank's slice, --batch-size / --world-size = {per_rank} (got {m})");
            }
            bail!("--micro-batch-size: must divide --batch-size {} (got {m})", args.batch_size);
        }
    }
    Ok(())
}

/// The run's length, the tokens' and the cadence of evaluation and saving.
fn validate_lengths(args: &TrainArgs) -> Result<()> {
    if args.steps == Some(0) || args.epochs == Some(0) {
        bail!("--steps / --epochs: must be at least 1");
    }
    if args.max_len < 2 {
        bail!("--max-len: must be at least 2");
    }
    if args.loss_chunk_tokens == 0 {
        bail!("--loss-chunk-tokens: must be at least 1");
    }
    if args.eval_every == Some(0) || args.save_every == Some(0) || args.save_total_limit == Some(0) {
        bail!("--eval-every / --save-every / --save-total-limit: must be at least 1");
    }
    Ok(())
}

/// `--offload` and `--offload-dir`.
fn validate_offload(args: &TrainArgs) -> Result<()> {
    if args.offload.is_some() && !args.optimizer.fused() {
        bail!("--offload: stages are fetched and written back by the fused step (--optimizer lomo or adalomo)");
    }
    if args.offload_dir.is_some() && args.offload != Some(OffloadArg::Disk) {
        bail!("--offload-dir: only --offload disk keeps a working copy");
    }
    if args.offload == Some(OffloadArg::Disk) {
        if args.offload_dir.is_none() && args.save.is_none() {
            bail!("--offload disk: give --offload-dir DIR for the working copy (or --save DIR, which puts it in DIR/offload)");
        }
        if args.eval.is_some() {
            bail!("--offload disk with --eval: evaluation runs the whole model at once, which --offload disk never holds; evaluate the saved checkpoint with `lomo eval`");
        }
    }
    Ok(())
}

pub fn run(args: TrainArgs) -> Result<()> {
    // A bad value from `--config` names the file's line.
    validate(&args).map_err(crate::config::locate)?;
    crate::backend::check_dtype(args.backend, args.dtype.storage(), args.devices.as_deref())?;
    if let (Some(dir), 0) = (&args.save, args.rank) {
        for note in checkpoint::prepare_save_dir(dir)? {
            lomo_cli::noteln!("note: {note}");
        }
    }
    with_backend!(args.backend, |B, device| run::Run::<B>::setup(&args, &device)?.train())
}

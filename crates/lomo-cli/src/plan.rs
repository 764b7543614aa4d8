//! `lomo plan`: the predicted peak memory of a training step (weights, gradients, optimizer
//! state, activations, total) from the model's shape alone: nothing is allocated. With
//! `--devices N`, the stages split over N devices and each device's peak; `lomo train
//! --devices` places the stages by the same split ([`crate::placement`]).

use anyhow::{bail, Context, Result};
use lomo_models::plan::{OffloadTarget, PlanConfig};

use crate::args::{OffloadArg, PlanArgs};
use crate::placement::{config_of, StepShape};

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
        return print_offload(&args, &config, &heading, target);
    }
    match args.devices {
        None => {
            let plan = config.plan()?;
            if args.json {
                lomo_cli::sayln!("{}", serde_json::to_string(&plan)?);
            } else {
                lomo_cli::sayln!("{heading}");
                lomo_cli::say!("{plan}");
            }
        }
        Some(n) => {
            let plan = config.plan_devices(n).with_context(|| format!("--devices {n}"))?;
            if args.json {
                lomo_cli::sayln!("{}", serde_json::to_string(&plan)?);
            } else {
                lomo_cli::sayln!("{heading}, stages split over {n} devices");
                lomo_cli::say!("{plan}");
            }
        }
    }
    Ok(())
}

/// `--offload host|disk`: the fused step's peak with the weights offloaded to `target`.
fn print_offload(args: &PlanArgs, config: &PlanConfig, heading: &str, target: OffloadArg) -> Result<()> {
    if args.devices.is_some() {
        bail!("--offload with --devices: give one (the offload plan is for one device)");
    }
    let target = match target {
        OffloadArg::Host => OffloadTarget::Host,
        OffloadArg::Disk => OffloadTarget::Disk,
    };
    let norm_pass = args.clip_grad_norm.is_some() || args.dtype == crate::args::DtypeArg::F16;
    let plan = config.plan_offload(target, norm_pass).context("--offload")?;
    if args.json {
        lomo_cli::sayln!("{}", serde_json::to_string(&plan)?);
    } else {
        lomo_cli::sayln!(
            "{heading}, weights offloaded to {}",
            if target == OffloadTarget::Host { "host memory" } else { "disk" }
        );
        lomo_cli::say!("{plan}");
    }
    Ok(())
}

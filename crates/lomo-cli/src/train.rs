//! `lomo train`: the training loop around [`crate::trainer::Trainer`].

use lomo_models::{On, Placement, TrainBackend};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::module::AutodiffModule;
use lomo_data::{BatchLoader, LoaderConfig, PaddingConfig};
use lomo_optim::{LrSchedule, ScheduleKind};
use serde_json::json;

use crate::alloc;
use crate::args::OffloadArg;
use crate::args::{OptimizerKind, ScheduleArg, TrainArgs};
use crate::backend::with_backend;
use crate::checkpoint::{self, TrainerState};
use crate::data::{load_training, parse_task};
use crate::eval::{evaluate, to_model_batch, EvalResult};
use crate::model::{load, load_offloaded, load_path, load_path_offloaded, Loaded};
use crate::plan::{self, StepShape};
use crate::progress::Progress;
use crate::trainer::{StepSettings, Trainer};

/// The lines of an earlier `--log` up to step `upto` (step lines and eval lines), with their
/// points added to `curves`; a missing file is an empty log, a line that is not ours an error.
fn kept_log_lines(path: &std::path::Path, upto: u64, curves: &mut crate::plot::Curves) -> Result<String> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(String::new()) };
    let mut kept = String::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("--log {}:{}: not a line lomo train wrote", path.display(), i + 1))?;
        let Some(step) = v["step"].as_u64() else { bail!("--log {}:{}: no \"step\"", path.display(), i + 1) };
        if step > upto {
            continue;
        }
        if let Some(loss) = v["eval"]["loss"].as_f64() {
            curves.eval.push((step, loss));
        } else if let (Some(loss), Some(lr)) = (v["loss"].as_f64(), v["lr"].as_f64()) {
            curves.train.push((step, loss));
            curves.lr.push((step, lr));
        }
        kept.push_str(line);
        kept.push('\n');
    }
    Ok(kept)
}

/// The coordinator: `--coordinator` / `LOMO_COORDINATOR`, else torchrun's `MASTER_ADDR` and
/// `MASTER_PORT` as `ws://MASTER_ADDR:MASTER_PORT`.
fn coordinator_of(args: &TrainArgs) -> Option<String> {
    args.coordinator.clone().or_else(|| {
        let host = std::env::var("MASTER_ADDR").ok()?;
        let port = std::env::var("MASTER_PORT").ok()?;
        Some(format!("ws://{host}:{port}"))
    })
}

/// Refuses flag values and combinations that cannot work, before anything is loaded.
fn validate(args: &TrainArgs) -> Result<()> {
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
    if args.offload.is_some() && !matches!(args.optimizer, OptimizerKind::Lomo | OptimizerKind::Adalomo) {
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
    if !(args.loss_scale >= 1.0 && args.loss_scale.is_finite()) {
        bail!("--loss-scale: must be a finite number >= 1, got {}", args.loss_scale);
    }
    if args.dtype == crate::args::DtypeArg::F16 && matches!(args.optimizer, OptimizerKind::Sgd | OptimizerKind::Adamw) {
        bail!("--dtype f16 with --optimizer {:?}: fp16 training needs loss scaling, which only the fused optimizers (lomo, adalomo) do; use --dtype bf16", args.optimizer);
    }
    Ok(())
}

pub fn run(args: TrainArgs) -> Result<()> {
    validate(&args)?;
    if let (Some(dir), 0) = (&args.save, args.rank) {
        for note in checkpoint::prepare_save_dir(dir)? {
            eprintln!("note: {note}");
        }
    }
    with_backend!(args.backend, |B, device| train::<B>(&args, &device))
}

/// `--devices LIST`: the planner's split of the model's stages over the devices listed (the
/// step's shape as this run has it: this rank's slice, its micro-batches, --max-len).
fn place_stages<B: TrainBackend>(args: &TrainArgs, list: &str) -> Result<Placement<B::Device>> {
    if !matches!(args.optimizer, OptimizerKind::Lomo | OptimizerKind::Adalomo) {
        bail!("--devices: stages are placed on devices by the fused step (--optimizer lomo or adalomo)");
    }
    let config = match &args.resume {
        Some(dir) => plan::config_of_path(dir)?,
        None => plan::config_of(&args.source)?.0,
    };
    let per_rank = args.batch_size / args.world_size.max(1);
    let shape = StepShape {
        optimizer: args.optimizer,
        dtype: args.dtype.storage(),
        batch_size: per_rank,
        micro_batch_size: args.micro_batch_size.unwrap_or(per_rank),
        max_len: args.max_len,
        loss_chunk_tokens: args.loss_chunk_tokens,
        backend: args.backend,
    };
    let (placement, split) = plan::split_devices::<B>(list, &shape, config)?;
    if args.rank == 0 {
        eprint!("stages on {} devices (predicted peaks):\n{split}", split.devices.len());
    }
    Ok(placement)
}

/// Where the weights of the stages that are not running wait (`--offload`).
enum Store<B: TrainBackend> {
    Resident(lomo_optim::Resident),
    Host(lomo_optim::HostStore<B::InnerBackend>),
    Disk(lomo_models::DiskStore),
}

impl<B: TrainBackend> Store<B> {
    fn as_dyn(&mut self) -> &mut dyn lomo_optim::StageStore<B, lomo_models::Llama<B>> {
        match self {
            Store::Resident(r) => r,
            Store::Host(h) => h,
            Store::Disk(d) => d,
        }
    }

    fn disk(&self) -> Option<&lomo_models::DiskStore> {
        match self {
            Store::Disk(d) => Some(d),
            _ => None,
        }
    }

    /// Runs `f` on the whole model (and the working copy, which holds it with `--offload disk`):
    /// host memory's weights come back for it and go again after.
    fn whole<R>(
        &mut self,
        model: lomo_models::Llama<B>,
        f: impl FnOnce(&lomo_models::Llama<B>, Option<&lomo_models::DiskStore>) -> Result<R>,
    ) -> Result<(lomo_models::Llama<B>, R)> {
        match self {
            Store::Host(h) => {
                let model = h.fetch_all(model)?;
                let r = f(&model, None)?;
                let (model, store) = lomo_optim::HostStore::new::<B, _, 3>(model, h.host().cloned())?;
                *h = store;
                Ok((model, r))
            }
            Store::Disk(d) => {
                let r = f(&model, Some(d))?;
                Ok((model, r))
            }
            Store::Resident(_) => {
                let r = f(&model, None)?;
                Ok((model, r))
            }
        }
    }
}

/// `--offload disk`'s working copy; with several ranks, each its own (`rank-R` inside it), since
/// `lomo launch` hands every rank the same flags.
fn offload_dir(args: &TrainArgs) -> Option<std::path::PathBuf> {
    let dir = match (&args.offload, &args.offload_dir, &args.save) {
        (Some(OffloadArg::Disk), Some(dir), _) => dir.clone(),
        (Some(OffloadArg::Disk), None, Some(save)) => save.join("offload"),
        _ => return None,
    };
    Some(if args.world_size > 1 { dir.join(format!("rank-{}", args.rank)) } else { dir })
}

fn train<B: TrainBackend>(args: &TrainArgs, device: &B::Device) -> Result<()> {
    let dtype = args.dtype.storage();
    let resumed = match &args.resume {
        Some(dir) => Some(checkpoint::load_state(dir)?),
        None => None,
    };
    let placement = args.devices.as_deref().map(|list| place_stages::<B>(args, list)).transpose()?;
    let on = match &placement {
        Some(p) => On::Stages(p),
        None => On::One(device),
    };
    let store_dir = offload_dir(args);
    // The host store's device: the CPU of the backend where it has one (LibTorch), the device
    // itself on the CPU backends; else host bytes.
    let host_device: Option<B::Device> = match args.backend {
        crate::backend::BackendKind::Cuda => None,
        kind => crate::backend::parse_devices::<B>(kind, "cpu").ok().and_then(|d| d.into_iter().next()),
    };
    let (mut loaded, mut store): (Loaded<B>, Store<B>) = match (&store_dir, &args.resume) {
        (Some(store_dir), resume) => {
            if let (Some(ckpt), Ok(copy)) = (resume, lomo_models::DiskStore::inspect(store_dir)) {
                let state = resumed.as_ref().expect("resumed");
                let steps: std::collections::BTreeSet<u64> = copy.stage_steps.iter().copied().collect();
                if copy.interrupted() {
                    eprintln!(
                        "--offload disk: the working copy in {} was interrupted during step {} (its stages are from steps {steps:?}); it is made again from {}, at step {}",
                        store_dir.display(), copy.step + 1, ckpt.display(), state.step
                    );
                } else {
                    eprintln!(
                        "--offload disk: the working copy in {} is at step {}; it is made again from {}, at step {}",
                        store_dir.display(),
                        copy.step,
                        ckpt.display(),
                        state.step
                    );
                }
            }
            let step = resumed.as_ref().map_or(0, |s| s.step);
            let (loaded, disk) = match &args.resume {
                Some(dir) => load_path_offloaded(dir, dtype, on, store_dir, step)?,
                None => load_offloaded(&args.source, dtype, on, args.seed, store_dir)?,
            };
            let mut disk = disk;
            // Crash tests: the write-back after this many fails, as a crash between two stages'
            // write-backs would stop the step.
            if let Ok(n) = std::env::var("LOMO_OFFLOAD_FAIL_AFTER") {
                disk.fail_after_writes(n.parse().context("LOMO_OFFLOAD_FAIL_AFTER: a number of write-backs")?);
            }
            (loaded, Store::Disk(disk))
        }
        (None, Some(dir)) => (load_path(dir, dtype, on)?, Store::Resident(lomo_optim::Resident)),
        (None, None) => (load(&args.source, dtype, on, args.seed)?, Store::Resident(lomo_optim::Resident)),
    };
    if args.offload == Some(OffloadArg::Host) {
        let inner_host = host_device.as_ref().map(|d| burn::tensor::Tensor::<B, 1>::empty([1], d).inner().device());
        let (model, host) = lomo_optim::HostStore::new::<B, _, 3>(loaded.model, inner_host)?;
        store = Store::Host(host);
        loaded = Loaded { model, ..loaded };
    }
    let Loaded { model, tokenizer, tokenizer_file, description } = loaded;
    let model = model.with_loss_chunking(lomo_models::LossChunking::Tokens(args.loss_chunk_tokens));
    let task = parse_task(args.task.as_deref())?;
    let dataset = load_training(&args.data, args.format, task, tokenizer.as_ref(), args.max_len, args.skip_overlong)?;
    if dataset.skipped_too_long > 0 {
        eprintln!(
            "skipped {} examples whose answer alone is longer than --max-len {}",
            dataset.skipped_too_long, args.max_len
        );
    }
    let vocab = model.config().vocab_size as i64;
    if let Some((i, id)) = dataset
        .examples
        .iter()
        .enumerate()
        .find_map(|(i, e)| e.input_ids.iter().find(|&&t| i64::from(t) >= vocab).map(|&t| (i, t)))
    {
        // Examples of several --data files are concatenated, so name the position in that order.
        bail!("--data: example {} (counting across the --data files in order) has token id {id}, outside the model's vocabulary of {vocab}", i + 1);
    }
    let num_examples = dataset.len();
    let mut loader_config = LoaderConfig::new(args.batch_size);
    loader_config.shuffle = !args.no_shuffle;
    loader_config.seed = args.seed;
    loader_config.padding = tokenizer.as_ref().map(PaddingConfig::for_tokenizer).unwrap_or_default();
    // Data parallel: every batch is whole, so that it splits into equal slices.
    loader_config.drop_last = args.world_size > 1;
    let mut loader = BatchLoader::new(dataset, loader_config)?;
    let total_steps = match (args.steps, args.epochs) {
        (Some(s), _) => s,
        (None, Some(e)) => e * loader.batches_per_epoch() as u64,
        (None, None) => bail!("give --steps N or --epochs N"),
    };
    let mut start_step = 0;
    let mut tokens_total: u64 = 0;
    let mut trainer = Trainer::<B>::new(
        args.optimizer,
        StepSettings {
            weight_decay: args.weight_decay,
            clip_grad_norm: args.clip_grad_norm,
            clip_grad_value: args.clip_grad_value,
            loss_scale: (args.dtype == crate::args::DtypeArg::F16).then_some(args.loss_scale),
        },
    )?;
    if let Some(state) = &resumed {
        let dir = args.resume.as_ref().expect("resumed");
        if state.optimizer != args.optimizer {
            bail!(
                "--optimizer {:?}: the checkpoint {} was trained with {:?}",
                args.optimizer,
                dir.display(),
                state.optimizer
            );
        }
        if state.batch_size != args.batch_size || state.seed != args.seed || state.shuffle == args.no_shuffle {
            bail!("--resume {}: --batch-size, --seed and --no-shuffle must be those of the interrupted run (batch size {}, seed {}, shuffle {})", dir.display(), state.batch_size, state.seed, state.shuffle);
        }
        if state.world_size != args.world_size {
            bail!("--resume {}: the run had --world-size {}, this one {} (the data slices would differ); resume with --world-size {}", dir.display(), state.world_size, args.world_size, state.world_size);
        }
        if state.total_steps != total_steps {
            bail!("--steps / --epochs: the interrupted run was for {} steps (the schedule depends on it), this one for {total_steps}", state.total_steps);
        }
        if args.optimizer == OptimizerKind::Adamw {
            bail!("--resume with --optimizer adamw: AdamW's moments are not saved in checkpoints; resume works with lomo, adalomo and sgd");
        }
        loader
            .seek(&state.data_position)
            .with_context(|| format!("--resume {}: the data differ from the interrupted run's", dir.display()))?;
        if let Some(rule) = trainer.adalomo_mut() {
            let record = checkpoint::load_adalomo::<B::InnerBackend>(dir, device)?;
            rule.load_record(record, &model)?;
        }
        if let Some(scaler) = &state.loss_scaler {
            trainer.set_scaler(scaler.clone());
        }
        start_step = state.step;
        tokens_total = state.tokens;
        if start_step >= total_steps {
            bail!("--resume {}: the run already did all {total_steps} steps", dir.display());
        }
    }
    let kind = match args.schedule {
        ScheduleArg::Constant => ScheduleKind::Constant,
        ScheduleArg::Linear => ScheduleKind::Linear,
        ScheduleArg::Cosine => ScheduleKind::Cosine,
    };
    let schedule = LrSchedule::new(kind, args.lr, args.warmup_ratio, total_steps)?;
    // A resumed run continues its log: the lines of the steps the checkpoint has are kept (those
    // of steps after it, which are about to run again, are dropped) and drawn again.
    let mut curves = crate::plot::Curves::default();
    // Data parallel: rank 0 logs, evaluates and saves; the others train quietly.
    let lead = args.rank == 0;
    let mut log = match args.log.as_ref().filter(|_| lead) {
        Some(path) => {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("--log {}: creating {}", path.display(), parent.display()))?;
            }
            let kept = if resumed.is_some() { kept_log_lines(path, start_step, &mut curves)? } else { String::new() };
            let mut file = BufWriter::new(File::create(path).with_context(|| format!("--log {}", path.display()))?);
            file.write_all(kept.as_bytes()).with_context(|| format!("--log {}", path.display()))?;
            Some(file)
        }
        None => None,
    };
    let config = crate::config::render(args)?;
    let micro = args.micro_batch_size.unwrap_or(args.batch_size / args.world_size);
    let params = model.config().num_params();
    let mut collective = if args.world_size > 1 {
        let node_address = match &args.node_address {
            Some(a) => a.clone(),
            None => format!("ws://127.0.0.1:{}", lomo_dist::free_port().context("finding a free port for this rank")?),
        };
        let dist = lomo_dist::DistConfig {
            world_size: args.world_size,
            rank: args.rank,
            coordinator: coordinator_of(args).expect("validated"),
            node_address,
            timeout: std::time::Duration::from_secs(args.collective_timeout),
        };
        let inner_device = burn::tensor::Tensor::<B, 1>::empty([1], device).inner().device();
        let c = lomo_dist::Collective::<B::InnerBackend>::join(&dist, &inner_device).context("--world-size")?;
        if lead {
            eprintln!(
                "data parallel: {} ranks, {} rows each per step",
                args.world_size,
                args.batch_size / args.world_size
            );
        }
        Some(c)
    } else {
        None
    };
    if lead {
        eprintln!(
        "training {description}: {params} parameters ({:?}), {num_examples} examples, {total_steps} steps of {} (micro-batches of {micro}), {:?}",
        args.dtype, args.batch_size, args.optimizer
    );
    }
    let progress = Progress::new(total_steps);
    let started = Instant::now();
    let mut model = model;
    let mut last_loss = f64::NAN;
    let mut eval_results: Vec<(u64, EvalResult)> = Vec::new();
    let chart = args.log.as_deref().filter(|_| lead).map(crate::plot::beside);
    alloc::reset_peak();
    for step in start_step..total_steps {
        let mut batch = loader.next_batch()?;
        if args.world_size > 1 {
            // This rank's slice: rows rank·k .. (rank+1)·k of every (whole) batch.
            let mut slices = batch.micro_batches(args.batch_size / args.world_size)?;
            if slices.len() != args.world_size {
                bail!("step {}: the batch does not split into {} slices", step + 1, args.world_size);
            }
            batch = slices.swap_remove(args.rank);
        }
        let micro_batches: Vec<lomo_models::Batch> =
            batch.micro_batches(micro)?.iter().map(to_model_batch).collect::<Result<_>>()?;
        let tokens: u64 =
            micro_batches.iter().map(|b| b.attention_mask().iter().filter(|&&m| m != 0).count() as u64).sum();
        let lr = schedule.lr(step);
        let t0 = Instant::now();
        let io_before = store.disk().map(|d| d.io());
        let (next, report) = match collective.as_mut() {
            Some(c) => trainer.step_reduced(model, &micro_batches, lr, c, store.as_dyn())?,
            None => trainer.step_reduced(model, &micro_batches, lr, &mut lomo_optim::Local, store.as_dyn())?,
        };
        model = next;
        // The working copy is whole at this step (a skipped step wrote nothing back).
        if let Store::Disk(d) = &mut store {
            if d.step() != step + 1 {
                d.write_step(step + 1).context("--offload disk")?;
            }
        }
        let offload_io = match (io_before, store.disk()) {
            (Some(before), Some(d)) => {
                Some(json!({"read_bytes": d.io().read - before.read, "written_bytes": d.io().written - before.written}))
            }
            _ => None,
        };
        let dt = t0.elapsed().as_secs_f64();
        tokens_total += tokens;
        if !report.loss.is_finite() && report.loss_scale.is_none() {
            bail!("step {}: the loss is {} (diverged); lower --lr or clip gradients", step + 1, report.loss);
        }
        last_loss = report.loss;
        if lead {
            progress.update(step + 1, report.loss, lr, tokens as f64 / dt, report.skipped);
        }
        if let Some(log) = log.as_mut() {
            let line = json!({
                "step": step + 1, "loss": report.loss, "lr": lr, "tokens": tokens, "tokens_per_s": tokens as f64 / dt,
                "seconds": dt, "grad_norm": report.grad_norm, "clip_coef": report.clip_coef, "loss_scale": report.loss_scale,
                "skipped": report.skipped, "peak_heap_bytes": alloc::peak(), "elapsed_s": progress.elapsed(), "offload": offload_io,
                "timings": (!report.timings.backward.is_empty()).then_some(&report.timings),
            });
            writeln!(log, "{line}")?;
            log.flush()?;
        }
        curves.train.push((step + 1, report.loss));
        curves.lr.push((step + 1, lr));
        let done = step + 1;
        let mut eval_loss = None;
        if let (Some(path), Some(every), true) = (&args.eval, args.eval_every, lead) {
            if done % every == 0 || done == total_steps {
                let (m, r) = store.whole(model, |m, _| {
                    evaluate(&m.valid(), tokenizer.as_ref(), path, args.format, task, args.max_len, args.batch_size)
                })?;
                model = m;
                progress.message(&format!("eval at step {done}: {}", serde_json::to_string(&r)?));
                eval_loss = Some(r.loss);
                curves.eval.push((done, r.loss));
                if let Some(log) = log.as_mut() {
                    writeln!(log, "{}", json!({"step": done, "eval": &r}))?;
                    log.flush()?;
                }
                eval_results.push((done, r));
            }
        }
        if let Some(path) = &chart {
            crate::plot::write(path, &curves)?;
        }
        let state = || TrainerState {
            step: done,
            total_steps,
            optimizer: args.optimizer,
            lr: args.lr,
            batch_size: args.batch_size,
            seed: args.seed,
            shuffle: !args.no_shuffle,
            data_position: loader.position(),
            loss_scaler: trainer.scaler().cloned(),
            tokens: tokens_total,
            eval_loss,
            world_size: args.world_size,
        };
        if let (Some(dir), Some(every), true) = (&args.save, args.save_every, lead) {
            if done % every == 0 && done != total_steps {
                let sub = dir.join(format!("step-{done}"));
                let (m, ()) = store.whole(model, |m, disk| {
                    checkpoint::save(
                        &sub,
                        m,
                        disk,
                        tokenizer.as_ref(),
                        tokenizer_file.as_deref(),
                        &state(),
                        &config,
                        trainer.adalomo().map(|r| r.to_record(m)),
                    )
                })?;
                model = m;
                progress.message(&format!("saved {}", sub.display()));
                if let Some(limit) = args.save_total_limit {
                    for old in checkpoint::rotate(dir, limit, args.keep_best)? {
                        progress.message(&format!("removed {} (--save-total-limit {limit})", old.display()));
                    }
                }
            }
        }
        if done == total_steps && lead {
            if let Some(dir) = &args.save {
                let (m, ()) = store.whole(model, |m, disk| {
                    checkpoint::save(
                        dir,
                        m,
                        disk,
                        tokenizer.as_ref(),
                        tokenizer_file.as_deref(),
                        &state(),
                        &config,
                        trainer.adalomo().map(|r| r.to_record(m)),
                    )
                })?;
                model = m;
                progress.message(&format!("saved {}", dir.display()));
            }
        }
        // The working copy is a scratch copy of what the final checkpoint holds (rank 0 writes
        // it from its own copy; every rank's weights are the same), so it goes once the run is
        // done.
        if let (true, Some(_), Some(d)) = (done == total_steps, &args.save, store.disk()) {
            std::fs::remove_dir_all(d.dir())
                .with_context(|| format!("removing the working copy {}", d.dir().display()))?;
            if lead {
                progress.message(&format!("removed the working copy {}", d.dir().display()));
            }
            if let (Some(parent), true) = (d.dir().parent(), args.world_size > 1) {
                // `offload/` once every rank's copy is gone (another rank may still hold one).
                let _ = std::fs::remove_dir(parent);
            }
        }
    }
    let wall = started.elapsed().as_secs_f64();
    if let Some(c) = collective {
        c.finish().context("--world-size")?;
    }
    if !lead {
        return Ok(());
    }
    let summary = json!({
        "steps": total_steps - start_step,
        "tokens": tokens_total,
        "wall_time_s": wall,
        "peak_heap_bytes": alloc::peak(),
        "peak_rss_bytes": alloc::peak_rss(),
        "final_loss": last_loss,
        "eval": eval_results.iter().map(|(s, r)| json!({"step": s, "result": r})).collect::<Vec<_>>(),
    });
    eprintln!(
        "done: {} steps, {tokens_total} tokens, {wall:.1} s, peak heap {}, final loss {last_loss:.4}",
        total_steps - start_step,
        alloc::human(alloc::peak())
    );
    println!("{summary}");
    Ok(())
}

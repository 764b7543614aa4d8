//! [`Run::setup`]: resume, placement, the store, the data, the optimizer, the schedule, the
//! log and the collective, in that order.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use lomo_data::{BatchLoader, LoaderConfig, PaddingConfig, SuperGlueTask, TextTokenizer};
use lomo_models::{Llama, LossChunking, On, Placement, TrainBackend};
use lomo_optim::{LrSchedule, ScheduleKind};

use super::log::Log;
use super::run::Run;
use super::store::load_model;
use crate::alloc;
use crate::args::{ScheduleArg, TrainArgs};
use crate::checkpoint::{self, TrainerState, OPTIMIZER_FILE};
use crate::data::{load_training, parse_task};
use crate::model::Loaded;
use crate::progress::Progress;
use crate::scoring::EvalSet;
use crate::trainer::{StepSettings, Trainer};

impl<'a, B: TrainBackend> Run<'a, B> {
    /// Everything a run needs before its first step, on `device` (or the devices of
    /// `--devices`); the messages of a run's start are printed here.
    pub(super) fn setup(args: &'a TrainArgs, device: &B::Device) -> Result<Self> {
        let resumed = args.resume.as_deref().map(checkpoint::load_state).transpose()?;
        let placement = args.devices.as_deref().map(|list| place_stages::<B>(args, list)).transpose()?;
        let on = match &placement {
            Some(p) => On::Stages(p),
            None => On::One(device),
        };
        let (loaded, store) = load_model::<B>(args, resumed.as_ref(), on)?;
        let Loaded { model, tokenizer, tokenizer_file, description, .. } = loaded;
        let model = model.with_loss_chunking(LossChunking::Tokens(args.loss_chunk_tokens));
        let task = parse_task(args.task.as_deref())?;
        let (mut loader, num_examples) = load_data(args, task, tokenizer.as_ref(), &model)?;
        let lead = args.rank == 0;
        // `--eval` is read and checked now, not at the first evaluation hours in.
        let eval_set = match (&args.eval, lead) {
            (Some(path), true) => Some(EvalSet::load(
                path,
                args.format,
                task,
                tokenizer.as_ref(),
                args.max_len,
                model.config().vocab_size,
            )?),
            _ => None,
        };
        let total_steps = match (args.steps, args.epochs) {
            (Some(s), _) => s,
            (None, Some(e)) => e.checked_mul(loader.batches_per_epoch() as u64).with_context(|| {
                format!(
                    "--epochs {e}: {e} × {} batches an epoch is more steps than can be counted",
                    loader.batches_per_epoch()
                )
            })?,
            (None, None) => bail!("give --steps N or --epochs N"),
        };
        let mut trainer = trainer::<B>(args)?;
        let (start_step, tokens_total) = match &resumed {
            Some(state) => resume(args, state, total_steps, &mut loader, &mut trainer, &model, device)?,
            None => (0, 0),
        };
        let schedule = schedule(args, total_steps)?;
        let log = Log::open(args, lead, resumed.is_some(), start_step)?;
        let config = crate::config::render(args)?;
        let micro = args.micro_batch_size.unwrap_or(args.batch_size / args.world_size);
        let params = model.config().num_params();
        let collective = join::<B>(args, device)?;
        if lead {
            lomo_cli::noteln!(
                "training {description}: {params} parameters ({:?}), {num_examples} examples, {total_steps} steps of {} (micro-batches of {micro}), {:?}",
                args.dtype, args.batch_size, args.optimizer
            );
            if let Some(note) = lomo_cli::backend::warm_up_note(args.backend) {
                lomo_cli::noteln!("{note}");
            }
        }
        let progress = Progress::new(total_steps);
        let started = Instant::now();
        alloc::reset_peak();
        Ok(Self {
            args,
            model: Some(model),
            store,
            tokenizer,
            tokenizer_file,
            loader,
            trainer,
            schedule,
            config,
            micro,
            collective,
            log,
            progress,
            started,
            start_step,
            total_steps,
            tokens_total,
            last_loss: f64::NAN,
            eval_set,
            eval_results: Vec::new(),
            lead,
        })
    }
}

/// The optimizer `--optimizer` names, with the settings every optimizer shares.
fn trainer<B: TrainBackend>(args: &TrainArgs) -> Result<Trainer<B>> {
    Trainer::new(
        args.optimizer,
        StepSettings {
            weight_decay: args.weight_decay,
            clip_grad_norm: args.clip_grad_norm,
            clip_grad_value: args.clip_grad_value,
            loss_scale: (args.dtype == crate::args::DtypeArg::F16).then_some(args.loss_scale),
        },
    )
}

/// The learning rate of every step of a run of `total_steps` (`--lr`, `--schedule`, `--warmup-ratio`).
fn schedule(args: &TrainArgs, total_steps: u64) -> Result<LrSchedule> {
    let kind = match args.schedule {
        ScheduleArg::Constant => ScheduleKind::Constant,
        ScheduleArg::Linear => ScheduleKind::Linear,
        ScheduleArg::Cosine => ScheduleKind::Cosine,
    };
    Ok(LrSchedule::new(kind, args.lr, args.warmup_ratio, total_steps)?)
}

/// `--devices LIST`: the planner's split of the model's stages over the devices listed (the
/// step's shape as this run has it: this rank's slice, its micro-batches, --max-len).
fn place_stages<B: TrainBackend>(args: &TrainArgs, list: &str) -> Result<Placement<B::Device>> {
    if !args.optimizer.fused() {
        bail!("--devices: stages are placed on devices by the fused step (--optimizer lomo or adalomo)");
    }
    let config = match &args.resume {
        Some(dir) => crate::placement::config_of_path(dir)?,
        None => crate::placement::config_of(&args.source)?.0,
    };
    let per_rank = args.batch_size / args.world_size.max(1);
    let shape = crate::placement::StepShape {
        optimizer: args.optimizer,
        dtype: args.dtype.storage(),
        batch_size: per_rank,
        micro_batch_size: args.micro_batch_size.unwrap_or(per_rank),
        max_len: args.max_len,
        loss_chunk_tokens: args.loss_chunk_tokens,
        backend: args.backend,
    };
    let (placement, split) = crate::placement::split_devices::<B>(list, &shape, config)?;
    if args.rank == 0 {
        lomo_cli::note!("stages on {} devices (predicted peaks):\n{split}", split.devices.len());
    }
    Ok(placement)
}

/// The training data (`--data`, checked against the model's vocabulary) and its loader; and
/// how many examples it holds.
fn load_data<B: TrainBackend>(
    args: &TrainArgs,
    task: Option<SuperGlueTask>,
    tokenizer: Option<&TextTokenizer>,
    model: &Llama<B>,
) -> Result<(BatchLoader, usize)> {
    let dataset = load_training(&args.data, args.format, task, tokenizer, args.max_len, args.skip_overlong)?;
    if dataset.skipped_too_long > 0 {
        lomo_cli::noteln!(
            "skipped {} examples whose answer alone is longer than --max-len {}",
            dataset.skipped_too_long,
            args.max_len
        );
    }
    let vocab = model.config().vocab_size;
    let rows = dataset.examples.iter().map(|e| e.input_ids.as_slice());
    if let Some((i, id)) = lomo_models::batch::first_outside_vocab(rows, vocab) {
        // Examples of several --data files are concatenated, so name the position in that order.
        bail!("--data: example {} (counting across the --data files in order) has token id {id}, outside the model's vocabulary of {vocab}", i + 1);
    }
    let num_examples = dataset.len();
    let mut loader_config = LoaderConfig::new(args.batch_size);
    loader_config.shuffle = !args.no_shuffle;
    loader_config.seed = args.seed;
    loader_config.padding = tokenizer.map(PaddingConfig::for_tokenizer).unwrap_or_default();
    // Data parallel: every batch is whole, so that it splits into equal slices.
    loader_config.drop_last = args.world_size > 1;
    Ok((BatchLoader::new(dataset, loader_config)?, num_examples))
}

/// `--resume`: the interrupted run's flags checked against this one's, the data and the
/// optimizer where it stopped. Returns the steps and tokens done.
fn resume<B: TrainBackend>(
    args: &TrainArgs,
    state: &TrainerState,
    total_steps: u64,
    loader: &mut BatchLoader,
    trainer: &mut Trainer<B>,
    model: &Llama<B>,
    device: &B::Device,
) -> Result<(u64, u64)> {
    let dir: &Path = args.resume.as_deref().expect("resumed");
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
    trainer.load_state(model, &dir.join(OPTIMIZER_FILE), device)?;
    loader
        .seek(&state.data_position)
        .with_context(|| format!("--resume {}: the data differ from the interrupted run's", dir.display()))?;
    if let Some(scaler) = &state.loss_scaler {
        trainer.set_scaler(scaler.clone());
    }
    if state.step >= total_steps {
        bail!("--resume {}: the run already did all {total_steps} steps", dir.display());
    }
    Ok((state.step, state.tokens))
}

/// Data parallel (`--world-size` over 1): this rank joins the group at the coordinator.
fn join<B: TrainBackend>(
    args: &TrainArgs,
    device: &B::Device,
) -> Result<Option<lomo_dist::Collective<B::InnerBackend>>> {
    if args.world_size <= 1 {
        return Ok(None);
    }
    let node_address = match &args.node_address {
        Some(a) => a.clone(),
        None => format!("ws://127.0.0.1:{}", lomo_dist::free_port().context("finding a free port for this rank")?),
    };
    let dist = lomo_dist::DistConfig {
        world_size: args.world_size,
        rank: args.rank,
        coordinator: super::coordinator_of(args).expect("validated"),
        node_address,
        timeout: std::time::Duration::from_secs(args.collective_timeout),
    };
    let inner_device = burn::tensor::Tensor::<B, 1>::empty([1], device).inner().device();
    let c = lomo_dist::Collective::<B::InnerBackend>::join(&dist, &inner_device).context("--world-size")?;
    if args.rank == 0 {
        lomo_cli::noteln!(
            "data parallel: {} ranks, {} rows each per step",
            args.world_size,
            args.batch_size / args.world_size
        );
    }
    Ok(Some(c))
}

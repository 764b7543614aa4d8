//! One profile case: a model shape, an optimizer, a mode, a dtype and a batch, run for one
//! measured step in a process of its own (the counting allocator and VmHWM are process-wide).

use lomo_models::TrainBackend;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::optim::{AdamWConfig, SgdConfig};
use burn::tensor::backend::AutodiffBackend;
use lomo_models::plan::{MemoryPlan, OffloadTarget, PlanConfig, PlanOptimizer, StepMode};
use lomo_models::rng::SplitMix64;
use lomo_models::{Batch, DiskStore, HfConfig, Llama, LlamaConfig, LossChunking, StorageDtype};
use lomo_optim::{
    full_backward_grads, full_backward_step, AdaLomoConfig, BurnOptimizer, FusedConfig, FusedStep, GradPrep, HostStore,
    Local, Lomo, Resident, RuleUpdater, StageStore, Updater,
};
use serde::{Deserialize, Serialize};

use crate::backend::{BackendKind, CaseRunner, DeviceMemory};
use lomo_io::memory as alloc;

/// The learning rate of the profiled steps: small, so that nothing diverges; memory and
/// time do not depend on it.
const LR: f64 = 1e-4;

/// What to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Case {
    /// Short name of the model shape (a preset name or a description of a custom one).
    pub model_name: String,
    /// The model's shape, as HF's `config.json`.
    pub model: HfConfig,
    /// Storage dtype (`f32`, `bf16`, `f16`).
    pub dtype: String,
    /// The update.
    pub optimizer: PlanOptimizer,
    /// Fused stage-wise or full backward.
    pub mode: StepMode,
    /// Rows per step.
    pub batch_size: usize,
    /// Rows per micro-batch.
    pub micro_batch_size: usize,
    /// Tokens per row.
    pub tokens: usize,
    /// Token positions per loss chunk; `None` keeps the model's default chunking.
    pub loss_chunk_tokens: Option<usize>,
    /// Seed of the random weights and tokens.
    pub seed: u64,
    /// The weights offloaded while their stage is not running (fused step only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offload: Option<OffloadTarget>,
}

impl Case {
    /// A label like `fused adamw`.
    pub fn label(&self) -> String {
        match self.offload {
            None => format!("{} {}", self.mode, self.optimizer),
            Some(OffloadTarget::Disk) => format!("{} {} (offload disk)", self.mode, self.optimizer),
            Some(OffloadTarget::Host) => format!("{} {} (offload host)", self.mode, self.optimizer),
        }
    }

    /// The resolved model configuration.
    pub fn config(&self) -> Result<LlamaConfig> {
        Ok(self.model.resolve(Path::new(&self.model_name))?)
    }

    /// The storage dtype.
    pub fn storage_dtype(&self) -> Result<StorageDtype> {
        self.dtype.parse::<StorageDtype>().map_err(|e| anyhow::anyhow!("case field `dtype`: {e}"))
    }

    /// The model's loss chunking for this case.
    pub fn loss_chunking(&self) -> LossChunking {
        self.loss_chunk_tokens.map_or_else(LossChunking::default, LossChunking::Tokens)
    }

    /// The planner's request for this case on `backend`.
    pub fn plan_config(&self, backend: BackendKind) -> Result<PlanConfig> {
        Ok(PlanConfig {
            model: self.config()?,
            dtype: self.storage_dtype()?,
            optimizer: self.optimizer,
            mode: self.mode,
            batch_size: self.batch_size,
            micro_batch_size: self.micro_batch_size,
            max_tokens: self.tokens,
            loss_chunking: self.loss_chunking(),
            f64_cast_staging: backend == BackendKind::Cpu,
        })
    }

    /// The planner's prediction on `backend`.
    pub fn plan(&self, backend: BackendKind) -> Result<MemoryPlan> {
        let config = self.plan_config(backend)?;
        Ok(match self.offload {
            // The profiled steps do not clip: no norm pass.
            Some(target) => config.plan_offload(target, false)?.device,
            None => config.plan()?,
        })
    }
}

/// What one case measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measurement {
    /// Peak live heap during the measured step (everything the process holds: weights,
    /// optimizer state, batch), bytes; `None` where the backend allocates outside Rust.
    pub peak_heap: Option<u64>,
    /// Live heap just before the measured step.
    pub heap_before_step: Option<u64>,
    /// Peak RSS of the whole process (model init included), bytes.
    pub peak_rss: Option<u64>,
    /// Peak RSS from just before the measured step to its end (VmHWM reset through
    /// `/proc/self/clear_refs`); `None` where the reset is not possible.
    pub step_peak_rss: Option<u64>,
    /// Peak RSS up to the end of the model's random init.
    pub init_peak_rss: Option<u64>,
    /// Device memory pool after the step, where the backend reports it.
    pub gpu_reserved: Option<u64>,
    /// Seconds of the measured step.
    pub seconds_per_step: f64,
    /// Seconds of the random init.
    pub init_seconds: f64,
    /// Mean loss the measured step reported.
    pub loss: f64,
    /// With offload to disk: bytes read from and written to the working copy in the measured
    /// step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offload_io: Option<lomo_models::IoStats>,
    /// The fused step's phase timers of the measured step (fused cases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timings: Option<lomo_optim::StepTimings>,
}

/// `batch_size / micro_batch_size` micro-batches of random tokens, every position a target.
fn micro_batches(case: &Case, vocab: usize) -> Result<Vec<Batch>> {
    if case.micro_batch_size == 0 || !case.batch_size.is_multiple_of(case.micro_batch_size) {
        bail!(
            "case field `micro_batch_size`: {} does not divide batch_size {}",
            case.micro_batch_size,
            case.batch_size
        );
    }
    let mut rng = SplitMix64::new(case.seed ^ 0x5eed_70c5);
    (0..case.batch_size / case.micro_batch_size)
        .map(|_| {
            let n = case.micro_batch_size * case.tokens;
            let ids: Vec<i64> = (0..n).map(|_| (rng.next_u64() % vocab as u64) as i64).collect();
            Ok(Batch::new(ids.clone(), None, Some(ids), [case.micro_batch_size, case.tokens])?)
        })
        .collect()
}

/// Resets VmHWM to the current RSS (Linux ≥ 4.0), so the next reading covers only what
/// follows. Returns whether it worked.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Runs a case on one backend.
struct Run<'a>(&'a Case);

impl CaseRunner for Run<'_> {
    type Output = Measurement;

    fn run<B: TrainBackend>(self, device: B::Device, memory: &dyn DeviceMemory) -> Result<Measurement> {
        let case = self.0;
        let config = case.config()?;
        let dtype = case.storage_dtype()?;
        let batches = micro_batches(case, config.vocab_size)?;
        let start = Instant::now();
        // The working copy of an offload-to-disk case: beside the reports, removed afterwards.
        let work = crate::profile::out_dir().join(format!("offload-work-{}", std::process::id()));
        let (model, mut store) = match case.offload {
            None => (
                lomo_models::load::<B>(
                    lomo_models::TensorSource::Init { config: &config, seed: case.seed },
                    lomo_models::Residency::Resident,
                    dtype,
                    &device,
                )?
                .model,
                Store::Resident(Resident),
            ),
            Some(OffloadTarget::Disk) => {
                if case.mode != StepMode::Fused {
                    bail!("offload is for the fused step");
                }
                let (model, disk) = lomo_models::load::<B>(
                    lomo_models::TensorSource::Init { config: &config, seed: case.seed },
                    lomo_models::Residency::Disk { dir: &work, step: 0 },
                    dtype,
                    &device,
                )
                .map(|l| (l.model, l.store.expect("a load into Residency::Disk makes a working copy")))?;
                (model, Store::Disk(disk))
            }
            Some(OffloadTarget::Host) => {
                let model = lomo_models::load::<B>(
                    lomo_models::TensorSource::Init { config: &config, seed: case.seed },
                    lomo_models::Residency::Resident,
                    dtype,
                    &device,
                )?
                .model;
                let host = burn::tensor::Tensor::<B, 1>::empty([1], &device).inner().device();
                let (model, store) = HostStore::new::<B, _, 3>(model, Some(host))?;
                (model, Store::Host(store))
            }
        };
        let model = model.with_loss_chunking(case.loss_chunking());
        let init_seconds = start.elapsed().as_secs_f64();
        let init_peak_rss = alloc::peak_rss();

        // One step function per (mode, optimizer); it is called once to warm up (when the
        // optimizer has state, which it creates during its first step) and once measured.
        let mut stepper = Stepper::<B>::new(case)?;
        let mut model = Some(model);
        if case.optimizer.has_state() {
            model = Some(stepper.step(model.take().expect("model"), &batches, store.as_dyn())?.0 .0);
        }
        let io_before = store.io();
        let heap_before_step = alloc::live();
        let rss_reset = reset_peak_rss();
        alloc::reset_peak();
        let start = Instant::now();
        let ((model, loss), timings) = stepper.step(model.take().expect("model"), &batches, store.as_dyn())?;
        let seconds_per_step = start.elapsed().as_secs_f64();
        let offload_io = match (io_before, store.io()) {
            (Some(a), Some(b)) => Some(lomo_models::IoStats { read: b.read - a.read, written: b.written - a.written }),
            _ => None,
        };
        let peak_heap = alloc::peak();
        let step_peak_rss = if rss_reset { alloc::peak_rss() } else { None };
        let gpu_reserved = memory.device_reserved_bytes();
        drop(model);
        if let Store::Disk(d) = store {
            let dir = d.dir().to_path_buf();
            drop(d);
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing the working copy {}", dir.display()))?;
        }
        let peak_rss = match (init_peak_rss, step_peak_rss) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        Ok(Measurement {
            peak_heap: Some(peak_heap as u64),
            heap_before_step: Some(heap_before_step as u64),
            peak_rss,
            step_peak_rss,
            init_peak_rss,
            gpu_reserved,
            seconds_per_step,
            init_seconds,
            loss,
            offload_io,
            timings,
        })
    }
}

/// Where a case's weights wait between their stage's runs.
enum Store<B: TrainBackend> {
    Resident(Resident),
    Host(HostStore<B::InnerBackend>),
    Disk(DiskStore),
}

impl<B: TrainBackend> Store<B> {
    fn as_dyn(&mut self) -> &mut dyn StageStore<B, Llama<B>> {
        match self {
            Store::Resident(r) => r,
            Store::Host(h) => h,
            Store::Disk(d) => d,
        }
    }

    fn io(&self) -> Option<lomo_models::IoStats> {
        match self {
            Store::Disk(d) => Some(d.io()),
            _ => None,
        }
    }
}

/// The step of one case, with its optimizer's state.
struct Stepper<B: TrainBackend> {
    kind: StepKind<B>,
}

type AdaLomoRule<B> = lomo_optim::AdaLomo<<B as AutodiffBackend>::InnerBackend>;
type SgdOptim<B> =
    burn::optim::adaptor::OptimizerAdaptor<burn::optim::Sgd<<B as AutodiffBackend>::InnerBackend>, Llama<B>, B>;
type AdamWOptim<B> = burn::optim::adaptor::OptimizerAdaptor<burn::optim::AdamW, Llama<B>, B>;

enum StepKind<B: TrainBackend> {
    FusedLomo(FusedStep<RuleUpdater<Lomo>>),
    FusedAdaLomo(FusedStep<RuleUpdater<AdaLomoRule<B>>>),
    FusedSgd(FusedStep<BurnOptimizer<SgdOptim<B>>>),
    FusedAdamW(FusedStep<BurnOptimizer<AdamWOptim<B>>>),
    /// Full backward, then a per-parameter rule over all the gradients at once.
    FullLomo(RuleUpdater<Lomo>),
    FullAdaLomo(RuleUpdater<AdaLomoRule<B>>),
    FullSgd(SgdOptim<B>),
    FullAdamW(AdamWOptim<B>),
}

impl<B: TrainBackend> Stepper<B> {
    fn new(case: &Case) -> Result<Self> {
        let fused = FusedConfig::default();
        let kind = match (case.mode, case.optimizer) {
            (StepMode::Fused, PlanOptimizer::Lomo) => {
                StepKind::FusedLomo(FusedStep::new(RuleUpdater::new(Lomo::new(0.0)?), fused)?)
            }
            (StepMode::Fused, PlanOptimizer::AdaLomo) => {
                StepKind::FusedAdaLomo(FusedStep::new(RuleUpdater::new(AdaLomoConfig::default().init()?), fused)?)
            }
            (StepMode::Fused, PlanOptimizer::Sgd) => {
                StepKind::FusedSgd(FusedStep::new(BurnOptimizer::new(SgdConfig::new().init()), fused)?)
            }
            (StepMode::Fused, PlanOptimizer::AdamW) => {
                StepKind::FusedAdamW(FusedStep::new(BurnOptimizer::new(AdamWConfig::new().init()), fused)?)
            }
            (StepMode::Full, PlanOptimizer::Lomo) => StepKind::FullLomo(RuleUpdater::new(Lomo::new(0.0)?)),
            (StepMode::Full, PlanOptimizer::AdaLomo) => {
                StepKind::FullAdaLomo(RuleUpdater::new(AdaLomoConfig::default().init()?))
            }
            (StepMode::Full, PlanOptimizer::Sgd) => StepKind::FullSgd(SgdConfig::new().init()),
            (StepMode::Full, PlanOptimizer::AdamW) => StepKind::FullAdamW(AdamWConfig::new().init()),
        };
        Ok(Self { kind })
    }

    /// One step; returns the model and the mean loss before the update.
    #[allow(clippy::type_complexity)]
    fn step(
        &mut self,
        model: Llama<B>,
        batches: &[Batch],
        store: &mut dyn StageStore<B, Llama<B>>,
    ) -> Result<((Llama<B>, f64), Option<lomo_optim::StepTimings>)> {
        fn fused<B: TrainBackend, U: Updater<B, Llama<B>>>(
            step: &mut FusedStep<U>,
            model: Llama<B>,
            batches: &[Batch],
            store: &mut dyn StageStore<B, Llama<B>>,
        ) -> Result<((Llama<B>, f64), Option<lomo_optim::StepTimings>)> {
            let (model, report) = step.step_stored::<B, Llama<B>, 3>(model, batches, LR, &mut Local, store)?;
            Ok(((model, report.loss), Some(report.timings)))
        }
        fn full_rule<B: TrainBackend, U: Updater<B, Llama<B>>>(
            updater: &mut U,
            model: Llama<B>,
            batches: &[Batch],
        ) -> Result<(Llama<B>, f64)> {
            let (mut grads, loss) = full_backward_grads::<B, Llama<B>, 3>(&model, batches)?;
            updater.begin_step();
            Ok((updater.apply(model, &mut grads, &GradPrep::default(), LR), loss))
        }
        match &mut self.kind {
            StepKind::FusedLomo(s) => fused(s, model, batches, store),
            StepKind::FusedAdaLomo(s) => fused(s, model, batches, store),
            StepKind::FusedSgd(s) => fused(s, model, batches, store),
            StepKind::FusedAdamW(s) => fused(s, model, batches, store),
            StepKind::FullLomo(u) => Ok((full_rule(u, model, batches)?, None)),
            StepKind::FullAdaLomo(u) => Ok((full_rule(u, model, batches)?, None)),
            StepKind::FullSgd(o) => Ok((full_backward_step::<B, Llama<B>, _, 3>(model, batches, o, LR)?, None)),
            StepKind::FullAdamW(o) => Ok((full_backward_step::<B, Llama<B>, _, 3>(model, batches, o, LR)?, None)),
        }
    }
}

/// Runs `case` in this process on `backend` (the hidden `profile-case` subcommand).
pub fn run_case(case: &Case, backend: BackendKind) -> Result<Measurement> {
    let mut m = crate::backend::run_on(backend, Run(case)).with_context(|| format!("case {}", case.label()))?;
    if !backend.heap_visible() {
        m.peak_heap = None;
        m.heap_before_step = None;
    }
    Ok(m)
}

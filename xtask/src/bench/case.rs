//! One bench case run here: load the model, repeat the step, time it.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig};
use lomo_models::TrainBackend;
use lomo_models::{Batch, Llama, StorageDtype};
use lomo_optim::{full_backward_step, AdaLomo, AdaLomoConfig, FusedConfig, FusedStep, Lomo, RuleUpdater, StepTimings};
use serde::{Deserialize, Serialize};

use crate::backend::{BackendKind, CaseRunner, DeviceMemory};

/// The update a case measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CaseKind {
    /// Fused LOMO.
    Lomo,
    /// Fused LOMO with clip-by-global-norm 1.0 (two backward passes).
    LomoClip,
    /// Fused AdaLomo.
    Adalomo,
    /// Full backward, then burn's AdamW (the memory baseline; the peer has no such row).
    Adamw,
}

impl CaseKind {
    /// Every kind, in report order.
    pub const ALL: [CaseKind; 4] = [CaseKind::Lomo, CaseKind::LomoClip, CaseKind::Adalomo, CaseKind::Adamw];

    /// The name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            CaseKind::Lomo => "lomo",
            CaseKind::LomoClip => "lomo-clip",
            CaseKind::Adalomo => "adalomo",
            CaseKind::Adamw => "adamw",
        }
    }

    /// The clip-by-norm threshold of the case.
    pub fn clip_grad_norm(self) -> Option<f64> {
        (self == CaseKind::LomoClip).then_some(1.0)
    }

    /// The peer's `--optimizer`, where it has the case.
    pub fn peer_optimizer(self) -> Option<&'static str> {
        match self {
            CaseKind::Lomo | CaseKind::LomoClip => Some("lomo"),
            CaseKind::Adalomo => Some("adalomo"),
            CaseKind::Adamw => None,
        }
    }
}

impl std::str::FromStr for CaseKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        CaseKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("--case: unknown case `{s}` ({})", CaseKind::ALL.map(CaseKind::name).join(", ")))
    }
}

/// What a child process runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchCase {
    /// The update.
    pub kind: CaseKind,
    /// HF checkpoint directory the bench wrote (the peer reads the same one).
    pub model_dir: PathBuf,
    /// Storage dtype.
    pub dtype: String,
    /// Rows × tokens.
    pub batch_size: usize,
    /// Tokens per row.
    pub tokens: usize,
    /// The batch, `[batch_size × tokens]`; every position is a target (language modelling).
    pub input_ids: Vec<i64>,
    /// Learning rate of the steps.
    pub lr: f64,
    /// Steps before the measured ones.
    pub warmup: usize,
    /// Measured steps.
    pub steps: usize,
    /// Data parallel (`bench --nproc`): this process's rank; `input_ids` is its slice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dist: Option<CaseDist>,
    /// The fused step's timers wait for the device at every phase (`--synced-timings`).
    #[serde(default)]
    pub synced_timings: bool,
}

/// A case's place in a data-parallel group.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaseDist {
    /// Ranks in all.
    pub world_size: usize,
    /// This one.
    pub rank: usize,
    /// The coordinator, `ws://127.0.0.1:PORT`.
    pub coordinator: String,
}

/// One step as measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepSample {
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Mean loss before the step's update.
    pub loss: f64,
    /// The fused step's own phase timers (empty for full backward).
    pub timings: StepTimings,
}

/// What a child measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OursResult {
    /// Every step, warm-up first.
    pub steps: Vec<StepSample>,
    /// Process CPU seconds (user + system) over the measured steps.
    pub cpu_seconds: f64,
    /// Wall seconds of the measured steps.
    pub wall_seconds: f64,
    /// Peak RSS of the process (load included), bytes.
    pub peak_rss: Option<u64>,
    /// Seconds to load the model.
    pub load_seconds: f64,
    /// On a GPU: the most the backend's memory pool held after any step (cubecl's
    /// `memory_usage().bytes_reserved`; its pools do not shrink during a run), bytes.
    #[serde(default)]
    pub device_reserved_peak: Option<u64>,
    /// On CUDA: the process's peak device memory by `nvidia-smi`, polled by the bench, bytes
    /// (context and pool included).
    #[serde(default)]
    pub nvidia_smi_peak: Option<u64>,
    /// With `--kernel-profile`: the kernels of the last measured step, by device time (name,
    /// total time, launches, share), read from cubecl's profile by the parent.
    #[serde(default)]
    pub kernels: Option<Vec<KernelTime>>,
}

/// One kernel's line of cubecl's profile of a step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KernelTime {
    /// The kernel (its type's name, the runtime left out).
    pub name: String,
    /// Device time over the step, as cubecl prints it (`61.89ms`).
    pub time: String,
    /// Launches in the step.
    pub launches: u64,
    /// Share of the step's kernel time, as cubecl prints it (`30 %`).
    pub share: String,
}

/// User + system CPU seconds of this process so far.
pub fn process_cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a `rusage` into the pointer it is given; RUSAGE_SELF is valid.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

struct Run<'a>(&'a BenchCase);

type AdamWOptim<B> = OptimizerAdaptor<AdamW, Llama<B>, B>;

enum Stepper<B: TrainBackend> {
    Lomo(FusedStep<RuleUpdater<Lomo>>),
    AdaLomo(FusedStep<RuleUpdater<AdaLomo<B::InnerBackend>>>),
    AdamW(AdamWOptim<B>),
}

impl<B: TrainBackend> Stepper<B> {
    fn new(kind: CaseKind, synced_timings: bool) -> Result<Self> {
        let fused = FusedConfig { clip_grad_norm: kind.clip_grad_norm(), ..Default::default() };
        Ok(match kind {
            CaseKind::Lomo | CaseKind::LomoClip => Stepper::Lomo(
                FusedStep::new(RuleUpdater::new(Lomo::new(0.0)?), fused)?.with_synced_timings(synced_timings),
            ),
            CaseKind::Adalomo => Stepper::AdaLomo(
                FusedStep::new(RuleUpdater::new(AdaLomoConfig::default().init()?), fused)?
                    .with_synced_timings(synced_timings),
            ),
            CaseKind::Adamw => Stepper::AdamW(AdamWConfig::new().init()),
        })
    }

    fn step(
        &mut self,
        model: Llama<B>,
        batches: &[Batch],
        lr: f64,
        reducer: &mut dyn lomo_optim::StepReducer<B::InnerBackend>,
    ) -> Result<(Llama<B>, f64, StepTimings)> {
        Ok(match self {
            Stepper::Lomo(s) => {
                let (m, r) = s.step_reduced::<B, Llama<B>, 3>(model, batches, lr, reducer)?;
                (m, r.loss, r.timings)
            }
            Stepper::AdaLomo(s) => {
                let (m, r) = s.step_reduced::<B, Llama<B>, 3>(model, batches, lr, reducer)?;
                (m, r.loss, r.timings)
            }
            Stepper::AdamW(_) if reducer.world_size() > 1 => {
                bail!("--nproc: full backward + AdamW has no data parallel")
            }
            Stepper::AdamW(o) => {
                let (m, loss) = full_backward_step::<B, Llama<B>, _, 3>(model, batches, o, lr)?;
                (m, loss, StepTimings::default())
            }
        })
    }
}

impl CaseRunner for Run<'_> {
    type Output = OursResult;

    fn run<B: TrainBackend>(self, device: B::Device, memory: &dyn DeviceMemory) -> Result<OursResult> {
        let case = self.0;
        let dtype: StorageDtype = case.dtype.parse().map_err(|e| anyhow::anyhow!("case field `dtype`: {e}"))?;
        let clock = Instant::now();
        let mut model = lomo_models::load::<B>(
            lomo_models::TensorSource::Hf(&case.model_dir),
            lomo_models::Residency::Resident,
            dtype,
            &device,
        )
        .map(|l| l.model)
        .with_context(|| format!("loading {}", case.model_dir.display()))?;
        let load_seconds = clock.elapsed().as_secs_f64();
        let rows = case.batch_size / case.dist.as_ref().map_or(1, |d| d.world_size);
        if case.input_ids.len() != rows * case.tokens {
            bail!("case field `input_ids`: {} ids for a {} × {} slice", case.input_ids.len(), rows, case.tokens);
        }
        let batch = Batch::new(case.input_ids.clone(), None, Some(case.input_ids.clone()), [rows, case.tokens])?;
        let mut collective = match &case.dist {
            Some(d) => {
                let config = lomo_dist::DistConfig {
                    world_size: d.world_size,
                    rank: d.rank,
                    coordinator: d.coordinator.clone(),
                    node_address: format!("ws://127.0.0.1:{}", lomo_dist::free_port()?),
                    timeout: std::time::Duration::from_secs(600),
                };
                let inner = burn::tensor::Tensor::<B, 1>::empty([1], &device).inner().device();
                Some(lomo_dist::Collective::<B::InnerBackend>::join(&config, &inner)?)
            }
            None => None,
        };
        let batches = [batch];
        let mut stepper = Stepper::<B>::new(case.kind, case.synced_timings)?;
        let mut device_reserved_peak: Option<u64> = None;
        let mut steps = Vec::with_capacity(case.warmup + case.steps);
        let (mut cpu0, mut wall0) = (process_cpu_seconds(), Instant::now());
        for i in 0..case.warmup + case.steps {
            if i == case.warmup {
                (cpu0, wall0) = (process_cpu_seconds(), Instant::now());
            }
            let clock = Instant::now();
            let (next, loss, timings) = match collective.as_mut() {
                Some(c) => stepper.step(model, &batches, case.lr, c)?,
                None => stepper.step(model, &batches, case.lr, &mut lomo_optim::Local)?,
            };
            model = next;
            // The step ends when the device has done its work, not when its last kernel is
            // queued (CUDA); on the CPU this returns at once.
            B::sync(&device).map_err(|e| {
                anyhow::anyhow!("waiting for the device after step {}: {}", i + 1, e.to_string().replace('\n', " "))
            })?;
            let seconds = clock.elapsed().as_secs_f64();
            if let Some(bytes) = memory.device_reserved_bytes() {
                device_reserved_peak = Some(device_reserved_peak.map_or(bytes, |p| p.max(bytes)));
            }
            eprintln!("  {} step {}: {seconds:.3} s, loss {loss:.6}", case.kind.name(), i + 1);
            steps.push(StepSample { seconds, loss, timings });
        }
        if let Some(c) = collective {
            c.finish()?;
        }
        Ok(OursResult {
            steps,
            cpu_seconds: process_cpu_seconds() - cpu0,
            wall_seconds: wall0.elapsed().as_secs_f64(),
            peak_rss: lomo_io::memory::peak_rss(),
            load_seconds,
            device_reserved_peak,
            nvidia_smi_peak: None,
            kernels: None,
        })
    }
}

/// Runs `case` in this process (the hidden `bench-case` subcommand).
pub fn run_case(case: &BenchCase, backend: BackendKind) -> Result<OursResult> {
    crate::backend::run_on(backend, Run(case)).with_context(|| format!("bench case {}", case.kind.name()))
}

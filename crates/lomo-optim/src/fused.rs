//! The fused step: forward without a tape, then backward one stage at a time, updating each
//! parameter as soon as its gradient is final and dropping that gradient.
//!
//! Peak memory is the weights, the boundary activations of every micro-batch (what
//! activation checkpointing keeps), and one stage's gradients and intermediates. A parameter
//! shared by several stages keeps its gradient from its last stage (in backward order) to its
//! first; that is the only gradient that lives across stages.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Tensor, TensorPrimitive};
use lomo_kernels::{SumSq, UpdateKernels};

use crate::clock::PhaseClock;
use crate::error::OptimError;
use crate::reduce::StepReducer;
use crate::rule::{GradPrep, Updater};
use crate::scaler::{DynamicLossScaler, LossScaleConfig};
use crate::stages::StagedModel;
use crate::store::StageStore;

/// What the fused step does besides the update rule.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct FusedConfig {
    /// Clip by global gradient norm to this value. Costs a second backward pass: the norm of
    /// all gradients must be known before the first update.
    pub clip_grad_norm: Option<f64>,
    /// Clamp each gradient element to `[-v, v]`.
    pub clip_grad_value: Option<f64>,
    /// fp16 dynamic loss scaling. Also implies the norm pass, which is where an overflow is
    /// found before any weight changes.
    pub loss_scale: Option<LossScaleConfig>,
}

/// What one step did.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    /// Mean loss over the supervised targets of all micro-batches, before the update.
    pub loss: f64,
    /// Supervised targets in the step.
    pub targets: usize,
    /// The lr the step was given.
    pub lr: f64,
    /// Global gradient norm (unscaled, before clipping), when a norm pass ran.
    pub grad_norm: Option<f64>,
    /// The clip coefficient applied, with clip-by-norm.
    pub clip_coef: Option<f64>,
    /// The loss scale used, with loss scaling.
    pub loss_scale: Option<f64>,
    /// The step found an inf/NaN gradient and changed nothing.
    pub skipped: bool,
    /// Where the step's time went.
    pub timings: StepTimings,
}

/// Wall-clock seconds of the phases of one fused step, from timers inside it (a clock read
/// per stage: cheap, always on). On an asynchronous backend (CUDA) they count the device's
/// work only with [`FusedStep::with_synced_timings`]; otherwise a phase is charged the time to
/// queue its kernels, and the device's time lands wherever a result is next read.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct StepTimings {
    /// The tape-free forward pass through every stage but the loss stage.
    pub forward: f64,
    /// The norm pass (clip-by-norm or loss scaling): its stage-wise backward and the sums of
    /// squares.
    pub norm_pass: Option<f64>,
    /// The updating pass, per stage (index = stage): re-running the stage with autodiff and its
    /// `backward()`, over every micro-batch, the loss stage's forward included.
    pub backward: Vec<f64>,
    /// The updates, all stages together.
    pub update: f64,
    /// Data parallel: the sums across ranks (gradients and scalars), not counted in the phases
    /// above.
    pub reduce: f64,
    /// Offload: seconds in the store's `fetch` and `prefetch` (bringing stages in, waiting for
    /// a read ahead), every pass, not counted in the phases above.
    #[serde(default)]
    pub store_fetch: f64,
    /// Offload: seconds in the store's `release` (the write-backs), every pass.
    #[serde(default)]
    pub store_release: f64,
}

impl StepTimings {
    /// Seconds of the whole step as these phases count it.
    pub fn total(&self) -> f64 {
        self.forward
            + self.norm_pass.unwrap_or(0.0)
            + self.backward.iter().sum::<f64>()
            + self.update
            + self.reduce
            + self.store_fetch
            + self.store_release
    }
}

/// What one stage-wise backward pass measured.
pub(crate) struct PassResult<M> {
    model: M,
    /// Sum of the loss stage's (unscaled, unweighted) losses over micro-batches and chunks.
    loss_sum: f64,
    /// Seconds per stage of re-running it and its `backward()`.
    stage_seconds: Vec<f64>,
    /// Seconds in `on_ready`.
    ready_seconds: f64,
    /// Seconds in the store's fetch / prefetch and release.
    store_seconds: (f64, f64),
}

/// The fused LOMO step with an update rule (`U`: [`crate::RuleUpdater`] over [`crate::Lomo`]
/// or [`crate::AdaLomo`], or a burn optimizer through [`crate::BurnOptimizer`]).
#[derive(Debug, Clone)]
pub struct FusedStep<U> {
    updater: U,
    config: FusedConfig,
    scaler: Option<DynamicLossScaler>,
    /// Whether the phase timers wait for the devices at every phase boundary.
    synced_timings: bool,
}

impl<U> FusedStep<U> {
    /// A fused step; checks the configuration.
    pub fn new(updater: U, config: FusedConfig) -> Result<Self, OptimError> {
        if let Some(v) = config.clip_grad_norm {
            if !(v > 0.0 && v.is_finite()) {
                return Err(OptimError::Config {
                    field: "clip_grad_norm",
                    message: format!("must be a finite number > 0, got {v}"),
                });
            }
        }
        if let Some(v) = config.clip_grad_value {
            if !(v > 0.0 && v.is_finite()) {
                return Err(OptimError::Config {
                    field: "clip_grad_value",
                    message: format!("must be a finite number > 0, got {v}"),
                });
            }
        }
        let scaler = config.loss_scale.map(DynamicLossScaler::new).transpose()?;
        Ok(Self { updater, config, scaler, synced_timings: false })
    }

    /// With `on`, the step waits for the model's devices (`Backend::sync`) at the start and end
    /// of every timed phase, so that [`StepTimings`] hold each phase's device time on an
    /// asynchronous backend (CUDA), not the time to queue it; each wait drains the device's
    /// queue, so ask for it when the timings are what is measured. Off by default: the step then
    /// waits only where a result is read (the loss). On a CPU backend the waits return at once.
    pub fn with_synced_timings(mut self, on: bool) -> Self {
        self.synced_timings = on;
        self
    }

    /// Whether the phase timers wait for the devices ([`Self::with_synced_timings`]).
    pub fn synced_timings(&self) -> bool {
        self.synced_timings
    }

    /// The updater (to read or save its state).
    pub fn updater(&self) -> &U {
        &self.updater
    }

    /// The updater, mutably (to restore its state).
    pub fn updater_mut(&mut self) -> &mut U {
        &mut self.updater
    }

    /// The configuration.
    pub fn config(&self) -> &FusedConfig {
        &self.config
    }

    /// The loss scaler, with loss scaling.
    pub fn scaler(&self) -> Option<&DynamicLossScaler> {
        self.scaler.as_ref()
    }

    /// Replaces the loss scaler's state (when resuming).
    pub fn set_scaler(&mut self, scaler: DynamicLossScaler) {
        self.scaler = Some(scaler);
    }

    /// One optimizer step over `micro_batches`: their gradients are summed per stage and each
    /// parameter is updated once. The loss is the mean over all their supervised targets, so
    /// N micro-batches equal one batch made of them.
    pub fn step<B, M, const D: usize>(
        &mut self,
        model: M,
        micro_batches: &[M::Batch],
        lr: f64,
    ) -> Result<(M, StepReport), OptimError>
    where
        B: AutodiffBackend,
        B::InnerBackend: UpdateKernels,
        M: StagedModel<B, D>,
        U: Updater<B, M>,
    {
        self.step_reduced(model, micro_batches, lr, &mut crate::Local)
    }

    /// [`Self::step`] as one rank of a data-parallel step: `micro_batches` are this rank's
    /// slice of the batch, and `reducer` sums across the ranks (see [`crate::reduce`]), so every
    /// rank applies the update of the whole batch. The loss is the mean over every rank's
    /// targets.
    pub fn step_reduced<B, M, const D: usize>(
        &mut self,
        model: M,
        micro_batches: &[M::Batch],
        lr: f64,
        reducer: &mut dyn StepReducer<B::InnerBackend>,
    ) -> Result<(M, StepReport), OptimError>
    where
        B: AutodiffBackend,
        B::InnerBackend: UpdateKernels,
        M: StagedModel<B, D>,
        U: Updater<B, M>,
    {
        self.step_stored(model, micro_batches, lr, reducer, &mut crate::Resident)
    }

    /// [`Self::step_reduced`] with the weights kept in `store` while their stage is not running
    /// (see [`crate::store`]): each stage's parameters are fetched before the stage runs in each
    /// pass and released after it, the updated ones written back. `model` comes in and goes out
    /// holding the placeholders the store leaves.
    pub fn step_stored<B, M, const D: usize>(
        &mut self,
        model: M,
        micro_batches: &[M::Batch],
        lr: f64,
        reducer: &mut dyn StepReducer<B::InnerBackend>,
        store: &mut dyn StageStore<B, M>,
    ) -> Result<(M, StepReport), OptimError>
    where
        B: AutodiffBackend,
        B::InnerBackend: UpdateKernels,
        M: StagedModel<B, D>,
        U: Updater<B, M>,
    {
        let mut reduce_seconds = 0.0;
        let clock = PhaseClock::<B>::new(self.synced_timings, || model.devices());
        let plan = global_plan::<B, M, D>(&model, micro_batches, reducer, &mut reduce_seconds)?;
        let start = clock.start()?;
        let (model, boundaries, (fetch, release)) =
            forward_boundaries::<B, M, D>(model, micro_batches, plan.num_stages, store, &clock)?;
        let mut timings = StepTimings {
            forward: clock.seconds_since(start)? - fetch - release,
            store_fetch: fetch,
            store_release: release,
            ..Default::default()
        };
        let scale = self.scaler.as_ref().map(|s| s.scale());
        let mut report = StepReport {
            loss: f64::NAN,
            targets: plan.targets,
            lr,
            grad_norm: None,
            clip_coef: None,
            loss_scale: scale,
            skipped: false,
            timings: StepTimings::default(),
        };
        let inv_scale = scale.map_or(1.0, |s| 1.0 / s);
        let mut prep = GradPrep { inv_scale, clip_value: self.config.clip_grad_value, clip_coef: None };
        let pass = Passes { micro_batches, boundaries: &boundaries, plan: &plan, scale, clock: &clock };

        let mut model = model;
        let mut loss_sum = None;
        if self.config.clip_grad_norm.is_some() || self.scaler.is_some() {
            let norm = norm_pass(model, &pass, inv_scale, reducer, store, &mut timings)?;
            reduce_seconds += norm.reduce_seconds;
            // The loss stage runs first in backward, before anything can stop the pass.
            loss_sum = Some(norm.loss_sum);
            model = norm.model;
            if norm.overflow {
                if let Some(s) = self.scaler.as_mut() {
                    s.overflow();
                }
                report.loss = reduced_loss(norm.loss_sum, &plan, reducer, &mut reduce_seconds)?;
                report.skipped = true;
                timings.reduce = reduce_seconds;
                report.timings = timings;
                return Ok((model, report));
            }
            let total = norm.sum_sq.sqrt();
            report.grad_norm = Some(total);
            if let Some(max_norm) = self.config.clip_grad_norm {
                let coef = (max_norm / (total + 1e-6)).min(1.0);
                prep.clip_coef = Some(coef);
                report.clip_coef = Some(coef);
            }
        }

        self.updater.begin_step();
        let (model, update_loss_sum) =
            update_pass(model, &pass, &mut self.updater, &prep, lr, reducer, store, &mut timings)?;
        reduce_seconds += timings.reduce;
        report.loss = reduced_loss(loss_sum.unwrap_or(update_loss_sum), &plan, reducer, &mut reduce_seconds)?;
        if let Some(s) = self.scaler.as_mut() {
            s.clean();
        }
        timings.reduce = reduce_seconds;
        report.timings = timings;
        Ok((model, report))
    }
}

/// What both backward passes of a step read: the micro-batches, their boundary activations, the
/// stage plan, the loss scale and the timers' clock.
struct Passes<'a, B: AutodiffBackend, M: StagedModel<B, D>, const D: usize> {
    micro_batches: &'a [M::Batch],
    boundaries: &'a [Vec<Tensor<B::InnerBackend, D>>],
    plan: &'a StagePlan,
    scale: Option<f64>,
    clock: &'a PhaseClock<B>,
}

/// The step's stage plan, with the target count summed over every rank when data parallel.
fn global_plan<B, M, const D: usize>(
    model: &M,
    micro_batches: &[M::Batch],
    reducer: &mut dyn StepReducer<B::InnerBackend>,
    reduce_seconds: &mut f64,
) -> Result<StagePlan, OptimError>
where
    B: AutodiffBackend,
    M: StagedModel<B, D>,
{
    let mut plan = StagePlan::new(model, micro_batches, reducer.world_size() > 1)?;
    if reducer.world_size() > 1 {
        let clock = Instant::now();
        let mut targets = [plan.targets as f64];
        reducer.sum_scalars(&mut targets)?;
        *reduce_seconds += clock.elapsed().as_secs_f64();
        plan.targets = targets[0] as usize;
        if plan.targets == 0 {
            return Err(OptimError::NoTargets);
        }
    }
    Ok(plan)
}

/// What the norm pass found.
struct NormOutcome<M> {
    model: M,
    /// Sum of the loss stage's losses (this rank's).
    loss_sum: f64,
    /// `Σ ‖g‖²` over every gradient of the step (every rank's), unscaled.
    sum_sq: f64,
    /// An inf/NaN gradient was found: nothing may be updated.
    overflow: bool,
    /// Seconds in the data-parallel sums.
    reduce_seconds: f64,
}

/// The first backward pass of a clipped or loss-scaled step: sums the squared gradients (and
/// looks for inf/NaN) without updating anything. Stops early at an overflow.
fn norm_pass<B, M, const D: usize>(
    model: M,
    pass: &Passes<'_, B, M, D>,
    inv_scale: f64,
    reducer: &mut dyn StepReducer<B::InnerBackend>,
    store: &mut dyn StageStore<B, M>,
    timings: &mut StepTimings,
) -> Result<NormOutcome<M>, OptimError>
where
    B: AutodiffBackend,
    B::InnerBackend: UpdateKernels,
    M: StagedModel<B, D>,
{
    let start = pass.clock.start()?;
    let mut norm = NormPass { inv_scale, sum_sq: 0.0, overflow: false };
    let (result, reduce_seconds) = reduced_pass(model, pass, reducer, store, false, |m, ready| {
        norm.add::<B, M>(&m, ready);
        let go_on = !norm.overflow;
        (m, go_on)
    })?;
    let (fetch, release) = result.store_seconds;
    timings.norm_pass = Some(pass.clock.seconds_since(start)? - reduce_seconds - fetch - release);
    timings.store_fetch += fetch;
    timings.store_release += release;
    Ok(NormOutcome {
        model: result.model,
        loss_sum: result.loss_sum,
        sum_sq: norm.sum_sq,
        overflow: norm.overflow,
        reduce_seconds,
    })
}

/// The updating backward pass: each stage's final gradients summed across ranks, then handed
/// to `updater`; the store's write-backs finished. Returns the model and the summed loss, and
/// sets the backward, store and update timings, with this pass's sums in `timings.reduce`.
#[allow(clippy::too_many_arguments)]
fn update_pass<B, M, U, const D: usize>(
    model: M,
    pass: &Passes<'_, B, M, D>,
    updater: &mut U,
    prep: &GradPrep,
    lr: f64,
    reducer: &mut dyn StepReducer<B::InnerBackend>,
    store: &mut dyn StageStore<B, M>,
    timings: &mut StepTimings,
) -> Result<(M, f64), OptimError>
where
    B: AutodiffBackend,
    M: StagedModel<B, D>,
    U: Updater<B, M>,
{
    let (result, update_reduce) =
        reduced_pass(model, pass, reducer, store, true, |m, ready| (updater.apply(m, ready, prep, lr), true))?;
    store.end_step()?;
    timings.backward = result.stage_seconds;
    timings.store_fetch += result.store_seconds.0;
    timings.store_release += result.store_seconds.1;
    // The update phase as the pass timed it holds the sums of that pass: count them once.
    timings.update = result.ready_seconds - update_reduce;
    timings.reduce = update_reduce;
    Ok((result.model, result.loss_sum))
}

/// Which stages read which parameters, and the batch's size.
pub(crate) struct StagePlan {
    pub num_stages: usize,
    pub targets: usize,
    /// The parameters each stage reads.
    pub stage_params: Vec<HashSet<ParamId>>,
    /// For each parameter, the lowest stage that reads it: where backward finishes its gradient.
    pub final_stage: HashMap<ParamId, usize>,
    /// For each stage, the parameters whose gradient is final there (updated there).
    pub home: Vec<Vec<ParamId>>,
}

impl StagePlan {
    /// `shared`: one rank of several, whose own slice may hold no target (the ranks' total is
    /// checked instead).
    pub fn new<B: AutodiffBackend, M: StagedModel<B, D>, const D: usize>(
        model: &M,
        micro_batches: &[M::Batch],
        shared: bool,
    ) -> Result<Self, OptimError> {
        let targets = match total_targets::<B, M, D>(micro_batches) {
            Err(OptimError::NoTargets) if shared => 0,
            other => other?,
        };
        let num_stages = model.num_stages();
        if num_stages < 2 {
            return Err(OptimError::TooFewStages(num_stages));
        }
        let mut stage_params = Vec::with_capacity(num_stages);
        let mut final_stage = HashMap::new();
        let mut home = vec![Vec::new(); num_stages];
        for (s, stage_home) in home.iter_mut().enumerate() {
            let ids = model.stage_params(s);
            for &id in &ids {
                if let std::collections::hash_map::Entry::Vacant(e) = final_stage.entry(id) {
                    e.insert(s);
                    stage_home.push(id);
                }
            }
            stage_params.push(ids.into_iter().collect::<HashSet<ParamId>>());
        }
        Ok(Self { num_stages, targets, stage_params, final_stage, home })
    }
}

/// The supervised targets of a step's micro-batches: the denominator of its mean loss. No
/// micro-batch, or no target in them, is an error.
pub(crate) fn total_targets<B: AutodiffBackend, M: StagedModel<B, D>, const D: usize>(
    micro_batches: &[M::Batch],
) -> Result<usize, OptimError> {
    if micro_batches.is_empty() {
        return Err(OptimError::NoMicroBatches);
    }
    match micro_batches.iter().map(M::num_targets).sum() {
        0 => Err(OptimError::NoTargets),
        n => Ok(n),
    }
}

/// The boundary activations `[mb][k]` = input of stage `k + 1`, computed without a tape, stage
/// by stage over the micro-batches (each stage's weights fetched from `store` once). The loss
/// stage does not run here: its forward is part of the backward pass, which reads the loss off
/// it.
/// Also returns the seconds in the store's fetches and releases.
#[allow(clippy::type_complexity)]
pub(crate) fn forward_boundaries<B: AutodiffBackend, M: StagedModel<B, D>, const D: usize>(
    mut model: M,
    micro_batches: &[M::Batch],
    num_stages: usize,
    store: &mut dyn StageStore<B, M>,
    clock: &PhaseClock<B>,
) -> Result<(M, Vec<Vec<Tensor<B::InnerBackend, D>>>, (f64, f64)), OptimError> {
    let (mut fetch, mut release) = (0.0, 0.0);
    let mut boundaries: Vec<Vec<Tensor<B::InnerBackend, D>>> =
        micro_batches.iter().map(|_| Vec::with_capacity(num_stages - 1)).collect();
    for s in 0..num_stages - 1 {
        let start = clock.start()?;
        model = store.fetch(model, s)?;
        // The next stage to run: the following block, or after the last one the loss stage,
        // where the backward pass begins.
        store.prefetch(s + 1)?;
        fetch += clock.seconds_since(start)?;
        let inner = model.valid();
        for (mb, batch) in micro_batches.iter().enumerate() {
            let input = boundaries[mb].last().cloned();
            let out = M::inner_forward_stage(&inner, s, input, batch);
            boundaries[mb].push(out);
        }
        drop(inner);
        let start = clock.start()?;
        model = store.release(model, s, &[])?;
        release += clock.seconds_since(start)?;
    }
    Ok((model, boundaries, (fetch, release)))
}

/// Backward through every stage in reverse. After each stage, `on_ready` gets the model and
/// the gradients that are final (raw, summed over micro-batches and stages) and returns the
/// model and whether to go on. Each stage's weights are fetched from `store` before it runs and
/// released after `on_ready`; in the `updating` pass with the parameters updated there.
fn backward_pass<B, M, const D: usize, F>(
    mut model: M,
    pass: &Passes<'_, B, M, D>,
    store: &mut dyn StageStore<B, M>,
    updating: bool,
    on_ready: &mut F,
) -> Result<PassResult<M>, OptimError>
where
    B: AutodiffBackend,
    M: StagedModel<B, D>,
    F: FnMut(M, &mut GradientsParams, usize) -> (M, bool),
{
    let Passes { micro_batches, boundaries, plan, scale: loss_scale, clock } = *pass;
    let n = plan.num_stages;
    // The mean over every rank's targets (a rank without any gets a weight it never uses).
    let loss_weight = loss_scale.unwrap_or(1.0) / plan.targets.max(1) as f64;
    let mut upstream: Vec<Option<Tensor<B::InnerBackend, D>>> = vec![None; micro_batches.len()];
    let mut pending = GradientsParams::new();
    // Each loss chunk's value, read once when the pass ends (a read waits for the device).
    let mut losses: Vec<Tensor<B::InnerBackend, 1>> = Vec::new();
    let mut stage_seconds = vec![0.0; n];
    let mut ready_seconds = 0.0;
    let mut store_seconds = (0.0, 0.0);
    for s in (0..n).rev() {
        let fetch_start = clock.start()?;
        model = store.fetch(model, s)?;
        // After stage 0 of the norm pass, the updating pass starts again at the loss stage.
        // (Stage 0 of the next step's forward is the one being updated now: nothing to read.)
        match (s, updating) {
            (0, true) => {}
            (0, false) => store.prefetch(n - 1)?,
            _ => store.prefetch(s - 1)?,
        }
        store_seconds.0 += clock.seconds_since(fetch_start)?;
        let start = clock.start()?;
        let mut ready = GradientsParams::new();
        for (mb, batch) in micro_batches.iter().enumerate() {
            if s == n - 1 {
                let mut input_grad: Option<Tensor<B::InnerBackend, D>> = None;
                for chunk in 0..model.num_loss_chunks(batch) {
                    let x = Tensor::<B, D>::from_inner(boundaries[mb][n - 2].clone()).require_grad();
                    let raw = model.forward_loss(x.clone(), batch, chunk).cast(DType::F32);
                    losses.push(raw.clone().inner().reshape([1]));
                    let loss = raw.mul_scalar(loss_weight);
                    let mut grads = loss.backward();
                    if let Some(g) = x.grad_remove(&mut grads) {
                        input_grad = Some(match input_grad {
                            Some(acc) => acc + g,
                            None => g,
                        });
                    }
                    collect_grads::<B, M>(&model, &mut grads, s, plan, &mut pending, &mut ready);
                }
                upstream[mb] = input_grad;
            } else {
                // A stage whose output received no gradient contributes none.
                let Some(up) = upstream[mb].take() else { continue };
                let x = (s > 0).then(|| Tensor::<B, D>::from_inner(boundaries[mb][s - 1].clone()).require_grad());
                let out = model.forward_stage(s, x.clone(), batch);
                let scalar = (out * Tensor::from_inner(up)).sum();
                let mut grads = scalar.backward();
                upstream[mb] = x.and_then(|x| x.grad_remove(&mut grads));
                collect_grads::<B, M>(&model, &mut grads, s, plan, &mut pending, &mut ready);
            }
        }
        stage_seconds[s] = clock.seconds_since(start)?;
        // The stage's graphs are gone: every weight is uniquely owned again.
        let start = clock.start()?;
        let (next, go_on) = on_ready(model, &mut ready, s);
        ready_seconds += clock.seconds_since(start)?;
        let updated: &[ParamId] = if updating && go_on { &plan.home[s] } else { &[] };
        let start = clock.start()?;
        model = store.release(next, s, updated)?;
        store_seconds.1 += clock.seconds_since(start)?;
        if !go_on {
            break;
        }
    }
    let loss_sum = sum_in_f64(losses);
    Ok(PassResult { model, loss_sum, stage_seconds, ready_seconds, store_seconds })
}

/// The sum of one-element f32 tensors in f64, in their order, read in one transfer.
fn sum_in_f64<B: Backend>(values: Vec<Tensor<B, 1>>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let data = Tensor::cat(values, 0).into_data().convert::<f64>();
    data.as_slice::<f64>().map_or(f64::NAN, |v| v.iter().fold(0.0, |acc, x| acc + x))
}

/// One backward pass of the step in which each stage's final gradients are first summed across
/// the ranks (data parallel; nothing with one rank), then handed to `on_ready`, which returns
/// the model and whether the pass goes on. Returns the pass and the seconds spent in the sums.
fn reduced_pass<B, M, const D: usize>(
    model: M,
    pass: &Passes<'_, B, M, D>,
    reducer: &mut dyn StepReducer<B::InnerBackend>,
    store: &mut dyn StageStore<B, M>,
    updating: bool,
    mut on_ready: impl FnMut(M, &mut GradientsParams) -> (M, bool),
) -> Result<(PassResult<M>, f64), OptimError>
where
    B: AutodiffBackend,
    M: StagedModel<B, D>,
{
    let mut failed: Option<OptimError> = None;
    let mut reduce_seconds = 0.0;
    let result = backward_pass::<B, M, D, _>(model, pass, store, updating, &mut |m, ready, s| {
        if let Err(e) = reduce_ready::<B, M>(&m, ready, s, pass.plan, pass.clock, reducer, &mut reduce_seconds) {
            failed = Some(e);
            return (m, false);
        }
        on_ready(m, ready)
    })?;
    match failed {
        Some(e) => Err(e),
        None => Ok((result, reduce_seconds)),
    }
}

/// The mean loss over every rank's targets from this rank's sum.
fn reduced_loss<B: Backend>(
    loss_sum: f64,
    plan: &StagePlan,
    reducer: &mut dyn StepReducer<B>,
    seconds: &mut f64,
) -> Result<f64, OptimError> {
    let mut sum = [loss_sum];
    if reducer.world_size() > 1 {
        let clock = Instant::now();
        reducer.sum_scalars(&mut sum)?;
        *seconds += clock.elapsed().as_secs_f64();
    }
    Ok(sum[0] / plan.targets as f64)
}

/// Data parallel: replaces the gradient of every parameter final at stage `s` by its f32 sum
/// over the ranks. The stage's gradients go as one flat f32 tensor, in the model's visiting
/// order (a parameter this rank has no gradient for sends zeros): one collective call per
/// stage, at the cost of one stage's gradients copied once. Nothing happens in one process.
fn reduce_ready<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    ready: &mut GradientsParams,
    s: usize,
    plan: &StagePlan,
    clock: &PhaseClock<B>,
    reducer: &mut dyn StepReducer<B::InnerBackend>,
    seconds: &mut f64,
) -> Result<(), OptimError> {
    if reducer.world_size() <= 1 {
        return Ok(());
    }
    /// Takes the stage's final gradients out of `ready`, flat, in visiting order.
    struct Gather<'a, B: Backend> {
        ready: &'a mut GradientsParams,
        s: usize,
        plan: &'a StagePlan,
        parts: Vec<Tensor<B, 1>>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Gather<'_, B::InnerBackend> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if self.plan.final_stage.get(&param.id) != Some(&self.s) {
                return;
            }
            let grad = match self.ready.remove::<B::InnerBackend, D>(param.id) {
                Some(g) => crate::blocks::cast(g, DType::F32),
                None => {
                    let p = param.val().inner();
                    Tensor::<B::InnerBackend, D>::zeros(p.shape(), (&p.device(), DType::F32))
                }
            };
            let n = grad.shape().num_elements();
            self.parts.push(grad.reshape([n]));
        }
    }
    /// Puts the summed slices back, in the same order.
    struct Scatter<'a, B: Backend> {
        ready: &'a mut GradientsParams,
        s: usize,
        plan: &'a StagePlan,
        sum: Tensor<B, 1>,
        at: usize,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Scatter<'_, B::InnerBackend> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if self.plan.final_stage.get(&param.id) != Some(&self.s) {
                return;
            }
            let shape = param.val().shape();
            let n = shape.num_elements();
            let part = self.sum.clone().slice(self.at..self.at + n).reshape(shape);
            self.at += n;
            self.ready.register::<B::InnerBackend, D>(param.id, part);
        }
    }
    let start = clock.start()?;
    let mut gather = Gather::<B::InnerBackend> { ready, s, plan, parts: Vec::new() };
    model.visit(&mut gather);
    let Gather { ready, parts, .. } = gather;
    if parts.is_empty() {
        return Ok(());
    }
    let flat = if parts.len() == 1 { parts.into_iter().next().expect("one part") } else { Tensor::cat(parts, 0) };
    let sum = reducer.sum_grad(flat.into_primitive().tensor())?;
    let sum = Tensor::<B::InnerBackend, 1>::from_primitive(TensorPrimitive::Float(sum));
    model.visit(&mut Scatter::<B::InnerBackend> { ready, s, plan, sum, at: 0 });
    *seconds += clock.seconds_since(start)?;
    Ok(())
}

/// Moves the gradients of stage `s`'s parameters out of `grads`, adding them to what earlier
/// stages or micro-batches left; a parameter whose final stage is `s` goes to `ready`.
fn collect_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    grads: &mut B::Gradients,
    s: usize,
    plan: &StagePlan,
    pending: &mut GradientsParams,
    ready: &mut GradientsParams,
) {
    struct Collect<'a, B: AutodiffBackend> {
        grads: &'a mut B::Gradients,
        s: usize,
        plan: &'a StagePlan,
        pending: &'a mut GradientsParams,
        ready: &'a mut GradientsParams,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Collect<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let id = param.id;
            if !self.plan.stage_params[self.s].contains(&id) {
                return;
            }
            let Some(grad) = param.val().grad_remove(self.grads) else { return };
            let earlier =
                self.pending.remove::<B::InnerBackend, D>(id).or_else(|| self.ready.remove::<B::InnerBackend, D>(id));
            // Sums of several contributions are kept in fp32 so accumulation does not round.
            let grad = match earlier {
                Some(acc) => crate::blocks::add_f32(acc, grad),
                None => grad,
            };
            if self.plan.final_stage.get(&id) == Some(&self.s) {
                self.ready.register::<B::InnerBackend, D>(id, grad);
            } else {
                self.pending.register::<B::InnerBackend, D>(id, grad);
            }
        }
    }
    model.visit(&mut Collect::<B> { grads, s, plan, pending, ready });
}

/// The norm pass: sums `||g||²` of the unscaled gradients and watches for inf/NaN.
struct NormPass {
    inv_scale: f64,
    sum_sq: f64,
    overflow: bool,
}

impl NormPass {
    fn add<B: AutodiffBackend<InnerBackend: UpdateKernels>, M: AutodiffModule<B>>(
        &mut self,
        model: &M,
        ready: &mut GradientsParams,
    ) {
        struct Visit<'a, B: Backend> {
            inv_scale: f64,
            sums: Vec<SumSq<B>>,
            ready: &'a mut GradientsParams,
        }
        impl<B: AutodiffBackend<InnerBackend: UpdateKernels>> ModuleVisitor<B> for Visit<'_, B::InnerBackend> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                let Some(g) = self.ready.remove::<B::InnerBackend, D>(param.id) else { return };
                // Gradients were computed on the scaled loss: unscale before squaring, in fp32.
                let g = g.into_primitive().tensor();
                self.sums.push(<B::InnerBackend as UpdateKernels>::sum_sq_deferred(g, self.inv_scale));
            }
        }
        let mut visit = Visit::<B::InnerBackend> { inv_scale: self.inv_scale, sums: Vec::new(), ready };
        model.visit(&mut visit);
        // One read for the stage (on a GPU, the sums wait on the device until here). A
        // non-finite gradient makes the sum non-finite.
        self.sum_sq = SumSq::add_to(self.sum_sq, visit.sums);
        if !self.sum_sq.is_finite() {
            self.overflow = true;
        }
    }
}

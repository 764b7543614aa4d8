//! Honest baselines through the same interface: full backward + any burn optimizer
//! (SGD, AdamW, …), and any burn optimizer applied stage by stage inside the fused step.

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::{GradientsAccumulator, GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, ElementConversion, Tensor};

use crate::error::OptimError;
use crate::rule::{GradPrep, Updater};
use crate::stages::StagedModel;

/// Forward through every stage with autodiff and return the mean loss over all targets of
/// `batch`'s share: `sum_loss / total_targets` (a tensor with its graph).
pub fn full_forward_loss<B, M, const D: usize>(model: &M, batch: &M::Batch, total_targets: usize) -> Tensor<B, 1>
where
    B: AutodiffBackend,
    M: StagedModel<B, D>,
{
    let n = model.num_stages();
    let mut h = model.forward_stage(0, None, batch);
    for s in 1..n - 1 {
        h = model.forward_stage(s, Some(h), batch);
    }
    let chunks = model.num_loss_chunks(batch);
    let mut loss = model.forward_loss(h.clone(), batch, 0).cast(DType::F32);
    for c in 1..chunks {
        loss = loss + model.forward_loss(h.clone(), batch, c).cast(DType::F32);
    }
    loss.div_scalar(total_targets as f64)
}

/// The gradients of the mean loss over `micro_batches`, for the whole model at once: what
/// an ordinary training loop holds before its optimizer step.
pub fn full_backward_grads<B, M, const D: usize>(
    model: &M,
    micro_batches: &[M::Batch],
) -> Result<(GradientsParams, f64), OptimError>
where
    B: AutodiffBackend,
    M: StagedModel<B, D>,
{
    let targets = crate::fused::total_targets::<B, M, D>(micro_batches)?;
    let mut accumulator = GradientsAccumulator::<M>::new();
    let mut loss_value = 0.0;
    let mut single = None;
    for batch in micro_batches {
        let loss = full_forward_loss::<B, M, D>(model, batch, targets);
        loss_value += loss.clone().into_scalar().elem::<f64>();
        let grads = GradientsParams::from_grads(loss.backward(), model);
        if micro_batches.len() == 1 {
            single = Some(grads);
        } else {
            accumulator.accumulate(model, grads);
        }
    }
    let grads = single.unwrap_or_else(|| accumulator.grads());
    Ok((grads, loss_value))
}

/// One step of full backward + a burn optimizer: every gradient of the model exists at once,
/// and the optimizer keeps its state. Returns the model and the mean loss before the step.
pub fn full_backward_step<B, M, O, const D: usize>(
    model: M,
    micro_batches: &[M::Batch],
    optimizer: &mut O,
    lr: f64,
) -> Result<(M, f64), OptimError>
where
    B: AutodiffBackend,
    M: StagedModel<B, D>,
    O: Optimizer<M, B>,
{
    let (grads, loss) = full_backward_grads::<B, M, D>(&model, micro_batches)?;
    Ok((optimizer.step(lr, model, grads), loss))
}

/// A burn optimizer applied stage by stage inside the fused step. Its state is keyed by
/// parameter id, so stage-wise application equals one whole-model step, with only one
/// stage's gradients alive at a time (the optimizer's own state is still all there).
#[derive(Debug, Clone)]
pub struct BurnOptimizer<O> {
    /// The optimizer.
    pub optimizer: O,
}

impl<O> BurnOptimizer<O> {
    /// Wraps `optimizer`.
    pub fn new(optimizer: O) -> Self {
        Self { optimizer }
    }
}

impl<B, M, O> Updater<B, M> for BurnOptimizer<O>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    O: Optimizer<M, B>,
{
    fn begin_step(&mut self) {}

    fn apply(&mut self, model: M, grads: &mut GradientsParams, prep: &GradPrep, lr: f64) -> M {
        // burn optimizers expect gradients in the parameter's dtype.
        struct Prepare<'a> {
            raw: &'a mut GradientsParams,
            prepared: GradientsParams,
            prep: &'a GradPrep,
        }
        impl<B: AutodiffBackend> ModuleVisitor<B> for Prepare<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                if let Some(g) = self.raw.remove::<B::InnerBackend, D>(param.id) {
                    let dtype = param.val().dtype();
                    self.prepared
                        .register::<B::InnerBackend, D>(param.id, crate::blocks::cast(self.prep.apply(g), dtype));
                }
            }
        }
        if grads.is_empty() {
            return model;
        }
        let mut visit = Prepare { raw: grads, prepared: GradientsParams::new(), prep };
        model.visit(&mut visit);
        self.optimizer.step(lr, model, visit.prepared)
    }
}

//! Data parallelism's hook in the fused step: sums across the processes (ranks) that each run
//! the same step on their own slice of the batch. The step stays free of networking: an
//! implementation (lomo-dist's, over burn-collective) is handed to
//! [`crate::FusedStep::step_reduced`].
//!
//! Every rank makes the same calls in the same order with the same shapes: the global target
//! count (the mean loss's denominator) before the backward passes; per stage, the gradients of
//! every parameter final there, flattened into one f32 tensor in the model's visiting order (a
//! rank without a gradient for one, because its slice had no target, sends zeros), before the
//! norm pass and before the update; the loss sum at the end. Gradients are summed in f32. The norm, the overflow flag and
//! the clip coefficient are then computed from identical sums on every rank, so they agree
//! without a collective of their own.

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;

use crate::OptimError;

/// Sums over the ranks of a data-parallel step.
pub trait StepReducer<B: Backend> {
    /// The number of ranks.
    fn world_size(&self) -> usize;

    /// Replaces each of `values` by its sum over the ranks.
    fn sum_scalars(&mut self, values: &mut [f64]) -> Result<(), OptimError>;

    /// The sum over the ranks of an f32 gradient.
    fn sum_grad(&mut self, grad: FloatTensor<B>) -> Result<FloatTensor<B>, OptimError>;
}

/// One process: every sum is the value itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct Local;

impl<B: Backend> StepReducer<B> for Local {
    fn world_size(&self) -> usize {
        1
    }

    fn sum_scalars(&mut self, _values: &mut [f64]) -> Result<(), OptimError> {
        Ok(())
    }

    fn sum_grad(&mut self, grad: FloatTensor<B>) -> Result<FloatTensor<B>, OptimError> {
        Ok(grad)
    }
}

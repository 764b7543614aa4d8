//! How a model presents itself to the fused step: a chain of stages.
//!
//! `input → stage 0 → stage 1 → … → stage n-2 → loss stage (n-1) → scalar`.
//! Stage 0 reads only the batch (an embedding lookup, say); every later stage reads the
//! boundary activation that the stage before it produced; the last stage turns its input
//! into the *summed* loss over the batch's supervised targets. The fused step divides by
//! the number of targets over all micro-batches, so N micro-batches equal one batch.
//!
//! Nothing here knows what a transformer is: a stage is whatever sub-module the model
//! says it is, and its parameters are named by [`ParamId`]. A parameter may belong to
//! several stages (a tied input embedding and LM head): the fused step keeps its gradient
//! until the earliest of its stages has run backward, then applies one update.

use burn::module::{AutodiffModule, Module, ModuleVisitor, Param, ParamId};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;

/// A model that the fused step can run stage by stage.
///
/// `D` is the rank of the boundary activations (3 for `[batch, tokens, hidden]`).
/// The model implements every forward twice: on `B` (with autodiff, used to re-run one
/// stage during the backward pass) and on `B::InnerBackend` (no tape, used for the first
/// forward pass). Both usually delegate to one function generic over the backend.
pub trait StagedModel<B: AutodiffBackend, const D: usize>: AutodiffModule<B> {
    /// One micro-batch as the stages read it (token ids, masks, labels, …).
    type Batch;

    /// Number of stages, the loss stage included; at least 2.
    fn num_stages(&self) -> usize;

    /// The parameters that stage `stage` reads. A parameter may be listed by several stages.
    fn stage_params(&self, stage: usize) -> Vec<ParamId>;

    /// Number of supervised targets in `batch` (tokens whose label is not ignored): the
    /// weight of this micro-batch in the mean loss.
    fn num_targets(batch: &Self::Batch) -> usize;

    /// Runs stage `stage < num_stages() - 1`. Stage 0 gets `None`; every other stage gets the
    /// previous stage's output.
    fn forward_stage(&self, stage: usize, input: Option<Tensor<B, D>>, batch: &Self::Batch) -> Tensor<B, D>;

    /// Number of chunks the loss stage is split into for `batch` (default 1).
    ///
    /// The fused step runs the loss stage's forward and backward once per chunk, summing the
    /// parameter and input gradients, so only one chunk's intermediates (for a language model:
    /// one chunk of tokens' logits) exist at a time.
    fn num_loss_chunks(&self, batch: &Self::Batch) -> usize {
        let _ = batch;
        1
    }

    /// Runs chunk `chunk` of the loss stage on the whole last boundary activation: the **sum**
    /// of the per-target losses of the targets in that chunk, shape `[1]`. The chunks of a
    /// batch must partition its targets.
    fn forward_loss(&self, input: Tensor<B, D>, batch: &Self::Batch, chunk: usize) -> Tensor<B, 1>;

    /// [`StagedModel::forward_stage`] on the inner backend (no autodiff tape).
    fn inner_forward_stage(
        inner: &Self::InnerModule,
        stage: usize,
        input: Option<Tensor<B::InnerBackend, D>>,
        batch: &Self::Batch,
    ) -> Tensor<B::InnerBackend, D>;

    /// [`StagedModel::forward_loss`] on the inner backend (no autodiff tape).
    fn inner_forward_loss(
        inner: &Self::InnerModule,
        input: Tensor<B::InnerBackend, D>,
        batch: &Self::Batch,
        chunk: usize,
    ) -> Tensor<B::InnerBackend, 1>;
}

/// The ids of every float parameter of `module`, in visiting order.
///
/// What a [`StagedModel::stage_params`] implementation usually returns for the sub-modules
/// that make up a stage.
pub fn param_ids<B: Backend, M: Module<B>>(module: &M) -> Vec<ParamId> {
    struct Collect(Vec<ParamId>);
    impl<B: Backend> ModuleVisitor<B> for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.0.push(param.id);
        }
    }
    let mut collect = Collect(Vec::new());
    module.visit(&mut collect);
    collect.0
}

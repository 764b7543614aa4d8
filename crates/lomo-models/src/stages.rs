//! The model as the fused LOMO step sees it: a chain of stages
//! (see `lomo_optim::stages` and design/lomo.md, "Why stage-wise").
//!
//! Stage 0 is the token embedding, stages `1..=L` the decoder blocks, stage `L + 1` the
//! final norm, LM head and loss. Boundary activations are `[batch, tokens, hidden]`. The loss
//! stage runs the LM head only at positions that have a target, in chunks of targets
//! ([`crate::LossChunking`]), so that the logits of the whole batch never exist at once.

use burn::module::ParamId;
use lomo_kernels::FusedKernels;

use crate::TrainBackend;
use burn::tensor::Tensor;
use lomo_optim::{param_ids, StagedModel};

use crate::batch::Batch;
use crate::llama::Llama;

impl<B: FusedKernels> Llama<B> {
    /// Number of stages: embedding, one per decoder block, loss.
    pub fn num_stages(&self) -> usize {
        self.layers.len() + 2
    }

    /// The parameters stage `stage` reads. With tied embeddings the loss stage lists the
    /// embedding weight too: it is the LM head.
    pub fn stage_param_ids(&self, stage: usize) -> Vec<ParamId> {
        let last = self.num_stages() - 1;
        match stage {
            0 => param_ids(&self.embed_tokens),
            s if s < last => param_ids(&self.layers[s - 1]),
            s if s == last => {
                let mut ids = param_ids(&self.norm);
                match &self.lm_head {
                    Some(head) => ids.extend(param_ids(head)),
                    None => ids.push(self.embed_tokens.weight.id),
                }
                ids
            }
            s => panic!("stage {s} out of range: the model has {} stages", self.num_stages()),
        }
    }

    /// Runs stage `stage < num_stages() - 1`.
    ///
    /// # Panics
    /// If stage 0 gets an input, a later stage gets none, or `stage` is the loss stage or past it.
    pub fn stage_forward(&self, stage: usize, input: Option<Tensor<B, 3>>, batch: &Batch) -> Tensor<B, 3> {
        match (stage, input) {
            (0, None) => self.embed(batch),
            (0, Some(_)) => panic!("stage 0 reads the batch, not an activation"),
            (s, Some(x)) if s <= self.layers.len() => self.block(s - 1, x, batch),
            (s, Some(_)) => panic!("stage {s} is not a block stage (the loss stage is forward_loss)"),
            (s, None) => panic!("stage {s} needs the previous stage's output"),
        }
    }
}

impl<B: TrainBackend> StagedModel<B, 3> for Llama<B> {
    type Batch = Batch;

    fn num_stages(&self) -> usize {
        Llama::num_stages(self)
    }

    fn stage_params(&self, stage: usize) -> Vec<ParamId> {
        self.stage_param_ids(stage)
    }

    fn num_targets(batch: &Batch) -> usize {
        batch.num_targets()
    }

    fn forward_stage(&self, stage: usize, input: Option<Tensor<B, 3>>, batch: &Batch) -> Tensor<B, 3> {
        self.stage_forward(stage, input, batch)
    }

    fn num_loss_chunks(&self, batch: &Batch) -> usize {
        Llama::num_loss_chunks(self, batch)
    }

    fn forward_loss(&self, input: Tensor<B, 3>, batch: &Batch, chunk: usize) -> Tensor<B, 1> {
        self.loss_chunk(input, batch, chunk)
    }

    fn inner_forward_stage(
        inner: &Llama<B::InnerBackend>,
        stage: usize,
        input: Option<Tensor<B::InnerBackend, 3>>,
        batch: &Batch,
    ) -> Tensor<B::InnerBackend, 3> {
        inner.stage_forward(stage, input, batch)
    }

    fn inner_forward_loss(
        inner: &Llama<B::InnerBackend>,
        input: Tensor<B::InnerBackend, 3>,
        batch: &Batch,
        chunk: usize,
    ) -> Tensor<B::InnerBackend, 1> {
        inner.loss_chunk(input, batch, chunk)
    }
}

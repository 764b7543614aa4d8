//! RMSNorm as HF's `LlamaRMSNorm` computes it.

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use lomo_kernels::FusedKernels;

/// Root-mean-square normalisation with a learned scale.
///
/// The statistics are computed in f32 whatever the storage dtype, because the mean of
/// squares of a 4096-wide bf16 row loses most of its digits otherwise; HF does the same
/// (`hidden_states.to(torch.float32)`), then scales in the storage dtype. One op of
/// [`FusedKernels`] forward and backward.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    /// Scale, `[hidden]`.
    pub weight: Param<Tensor<B, 1>>,
    /// Added to the mean of squares before the square root.
    pub eps: f64,
}

impl<B: FusedKernels> RmsNorm<B> {
    /// Normalises the last dimension of `x` (`[batch, tokens, hidden]`, or `[rows, hidden]`).
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        lomo_kernels::rms_norm(x, self.weight.val(), self.eps)
    }
}

//! RMSNorm as HF's `LlamaRMSNorm` computes it.

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};

/// Root-mean-square normalisation with a learned scale.
///
/// The statistics are computed in f32 whatever the storage dtype, because the mean of
/// squares of a 4096-wide bf16 row loses most of its digits otherwise; HF does the same
/// (`hidden_states.to(torch.float32)`), then scales in the storage dtype.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    /// Scale, `[hidden]`.
    pub weight: Param<Tensor<B, 1>>,
    /// Added to the mean of squares before the square root.
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    /// Normalises the last dimension of `x` (`[batch, tokens, hidden]`, or `[rows, hidden]`).
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dtype = x.dtype();
        let x = x.cast(DType::F32);
        let mean_square = x.clone().square().mean_dim(D - 1);
        let normed = x * mean_square.add_scalar(self.eps).sqrt().recip();
        normed.cast(dtype) * self.weight.val().unsqueeze::<D>()
    }
}

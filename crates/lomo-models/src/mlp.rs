//! The SwiGLU feed-forward block of a LLaMA layer.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use lomo_kernels::FusedKernels;

use crate::attention::dense;

/// `down(silu(gate(x)) * up(x))`, HF's `LlamaMLP`.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// `gate_proj`, `[hidden, intermediate]` in burn's layout.
    pub gate_proj: Linear<B>,
    /// `up_proj`, `[hidden, intermediate]`.
    pub up_proj: Linear<B>,
    /// `down_proj`, `[intermediate, hidden]`.
    pub down_proj: Linear<B>,
}

impl<B: FusedKernels> Mlp<B> {
    /// Applies the block to `[batch, tokens, hidden]`. The projections run on the 2-D
    /// `[batch × tokens, hidden]` rows: burn's Linear backward on a 3-D input makes one
    /// weight-sized product per batch row.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [batch, tokens, hidden] = x.dims();
        let x = x.reshape([batch * tokens, hidden]);
        // `silu(gate) · up` is one fused op (one pass forward, one backward).
        let gated = lomo_kernels::swiglu(dense(&self.gate_proj, x.clone()), dense(&self.up_proj, x));
        let out = dense(&self.down_proj, gated);
        out.reshape([batch, tokens, hidden])
    }
}

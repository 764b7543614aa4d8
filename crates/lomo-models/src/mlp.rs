//! The SwiGLU feed-forward block of a LLaMA layer.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

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

impl<B: Backend> Mlp<B> {
    /// Applies the block to `[batch, tokens, hidden]`. The projections run on the 2-D
    /// `[batch × tokens, hidden]` rows: burn's Linear backward on a 3-D input makes one
    /// weight-sized product per batch row.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [batch, tokens, hidden] = x.dims();
        let x = x.reshape([batch * tokens, hidden]);
        let gate = silu(self.gate_proj.forward(x.clone()));
        let out = self.down_proj.forward(gate * self.up_proj.forward(x));
        out.reshape([batch, tokens, hidden])
    }
}

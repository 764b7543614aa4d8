//! [`FusedKernels`] and [`crate::UpdateKernels`] (in `update.rs`) for burn's Flex (pure-Rust
//! CPU): kernels over the tensors' own buffers, parallel on rayon's pool (the one Flex's matmul
//! uses), f32 inside for f32, bf16 and f16, sharing `elem.rs`.

mod amx;
mod attention;
mod elem;
mod embedding;
mod linear;
mod log_probs;
mod norm;
mod swiglu;
mod update;

use burn::backend::Flex;
use burn::tensor::ops::FloatTensor;

use crate::{AttentionSpec, FusedKernels, KeyPadding};

/// Whether bf16 products run on AMX tiles in this process.
pub(crate) fn amx_available() -> bool {
    amx::available()
}

/// Rows of width `n` per parallel task: about 16K elements, at least one row.
fn rows_per_task(n: usize) -> usize {
    ((1 << 14) / n.max(1)).max(1)
}

impl FusedKernels for Flex {
    fn embedding(weight: FloatTensor<Self>, ids: &[i64], shape: [usize; 2]) -> FloatTensor<Self> {
        embedding::forward(weight, ids, shape)
    }

    fn embedding_backward(
        vocab: usize,
        dtype: burn::tensor::DType,
        ids: &[i64],
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        embedding::backward(vocab, dtype, ids, grad)
    }

    fn linear(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: Option<FloatTensor<Self>>) -> FloatTensor<Self> {
        linear::forward(x, weight, bias)
    }

    fn linear_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: bool,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, Option<FloatTensor<Self>>) {
        linear::backward(x, weight, bias, grad)
    }

    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        norm::forward(x, weight, eps)
    }

    fn rms_norm_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f64,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        norm::backward(x, weight, eps, grad)
    }

    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        swiglu::forward(gate, up)
    }

    fn swiglu_backward(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        swiglu::backward(gate, up, grad)
    }

    fn log_probs(logits: FloatTensor<Self>, labels: &[i64]) -> FloatTensor<Self> {
        log_probs::forward(logits, labels)
    }

    fn log_probs_backward(
        logits: FloatTensor<Self>,
        labels: &[i64],
        out: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        log_probs::backward(logits, labels, out, grad)
    }

    fn rope_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        padding: Option<&KeyPadding>,
        spec: AttentionSpec,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        attention::forward(q, k, v, cos, sin, padding.map(KeyPadding::keep), spec)
    }

    fn rope_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        padding: Option<&KeyPadding>,
        spec: AttentionSpec,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        attention::backward(q, k, v, cos, sin, padding.map(KeyPadding::keep), spec, out, lse, grad)
    }
}

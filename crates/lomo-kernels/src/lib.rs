//! The transformer ops of a LLaMA block as one burn backend extension, [`FusedKernels`]:
//! RMSNorm, causal grouped-query attention with RoPE, SwiGLU's gate, and `log softmax` read at
//! labels (the cross-entropy of the loss stage).
//!
//! burn composes these from a dozen small ops each, and on its CPU backend (Flex, 0.21) those
//! small ops are single-threaded, go element by element through strided views (RoPE on a
//! `swap_dims` view, broadcast mask adds) and allocate a tensor each, forward and backward:
//! measured on a 134M LLaMA step they took as much time as every matrix product together. Here
//! each op is one kernel forward and one backward (the burn book's "custom operations"
//! arrangement: a trait over [`Backend`], implemented for Flex with kernels of our own, and for
//! `Autodiff<B>` with a backward that calls B's), parallel over rows or heads, f32 inside
//! whatever the storage dtype.
//!
//! burn's CubeCL backends (CUDA, wgpu; feature `cubecl`) run GPU kernels of this crate written
//! once in CubeCL, for every op but the embedding lookup and Linear (on CUDA, cuBLAS where
//! `set_cublas_linear` or `LOMO_LINEAR=cublas` asks for it). NdArray and LibTorch (but
//! for its attention) take the trait's default methods, which are the
//! [`reference`](mod@reference) compositions of burn's own ops, forward and backward. The Flex
//! and CubeCL kernels are tested against them, and they against burn's autodiff of the plain
//! composition.
//!
//! The second extension, [`UpdateKernels`] ([`update`]), is the arithmetic of an optimizer's
//! update (LOMO's, AdaLomo's on a matrix, the sum of squares of a gradient-norm pass), arranged
//! the same way: default methods in burn's ops ([`update::reference`], in row blocks from
//! [`blocks`]), Flex kernels of its own, `Autodiff<B>` updating on `B`. It takes plain scalars
//! ([`GradScale`], [`AdaLomoScalars`]); this crate knows no optimizer and no other lomo crate.
//!
//! ```
//! use burn::backend::Flex;
//! use burn::tensor::Tensor;
//!
//! let device = Default::default();
//! let x = Tensor::<Flex, 2>::from_floats([[1.0, 2.0], [3.0, 4.0]], &device);
//! let w = Tensor::<Flex, 1>::from_floats([1.0, 0.5], &device);
//! let y = lomo_kernels::rms_norm(x, w, 1e-6);
//! assert_eq!(y.dims(), [2, 2]);
//! ```
#![warn(missing_docs)]

mod autodiff;
mod backends;
pub mod blocks;
#[cfg(feature = "cubecl")]
mod cube;
mod flex;
pub mod reference;
#[cfg(feature = "tch")]
mod tch;
pub mod update;

#[cfg(feature = "cubecl")]
pub use cube::attention::set_cube_attention;
#[cfg(feature = "cuda")]
pub use cube::cublas::{cublas_linear, set_cublas_linear};
pub use update::{AdaLomoScalars, GradScale, SumSq, UpdateKernels};

use std::sync::Arc;

use burn::tensor::backend::Backend;
use burn::tensor::ops::{FloatTensor, ModuleOps};
use burn::tensor::{Tensor, TensorPrimitive};

/// The head layout of an attention call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionSpec {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads; `heads` is a multiple of it (grouped-query attention).
    pub kv_heads: usize,
    /// Width of one head (even: RoPE rotates pairs of halves).
    pub head_dim: usize,
    /// Sliding-window attention (Mistral): a query sees only the `window` latest keys, itself
    /// included (key `j` of query `i` when `i - window < j ≤ i`). `None`: every earlier key.
    pub window: Option<usize>,
}

impl AttentionSpec {
    /// Full causal attention (no window).
    pub fn causal(heads: usize, kv_heads: usize, head_dim: usize) -> Self {
        Self { heads, kv_heads, head_dim, window: None }
    }
}

/// Which key positions hold real tokens, `[batch, tokens]`: a query never attends to a padded
/// key. Shared by every layer of a forward pass (cloning it is a reference count).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPadding {
    keep: Arc<[bool]>,
    batch: usize,
}

impl KeyPadding {
    /// From an attention mask as tokenizers give it (`[batch, tokens]`, 1 = real, 0 = padding);
    /// `None` when nothing is padded.
    ///
    /// # Panics
    /// If `mask` is not `batch` rows long.
    pub fn from_mask(mask: &[i64], batch: usize) -> Option<Self> {
        assert!(batch > 0 && mask.len().is_multiple_of(batch), "key padding mask must be [batch, tokens]");
        if mask.iter().all(|&m| m != 0) {
            return None;
        }
        Some(Self { keep: mask.iter().map(|&m| m != 0).collect(), batch })
    }

    /// `[batch × tokens]`, true for a real token.
    pub fn keep(&self) -> &[bool] {
        &self.keep
    }

    /// Rows.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Positions per row.
    pub fn tokens(&self) -> usize {
        self.keep.len() / self.batch
    }
}

/// A backend that runs the fused transformer ops, each with its own backward.
///
/// Implemented by burn's Flex with CPU kernels of this crate, by `Autodiff<B>` for every
/// implementing `B` (the backward calls `B`'s), by burn's CubeCL backends (CUDA, wgpu) with GPU
/// kernels of this crate, and, with the default methods (burn's own ops, see
/// [`reference`](mod@reference)), by NdArray and LibTorch behind the features of those names.
/// Shapes are checked by the kernels; tensors are float primitives of the storage dtype unless
/// a method says otherwise.
pub trait FusedKernels: Backend {
    /// Rows `ids` (`[batch × tokens]`, each below `vocab`) of `weight` (`[vocab, hidden]`), as
    /// `[batch, tokens, hidden]`.
    fn embedding(weight: FloatTensor<Self>, ids: &[i64], shape: [usize; 2]) -> FloatTensor<Self> {
        reference::embedding::<Self>(float(weight), ids, shape).into_primitive().tensor()
    }

    /// Gradient of the weight of [`FusedKernels::embedding`] (`[vocab, hidden]`, `dtype`): the
    /// rows of `grad` (`[batch, tokens, hidden]`) summed into the rows their ids name.
    fn embedding_backward(
        vocab: usize,
        dtype: burn::tensor::DType,
        ids: &[i64],
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        reference::embedding_backward::<Self>(vocab, dtype, ids, float(grad)).into_primitive().tensor()
    }

    /// `x · weight + bias` for `x` `[rows, in]`, `weight` `[in, out]` (burn's layout; any strides,
    /// e.g. a transposed embedding as a tied LM head), `bias` `[out]`.
    fn linear(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: Option<FloatTensor<Self>>) -> FloatTensor<Self> {
        <Self as ModuleOps<Self>>::linear(x, weight, bias)
    }

    /// Gradients of `x`, `weight` (in the weight's layout) and, with `bias`, the bias of
    /// [`FusedKernels::linear`].
    fn linear_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: bool,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, Option<FloatTensor<Self>>) {
        linear_backward_ops::<Self>(x, weight, bias, grad)
    }

    /// RMSNorm of the rows of `x` (`[rows, n]`) scaled by `weight` (`[n]`), as HF's
    /// `LlamaRMSNorm`: statistics in f32, result in `x`'s dtype.
    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        reference::rms_norm::<Self>(float(x), float(weight), eps).into_primitive().tensor()
    }

    /// Gradients of `x` and `weight` of [`FusedKernels::rms_norm`] given the output's gradient.
    fn rms_norm_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f64,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (dx, dw) = reference::rms_norm_backward::<Self>(float(x), float(weight), eps, float(grad));
        (dx.into_primitive().tensor(), dw.into_primitive().tensor())
    }

    /// `silu(gate) · up`, elementwise, same shapes.
    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        reference::swiglu::<Self, 2>(float(gate), float(up)).into_primitive().tensor()
    }

    /// Gradients of `gate` and `up` of [`FusedKernels::swiglu`].
    fn swiglu_backward(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (dg, du) = reference::swiglu_backward::<Self, 2>(float(gate), float(up), float(grad));
        (dg.into_primitive().tensor(), du.into_primitive().tensor())
    }

    /// `log softmax(logits)[i, labels[i]]` for each row of `logits` (`[n, vocab]`), `[n]` in
    /// f32.
    fn log_probs(logits: FloatTensor<Self>, labels: &[i64]) -> FloatTensor<Self> {
        reference::log_probs::<Self>(float(logits), labels).into_primitive().tensor()
    }

    /// Gradient of the logits of [`FusedKernels::log_probs`] given its output `out` and the
    /// gradient of that `[n]` output, in the logits' dtype. May reuse the logits' buffer.
    fn log_probs_backward(
        logits: FloatTensor<Self>,
        labels: &[i64],
        out: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let _ = out;
        reference::log_probs_backward::<Self>(float(logits), labels, float(grad)).into_primitive().tensor()
    }

    /// Causal attention of `q` (`[batch, tokens, heads × head_dim]`) over `k` and `v`
    /// (`[batch, tokens, kv_heads × head_dim]`), after rotating `q` and `k` by RoPE with the
    /// tables `cos` and `sin` (`[tokens, head_dim]`, HF's `cat(freqs, freqs)` layout), keys in
    /// `padding` hidden. Softmax in f32. Returns the output (`[batch, tokens, heads × head_dim]`)
    /// and the log-sum-exp of every query row (`[batch, heads, tokens]`, f32), which the
    /// backward reads.
    fn rope_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        padding: Option<&KeyPadding>,
        spec: AttentionSpec,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (out, lse) =
            reference::rope_attention::<Self>(float(q), float(k), float(v), float(cos), float(sin), padding, spec);
        (out.into_primitive().tensor(), lse.into_primitive().tensor())
    }

    /// Gradients of `q`, `k` and `v` of [`FusedKernels::rope_attention`], from its inputs, its
    /// output and log-sum-exp, and the output's gradient.
    #[allow(clippy::too_many_arguments)]
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
        let (dq, dk, dv) = reference::rope_attention_backward::<Self>(
            float(q),
            float(k),
            float(v),
            float(cos),
            float(sin),
            padding,
            spec,
            float(out),
            float(lse),
            float(grad),
        );
        (dq.into_primitive().tensor(), dk.into_primitive().tensor(), dv.into_primitive().tensor())
    }

    /// Frees the host copies this backend keeps of data written to `device` (by
    /// `Tensor::from_data`) until the device has them, once the copies are done; a loader calls
    /// it every few hundred MiB, so that host memory while a checkpoint loads stays near one
    /// tensor. Nothing to do where a write copies at once (the default: the CPU backends,
    /// LibTorch, wgpu).
    ///
    /// cubecl 0.10's runtimes hand each write a heap copy of the data; CUDA's keeps it in its
    /// stream's drop queue until a kernel launch finds 64 writes or 64 MiB waiting, or the
    /// stream is flushed (`ComputeClient::flush`; burn's `sync` only waits). A loader launches
    /// no kernel, so by that code a whole model's bytes stay in host memory until the first
    /// step: what the 14.15 GB of host RSS measured while LLaMA-7B loaded onto an H200 fits.
    fn release_uploads(device: &Self::Device) {
        let _ = device;
    }
}

/// Which bf16 matrix product the CPU backend (Flex) runs here: `"amx"` (Intel AMX tiles, found
/// at run time) or `"f32 panels"` (the weight converted to f32 in panels, then gemm).
pub fn cpu_bf16_matmul() -> &'static str {
    if flex::amx_available() {
        "amx"
    } else {
        "f32 panels"
    }
}

/// [`FusedKernels::linear_backward`] in burn's ops (the default, and where a backend's own path
/// does not apply).
#[allow(clippy::type_complexity)]
fn linear_backward_ops<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: bool,
    grad: FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>, Option<FloatTensor<B>>) {
    let dx = <B as ModuleOps<B>>::linear_x_backward(weight, grad.clone());
    let dw = <B as ModuleOps<B>>::linear_weight_backward(x, grad.clone());
    let db = bias.then(|| <B as ModuleOps<B>>::linear_bias_backward(grad));
    (dx, dw, db)
}

fn float<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// The embedding rows of `ids` (`[batch × tokens]`, row-major), `[batch, tokens, hidden]`
/// (see [`FusedKernels::embedding`]).
///
/// # Panics
/// If `ids` is not `batch × tokens` long or an id is outside the vocabulary.
pub fn embedding<B: FusedKernels>(weight: Tensor<B, 2>, ids: &[i64], [batch, tokens]: [usize; 2]) -> Tensor<B, 3> {
    let vocab = weight.dims()[0];
    assert_eq!(ids.len(), batch * tokens, "embedding: {} ids for a {batch} × {tokens} batch", ids.len());
    for &id in ids {
        assert!((0..vocab as i64).contains(&id), "embedding: id {id} is outside the vocabulary of {vocab}");
    }
    float(<B as FusedKernels>::embedding(weight.into_primitive().tensor(), ids, [batch, tokens]))
}

/// `x · weight (+ bias)` over the last dimension of `x` (`[…, in]`), `weight` `[in, out]` in
/// burn's layout (see [`FusedKernels::linear`]).
pub fn linear<B: FusedKernels, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, D> {
    let mut shape = x.dims();
    let inner = shape[D - 1];
    let rows = x.shape().num_elements() / inner.max(1);
    let out = weight.dims()[1];
    let y = <B as FusedKernels>::linear(
        x.reshape([rows, inner]).into_primitive().tensor(),
        weight.into_primitive().tensor(),
        bias.map(|b| b.into_primitive().tensor()),
    );
    shape[D - 1] = out;
    float::<B, 2>(y).reshape(shape)
}

/// RMSNorm over the last dimension of `x`, scaled by `weight` (see [`FusedKernels::rms_norm`]).
pub fn rms_norm<B: FusedKernels, const D: usize>(x: Tensor<B, D>, weight: Tensor<B, 1>, eps: f64) -> Tensor<B, D> {
    let shape = x.dims();
    let n = shape[D - 1];
    let rows = x.shape().num_elements() / n.max(1);
    let x = x.reshape([rows, n]).into_primitive().tensor();
    float::<B, 2>(B::rms_norm(x, weight.into_primitive().tensor(), eps)).reshape(shape)
}

/// `silu(gate) · up` (see [`FusedKernels::swiglu`]).
///
/// # Panics
/// If the shapes differ.
pub fn swiglu<B: FusedKernels, const D: usize>(gate: Tensor<B, D>, up: Tensor<B, D>) -> Tensor<B, D> {
    assert_eq!(gate.dims(), up.dims(), "swiglu: gate and up must have one shape");
    let shape = gate.dims();
    let flat = |t: Tensor<B, D>| t.reshape([gate_rows(&shape), shape[D - 1]]).into_primitive().tensor();
    float::<B, 2>(B::swiglu(flat(gate), flat(up))).reshape(shape)
}

fn gate_rows<const D: usize>(shape: &[usize; D]) -> usize {
    shape[..D - 1].iter().product()
}

/// `log p(label)` of each row of `logits` (`[n, vocab]`), `[n]` in f32 (see
/// [`FusedKernels::log_probs`]).
///
/// # Panics
/// If there is not one label per row, or a label is outside the vocabulary.
pub fn log_probs<B: FusedKernels>(logits: Tensor<B, 2>, labels: &[i64]) -> Tensor<B, 1> {
    let [n, vocab] = logits.dims();
    assert_eq!(labels.len(), n, "log_probs: one label per row");
    for &l in labels.iter() {
        assert!((0..vocab as i64).contains(&l), "log_probs: label {l} is outside the vocabulary of {vocab}");
    }
    float(B::log_probs(logits.into_primitive().tensor(), labels))
}

/// Causal attention with RoPE (see [`FusedKernels::rope_attention`]): `[batch, tokens, heads ×
/// head_dim]` out.
pub fn rope_attention<B: FusedKernels>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
    padding: Option<&KeyPadding>,
    spec: AttentionSpec,
) -> Tensor<B, 3> {
    let p = |t: Tensor<B, 3>| t.into_primitive().tensor();
    let (out, _lse) = B::rope_attention(
        p(q),
        p(k),
        p(v),
        cos.into_primitive().tensor(),
        sin.into_primitive().tensor(),
        padding,
        spec,
    );
    float(out)
}

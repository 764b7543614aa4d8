//! The fused ops composed of burn's own tensor ops, forward and backward: what every backend
//! without kernels of its own runs (the defaults of [`crate::FusedKernels`]), what the Flex
//! kernels are tested against, and the pieces generation's KV-cache path uses.
//!
//! Forwards follow HF's modules op for op (`LlamaRMSNorm`, `apply_rotary_pos_emb`,
//! `eager_attention_forward`, `LlamaMLP`'s `act_fn(gate) * up`, cross-entropy through
//! `log_softmax`). Backwards are the derivatives written out, computed in f32 and returned in
//! the input's dtype.

use burn::tensor::activation::{log_softmax, sigmoid, silu, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorData};

use crate::{AttentionSpec, KeyPadding};

/// Added to the score of a key a query may not see. Large enough that `exp` of it is 0 in
/// f32, small enough that adding two of them stays finite (a row with every key masked then
/// becomes uniform instead of NaN, as in HF).
const MASKED: f32 = -1e30;

/// burn's embedding lookup: rows `ids` of `weight`, `[batch, tokens, hidden]`.
pub fn embedding<B: Backend>(weight: Tensor<B, 2>, ids: &[i64], shape: [usize; 2]) -> Tensor<B, 3> {
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids.to_vec(), shape), &weight.device());
    burn::tensor::module::embedding(weight, ids)
}

/// Gradient of [`embedding`]'s weight: `grad`'s rows added into a zero `[vocab, hidden]` at
/// their ids (burn's `select_assign` adds).
pub fn embedding_backward<B: Backend>(vocab: usize, dtype: DType, ids: &[i64], grad: Tensor<B, 3>) -> Tensor<B, 2> {
    let [batch, tokens, hidden] = grad.dims();
    let device = grad.device();
    let ids = Tensor::<B, 1, Int>::from_data(TensorData::new(ids.to_vec(), [batch * tokens]), &device);
    let zeros = Tensor::<B, 2>::zeros([vocab, hidden], (&device, dtype));
    zeros.select_assign(0, ids, grad.reshape([batch * tokens, hidden]).cast(dtype), burn::tensor::IndexingUpdateOp::Add)
}

/// RMSNorm of the rows of `x` (`[rows, n]`), HF's `LlamaRMSNorm`: the statistics in f32 (the
/// mean of squares of a 4096-wide bf16 row loses most of its digits otherwise), the
/// normalised rows cast back, then scaled in the storage dtype.
pub fn rms_norm<B: Backend>(x: Tensor<B, 2>, weight: Tensor<B, 1>, eps: f64) -> Tensor<B, 2> {
    let dtype = x.dtype();
    let x = x.cast(DType::F32);
    let mean_square = x.clone().square().mean_dim(1);
    let normed = x * mean_square.add_scalar(eps).sqrt().recip();
    normed.cast(dtype) * weight.unsqueeze::<2>()
}

/// Gradients of [`rms_norm`]: with `x̂ = x · r`, `r = 1/sqrt(mean(x²) + eps)` and `g = dy · w`,
/// `dx = r · (g − x̂ · mean(g · x̂))`, `dw = Σ_rows dy · x̂`.
pub fn rms_norm_backward<B: Backend>(
    x: Tensor<B, 2>,
    weight: Tensor<B, 1>,
    eps: f64,
    grad: Tensor<B, 2>,
) -> (Tensor<B, 2>, Tensor<B, 1>) {
    let dtype = x.dtype();
    let n = x.dims()[1];
    let x = x.cast(DType::F32);
    let r = x.clone().square().mean_dim(1).add_scalar(eps).sqrt().recip();
    let x_hat = x * r.clone();
    let dy = grad.cast(DType::F32);
    let g = dy.clone() * weight.cast(DType::F32).unsqueeze::<2>();
    let mean = (g.clone() * x_hat.clone()).mean_dim(1);
    let dx = r * (g - x_hat.clone() * mean);
    let dw = (dy * x_hat.cast(dtype).cast(DType::F32)).sum_dim(0).reshape([n]);
    (dx.cast(dtype), dw.cast(dtype))
}

/// `silu(gate) · up`.
pub fn swiglu<B: Backend, const D: usize>(gate: Tensor<B, D>, up: Tensor<B, D>) -> Tensor<B, D> {
    silu(gate) * up
}

/// Gradients of [`swiglu`]: with `s = sigmoid(gate)`, `d gate = dy · up · s · (1 + gate · (1 − s))`
/// and `d up = dy · gate · s`.
pub fn swiglu_backward<B: Backend, const D: usize>(
    gate: Tensor<B, D>,
    up: Tensor<B, D>,
    grad: Tensor<B, D>,
) -> (Tensor<B, D>, Tensor<B, D>) {
    let dtype = gate.dtype();
    let (g, u, dy) = (gate.cast(DType::F32), up.cast(DType::F32), grad.cast(DType::F32));
    let s = sigmoid(g.clone());
    let d_gate = dy.clone() * u * s.clone() * (g.clone() * s.clone().neg().add_scalar(1.0)).add_scalar(1.0);
    let d_up = dy * g * s;
    (d_gate.cast(dtype), d_up.cast(dtype))
}

fn label_tensor<B: Backend>(labels: &[i64], device: &B::Device) -> Tensor<B, 2, Int> {
    Tensor::from_data(TensorData::new(labels.to_vec(), [labels.len(), 1]), device)
}

/// `log softmax(logits)[i, labels[i]]` per row of `logits` (`[n, vocab]`), `[n]` in f32.
pub fn log_probs<B: Backend>(logits: Tensor<B, 2>, labels: &[i64]) -> Tensor<B, 1> {
    let n = logits.dims()[0];
    let labels = label_tensor::<B>(labels, &logits.device());
    log_softmax(logits.cast(DType::F32), 1).gather(1, labels).reshape([n])
}

/// Gradient of the logits of [`log_probs`]: `grad · (onehot(label) − softmax(logits))`.
pub fn log_probs_backward<B: Backend>(logits: Tensor<B, 2>, labels: &[i64], grad: Tensor<B, 1>) -> Tensor<B, 2> {
    let dtype = logits.dtype();
    let n = logits.dims()[0];
    let device = logits.device();
    let g = grad.cast(DType::F32).reshape([n, 1]);
    // −g · softmax everywhere, then + g at each row's label (no one-hot `[n, vocab]` tensor).
    let d = softmax(logits.cast(DType::F32), 1) * g.clone().neg();
    d.scatter(1, label_tensor::<B>(labels, &device), g, burn::tensor::IndexingUpdateOp::Add).cast(dtype)
}

/// Whether the query at position `query` sees the key at `key`: causal, and within the
/// sliding window when there is one.
fn visible(key: usize, query: usize, window: Option<usize>) -> bool {
    key <= query && window.is_none_or(|w| key + w > query)
}

/// Which keys each query may attend to, as additive f32 terms broadcast onto the scores
/// `[batch, heads, queries, keys]`: a causal part `[1, 1, queries, keys]` and a padding part
/// `[batch, 1, 1, keys]`, kept apart so that neither is `batch × queries × keys`.
#[derive(Debug, Clone)]
pub struct AttentionMask<B: Backend> {
    causal: Tensor<B, 4>,
    padding: Option<Tensor<B, 4>>,
}

impl<B: Backend> AttentionMask<B> {
    /// The mask for `queries` new positions following `offset` earlier ones (a KV cache);
    /// `padding`, if given, covers all `offset + queries` keys.
    ///
    /// # Panics
    /// If `padding` does not cover `offset + queries` keys.
    pub fn new(
        queries: usize,
        offset: usize,
        padding: Option<&KeyPadding>,
        window: Option<usize>,
        device: &B::Device,
    ) -> Self {
        let keys = offset + queries;
        let causal: Vec<f32> = (0..queries)
            .flat_map(|q| (0..keys).map(move |k| if visible(k, offset + q, window) { 0.0 } else { MASKED }))
            .collect();
        let causal = Tensor::from_data(TensorData::new(causal, [1, 1, queries, keys]), (device, DType::F32));
        let padding = padding.map(|p| {
            assert_eq!(p.tokens(), keys, "key padding must cover every key");
            let add: Vec<f32> = p.keep().iter().map(|&keep| if keep { 0.0 } else { MASKED }).collect();
            Tensor::from_data(TensorData::new(add, [p.batch(), 1, 1, keys]), (device, DType::F32))
        });
        Self { causal, padding }
    }

    /// The causal mask of `queries` new positions following `offset` earlier ones over the keys
    /// at positions `keys` (one block of a KV cache): a key is seen by the queries at or after
    /// it. No padding.
    pub fn for_keys(
        queries: usize,
        offset: usize,
        keys: std::ops::Range<usize>,
        window: Option<usize>,
        device: &B::Device,
    ) -> Self {
        let n = keys.len();
        let causal: Vec<f32> = (0..queries)
            .flat_map(|q| keys.clone().map(move |k| if visible(k, offset + q, window) { 0.0 } else { MASKED }))
            .collect();
        let causal = Tensor::from_data(TensorData::new(causal, [1, 1, queries, n]), (device, DType::F32));
        Self { causal, padding: None }
    }

    /// `scores` (f32) with the mask added.
    pub fn apply(&self, scores: Tensor<B, 4>) -> Tensor<B, 4> {
        let scores = scores + self.causal.clone();
        match &self.padding {
            Some(padding) => scores + padding.clone(),
            None => scores,
        }
    }
}

/// HF's `rotate_half`: `[x1, x2] → [−x2, x1]` over the last dimension.
fn rotate_half<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let half = x.dims()[3] / 2;
    let x1 = x.clone().narrow(3, 0, half);
    let x2 = x.narrow(3, half, half);
    Tensor::cat(vec![x2.neg(), x1], 3)
}

/// RoPE: `x · cos + rotate_half(x) · sin` for `x` `[batch, heads, tokens, head_dim]` and tables
/// `[tokens, head_dim]`.
pub fn rope<B: Backend>(x: Tensor<B, 4>, cos: &Tensor<B, 2>, sin: &Tensor<B, 2>) -> Tensor<B, 4> {
    x.clone() * cos.clone().unsqueeze::<4>() + rotate_half(x) * sin.clone().unsqueeze::<4>()
}

/// The transpose of [`rope`] (its backward): `g · cos + rotate_halfᵀ(g · sin)` with
/// `rotate_halfᵀ([z1, z2]) = [z2, −z1]`.
pub(crate) fn rope_transpose<B: Backend>(g: Tensor<B, 4>, cos: &Tensor<B, 2>, sin: &Tensor<B, 2>) -> Tensor<B, 4> {
    let z = g.clone() * sin.clone().unsqueeze::<4>();
    let half = z.dims()[3] / 2;
    let z1 = z.clone().narrow(3, 0, half);
    let z2 = z.narrow(3, half, half);
    g * cos.clone().unsqueeze::<4>() + Tensor::cat(vec![z2, z1.neg()], 3)
}

/// `[batch, tokens, n × dim]` → `[batch, n, tokens, dim]` (a view).
pub(crate) fn split_heads<B: Backend>(t: Tensor<B, 3>, n: usize, dim: usize) -> Tensor<B, 4> {
    let [batch, tokens, _] = t.dims();
    t.reshape([batch, tokens, n, dim]).swap_dims(1, 2)
}

/// `[batch, n, tokens, dim]` → `[batch, tokens, n × dim]`.
pub(crate) fn merge_heads<B: Backend>(t: Tensor<B, 4>) -> Tensor<B, 3> {
    let [batch, n, tokens, dim] = t.dims();
    t.swap_dims(1, 2).reshape([batch, tokens, n * dim])
}

/// Attention of rotated queries `[batch, heads, queries, dim]` over rotated keys and values
/// `[batch, kv_heads, keys, dim]` under `mask`: the output `[batch, heads, queries, dim]` and
/// the log-sum-exp of each query's masked scores `[batch, heads, queries]` (f32).
///
/// HF repeats each key/value head `heads / kv_heads` times; folding the query heads of a group
/// into the query axis, `[batch, kv_heads, groups × queries, dim]`, computes the same products
/// without materialising the repeated keys and values. Softmax in f32 (HF:
/// `softmax(..., dtype=torch.float32).to(query.dtype)`).
pub fn attend<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: &AttentionMask<B>,
) -> (Tensor<B, 4>, Tensor<B, 3>) {
    let [batch, heads, queries, dim] = q.dims();
    let [_, kv_heads, keys, _] = k.dims();
    let groups = heads / kv_heads;
    let q = q.reshape([batch, kv_heads, groups * queries, dim]);
    let scale = (dim as f64).powf(-0.5);
    let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(scale).reshape([batch, heads, queries, keys]);
    let compute = scores.dtype();
    let masked = mask.apply(scores.cast(DType::F32));
    let max = masked.clone().max_dim(3);
    let lse = (masked.clone() - max.clone()).exp().sum_dim(3).log() + max;
    let probs = softmax(masked, 3).cast(compute).reshape([batch, kv_heads, groups * queries, keys]);
    let out = probs.matmul(v).reshape([batch, heads, queries, dim]);
    (out, lse.reshape([batch, heads, queries]))
}

/// [`crate::FusedKernels::rope_attention`] composed of burn's ops.
pub fn rope_attention<B: Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
    padding: Option<&KeyPadding>,
    spec: AttentionSpec,
) -> (Tensor<B, 3>, Tensor<B, 3>) {
    let tokens = q.dims()[1];
    let mask = AttentionMask::new(tokens, 0, padding, spec.window, &q.device());
    let q = rope(split_heads(q, spec.heads, spec.head_dim), &cos, &sin);
    let k = rope(split_heads(k, spec.kv_heads, spec.head_dim), &cos, &sin);
    let v = split_heads(v, spec.kv_heads, spec.head_dim);
    let (out, lse) = attend(q, k, v, &mask);
    (merge_heads(out), lse)
}

/// Gradients of [`rope_attention`], in f32: the probabilities are recomputed from the scores
/// and `lse`; with `dP = dO Vᵀ` and `D = rowsum(dO ∘ O)`, `dS = P ∘ (dP − D)`, then
/// `dQ = dS K · scale`, `dK = dSᵀ Q · scale`, `dV = Pᵀ dO`, and RoPE's transpose.
#[allow(clippy::too_many_arguments)]
pub fn rope_attention_backward<B: Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
    padding: Option<&KeyPadding>,
    spec: AttentionSpec,
    out: Tensor<B, 3>,
    lse: Tensor<B, 3>,
    grad: Tensor<B, 3>,
) -> (Tensor<B, 3>, Tensor<B, 3>, Tensor<B, 3>) {
    let dtype = q.dtype();
    let [batch, tokens, _] = q.dims();
    let AttentionSpec { heads, kv_heads, head_dim: dim, window } = spec;
    let groups = heads / kv_heads;
    let f32 = |t: Tensor<B, 3>| t.cast(DType::F32);
    let (cos, sin) = (cos.cast(DType::F32), sin.cast(DType::F32));
    let mask = AttentionMask::new(tokens, 0, padding, window, &q.device());
    let scale = (dim as f64).powf(-0.5);

    let q = rope(split_heads(f32(q), heads, dim), &cos, &sin).reshape([batch, kv_heads, groups * tokens, dim]);
    let k = rope(split_heads(f32(k), kv_heads, dim), &cos, &sin);
    let v = split_heads(f32(v), kv_heads, dim);
    let folded = |t: Tensor<B, 3>| split_heads(f32(t), heads, dim).reshape([batch, kv_heads, groups * tokens, dim]);
    let (d_out, out) = (folded(grad), folded(out));

    let scores = q.clone().matmul(k.clone().swap_dims(2, 3)).mul_scalar(scale).reshape([batch, heads, tokens, tokens]);
    let probs = (mask.apply(scores) - lse.reshape([batch, heads, tokens, 1])).exp().reshape([
        batch,
        kv_heads,
        groups * tokens,
        tokens,
    ]);
    let dv = probs.clone().swap_dims(2, 3).matmul(d_out.clone());
    let dp = d_out.clone().matmul(v.swap_dims(2, 3));
    let row_dot = (d_out * out).sum_dim(3);
    let ds = probs * (dp - row_dot);
    let dq = ds.clone().matmul(k).mul_scalar(scale).reshape([batch, heads, tokens, dim]);
    let dk = ds.swap_dims(2, 3).matmul(q).mul_scalar(scale);
    let dq = merge_heads(rope_transpose(dq, &cos, &sin)).cast(dtype);
    let dk = merge_heads(rope_transpose(dk, &cos, &sin)).cast(dtype);
    (dq, dk, merge_heads(dv).cast(dtype))
}

//! Grouped-query self-attention with RoPE, a causal mask and a padding mask (HF's
//! `LlamaAttention` with `eager_attention_forward`).
//!
//! Training and scoring run the whole attention core (RoPE, scores, softmax, the weighted sum
//! of values) as one op of [`lomo_kernels::FusedKernels`], on the projections' own
//! `[batch, tokens, heads × head_dim]` layout; incremental decoding, whose queries attend to
//! cached keys, composes burn's ops ([`lomo_kernels::reference`]).

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use lomo_kernels::reference::{self, AttentionMask};
use lomo_kernels::{AttentionSpec, FusedKernels, KeyPadding};

use crate::kv_cache::LayerKvCache;
use crate::norm::RmsNorm;
use crate::rope::RopeTables;

/// Multi-head attention where `num_heads / num_kv_heads` query heads share a key/value head.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// `q_proj`, `[hidden, heads × head_dim]` in burn's layout.
    pub q_proj: Linear<B>,
    /// `k_proj`, `[hidden, kv_heads × head_dim]`.
    pub k_proj: Linear<B>,
    /// `v_proj`, `[hidden, kv_heads × head_dim]`.
    pub v_proj: Linear<B>,
    /// `o_proj`, `[heads × head_dim, hidden]`.
    pub o_proj: Linear<B>,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Width of a head.
    pub head_dim: usize,
    /// Qwen3's per-head RMSNorm of the queries, `[head_dim]`, before RoPE.
    pub q_norm: Option<RmsNorm<B>>,
    /// Qwen3's per-head RMSNorm of the keys.
    pub k_norm: Option<RmsNorm<B>>,
    /// Sliding-window attention (Mistral): keys per query.
    pub window: Option<usize>,
}

/// How a forward pass attends: every position of the batch at once (training, scoring), or the
/// new positions of incremental decoding against a KV cache.
#[derive(Debug)]
pub enum AttentionInputs<'a, B: Backend> {
    /// Causal attention over the batch's own positions, padded keys hidden.
    Batch {
        /// RoPE tables of positions `0..tokens`.
        rope: &'a RopeTables<B>,
        /// Padded keys, `None` when the batch has none.
        padding: Option<&'a KeyPadding>,
    },
    /// Decoding: the new positions follow the `offset` ones in `cache`, which they extend.
    Cached {
        /// RoPE tables of the new positions.
        rope: &'a RopeTables<B>,
        /// Positions already in the cache (the position of the first new one).
        offset: usize,
        /// This layer's cache.
        cache: &'a mut LayerKvCache<B>,
    },
}

impl<B: FusedKernels> Attention<B> {
    fn spec(&self) -> AttentionSpec {
        AttentionSpec {
            heads: self.num_heads,
            kv_heads: self.num_kv_heads,
            head_dim: self.head_dim,
            window: self.window,
        }
    }

    /// Attends `x` (`[batch, tokens, hidden]`) to itself, or to the cached positions too.
    pub fn forward(&self, x: Tensor<B, 3>, inputs: AttentionInputs<'_, B>) -> Tensor<B, 3> {
        let q = per_head_norm(self.q_norm.as_ref(), linear_rows(&self.q_proj, x.clone()), self.num_heads);
        let k = per_head_norm(self.k_norm.as_ref(), linear_rows(&self.k_proj, x.clone()), self.num_kv_heads);
        let v = linear_rows(&self.v_proj, x);
        let out = match inputs {
            AttentionInputs::Batch { rope, padding } => {
                lomo_kernels::rope_attention(q, k, v, rope.cos.clone(), rope.sin.clone(), padding, self.spec())
            }
            AttentionInputs::Cached { rope, offset, cache } => {
                let [batch, tokens, _] = q.dims();
                let (heads, kv_heads, dim) = (self.num_heads, self.num_kv_heads, self.head_dim);
                let split_heads = |t: Tensor<B, 3>, n: usize| t.reshape([batch, tokens, n, dim]).swap_dims(1, 2);
                let q = reference::rope(split_heads(q, heads), &rope.cos, &rope.sin);
                let k = reference::rope(split_heads(k, kv_heads), &rope.cos, &rope.sin);
                cache.append(k, split_heads(v, kv_heads));
                let out = attend_blocks(q, cache, offset, self.window);
                out.swap_dims(1, 2).reshape([batch, tokens, heads * dim])
            }
        };
        linear_rows(&self.o_proj, out)
    }
}

/// Attention of the new queries (`[batch, heads, new, dim]`, at positions `offset..`) over every
/// block of `cache`: each block's output and log-sum-exp, merged as
/// `Σ_b e^(lse_b − lse) · out_b` with `lse = log Σ_b e^(lse_b)` (a block whose keys all lie
/// after a query contributes weight 0 to it).
fn attend_blocks<B: FusedKernels>(
    q: Tensor<B, 4>,
    cache: &LayerKvCache<B>,
    offset: usize,
    window: Option<usize>,
) -> Tensor<B, 4> {
    let queries = q.dims()[2];
    let device = q.device();
    let mut all: Vec<_> = cache
        .blocks()
        .iter()
        .map(|block| {
            let mask =
                AttentionMask::for_keys(queries, offset, block.start..block.start + block.len(), window, &device);
            reference::attend(q.clone(), block.keys.clone(), block.values.clone(), &mask)
        })
        .collect();
    assert!(!all.is_empty(), "the cache holds the new positions");
    if all.len() == 1 {
        return all.remove(0).0;
    }
    let dtype = all[0].0.dtype();
    let [b, h, t] = all[0].1.dims();
    let lse = Tensor::stack::<4>(all.iter().map(|(_, l)| l.clone()).collect(), 0);
    let max = lse.clone().max_dim(0);
    let total = ((lse - max.clone()).exp().sum_dim(0).log() + max).reshape([b, h, t]);
    let mut out: Option<Tensor<B, 4>> = None;
    for (o, l) in all {
        let weight = (l - total.clone()).exp().unsqueeze_dim::<4>(3);
        let part = o.cast(burn::tensor::DType::F32) * weight;
        out = Some(match out {
            Some(acc) => acc + part,
            None => part,
        });
    }
    out.expect("at least two blocks").cast(dtype)
}

/// `x` (`[batch, tokens, heads × head_dim]`) with each head's vector RMS-normalised by `norm`
/// (Qwen3's `q_norm` / `k_norm`, applied before RoPE), or `x` itself without one.
fn per_head_norm<B: FusedKernels>(norm: Option<&RmsNorm<B>>, x: Tensor<B, 3>, heads: usize) -> Tensor<B, 3> {
    let Some(norm) = norm else { return x };
    let [batch, tokens, width] = x.dims();
    norm.forward(x.reshape([batch * tokens * heads, width / heads])).reshape([batch, tokens, width])
}

/// `linear` applied to `[batch, tokens, in]` as the 2-D rows `[batch × tokens, in]`.
///
/// Same values as `linear.forward(x)`, but burn 0.21's Linear backward on a 3-D input makes
/// the weight gradient as one `[in, out]` product per batch row, `[batch, in, out]`, then sums
/// them (and for one row still copies the sum): `batch` weight-sized tensors per projection
/// instead of one.
pub(crate) fn linear_rows<B: FusedKernels>(linear: &Linear<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    let [batch, tokens, width] = x.dims();
    let out = dense(linear, x.reshape([batch * tokens, width]));
    let out_width = out.dims()[1];
    out.reshape([batch, tokens, out_width])
}

/// `linear` on rows `[rows, in]` through the fused op (one kernel forward and backward, outputs
/// allocated by it; see [`lomo_kernels::FusedKernels::linear`]).
pub(crate) fn dense<B: FusedKernels>(linear: &Linear<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
    lomo_kernels::linear(x, linear.weight.val(), linear.bias.as_ref().map(|b| b.val()))
}

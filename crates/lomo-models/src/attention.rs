//! Grouped-query self-attention with RoPE, a causal mask and a padding mask (HF's
//! `LlamaAttention` with `eager_attention_forward`).

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};

use crate::kv_cache::LayerKvCache;
use crate::rope::RopeTables;

/// Added to the score of a key a query may not see. Large enough that `exp` of it is 0
/// in f32, small enough that adding two of them stays finite (a row with every key masked
/// then becomes uniform instead of NaN, as in HF).
const MASKED: f32 = -1e30;

/// Which keys each query may attend to, as additive f32 terms broadcast onto the scores
/// `[batch, heads, queries, keys]`: a causal part `[1, 1, queries, keys]` and a padding part
/// `[batch, 1, 1, keys]`, kept apart so that neither is `batch × queries × keys`.
#[derive(Debug, Clone)]
pub struct AttentionMask<B: Backend> {
    causal: Tensor<B, 4>,
    padding: Option<Tensor<B, 4>>,
}

impl<B: Backend> AttentionMask<B> {
    /// The mask for `queries` new positions following `offset` cached ones. `key_padding`
    /// (`[batch, offset + queries]`, 1 = real token, 0 = padding), if given, hides padded keys.
    pub fn new(queries: usize, offset: usize, key_padding: Option<(&[i64], usize)>, device: &B::Device) -> Self {
        let keys = offset + queries;
        let causal: Vec<f32> = (0..queries)
            .flat_map(|q| (0..keys).map(move |k| if k <= offset + q { 0.0 } else { MASKED }))
            .collect();
        let causal = Tensor::from_data(TensorData::new(causal, [1, 1, queries, keys]), (device, DType::F32));
        let padding = key_padding.and_then(|(mask, batch)| {
            if mask.iter().all(|&m| m != 0) {
                return None;
            }
            assert_eq!(mask.len(), batch * keys, "key padding mask must be [batch, keys]");
            let add: Vec<f32> = mask.iter().map(|&m| if m != 0 { 0.0 } else { MASKED }).collect();
            Some(Tensor::from_data(TensorData::new(add, [batch, 1, 1, keys]), (device, DType::F32)))
        });
        Self { causal, padding }
    }

    fn apply(&self, scores: Tensor<B, 4>) -> Tensor<B, 4> {
        let scores = scores + self.causal.clone();
        match &self.padding {
            Some(padding) => scores + padding.clone(),
            None => scores,
        }
    }
}

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
}

impl<B: Backend> Attention<B> {
    /// Attends `x` (`[batch, tokens, hidden]`) to itself, and to the cached positions when
    /// `cache` is given (generation only).
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &RopeTables<B>,
        mask: &AttentionMask<B>,
        cache: Option<&mut LayerKvCache<B>>,
    ) -> Tensor<B, 3> {
        let [batch, tokens, _] = x.dims();
        let (heads, kv_heads, dim) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let groups = heads / kv_heads;
        let split_heads = |t: Tensor<B, 3>, n: usize| t.reshape([batch, tokens, n, dim]).swap_dims(1, 2);

        let q = rope.apply(split_heads(linear_rows(&self.q_proj, x.clone()), heads));
        let k = rope.apply(split_heads(linear_rows(&self.k_proj, x.clone()), kv_heads));
        let v = split_heads(linear_rows(&self.v_proj, x), kv_heads);
        let (k, v) = match cache {
            Some(cache) => cache.append(k, v),
            None => (k, v),
        };
        let keys = k.dims()[2];

        // HF repeats each key/value head `groups` times. Folding the query heads of a group
        // into the token axis instead, `[batch, kv_heads, groups × tokens, dim]`, computes the
        // same products without materialising the repeated keys and values.
        let q = q.reshape([batch, kv_heads, groups * tokens, dim]);
        let scale = (dim as f64).powf(-0.5);
        let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(scale);
        let scores = scores.reshape([batch, heads, tokens, keys]);
        // Softmax in f32 (HF: `softmax(..., dtype=torch.float32).to(query.dtype)`).
        let compute = scores.dtype();
        let probs = softmax(mask.apply(scores.cast(DType::F32)), 3).cast(compute);
        let probs = probs.reshape([batch, kv_heads, groups * tokens, keys]);
        let out = probs.matmul(v).reshape([batch, heads, tokens, dim]);
        let out = out.swap_dims(1, 2).reshape([batch, tokens, heads * dim]);
        linear_rows(&self.o_proj, out)
    }
}

/// `linear` applied to `[batch, tokens, in]` as the 2-D rows `[batch × tokens, in]`.
///
/// Same values as `linear.forward(x)`, but burn 0.21's Linear backward on a 3-D input makes
/// the weight gradient as one `[in, out]` product per batch row, `[batch, in, out]`, then sums
/// them (and for one row still copies the sum): `batch` weight-sized tensors per projection
/// instead of one.
pub(crate) fn linear_rows<B: Backend>(linear: &Linear<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    let [batch, tokens, width] = x.dims();
    let out = linear.forward(x.reshape([batch * tokens, width]));
    let out_width = out.dims()[1];
    out.reshape([batch, tokens, out_width])
}

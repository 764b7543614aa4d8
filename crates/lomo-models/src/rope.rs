//! Rotary position embedding (RoPE), with LLaMA 3.1's frequency scaling.
//!
//! Mirrors HF's `LlamaRotaryEmbedding` and `_compute_llama3_parameters`
//! (`modeling_rope_utils.py`): the frequencies are computed in f32 exactly as PyTorch does,
//! so that positions far into the context rotate by the same angles.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};

use crate::config::{Llama3RopeScaling, LlamaConfig};

/// The inverse frequencies of one head's rotary embedding. Plain data: the tables for a
/// range of positions are made on demand, so neither training nor the KV cache keeps a
/// table sized for the longest context.
#[derive(Debug, Clone, PartialEq)]
pub struct RotaryEmbedding {
    inv_freq: Vec<f32>,
}

/// `cos` and `sin` for a run of positions, `[tokens, head_dim]`, in the compute dtype.
#[derive(Debug, Clone)]
pub struct RopeTables<B: Backend> {
    /// Cosines.
    pub cos: Tensor<B, 2>,
    /// Sines.
    pub sin: Tensor<B, 2>,
}

impl RotaryEmbedding {
    /// The frequencies for `config`'s head width, θ and scaling.
    pub fn new(config: &LlamaConfig) -> Self {
        let dim = config.head_dim;
        let base = config.rope_theta as f32;
        // torch: 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim)), all in f32.
        let mut inv_freq: Vec<f32> = (0..dim).step_by(2).map(|i| 1.0 / base.powf(i as f32 / dim as f32)).collect();
        if let Some(scaling) = &config.rope_scaling {
            llama3_scale(&mut inv_freq, scaling);
        }
        Self { inv_freq }
    }

    /// The inverse frequencies (`head_dim / 2` of them).
    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    /// Tables for positions `start..start + len`.
    pub fn tables<B: Backend>(&self, start: usize, len: usize, dtype: DType, device: &B::Device) -> RopeTables<B> {
        let half = self.inv_freq.len();
        let dim = 2 * half;
        let mut cos = Vec::with_capacity(len * dim);
        let mut sin = Vec::with_capacity(len * dim);
        for pos in start..start + len {
            // HF concatenates the frequencies with themselves: emb = cat(freqs, freqs).
            let angles: Vec<f32> = self.inv_freq.iter().map(|&f| pos as f32 * f).collect();
            for _ in 0..2 {
                cos.extend(angles.iter().map(|a| a.cos()));
                sin.extend(angles.iter().map(|a| a.sin()));
            }
        }
        let make =
            |v: Vec<f32>| Tensor::<B, 2>::from_data(TensorData::new(v, [len, dim]), (device, DType::F32)).cast(dtype);
        RopeTables { cos: make(cos), sin: make(sin) }
    }
}

/// `_compute_llama3_parameters`: long wavelengths are slowed down by `factor`, short ones
/// kept, the band between interpolated smoothly.
fn llama3_scale(inv_freq: &mut [f32], s: &Llama3RopeScaling) {
    let old_context = s.original_max_position_embeddings as f32;
    let (factor, low, high) = (s.factor as f32, s.low_freq_factor as f32, s.high_freq_factor as f32);
    let low_freq_wavelen = old_context / low;
    let high_freq_wavelen = old_context / high;
    for f in inv_freq.iter_mut() {
        let wavelen = 2.0 * std::f32::consts::PI / *f;
        let scaled = if wavelen > low_freq_wavelen { *f / factor } else { *f };
        let is_medium = (high_freq_wavelen..=low_freq_wavelen).contains(&wavelen);
        *f = if is_medium {
            let smooth = (old_context / wavelen - low) / (high - low);
            (1.0 - smooth) * scaled / factor + smooth * scaled
        } else {
            scaled
        };
    }
}

impl<B: Backend> RopeTables<B> {
    /// Rotates `x` (`[batch, heads, tokens, head_dim]`): `x * cos + rotate_half(x) * sin`.
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        lomo_kernels::reference::rope(x, &self.cos, &self.sin)
    }
}

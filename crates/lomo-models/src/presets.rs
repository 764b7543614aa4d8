//! Shapes of real models (as their HF `config.json` gives them), for random-weight models
//! in memory work and for the planner's parameter and byte counts.

use crate::config::{Llama3RopeScaling, LlamaConfig, ModelType};
use crate::error::{ModelError, Result};

/// Names accepted by [`preset`].
pub const PRESETS: &[&str] = &[
    "stories260K",
    "SmolLM2-135M",
    "TinyLlama-1.1B",
    "Llama-3.2-1B",
    "Llama-3.2-3B",
    "LLaMA-7B",
    "LLaMA-13B",
    "LLaMA-30B",
    "LLaMA-65B",
];

#[allow(clippy::too_many_arguments)]
fn llama(
    vocab: usize,
    hidden: usize,
    ffn: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    max_pos: usize,
    eps: f64,
    theta: f64,
    tied: bool,
) -> LlamaConfig {
    LlamaConfig {
        model_type: ModelType::Llama,
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: ffn,
        num_layers: layers,
        num_heads: heads,
        num_kv_heads: kv_heads,
        head_dim: hidden / heads,
        max_position_embeddings: max_pos,
        rms_norm_eps: eps,
        rope_theta: theta,
        rope_scaling: None,
        tie_word_embeddings: tied,
        qkv_bias: false,
        o_bias: false,
        mlp_bias: false,
        qk_norm: false,
        sliding_window: None,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
        pad_token_id: None,
    }
}

fn llama32(hidden: usize, layers: usize, heads: usize) -> LlamaConfig {
    LlamaConfig {
        head_dim: 64.max(hidden / heads),
        rope_scaling: Some(Llama3RopeScaling {
            factor: 32.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        }),
        bos_token_id: Some(128000),
        eos_token_ids: vec![128001],
        ..llama(128256, hidden, 8192, layers, heads, 8, 131072, 1e-5, 500000.0, true)
    }
}

/// The configuration of a named model (case-insensitive).
pub fn preset(name: &str) -> Result<LlamaConfig> {
    let config = match name.to_ascii_lowercase().as_str() {
        // karpathy/llama2.c stories260K, as converted in shared/models.
        "stories260k" => LlamaConfig { head_dim: 8, ..llama(512, 64, 172, 5, 8, 4, 512, 1e-5, 10000.0, true) },
        // HuggingFaceTB/SmolLM2-135M
        "smollm2-135m" => LlamaConfig {
            bos_token_id: Some(0),
            eos_token_ids: vec![0],
            ..llama(49152, 576, 1536, 30, 9, 3, 8192, 1e-5, 100000.0, true)
        },
        // TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T
        "tinyllama-1.1b" => llama(32000, 2048, 5632, 22, 32, 4, 2048, 1e-5, 10000.0, false),
        // meta-llama/Llama-3.2-1B
        "llama-3.2-1b" => llama32(2048, 16, 32),
        // meta-llama/Llama-3.2-3B
        "llama-3.2-3b" => llama32(3072, 28, 24),
        // huggyllama/llama-7b, -13b, -30b, -65b
        "llama-7b" => llama(32000, 4096, 11008, 32, 32, 32, 2048, 1e-6, 10000.0, false),
        "llama-13b" => llama(32000, 5120, 13824, 40, 40, 40, 2048, 1e-6, 10000.0, false),
        "llama-30b" => llama(32000, 6656, 17920, 60, 52, 52, 2048, 1e-6, 10000.0, false),
        "llama-65b" => llama(32000, 8192, 22016, 80, 64, 64, 2048, 1e-5, 10000.0, false),
        _ => return Err(ModelError::UnknownPreset(name.into(), PRESETS.join(", "))),
    };
    Ok(config)
}

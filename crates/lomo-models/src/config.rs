//! The model configuration: a serde mirror of HF's `config.json` ([`HfConfig`]) and the
//! resolved configuration the model is built from ([`LlamaConfig`]).
//!
//! The mirror follows `transformers`' `LlamaConfig` / `Qwen2Config` field names
//! (`configuration_llama.py`); the resolved config has every default applied and every
//! field checked, so that a value this crate does not implement is an error here rather
//! than a silently different model later.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::dtype::StorageDtype;
use crate::error::{ModelError, Result};

/// `config.json` as HF writes it, for the LLaMA family (`llama`, `qwen2`).
///
/// Optional fields take `transformers`' defaults when resolved. Fields not listed here are
/// kept in `extra` and ignored: none of them changes what a LLaMA computes.
#[allow(missing_docs)] // The fields are HF's; their meaning is documented there.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HfConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architectures: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_type: Option<String>,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_key_value_heads: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    pub vocab_size: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_position_embeddings: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rms_norm_eps: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<Value>,
    /// transformers ≥ 5 writes `rope_theta` and the scaling here instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial_rotary_factor: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden_act: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tie_word_embeddings: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_bias: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlp_bias: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretraining_tp: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_sliding_window: Option<bool>,
    /// Mistral's window (keys per query); Qwen's only with `use_sliding_window`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pad_token_id: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub torch_dtype: Option<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// The architectures this crate builds. They differ only in defaults and in which
/// projections carry a bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModelType {
    /// HF `llama` (LLaMA 1/2/3, TinyLlama, SmolLM, …).
    Llama,
    /// HF `qwen2`: q, k and v projections always have a bias, o has none.
    Qwen2,
    /// HF `qwen3`: per-head RMSNorm of queries and keys before RoPE; biases only with
    /// `attention_bias`.
    Qwen3,
    /// HF `mistral`: LLaMA with sliding-window attention (`sliding_window`, when set).
    Mistral,
}

impl ModelType {
    /// The name HF's `model_type` uses.
    pub fn hf_name(self) -> &'static str {
        match self {
            ModelType::Llama => "llama",
            ModelType::Qwen2 => "qwen2",
            ModelType::Qwen3 => "qwen3",
            ModelType::Mistral => "mistral",
        }
    }

    fn hf_architecture(self) -> &'static str {
        match self {
            ModelType::Llama => "LlamaForCausalLM",
            ModelType::Qwen2 => "Qwen2ForCausalLM",
            ModelType::Qwen3 => "Qwen3ForCausalLM",
            ModelType::Mistral => "MistralForCausalLM",
        }
    }
}

/// LLaMA 3.1's RoPE frequency scaling (`rope_scaling.rope_type == "llama3"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3RopeScaling {
    /// `factor`: how much longer the extended context is.
    pub factor: f64,
    /// `low_freq_factor`.
    pub low_freq_factor: f64,
    /// `high_freq_factor`.
    pub high_freq_factor: f64,
    /// `original_max_position_embeddings`: the context length trained before scaling.
    pub original_max_position_embeddings: usize,
}

/// A fully resolved LLaMA-family configuration: what [`crate::Llama`] is built from.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Which HF architecture this is (decides the names written back to `config.json`).
    pub model_type: ModelType,
    /// Vocabulary size (rows of the embedding and of the LM head).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP.
    pub intermediate_size: usize,
    /// Number of decoder blocks.
    pub num_layers: usize,
    /// Number of query heads.
    pub num_heads: usize,
    /// Number of key/value heads (grouped-query attention when fewer than `num_heads`).
    pub num_kv_heads: usize,
    /// Width of one head; need not be `hidden_size / num_heads`.
    pub head_dim: usize,
    /// Longest context the model was trained for.
    pub max_position_embeddings: usize,
    /// Epsilon of every RMSNorm.
    pub rms_norm_eps: f64,
    /// RoPE base θ.
    pub rope_theta: f64,
    /// RoPE frequency scaling, if any.
    pub rope_scaling: Option<Llama3RopeScaling>,
    /// Whether the LM head reuses the token embedding.
    pub tie_word_embeddings: bool,
    /// Whether q, k and v projections have a bias.
    pub qkv_bias: bool,
    /// Whether the attention output projection has a bias.
    pub o_bias: bool,
    /// Whether the MLP projections have a bias.
    pub mlp_bias: bool,
    /// Whether queries and keys are RMS-normalised per head before RoPE (Qwen3's `q_norm`,
    /// `k_norm`, `[head_dim]` each).
    pub qk_norm: bool,
    /// Sliding-window attention: a query sees its `window` latest keys (Mistral).
    pub sliding_window: Option<usize>,
    /// Beginning-of-sequence token.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence tokens (generation stops at any of them).
    pub eos_token_ids: Vec<u32>,
    /// Padding token, if the checkpoint names one.
    pub pad_token_id: Option<u32>,
}

/// What the size fields of a configuration are called in the file it was read from, so that a
/// size past its limit is named as the user wrote it (`config.json`'s or a GGUF file's keys).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SizeFields {
    pub vocab_size: &'static str,
    pub hidden_size: &'static str,
    pub intermediate_size: &'static str,
    pub num_layers: &'static str,
    pub num_heads: &'static str,
    pub num_kv_heads: &'static str,
    pub head_dim: &'static str,
    pub max_position_embeddings: &'static str,
}

/// `config.json`'s names of the sizes.
pub(crate) const HF_SIZE_FIELDS: SizeFields = SizeFields {
    vocab_size: "vocab_size",
    hidden_size: "hidden_size",
    intermediate_size: "intermediate_size",
    num_layers: "num_hidden_layers",
    num_heads: "num_attention_heads",
    num_kv_heads: "num_key_value_heads",
    head_dim: "head_dim",
    max_position_embeddings: "max_position_embeddings",
};

/// The most parameters a configuration may describe: 2^42 (4.4 trillion, 17.6 TB in f32), past
/// every LLaMA-family model published. Beyond it a size is a corrupt or hostile file, and the
/// byte counts of the planner (`u64`) stay far from overflowing.
pub const MAX_PARAMS: u64 = 1 << 42;

/// The largest value each size may take, far past any published model (LLaMA 3.1 405B: 126
/// layers, width 16384, MLP 53248, 128 heads, vocabulary 128256): a bigger one is a corrupt
/// file, refused before anything is sized from it.
const SIZE_LIMITS: SizeLimits = SizeLimits {
    vocab_size: 1 << 24,
    hidden_size: 1 << 17,
    intermediate_size: 1 << 19,
    num_layers: 1 << 12,
    num_heads: 1 << 12,
    head_dim: 1 << 12,
    max_position_embeddings: 1 << 24,
};

struct SizeLimits {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_layers: usize,
    num_heads: usize,
    head_dim: usize,
    max_position_embeddings: usize,
}

impl LlamaConfig {
    /// Checks that every size is positive and within [`SIZE_LIMITS`] and that the model has at
    /// most [`MAX_PARAMS`] parameters (counted with overflow-checked arithmetic): what must hold
    /// before anything is sized from the configuration. Returns the field at fault (named as
    /// `names` says) and what is wrong.
    pub(crate) fn size_problem(&self, names: &SizeFields) -> Option<(&'static str, String)> {
        let l = &SIZE_LIMITS;
        let sizes = [
            (names.vocab_size, self.vocab_size, l.vocab_size),
            (names.hidden_size, self.hidden_size, l.hidden_size),
            (names.intermediate_size, self.intermediate_size, l.intermediate_size),
            (names.num_layers, self.num_layers, l.num_layers),
            (names.num_heads, self.num_heads, l.num_heads),
            (names.num_kv_heads, self.num_kv_heads, l.num_heads),
            (names.head_dim, self.head_dim, l.head_dim),
            (names.max_position_embeddings, self.max_position_embeddings, l.max_position_embeddings),
        ];
        for (field, value, limit) in sizes {
            if value == 0 {
                return Some((field, "must be positive".into()));
            }
            if value > limit {
                return Some((field, format!("{value} is past the limit {limit} (no published model comes near it)")));
            }
        }
        if !self.head_dim.is_multiple_of(2) {
            return Some((names.head_dim, format!("{} is not an even number (RoPE rotates pairs)", self.head_dim)));
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            let (kv, heads) = (self.num_kv_heads, self.num_heads);
            return Some((names.num_kv_heads, format!("{kv} does not divide the {heads} query heads")));
        }
        let (embedding, layers) = self.checked_param_counts();
        let total = embedding.checked_add(layers).filter(|&n| n <= u128::from(MAX_PARAMS));
        if total.is_none() {
            let field = if layers >= embedding { names.num_layers } else { names.vocab_size };
            return Some((
                field,
                format!(
                    "the sizes make {} parameters, past the {MAX_PARAMS} this crate plans for",
                    embedding.saturating_add(layers)
                ),
            ));
        }
        None
    }

    /// Parameters of the embedding and LM head, and of the blocks and final norm, in `u128`
    /// (sizes within [`SIZE_LIMITS`] cannot overflow it), without listing the tensors.
    fn checked_param_counts(&self) -> (u128, u128) {
        let n = |v: usize| v as u128;
        let (v, h, f) = (n(self.vocab_size), n(self.hidden_size), n(self.intermediate_size));
        let (q, kv) = (n(self.num_heads) * n(self.head_dim), n(self.num_kv_heads) * n(self.head_dim));
        let mut block = h * q + 2 * h * kv + q * h + 3 * h * f + 2 * h;
        if self.qkv_bias {
            block += q + 2 * kv;
        }
        if self.o_bias {
            block += h;
        }
        if self.mlp_bias {
            block += 2 * f + h;
        }
        if self.qk_norm {
            block += 2 * n(self.head_dim);
        }
        let heads = if self.tie_word_embeddings { 1 } else { 2 };
        (heads * v * h, n(self.num_layers) * block + h)
    }

    /// [`Self::size_problem`] as the error naming `path` and the field.
    pub(crate) fn check_sizes(&self, path: &Path, names: &SizeFields) -> Result<()> {
        match self.size_problem(names) {
            Some((field, reason)) => Err(invalid(path, field, reason)),
            None => Ok(()),
        }
    }
}

fn unsupported(path: &Path, field: &str, value: impl std::fmt::Display) -> ModelError {
    ModelError::UnsupportedConfig { path: path.to_path_buf(), field: field.into(), value: value.to_string() }
}

fn invalid(path: &Path, field: &str, reason: impl Into<String>) -> ModelError {
    ModelError::InvalidConfig { path: path.to_path_buf(), field: field.into(), reason: reason.into() }
}

/// A token id field: HF allows an integer, a list of integers, or null.
fn token_ids(value: &Option<Value>, path: &Path, field: &str) -> Result<Vec<u32>> {
    let one = |v: &Value| -> Result<u32> {
        v.as_u64()
            .and_then(|id| u32::try_from(id).ok())
            .ok_or_else(|| invalid(path, field, format!("expected a token id, found {v}")))
    };
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(ids)) => ids.iter().map(one).collect(),
        Some(v) => Ok(vec![one(v)?]),
    }
}

fn single_token_id(value: &Option<Value>, path: &Path, field: &str) -> Result<Option<u32>> {
    let ids = token_ids(value, path, field)?;
    match ids.as_slice() {
        [] => Ok(None),
        [id] => Ok(Some(*id)),
        _ => Err(invalid(path, field, "expected one token id, found a list")),
    }
}

fn rope_from_json(value: &Value, path: &Path, field: &str) -> Result<Option<Llama3RopeScaling>> {
    let Value::Object(map) = value else {
        return match value {
            Value::Null => Ok(None),
            other => Err(invalid(path, field, format!("expected an object, found {other}"))),
        };
    };
    // transformers < 4.45 called it `type`, later versions `rope_type`.
    let rope_type = map.get("rope_type").or_else(|| map.get("type")).and_then(Value::as_str).unwrap_or("default");
    match rope_type {
        "default" => Ok(None),
        "llama3" => {
            let number = |key: &str| -> Result<f64> {
                map.get(key)
                    .and_then(Value::as_f64)
                    .ok_or_else(|| invalid(path, &format!("{field}.{key}"), "missing or not a number"))
            };
            let scaling = Llama3RopeScaling {
                factor: number("factor")?,
                low_freq_factor: number("low_freq_factor")?,
                high_freq_factor: number("high_freq_factor")?,
                original_max_position_embeddings: number("original_max_position_embeddings")? as usize,
            };
            if scaling.high_freq_factor <= scaling.low_freq_factor {
                return Err(invalid(path, &format!("{field}.high_freq_factor"), "must exceed low_freq_factor"));
            }
            Ok(Some(scaling))
        }
        other => {
            Err(unsupported(path, &format!("{field}.rope_type"), format!("\"{other}\" (supported: default, llama3)")))
        }
    }
}

impl HfConfig {
    /// Reads `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
        Self::from_slice(&text, path)
    }

    /// Parses `config.json`'s bytes; `path` only names the file in errors.
    pub fn from_slice(bytes: &[u8], path: &Path) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|source| ModelError::Json { path: path.to_path_buf(), source })
    }

    /// Applies `transformers`' defaults and checks every field that changes what the model
    /// computes. `path` only names the file in errors.
    pub fn resolve(&self, path: &Path) -> Result<LlamaConfig> {
        let model_type = self.model_type(path)?;
        self.check_implemented(path)?;
        let sliding_window = self.sliding_window(model_type, path)?;
        let (num_heads, num_kv_heads, head_dim) = self.heads(path)?;
        let (rope_theta, rope_scaling) = self.rope(path)?;
        let (rms_norm_eps, max_position_embeddings) = self.norm_and_context(path)?;
        let (qkv_bias, o_bias) = match model_type {
            ModelType::Llama | ModelType::Qwen3 | ModelType::Mistral => {
                let bias = self.attention_bias.unwrap_or(false);
                (bias, bias)
            }
            ModelType::Qwen2 => (true, false),
        };
        let config = LlamaConfig {
            model_type,
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_layers: self.num_hidden_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            max_position_embeddings,
            rms_norm_eps,
            rope_theta,
            rope_scaling,
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            qkv_bias,
            o_bias,
            mlp_bias: self.mlp_bias.unwrap_or(false),
            qk_norm: model_type == ModelType::Qwen3,
            sliding_window,
            bos_token_id: single_token_id(&self.bos_token_id, path, "bos_token_id")?,
            eos_token_ids: token_ids(&self.eos_token_id, path, "eos_token_id")?,
            pad_token_id: single_token_id(&self.pad_token_id, path, "pad_token_id")?,
        };
        config.check_sizes(path, &HF_SIZE_FIELDS)?;
        Ok(config)
    }

    fn model_type(&self, path: &Path) -> Result<ModelType> {
        match self.model_type.as_deref() {
            Some("llama") => Ok(ModelType::Llama),
            Some("qwen2") => Ok(ModelType::Qwen2),
            Some("qwen3") => Ok(ModelType::Qwen3),
            Some("mistral") => Ok(ModelType::Mistral),
            Some(other) => {
                Err(unsupported(path, "model_type", format!("\"{other}\" (supported: llama, mistral, qwen2, qwen3)")))
            }
            None => Err(invalid(path, "model_type", "missing")),
        }
    }

    /// Refuses the fields whose values would make a model this crate does not compute.
    fn check_implemented(&self, path: &Path) -> Result<()> {
        if let Some(act) = &self.hidden_act {
            if act != "silu" {
                return Err(unsupported(path, "hidden_act", format!("\"{act}\" (supported: silu)")));
            }
        }
        if let Some(tp) = self.pretraining_tp {
            if tp != 1 {
                return Err(unsupported(path, "pretraining_tp", tp));
            }
        }
        if self.use_sliding_window == Some(true) {
            return Err(unsupported(
                path,
                "use_sliding_window",
                "true (Qwen's per-layer windows; Mistral's window is supported)",
            ));
        }
        Ok(())
    }

    fn sliding_window(&self, model_type: ModelType, path: &Path) -> Result<Option<usize>> {
        let not_a_window = |found: &dyn std::fmt::Display| {
            invalid(path, "sliding_window", format!("expected a positive integer or null, found {found}"))
        };
        match (model_type, &self.sliding_window) {
            (ModelType::Mistral, Some(Value::Number(n))) => match n.as_u64() {
                Some(w) if w > 0 => Ok(Some(w as usize)),
                _ => Err(not_a_window(n)),
            },
            (ModelType::Mistral, Some(Value::Null) | None) => Ok(None),
            (ModelType::Mistral, Some(other)) => Err(not_a_window(other)),
            // Qwen's `sliding_window` applies only with `use_sliding_window`, refused above.
            _ => Ok(None),
        }
    }

    /// (query heads, key/value heads, head width), checked, with every size positive.
    fn heads(&self, path: &Path) -> Result<(usize, usize, usize)> {
        if let Some(factor) = self.partial_rotary_factor {
            if factor != 1.0 {
                return Err(unsupported(path, "partial_rotary_factor", factor));
            }
        }
        let num_heads = self.num_attention_heads;
        let num_kv_heads = self.num_key_value_heads.unwrap_or(num_heads);
        if num_heads == 0 || num_kv_heads == 0 || !num_heads.is_multiple_of(num_kv_heads) {
            return Err(invalid(
                path,
                "num_key_value_heads",
                format!("{num_kv_heads} does not divide num_attention_heads {num_heads}"),
            ));
        }
        let head_dim = match self.head_dim {
            Some(d) => d,
            None if self.hidden_size.is_multiple_of(num_heads) => self.hidden_size / num_heads,
            None => return Err(invalid(path, "head_dim", "missing, and hidden_size is not a multiple of the heads")),
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(invalid(path, "head_dim", format!("{head_dim} is not a positive even number")));
        }
        for (field, value) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("vocab_size", self.vocab_size),
        ] {
            if value == 0 {
                return Err(invalid(path, field, "must be positive"));
            }
        }
        Ok((num_heads, num_kv_heads, head_dim))
    }

    /// RMSNorm's ε (finite and positive: RMSNorm divides by `sqrt(mean(x²) + ε)`) and the
    /// context length (at least one position), with transformers' defaults.
    fn norm_and_context(&self, path: &Path) -> Result<(f64, usize)> {
        let eps = self.rms_norm_eps.unwrap_or(1e-6);
        if !(eps.is_finite() && eps > 0.0) {
            return Err(invalid(path, "rms_norm_eps", format!("{eps} is not a finite positive number")));
        }
        let context = self.max_position_embeddings.unwrap_or(2048);
        if context == 0 {
            return Err(invalid(path, "max_position_embeddings", "must be positive"));
        }
        Ok((eps, context))
    }

    /// RoPE's θ and scaling, from `rope_theta` / `rope_scaling` or transformers ≥ 5's
    /// `rope_parameters`.
    fn rope(&self, path: &Path) -> Result<(f64, Option<Llama3RopeScaling>)> {
        let mut rope_theta = self.rope_theta;
        let mut rope_scaling = match &self.rope_scaling {
            Some(v) => rope_from_json(v, path, "rope_scaling")?,
            None => None,
        };
        if let Some(params) = &self.rope_parameters {
            if let Some(theta) = params.get("rope_theta").and_then(Value::as_f64) {
                rope_theta = Some(theta);
            }
            if let Some(scaling) = rope_from_json(params, path, "rope_parameters")? {
                rope_scaling = Some(scaling);
            }
        }
        let default_theta = 10_000.0;
        Ok((rope_theta.unwrap_or(default_theta), rope_scaling))
    }
}

impl LlamaConfig {
    /// Reads and resolves a `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        HfConfig::from_file(path)?.resolve(path)
    }

    /// The `config.json` HF transformers reads this model from, weights stored in `dtype`.
    pub fn to_hf(&self, dtype: StorageDtype) -> HfConfig {
        let id = |id: u32| Value::from(id);
        let rope_scaling = self.rope_scaling.map(|s| {
            serde_json::json!({
                "rope_type": "llama3",
                "factor": s.factor,
                "low_freq_factor": s.low_freq_factor,
                "high_freq_factor": s.high_freq_factor,
                "original_max_position_embeddings": s.original_max_position_embeddings,
            })
        });
        HfConfig {
            architectures: Some(vec![self.model_type.hf_architecture().into()]),
            model_type: Some(self.model_type.hf_name().into()),
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_layers,
            num_attention_heads: self.num_heads,
            num_key_value_heads: Some(self.num_kv_heads),
            head_dim: Some(self.head_dim),
            vocab_size: self.vocab_size,
            max_position_embeddings: Some(self.max_position_embeddings),
            rms_norm_eps: Some(self.rms_norm_eps),
            rope_theta: Some(self.rope_theta),
            rope_scaling,
            rope_parameters: None,
            partial_rotary_factor: None,
            hidden_act: Some("silu".into()),
            tie_word_embeddings: Some(self.tie_word_embeddings),
            attention_bias: match self.model_type {
                ModelType::Llama | ModelType::Qwen3 | ModelType::Mistral => Some(self.qkv_bias),
                ModelType::Qwen2 => None,
            },
            mlp_bias: match self.model_type {
                ModelType::Llama => Some(self.mlp_bias),
                ModelType::Qwen2 | ModelType::Qwen3 | ModelType::Mistral => None,
            },
            pretraining_tp: None,
            use_sliding_window: match self.model_type {
                ModelType::Llama | ModelType::Mistral => None,
                ModelType::Qwen2 | ModelType::Qwen3 => Some(false),
            },
            sliding_window: match self.model_type {
                ModelType::Mistral => Some(self.sliding_window.map_or(Value::Null, Value::from)),
                _ => None,
            },
            bos_token_id: self.bos_token_id.map(id),
            eos_token_id: match self.eos_token_ids.as_slice() {
                [] => None,
                [one] => Some(id(*one)),
                many => Some(Value::Array(many.iter().map(|&e| id(e)).collect())),
            },
            pad_token_id: self.pad_token_id.map(id),
            torch_dtype: Some(dtype.torch_name().into()),
            extra: BTreeMap::new(),
        }
    }

    /// Number of parameters (a tied embedding counted once), computed from the shapes
    /// alone: nothing is allocated.
    pub fn num_params(&self) -> u64 {
        self.tensor_specs().iter().map(|s| s.numel() as u64).sum()
    }

    /// Bytes of the weights stored in `dtype`.
    pub fn num_bytes(&self, dtype: StorageDtype) -> u64 {
        self.num_params() * dtype.size_of() as u64
    }

    /// Number of query heads that share one key/value head.
    pub fn num_kv_groups(&self) -> usize {
        self.num_heads / self.num_kv_heads
    }
}

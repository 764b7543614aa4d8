//! Writing GGUF files for llama.cpp / Ollama (architecture `llama`): the metadata llama.cpp's
//! converter (`convert_hf_to_gguf.py`) writes, the tokenizer, and the weights in F32, F16 or
//! Q8_0, with the q and k projections permuted into llama.cpp's rotary layout (the inverse of
//! what [`crate::GgufFile::load_model`] undoes). Norms stay F32 and a matrix whose rows are
//! not a whole number of Q8_0 blocks falls back to F16, as llama.cpp's converter does.
//!
//! Written under a temporary name, synced and renamed into place ([`lomo_io::atomic`]);
//! tensors are read from the device one at a time.

use std::io::Write;
use std::path::Path;

use burn::tensor::backend::Backend;
use half::f16;

use crate::error::{ModelError, Result};
use crate::gguf::{gguf_name, GgufTokenizer, GgufValue};
use crate::llama::Llama;
use crate::ModelType;

const ALIGNMENT: u64 = 32;

/// The tensor type of an exported GGUF's matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufExportType {
    /// 32-bit floats (`general.file_type` 0).
    F32,
    /// IEEE half (`general.file_type` 1).
    F16,
    /// 8-bit blocks of 32 with an f16 scale (`general.file_type` 7).
    Q8_0,
}

impl GgufExportType {
    /// The `general.file_type` llama.cpp writes (`LLAMA_FTYPE_*`).
    fn file_type(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q8_0 => 7,
        }
    }
}

/// A tensor's ggml type id.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ggml {
    F32 = 0,
    F16 = 1,
    Q8_0 = 8,
}

impl Ggml {
    fn bytes(self, values: usize) -> usize {
        match self {
            Ggml::F32 => values * 4,
            Ggml::F16 => values * 2,
            Ggml::Q8_0 => values / 32 * 34,
        }
    }
}

/// ggml's `quantize_row_q8_0_ref`: per block of 32, `d = max|x| / 127`, `q = round(x / d)`
/// (halves away from zero), `d` stored as f16.
pub fn quantize_q8_0(row: &[f32], out: &mut Vec<u8>) {
    for block in row.chunks_exact(32) {
        let amax = block.iter().fold(0f32, |m, &x| m.max(x.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        out.extend(block.iter().map(|&x| ((x * id).round() as i8) as u8));
    }
}

/// GGUF row `g` of a permuted q/k projection holds HF row [`unpermuted`]`(g)`:
/// llama.cpp writes `w.reshape(heads, 2, head_dim / 2, in).swapaxes(1, 2)`.
fn unpermuted(g: usize, rows: usize, heads: usize) -> usize {
    let head_dim = rows / heads;
    let (head, within) = (g / head_dim, g % head_dim);
    let (i, half) = (within / 2, within % 2);
    head * head_dim + half * (head_dim / 2) + i
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn type_id(v: &GgufValue) -> u32 {
    match v {
        GgufValue::U8(_) => 0,
        GgufValue::I8(_) => 1,
        GgufValue::U16(_) => 2,
        GgufValue::I16(_) => 3,
        GgufValue::U32(_) => 4,
        GgufValue::I32(_) => 5,
        GgufValue::F32(_) => 6,
        GgufValue::Bool(_) => 7,
        GgufValue::String(_) => 8,
        GgufValue::Array(_) => 9,
        GgufValue::U64(_) => 10,
        GgufValue::I64(_) => 11,
        GgufValue::F64(_) => 12,
    }
}

fn put_value(out: &mut Vec<u8>, v: &GgufValue) {
    match v {
        GgufValue::U8(x) => out.push(*x),
        GgufValue::I8(x) => out.push(*x as u8),
        GgufValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::Bool(x) => out.push(u8::from(*x)),
        GgufValue::String(s) => put_string(out, s),
        GgufValue::Array(items) => {
            // An empty array is written as one of strings (never written: empty keys are left out).
            out.extend_from_slice(&items.first().map_or(8, type_id).to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, item);
            }
        }
        GgufValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}

/// The metadata llama.cpp's converter writes for a `llama` model, and the tokenizer's.
fn metadata(
    config: &crate::LlamaConfig,
    ty: GgufExportType,
    name: &str,
    t: &GgufTokenizer,
) -> Vec<(String, GgufValue)> {
    use GgufValue as V;
    let u32_of = |x: usize| V::U32(x as u32);
    let mut kv: Vec<(String, GgufValue)> = vec![
        ("general.architecture".into(), V::String("llama".into())),
        ("general.name".into(), V::String(name.into())),
        ("general.file_type".into(), V::U32(ty.file_type())),
        ("general.alignment".into(), V::U32(ALIGNMENT as u32)),
        ("llama.vocab_size".into(), u32_of(config.vocab_size)),
        ("llama.context_length".into(), u32_of(config.max_position_embeddings)),
        ("llama.embedding_length".into(), u32_of(config.hidden_size)),
        ("llama.block_count".into(), u32_of(config.num_layers)),
        ("llama.feed_forward_length".into(), u32_of(config.intermediate_size)),
        ("llama.attention.head_count".into(), u32_of(config.num_heads)),
        ("llama.attention.head_count_kv".into(), u32_of(config.num_kv_heads)),
        ("llama.attention.layer_norm_rms_epsilon".into(), V::F32(config.rms_norm_eps as f32)),
        ("llama.rope.freq_base".into(), V::F32(config.rope_theta as f32)),
        ("llama.rope.dimension_count".into(), u32_of(config.head_dim)),
    ];
    if config.head_dim * config.num_heads != config.hidden_size {
        kv.push(("llama.attention.key_length".into(), u32_of(config.head_dim)));
        kv.push(("llama.attention.value_length".into(), u32_of(config.head_dim)));
    }
    kv.push(("tokenizer.ggml.model".into(), V::String(t.model.clone())));
    if let Some(pre) = &t.pre {
        kv.push(("tokenizer.ggml.pre".into(), V::String(pre.clone())));
    }
    let strings = |v: &[String]| V::Array(v.iter().cloned().map(V::String).collect());
    kv.push(("tokenizer.ggml.tokens".into(), strings(&t.tokens)));
    if !t.token_types.is_empty() {
        kv.push(("tokenizer.ggml.token_type".into(), V::Array(t.token_types.iter().map(|&x| V::I32(x)).collect())));
    }
    if !t.scores.is_empty() {
        kv.push(("tokenizer.ggml.scores".into(), V::Array(t.scores.iter().map(|&x| V::F32(x)).collect())));
    }
    if !t.merges.is_empty() {
        kv.push(("tokenizer.ggml.merges".into(), strings(&t.merges)));
    }
    let ids = [
        ("bos_token_id", t.bos_token_id),
        ("eos_token_id", t.eos_token_id),
        ("unknown_token_id", t.unknown_token_id),
        ("padding_token_id", t.padding_token_id),
    ];
    for (key, id) in ids {
        if let Some(id) = id {
            kv.push((format!("tokenizer.ggml.{key}"), V::U32(id)));
        }
    }
    for (key, on) in [("add_bos_token", t.add_bos_token), ("add_eos_token", t.add_eos_token)] {
        if let Some(on) = on {
            kv.push((format!("tokenizer.ggml.{key}"), V::Bool(on)));
        }
    }
    if let Some(template) = &t.chat_template {
        kv.push(("tokenizer.chat_template".into(), V::String(template.clone())));
    }
    kv
}

impl<B: Backend> Llama<B> {
    /// Writes the model to `path` as a GGUF file llama.cpp runs, with `tokenizer`'s metadata;
    /// `name` becomes `general.name`.
    pub fn save_gguf(
        &self,
        path: impl AsRef<Path>,
        ty: GgufExportType,
        tokenizer: &GgufTokenizer,
        name: &str,
    ) -> Result<()> {
        let path = path.as_ref();
        let config = self.config();
        let unsupported = |field: &str, value: String| ModelError::UnsupportedConfig {
            path: path.to_path_buf(),
            field: field.into(),
            value,
        };
        if config.model_type != ModelType::Llama {
            return Err(unsupported(
                "model_type",
                format!("{:?} (GGUF export writes the llama architecture only)", config.model_type),
            ));
        }
        if config.rope_scaling.is_some() {
            return Err(unsupported(
                "rope_scaling",
                "llama3 (llama.cpp's rope_freqs tensor is not written yet)".into(),
            ));
        }
        if tokenizer.tokens.len() > config.vocab_size {
            return Err(ModelError::InvalidConfig {
                path: path.to_path_buf(),
                field: "tokenizer.ggml.tokens".into(),
                reason: format!(
                    "{} tokens, more than the model's vocabulary of {}",
                    tokenizer.tokens.len(),
                    config.vocab_size
                ),
            });
        }
        let tensors = self.hf_tensors();
        // Tensor infos first: names, ggml dims (fastest first), types and aligned offsets.
        let mut plan = Vec::new();
        let mut offset = 0u64;
        for (spec, _) in &tensors {
            let name = gguf_name(&spec.name).ok_or_else(|| {
                unsupported(&spec.name, "a tensor llama.cpp's llama architecture has no name for".into())
            })?;
            let cols = *spec.shape.last().expect("a tensor has a shape");
            let ggml = match (spec.shape.len(), ty) {
                (1, _) | (_, GgufExportType::F32) => Ggml::F32,
                (_, GgufExportType::Q8_0) if cols % 32 == 0 => Ggml::Q8_0,
                _ => Ggml::F16,
            };
            let heads = if spec.name.contains("self_attn.q_proj.") {
                Some(config.num_heads)
            } else if spec.name.contains("self_attn.k_proj.") {
                Some(config.num_kv_heads)
            } else {
                None
            };
            let bytes = ggml.bytes(spec.numel()) as u64;
            plan.push((name, ggml, heads, offset));
            offset = (offset + bytes).next_multiple_of(ALIGNMENT);
        }
        let kv = metadata(config, ty, name, tokenizer);
        let mut header = Vec::new();
        header.extend_from_slice(b"GGUF");
        header.extend_from_slice(&3u32.to_le_bytes());
        header.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        header.extend_from_slice(&(kv.len() as u64).to_le_bytes());
        for (key, value) in &kv {
            put_string(&mut header, key);
            header.extend_from_slice(&type_id(value).to_le_bytes());
            put_value(&mut header, value);
        }
        for ((spec, _), (name, ggml, _, offset)) in tensors.iter().zip(&plan) {
            put_string(&mut header, name);
            header.extend_from_slice(&(spec.shape.len() as u32).to_le_bytes());
            for &d in spec.shape.iter().rev() {
                header.extend_from_slice(&(d as u64).to_le_bytes());
            }
            header.extend_from_slice(&(*ggml as u32).to_le_bytes());
            header.extend_from_slice(&offset.to_le_bytes());
        }
        header.resize((header.len() as u64).next_multiple_of(ALIGNMENT) as usize, 0);

        let tmp = lomo_io::atomic::tmp_path(path)?;
        let io = |e| ModelError::io(&tmp, e);
        lomo_io::atomic::write_with(path, |out| -> Result<()> {
            out.write_all(&header).map_err(io)?;
            let mut at = 0u64;
            let mut buf = Vec::new();
            for ((spec, tensor), (_, ggml, heads, offset)) in tensors.iter().zip(&plan) {
                out.write_all(&vec![0u8; (offset - at) as usize]).map_err(io)?;
                let values: Vec<f32> = tensor
                    .clone()
                    .into_data()
                    .convert::<f32>()
                    .to_vec()
                    .map_err(|e| ModelError::TensorRead { tensor: spec.name.clone(), reason: format!("{e:?}") })?;
                // A vector (a norm, a bias) is written as rows of one value, so that a q or k
                // bias is permuted like its projection's rows.
                let cols = if spec.shape.len() == 1 { 1 } else { *spec.shape.last().expect("a tensor has a shape") };
                let rows = values.len() / cols;
                buf.clear();
                for g in 0..rows {
                    let hf = match heads {
                        Some(h) => unpermuted(g, rows, *h),
                        None => g,
                    };
                    let row = &values[hf * cols..(hf + 1) * cols];
                    match ggml {
                        Ggml::F32 => row.iter().for_each(|x| buf.extend_from_slice(&x.to_le_bytes())),
                        Ggml::F16 => row.iter().for_each(|&x| buf.extend_from_slice(&f16::from_f32(x).to_le_bytes())),
                        Ggml::Q8_0 => quantize_q8_0(row, &mut buf),
                    }
                }
                out.write_all(&buf).map_err(io)?;
                at = offset + buf.len() as u64;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_rounds_to_the_block_scale() {
        let row: Vec<f32> = (0..32).map(|i| i as f32 - 16.0).collect();
        let mut out = Vec::new();
        quantize_q8_0(&row, &mut out);
        assert_eq!(out.len(), 34);
        let d = f16::from_le_bytes([out[0], out[1]]).to_f32();
        assert!((d - 16.0 / 127.0).abs() < 1e-4);
        assert_eq!(out[2] as i8, -127);
        assert_eq!(out[2 + 16] as i8, 0);
        assert_eq!(out[2 + 31] as i8, (15.0f32 / d).round() as i8);
    }

    #[test]
    fn permutation_is_llama_cpps() {
        // heads 2, head_dim 4: GGUF rows per head are HF rows 0, 2, 1, 3.
        let order: Vec<usize> = (0..8).map(|g| unpermuted(g, 8, 2)).collect();
        assert_eq!(order, [0, 2, 1, 3, 4, 6, 5, 7]);
    }
}

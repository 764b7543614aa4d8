//! Writing GGUF files for llama.cpp / Ollama (architecture `llama`): the metadata llama.cpp's
//! converter (`convert_hf_to_gguf.py`) writes, the tokenizer, and the weights in F32, F16 or
//! Q8_0, with the q and k projections permuted into llama.cpp's rotary layout (the inverse of
//! what [`crate::load()`] undoes for a GGUF source). Norms stay F32 and a matrix whose rows are
//! not a whole number of Q8_0 blocks falls back to F16, as llama.cpp's converter does.
//!
//! Written under a temporary name, synced and renamed into place ([`lomo_io::atomic`]);
//! tensors are read from the device one at a time.

use std::io::Write;
use std::path::Path;

use burn::tensor::backend::Backend;
use half::f16;
use lomo_io::gguf::{GgufHeader, GgufTensorInfo, GgufValue};
use lomo_io::gguf_tokenizer::GgufTokenizerSpec;

use crate::config::{LlamaConfig, ModelType};
use crate::error::{ModelError, Result};
use crate::llama::Llama;
use crate::tensors::TensorSpec;

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

/// The metadata llama.cpp's converter writes for a `llama` model, and the tokenizer's.
fn metadata(config: &LlamaConfig, ty: GgufExportType, name: &str, t: &GgufTokenizerSpec) -> Vec<(String, GgufValue)> {
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
    kv.extend(t.to_metadata());
    kv
}

impl<B: Backend> Llama<B> {
    /// Writes the model to `path` as a GGUF file llama.cpp runs, with `tokenizer`'s metadata;
    /// `name` becomes `general.name`.
    pub fn save_gguf(
        &self,
        path: impl AsRef<Path>,
        ty: GgufExportType,
        tokenizer: &GgufTokenizerSpec,
        name: &str,
    ) -> Result<()> {
        let path = path.as_ref();
        let config = self.config();
        check_exportable(config, tokenizer, path)?;
        let tensors = self.hf_tensors();
        // Tensor infos first: names, ggml dims (fastest first), types and aligned offsets.
        let mut infos = Vec::with_capacity(tensors.len());
        let mut plan = Vec::with_capacity(tensors.len());
        let mut offset = 0u64;
        for (spec, _) in &tensors {
            let cols = *spec.shape.last().expect("a tensor has a shape");
            let ggml = match (spec.shape.len(), ty) {
                (1, _) | (_, GgufExportType::F32) => Ggml::F32,
                (_, GgufExportType::Q8_0) if cols % 32 == 0 => Ggml::Q8_0,
                _ => Ggml::F16,
            };
            let dims = spec.shape.iter().rev().map(|&d| d as u64).collect();
            infos.push(GgufTensorInfo { name: spec.gguf_name(), dims, ggml_type: ggml as u32, offset });
            plan.push((ggml, spec.slot.gguf_permuted_heads(config), offset));
            offset = (offset + ggml.bytes(spec.numel()) as u64).next_multiple_of(ALIGNMENT);
        }
        let header = GgufHeader::write(&metadata(config, ty, name, tokenizer), &infos, ALIGNMENT);

        let tmp = lomo_io::atomic::tmp_path(path)?;
        let io = |e| ModelError::io(&tmp, e);
        lomo_io::atomic::write_with(path, |out| -> Result<()> {
            out.write_all(&header).map_err(io)?;
            let mut at = 0u64;
            let mut buf = Vec::new();
            for ((spec, tensor), (ggml, heads, offset)) in tensors.iter().zip(&plan) {
                out.write_all(&vec![0u8; (offset - at) as usize]).map_err(io)?;
                let values: Vec<f32> = tensor
                    .clone()
                    .into_data()
                    .convert::<f32>()
                    .to_vec()
                    .map_err(|e| ModelError::TensorRead { tensor: spec.name.clone(), reason: format!("{e:?}") })?;
                encode_rows(spec, &values, *ggml, *heads, &mut buf);
                out.write_all(&buf).map_err(io)?;
                at = offset + buf.len() as u64;
            }
            Ok(())
        })
    }
}

/// Refuses what llama.cpp's `llama` architecture cannot hold.
fn check_exportable(config: &LlamaConfig, tokenizer: &GgufTokenizerSpec, path: &Path) -> Result<()> {
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
        return Err(unsupported("rope_scaling", "llama3 (llama.cpp's rope_freqs tensor is not written yet)".into()));
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
    Ok(())
}

/// `values` (the tensor of `spec` in HF's layout) as GGUF stores it, into `buf`: rows in
/// llama.cpp's order for a q or k projection (`heads`), each row encoded as `ggml`. A vector (a
/// norm, a bias) is written as rows of one value, so that a q or k bias is permuted like its
/// projection's rows.
fn encode_rows(spec: &TensorSpec, values: &[f32], ggml: Ggml, heads: Option<usize>, buf: &mut Vec<u8>) {
    let cols = if spec.shape.len() == 1 { 1 } else { *spec.shape.last().expect("a tensor has a shape") };
    let rows = values.len() / cols;
    buf.clear();
    for g in 0..rows {
        let hf = match heads {
            Some(h) => unpermuted(g, rows, h),
            None => g,
        };
        let row = &values[hf * cols..(hf + 1) * cols];
        match ggml {
            Ggml::F32 => row.iter().for_each(|x| buf.extend_from_slice(&x.to_le_bytes())),
            Ggml::F16 => row.iter().for_each(|&x| buf.extend_from_slice(&f16::from_f32(x).to_le_bytes())),
            Ggml::Q8_0 => quantize_q8_0(row, buf),
        }
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

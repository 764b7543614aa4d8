//! Reading GGUF files (llama.cpp's checkpoint format): header, metadata key/values, tensor
//! infos, aligned tensor data. Spec: <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>.
//!
//! F32, F16, BF16, Q8_0, Q4_0 and Q4_1 tensors are dequantised, block row by block row, into
//! the storage dtype. llama.cpp's converter (`convert_hf_to_gguf.py`, `LlamaModel.permute`)
//! reorders the rows of the q and k projections for its rotary layout; loading undoes that,
//! so the model is HF's again (and saves as an HF checkpoint).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use half::f16;
use lomo_io::gguf::{GgufError, GgufHeader, GgufTensorInfo, GgufValue, Metadata};
use lomo_io::gguf_tokenizer::GgufTokenizerSpec;
use memmap2::Mmap;

use crate::config::{LlamaConfig, ModelType, SizeFields};
use crate::dtype::{decode_tensor, rows_cols, FloatEncoding, PlainFloats, RowSource, StorageDtype};
use crate::error::{ModelError, Result};
use crate::safetensors::{map_file, release_pages};
use crate::tensors::{gguf_to_hf, hf_to_gguf, BlockTensor, Slot, TensorSpec};

/// The `llama.*` keys the sizes of a configuration come from.
const GGUF_SIZE_FIELDS: SizeFields = SizeFields {
    vocab_size: "llama.vocab_size",
    hidden_size: "llama.embedding_length",
    intermediate_size: "llama.feed_forward_length",
    num_layers: "llama.block_count",
    num_heads: "llama.attention.head_count",
    num_kv_heads: "llama.attention.head_count_kv",
    head_dim: "llama.attention.key_length",
    max_position_embeddings: "llama.context_length",
};

/// ggml tensor types this crate can dequantise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q8_0,
}

impl GgmlType {
    fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            30 => GgmlType::BF16,
            _ => return None,
        })
    }

    /// (values per block, bytes per block).
    fn block(self) -> (usize, usize) {
        match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::BF16 => (1, 2),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q8_0 => (32, 34),
        }
    }
}

/// The name ggml gives a type id, for error messages.
fn ggml_type_name(id: u32) -> String {
    let name = match id {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        30 => "BF16",
        _ => "unknown",
    };
    format!("{name} (ggml type {id})")
}

/// A parsed GGUF file: metadata and tensor infos, with the data memory-mapped.
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    map: Mmap,
    /// GGUF version (2 or 3).
    pub version: u32,
    /// Metadata key/values.
    pub metadata: BTreeMap<String, GgufValue>,
    /// Tensor infos, in file order.
    pub tensors: Vec<GgufTensorInfo>,
    data_start: u64,
}

/// Dequantises GGUF rows, optionally reading them in a permuted order.
struct GgufRows<'a> {
    bytes: &'a [u8],
    ty: GgmlType,
    rows: usize,
    cols: usize,
    /// `Some(heads)`: undo llama.cpp's q/k permutation with this many heads.
    unpermute_heads: Option<usize>,
}

impl GgufRows<'_> {
    /// The GGUF row holding HF row `row`.
    ///
    /// llama.cpp: `w.reshape(n_head, 2, head_dim / 2, in).swapaxes(1, 2)`, so HF row
    /// `(head, half, i)` sits at GGUF row `(head, i, half)`.
    fn source_row(&self, row: usize) -> usize {
        match self.unpermute_heads {
            None => row,
            Some(heads) => {
                let head_dim = self.rows / heads;
                let half_dim = head_dim / 2;
                let (head, within) = (row / head_dim, row % head_dim);
                let (half, i) = (within / half_dim, within % half_dim);
                head * head_dim + i * 2 + half
            }
        }
    }
}

impl RowSource for GgufRows<'_> {
    fn rows(&self) -> usize {
        self.rows
    }

    fn cols(&self) -> usize {
        self.cols
    }

    fn decode_row(&self, row: usize, out: &mut [f32]) {
        let (block_values, block_bytes) = self.ty.block();
        let row_bytes = self.cols / block_values * block_bytes;
        let start = self.source_row(row) * row_bytes;
        let bytes = &self.bytes[start..start + row_bytes];
        let half = |b: &[u8]| f16::from_le_bytes([b[0], b[1]]).to_f32();
        match self.ty {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => {
                let encoding = match self.ty {
                    GgmlType::F32 => FloatEncoding::F32,
                    GgmlType::F16 => FloatEncoding::F16,
                    _ => FloatEncoding::BF16,
                };
                PlainFloats { bytes, encoding, rows: 1, cols: self.cols }.decode_row(0, out);
            }
            // ggml-quants.c, dequantize_row_q8_0: x = d * q.
            GgmlType::Q8_0 => {
                for (block, out) in bytes.chunks_exact(34).zip(out.chunks_exact_mut(32)) {
                    let d = half(&block[0..2]);
                    for (o, &q) in out.iter_mut().zip(&block[2..34]) {
                        *o = d * (q as i8) as f32;
                    }
                }
            }
            // dequantize_row_q4_0: low nibbles are values 0..16, high nibbles 16..32; x = d * (q - 8).
            GgmlType::Q4_0 => {
                for (block, out) in bytes.chunks_exact(18).zip(out.chunks_exact_mut(32)) {
                    let d = half(&block[0..2]);
                    for (j, &q) in block[2..18].iter().enumerate() {
                        out[j] = d * ((q & 0x0F) as i32 - 8) as f32;
                        out[j + 16] = d * ((q >> 4) as i32 - 8) as f32;
                    }
                }
            }
            // dequantize_row_q4_1: x = d * q + m.
            GgmlType::Q4_1 => {
                for (block, out) in bytes.chunks_exact(20).zip(out.chunks_exact_mut(32)) {
                    let d = half(&block[0..2]);
                    let m = half(&block[2..4]);
                    for (j, &q) in block[4..20].iter().enumerate() {
                        out[j] = d * (q & 0x0F) as f32 + m;
                        out[j + 16] = d * (q >> 4) as f32 + m;
                    }
                }
            }
        }
    }
}

impl GgufFile {
    /// Maps and parses `path`'s header, metadata and tensor infos; tensor data stays on disk
    /// until a model is built from it.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let map = map_file(&path)?;
        let GgufHeader { version, metadata, tensors, data_start } =
            GgufHeader::parse(&map, &path).map_err(|e| gguf_error(&path, e))?;
        let file = Self { path: path.clone(), version, metadata, tensors, data_start, map };
        for info in &file.tensors {
            file.check_bounds(info)?;
        }
        Ok(file)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn check_bounds(&self, info: &GgufTensorInfo) -> Result<()> {
        let Some(ty) = GgmlType::from_id(info.ggml_type) else {
            return Ok(()); // Reported when the tensor is needed, with its type's name.
        };
        let numel = info.dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
        let (block_values, block_bytes) = ty.block();
        let fail = |reason: String| ModelError::InvalidGguf {
            path: self.path.clone(),
            offset: self.data_start.saturating_add(info.offset),
            reason,
        };
        let numel = numel.ok_or_else(|| fail(format!("tensor `{}`: dimensions overflow", info.name.escape_debug())))?;
        if info.dims.first().copied().unwrap_or(1) % block_values as u64 != 0 {
            return Err(fail(format!(
                "tensor `{}`: row length not a multiple of the block size {block_values}",
                info.name.escape_debug()
            )));
        }
        let bytes = (numel / block_values as u64).checked_mul(block_bytes as u64);
        let end = bytes.and_then(|bytes| self.data_start.checked_add(info.offset)?.checked_add(bytes));
        let bytes = bytes.map_or_else(|| "more than 2^64".into(), |b| b.to_string());
        if end.is_none_or(|end| end > self.map.len() as u64) {
            return Err(fail(format!(
                "tensor `{}` ({bytes} bytes) extends past the end of the file (truncated?)",
                info.name.escape_debug()
            )));
        }
        Ok(())
    }

    fn meta(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    fn invalid(&self, field: &str, reason: impl Into<String>) -> ModelError {
        ModelError::InvalidConfig { path: self.path.clone(), field: field.into(), reason: reason.into() }
    }

    fn meta_usize(&self, key: &str) -> Result<Option<usize>> {
        self.metadata.usize(key).map_err(|e| gguf_error(&self.path, e))
    }

    fn require_usize(&self, key: &str) -> Result<usize> {
        self.meta_usize(key)?.ok_or_else(|| self.invalid(key, "missing"))
    }

    fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The model configuration from the `llama.*` metadata and the tensor list.
    pub fn config(&self) -> Result<LlamaConfig> {
        let arch = self.meta("general.architecture").and_then(GgufValue::as_str).unwrap_or("");
        if arch != "llama" {
            return Err(ModelError::UnsupportedConfig {
                path: self.path.clone(),
                field: "general.architecture".into(),
                value: format!("{arch:?} (supported: llama)"),
            });
        }
        if self.tensor_info("rope_freqs.weight").is_some() {
            return Err(ModelError::UnsupportedConfig {
                path: self.path.clone(),
                field: "rope_freqs.weight".into(),
                value: "per-frequency RoPE factors (LLaMA 3.1 scaling baked into GGUF)".into(),
            });
        }
        if let Some(kind) = self.meta("llama.rope.scaling.type").and_then(GgufValue::as_str) {
            if kind != "none" {
                return Err(ModelError::UnsupportedConfig {
                    path: self.path.clone(),
                    field: "llama.rope.scaling.type".into(),
                    value: format!("{kind:?}"),
                });
            }
        }
        let hidden = self.require_usize("llama.embedding_length")?;
        let heads = self.require_usize("llama.attention.head_count")?;
        let kv_heads = self.meta_usize("llama.attention.head_count_kv")?.unwrap_or(heads);
        if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
            return Err(
                self.invalid("llama.attention.head_count_kv", format!("{kv_heads} does not divide {heads} heads"))
            );
        }
        let head_dim = self.meta_usize("llama.attention.key_length")?.unwrap_or(hidden / heads.max(1));
        if let Some(rot) = self.meta_usize("llama.rope.dimension_count")? {
            if rot != head_dim {
                return Err(ModelError::UnsupportedConfig {
                    path: self.path.clone(),
                    field: "llama.rope.dimension_count".into(),
                    value: format!("{rot} (partial rotary; head_dim is {head_dim})"),
                });
            }
        }
        let embed_name = Slot::Embedding.gguf_name();
        let embed = self
            .tensor_info(&embed_name)
            .ok_or_else(|| ModelError::MissingTensor { path: self.path.clone(), tensor: embed_name.clone() })?;
        let vocab = match self.meta_usize("llama.vocab_size")? {
            Some(v) => v,
            None => embed.shape().first().copied().unwrap_or(0),
        };
        let token_id = |key: &str| self.meta_usize(key).map(|v| v.map(|v| v as u32));
        let has = |slot: Slot| self.tensor_info(&slot.gguf_name()).is_some();
        let first_bias = |tensor| Slot::Block { layer: 0, tensor, bias: true };
        let eps_key = "llama.attention.layer_norm_rms_epsilon";
        let rms_norm_eps =
            self.meta(eps_key).and_then(GgufValue::as_f64).ok_or_else(|| self.invalid(eps_key, "missing"))?;
        if !(rms_norm_eps.is_finite() && rms_norm_eps > 0.0) {
            return Err(self.invalid(eps_key, format!("{rms_norm_eps} is not a finite positive number")));
        }
        let max_position_embeddings = self.meta_usize("llama.context_length")?.unwrap_or(2048);
        if max_position_embeddings == 0 {
            return Err(self.invalid("llama.context_length", "must be positive"));
        }
        let config = LlamaConfig {
            model_type: ModelType::Llama,
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: self.require_usize("llama.feed_forward_length")?,
            num_layers: self.require_usize("llama.block_count")?,
            num_heads: heads,
            num_kv_heads: kv_heads,
            head_dim,
            max_position_embeddings,
            rms_norm_eps,
            rope_theta: self.meta("llama.rope.freq_base").and_then(GgufValue::as_f64).unwrap_or(10_000.0),
            rope_scaling: None,
            tie_word_embeddings: !has(Slot::LmHead),
            qkv_bias: has(first_bias(BlockTensor::QProj)),
            o_bias: has(first_bias(BlockTensor::OProj)),
            mlp_bias: has(first_bias(BlockTensor::GateProj)),
            qk_norm: false,
            sliding_window: None,
            bos_token_id: token_id("tokenizer.ggml.bos_token_id")?,
            eos_token_ids: token_id("tokenizer.ggml.eos_token_id")?.into_iter().collect(),
            pad_token_id: token_id("tokenizer.ggml.padding_token_id")?,
        };
        config.check_sizes(&self.path, &GGUF_SIZE_FIELDS)?;
        Ok(config)
    }

    /// The tokenizer in the metadata (`tokenizer.*` keys).
    pub fn tokenizer(&self) -> Result<GgufTokenizerSpec> {
        GgufTokenizerSpec::from_metadata(&self.metadata).map_err(|e| gguf_error(&self.path, e))
    }

    /// Hands `build` a reader of this file's tensors (burn's layout, `dtype`); after `build`, a
    /// tensor it did not read is an error.
    pub(crate) fn with_tensors<R>(
        &self,
        config: &LlamaConfig,
        dtype: StorageDtype,
        build: impl FnOnce(&mut dyn FnMut(&TensorSpec) -> Result<burn::tensor::TensorData>) -> Result<R>,
    ) -> Result<R> {
        let by_hf_name: HashMap<String, &GgufTensorInfo> =
            self.tensors.iter().filter_map(|t| gguf_to_hf(&t.name).map(|hf| (hf, t))).collect();
        if let Some(t) = self.tensors.iter().find(|t| gguf_to_hf(&t.name).is_none()) {
            return Err(ModelError::UnexpectedTensor {
                path: self.path.clone(),
                tensor: t.name.clone(),
                model_type: "llama".into(),
            });
        }
        let mut used = HashSet::new();
        let built = build(&mut |spec: &TensorSpec| {
            let info = *by_hf_name.get(&spec.name).ok_or_else(|| ModelError::MissingTensor {
                path: self.path.clone(),
                tensor: gguf_name_hint(&spec.name),
            })?;
            if info.shape() != spec.shape {
                return Err(ModelError::ShapeMismatch {
                    path: self.path.clone(),
                    tensor: info.name.clone(),
                    expected: spec.shape.clone(),
                    found: info.shape(),
                });
            }
            let ty = GgmlType::from_id(info.ggml_type).ok_or_else(|| ModelError::UnsupportedTensorType {
                path: self.path.clone(),
                tensor: info.name.clone(),
                dtype: ggml_type_name(info.ggml_type),
            })?;
            used.insert(spec.name.clone());
            let (rows, cols) = rows_cols(&spec.shape);
            let (block_values, block_bytes) = ty.block();
            let start = (self.data_start + info.offset) as usize;
            let len = rows * cols / block_values * block_bytes;
            let unpermute_heads = spec.slot.gguf_permuted_heads(config);
            // A bias is one row of `out` values; its permutation acts on values, not rows, so it
            // is decoded as `out` rows of one value each.
            let (rows, cols) =
                if spec.shape.len() == 1 && unpermute_heads.is_some() { (cols, 1) } else { (rows, cols) };
            if cols % block_values != 0 {
                return Err(ModelError::UnsupportedTensorType {
                    path: self.path.clone(),
                    tensor: info.name.clone(),
                    dtype: format!("{} bias (a quantised bias cannot be un-permuted)", ggml_type_name(info.ggml_type)),
                });
            }
            let source = GgufRows { bytes: &self.map[start..start + len], ty, rows, cols, unpermute_heads };
            let data = decode_tensor(&source, spec.shape.clone(), spec.transposed, dtype);
            release_pages(&self.map, &self.map[start..start + len]);
            Ok(data)
        })?;
        if let Some((name, info)) = by_hf_name.iter().find(|(name, _)| !used.contains(*name)) {
            return Err(ModelError::UnexpectedTensor {
                path: self.path.clone(),
                tensor: format!("{} ({name})", info.name),
                model_type: "llama".into(),
            });
        }
        Ok(built)
    }
}

/// The models crate's error for what the container codec found wrong in the file at `path`.
fn gguf_error(path: &Path, e: GgufError) -> ModelError {
    match e {
        GgufError::Invalid { offset, reason, .. } => {
            ModelError::InvalidGguf { path: path.to_path_buf(), offset, reason }
        }
        GgufError::Key { key, reason } => ModelError::InvalidConfig { path: path.to_path_buf(), field: key, reason },
    }
}

/// The llama.cpp name of an HF tensor name, for "missing tensor" messages.
fn gguf_name_hint(hf: &str) -> String {
    format!("{hf} (GGUF name {})", hf_to_gguf(hf).unwrap_or_else(|| "?".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // convert_hf_to_gguf.py: w.reshape(n_head, 2, d // n_head // 2, *rest).swapaxes(1, 2).reshape(w.shape)
        let (heads, head_dim) = (3, 8);
        let rows = heads * head_dim;
        let hf: Vec<usize> = (0..rows).collect();
        let mut gguf = vec![0; rows];
        for h in 0..heads {
            for half in 0..2 {
                for i in 0..head_dim / 2 {
                    // Row (h, half, i) of the HF tensor goes to (h, i, half) after swapaxes(1, 2).
                    gguf[h * head_dim + i * 2 + half] = hf[h * head_dim + half * head_dim / 2 + i];
                }
            }
        }
        let bytes: Vec<u8> = gguf.iter().flat_map(|&r| (r as f32).to_le_bytes()).collect();
        let source = GgufRows { bytes: &bytes, ty: GgmlType::F32, rows, cols: 1, unpermute_heads: Some(heads) };
        let mut out = [0f32];
        for row in 0..rows {
            source.decode_row(row, &mut out);
            assert_eq!(out[0], row as f32);
        }
    }

    fn decode(ty: GgmlType, block: &[u8]) -> Vec<f32> {
        let mut out = vec![0.0; 32];
        GgufRows { bytes: block, ty, rows: 1, cols: 32, unpermute_heads: None }.decode_row(0, &mut out);
        out
    }

    fn half_bytes(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn q8_0_is_scale_times_signed_byte() {
        let qs: Vec<i8> = (0..32).map(|j| (j as i8 - 16) * 8).collect();
        let mut block = half_bytes(0.5).to_vec();
        block.extend(qs.iter().map(|&q| q as u8));
        let expected: Vec<f32> = qs.iter().map(|&q| 0.5 * q as f32).collect();
        assert_eq!(decode(GgmlType::Q8_0, &block), expected);
    }

    #[test]
    fn q4_0_low_nibbles_first_offset_by_eight() {
        let mut block = half_bytes(2.0).to_vec();
        block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let out = decode(GgmlType::Q4_0, &block);
        for j in 0..16 {
            assert_eq!(out[j], 2.0 * (j as f32 - 8.0));
            assert_eq!(out[j + 16], 2.0 * ((15 - j) as f32 - 8.0));
        }
    }

    #[test]
    fn q4_1_is_scale_times_nibble_plus_min() {
        let mut block = half_bytes(0.25).to_vec();
        block.extend(half_bytes(-1.0));
        block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let out = decode(GgmlType::Q4_1, &block);
        for j in 0..16 {
            assert_eq!(out[j], 0.25 * j as f32 - 1.0);
            assert_eq!(out[j + 16], 0.25 * (15 - j) as f32 - 1.0);
        }
    }
}

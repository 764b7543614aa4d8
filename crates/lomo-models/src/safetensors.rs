//! Loading HF safetensors checkpoints: one `model.safetensors`, or shards listed by
//! `model.safetensors.index.json`.
//!
//! Files are memory-mapped and each tensor is decoded straight from the mapping into the
//! model's own buffer (transposed for Linear weights, converted to the storage dtype), so
//! the process never holds more than the weights plus one block of rows: the mapping is
//! file-backed page cache, not heap.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use burn::tensor::TensorData;
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

use crate::config::LlamaConfig;
use crate::dtype::{decode_tensor, rows_cols, FloatEncoding, PlainFloats, StorageDtype};
use crate::error::{ModelError, Result};
use crate::tensors::TensorSpec;

/// File name of a single-file checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";
/// File name of a sharded checkpoint's index.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

#[derive(Deserialize)]
struct Index {
    weight_map: BTreeMap<String, String>,
}

/// Maps a file read-only.
pub(crate) fn map_file(path: &Path) -> Result<Mmap> {
    let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
    // SAFETY: the mapping is read-only and private. Like every memory-mapped reader
    // (safetensors, candle, llama.cpp) we rely on the checkpoint not being truncated by
    // another process while it loads.
    unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))
}

/// Drops the pages of `bytes` (a tensor already decoded, lying inside `map`) from this process's
/// resident set: the mapping keeps the file's pages resident once read, so without this a
/// loaded checkpoint counts twice in the peak RSS (the file and the decoded weights; 22.3 GiB
/// for a 12.6 GiB LLaMA-7B in bf16). The advice is only a hint, so its failure is ignored.
pub(crate) fn release_pages(map: &Mmap, bytes: &[u8]) {
    #[cfg(unix)]
    {
        let offset = (bytes.as_ptr() as usize).wrapping_sub(map.as_ptr() as usize);
        if offset.checked_add(bytes.len()).is_some_and(|end| end <= map.len()) && !bytes.is_empty() {
            // SAFETY: the mapping is private and read-only, so MADV_DONTNEED only drops resident
            // pages: a later read faults the same file bytes back in, and no slice into the
            // mapping ever sees other contents.
            let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, bytes.len()) };
        }
    }
    #[cfg(not(unix))]
    let _ = (map, bytes);
}

/// The weight files of the checkpoint in `dir`, and the file that names them (the index,
/// or the single file) for error messages.
fn weight_files(dir: &Path) -> Result<(Vec<PathBuf>, PathBuf)> {
    let index_path = dir.join(INDEX_FILE);
    if index_path.exists() {
        let text = std::fs::read_to_string(&index_path).map_err(|e| ModelError::io(&index_path, e))?;
        let index: Index =
            serde_json::from_str(&text).map_err(|source| ModelError::Json { path: index_path.clone(), source })?;
        let files: Vec<PathBuf> =
            index.weight_map.values().collect::<HashSet<_>>().into_iter().map(|f| dir.join(f)).collect();
        Ok((files, index_path))
    } else {
        let single = dir.join(SINGLE_FILE);
        if !single.exists() {
            return Err(ModelError::io(
                &single,
                std::io::Error::new(std::io::ErrorKind::NotFound, format!("neither {SINGLE_FILE} nor {INDEX_FILE}")),
            ));
        }
        Ok((vec![single.clone()], single))
    }
}

fn encoding(dtype: Dtype) -> Option<FloatEncoding> {
    match dtype {
        Dtype::F64 => Some(FloatEncoding::F64),
        Dtype::F32 => Some(FloatEncoding::F32),
        Dtype::F16 => Some(FloatEncoding::F16),
        Dtype::BF16 => Some(FloatEncoding::BF16),
        _ => None,
    }
}

/// Tensors HF checkpoints may carry that the model does not need.
fn ignorable(name: &str, config: &LlamaConfig) -> bool {
    name.ends_with("rotary_emb.inv_freq")
        || (config.tie_word_embeddings
            && crate::tensors::Slot::from_hf_name(name) == Some(crate::tensors::Slot::LmHead))
}

/// Hands `build` a reader of the safetensors weights in `dir` (each tensor in burn's layout and
/// `dtype`, its mapped pages dropped once decoded); after `build`, a tensor of the files it did
/// not read is an error.
pub(crate) fn with_safetensors<R>(
    dir: &Path,
    config: &LlamaConfig,
    dtype: StorageDtype,
    build: impl FnOnce(&mut dyn FnMut(&TensorSpec) -> Result<TensorData>) -> Result<R>,
) -> Result<R> {
    let (files, listing) = weight_files(dir)?;
    let maps = files.iter().map(|f| map_file(f)).collect::<Result<Vec<_>>>()?;
    let parsed = maps
        .iter()
        .zip(&files)
        .map(|(map, path)| {
            SafeTensors::deserialize(map)
                .map_err(|e| ModelError::InvalidSafetensors { path: path.clone(), reason: e.to_string() })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut location: HashMap<String, usize> = HashMap::new();
    for (file, st) in parsed.iter().enumerate() {
        for name in st.names() {
            location.insert(name.to_string(), file);
        }
    }
    let mut used = HashSet::new();
    let built = build(&mut |spec: &TensorSpec| {
        let file = *location
            .get(&spec.name)
            .ok_or_else(|| ModelError::MissingTensor { path: listing.clone(), tensor: spec.name.clone() })?;
        let path = &files[file];
        let view = parsed[file].tensor(&spec.name).map_err(|e| ModelError::InvalidSafetensors {
            path: path.clone(),
            reason: format!("tensor `{}`: {e}", spec.name),
        })?;
        if view.shape() != spec.shape.as_slice() {
            return Err(ModelError::ShapeMismatch {
                path: path.clone(),
                tensor: spec.name.clone(),
                expected: spec.shape.clone(),
                found: view.shape().to_vec(),
            });
        }
        let encoding = encoding(view.dtype()).ok_or_else(|| ModelError::UnsupportedTensorType {
            path: path.clone(),
            tensor: spec.name.clone(),
            dtype: format!("{:?}", view.dtype()),
        })?;
        used.insert(spec.name.clone());
        let (rows, cols) = rows_cols(&spec.shape);
        let source = PlainFloats { bytes: view.data(), encoding, rows, cols };
        let data = decode_tensor(&source, spec.shape.clone(), spec.transposed, dtype);
        release_pages(&maps[file], view.data());
        Ok(data)
    })?;
    if let Some((name, &file)) = location.iter().find(|(name, _)| !used.contains(*name) && !ignorable(name, config)) {
        return Err(ModelError::UnexpectedTensor {
            path: files[file].clone(),
            tensor: name.clone(),
            model_type: config.model_type.hf_name().into(),
        });
    }
    Ok(built)
}

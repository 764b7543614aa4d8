//! Saving in the layout HF transformers loads: `config.json` plus safetensors weights under
//! HF names, Linear weights `[out, in]`, the storage dtype, a tied embedding stored once;
//! sharded with `model.safetensors.index.json` above a size limit.
//!
//! Every file is written under a temporary name, synced, and renamed into place with the
//! directory synced ([`lomo_io::atomic`]), so an interrupted save never leaves a half-written
//! checkpoint under the real name. Tensors are read back
//! from the device one at a time and streamed to disk: saving needs one tensor's worth of
//! extra memory, not a copy of the model.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use burn::tensor::backend::Backend;
use lomo_io::atomic;
use safetensors::tensor::{Dtype, Metadata, TensorInfo};
use serde_json::{json, Value};

use burn::tensor::TensorData;

use crate::config::LlamaConfig;
use crate::dtype::StorageDtype;
use crate::error::{ModelError, Result};
use crate::llama::Llama;
use crate::safetensors::{INDEX_FILE, SINGLE_FILE};
use crate::tensors::TensorSpec;

/// How [`Llama::save_hf`] writes a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaveOptions {
    /// Largest shard in bytes of tensor data; a larger model is split into
    /// `model-0000i-of-0000n.safetensors` files plus an index. HF's default is 5 GB.
    pub max_shard_bytes: u64,
}

impl Default for SaveOptions {
    fn default() -> Self {
        Self { max_shard_bytes: 5_000_000_000 }
    }
}

struct Entry {
    name: String,
    shape: Vec<usize>,
    bytes: u64,
}

/// The start of a safetensors file for `tensors` (name, shape; stored back to back in `dtype`,
/// in this order) with `metadata`: the 8-byte header length, then the header (the
/// safetensors crate's own [`Metadata`], so its rules hold: offsets follow the shapes), padded
/// with spaces to at least `min_len` bytes and to a multiple of 8, so that the data starts
/// aligned. The data itself is the caller's to stream; `path` names the file in an error.
pub(crate) fn safetensors_header(
    path: &Path,
    metadata: HashMap<String, String>,
    tensors: impl IntoIterator<Item = (String, Vec<usize>)>,
    dtype: StorageDtype,
    min_len: usize,
) -> Result<Vec<u8>> {
    let st_dtype = match dtype {
        StorageDtype::F32 => Dtype::F32,
        StorageDtype::BF16 => Dtype::BF16,
        StorageDtype::F16 => Dtype::F16,
    };
    let mut offset = 0;
    let infos = tensors
        .into_iter()
        .map(|(name, shape)| {
            let bytes = shape.iter().product::<usize>() * dtype.size_of();
            offset += bytes;
            (name, TensorInfo { dtype: st_dtype, shape, data_offsets: (offset - bytes, offset) })
        })
        .collect();
    let bad = |reason: String| ModelError::InvalidSafetensors { path: path.to_path_buf(), reason };
    let metadata = Metadata::new(Some(metadata), infos).map_err(|e| bad(e.to_string()))?;
    // Through a JSON value, whose maps are ordered by key: the metadata's `HashMap` would
    // otherwise give the header's keys in a different order in every process, and the same
    // weights would be written as different bytes.
    let value = serde_json::to_value(&metadata).map_err(|e| bad(e.to_string()))?;
    let mut header = serde_json::to_vec(&value).map_err(|e| bad(e.to_string()))?;
    header.resize(header.len().max(min_len).next_multiple_of(8), b' ');
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header);
    Ok(out)
}

impl<B: Backend> Llama<B> {
    /// Writes the model to `dir` (created if needed) as an HF checkpoint.
    ///
    /// A checkpoint of the other form (single file vs. shards) left in `dir` by an earlier
    /// save is removed, so that a loader cannot pick up stale weights.
    pub fn save_hf(&self, dir: impl AsRef<Path>, options: &SaveOptions) -> Result<()> {
        let tensors = self.hf_tensors();
        save_hf_tensors(dir.as_ref(), self.config(), self.dtype(), options, &mut |spec| {
            let (_, tensor) = tensors.iter().find(|(s, _)| s.name == spec.name).expect("a tensor of the specs");
            // `into_data` gives the logical layout: `[out, in]` for a transposed view.
            Ok(tensor.clone().into_data())
        })
    }
}

/// Writes an HF checkpoint of `config` in `dir`: every tensor of [`LlamaConfig::tensor_specs`]
/// as `read` hands it over (HF's layout, `dtype`), one at a time.
pub(crate) fn save_hf_tensors(
    dir: &Path,
    config: &LlamaConfig,
    dtype: StorageDtype,
    options: &SaveOptions,
    read: &mut dyn FnMut(&TensorSpec) -> Result<TensorData>,
) -> Result<()> {
    {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        let tensors = config.tensor_specs();

        // Shards: consecutive tensors while they fit, at least one tensor per shard.
        let mut shards: Vec<Vec<usize>> = vec![Vec::new()];
        let mut shard_bytes = 0u64;
        let entries: Vec<Entry> = tensors
            .iter()
            .map(|spec| Entry {
                name: spec.name.clone(),
                shape: spec.shape.clone(),
                bytes: (spec.numel() * dtype.size_of()) as u64,
            })
            .collect();
        for (i, entry) in entries.iter().enumerate() {
            let current = shards.last_mut().expect("one shard");
            if !current.is_empty() && shard_bytes + entry.bytes > options.max_shard_bytes {
                shards.push(vec![i]);
                shard_bytes = entry.bytes;
            } else {
                current.push(i);
                shard_bytes += entry.bytes;
            }
        }
        let num_shards = shards.len();
        let shard_name = |k: usize| {
            if num_shards == 1 {
                SINGLE_FILE.to_string()
            } else {
                format!("model-{:05}-of-{:05}.safetensors", k + 1, num_shards)
            }
        };

        let mut written = Vec::new();
        let mut weight_map = BTreeMap::new();
        for (k, members) in shards.iter().enumerate() {
            let path = dir.join(shard_name(k));
            for &i in members {
                weight_map.insert(entries[i].name.clone(), Value::from(shard_name(k)));
            }
            let header = safetensors_header(
                &path,
                HashMap::from([("format".to_string(), "pt".to_string())]),
                members.iter().map(|&i| (entries[i].name.clone(), entries[i].shape.clone())),
                dtype,
                0,
            )?;
            let staged = atomic::stage_with(&path, |out| {
                let io = |e| ModelError::io(&path, e);
                out.write_all(&header).map_err(io)?;
                for &i in members {
                    let spec = &tensors[i];
                    let data = read(spec)?;
                    if data.as_bytes().len() as u64 != entries[i].bytes {
                        return Err(ModelError::TensorRead {
                            tensor: spec.name.clone(),
                            reason: format!(
                                "{} bytes of {:?}, expected {}",
                                data.as_bytes().len(),
                                data.dtype,
                                entries[i].bytes
                            ),
                        });
                    }
                    out.write_all(data.as_bytes()).map_err(io)?;
                }
                Ok(())
            })?;
            written.push(staged);
        }
        let index = (num_shards > 1).then(|| {
            let total: u64 = entries.iter().map(|e| e.bytes).sum();
            json!({ "metadata": { "total_size": total }, "weight_map": weight_map })
        });
        let index_path = dir.join(INDEX_FILE);
        if let Some(index) = &index {
            written.push(atomic::stage_with(&index_path, |out| {
                serde_json::to_writer_pretty(&mut *out, index)
                    .map_err(|e| ModelError::io(&index_path, std::io::Error::other(e)))
            })?);
        }
        let config_path = dir.join("config.json");
        let config = config.to_hf(dtype);
        written.push(atomic::stage_with(&config_path, |out| {
            serde_json::to_writer_pretty(&mut *out, &config)
                .map_err(|e| ModelError::io(&config_path, std::io::Error::other(e)))
        })?);

        // Everything is on disk under temporary names: now put it in place, then remove what
        // an earlier save of the other form left behind.
        atomic::commit_all(written)?;
        let keep: Vec<String> = (0..num_shards).map(shard_name).collect();
        let stale = |name: &str| {
            !keep.iter().any(|k| k == name)
                && (name == SINGLE_FILE
                    || (name == INDEX_FILE && index.is_none())
                    || (name.starts_with("model-") && name.contains("-of-") && name.ends_with(".safetensors")))
        };
        for entry in std::fs::read_dir(dir).map_err(|e| ModelError::io(dir, e))? {
            let entry = entry.map_err(|e| ModelError::io(dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if stale(&name) {
                std::fs::remove_file(entry.path()).map_err(|e| ModelError::io(entry.path(), e))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header is the same bytes whatever order the metadata map hands its keys out in.
    #[test]
    fn a_header_is_the_same_bytes_every_time() {
        let header = || {
            let metadata: HashMap<String, String> = (0..16).map(|i| (format!("key{i}"), format!("value{i}"))).collect();
            let tensors = [("b.weight".to_string(), vec![2, 3]), ("a.weight".to_string(), vec![4])];
            safetensors_header(Path::new("x.safetensors"), metadata, tensors, StorageDtype::F32, 0).unwrap()
        };
        let first = header();
        for _ in 0..8 {
            assert_eq!(header(), first);
        }
        let len = u64::from_le_bytes(first[..8].try_into().unwrap()) as usize;
        let parsed: serde_json::Value = serde_json::from_slice(&first[8..8 + len]).unwrap();
        assert_eq!(parsed["b.weight"]["data_offsets"], serde_json::json!([0, 24]));
        assert_eq!(parsed["a.weight"]["data_offsets"], serde_json::json!([24, 40]));
    }
}

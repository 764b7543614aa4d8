//! The one way a [`Llama`] comes to exist: [`load`] takes the tensors from a [`TensorSource`]
//! (an HF checkpoint, a GGUF file, random initialisation) and puts them where a [`Residency`]
//! says (in the model's tensors on their stages' devices, or in a working copy on disk).
//!
//! Every source hands out one tensor at a time, already in burn's layout and the storage dtype,
//! for the rows of the tensor table the configuration has ([`LlamaConfig::tensor_specs`]): a
//! resident load keeps only the model's own copy of each, a disk load writes each to its stage's
//! file and drops it, so that a load peaks at the weights, and an offloaded load at one tensor
//! over the placeholders.

use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::TensorData;
use lomo_kernels::FusedKernels;

use crate::config::LlamaConfig;
use crate::dtype::StorageDtype;
use crate::error::Result;
use crate::gguf::GgufFile;
use crate::llama::Llama;
use crate::offload::DiskStore;
use crate::placement::On;
use crate::tensors::TensorSpec;

/// Where a model's tensors come from.
#[derive(Debug, Clone, Copy)]
pub enum TensorSource<'a> {
    /// The HF checkpoint in a directory: `config.json` and safetensors weights, single file or
    /// sharded, memory-mapped.
    Hf(&'a Path),
    /// A GGUF file (architecture `llama`): the configuration from its metadata, the weights
    /// dequantised (F32/F16/BF16/Q8_0/Q4_0/Q4_1). Its tokenizer is [`GgufFile::tokenizer`].
    Gguf(&'a GgufFile),
    /// Random weights of `config`'s shape as HF initialises them, reproducible from `seed`.
    Init {
        /// The model's shape.
        config: &'a LlamaConfig,
        /// The seed every tensor's stream is derived from.
        seed: u64,
    },
}

/// Where the loaded weights live.
#[derive(Debug, Clone, Copy)]
pub enum Residency<'a> {
    /// In the model's tensors, each on its stage's device.
    Resident,
    /// In a working copy on disk ([`DiskStore`], `--offload disk`), made in `dir`; the model
    /// holds placeholders. `step` is the step the weights are from.
    Disk {
        /// The working copy's directory (created; an earlier working copy there is replaced,
        /// anything else there is an error).
        dir: &'a Path,
        /// The step the weights are from.
        step: u64,
    },
}

/// A loaded model, and the working copy that holds its weights when they live on disk.
#[derive(Debug)]
pub struct Loaded<B: Backend> {
    /// The model ([`Residency::Disk`]: placeholders on their stages' devices).
    pub model: Llama<B>,
    /// The working copy ([`Residency::Disk`] only).
    pub store: Option<DiskStore>,
}

/// Loads a model from `source` into `residency`, its weights stored in `dtype`. `on` is one
/// device, or a [`crate::Placement`] of the stages on devices (each tensor is built on its
/// stage's device).
///
/// Errors name the file and the tensor or field: a missing or unexpected tensor, a shape that
/// contradicts the configuration, an unreadable element type, a malformed file, a placement for
/// another number of stages, a working-copy directory holding other files.
pub fn load<'a, B: FusedKernels>(
    source: TensorSource<'_>,
    residency: Residency<'_>,
    dtype: StorageDtype,
    on: impl Into<On<'a, B::Device>>,
) -> Result<Loaded<B>>
where
    B::Device: 'a,
{
    let on = on.into();
    match source {
        TensorSource::Hf(dir) => {
            let config = LlamaConfig::from_file(dir.join("config.json"))?;
            crate::safetensors::with_safetensors(dir, &config, dtype, |take| {
                build(config.clone(), dtype, on, residency, take)
            })
        }
        TensorSource::Gguf(file) => {
            let config = file.config()?;
            file.with_tensors(&config, dtype, |take| build(config.clone(), dtype, on, residency, take))
        }
        TensorSource::Init { config, seed } => build(config.clone(), dtype, on, residency, &mut |spec: &TensorSpec| {
            Ok(crate::init::init_tensor(spec, dtype, seed))
        }),
    }
}

/// The model of `config` from `take`'s tensors, in `residency`.
fn build<B: FusedKernels>(
    config: LlamaConfig,
    dtype: StorageDtype,
    on: On<'_, B::Device>,
    residency: Residency<'_>,
    take: &mut dyn FnMut(&TensorSpec) -> Result<TensorData>,
) -> Result<Loaded<B>> {
    match residency {
        Residency::Resident => Ok(Loaded { model: Llama::from_tensors(config, on, take)?, store: None }),
        Residency::Disk { dir, step } => {
            // Every parameter a placeholder (no elements, the storage dtype, its stage's device):
            // what the working copy fills stage by stage.
            let skeleton = Llama::from_tensors(config, on, |spec| {
                Ok(TensorData::from_bytes_vec(Vec::new(), vec![0; spec.shape.len()], dtype.to_burn()))
            })?;
            let store = DiskStore::create(dir, &skeleton, step, take)?;
            Ok(Loaded { model: skeleton, store: Some(store) })
        }
    }
}

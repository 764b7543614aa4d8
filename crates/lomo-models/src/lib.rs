//! LLaMA-family causal language models on burn, for full-parameter fine-tuning with LOMO.
//!
//! - [`Llama`]: HF's `LlamaForCausalLM` (and `Qwen2ForCausalLM`), configured from HF's
//!   `config.json` ([`HfConfig`] → [`LlamaConfig`]), generic over the burn backend, with weights
//!   stored in f32, bf16 or f16 ([`StorageDtype`]).
//! - One way to load: [`load()`] from a [`TensorSource`] (HF safetensors, single file or sharded,
//!   memory-mapped; GGUF, F32/F16/BF16/Q8_0/Q4_0/Q4_1, with the tokenizer metadata as
//!   [`GgufTokenizerSpec`]; random initialisation) into a [`Residency`] (resident, or a working
//!   copy on disk), every tensor named by the one tensor table ([`tensors`]). Out: HF safetensors
//!   ([`Llama::save_hf`]) and GGUF ([`Llama::save_gguf`]).
//! - Training: [`Llama`] implements [`lomo_optim::StagedModel`] (embedding, one stage per decoder
//!   block, then final norm + LM head + loss in token chunks), fed by a [`Batch`].
//! - Generation with a KV cache ([`generate()`], [`KvCache`]), greedy or sampled with a seed.
//! - Presets of real model shapes with random weights ([`presets`]) and parameter / byte counts
//!   that allocate nothing ([`LlamaConfig::num_params`]).
//!
//! ```
//! use lomo_models::{generate, load, presets, GenerationConfig, Residency, SaveOptions, StorageDtype, TensorSource};
//!
//! type B = burn::backend::Flex;
//! let device = burn::backend::flex::FlexDevice;
//! // stories260K's shape with random weights (an HF directory is `TensorSource::Hf(path)`, a
//! // GGUF file `TensorSource::Gguf(&GgufFile::open(path)?)`).
//! let config = presets::preset("stories260k")?;
//! let source = TensorSource::Init { config: &config, seed: 42 };
//! let model = load::<B>(source, Residency::Resident, StorageDtype::BF16, &device)?.model;
//! let prompt = [1, 403, 407, 261, 378];
//! let new_tokens = generate(&model, &prompt, &GenerationConfig::greedy(8));
//!
//! // Saved as an HF checkpoint and loaded back, it continues the prompt the same way.
//! let dir = std::env::temp_dir().join(format!("lomo-models-doc-{}", std::process::id()));
//! model.save_hf(&dir, &SaveOptions::default())?;
//! let reloaded = load::<B>(TensorSource::Hf(&dir), Residency::Resident, StorageDtype::BF16, &device)?.model;
//! assert_eq!(generate(&reloaded, &prompt, &GenerationConfig::greedy(8)), new_tokens);
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok::<(), lomo_models::ModelError>(())
//! ```
#![warn(missing_docs)]

pub mod attention;
pub mod batch;
pub mod config;
pub mod dtype;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod gguf_write;
pub mod init;
pub mod kv_cache;
pub mod llama;
pub mod load;
pub mod mlp;
pub mod norm;
pub mod offload;
pub mod placement;
pub mod plan;
pub mod presets;
pub use lomo_io::rng;
pub mod rope;
pub mod safetensors;
pub mod save;
pub mod stages;
pub mod tensors;

pub use batch::{Batch, IGNORE_INDEX};
pub use config::{HfConfig, Llama3RopeScaling, LlamaConfig, ModelType};
pub use dtype::StorageDtype;
pub use error::{ModelError, Result};
pub use generate::{generate, GenerationConfig, Sampling};
pub use gguf::GgufFile;
pub use gguf_write::GgufExportType;
pub use kv_cache::KvCache;
pub use llama::{HfParam, Llama, LossChunking};
pub use load::{load, Loaded, Residency, TensorSource};
pub use lomo_io::gguf_tokenizer::{GgufTokenizerModel, GgufTokenizerSpec};
pub use offload::{DiskStore, IoStats, WorkingCopy};
pub use placement::{On, Placement};
pub use save::SaveOptions;
pub use tensors::{BlockTensor, Slot, TensorSpec};

use burn::tensor::backend::AutodiffBackend;
use lomo_kernels::{FusedKernels, UpdateKernels};

/// A backend a [`Llama`] trains on: autodiff over a backend with the fused transformer ops
/// ([`FusedKernels`]) and the fused update ([`UpdateKernels`]); the fused step runs its
/// tape-free forward and its updates on the inner backend.
pub trait TrainBackend: AutodiffBackend<InnerBackend: FusedKernels + UpdateKernels> + FusedKernels {}

impl<B> TrainBackend for B
where
    B: AutodiffBackend + FusedKernels,
    B::InnerBackend: FusedKernels + UpdateKernels,
{
}

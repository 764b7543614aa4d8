//! Where a model comes from: an HF directory, a GGUF file, or a preset's shape; and its
//! tokenizer, when it has one.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::tensor::backend::Backend;
use lomo_data::TextTokenizer;
use lomo_models::{DiskStore, GgufFile, Llama, On, StorageDtype, TrainBackend};

use crate::args::ModelSourceArgs;

/// A model with its tokenizer.
pub struct Loaded<B: Backend> {
    pub model: Llama<B>,
    pub tokenizer: Option<TextTokenizer>,
    /// The `tokenizer.json` to copy into saved checkpoints, when the model came with one.
    pub tokenizer_file: Option<PathBuf>,
    /// What was loaded, for messages.
    pub description: String,
}

/// Loads `--model PATH` or builds `--preset NAME` with random weights.
///
/// `device`: one device, or a [`lomo_models::Placement`] of the stages (each tensor is built on
/// its stage's device).
pub fn load<B: Backend>(
    source: &ModelSourceArgs,
    dtype: StorageDtype,
    device: On<'_, B::Device>,
    seed: u64,
) -> Result<Loaded<B>> {
    match (&source.model, &source.preset) {
        (Some(path), _) => load_path(path, dtype, device),
        (None, Some(name)) => {
            let config = lomo_models::presets::preset(name).with_context(|| format!("--preset {name}"))?;
            let model = Llama::init(config, dtype, device, seed);
            Ok(Loaded {
                model,
                tokenizer: None,
                tokenizer_file: None,
                description: format!("preset {name} (random weights)"),
            })
        }
        (None, None) => bail!("give --model PATH or --preset NAME"),
    }
}

/// Loads an HF checkpoint directory or a `.gguf` file.
pub fn load_path<B: Backend>(path: &Path, dtype: StorageDtype, device: On<'_, B::Device>) -> Result<Loaded<B>> {
    if !path.exists() {
        bail!("--model {}: no such file or directory", path.display());
    }
    if path.is_dir() {
        let model = Llama::load_hf(path, dtype, device).with_context(|| format!("loading {}", path.display()))?;
        return hf_loaded(path, model);
    }
    if path.extension().and_then(|e| e.to_str()) == Some("gguf") {
        let gguf = GgufFile::open(path).with_context(|| format!("reading {}", path.display()))?;
        let config = gguf.config().with_context(|| format!("reading {}", path.display()))?;
        let model = gguf.load_model(config, dtype, device).with_context(|| format!("loading {}", path.display()))?;
        return gguf_loaded(path, &gguf, model);
    }
    bail!("--model {}: expected an HF checkpoint directory (config.json + safetensors) or a .gguf file", path.display())
}

/// An HF directory's model with its `tokenizer.json`, when it has one.
fn hf_loaded<B: Backend>(path: &Path, model: Llama<B>) -> Result<Loaded<B>> {
    let file = path.join("tokenizer.json");
    let (tokenizer, tokenizer_file) = if file.exists() {
        let t = TextTokenizer::from_file(&file).with_context(|| format!("reading {}", file.display()))?;
        (Some(t), Some(file))
    } else {
        (None, None)
    };
    Ok(Loaded { model, tokenizer, tokenizer_file, description: path.display().to_string() })
}

/// A GGUF file's model with the tokenizer in its metadata.
fn gguf_loaded<B: Backend>(path: &Path, gguf: &GgufFile, model: Llama<B>) -> Result<Loaded<B>> {
    let spec = gguf.tokenizer().with_context(|| format!("reading the tokenizer of {}", path.display()))?;
    let tokenizer = TextTokenizer::from_gguf(&spec).with_context(|| format!("the tokenizer of {}", path.display()))?;
    Ok(Loaded { model, tokenizer: Some(tokenizer), tokenizer_file: None, description: path.display().to_string() })
}

/// [`load`] for `--offload disk`: the weights go straight into a working copy in `store_dir`,
/// stage by stage; the model holds placeholders.
pub fn load_offloaded<B: TrainBackend>(
    source: &ModelSourceArgs,
    dtype: StorageDtype,
    device: On<'_, B::Device>,
    seed: u64,
    store_dir: &Path,
) -> Result<(Loaded<B>, DiskStore)> {
    let making = || format!("making the working copy in {}", store_dir.display());
    match (&source.model, &source.preset) {
        (Some(path), _) => load_path_offloaded(path, dtype, device, store_dir, 0),
        (None, Some(name)) => {
            let config = lomo_models::presets::preset(name).with_context(|| format!("--preset {name}"))?;
            let (model, store) = Llama::init_offloaded(config, dtype, device, seed, store_dir).with_context(making)?;
            let description = format!("preset {name} (random weights)");
            Ok((Loaded { model, tokenizer: None, tokenizer_file: None, description }, store))
        }
        (None, None) => bail!("give --model PATH or --preset NAME"),
    }
}

/// [`load_path`] for `--offload disk`; the working copy's weights are from step `step`.
pub fn load_path_offloaded<B: TrainBackend>(
    path: &Path,
    dtype: StorageDtype,
    device: On<'_, B::Device>,
    store_dir: &Path,
    step: u64,
) -> Result<(Loaded<B>, DiskStore)> {
    if !path.exists() {
        bail!("--model {}: no such file or directory", path.display());
    }
    let making = || format!("making the working copy of {} in {}", path.display(), store_dir.display());
    if path.is_dir() {
        let (model, store) = Llama::load_hf_offloaded(path, dtype, device, store_dir, step).with_context(making)?;
        return Ok((hf_loaded(path, model)?, store));
    }
    if path.extension().and_then(|e| e.to_str()) == Some("gguf") {
        let gguf = GgufFile::open(path).with_context(|| format!("reading {}", path.display()))?;
        let config = gguf.config().with_context(|| format!("reading {}", path.display()))?;
        let (model, store) = gguf.load_model_offloaded(config, dtype, device, store_dir).with_context(making)?;
        return Ok((gguf_loaded(path, &gguf, model)?, store));
    }
    bail!("--model {}: expected an HF checkpoint directory (config.json + safetensors) or a .gguf file", path.display())
}

/// The tokenizer, or an error saying why this command needs one.
pub fn require_tokenizer<'a>(tokenizer: Option<&'a TextTokenizer>, why: &str) -> Result<&'a TextTokenizer> {
    tokenizer.with_context(|| format!("{why} needs a tokenizer, and the model has none (an HF directory needs tokenizer.json; a preset has none: use pre-tokenized data)"))
}

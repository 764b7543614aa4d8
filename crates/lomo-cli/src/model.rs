//! Where a model comes from: an HF directory, a GGUF file, or a preset's shape; and its
//! tokenizer, when it has one.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::tensor::backend::Backend;
use lomo_data::TextTokenizer;
use lomo_models::{DiskStore, GgufFile, Llama, On, Residency, StorageDtype, TensorSource};

use crate::args::ModelSourceArgs;

/// A model with its tokenizer.
pub struct Loaded<B: Backend> {
    pub model: Llama<B>,
    /// The working copy that holds the weights with `--offload disk` ([`Residency::Disk`]).
    pub store: Option<DiskStore>,
    pub tokenizer: Option<TextTokenizer>,
    /// The `tokenizer.json` to copy into saved checkpoints, when the model came with one.
    pub tokenizer_file: Option<PathBuf>,
    /// What was loaded, for messages.
    pub description: String,
}

/// Loads `--model PATH` or builds `--preset NAME` with random weights, into `residency`.
///
/// `device`: one device, or a [`lomo_models::Placement`] of the stages (each tensor is built on
/// its stage's device).
pub fn load<B: lomo_kernels::FusedKernels>(
    source: &ModelSourceArgs,
    dtype: StorageDtype,
    device: On<'_, B::Device>,
    seed: u64,
    residency: Residency<'_>,
) -> Result<Loaded<B>> {
    match (&source.model, &source.preset) {
        (Some(path), _) => load_path(path, dtype, device, residency),
        (None, Some(name)) => {
            let config = lomo_models::presets::preset(name).with_context(|| format!("--preset {name}"))?;
            let source = TensorSource::Init { config: &config, seed };
            let lomo_models::Loaded { model, store } = lomo_models::load(source, residency, dtype, device)
                .with_context(|| match residency {
                    Residency::Resident => format!("--preset {name}"),
                    Residency::Disk { dir, .. } => format!("making the working copy in {}", dir.display()),
                })?;
            let description = format!("preset {name} (random weights)");
            Ok(Loaded { model, store, tokenizer: None, tokenizer_file: None, description })
        }
        (None, None) => bail!("give --model PATH or --preset NAME"),
    }
}

/// Loads an HF checkpoint directory or a `.gguf` file into `residency`.
pub fn load_path<B: lomo_kernels::FusedKernels>(
    path: &Path,
    dtype: StorageDtype,
    device: On<'_, B::Device>,
    residency: Residency<'_>,
) -> Result<Loaded<B>> {
    if !path.exists() {
        bail!("--model {}: no such file or directory", path.display());
    }
    let loading = || match residency {
        Residency::Resident => format!("loading {}", path.display()),
        Residency::Disk { dir, .. } => {
            format!("making the working copy of {} in {}", path.display(), dir.display())
        }
    };
    if path.is_dir() {
        let loaded = lomo_models::load(TensorSource::Hf(path), residency, dtype, device).with_context(loading)?;
        return hf_loaded(path, loaded);
    }
    if path.extension().and_then(|e| e.to_str()) == Some("gguf") {
        let gguf = GgufFile::open(path).with_context(|| format!("reading {}", path.display()))?;
        gguf.config().with_context(|| format!("reading {}", path.display()))?;
        let loaded = lomo_models::load(TensorSource::Gguf(&gguf), residency, dtype, device).with_context(loading)?;
        return gguf_loaded(path, &gguf, loaded);
    }
    bail!("--model {}: expected an HF checkpoint directory (config.json + safetensors) or a .gguf file", path.display())
}

/// An HF directory's model with its `tokenizer.json`, when it has one.
fn hf_loaded<B: Backend>(path: &Path, loaded: lomo_models::Loaded<B>) -> Result<Loaded<B>> {
    let file = path.join("tokenizer.json");
    let (tokenizer, tokenizer_file) = if file.exists() {
        let t = TextTokenizer::from_file(&file).with_context(|| format!("reading {}", file.display()))?;
        (Some(t), Some(file))
    } else {
        (None, None)
    };
    let lomo_models::Loaded { model, store } = loaded;
    Ok(Loaded { model, store, tokenizer, tokenizer_file, description: path.display().to_string() })
}

/// A GGUF file's model with the tokenizer in its metadata.
fn gguf_loaded<B: Backend>(path: &Path, gguf: &GgufFile, loaded: lomo_models::Loaded<B>) -> Result<Loaded<B>> {
    let spec = gguf.tokenizer().with_context(|| format!("reading the tokenizer of {}", path.display()))?;
    let tokenizer = TextTokenizer::from_gguf(&spec).with_context(|| format!("the tokenizer of {}", path.display()))?;
    let lomo_models::Loaded { model, store } = loaded;
    Ok(Loaded {
        model,
        store,
        tokenizer: Some(tokenizer),
        tokenizer_file: None,
        description: path.display().to_string(),
    })
}

/// The tokenizer, or an error saying why this command needs one.
pub fn require_tokenizer<'a>(tokenizer: Option<&'a TextTokenizer>, why: &str) -> Result<&'a TextTokenizer> {
    tokenizer.with_context(|| format!("{why} needs a tokenizer, and the model has none (an HF directory needs tokenizer.json; a preset has none: use pre-tokenized data)"))
}

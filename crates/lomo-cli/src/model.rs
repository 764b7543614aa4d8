//! Where a model comes from: an HF directory, a GGUF file, or a preset's shape; and its
//! tokenizer, when it has one.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::tensor::backend::Backend;
use lomo_data::{GgufTokenizerModel, GgufTokenizerSpec, TextTokenizer};
use lomo_models::{GgufFile, GgufTokenizer, Llama, On, StorageDtype};

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
pub fn load<B: Backend>(source: &ModelSourceArgs, dtype: StorageDtype, device: On<'_, B::Device>, seed: u64) -> Result<Loaded<B>> {
    match (&source.model, &source.preset) {
        (Some(path), _) => load_path(path, dtype, device),
        (None, Some(name)) => {
            let config = lomo_models::presets::preset(name).with_context(|| format!("--preset {name}"))?;
            let model = Llama::init(config, dtype, device, seed);
            Ok(Loaded { model, tokenizer: None, tokenizer_file: None, description: format!("preset {name} (random weights)") })
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
        let file = path.join("tokenizer.json");
        let (tokenizer, tokenizer_file) = if file.exists() {
            let t = TextTokenizer::from_file(&file).with_context(|| format!("reading {}", file.display()))?;
            (Some(t), Some(file))
        } else {
            (None, None)
        };
        return Ok(Loaded { model, tokenizer, tokenizer_file, description: path.display().to_string() });
    }
    if path.extension().and_then(|e| e.to_str()) == Some("gguf") {
        let gguf = GgufFile::open(path).with_context(|| format!("reading {}", path.display()))?;
        let config = gguf.config().with_context(|| format!("reading {}", path.display()))?;
        let model = gguf.load_model(config, dtype, device).with_context(|| format!("loading {}", path.display()))?;
        let spec = gguf.tokenizer().with_context(|| format!("reading the tokenizer of {}", path.display()))?;
        let tokenizer = tokenizer_from_gguf(&spec).with_context(|| format!("the tokenizer of {}", path.display()))?;
        return Ok(Loaded { model, tokenizer: Some(tokenizer), tokenizer_file: None, description: path.display().to_string() });
    }
    bail!("--model {}: expected an HF checkpoint directory (config.json + safetensors) or a .gguf file", path.display())
}

/// Hands the GGUF metadata the models crate read to the data crate's tokenizer builder.
pub fn tokenizer_from_gguf(t: &GgufTokenizer) -> Result<TextTokenizer> {
    let model = GgufTokenizerModel::from_gguf_name(&t.model)?;
    let mut spec = GgufTokenizerSpec::new(model, t.tokens.clone(), t.merges.clone());
    spec.pre = t.pre.clone();
    spec.token_types = t.token_types.clone();
    spec.scores = t.scores.clone();
    spec.bos_id = t.bos_token_id;
    spec.eos_id = t.eos_token_id;
    spec.unk_id = t.unknown_token_id;
    spec.pad_id = t.padding_token_id;
    spec.add_bos = t.add_bos_token;
    spec.chat_template = t.chat_template.clone();
    Ok(TextTokenizer::from_gguf(&spec)?)
}

/// The tokenizer, or an error saying why this command needs one.
pub fn require_tokenizer<'a>(tokenizer: Option<&'a TextTokenizer>, why: &str) -> Result<&'a TextTokenizer> {
    tokenizer.with_context(|| format!("{why} needs a tokenizer, and the model has none (an HF directory needs tokenizer.json; a preset has none: use pre-tokenized data)"))
}

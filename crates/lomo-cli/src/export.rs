//! `lomo export`: a checkpoint (an HF directory, e.g. one `lomo train --save` wrote, or a GGUF)
//! to a GGUF file llama.cpp and Ollama run.

use anyhow::{bail, Context, Result};
use lomo_models::{GgufExportType, GgufFile, GgufTokenizerSpec, Llama, Residency, StorageDtype};

use crate::args::{ExportArgs, GgufTypeArg};
use crate::model::load_path;

type Cpu = burn::backend::Flex;

pub fn run(args: ExportArgs) -> Result<()> {
    let out = &args.gguf;
    if out.extension().and_then(|e| e.to_str()) != Some("gguf") {
        bail!("--gguf {}: the file name must end in .gguf", out.display());
    }
    if out.is_dir() {
        bail!("--gguf {}: is a directory", out.display());
    }
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    if !parent.is_dir() {
        bail!("--gguf {}: no directory {}", out.display(), parent.display());
    }
    if std::fs::canonicalize(&args.model).ok().is_some_and(|m| std::fs::canonicalize(out).ok() == Some(m)) {
        bail!("--gguf {}: is the --model file itself", out.display());
    }
    let ty = match args.r#type {
        GgufTypeArg::F32 => GgufExportType::F32,
        GgufTypeArg::F16 => GgufExportType::F16,
        GgufTypeArg::Q8_0 => GgufExportType::Q8_0,
    };
    let device = Default::default();
    let loaded = load_path::<Cpu>(&args.model, StorageDtype::F32, lomo_models::On::One(&device), Residency::Resident)?;
    let tokenizer = if args.model.is_dir() {
        let t = loaded.tokenizer.as_ref().with_context(|| {
            format!("--model {}: no tokenizer.json (a GGUF file needs the tokenizer)", args.model.display())
        })?;
        let spec = t.gguf_spec().with_context(|| format!("the tokenizer of {}", args.model.display()))?;
        // llama.cpp's converter writes `add_eos_token` false for the HF tokenizers it exports.
        GgufTokenizerSpec { add_eos: Some(false), ..spec }
    } else {
        GgufFile::open(&args.model)?
            .tokenizer()
            .with_context(|| format!("the tokenizer of {}", args.model.display()))?
    };
    let model: &Llama<Cpu> = &loaded.model;
    let name = args.name.clone().unwrap_or_else(|| {
        let stem = if args.model.is_dir() { args.model.file_name() } else { args.model.file_stem() };
        stem.map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "lomo".into())
    });
    model.save_gguf(out, ty, &tokenizer, &name).with_context(|| format!("writing {}", out.display()))?;
    let bytes = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    lomo_cli::noteln!(
        "wrote {} ({:.1} MB, {:?}, {} parameters)",
        out.display(),
        bytes as f64 / 1e6,
        args.r#type,
        model.config().num_params()
    );
    Ok(())
}

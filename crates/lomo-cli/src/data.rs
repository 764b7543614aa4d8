//! From the files on the command line to datasets, through lomo-data.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use lomo_data::{read_superglue, DataFormat, Dataset, EncodeConfig, Example, Overlong, SuperGlueTask, TextTokenizer};

use crate::args::FormatArg;

/// The task `--task` names.
pub fn parse_task(task: Option<&str>) -> Result<Option<SuperGlueTask>> {
    task.map(|t| {
        SuperGlueTask::from_name(t)
            .with_context(|| format!("--task {t}: unknown (expected rte, cb, copa, boolq, wic, wsc or multirc)"))
    })
    .transpose()
}

/// The format of one file: `--format`, `--task`, or detected.
pub fn format_of(path: &Path, format: Option<FormatArg>, task: Option<SuperGlueTask>) -> Result<DataFormat> {
    Ok(match (format, task) {
        (Some(FormatArg::Superglue), None) => bail!("--format superglue needs --task"),
        (Some(FormatArg::Superglue), Some(t)) | (None, Some(t)) => DataFormat::SuperGlue(t),
        (Some(FormatArg::Pretokenized), _) => DataFormat::PreTokenized,
        (Some(FormatArg::Text), _) => DataFormat::Text,
        (Some(FormatArg::Alpaca), _) => DataFormat::Alpaca,
        (Some(FormatArg::Chat), _) => DataFormat::Chat,
        (None, None) => lomo_data::detect_format(path)?,
    })
}

/// Training examples from every file of `paths`, concatenated in order.
pub fn load_training(
    paths: &[PathBuf],
    format: Option<FormatArg>,
    task: Option<SuperGlueTask>,
    tokenizer: Option<&TextTokenizer>,
    max_len: usize,
    skip_overlong: bool,
) -> Result<Dataset> {
    let mut config = EncodeConfig::with_max_len(max_len);
    if skip_overlong {
        config.overlong = Overlong::Skip;
    }
    if let Some(t) = tokenizer {
        config.chat_template =
            t.chat_template().context("the model's chat template (tokenizer_config.json or GGUF)")?;
    }
    let mut examples: Vec<Example> = Vec::new();
    let mut skipped = 0;
    for path in paths {
        let fmt = format_of(path, format, task)?;
        if fmt.needs_tokenizer() && tokenizer.is_none() {
            bail!("{}: this format needs a tokenizer, and the model has none (use pre-tokenized JSONL with a preset, or a model directory with tokenizer.json)", path.display());
        }
        let dataset = match fmt {
            DataFormat::SuperGlue(task) => {
                let tokenizer = tokenizer.expect("checked above");
                let mut ds = Vec::new();
                for record in read_superglue(path, task)? {
                    match record.train_example(tokenizer, &config, path)? {
                        Some(e) => ds.push(e),
                        None => skipped += 1,
                    }
                }
                Dataset::from_examples(path.clone(), ds)?
            }
            other => Dataset::load(path, Some(other), tokenizer, &config)?,
        };
        skipped += dataset.skipped_too_long;
        examples.extend(dataset.examples);
    }
    let source = paths.first().cloned().unwrap_or_default();
    let mut dataset = Dataset::from_examples(source, examples)?;
    dataset.skipped_too_long = skipped;
    Ok(dataset)
}

/// lomo-data's plain arrays as the model's batch (lomo-models knows no lomo-data, so the two
/// meet here, for train, eval and demo alike).
pub fn model_batch(batch: &lomo_data::Batch) -> Result<lomo_models::Batch> {
    Ok(lomo_models::Batch::new(
        batch.input_ids.clone(),
        Some(batch.attention_mask.clone()),
        Some(batch.labels.clone()),
        batch.shape(),
    )?)
}

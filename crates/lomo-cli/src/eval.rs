//! `lomo eval`: loss and perplexity over a dataset, and accuracy on a SuperGLUE task by
//! scoring every candidate answer with its summed log-likelihood.

use std::path::Path;

use anyhow::{bail, Result};
use burn::tensor::backend::Backend;
use lomo_data::{collate, load_scoring_set, EncodeConfig, Example, PaddingConfig, SuperGlueTask, TextTokenizer};
use lomo_models::{Batch, Llama};
use serde::Serialize;

use crate::args::{EvalArgs, FormatArg};
use crate::backend::with_backend;
use crate::data::{load_training, parse_task};
use crate::model::{load_path, require_tokenizer};

/// What `lomo eval` prints, one JSON line.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EvalResult {
    pub loss: f64,
    pub perplexity: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    pub examples: usize,
}

pub fn run(args: EvalArgs) -> Result<()> {
    if args.batch_size == 0 {
        bail!("--batch-size: must be at least 1");
    }
    if args.max_len < 2 {
        bail!("--max-len: must be at least 2");
    }
    let task = parse_task(args.task.as_deref())?;
    with_backend!(args.backend, |B, device| {
        let loaded = load_path::<<B as burn::tensor::backend::AutodiffBackend>::InnerBackend>(&args.model, args.dtype.storage(), &device)?;
        let result = evaluate(&loaded.model, loaded.tokenizer.as_ref(), &args.data, args.format, task, args.max_len, args.batch_size)?;
        println!("{}", serde_json::to_string(&result)?);
        Ok(())
    })
}

/// Loss over `path` (the training format of the file) and, for a task, accuracy.
pub fn evaluate<B: Backend>(
    model: &Llama<B>,
    tokenizer: Option<&TextTokenizer>,
    path: &Path,
    format: Option<FormatArg>,
    task: Option<SuperGlueTask>,
    max_len: usize,
    batch_size: usize,
) -> Result<EvalResult> {
    if let Some(task) = task {
        // One pass: every candidate is scored; the gold candidates' scores give the loss on the
        // answers, the argmax over candidates the accuracy.
        let tokenizer = require_tokenizer(tokenizer, "a SuperGLUE task")?;
        let scored = score_task(model, tokenizer, path, task, max_len, batch_size)?;
        return Ok(EvalResult {
            loss: scored.gold_loss,
            perplexity: scored.gold_loss.exp(),
            accuracy: Some(scored.accuracy),
            examples: scored.examples,
        });
    }
    let dataset = load_training(&[path.to_path_buf()], format, None, tokenizer, max_len, false)?;
    let pad = tokenizer.map(PaddingConfig::for_tokenizer).unwrap_or_default();
    let (mut loss_sum, mut targets) = (0.0, 0usize);
    for chunk in dataset.examples.chunks(batch_size) {
        let batch = to_model_batch(&collate(chunk.iter(), &pad)?)?;
        let sums = row_log_likelihoods(model, &batch);
        loss_sum -= sums.iter().sum::<f64>();
        targets += batch.num_targets();
    }
    if targets == 0 {
        bail!("{}: no supervised tokens to take a loss on", path.display());
    }
    let loss = loss_sum / targets as f64;
    Ok(EvalResult { loss, perplexity: loss.exp(), accuracy: None, examples: dataset.examples.len() })
}

/// A SuperGLUE file scored.
pub struct TaskScores {
    pub accuracy: f64,
    /// Mean negative log-likelihood per token of the gold answers.
    pub gold_loss: f64,
    pub examples: usize,
}

/// Scores `model` on a SuperGLUE file: each candidate by the summed log-likelihood of its
/// tokens given the prompt, the best one predicted.
pub fn score_task<B: Backend>(
    model: &Llama<B>,
    tokenizer: &TextTokenizer,
    path: &Path,
    task: SuperGlueTask,
    max_len: usize,
    batch_size: usize,
) -> Result<TaskScores> {
    let set = load_scoring_set(path, task, tokenizer, &EncodeConfig::with_max_len(max_len))?;
    let pad = PaddingConfig::for_tokenizer(tokenizer);
    let flat: Vec<&Example> = set.examples.iter().flat_map(|e| e.candidates.iter()).collect();
    let mut scores = Vec::with_capacity(flat.len());
    for chunk in flat.chunks(batch_size) {
        let batch = to_model_batch(&collate(chunk.iter().copied(), &pad)?)?;
        scores.extend(row_log_likelihoods(model, &batch));
    }
    let mut per_example = Vec::with_capacity(set.examples.len());
    let mut it = scores.into_iter();
    for e in &set.examples {
        per_example.push(it.by_ref().take(e.candidates.len()).collect::<Vec<f64>>());
    }
    let accuracy = lomo_data::accuracy(&set.examples, &per_example)?;
    let (mut nll, mut tokens) = (0.0, 0usize);
    for (e, scores) in set.examples.iter().zip(&per_example) {
        nll -= scores[e.gold];
        tokens += e.candidates[e.gold].num_targets();
    }
    Ok(TaskScores { accuracy, gold_loss: nll / tokens.max(1) as f64, examples: set.examples.len() })
}

/// The summed log-likelihood of each row's supervised tokens (HF's shift: position t's
/// logits predict label t + 1). Only those positions go through the LM head.
pub fn row_log_likelihoods<B: Backend>(model: &Llama<B>, batch: &Batch) -> Vec<f64> {
    let log_probs = model.target_log_probs(batch).into_data().convert::<f64>().to_vec::<f64>().unwrap_or_default();
    let mut sums = vec![0.0; batch.batch_size()];
    for (&(position, _), log_p) in batch.targets().iter().zip(log_probs) {
        sums[position / batch.seq_len()] += log_p;
    }
    sums
}

/// lomo-data's plain arrays as the model's batch.
pub fn to_model_batch(batch: &lomo_data::Batch) -> Result<Batch> {
    Ok(Batch::new(
        batch.input_ids.clone(),
        Some(batch.attention_mask.clone()),
        Some(batch.labels.clone()),
        batch.shape(),
    )?)
}

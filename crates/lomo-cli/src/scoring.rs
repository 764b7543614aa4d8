//! Scoring a model on a dataset: loss and perplexity, and accuracy on a SuperGLUE task by
//! scoring every candidate answer with its summed log-likelihood. `lomo eval` prints it;
//! `lomo train --eval` runs it during training.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use burn::tensor::backend::Backend;
use lomo_data::{
    collate, load_scoring_set, EncodeConfig, Example, PaddingConfig, ScoringSet, SuperGlueTask, TextTokenizer,
    IGNORE_INDEX,
};
use lomo_models::batch::first_outside_vocab;
use lomo_models::{Batch, Llama};
use serde::Serialize;

use crate::args::FormatArg;
use crate::data::{load_training, model_batch};
use crate::model::require_tokenizer;

/// What `lomo eval` prints, one JSON line.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EvalResult {
    pub loss: f64,
    pub perplexity: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    pub examples: usize,
}

/// Loss over `path` (the training format of the file) and, for a task, accuracy.
pub fn evaluate<B: lomo_kernels::FusedKernels>(
    model: &Llama<B>,
    tokenizer: Option<&TextTokenizer>,
    path: &Path,
    format: Option<FormatArg>,
    task: Option<SuperGlueTask>,
    max_len: usize,
    batch_size: usize,
) -> Result<EvalResult> {
    EvalSet::load(path, format, task, tokenizer, max_len, model.config().vocab_size)?.evaluate(model, batch_size)
}

/// An evaluation file read, tokenized and checked against the model's vocabulary once: a
/// training run reads its `--eval` file before its first step (a bad line is found then, not
/// hours in) and scores the same set at every evaluation.
pub enum EvalSet {
    /// A SuperGLUE task's examples, each with its candidate answers.
    Task { set: ScoringSet, pad: PaddingConfig },
    /// Examples in a training format, for their loss.
    Loss { path: PathBuf, examples: Vec<Example>, pad: PaddingConfig },
}

impl EvalSet {
    /// Reads `path` as `task`'s file (or, without a task, in the training format `format`
    /// detects) and refuses a token id outside a vocabulary of `vocab`, naming the example.
    pub fn load(
        path: &Path,
        format: Option<FormatArg>,
        task: Option<SuperGlueTask>,
        tokenizer: Option<&TextTokenizer>,
        max_len: usize,
        vocab: usize,
    ) -> Result<Self> {
        if let Some(task) = task {
            let tokenizer = require_tokenizer(tokenizer, "a SuperGLUE task")?;
            let set = load_scoring_set(path, task, tokenizer, &EncodeConfig::with_max_len(max_len))?;
            check_vocab(vocab, path, set.examples.iter().map(|e| e.candidates.as_slice()))?;
            return Ok(Self::Task { set, pad: PaddingConfig::for_tokenizer(tokenizer) });
        }
        let dataset = load_training(&[path.to_path_buf()], format, None, tokenizer, max_len, false)?;
        check_vocab(vocab, path, dataset.examples.iter().map(std::slice::from_ref))?;
        let pad = tokenizer.map(PaddingConfig::for_tokenizer).unwrap_or_default();
        Ok(Self::Loss { path: path.to_path_buf(), examples: dataset.examples, pad })
    }

    /// Loss and perplexity of `model` on the set and, for a task, accuracy; `batch_size` rows
    /// at a time.
    pub fn evaluate<B: lomo_kernels::FusedKernels>(&self, model: &Llama<B>, batch_size: usize) -> Result<EvalResult> {
        match self {
            // One pass: every candidate is scored; the gold candidates' scores give the loss on
            // the answers, the argmax over candidates the accuracy.
            Self::Task { set, pad } => {
                let scored = score_task(model, set, pad, batch_size)?;
                Ok(EvalResult {
                    loss: scored.gold_loss,
                    perplexity: scored.gold_loss.exp(),
                    accuracy: Some(scored.accuracy),
                    examples: scored.examples,
                })
            }
            Self::Loss { path, examples, pad } => {
                let (mut loss_sum, mut targets) = (0.0, 0usize);
                for chunk in examples.chunks(batch_size) {
                    let batch = model_batch(&collate(chunk.iter(), pad)?)?;
                    let sums = row_log_likelihoods(model, &batch)?;
                    loss_sum -= sums.iter().sum::<f64>();
                    targets += batch.num_targets();
                }
                if targets == 0 {
                    bail!("{}: no supervised tokens to take a loss on", path.display());
                }
                let loss = loss_sum / targets as f64;
                Ok(EvalResult { loss, perplexity: loss.exp(), accuracy: None, examples: examples.len() })
            }
        }
    }
}

/// Refuses a token id outside a vocabulary of `vocab`, naming the example (counting from 1) of
/// `path` whose rows (its candidates, for a task) hold it.
fn check_vocab<'a>(vocab: usize, path: &Path, examples: impl Iterator<Item = &'a [Example]>) -> Result<()> {
    for (i, rows) in examples.enumerate() {
        if let Some((_, id)) = first_outside_vocab(rows.iter().map(|r| r.input_ids.as_slice()), vocab) {
            bail!("{}: example {} has token id {id}, outside the model's vocabulary of {vocab}", path.display(), i + 1);
        }
    }
    Ok(())
}

/// A SuperGLUE file scored.
pub struct TaskScores {
    pub accuracy: f64,
    /// Mean negative log-likelihood per token of the gold answers.
    pub gold_loss: f64,
    pub examples: usize,
}

/// Scores `model` on a SuperGLUE set: each candidate by the summed log-likelihood of its
/// tokens given the prompt, the best one predicted.
pub fn score_task<B: lomo_kernels::FusedKernels>(
    model: &Llama<B>,
    set: &ScoringSet,
    pad: &PaddingConfig,
    batch_size: usize,
) -> Result<TaskScores> {
    let candidates: Vec<&[Example]> = set.examples.iter().map(|e| e.candidates.as_slice()).collect();
    let per_example = score_candidates(model, &candidates, pad, batch_size)?;
    let accuracy = lomo_data::accuracy(&set.examples, &per_example)?;
    let (mut nll, mut tokens) = (0.0, 0usize);
    for (e, scores) in set.examples.iter().zip(&per_example) {
        nll -= scores[e.gold];
        tokens += e.candidates[e.gold].num_targets();
    }
    Ok(TaskScores { accuracy, gold_loss: nll / tokens.max(1) as f64, examples: set.examples.len() })
}

/// The summed log-likelihood of the targets of every candidate of every example (`[example]
/// [candidate]`), as [`row_log_likelihoods`] of each candidate alone would give.
///
/// Candidates of one example whose only target is their last token and that agree on every
/// token before it (a prompt and a one-token answer, as RTE's " Yes" / " No") are read off one
/// row: the prompt runs once and each answer's log-probability comes from the same
/// distribution. Other candidates run as rows of their own. Rows run `batch_size` at a time.
pub fn score_candidates<B: lomo_kernels::FusedKernels>(
    model: &Llama<B>,
    examples: &[&[Example]],
    pad: &PaddingConfig,
    batch_size: usize,
) -> Result<Vec<Vec<f64>>> {
    // Each row to run, and what to read from it: (position, token, example, candidate).
    let mut rows: Vec<Example> = Vec::new();
    let mut reads: Vec<Vec<(usize, i64, usize, usize)>> = Vec::new();
    for (e, candidates) in examples.iter().enumerate() {
        let mut merged: Vec<usize> = Vec::new(); // this example's rows holding a shared prompt
        for (c, candidate) in candidates.iter().enumerate() {
            let n = candidate.input_ids.len();
            let last_only = n >= 2
                && candidate.labels[n - 1] != IGNORE_INDEX
                && candidate.labels[1..n - 1].iter().all(|&l| l == IGNORE_INDEX);
            if !last_only {
                reads.push(
                    (1..n)
                        .filter(|&t| candidate.labels[t] != IGNORE_INDEX)
                        .map(|t| (t - 1, candidate.labels[t], e, c))
                        .collect(),
                );
                rows.push(candidate.clone());
                continue;
            }
            let prompt = &candidate.input_ids[..n - 1];
            let read = (n - 2, candidate.labels[n - 1], e, c);
            match merged.iter().find(|&&row| rows[row].input_ids == prompt) {
                Some(&row) => reads[row].push(read),
                None => {
                    merged.push(rows.len());
                    rows.push(Example { input_ids: prompt.to_vec(), labels: vec![IGNORE_INDEX; n - 1] });
                    reads.push(vec![read]);
                }
            }
        }
    }
    let mut scores: Vec<Vec<f64>> = examples.iter().map(|c| vec![0.0; c.len()]).collect();
    for (chunk, chunk_reads) in rows.chunks(batch_size).zip(reads.chunks(batch_size)) {
        let batch = model_batch(&collate(chunk.iter(), pad)?)?;
        let seq_len = batch.seq_len();
        let flat: Vec<(usize, i64)> = chunk_reads
            .iter()
            .enumerate()
            .flat_map(|(r, row_reads)| row_reads.iter().map(move |&(t, token, _, _)| (r * seq_len + t, token)))
            .collect();
        let log_probs = host_values(model.log_probs(&batch, &flat))?;
        for (&(_, _, e, c), log_p) in chunk_reads.iter().flatten().zip(log_probs) {
            scores[e][c] += log_p;
        }
    }
    Ok(scores)
}

/// The summed log-likelihood of each row's supervised tokens (HF's shift: position t's
/// logits predict label t + 1). Only those positions go through the LM head.
pub fn row_log_likelihoods<B: lomo_kernels::FusedKernels>(model: &Llama<B>, batch: &Batch) -> Result<Vec<f64>> {
    let targets = batch.targets();
    let log_probs = host_values(model.log_probs(batch, &targets))?;
    let mut sums = vec![0.0; batch.batch_size()];
    for (&(position, _), log_p) in targets.iter().zip(log_probs) {
        sums[position / batch.seq_len()] += log_p;
    }
    Ok(sums)
}

/// A tensor's values on the host, as f64.
fn host_values<B: Backend>(tensor: burn::tensor::Tensor<B, 1>) -> Result<Vec<f64>> {
    tensor.into_data().convert::<f64>().to_vec::<f64>().map_err(|e| anyhow::anyhow!("reading log-probabilities: {e:?}"))
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;
    use lomo_models::presets::preset;
    use lomo_models::StorageDtype;

    use super::*;

    fn answer(prompt: &[u32], answer: &[u32]) -> Example {
        let input_ids: Vec<u32> = prompt.iter().chain(answer).copied().collect();
        let labels = (0..input_ids.len())
            .map(|t| if t < prompt.len() { IGNORE_INDEX } else { i64::from(input_ids[t]) })
            .collect();
        Example { input_ids, labels }
    }

    /// Merged prompts read the same numbers as every candidate run alone.
    #[test]
    fn shared_prompts_score_as_separate_rows() {
        let model = lomo_models::load::<Flex>(
            lomo_models::TensorSource::Init { config: &preset("stories260k").unwrap(), seed: 7 },
            lomo_models::Residency::Resident,
            StorageDtype::F32,
            &burn::backend::flex::FlexDevice,
        )
        .unwrap()
        .model;
        let examples = [
            // One-token answers after one prompt: one row for the three.
            vec![answer(&[1, 5, 9, 33, 2], &[40]), answer(&[1, 5, 9, 33, 2], &[41]), answer(&[1, 5, 9, 33, 2], &[7])],
            // Multi-token answers (COPA-like) and a one-token one with another prompt length.
            vec![answer(&[1, 8, 8], &[100, 101, 102]), answer(&[1, 8, 8, 12, 13, 14, 15], &[3])],
            vec![answer(&[1, 3], &[4]), answer(&[1, 3], &[4])],
        ];
        let refs: Vec<&[Example]> = examples.iter().map(Vec::as_slice).collect();
        let pad = PaddingConfig::default();
        for batch_size in [1, 2, 8] {
            let merged = score_candidates(&model, &refs, &pad, batch_size).unwrap();
            for (e, candidates) in examples.iter().enumerate() {
                for (c, candidate) in candidates.iter().enumerate() {
                    let alone = model_batch(&collate([candidate], &pad).unwrap()).unwrap();
                    let want = row_log_likelihoods(&model, &alone).unwrap()[0];
                    let got = merged[e][c];
                    assert!(
                        want < 0.0 && (want - got).abs() <= 1e-5,
                        "example {e} candidate {c}, batches of {batch_size}: {got} vs {want}"
                    );
                }
            }
        }
    }
}

//! SuperGLUE classification as the LOMO paper trains and scores it (its code follows MeZO).
//!
//! Each example becomes a *source* (the prompt) and a list of *choices*; the gold choice is
//! trained as `source + choice + EOS` with the loss on the choice and EOS only. At evaluation
//! every choice is scored by the summed log-likelihood of its tokens given the source, and the
//! best one is the prediction. Prompts, choices and label mappings are those of
//! `shared/design/superglue.md`, read from the official SuperGLUE JSONL field names.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{DataError, Result};
use crate::example::{encode_prompt_answer, EncodeConfig, Example, Overlong};
use crate::formats::fields::Fields;
use crate::formats::reader::{Layout, RawRecord, RecordReader};
use crate::tokenizer::TextTokenizer;

/// The SuperGLUE tasks of the LOMO paper (and CB).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum SuperGlueTask {
    /// Recognizing Textual Entailment.
    Rte,
    /// CommitmentBank.
    Cb,
    /// Choice of Plausible Alternatives.
    Copa,
    /// Boolean Questions.
    BoolQ,
    /// Word-in-Context.
    Wic,
    /// Winograd Schema Challenge.
    Wsc,
    /// Multi-Sentence Reading Comprehension (one example per question-answer pair).
    MultiRc,
}

impl SuperGlueTask {
    /// Every task.
    pub const ALL: [SuperGlueTask; 7] =
        [Self::Rte, Self::Cb, Self::Copa, Self::BoolQ, Self::Wic, Self::Wsc, Self::MultiRc];

    /// The official name (`RTE`, `BoolQ`, `MultiRC`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::Rte => "RTE",
            Self::Cb => "CB",
            Self::Copa => "COPA",
            Self::BoolQ => "BoolQ",
            Self::Wic => "WiC",
            Self::Wsc => "WSC",
            Self::MultiRc => "MultiRC",
        }
    }

    /// The task of a name, case-insensitively (`rte`, `MultiRC`, `wsc`).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name().eq_ignore_ascii_case(name))
    }
}

/// One classification example as text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuperGlueExample {
    /// The task.
    pub task: SuperGlueTask,
    /// The line of the JSONL file it came from.
    pub line: usize,
    /// The prompt; a choice's text follows it directly.
    pub source: String,
    /// Candidate answers, in the task's fixed order.
    pub choices: Vec<String>,
    /// Index of the gold choice.
    pub gold: usize,
}

/// "brown" prompts: the parts joined by newlines, then a newline and `Answer: `.
fn brown(parts: &[&str]) -> String {
    format!("{}\nAnswer: ", parts.join("\n"))
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// Maps a string label to its choice index, or says which labels are allowed.
fn label_index(fields: &Fields<'_>, allowed: &[&str]) -> Result<usize> {
    let label = fields.str("label")?;
    allowed
        .iter()
        .position(|a| *a == label)
        .ok_or_else(|| fields.error("label", format!("{label:?} is not one of {allowed:?}")))
}

/// A 0/1 label given as a boolean (BoolQ, WiC, WSC) or an integer (MultiRC answers); anything
/// else is an error.
fn binary_label(fields: &Fields<'_>) -> Result<usize> {
    if let Ok(b) = fields.bool("label") {
        return Ok(usize::from(b));
    }
    match fields.int("label") {
        Ok(v @ (0 | 1)) => Ok(v as usize),
        Ok(v) => Err(fields.error("label", format!("{v} is not 0 or 1"))),
        Err(_) => Err(fields.error("label", "expected true/false or 0/1")),
    }
}

/// Turns one official-format record into examples (MultiRC gives one per answer, the others
/// one).
pub fn parse_superglue_record(
    task: SuperGlueTask,
    value: &Value,
    path: &Path,
    line: usize,
) -> Result<Vec<SuperGlueExample>> {
    let f = Fields::record(path, line, value)?;
    let one = |source: String, choices: &[&str], gold: usize| {
        Ok(vec![SuperGlueExample { task, line, source, choices: strings(choices), gold }])
    };
    match task {
        SuperGlueTask::Rte => {
            let part =
                format!("{}\nDoes this mean that \"{}\" is true? Yes or No?", f.str("premise")?, f.str("hypothesis")?);
            one(brown(&[&part]), &["Yes", "No"], label_index(&f, &["entailment", "not_entailment"])?)
        }
        SuperGlueTask::Cb => {
            let part = format!(
                "Suppose {} Can we infer that \"{}\"? Yes, No, or Maybe?",
                f.str("premise")?,
                f.str("hypothesis")?
            );
            let gold = label_index(&f, &["entailment", "contradiction", "neutral"])?;
            one(brown(&[&part]), &["Yes", "No", "Maybe"], gold)
        }
        SuperGlueTask::BoolQ => {
            let part = format!("{} {}", f.str("passage")?, f.str("question")?);
            one(brown(&[&part]), &["No", "Yes"], binary_label(&f)?)
        }
        SuperGlueTask::Wic => {
            let part = format!(
                "Does the word \"{}\" have the same meaning in these two sentences? Yes, No?\n{}\n{}",
                f.str("word")?,
                f.str("sentence1")?,
                f.str("sentence2")?
            );
            one(brown(&[&part]), &["No", "Yes"], binary_label(&f)?)
        }
        SuperGlueTask::Wsc => {
            let target = f.object("target")?;
            let part = format!(
                "{}\nIn the previous sentence, does the pronoun \"{}\" refer to \"{}\"? Yes or No?",
                f.str("text")?,
                target.str("span2_text")?,
                target.str("span1_text")?
            );
            one(brown(&[&part]), &["No", "Yes"], binary_label(&f)?)
        }
        SuperGlueTask::Copa => {
            let premise = f.str("premise")?;
            let connector = match f.str("question")? {
                "effect" => "so",
                "cause" => "because",
                other => return Err(f.error("question", format!("{other:?} is not \"cause\" or \"effect\""))),
            };
            let choices = [f.str("choice1")?, f.str("choice2")?];
            let gold = match f.int("label")? {
                v @ (0 | 1) => v as usize,
                v => return Err(f.error("label", format!("{v} is not 0 or 1"))),
            };
            // "natural" prompt: no "Answer: ", the choice continues the sentence.
            one(format!("{premise} {connector} "), &choices, gold)
        }
        SuperGlueTask::MultiRc => {
            let passage = f.object("passage")?;
            let text = passage.str("text")?;
            let mut out = Vec::new();
            for (qi, question) in passage.array("questions")?.iter().enumerate() {
                let q = passage.element("questions", qi, question)?;
                let question_text = format!("Question: {}", q.str("question")?);
                for (ai, answer) in q.array("answers")?.iter().enumerate() {
                    let a = q.element("answers", ai, answer)?;
                    let answer_part =
                        format!("I found this answer \"{}\". Is that correct? Yes or No?", a.str("text")?);
                    out.push(SuperGlueExample {
                        task,
                        line,
                        source: brown(&[text, &question_text, &answer_part]),
                        choices: strings(&["No", "Yes"]),
                        gold: binary_label(&a)?,
                    });
                }
            }
            if out.is_empty() {
                return Err(passage.error("questions", "has no question with an answer"));
            }
            Ok(out)
        }
    }
}

/// Reads a task's official JSONL file (streamed line by line).
pub fn read_superglue(path: impl AsRef<Path>, task: SuperGlueTask) -> Result<Vec<SuperGlueExample>> {
    let path = path.as_ref();
    let mut reader = RecordReader::open(path, Layout::JsonLines)?;
    let mut out = Vec::new();
    while let Some(record) = reader.next_record()? {
        if let RawRecord::Json { line, value } = record {
            out.extend(parse_superglue_record(task, &value, path, line)?);
        }
    }
    if out.is_empty() {
        return Err(DataError::EmptyDataset { path: path.to_path_buf(), detail: format!("no {} record", task.name()) });
    }
    Ok(out)
}

/// One example prepared for scoring: one sequence per choice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScoringExample {
    /// `source + choice` per choice, labels only on the choice's tokens (no EOS: the score is
    /// the likelihood of the answer text). Sum the log-likelihood of each row's labels (with
    /// HF's shift) to score it.
    pub candidates: Vec<Example>,
    /// Index of the gold candidate.
    pub gold: usize,
}

impl SuperGlueExample {
    /// The training example: `source + gold choice + EOS`, loss on the choice and EOS, cut to
    /// `config.max_len` by dropping prompt tokens. `Ok(None)` when the answer alone is too long
    /// and `config.overlong` asks to skip.
    pub fn train_example(
        &self,
        tokenizer: &TextTokenizer,
        config: &EncodeConfig,
        path: &Path,
    ) -> Result<Option<Example>> {
        let eos = tokenizer.require_eos("a SuperGLUE training example")?;
        let example = encode_prompt_answer(tokenizer, &self.source, &self.choices[self.gold], Some(eos))?;
        fit_or_skip(example, tokenizer.bos_id(), config, path, self.line)
    }

    /// The scoring sequences of every choice, cut to `config.max_len`. `Ok(None)` when a
    /// choice alone is too long and `config.overlong` asks to skip.
    pub fn scoring_example(
        &self,
        tokenizer: &TextTokenizer,
        config: &EncodeConfig,
        path: &Path,
    ) -> Result<Option<ScoringExample>> {
        let mut candidates = Vec::with_capacity(self.choices.len());
        for choice in &self.choices {
            let example = encode_prompt_answer(tokenizer, &self.source, choice, None)?;
            match fit_or_skip(example, tokenizer.bos_id(), config, path, self.line)? {
                Some(e) => candidates.push(e),
                None => return Ok(None),
            }
        }
        Ok(Some(ScoringExample { candidates, gold: self.gold }))
    }
}

/// Fits `example` into `config.max_len`; `Ok(None)` when it cannot fit and skipping is asked.
pub(crate) fn fit_or_skip(
    example: Example,
    bos_id: Option<u32>,
    config: &EncodeConfig,
    path: &Path,
    line: usize,
) -> Result<Option<Example>> {
    match config.fit(example, bos_id) {
        Ok(e) => Ok(Some(e)),
        Err(_) if config.overlong == Overlong::Skip => Ok(None),
        Err(answer_tokens) => {
            Err(DataError::AnswerTooLong { path: path.to_path_buf(), line, answer_tokens, max_len: config.max_len })
        }
    }
}

/// A scoring set: the examples, and how many were skipped as too long.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScoringSet {
    /// The examples to score.
    pub examples: Vec<ScoringExample>,
    /// Examples skipped because a choice alone exceeded `max_len` (only with
    /// [`Overlong::Skip`]).
    pub skipped_too_long: usize,
}

/// Reads a task's file and prepares every example for scoring.
pub fn load_scoring_set(
    path: impl AsRef<Path>,
    task: SuperGlueTask,
    tokenizer: &TextTokenizer,
    config: &EncodeConfig,
) -> Result<ScoringSet> {
    let path = path.as_ref();
    let mut set = ScoringSet { examples: Vec::new(), skipped_too_long: 0 };
    for example in read_superglue(path, task)? {
        match example.scoring_example(tokenizer, config, path)? {
            Some(e) => set.examples.push(e),
            None => set.skipped_too_long += 1,
        }
    }
    if set.examples.is_empty() {
        return Err(DataError::EmptyDataset {
            path: path.to_path_buf(),
            detail: format!("all {} examples were skipped as too long", set.skipped_too_long),
        });
    }
    Ok(set)
}

/// The index of the highest score (the first on ties; NaN never wins), `None` when there is no
/// finite-or-infinite score to choose from.
pub fn predict(log_likelihoods: &[f64]) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, &score) in log_likelihoods.iter().enumerate() {
        if score.is_nan() {
            continue;
        }
        if best.is_none_or(|(_, b)| score > b) {
            best = Some((i, score));
        }
    }
    best.map(|(i, _)| i)
}

/// Accuracy: the fraction of examples whose highest-scoring candidate is the gold one.
/// `log_likelihoods[i][c]` is the summed log-likelihood of candidate `c` of example `i`.
pub fn accuracy(examples: &[ScoringExample], log_likelihoods: &[Vec<f64>]) -> Result<f64> {
    if examples.is_empty() {
        return Err(DataError::InvalidConfig("accuracy of zero examples".into()));
    }
    if examples.len() != log_likelihoods.len() {
        return Err(DataError::InvalidConfig(format!(
            "{} examples but {} score lists",
            examples.len(),
            log_likelihoods.len()
        )));
    }
    let mut correct = 0usize;
    for (i, (example, scores)) in examples.iter().zip(log_likelihoods).enumerate() {
        if scores.len() != example.candidates.len() {
            return Err(DataError::InvalidConfig(format!(
                "example {i} has {} candidates but {} scores",
                example.candidates.len(),
                scores.len()
            )));
        }
        if predict(scores) == Some(example.gold) {
            correct += 1;
        }
    }
    Ok(correct as f64 / examples.len() as f64)
}

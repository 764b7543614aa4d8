//! One training example (token ids and labels), how text becomes one, and how one that is too
//! long is cut to fit.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::templates::ChatTemplate;
use crate::tokenizer::TextTokenizer;

/// The label of a position that takes no loss (PyTorch's `CrossEntropyLoss` `ignore_index`).
pub const IGNORE_INDEX: i64 = -100;

/// A tokenized example: token ids and, for each, the label it is trained on, or
/// [`IGNORE_INDEX`]. Labels are *not* shifted: as in HF, position t's logits predict `labels[t+1]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    /// Token ids.
    pub input_ids: Vec<u32>,
    /// One label per token: the token itself where the loss is taken, [`IGNORE_INDEX`] elsewhere.
    pub labels: Vec<i64>,
}

impl Example {
    /// An example that learns every token (plain language modelling).
    pub fn all_supervised(input_ids: Vec<u32>) -> Self {
        let labels = input_ids.iter().map(|&t| i64::from(t)).collect();
        Self { input_ids, labels }
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    /// Whether the example has no token.
    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// Targets the loss is taken on, with HF's shift: labels at positions 1.. that are not
    /// [`IGNORE_INDEX`] (position 0 is never predicted).
    pub fn num_targets(&self) -> usize {
        self.labels.iter().skip(1).filter(|&&l| l != IGNORE_INDEX).count()
    }

    /// Index of the first supervised token: everything before it is prompt, which truncation may
    /// cut; everything from it on is the answer, which truncation keeps. `len()` when nothing is
    /// supervised.
    pub fn answer_start(&self) -> usize {
        self.labels.iter().position(|&l| l != IGNORE_INDEX).unwrap_or(self.labels.len())
    }
}

/// Which prompt tokens go when an example is longer than `max_len`. The answer (from the first
/// supervised token on) is never cut, and a leading BOS is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Truncation {
    /// Drop the earliest prompt tokens: the end of the prompt, next to the answer, stays
    /// (HF's `truncation_side="left"`).
    #[default]
    Left,
    /// Keep the start and the end of the prompt (the instruction header and the `Answer:` cue)
    /// and drop from the middle.
    Middle,
}

/// What happens to an example whose answer alone does not fit in `max_len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Overlong {
    /// Stop with [`crate::DataError::AnswerTooLong`] naming the record.
    #[default]
    Error,
    /// Skip the example and count it (see `skipped_too_long` on datasets and streams).
    Skip,
}

/// How records become examples.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncodeConfig {
    /// Maximum tokens per example; plain text is packed into windows of exactly this length.
    pub max_len: usize,
    /// Which prompt tokens truncation drops.
    pub truncation: Truncation,
    /// What to do with an example whose answer alone exceeds `max_len`.
    pub overlong: Overlong,
    /// The template of chat data.
    pub chat_template: ChatTemplate,
}

impl Default for EncodeConfig {
    fn default() -> Self {
        Self {
            max_len: 512,
            truncation: Truncation::default(),
            overlong: Overlong::default(),
            chat_template: ChatTemplate::default(),
        }
    }
}

impl EncodeConfig {
    /// A config with `max_len` and the defaults otherwise.
    pub fn with_max_len(max_len: usize) -> Self {
        Self { max_len, ..Self::default() }
    }

    /// Cuts prompt tokens of `example` until it fits in `max_len` (see [`Truncation`]).
    /// `bos_id` is kept when it is the first token. Returns the answer's length as the error
    /// when the answer alone does not fit.
    pub fn fit(&self, example: Example, bos_id: Option<u32>) -> Result<Example, usize> {
        fit(example, self.max_len, self.truncation, bos_id)
    }
}

fn fit(example: Example, max_len: usize, truncation: Truncation, bos_id: Option<u32>) -> Result<Example, usize> {
    let len = example.len();
    if len <= max_len {
        return Ok(example);
    }
    let answer_start = example.answer_start();
    let answer_len = len - answer_start;
    if answer_len > max_len {
        return Err(answer_len);
    }
    let budget = max_len - answer_len;
    // A BOS marks the start of a sequence for the model; dropping it changes what every later
    // position sees far more than dropping an ordinary prompt token.
    let keeps_bos = budget > 0 && answer_start > 0 && bos_id.is_some_and(|b| example.input_ids[0] == b);
    let head = match truncation {
        Truncation::Left => usize::from(keeps_bos),
        Truncation::Middle => budget.div_ceil(2).max(usize::from(keeps_bos)),
    };
    let tail = budget - head;
    Ok(Example {
        input_ids: keep_ends(&example.input_ids, head, answer_start - tail),
        labels: keep_ends(&example.labels, head, answer_start - tail),
    })
}

/// `v[..head]` followed by `v[tail_from..]`.
fn keep_ends<T: Copy>(v: &[T], head: usize, tail_from: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(head + v.len() - tail_from);
    out.extend_from_slice(&v[..head]);
    out.extend_from_slice(&v[tail_from..]);
    out
}

/// Encodes `prompt + answer` as one string (so BPE sees the text the model will see) and
/// supervises the tokens from the first one that reaches past the prompt's text; `eos` is
/// appended, supervised, when given. The tokenizer's special tokens (BOS) are added.
///
/// The prompt's trailing whitespace counts as the answer's: the SuperGLUE prompts end in
/// `"Answer: "`, and tokenizers fold that space into the next word (`"▁Yes"`), or not
/// (`"▁"`, `"M"`, `"aybe"`), depending on the word. Splitting after the trimmed prompt gives
/// every candidate answer the same prompt tokens, as MeZO/LOMO do by tokenizing
/// `prompt.strip()`; a token the prompt only half supplies could not be given as input anyway.
pub fn encode_prompt_answer(
    tokenizer: &TextTokenizer,
    prompt: &str,
    answer: &str,
    eos: Option<u32>,
) -> Result<Example> {
    let text = format!("{prompt}{answer}");
    let (ids, offsets) = tokenizer.encode_with_offsets(&text, true)?;
    let boundary = prompt.trim_end().len();
    let split = offsets.iter().position(|&(start, end)| end > boundary && end > start).unwrap_or(ids.len());
    let mut input_ids = ids;
    let mut labels: Vec<i64> =
        input_ids.iter().enumerate().map(|(i, &t)| if i >= split { i64::from(t) } else { IGNORE_INDEX }).collect();
    if let Some(eos) = eos {
        input_ids.push(eos);
        labels.push(i64::from(eos));
    }
    Ok(Example { input_ids, labels })
}

/// Encodes `text` and supervises the tokens that overlap any of `spans` (byte ranges of `text`);
/// used for multi-turn chat, where every assistant turn is learned. `add_special_tokens`: whether
/// the tokenizer adds BOS (a model's chat template writes its own).
pub fn encode_spans(
    tokenizer: &TextTokenizer,
    text: &str,
    spans: &[Range<usize>],
    add_special_tokens: bool,
) -> Result<Example> {
    let (input_ids, offsets) = tokenizer.encode_with_offsets(text, add_special_tokens)?;
    let labels = input_ids
        .iter()
        .zip(&offsets)
        .map(|(&t, &(start, end))| {
            let supervised = end > start && spans.iter().any(|s| start < s.end && end > s.start);
            if supervised {
                i64::from(t)
            } else {
                IGNORE_INDEX
            }
        })
        .collect();
    Ok(Example { input_ids, labels })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(prompt: usize, answer: usize) -> Example {
        let input_ids: Vec<u32> = (1..=(prompt + answer) as u32).collect();
        let labels =
            input_ids.iter().enumerate().map(|(i, &t)| if i < prompt { IGNORE_INDEX } else { i64::from(t) }).collect();
        Example { input_ids, labels }
    }

    #[test]
    fn short_examples_are_untouched() {
        let e = example(3, 2);
        assert_eq!(fit(e.clone(), 5, Truncation::Left, Some(1)), Ok(e));
    }

    #[test]
    fn left_truncation_keeps_bos_and_the_end_of_the_prompt() {
        // ids 1..=10, prompt 1..=6, answer 7..=10; BOS is id 1.
        let e = fit(example(6, 4), 7, Truncation::Left, Some(1)).unwrap();
        assert_eq!(e.input_ids, vec![1, 5, 6, 7, 8, 9, 10]);
        assert_eq!(e.labels, vec![-100, -100, -100, 7, 8, 9, 10]);
        let e = fit(example(6, 4), 7, Truncation::Left, None).unwrap();
        assert_eq!(e.input_ids, vec![4, 5, 6, 7, 8, 9, 10]);
    }

    #[test]
    fn middle_truncation_keeps_both_ends_of_the_prompt() {
        let e = fit(example(8, 2), 7, Truncation::Middle, Some(1)).unwrap();
        // Budget 5 for the prompt: 3 from the head, 2 from the tail.
        assert_eq!(e.input_ids, vec![1, 2, 3, 7, 8, 9, 10]);
        assert_eq!(e.num_targets(), 2);
    }

    #[test]
    fn the_answer_is_never_cut() {
        assert_eq!(fit(example(2, 6), 5, Truncation::Left, Some(1)), Err(6));
        let e = fit(example(2, 5), 5, Truncation::Middle, Some(1)).unwrap();
        assert_eq!(e.input_ids, vec![3, 4, 5, 6, 7]);
    }

    #[test]
    fn targets_skip_position_zero() {
        let e = Example::all_supervised(vec![1, 2, 3]);
        assert_eq!(e.num_targets(), 2);
        assert_eq!(example(2, 3).num_targets(), 3);
    }
}

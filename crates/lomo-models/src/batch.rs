//! What the model reads for one micro-batch: token ids, attention mask and labels as plain
//! host arrays, so that the same batch drives the autodiff and the tape-free forward.

use crate::error::{ModelError, Result};

/// Labels equal to this are not trained on (PyTorch's `CrossEntropyLoss` `ignore_index`).
pub const IGNORE_INDEX: i64 = -100;

/// The first token id of `rows` that a model with `vocab_size` tokens has no embedding for,
/// with the index of its row: what every command checks its token ids with before they reach
/// the model (a tokenizer or a pre-tokenized file may know more tokens than the model).
pub fn first_outside_vocab<'a>(rows: impl IntoIterator<Item = &'a [u32]>, vocab_size: usize) -> Option<(usize, u32)> {
    rows.into_iter().enumerate().find_map(|(i, row)| row.iter().find(|&&t| t as usize >= vocab_size).map(|&t| (i, t)))
}

/// A batch of `batch_size` rows of `seq_len` tokens, row-major.
///
/// Labels follow HF: `labels[b, t]` is the token expected *at* position t, so position t's
/// logits are scored against `labels[b, t + 1]`; [`IGNORE_INDEX`] marks prompt and padding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    input_ids: Vec<i64>,
    attention_mask: Vec<i64>,
    labels: Vec<i64>,
    batch_size: usize,
    seq_len: usize,
}

impl Batch {
    /// A batch from row-major `[batch_size, seq_len]` arrays. A missing attention mask means
    /// every token is real; missing labels mean nothing is trained on (inference).
    pub fn new(
        input_ids: Vec<i64>,
        attention_mask: Option<Vec<i64>>,
        labels: Option<Vec<i64>>,
        [batch_size, seq_len]: [usize; 2],
    ) -> Result<Self> {
        let n = batch_size * seq_len;
        if n == 0 {
            return Err(ModelError::InvalidBatch(format!("empty shape [{batch_size}, {seq_len}]")));
        }
        let check = |name: &str, len: usize| {
            if len != n {
                return Err(ModelError::InvalidBatch(format!(
                    "{name} has {len} entries, shape [{batch_size}, {seq_len}] needs {n}"
                )));
            }
            Ok(())
        };
        check("input_ids", input_ids.len())?;
        if let Some(id) = input_ids.iter().find(|&&id| id < 0) {
            return Err(ModelError::InvalidBatch(format!("negative token id {id}")));
        }
        let attention_mask = attention_mask.unwrap_or_else(|| vec![1; n]);
        check("attention_mask", attention_mask.len())?;
        let labels = labels.unwrap_or_else(|| vec![IGNORE_INDEX; n]);
        check("labels", labels.len())?;
        Ok(Self { input_ids, attention_mask, labels, batch_size, seq_len })
    }

    /// Rows.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Tokens per row.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// Token ids, row-major.
    pub fn input_ids(&self) -> &[i64] {
        &self.input_ids
    }

    /// Attention mask (1 = real token, 0 = padding), row-major.
    pub fn attention_mask(&self) -> &[i64] {
        &self.attention_mask
    }

    /// Labels, row-major.
    pub fn labels(&self) -> &[i64] {
        &self.labels
    }

    /// The target of position `t` of row `b`: `labels[b, t + 1]`, or `None` when ignored
    /// (the last position has no target).
    pub fn target(&self, b: usize, t: usize) -> Option<i64> {
        if t + 1 >= self.seq_len {
            return None;
        }
        let label = self.labels[b * self.seq_len + t + 1];
        (label != IGNORE_INDEX).then_some(label)
    }

    /// Number of positions with a target: the denominator of HF's mean loss.
    pub fn num_targets(&self) -> usize {
        (0..self.batch_size).map(|b| (0..self.seq_len).filter(|&t| self.target(b, t).is_some()).count()).sum()
    }

    /// Every position with a target, row by row: `(b × seq_len + t, labels[b, t + 1])`.
    /// The loss needs logits at these positions only.
    pub fn targets(&self) -> Vec<(usize, i64)> {
        (0..self.batch_size)
            .flat_map(|b| {
                (0..self.seq_len).filter_map(move |t| self.target(b, t).map(|label| (b * self.seq_len + t, label)))
            })
            .collect()
    }

    /// Whether some token is padding.
    pub fn has_padding(&self) -> bool {
        self.attention_mask.contains(&0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_outside_vocab_names_the_row_and_the_id() {
        let rows: [&[u32]; 3] = [&[1, 2], &[3, 9, 12], &[10]];
        assert_eq!(first_outside_vocab(rows, 10), Some((1, 12)));
        assert_eq!(first_outside_vocab(rows, 13), None);
    }
}

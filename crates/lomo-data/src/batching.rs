//! Examples to a padded [`Batch`], and a batch to micro-batches.

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::example::{Example, IGNORE_INDEX};
use crate::tokenizer::TextTokenizer;

/// How rows are padded. Padding is always on the right (causal LMs read left to right, so the
/// real tokens keep positions 0.. and rotary positions need no offset).
/// The default pads with id 0 to the longest row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PaddingConfig {
    /// The id written at padded positions (masked out and labelled [`IGNORE_INDEX`], so its
    /// value only has to be a valid embedding row).
    pub pad_id: u32,
    /// Round the batch's length up to a multiple of this (helps kernels that like aligned
    /// shapes); `None` pads to the longest row.
    pub pad_to_multiple_of: Option<usize>,
}

impl PaddingConfig {
    /// Pads with the tokenizer's pad token, or 0 when it names none (as most causal LMs do).
    pub fn for_tokenizer(tokenizer: &TextTokenizer) -> Self {
        Self { pad_id: tokenizer.pad_id().unwrap_or(0), pad_to_multiple_of: None }
    }
}

/// A batch of rows, right-padded to one length: three row-major `[batch_size, seq_len]` arrays.
/// The model crate turns them into tensors; this crate does no tensor math.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// Token ids, pad id at padded positions.
    pub input_ids: Vec<i64>,
    /// 1 at real tokens, 0 at padding.
    pub attention_mask: Vec<i64>,
    /// Labels (unshifted, as HF takes them), [`IGNORE_INDEX`] at prompt and padded positions.
    pub labels: Vec<i64>,
    /// Rows.
    pub batch_size: usize,
    /// Columns.
    pub seq_len: usize,
}

impl Batch {
    /// `[batch_size, seq_len]`.
    pub fn shape(&self) -> [usize; 2] {
        [self.batch_size, self.seq_len]
    }

    /// Targets the loss is taken on, with HF's shift (position t predicts label t+1): per row,
    /// the labels at positions 1.. that are not [`IGNORE_INDEX`]. HF's loss is the summed
    /// cross-entropy divided by this number (over the whole batch, not a mean of row means), so
    /// gradient accumulation over micro-batches must divide by the full batch's count.
    pub fn num_targets(&self) -> usize {
        self.labels
            .chunks(self.seq_len.max(1))
            .map(|row| row.iter().skip(1).filter(|&&l| l != IGNORE_INDEX).count())
            .sum()
    }

    /// Real (unpadded) tokens.
    pub fn num_tokens(&self) -> usize {
        self.attention_mask.iter().filter(|&&m| m != 0).count()
    }

    /// Row `i`'s token ids, padding included.
    ///
    /// # Panics
    /// If `i >= batch_size`.
    pub fn row_input_ids(&self, i: usize) -> &[i64] {
        &self.input_ids[i * self.seq_len..(i + 1) * self.seq_len]
    }

    /// Splits the batch into micro-batches of `rows` rows each (the last one smaller when
    /// `rows` does not divide `batch_size`), for gradient accumulation.
    ///
    /// Each micro-batch drops the trailing columns that are padding in all of its rows, so it
    /// is as long as its own longest row (at least one column), not the batch's: rows of very
    /// different lengths then cost their own length, not the longest one of the whole batch.
    /// Only padding goes (masked out, no label; with right padding and causal attention no
    /// kept position reads it), so the loss and gradients are those of the untrimmed rows.
    pub fn micro_batches(&self, rows: usize) -> Result<Vec<Batch>> {
        if rows == 0 {
            return Err(DataError::InvalidConfig("micro-batch size must be at least 1".into()));
        }
        fn row(v: &[i64], r: usize, seq_len: usize) -> &[i64] {
            &v[r * seq_len..(r + 1) * seq_len]
        }
        let seq_len = self.seq_len.max(1);
        let mut out = Vec::with_capacity(self.batch_size.div_ceil(rows));
        for start in (0..self.batch_size).step_by(rows) {
            let end = (start + rows).min(self.batch_size);
            // One past the last column that is real or labelled in some row.
            let width = (start..end)
                .map(|r| {
                    let (mask, labels) = (row(&self.attention_mask, r, seq_len), row(&self.labels, r, seq_len));
                    (0..seq_len).rev().find(|&t| mask[t] != 0 || labels[t] != IGNORE_INDEX).map_or(0, |t| t + 1)
                })
                .max()
                .unwrap_or(0)
                .max(1)
                .min(self.seq_len);
            let take =
                |v: &[i64]| (start..end).flat_map(|r| row(v, r, seq_len)[..width].iter().copied()).collect::<Vec<_>>();
            out.push(Batch {
                batch_size: end - start,
                seq_len: width,
                input_ids: take(&self.input_ids),
                attention_mask: take(&self.attention_mask),
                labels: take(&self.labels),
            });
        }
        Ok(out)
    }
}

/// Pads `examples` on the right into one batch.
pub fn collate<'a>(examples: impl IntoIterator<Item = &'a Example>, padding: &PaddingConfig) -> Result<Batch> {
    let examples: Vec<&Example> = examples.into_iter().collect();
    if examples.is_empty() {
        return Err(DataError::InvalidConfig("cannot collate an empty list of examples".into()));
    }
    let longest = examples.iter().map(|e| e.len()).max().unwrap_or(0);
    let seq_len = match padding.pad_to_multiple_of {
        Some(0) => return Err(DataError::InvalidConfig("pad_to_multiple_of must be at least 1".into())),
        Some(m) => longest.div_ceil(m) * m,
        None => longest,
    };
    let cells = examples.len() * seq_len;
    let mut batch = Batch {
        input_ids: Vec::with_capacity(cells),
        attention_mask: Vec::with_capacity(cells),
        labels: Vec::with_capacity(cells),
        batch_size: examples.len(),
        seq_len,
    };
    for e in examples {
        if e.labels.len() != e.input_ids.len() {
            return Err(DataError::InvalidConfig(format!(
                "an example has {} ids and {} labels",
                e.input_ids.len(),
                e.labels.len()
            )));
        }
        let pad = seq_len - e.len();
        batch.input_ids.extend(e.input_ids.iter().map(|&t| i64::from(t)));
        batch.input_ids.extend(std::iter::repeat_n(i64::from(padding.pad_id), pad));
        batch.attention_mask.extend(std::iter::repeat_n(1, e.len()));
        batch.attention_mask.extend(std::iter::repeat_n(0, pad));
        batch.labels.extend_from_slice(&e.labels);
        batch.labels.extend(std::iter::repeat_n(IGNORE_INDEX, pad));
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> Batch {
        let a = Example::all_supervised(vec![5, 6, 7]);
        let b = Example { input_ids: vec![8, 9], labels: vec![-100, 9] };
        let c = Example::all_supervised(vec![4]);
        collate([&a, &b, &c], &PaddingConfig { pad_id: 3, pad_to_multiple_of: None }).unwrap()
    }

    #[test]
    fn pads_right_with_mask_and_ignored_labels() {
        let b = batch();
        assert_eq!(b.shape(), [3, 3]);
        assert_eq!(b.input_ids, vec![5, 6, 7, 8, 9, 3, 4, 3, 3]);
        assert_eq!(b.attention_mask, vec![1, 1, 1, 1, 1, 0, 1, 0, 0]);
        assert_eq!(b.labels, vec![5, 6, 7, -100, 9, -100, 4, -100, -100]);
        // Row 0: labels 6, 7; row 1: 9; row 2: none.
        assert_eq!(b.num_targets(), 3);
        assert_eq!(b.num_tokens(), 6);
    }

    #[test]
    fn pads_to_a_multiple() {
        let a = Example::all_supervised(vec![1, 2, 3]);
        let b = collate([&a], &PaddingConfig { pad_id: 0, pad_to_multiple_of: Some(4) }).unwrap();
        assert_eq!(b.input_ids, vec![1, 2, 3, 0]);
    }

    #[test]
    fn micro_batches_partition_rows_and_targets() {
        let b = batch();
        let micro = b.micro_batches(2).unwrap();
        assert_eq!(micro.len(), 2);
        assert_eq!(micro[0].shape(), [2, 3]);
        assert_eq!(micro.iter().map(Batch::num_targets).sum::<usize>(), b.num_targets());
        // Row 2 is one token long: its micro-batch drops the two padding columns.
        assert_eq!(micro[1].shape(), [1, 1]);
        assert_eq!((micro[1].input_ids.clone(), micro[1].labels.clone()), (vec![4], vec![4]));
        // Rows 0 and 1 keep row 0's 3 columns (row 1's padding too); one micro-batch of all
        // rows is the batch itself, whose longest row already sets its width.
        let one = b.micro_batches(3).unwrap();
        assert_eq!(one, vec![b.clone()]);
        assert!(b.micro_batches(0).is_err());
    }

    #[test]
    fn empty_collate_is_an_error() {
        assert!(collate(std::iter::empty::<&Example>(), &PaddingConfig::default()).is_err());
    }
}

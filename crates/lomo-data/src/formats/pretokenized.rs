//! Pre-tokenized JSONL: `{"input_ids": [...], "labels": [...]}`, labels optional.

use crate::error::Result;
use crate::example::{Example, IGNORE_INDEX};
use crate::formats::fields::Fields;

/// Parses one record. Ids must be valid (`0..vocab_size` when the vocabulary is known), labels
/// must match the ids in length and be a valid id or -100; missing labels mean "learn every
/// token". A row must have a target (a label past the first position that is not -100: HF's
/// shift never predicts position 0).
pub(crate) fn parse(fields: &Fields<'_>, vocab_size: Option<usize>) -> Result<Example> {
    let limit = vocab_size.map_or(i64::from(u32::MAX), |v| v as i64 - 1);
    let raw_ids = fields.int_array("input_ids")?;
    if raw_ids.is_empty() {
        return Err(fields.error("input_ids", "is empty"));
    }
    let mut input_ids = Vec::with_capacity(raw_ids.len());
    for (i, &id) in raw_ids.iter().enumerate() {
        if !(0..=limit).contains(&id) {
            return Err(fields.error("input_ids", format!("element {i} is {id}, outside the vocabulary 0..={limit}")));
        }
        input_ids.push(id as u32);
    }
    if !fields.has("labels") {
        if input_ids.len() < 2 {
            return Err(fields.error("input_ids", "has one token: nothing to predict (a row needs two)"));
        }
        return Ok(Example::all_supervised(input_ids));
    }
    let labels = fields.int_array("labels")?;
    if labels.len() != input_ids.len() {
        return Err(fields.error("labels", format!("has {} elements, input_ids has {}", labels.len(), input_ids.len())));
    }
    if let Some((i, l)) = labels.iter().enumerate().find(|&(_, &l)| l != IGNORE_INDEX && !(0..=limit).contains(&l)) {
        return Err(fields.error("labels", format!("element {i} is {l}: expected -100 or a token id in 0..={limit}")));
    }
    let example = Example { input_ids, labels };
    // Found here, with its line, rather than when a batch of such rows reaches the loss.
    if example.num_targets() == 0 {
        return Err(fields.error("labels", "every label past the first is -100: there is nothing to learn"));
    }
    Ok(example)
}

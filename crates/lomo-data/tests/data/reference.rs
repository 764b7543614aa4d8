//! The stories260K reference batch: tokenization and padding must reproduce it exactly.

use lomo_data::{
    collate, BatchLoader, DataFormat, Dataset, EncodeConfig, LoaderConfig, PaddingConfig, StreamConfig, StreamingLoader,
};
use serde_json::Value;

fn reference_batch() -> Option<Value> {
    let path = crate::data::common::shared_file("reference/stories260K/batch.json")?;
    Some(serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap())
}

fn rows(value: &Value, key: &str) -> Vec<Vec<i64>> {
    serde_json::from_value(value[key].clone()).unwrap()
}

// gen_reference.py: tok = PreTrainedTokenizerFast(tokenizer_file=...); a = tok(text_a).input_ids[:40]
// tok(...) adds special tokens (the post-processor's <s>, id 1) by default.
const TEXT_A: &str = "Once upon a time there was a little boy named Ben. Ben loved to explore the \
world around him. He saw many amazing things.";
const TEXT_B: &str = "The shopkeeper smiled and said, Of course you can.";

#[test]
fn stories260k_tokenizes_the_reference_texts() {
    let tokenizer = crate::stories_tokenizer!();
    let Some(batch) = reference_batch() else { return };
    let ids = rows(&batch, "input_ids");
    let a = tokenizer.encode(TEXT_A, true).unwrap();
    assert!(a.len() > 40, "text_a is cut to 40 tokens in the reference");
    assert_eq!(a[..40].iter().map(|&t| i64::from(t)).collect::<Vec<_>>(), ids[0]);
    let b = tokenizer.encode(TEXT_B, true).unwrap();
    let b_len = rows(&batch, "attention_mask")[1].iter().sum::<i64>() as usize;
    assert_eq!(b.iter().map(|&t| i64::from(t)).collect::<Vec<_>>(), ids[1][..b_len]);
    assert_eq!(tokenizer.bos_id(), Some(1));
    assert_eq!(tokenizer.eos_id(), Some(2));
    assert_eq!(tokenizer.decode(&b, true).unwrap(), TEXT_B);
}

#[test]
fn padding_the_jsonl_rows_gives_the_reference_batch_back() {
    let jsonl = crate::shared!("reference/stories260K/batch.jsonl");
    let tokenizer = crate::stories_tokenizer!();
    let Some(reference) = reference_batch() else { return };
    let dataset = Dataset::load(&jsonl, None, Some(&tokenizer), &EncodeConfig::with_max_len(512)).unwrap();
    assert_eq!(dataset.len(), 2);
    let batch = collate(&dataset.examples, &PaddingConfig::default()).unwrap();
    assert_eq!(batch.shape(), [2, 40]);
    let flat = |key: &str| rows(&reference, key).concat();
    assert_eq!(batch.input_ids, flat("input_ids"));
    assert_eq!(batch.attention_mask, flat("attention_mask"));
    assert_eq!(batch.labels, flat("labels"));
    // HF's loss divides by the labels at positions 1.. that are not -100: 39 in row 1, and
    // tokens 5..27 of row 2.
    assert_eq!(batch.num_targets(), 39 + (27 - 5));

    // The same through the loaders, in file order.
    let config = LoaderConfig { shuffle: false, ..LoaderConfig::new(2) };
    let mut loader = BatchLoader::new(dataset, config).unwrap();
    assert_eq!(loader.next_batch().unwrap(), batch);
    let stream_config = StreamConfig { shuffle_buffer: 0, ..StreamConfig::new(2) };
    let mut stream = StreamingLoader::open(
        &jsonl,
        Some(DataFormat::PreTokenized),
        None,
        &EncodeConfig::with_max_len(512),
        stream_config,
    )
    .unwrap();
    assert_eq!(stream.next_batch().unwrap(), batch);
}

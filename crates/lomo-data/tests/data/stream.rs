//! Streaming: the same examples as loading whole, bounded shuffling, exact resume.

use lomo_data::{
    DataFormat, Dataset, EncodeConfig, Overlong, PaddingConfig, StreamConfig, StreamPosition, StreamingLoader,
};
use serde_json::Value;

use super::common::temp_file;

fn alpaca_jsonl() -> Option<std::path::PathBuf> {
    let path = crate::data::common::shared_file("data/alpaca_en_demo.json")?;
    let records: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let jsonl: String = records[..200].iter().map(|r| format!("{r}\n")).collect();
    Some(temp_file("alpaca200.jsonl", &jsonl))
}

#[test]
fn an_unshuffled_stream_yields_the_dataset_in_order() {
    let tokenizer = stories_tokenizer!();
    let path = shared!("data/tinystories_sample.txt");
    let encode = EncodeConfig::with_max_len(48);
    let dataset = Dataset::load(&path, None, Some(&tokenizer), &encode).unwrap();
    let config = StreamConfig { shuffle_buffer: 0, ..StreamConfig::new(4) };
    let mut stream = StreamingLoader::open(&path, None, Some(&tokenizer), &encode, config).unwrap();
    let mut streamed = Vec::new();
    while let Some(batch) = stream.next_batch_in_epoch().unwrap() {
        for r in 0..batch.batch_size {
            let row = batch.row_input_ids(r);
            let len = batch.attention_mask[r * batch.seq_len..(r + 1) * batch.seq_len].iter().sum::<i64>();
            streamed.push(row[..len as usize].iter().map(|&t| t as u32).collect::<Vec<_>>());
        }
    }
    let expected: Vec<Vec<u32>> = dataset.examples.iter().map(|e| e.input_ids.clone()).collect();
    assert_eq!(streamed, expected);
    assert_eq!(stream.position().epoch, 1);
}

#[test]
fn a_shuffled_stream_is_a_permutation_that_resumes_exactly() {
    let tokenizer = stories_tokenizer!();
    let Some(path) = alpaca_jsonl() else { return };
    let encode = EncodeConfig { overlong: Overlong::Skip, ..EncodeConfig::with_max_len(192) };
    let config = StreamConfig {
        shuffle_buffer: 64,
        seed: 9,
        padding: PaddingConfig::for_tokenizer(&tokenizer),
        ..StreamConfig::new(8)
    };
    let open =
        || StreamingLoader::open(&path, Some(DataFormat::Alpaca), Some(&tokenizer), &encode, config.clone()).unwrap();
    let dataset = Dataset::load(&path, None, Some(&tokenizer), &encode).unwrap();

    // One epoch is a permutation of the dataset, not its order.
    let mut stream = open();
    let mut rows = 0;
    while let Some(batch) = stream.next_batch_in_epoch().unwrap() {
        rows += batch.batch_size;
    }
    assert_eq!(rows, dataset.len());
    let mut in_order = open();
    let mut unshuffled = StreamingLoader::open(
        &path,
        None,
        Some(&tokenizer),
        &encode,
        StreamConfig { shuffle_buffer: 0, ..config.clone() },
    )
    .unwrap();
    assert_ne!(in_order.next_batch().unwrap(), unshuffled.next_batch().unwrap());

    // Run past an epoch boundary, saving the position two batches before it.
    let per_epoch = dataset.len().div_ceil(8);
    let mut straight = open();
    let mut saved: Option<StreamPosition> = None;
    let mut tail = Vec::new();
    for step in 0..per_epoch + 5 {
        if step == per_epoch - 2 {
            saved = Some(serde_json::from_str(&serde_json::to_string(&straight.position()).unwrap()).unwrap());
        }
        let batch = straight.next_batch().unwrap();
        if step >= per_epoch - 2 {
            tail.push(batch);
        }
    }
    let mut resumed = open();
    resumed.seek(&saved.unwrap()).unwrap();
    for batch in tail {
        assert_eq!(resumed.next_batch().unwrap(), batch);
    }
    // A position from other settings is refused.
    let mut other = StreamingLoader::open(
        &path,
        Some(DataFormat::Alpaca),
        Some(&tokenizer),
        &encode,
        StreamConfig { seed: 10, ..config.clone() },
    )
    .unwrap();
    assert!(other.seek(&saved.unwrap()).is_err());
}

#[test]
fn json_arrays_are_not_streamed() {
    let path = shared!("data/alpaca_en_demo.json");
    let tokenizer = stories_tokenizer!();
    let e = StreamingLoader::open(&path, None, Some(&tokenizer), &EncodeConfig::default(), StreamConfig::new(2));
    assert!(e.err().unwrap().to_string().contains("cannot be streamed"));
}

//! Every format on the shared files, with the stories260K tokenizer.

use lomo_data::{
    alpaca_prompt, detect_format, BatchLoader, DataError, DataFormat, Dataset, EncodeConfig, LoaderConfig, Overlong,
    PaddingConfig, Truncation, IGNORE_INDEX,
};
use serde_json::Value;

use super::common::{supervised_text, temp_file};

#[test]
fn alpaca_json_learns_only_the_response() {
    let tokenizer = stories_tokenizer!();
    let path = shared!("data/alpaca_en_demo.json");
    assert_eq!(detect_format(&path).unwrap(), DataFormat::Alpaca);
    let records: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let dataset = Dataset::load(&path, None, Some(&tokenizer), &EncodeConfig::with_max_len(100_000)).unwrap();
    assert_eq!(dataset.len(), records.len());
    assert_eq!(dataset.skipped_too_long, 0);
    let eos = i64::from(tokenizer.eos_id().unwrap());
    for (example, record) in dataset.examples.iter().zip(&records).take(50) {
        let (instruction, input, output) = (
            record["instruction"].as_str().unwrap(),
            record["input"].as_str().unwrap(),
            record["output"].as_str().unwrap(),
        );
        let prompt = alpaca_prompt(instruction, input);
        // The prompt tokens are the prompt's own encoding (the response starts a new token).
        let prompt_ids = tokenizer.encode(&prompt, true).unwrap();
        let start = example.answer_start();
        assert_eq!(&example.input_ids[..start], &prompt_ids[..start]);
        assert_eq!(*example.labels.last().unwrap(), eos);
        assert!(example.labels[..start].iter().all(|&l| l == IGNORE_INDEX));
        let learned = supervised_text(&tokenizer, example);
        assert_eq!(learned.trim_end_matches("</s>").trim(), output.trim(), "{instruction}");
    }
    // An example with an input uses the template with "### Input:".
    let with_input = records.iter().position(|r| r["input"].as_str() != Some("")).unwrap();
    let text = tokenizer.decode(&dataset.examples[with_input].input_ids, true).unwrap();
    assert!(text.contains("### Input:"), "{text}");
}

#[test]
fn alpaca_jsonl_matches_alpaca_json() {
    let tokenizer = stories_tokenizer!();
    let path = shared!("data/alpaca_en_demo.json");
    let records: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let jsonl: String = records[..20].iter().map(|r| format!("{r}\n")).collect();
    let jsonl_path = temp_file("alpaca.jsonl", &jsonl);
    assert_eq!(detect_format(&jsonl_path).unwrap(), DataFormat::Alpaca);
    let config = EncodeConfig::with_max_len(4096);
    let from_json = Dataset::load(&path, None, Some(&tokenizer), &config).unwrap();
    let from_jsonl = Dataset::load(&jsonl_path, None, Some(&tokenizer), &config).unwrap();
    assert_eq!(from_jsonl.examples, from_json.examples[..20]);
}

#[test]
fn truncation_keeps_the_answer_and_counts_skips() {
    let tokenizer = stories_tokenizer!();
    let path = shared!("data/alpaca_en_demo.json");
    let full = Dataset::load(&path, None, Some(&tokenizer), &EncodeConfig::with_max_len(100_000)).unwrap();
    let max_len = 128;
    let answer_fits = |e: &lomo_data::Example| e.len() - e.answer_start() <= max_len;
    let expected_skips = full.examples.iter().filter(|e| !answer_fits(e)).count();
    assert!(expected_skips > 0 && expected_skips < full.len());

    for truncation in [Truncation::Left, Truncation::Middle] {
        let config = EncodeConfig { max_len, truncation, overlong: Overlong::Skip, ..Default::default() };
        let cut = Dataset::load(&path, None, Some(&tokenizer), &config).unwrap();
        assert_eq!(cut.skipped_too_long, expected_skips);
        let kept = full.examples.iter().filter(|e| answer_fits(e));
        for (short, long) in cut.examples.iter().zip(kept) {
            assert!(short.len() <= max_len);
            let answer = &long.input_ids[long.answer_start()..];
            assert!(short.input_ids.ends_with(answer), "the answer is intact");
            assert_eq!(short.num_targets(), answer.len() - usize::from(short.answer_start() == 0));
            if long.len() > max_len && short.answer_start() > 0 {
                assert_eq!(short.input_ids[0], 1, "BOS is kept");
            }
        }
    }

    let strict = EncodeConfig::with_max_len(max_len);
    match Dataset::load(&path, None, Some(&tokenizer), &strict) {
        Err(DataError::AnswerTooLong { line, answer_tokens, max_len: m, .. }) => {
            assert!(line > 1 && answer_tokens > m && m == max_len);
        }
        other => panic!("expected AnswerTooLong, got {other:?}"),
    }
}

#[test]
fn tinystories_text_is_packed_into_windows() {
    let tokenizer = stories_tokenizer!();
    let path = shared!("data/tinystories_sample.txt");
    assert_eq!(detect_format(&path).unwrap(), DataFormat::Text);
    let max_len = 64;
    let dataset = Dataset::load(&path, None, Some(&tokenizer), &EncodeConfig::with_max_len(max_len)).unwrap();
    // The expected stream, computed independently: documents split at <|endoftext|> lines,
    // each encoded with BOS, followed by EOS.
    let text = std::fs::read_to_string(&path).unwrap();
    let eos = tokenizer.eos_id().unwrap();
    let mut expected = Vec::new();
    let mut documents = 0;
    for document in text.split("<|endoftext|>").map(str::trim).filter(|d| !d.is_empty()) {
        expected.extend(tokenizer.encode(document, true).unwrap());
        expected.push(eos);
        documents += 1;
    }
    assert_eq!(documents, 5);
    let packed: Vec<u32> = dataset.examples.iter().flat_map(|e| e.input_ids.clone()).collect();
    assert_eq!(packed, expected);
    let (last, full) = dataset.examples.split_last().unwrap();
    assert!(full.iter().all(|e| e.len() == max_len));
    assert!(!last.is_empty() && last.len() <= max_len);
    assert!(dataset.examples.iter().all(|e| e.num_targets() == e.len() - 1));

    // JSONL {"text"} documents give the same stream.
    let jsonl: String = text
        .split("<|endoftext|>")
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| format!("{}\n", serde_json::json!({ "text": d })))
        .collect();
    let jsonl_path = temp_file("stories.jsonl", &jsonl);
    assert_eq!(detect_format(&jsonl_path).unwrap(), DataFormat::Text);
    let from_jsonl = Dataset::load(&jsonl_path, None, Some(&tokenizer), &EncodeConfig::with_max_len(max_len)).unwrap();
    assert_eq!(from_jsonl.examples, dataset.examples);
}

#[test]
fn chat_learns_every_assistant_turn() {
    let tokenizer = stories_tokenizer!();
    let line = serde_json::json!({"messages": [
        {"role": "system", "content": "You are kind."},
        {"role": "user", "content": "Who is Ben?"},
        {"role": "assistant", "content": "Ben is a little boy."},
        {"role": "user", "content": "What did he see?"},
        {"role": "assistant", "content": "He saw a big red ball."},
    ]});
    let path = temp_file("chat.jsonl", &format!("{line}\n"));
    assert_eq!(detect_format(&path).unwrap(), DataFormat::Chat);
    let dataset = Dataset::load(&path, None, Some(&tokenizer), &EncodeConfig::with_max_len(1024)).unwrap();
    let example = &dataset.examples[0];
    let text = tokenizer.decode(&example.input_ids, true).unwrap();
    assert!(text.starts_with("<|im_start|>system\nYou are kind.<|im_end|>\n<|im_start|>user\n"), "{text}");
    // The learned tokens are exactly the two answers with their <|im_end|>, in two runs.
    let mut runs: Vec<Vec<u32>> = Vec::new();
    let mut previous_supervised = false;
    for (&id, &label) in example.input_ids.iter().zip(&example.labels) {
        let supervised = label != IGNORE_INDEX;
        if supervised && !previous_supervised {
            runs.push(Vec::new());
        }
        if supervised {
            runs.last_mut().unwrap().push(id);
        }
        previous_supervised = supervised;
    }
    let runs: Vec<String> = runs.iter().map(|r| tokenizer.decode(r, false).unwrap().trim().to_owned()).collect();
    assert_eq!(runs, ["Ben is a little boy.<|im_end|>", "He saw a big red ball.<|im_end|>"]);
}

#[test]
fn alpaca_batches_with_the_tokenizers_padding() {
    let tokenizer = stories_tokenizer!();
    let path = shared!("data/alpaca_en_demo.json");
    let config = EncodeConfig { overlong: Overlong::Skip, ..EncodeConfig::with_max_len(256) };
    let dataset = Dataset::load(&path, None, Some(&tokenizer), &config).unwrap();
    let n = dataset.len();
    let loader_config = LoaderConfig {
        padding: PaddingConfig::for_tokenizer(&tokenizer),
        bucket_batches: Some(8),
        ..LoaderConfig::new(16)
    };
    let mut loader = BatchLoader::new(dataset, loader_config).unwrap();
    assert_eq!(loader.batches_per_epoch(), n.div_ceil(16));
    let mut rows = 0;
    while let Some(batch) = loader.next_batch_in_epoch().unwrap() {
        rows += batch.batch_size;
        assert!(batch.seq_len <= 256);
        let micro = batch.micro_batches(4).unwrap();
        assert_eq!(micro.iter().map(|m| m.num_targets()).sum::<usize>(), batch.num_targets());
        // Right padding: within a row the mask is ones then zeros.
        for row in batch.attention_mask.chunks(batch.seq_len) {
            assert!(row.windows(2).all(|w| w[0] >= w[1]) && row[0] == 1);
        }
    }
    assert_eq!(rows, n);
}

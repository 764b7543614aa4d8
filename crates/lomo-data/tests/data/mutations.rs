//! Mutation tests of the data formats: valid pre-tokenized, Alpaca (JSONL and JSON array), chat
//! and text files truncated, flipped and spliced (`lomo_testutil::mutate`), read as a training
//! set and as a stream. Every mutation gives a dataset or a one-line error naming the file;
//! none panics. The counts are in the README's reliability section.

use std::path::Path;

use lomo_data::{Dataset, EncodeConfig, StreamConfig, StreamingLoader};
use lomo_testutil::mutate::{self, Seed};

/// Mutations per group of formats; with the tokenizer's encoding they take a few seconds each.
const CASES: u32 = 4000;

/// Reads `bytes` as the file `name` (its extension decides the layout): a dataset, or an error
/// that names the file on one line.
fn check_file(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    tokenizer: Option<&lomo_data::TextTokenizer>,
) -> Result<(), String> {
    let path = dir.join(name);
    std::fs::write(&path, bytes).map_err(|e| e.to_string())?;
    let config = EncodeConfig::with_max_len(48);
    if let Err(e) = Dataset::load(&path, None, tokenizer, &config) {
        let message = e.to_string();
        if !message.contains(name)
            && !message.starts_with("tokenizer:")
            && !message.starts_with("invalid configuration")
        {
            return Err(format!("the error does not name the file: {message}"));
        }
        mutate::one_line(&message)?;
    }
    Ok(())
}

#[test]
fn mutated_pretokenized_files_never_panic() {
    let dir = super::common::temp_file("x", "").parent().unwrap().to_path_buf();
    let seeds = [
        Seed::text("{\"input_ids\": [1, 2, 3, 4]}\n{\"input_ids\": [5, 6], \"labels\": [-100, 6]}\n\n{\"input_ids\": [7, 8, 9], \"labels\": [7, -100, 9]}\n"),
        Seed::text("{\"input_ids\": [10, 20, 30, 40, 50, 60, 70, 80], \"labels\": [-100, -100, -100, 40, 50, 60, 70, 80]}\r\n"),
    ];
    let ran =
        mutate::run("data: pre-tokenized JSONL", &seeds, CASES, |bytes| check_file(&dir, "ids.jsonl", bytes, None));
    assert_eq!(ran, CASES);
}

#[test]
fn mutated_instruction_chat_and_text_files_never_panic() {
    let tokenizer = stories_tokenizer!();
    let dir = super::common::temp_file("x", "").parent().unwrap().to_path_buf();
    let alpaca = "{\"instruction\": \"Say hi.\", \"input\": \"\", \"output\": \"Hi!\"}\n{\"instruction\": \"Add\", \"input\": \"1 and 2\", \"output\": \"3\"}\n";
    let array = "[\n {\"instruction\": \"Name a color.\", \"output\": \"Red\"},\n {\"instruction\": \"a\", \"input\": null, \"output\": \"b\"}\n]\n";
    let chat = "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", \"content\": \"Hi\"}, {\"role\": \"assistant\", \"content\": \"Hello.\"}]}\n";
    let text = "{\"text\": \"Once upon a time there was a cat.\"}\n{\"text\": \"The end.\"}\n";
    let story = "Once upon a time.\n<|endoftext|>\nThe dog ran.\n\n<|endoftext|>\n";
    for (name, seed) in [
        ("alpaca.jsonl", alpaca),
        ("alpaca.json", array),
        ("chat.jsonl", chat),
        ("text.jsonl", text),
        ("story.txt", story),
    ] {
        let ran = mutate::run(&format!("data: {name}"), &[Seed::text(seed)], CASES / 4, |bytes| {
            check_file(&dir, name, bytes, Some(&tokenizer))
        });
        assert_eq!(ran, CASES / 4);
    }
}

/// The streaming reader (files larger than memory) reads the same formats line by line.
#[test]
fn mutated_streams_never_panic() {
    let dir = super::common::temp_file("x", "").parent().unwrap().to_path_buf();
    let seed = Seed::text("{\"input_ids\": [1, 2, 3, 4]}\n{\"input_ids\": [5, 6, 7], \"labels\": [-100, 6, 7]}\n");
    let ran = mutate::run("data: pre-tokenized stream", &[seed], CASES / 2, |bytes| {
        let path = dir.join("stream.jsonl");
        std::fs::write(&path, bytes).map_err(|e| e.to_string())?;
        let encode = EncodeConfig::with_max_len(16);
        match StreamingLoader::open(&path, None, None, &encode, StreamConfig::new(2)) {
            Ok(mut loader) => {
                for _ in 0..4 {
                    match loader.next_batch_in_epoch() {
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(e) => return mutate::one_line(&e.to_string()),
                    }
                }
                Ok(())
            }
            Err(e) => mutate::one_line(&e.to_string()),
        }
    });
    assert_eq!(ran, CASES / 2);
}

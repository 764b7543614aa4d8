//! Bad input: every error names the file, the line and the field; nothing panics; an empty
//! dataset is an error.

use lomo_data::{
    DataError, DataFormat, Dataset, EncodeConfig, LoaderConfig, Overlong, StreamConfig, StreamingLoader, SuperGlueTask,
};

use super::common::temp_file;

fn load_error(name: &str, contents: &str, format: Option<DataFormat>) -> String {
    let path = temp_file(name, contents);
    // Pre-tokenized data needs no tokenizer; the other formats get stories260K when present.
    let tokenizer = crate::data::common::shared_file("models/stories260K/tokenizer.json")
        .map(|p| lomo_data::TextTokenizer::from_file(p).unwrap());
    match Dataset::load(&path, format, tokenizer.as_ref(), &EncodeConfig::with_max_len(64)) {
        Ok(d) => panic!("{name} loaded {} examples", d.len()),
        Err(e) => e.to_string(),
    }
}

fn ends_with(message: &str, expected: &str) {
    assert!(message.ends_with(expected), "{message:?} should end with {expected:?}");
}

#[test]
fn pretokenized_errors_name_file_line_and_field() {
    let good = r#"{"input_ids": [1, 2, 3]}"#;
    let m = load_error("data.jsonl", &format!("{good}\n\n{good}\n{{\"input_ids\": [1, \"x\"]}}\n"), None);
    ends_with(&m, "data.jsonl:4: field \"input_ids\": expected an array of integers");
    let m = load_error("data.jsonl", &format!("{good}\n{{\"input_ids\": [1, 2], \"labels\": [1]}}\n"), None);
    ends_with(&m, "data.jsonl:2: field \"labels\": has 1 elements, input_ids has 2");
    let m = load_error("data.jsonl", r#"{"input_ids": [1, -5]}"#, Some(DataFormat::PreTokenized));
    assert!(m.contains("data.jsonl:1: field \"input_ids\": element 1 is -5"), "{m}");
    let m = load_error("data.jsonl", r#"{"input_ids": [1, 2], "labels": [-7, 2]}"#, None);
    assert!(m.contains("data.jsonl:1: field \"labels\": element 0 is -7"), "{m}");
    let m = load_error("data.jsonl", r#"{"input_ids": []}"#, None);
    ends_with(&m, "data.jsonl:1: field \"input_ids\": is empty");
    let m = load_error("data.jsonl", &format!("{good}\n{{\"input_ids\": [1, 2\n"), None);
    assert!(m.contains("data.jsonl:2: invalid JSON"), "{m}");
    let m = load_error("data.jsonl", &format!("{good}\n[1, 2]\n"), None);
    ends_with(&m, "data.jsonl:2: field \"(record)\": expected a JSON object, found an array");
}

/// A row with nothing to learn is refused when the file is read, naming its line, as Alpaca and
/// chat records are: it used to pass, and a batch of such rows stopped training at its step
/// with no file or line named.
#[test]
fn pretokenized_rows_with_nothing_to_learn_are_refused_up_front() {
    let good = r#"{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}"#;
    let ignored = r#"{"input_ids": [1, 2, 3], "labels": [-100, -100, -100]}"#;
    let m = load_error("masked.jsonl", &format!("{good}\n{good}\n\n{ignored}\n{good}\n"), None);
    ends_with(&m, "masked.jsonl:4: field \"labels\": every label past the first is -100: there is nothing to learn");
    // Position 0 is never predicted (HF's shift), so its label alone is nothing to learn.
    let m = load_error("first.jsonl", r#"{"input_ids": [1, 2], "labels": [1, -100]}"#, None);
    ends_with(&m, "first.jsonl:1: field \"labels\": every label past the first is -100: there is nothing to learn");
    let m = load_error("one.jsonl", &format!("{good}\n{{\"input_ids\": [7]}}\n"), None);
    ends_with(&m, "one.jsonl:2: field \"input_ids\": has one token: nothing to predict (a row needs two)");
}

#[test]
fn a_pretokenized_id_outside_the_vocabulary_is_an_error() {
    let tokenizer = stories_tokenizer!();
    let path = temp_file("ids.jsonl", "{\"input_ids\": [1, 512]}\n");
    let e = Dataset::load(&path, None, Some(&tokenizer), &EncodeConfig::default()).unwrap_err();
    assert!(
        e.to_string().contains("ids.jsonl:1: field \"input_ids\": element 1 is 512, outside the vocabulary 0..=511"),
        "{e}"
    );
}

#[test]
fn instruction_errors_name_the_field() {
    let _ = stories_tokenizer!();
    // A JSON array reports the line its bad element starts on.
    let m = load_error(
        "alpaca.json",
        "[\n {\"instruction\": \"a\", \"input\": \"\", \"output\": \"b\"},\n {\"instruction\": \"c\",\n  \"input\": 3, \"output\": \"d\"}\n]",
        None,
    );
    ends_with(&m, "alpaca.json:3: field \"input\": expected a string, found a number");
    let m = load_error("alpaca.jsonl", "{\"instruction\": \"a\", \"output\": \"\"}\n", Some(DataFormat::Alpaca));
    ends_with(&m, "alpaca.jsonl:1: field \"output\": is empty: there is nothing to learn");
    let m = load_error(
        "chat.jsonl",
        "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"content\": \"yo\"}]}\n",
        None,
    );
    ends_with(&m, "chat.jsonl:1: field \"messages[1].role\": missing");
    let m = load_error("chat.jsonl", "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n", None);
    ends_with(&m, "chat.jsonl:1: field \"messages\": has no assistant turn: there is nothing to learn");
}

#[test]
fn superglue_errors_name_the_field() {
    let _ = stories_tokenizer!();
    let m = load_error(
        "train.jsonl",
        "{\"premise\": \"p\", \"hypothesis\": \"h\", \"label\": \"maybe\"}\n",
        Some(DataFormat::SuperGlue(SuperGlueTask::Rte)),
    );
    ends_with(&m, "train.jsonl:1: field \"label\": \"maybe\" is not one of [\"entailment\", \"not_entailment\"]");
    let m = load_error(
        "train.jsonl",
        "{\"text\": \"t\", \"target\": {\"span1_text\": \"a\"}, \"label\": true}\n",
        Some(DataFormat::SuperGlue(SuperGlueTask::Wsc)),
    );
    ends_with(&m, "train.jsonl:1: field \"target.span2_text\": missing");
    let m = load_error(
        "val.jsonl",
        "{\"premise\": \"p\", \"choice1\": \"a\", \"choice2\": \"b\", \"question\": \"why\", \"label\": 0}\n",
        None,
    );
    ends_with(&m, "val.jsonl:1: field \"question\": \"why\" is not \"cause\" or \"effect\"");
    // RTE and CB records look alike: without a task directory the format must be named.
    let m = load_error("train.jsonl", "{\"premise\": \"p\", \"hypothesis\": \"h\", \"label\": \"entailment\"}\n", None);
    assert!(m.contains("name the task explicitly"), "{m}");
}

#[test]
fn empty_datasets_are_errors() {
    for (name, contents) in [("empty.jsonl", ""), ("blank.jsonl", "\n  \n"), ("empty.txt", "\n<|endoftext|>\n")] {
        let path = temp_file(name, contents);
        let tokenizer = crate::data::common::shared_file("models/stories260K/tokenizer.json")
            .map(|p| lomo_data::TextTokenizer::from_file(p).unwrap());
        let format = if name.ends_with(".txt") { None } else { Some(DataFormat::PreTokenized) };
        if format.is_none() && tokenizer.is_none() {
            continue;
        }
        let e = Dataset::load(&path, format, tokenizer.as_ref(), &EncodeConfig::default()).unwrap_err();
        assert!(matches!(e, DataError::EmptyDataset { .. }), "{name}: {e}");
        assert!(e.to_string().contains(name) && e.to_string().contains("empty"), "{e}");
    }
    let path = temp_file("empty.json", "[]");
    let e = Dataset::load(&path, Some(DataFormat::Alpaca), None, &EncodeConfig::default()).unwrap_err();
    assert!(matches!(e, DataError::Format { .. } | DataError::EmptyDataset { .. }), "{e}");
    let e = lomo_data::detect_format(temp_file("nothing.jsonl", "")).unwrap_err();
    assert!(matches!(e, DataError::EmptyDataset { .. }), "{e}");
}

#[test]
fn everything_skipped_is_an_empty_dataset_that_says_so() {
    let path = temp_file("long.jsonl", "{\"input_ids\": [1, 2, 3, 4, 5, 6]}\n");
    let config = EncodeConfig { overlong: Overlong::Skip, ..EncodeConfig::with_max_len(4) };
    let e = Dataset::load(&path, None, None, &config).unwrap_err();
    assert!(e.to_string().contains("all 1 examples were skipped as too long"), "{e}");
    let e = Dataset::load(&path, None, None, &EncodeConfig::with_max_len(4)).unwrap_err();
    assert!(e.to_string().ends_with("long.jsonl:1: the answer alone is 6 tokens, more than max_len 4 (raise max_len, or ask to skip such examples)"), "{e}");
    let stream = StreamingLoader::open(&path, None, None, &config, StreamConfig::new(2));
    let e = stream.unwrap().next_batch().unwrap_err();
    assert!(matches!(e, DataError::EmptyDataset { .. }), "{e}");
}

#[test]
fn bad_configs_and_missing_tokenizers_are_errors() {
    let path = temp_file("ok.jsonl", "{\"input_ids\": [1, 2, 3]}\n");
    assert!(matches!(
        Dataset::load(&path, None, None, &EncodeConfig::with_max_len(1)),
        Err(DataError::InvalidConfig(_))
    ));
    let text = temp_file("a.txt", "hello");
    assert!(matches!(Dataset::load(&text, None, None, &EncodeConfig::default()), Err(DataError::Format { .. })));
    let missing = Dataset::load("/nonexistent/x.jsonl", Some(DataFormat::PreTokenized), None, &EncodeConfig::default());
    assert!(matches!(missing, Err(DataError::Io { .. })));
    let dataset = Dataset::load(&path, None, None, &EncodeConfig::default()).unwrap();
    assert!(lomo_data::BatchLoader::new(dataset, LoaderConfig::new(0)).is_err());
    let not_utf8 = temp_file("bin.jsonl", "");
    std::fs::write(&not_utf8, b"{\"input_ids\": [1, 2]}\n\xff\xfe\n").unwrap();
    let e = Dataset::load(&not_utf8, None, None, &EncodeConfig::default()).unwrap_err();
    assert!(e.to_string().contains("bin.jsonl: line 2: not valid UTF-8"), "{e}");
}

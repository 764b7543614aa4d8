//! SuperGLUE: the paper's prompts on the shared RTE/CB/COPA files, and inline fixtures in the
//! official format for BoolQ, WiC, WSC and MultiRC.

use std::path::Path;

use lomo_data::{
    accuracy, detect_format, load_scoring_set, parse_superglue_record, predict, read_superglue, DataFormat, Dataset,
    EncodeConfig, ScoringExample, SuperGlueTask, IGNORE_INDEX,
};
use serde_json::{json, Value};

use super::common::supervised_text;

fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn shared_files_parse_with_the_papers_prompts() {
    // (task, split, rows) from shared/README.md.
    let splits =
        [(SuperGlueTask::Rte, [32, 32, 277]), (SuperGlueTask::Cb, [32, 32, 56]), (SuperGlueTask::Copa, [32, 32, 100])];
    for (task, counts) in splits {
        for (split, count) in ["train", "dev32", "val"].into_iter().zip(counts) {
            let path = shared!(&format!("data/superglue/{}/{split}.jsonl", task.name()));
            assert_eq!(detect_format(&path).unwrap(), DataFormat::SuperGlue(task), "{path:?}");
            let examples = read_superglue(&path, task).unwrap();
            assert_eq!(examples.len(), count, "{path:?}");
            for (example, record) in examples.iter().zip(records(&path)) {
                let (source, gold) = match task {
                    SuperGlueTask::Rte => (
                        format!(
                            "{}\nDoes this mean that \"{}\" is true? Yes or No?\nAnswer: ",
                            record["premise"].as_str().unwrap(),
                            record["hypothesis"].as_str().unwrap()
                        ),
                        ["entailment", "not_entailment"].iter().position(|l| record["label"] == *l).unwrap(),
                    ),
                    SuperGlueTask::Cb => (
                        format!(
                            "Suppose {} Can we infer that \"{}\"? Yes, No, or Maybe?\nAnswer: ",
                            record["premise"].as_str().unwrap(),
                            record["hypothesis"].as_str().unwrap()
                        ),
                        ["entailment", "contradiction", "neutral"].iter().position(|l| record["label"] == *l).unwrap(),
                    ),
                    _ => (
                        format!(
                            "{} {} ",
                            record["premise"].as_str().unwrap(),
                            if record["question"] == "effect" { "so" } else { "because" }
                        ),
                        record["label"].as_u64().unwrap() as usize,
                    ),
                };
                assert_eq!(example.source, source);
                assert_eq!(example.gold, gold);
                let expected_choices: Vec<String> = match task {
                    SuperGlueTask::Rte => vec!["Yes".into(), "No".into()],
                    SuperGlueTask::Cb => vec!["Yes".into(), "No".into(), "Maybe".into()],
                    _ => vec![record["choice1"].as_str().unwrap().into(), record["choice2"].as_str().unwrap().into()],
                };
                assert_eq!(example.choices, expected_choices);
            }
        }
    }
}

#[test]
fn training_examples_learn_the_gold_answer_and_eos() {
    let tokenizer = stories_tokenizer!();
    for task in [SuperGlueTask::Rte, SuperGlueTask::Cb, SuperGlueTask::Copa] {
        let path = shared!(&format!("data/superglue/{}/train.jsonl", task.name()));
        let texts = read_superglue(&path, task).unwrap();
        let dataset = Dataset::load(&path, None, Some(&tokenizer), &EncodeConfig::with_max_len(4096)).unwrap();
        assert_eq!(dataset.len(), texts.len());
        for (example, text) in dataset.examples.iter().zip(&texts) {
            let learned = supervised_text(&tokenizer, example);
            assert_eq!(learned.trim(), format!("{}</s>", text.choices[text.gold]).trim(), "{task:?}");
            assert_eq!(*example.labels.last().unwrap(), 2);
            // The prompt is all -100, then the answer is all learned.
            let start = example.answer_start();
            assert!(start > 1 && example.labels[start..].iter().all(|&l| l != IGNORE_INDEX));
        }
    }
}

#[test]
fn scoring_sets_hold_one_sequence_per_choice() {
    let tokenizer = stories_tokenizer!();
    let path = shared!("data/superglue/CB/val.jsonl");
    let set = load_scoring_set(&path, SuperGlueTask::Cb, &tokenizer, &EncodeConfig::with_max_len(4096)).unwrap();
    assert_eq!(set.examples.len(), 56);
    for example in &set.examples {
        assert_eq!(example.candidates.len(), 3);
        let answers: Vec<String> =
            example.candidates.iter().map(|c| supervised_text(&tokenizer, c).trim().to_owned()).collect();
        assert_eq!(answers, ["Yes", "No", "Maybe"]);
        // The candidates share the prompt tokens and differ only in the answer.
        let start = example.candidates[0].answer_start();
        assert!(example.candidates.iter().all(|c| c.input_ids[..start] == example.candidates[0].input_ids[..start]));
    }
    // Truncated scoring keeps the answers.
    let short = EncodeConfig { max_len: 48, ..EncodeConfig::default() };
    let cut = load_scoring_set(&path, SuperGlueTask::Cb, &tokenizer, &short).unwrap();
    assert!(cut.examples.iter().all(|e| e.candidates.iter().all(|c| c.len() <= 48)));
    assert_eq!(supervised_text(&tokenizer, &cut.examples[0].candidates[2]).trim(), "Maybe");
}

#[test]
fn accuracy_takes_the_best_summed_log_likelihood() {
    let example = |gold| ScoringExample { candidates: vec![lomo_data::Example::all_supervised(vec![1, 2]); 2], gold };
    let examples = vec![example(0), example(1), example(1)];
    let scores = vec![vec![-1.0, -2.0], vec![-0.5, -0.25], vec![-3.0, f64::NAN]];
    assert_eq!(predict(&scores[2]), Some(0));
    assert_eq!(predict(&[f64::NAN]), None);
    assert_eq!(predict(&[-1.0, -1.0]), Some(0));
    let acc = accuracy(&examples, &scores).unwrap();
    assert!((acc - 2.0 / 3.0).abs() < 1e-12);
    assert!(accuracy(&examples, &scores[..2]).is_err());
    assert!(accuracy(&examples, &[vec![0.0], vec![0.0, 1.0], vec![0.0, 1.0]]).is_err());
}

fn parse(task: SuperGlueTask, record: Value) -> Vec<lomo_data::SuperGlueExample> {
    parse_superglue_record(task, &record, Path::new("fixture.jsonl"), 1).unwrap()
}

#[test]
fn boolq_wic_wsc_multirc_parse_their_official_fields() {
    // Official BoolQ record layout (val.jsonl).
    let boolq = parse(
        SuperGlueTask::BoolQ,
        json!({
        "question": "is the sky blue", "passage": "Sky -- The sky is blue on a clear day.",
        "idx": 0, "label": true}),
    );
    assert_eq!(boolq[0].source, "Sky -- The sky is blue on a clear day. is the sky blue\nAnswer: ");
    assert_eq!((boolq[0].choices.clone(), boolq[0].gold), (vec!["No".to_owned(), "Yes".to_owned()], 1));

    let wic = parse(
        SuperGlueTask::Wic,
        json!({
        "word": "place", "sentence1": "Do you want to come over to my place later?",
        "sentence2": "A political system with no place for the less prominent groups.",
        "idx": 0, "label": false, "start1": 31, "start2": 27, "end1": 36, "end2": 32}),
    );
    assert_eq!(
        wic[0].source,
        "Does the word \"place\" have the same meaning in these two sentences? Yes, No?\n\
         Do you want to come over to my place later?\n\
         A political system with no place for the less prominent groups.\nAnswer: "
    );
    assert_eq!(wic[0].gold, 0);

    let wsc = parse(
        SuperGlueTask::Wsc,
        json!({
        "text": "Mark told Pete many lies about himself, which Pete included in his book. He should have been more skeptical.",
        "target": {"span2_index": 13, "span1_index": 0, "span1_text": "Mark", "span2_text": "He"},
        "idx": 0, "label": false}),
    );
    assert_eq!(
        wsc[0].source,
        "Mark told Pete many lies about himself, which Pete included in his book. He should have \
         been more skeptical.\nIn the previous sentence, does the pronoun \"He\" refer to \"Mark\"? \
         Yes or No?\nAnswer: "
    );
    assert_eq!(wsc[0].gold, 0);

    let multirc = parse(
        SuperGlueTask::MultiRc,
        json!({
        "idx": 0, "version": 1.1,
        "passage": {"text": "Sent 1: Ben saw a vase.", "questions": [
            {"question": "What did Ben see?", "idx": 0, "answers": [
                {"text": "A vase", "idx": 0, "label": 1},
                {"text": "A dog", "idx": 1, "label": 0}]},
            {"question": "Who saw it?", "idx": 1, "answers": [
                {"text": "Ben", "idx": 2, "label": 1}]}]}}),
    );
    assert_eq!(multirc.len(), 3);
    assert_eq!(
        multirc[1].source,
        "Sent 1: Ben saw a vase.\nQuestion: What did Ben see?\nI found this answer \"A dog\". \
         Is that correct? Yes or No?\nAnswer: "
    );
    assert_eq!(multirc.iter().map(|e| e.gold).collect::<Vec<_>>(), [1, 0, 1]);

    let bad = parse_superglue_record(
        SuperGlueTask::MultiRc,
        &json!({"passage": {"text": "t", "questions": [{"question": "q", "answers": [{"text": "a", "label": 2}]}]}}),
        Path::new("multirc.jsonl"),
        7,
    )
    .unwrap_err();
    assert_eq!(bad.to_string(), "multirc.jsonl:7: field \"passage.questions[0].answers[0].label\": 2 is not 0 or 1");
}

#[test]
fn task_names_round_trip() {
    for task in SuperGlueTask::ALL {
        assert_eq!(SuperGlueTask::from_name(&task.name().to_lowercase()), Some(task));
    }
    assert_eq!(SuperGlueTask::from_name("squad"), None);
}

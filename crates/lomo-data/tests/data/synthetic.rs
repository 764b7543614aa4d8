//! The addition task with the stories260K tokenizer.

use lomo_data::{AdditionConfig, AdditionTask, BatchLoader, Dataset, EncodeConfig, LoaderConfig};

use super::common::supervised_text;

#[test]
fn addition_examples_learn_the_answer_and_match_the_eval_prompts() {
    let tokenizer = stories_tokenizer!();
    let config = AdditionConfig { num_train: 300, num_eval: 50, min_digits: 1, max_digits: 3, seed: 3 };
    let task = AdditionTask::generate(&config).unwrap();
    let train = task.train_examples(&tokenizer, &EncodeConfig::with_max_len(32)).unwrap();
    assert_eq!(train.len(), 300);
    for (example, problem) in train.iter().zip(&task.train) {
        assert_eq!(supervised_text(&tokenizer, example).trim(), format!("{}</s>", problem.answer()));
        // What the model learns to continue from is exactly what generation feeds it.
        let prompt_ids = tokenizer.encode(&problem.prompt(), true).unwrap();
        assert_eq!(&example.input_ids[..example.answer_start()], &prompt_ids[..]);
    }
    let eval = task.eval_examples(&tokenizer).unwrap();
    assert_eq!(eval.len(), 50);
    assert_eq!(tokenizer.decode(&eval[0].prompt_ids, true).unwrap(), eval[0].prompt);
    let problem = task.eval[0];
    assert_eq!(eval[0].expected, (problem.a + problem.b).to_string());

    // A model that answers every problem right scores 1, one that is off by one scores 0.
    let right: Vec<String> = eval.iter().map(|e| e.expected.clone()).collect();
    assert_eq!(lomo_data::exact_match_accuracy(&right, &eval).unwrap(), 1.0);
    let wrong: Vec<String> = task.eval.iter().map(|p| (p.a + p.b + 1).to_string()).collect();
    assert_eq!(lomo_data::exact_match_accuracy(&wrong, &eval).unwrap(), 0.0);

    let dataset = Dataset::from_examples("synthetic:addition", train).unwrap();
    let mut loader = BatchLoader::new(dataset, LoaderConfig::new(32)).unwrap();
    let batch = loader.next_batch().unwrap();
    assert_eq!(batch.batch_size, 32);
    assert!(batch.seq_len <= 32);
}

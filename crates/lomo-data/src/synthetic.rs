//! A synthetic task with exact-match evaluation: multi-digit addition (`"12+345="` → `"357"`),
//! generated from a seed, no file needed. It is small enough for a tiny model to learn in a few
//! CPU minutes, and exact match makes "did fine-tuning work" a yes/no question.

use std::collections::HashSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::example::{encode_prompt_answer, EncodeConfig, Example};
use crate::rng::SplitMix64;
use crate::superglue::fit_or_skip;
use crate::tokenizer::TextTokenizer;

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdditionConfig {
    /// The seed; the same seed gives the same problems.
    pub seed: u64,
    /// Training problems.
    pub num_train: usize,
    /// Evaluation problems (never among the training ones).
    pub num_eval: usize,
    /// Fewest digits of an operand (1 allows 0..=9).
    pub min_digits: u32,
    /// Most digits of an operand.
    pub max_digits: u32,
}

impl Default for AdditionConfig {
    /// 2,000 training and 200 evaluation problems with 1–2 digit operands: 10,000 possible
    /// problems, so evaluation measures generalisation, not memory.
    fn default() -> Self {
        Self { seed: 0, num_train: 2000, num_eval: 200, min_digits: 1, max_digits: 2 }
    }
}

/// One problem `a + b`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AdditionProblem {
    /// The first operand.
    pub a: u64,
    /// The second operand.
    pub b: u64,
}

impl AdditionProblem {
    /// The prompt, `"12+345="`.
    pub fn prompt(&self) -> String {
        format!("{}+{}=", self.a, self.b)
    }

    /// The answer, `"357"`.
    pub fn answer(&self) -> String {
        (self.a + self.b).to_string()
    }
}

/// An evaluation item for generation: the prompt's ids to feed the model, and the text it must
/// produce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationExample {
    /// The prompt text.
    pub prompt: String,
    /// The prompt's token ids (with the tokenizer's BOS), the start of generation.
    pub prompt_ids: Vec<u32>,
    /// The expected answer text.
    pub expected: String,
}

/// The generated training and evaluation problems.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdditionTask {
    /// Training problems.
    pub train: Vec<AdditionProblem>,
    /// Evaluation problems, disjoint from `train`.
    pub eval: Vec<AdditionProblem>,
}

impl AdditionTask {
    /// Generates the problems: each operand's digit count is uniform in
    /// `min_digits..=max_digits`, then its value uniform among numbers of that many digits;
    /// problems are drawn without repetition, evaluation first, so the two sets are disjoint.
    pub fn generate(config: &AdditionConfig) -> Result<Self> {
        let AdditionConfig { seed, num_train, num_eval, min_digits, max_digits } = *config;
        if min_digits == 0 || min_digits > max_digits || max_digits > 18 {
            return Err(DataError::InvalidConfig(format!(
                "operand digits {min_digits}..={max_digits}: need 1 <= min <= max <= 18"
            )));
        }
        if num_train == 0 || num_eval == 0 {
            return Err(DataError::InvalidConfig(
                "the addition task needs at least one training and one evaluation problem".into(),
            ));
        }
        let operands: u128 = (min_digits..=max_digits).map(|d| numbers_with_digits(d) as u128).sum();
        let needed = (num_train + num_eval) as u128;
        // Rejection sampling slows down as the space fills; half of it is a generous bound.
        if needed * 2 > operands * operands {
            return Err(DataError::InvalidConfig(format!(
                "{needed} distinct problems asked, but {min_digits}..={max_digits}-digit operands \
                 allow only {}; ask for at most half of that",
                operands * operands
            )));
        }
        let mut rng = SplitMix64::new(seed);
        let mut seen = HashSet::with_capacity(num_train + num_eval);
        let mut draw = |count: usize| {
            let mut out = Vec::with_capacity(count);
            while out.len() < count {
                let problem = AdditionProblem {
                    a: operand(&mut rng, min_digits, max_digits),
                    b: operand(&mut rng, min_digits, max_digits),
                };
                if seen.insert(problem) {
                    out.push(problem);
                }
            }
            out
        };
        let eval = draw(num_eval);
        let train = draw(num_train);
        Ok(Self { train, eval })
    }

    /// Training examples: prompt + answer + EOS, the loss on the answer and EOS (the model must
    /// learn to stop, or exact match fails on trailing text).
    pub fn train_examples(&self, tokenizer: &TextTokenizer, config: &EncodeConfig) -> Result<Vec<Example>> {
        let eos = tokenizer.require_eos("the addition task")?;
        let source = Path::new("synthetic:addition");
        let mut out = Vec::with_capacity(self.train.len());
        for (i, p) in self.train.iter().enumerate() {
            let example = encode_prompt_answer(tokenizer, &p.prompt(), &p.answer(), Some(eos))?;
            match fit_or_skip(example, tokenizer.bos_id(), config, source, i + 1)? {
                Some(e) => out.push(e),
                None => {
                    return Err(DataError::InvalidConfig(format!(
                        "addition problem {} does not fit in max_len {}",
                        i + 1,
                        config.max_len
                    )))
                }
            }
        }
        Ok(out)
    }

    /// Evaluation items: the prompt encoded on its own (what a generator is given) and the
    /// expected answer.
    pub fn eval_examples(&self, tokenizer: &TextTokenizer) -> Result<Vec<GenerationExample>> {
        self.eval
            .iter()
            .map(|p| {
                let prompt = p.prompt();
                Ok(GenerationExample { prompt_ids: tokenizer.encode(&prompt, true)?, prompt, expected: p.answer() })
            })
            .collect()
    }
}

fn numbers_with_digits(digits: u32) -> u64 {
    if digits == 1 {
        10
    } else {
        9 * 10u64.pow(digits - 1)
    }
}

fn operand(rng: &mut SplitMix64, min_digits: u32, max_digits: u32) -> u64 {
    let digits = min_digits + rng.below(u64::from(max_digits - min_digits + 1)) as u32;
    let low = if digits == 1 { 0 } else { 10u64.pow(digits - 1) };
    low + rng.below(numbers_with_digits(digits))
}

/// Whether generated text is exactly the expected answer, ignoring surrounding whitespace (a
/// decoder may add a leading space). Anything else, trailing text included, is a miss: the
/// model was trained to stop with EOS after the answer.
pub fn exact_match(generated: &str, expected: &str) -> bool {
    generated.trim() == expected.trim()
}

/// The fraction of `generated[i]` that exactly match `examples[i].expected`.
pub fn exact_match_accuracy(generated: &[String], examples: &[GenerationExample]) -> Result<f64> {
    if examples.is_empty() || generated.len() != examples.len() {
        return Err(DataError::InvalidConfig(format!(
            "{} generations for {} examples (need as many, and at least one)",
            generated.len(),
            examples.len()
        )));
    }
    let hits = generated.iter().zip(examples).filter(|(g, e)| exact_match(g, &e.expected)).count();
    Ok(hits as f64 / examples.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_seeded_disjoint_and_in_range() {
        let config = AdditionConfig { num_train: 500, num_eval: 100, ..Default::default() };
        let task = AdditionTask::generate(&config).unwrap();
        assert_eq!(task, AdditionTask::generate(&config).unwrap());
        let other = AdditionTask::generate(&AdditionConfig { seed: 1, ..config.clone() }).unwrap();
        assert_ne!(task.train, other.train);
        let train: HashSet<_> = task.train.iter().collect();
        assert_eq!(train.len(), 500);
        assert!(task.eval.iter().all(|p| !train.contains(p)));
        assert!(task.train.iter().all(|p| p.a < 100 && p.b < 100));
        // Both digit counts occur.
        assert!(task.train.iter().any(|p| p.a < 10) && task.train.iter().any(|p| p.a >= 10));
    }

    #[test]
    fn prompts_answers_and_scoring() {
        let p = AdditionProblem { a: 12, b: 345 };
        assert_eq!(p.prompt(), "12+345=");
        assert_eq!(p.answer(), "357");
        assert!(exact_match(" 357", "357"));
        assert!(!exact_match("3570", "357"));
        assert!(!exact_match("357+1", "357"));
        let items = vec![GenerationExample { prompt: p.prompt(), prompt_ids: vec![], expected: "357".into() }; 2];
        let acc = exact_match_accuracy(&["357".into(), "35".into()], &items).unwrap();
        assert_eq!(acc, 0.5);
        assert!(exact_match_accuracy(&[], &items).is_err());
    }

    #[test]
    fn impossible_configs_are_errors() {
        let tiny = AdditionConfig { num_train: 60, num_eval: 10, min_digits: 1, max_digits: 1, seed: 0 };
        assert!(AdditionTask::generate(&tiny).is_err());
        let bad = AdditionConfig { min_digits: 3, max_digits: 2, ..Default::default() };
        assert!(AdditionTask::generate(&bad).is_err());
    }
}

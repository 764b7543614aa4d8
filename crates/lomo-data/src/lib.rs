//! `lomo-data` turns datasets into batches for fine-tuning causal language models with LOMO:
//! token ids, attention masks and labels (`-100` where no loss is taken), as plain row-major
//! `i64` arrays that the model crate turns into tensors. It does no tensor math and does not
//! depend on burn.
//!
//! The pipeline, one module per stage:
//! - [`tokenizer`]: HF `tokenizers`, from a `tokenizer.json` or from a GGUF file's tokenizer
//!   fields ([`GgufTokenizerSpec`]).
//! - [`formats`]: pre-tokenized JSONL, plain text (packed), Alpaca and chat instruction data,
//!   detected from the file ([`detect_format`]).
//! - [`templates`]: Stanford Alpaca's prompt; chat templates (a model's Jinja template, as HF
//!   renders it, or ChatML).
//! - [`superglue`]: the LOMO paper's SuperGLUE prompts (RTE, CB, COPA, BoolQ, WiC, WSC, MultiRC),
//!   training examples and likelihood scoring.
//! - [`synthetic`]: multi-digit addition with exact-match evaluation, generated from a seed.
//! - [`example`]: an [`Example`] (ids + labels) and truncation that never cuts the answer.
//! - [`batching`]: right padding into a [`Batch`], micro-batches.
//! - [`loader`] and [`stream`]: epochs and steps, deterministic shuffles, length bucketing, and
//!   a saved position that resumes exactly; [`stream`] for files larger than memory.
//!
//! Labels follow HF's convention: they are not shifted, position t's logits predict label t+1,
//! and the loss is the mean over all targets of the batch ([`Batch::num_targets`]).
//!
//! ```
//! use lomo_data::{BatchLoader, Dataset, EncodeConfig, LoaderConfig, PaddingConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Pre-tokenized JSONL needs no tokenizer (`Dataset::load` takes one for text, Alpaca, chat).
//! let dir = std::env::temp_dir().join(format!("lomo-data-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! let path = dir.join("train.jsonl");
//! std::fs::write(
//!     &path,
//!     "{\"input_ids\": [1, 5, 6, 7], \"labels\": [-100, -100, 6, 7]}\n\
//!      {\"input_ids\": [1, 8, 9], \"labels\": [-100, 8, 9]}\n\
//!      {\"input_ids\": [1, 4, 4, 4, 4], \"labels\": [-100, -100, -100, 4, 4]}\n",
//! )?;
//! let dataset = Dataset::load(&path, None, None, &EncodeConfig::with_max_len(16))?;
//! let config = LoaderConfig { padding: PaddingConfig { pad_id: 0, pad_to_multiple_of: None }, ..LoaderConfig::new(2) };
//! let mut loader = BatchLoader::new(dataset.clone(), config.clone())?;
//! let first = loader.next_batch()?;
//! assert_eq!(first.shape()[0], 2);
//!
//! // The loader's position resumes the same sequence of batches in another run.
//! let position = loader.position();
//! let second = loader.next_batch()?;
//! let mut resumed = BatchLoader::new(dataset, config)?;
//! resumed.seek(&position)?;
//! assert_eq!(resumed.next_batch()?, second);
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

pub mod batching;
pub mod dataset;
pub mod error;
pub mod example;
pub mod formats;
pub mod loader;
pub use lomo_io::rng;
pub mod stream;
pub mod superglue;
pub mod synthetic;
pub mod templates;
pub mod tokenizer;

pub use batching::{collate, Batch, PaddingConfig};
pub use dataset::Dataset;
pub use error::{DataError, Result};
pub use example::{encode_prompt_answer, encode_spans, EncodeConfig, Example, Overlong, Truncation, IGNORE_INDEX};
pub use formats::{detect_format, DataFormat};
pub use loader::{BatchLoader, DataPosition, LoaderConfig};
pub use rng::SplitMix64;
pub use stream::{StreamConfig, StreamPosition, StreamingLoader};
pub use superglue::{
    accuracy, load_scoring_set, parse_superglue_record, predict, read_superglue, ScoringExample, ScoringSet,
    SuperGlueExample, SuperGlueTask,
};
pub use synthetic::{
    exact_match, exact_match_accuracy, AdditionConfig, AdditionProblem, AdditionTask, GenerationExample,
};
pub use templates::{alpaca_prompt, ChatMessage, ChatTemplate, JinjaSpec, JinjaTemplate, RenderedChat, TemplateError};
pub use tokenizer::{GgufTokenizerModel, GgufTokenizerSpec, TextTokenizer};

//! An in-memory dataset of tokenized examples.

use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};
use crate::example::{EncodeConfig, Example};
use crate::formats::{detect_format, DataFormat, ExampleSource};
use crate::tokenizer::TextTokenizer;

/// Tokenized examples held in memory, ready for a [`crate::BatchLoader`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    /// The examples, in file order.
    pub examples: Vec<Example>,
    /// Examples skipped because the answer alone exceeded `max_len` (only with
    /// [`crate::Overlong::Skip`]; otherwise such an example is an error).
    pub skipped_too_long: usize,
    /// Where the examples came from (a path, or a name such as `synthetic:addition`).
    pub source: PathBuf,
}

impl Dataset {
    /// Reads, tokenizes and truncates every record of `path`. `format` overrides detection
    /// ([`detect_format`]); `tokenizer` may be `None` only for pre-tokenized data (with one, ids
    /// are checked against its vocabulary).
    pub fn load(
        path: impl AsRef<Path>,
        format: Option<DataFormat>,
        tokenizer: Option<&TextTokenizer>,
        config: &EncodeConfig,
    ) -> Result<Self> {
        let path = path.as_ref();
        let format = match format {
            Some(f) => f,
            None => detect_format(path)?,
        };
        let mut source = ExampleSource::open(path, format, tokenizer, config)?;
        let mut examples = Vec::new();
        while let Some(example) = source.next_example()? {
            examples.push(example);
        }
        let skipped_too_long = source.skipped_too_long;
        if examples.is_empty() {
            return Err(DataError::EmptyDataset {
                path: path.to_path_buf(),
                detail: if skipped_too_long > 0 {
                    format!("all {skipped_too_long} examples were skipped as too long")
                } else {
                    "no record".into()
                },
            });
        }
        Ok(Self { examples, skipped_too_long, source: path.to_path_buf() })
    }

    /// A dataset of examples made elsewhere (the synthetic task, SuperGLUE training examples).
    pub fn from_examples(source: impl Into<PathBuf>, examples: Vec<Example>) -> Result<Self> {
        let source = source.into();
        if examples.is_empty() {
            return Err(DataError::EmptyDataset { path: source, detail: "no example".into() });
        }
        if let Some(i) = examples.iter().position(|e| e.is_empty() || e.labels.len() != e.len()) {
            return Err(DataError::InvalidConfig(format!(
                "{}: example {i} is empty or its labels and ids differ in length",
                source.display()
            )));
        }
        Ok(Self { examples, skipped_too_long: 0, source })
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.examples.len()
    }

    /// Whether there is no example (never true for a dataset that loaded).
    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// Tokens over all examples.
    pub fn num_tokens(&self) -> usize {
        self.examples.iter().map(Example::len).sum()
    }
}

//! The crate's error type.
//!
//! Every error that comes from a data file names the file and the line (1-based) it was found on,
//! and, where one field is at fault, the field: a user fixing a 100,000-line JSONL file needs to
//! know where to look, not just that something is wrong.

use std::path::PathBuf;

/// Everything that can go wrong while reading, tokenizing or batching data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// A file could not be opened or read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A line (JSONL) or a whole file (JSON) is not valid JSON.
    #[error("{}:{line}: invalid JSON: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The 1-based line.
        line: usize,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// A record is valid JSON, but one of its fields is missing or has the wrong shape.
    #[error("{}:{line}: field \"{field}\": {message}", path.display())]
    Field {
        /// The file.
        path: PathBuf,
        /// The 1-based line the record starts on.
        line: usize,
        /// The field, as a path (`messages[2].role`, `target.span1_text`).
        field: String,
        /// What was expected.
        message: String,
    },
    /// The prompt can be cut, the answer cannot: this example's answer alone does not fit.
    #[error(
        "{}:{line}: the answer alone is {answer_tokens} tokens, more than max_len {max_len} \
         (raise max_len, or ask to skip such examples)",
        path.display()
    )]
    AnswerTooLong {
        /// The file (or a name of the source, such as `synthetic:addition`).
        path: PathBuf,
        /// The 1-based line of the record.
        line: usize,
        /// Tokens the answer needs.
        answer_tokens: usize,
        /// The configured maximum sequence length.
        max_len: usize,
    },
    /// Reading the dataset produced no example at all.
    #[error("{}: the dataset is empty: {detail}", path.display())]
    EmptyDataset {
        /// The file.
        path: PathBuf,
        /// Why: no record at all, or every record skipped.
        detail: String,
    },
    /// The format could not be detected from the file, or does not fit it.
    #[error("{}: {message}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The HF `tokenizers` library failed (loading a tokenizer, encoding or decoding).
    #[error("tokenizer: {context}: {source}")]
    Tokenizer {
        /// What was being done (`loading tokenizer.json`, `encoding line 17`).
        context: String,
        /// The library's error.
        source: tokenizers::Error,
    },
    /// A tokenizer is missing something a step needs (an EOS token, a vocabulary entry), or a
    /// GGUF tokenizer description is inconsistent.
    #[error("tokenizer: {0}")]
    TokenizerSpec(String),
    /// A configuration value is out of range (batch size 0, max_len 0, ...).
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// A saved data position does not belong to this dataset and loader configuration.
    #[error("cannot resume: {0}")]
    PositionMismatch(String),
}

/// The crate's result type.
pub type Result<T, E = DataError> = std::result::Result<T, E>;

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io { path: path.into(), source }
    }

    pub(crate) fn field(
        path: impl Into<PathBuf>,
        line: usize,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        DataError::Field { path: path.into(), line, field: field.into(), message: message.into() }
    }

    pub(crate) fn tokenizer(context: impl Into<String>, source: tokenizers::Error) -> Self {
        DataError::Tokenizer { context: context.into(), source }
    }
}

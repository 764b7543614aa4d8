//! Dataset formats: detection from the file, and the stream of examples a file yields.
//!
//! | format | file | example |
//! |---|---|---|
//! | [`DataFormat::PreTokenized`] | JSONL `{"input_ids", "labels"?}` | as given |
//! | [`DataFormat::Text`] | `.txt` (documents split by `<|endoftext|>` lines) or JSONL `{"text"}` | documents + EOS, packed into `max_len` windows |
//! | [`DataFormat::Alpaca`] | JSON array or JSONL `{instruction, input, output}` | Alpaca prompt, loss on output + EOS |
//! | [`DataFormat::Chat`] | JSONL `{"messages": [{role, content}]}` | chat template, loss on assistant turns |
//! | [`DataFormat::SuperGlue`] | official SuperGLUE JSONL | source + gold + EOS, loss on gold + EOS |
//!
//! Blank JSONL lines and whitespace-only text documents are layout, not records, and are passed
//! over; every other record becomes examples or an error naming its line. The last, shorter
//! window of packed text is kept.

pub(crate) mod fields;
mod instruction;
mod pretokenized;
pub(crate) mod reader;
mod text;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{DataError, Result};
use crate::example::{EncodeConfig, Example};
use crate::superglue::{fit_or_skip, parse_superglue_record, SuperGlueTask};
use crate::tokenizer::TextTokenizer;
use fields::Fields;
use reader::{Layout, RawRecord, RecordReader};
use text::Packer;

/// A dataset format. [`detect_format`] finds it from the file; pass one explicitly to override.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum DataFormat {
    /// JSONL with `input_ids` and optional `labels`.
    PreTokenized,
    /// Plain text (`.txt`) or JSONL with `text`.
    Text,
    /// Alpaca instruction data, JSON array or JSONL.
    Alpaca,
    /// Chat JSONL with `messages`.
    Chat,
    /// A SuperGLUE task's official JSONL.
    SuperGlue(SuperGlueTask),
}

impl DataFormat {
    /// Whether examples need a tokenizer (all but pre-tokenized data).
    pub fn needs_tokenizer(self) -> bool {
        self != DataFormat::PreTokenized
    }
}

/// Finds the format of `path`: `.txt` is text; otherwise the first record's fields decide
/// (`input_ids`, `text`, `messages`, `instruction`+`output`, or a SuperGLUE task's fields).
/// RTE and CB share their fields: the task is then taken from a directory named after it
/// (`.../RTE/train.jsonl`), or must be given.
pub fn detect_format(path: impl AsRef<Path>) -> Result<DataFormat> {
    let path = path.as_ref();
    let format_error = |message: String| DataError::Format { path: path.to_path_buf(), message };
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    if extension == "txt" {
        return Ok(DataFormat::Text);
    }
    let layout = if extension == "json" { Layout::JsonArray } else { Layout::JsonLines };
    let mut reader = RecordReader::open(path, layout)?;
    let Some(RawRecord::Json { line, value }) = reader.next_record()? else {
        return Err(DataError::EmptyDataset {
            path: path.to_path_buf(),
            detail: "no record to detect the format from".into(),
        });
    };
    let Value::Object(object) = &value else {
        return Err(DataError::field(path, line, "(record)", "expected a JSON object"));
    };
    let has = |k: &str| object.contains_key(k);
    let task_from_directory =
        || path.parent().and_then(|p| p.file_name()).and_then(|n| n.to_str()).and_then(SuperGlueTask::from_name);
    let format = if has("input_ids") {
        DataFormat::PreTokenized
    } else if has("messages") {
        DataFormat::Chat
    } else if has("instruction") && has("output") {
        DataFormat::Alpaca
    } else if has("text") && has("target") {
        DataFormat::SuperGlue(SuperGlueTask::Wsc)
    } else if has("text") {
        DataFormat::Text
    } else if has("premise") && has("choice1") {
        DataFormat::SuperGlue(SuperGlueTask::Copa)
    } else if has("word") && has("sentence1") {
        DataFormat::SuperGlue(SuperGlueTask::Wic)
    } else if object.get("passage").is_some_and(Value::is_object) {
        DataFormat::SuperGlue(SuperGlueTask::MultiRc)
    } else if has("passage") && has("question") {
        DataFormat::SuperGlue(SuperGlueTask::BoolQ)
    } else if has("premise") && has("hypothesis") {
        match task_from_directory() {
            Some(task @ (SuperGlueTask::Rte | SuperGlueTask::Cb)) => DataFormat::SuperGlue(task),
            _ => return Err(format_error("premise/hypothesis records are RTE or CB; name the task explicitly".into())),
        }
    } else {
        let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
        keys.sort_unstable();
        return Err(format_error(format!(
            "line {line}: cannot tell the format from the fields {keys:?}; name it explicitly"
        )));
    };
    if layout == Layout::JsonArray && format != DataFormat::Alpaca {
        return Err(format_error(format!("a JSON array is only read as Alpaca data; write {format:?} data as JSONL")));
    }
    Ok(format)
}

/// Whether `format` in the file at `path` can be read without loading the file whole.
pub(crate) fn layout_of(path: &Path, format: DataFormat) -> Layout {
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    match (format, extension.as_str()) {
        (DataFormat::Text, "txt") => Layout::TextDocuments,
        (DataFormat::Alpaca, "json") => Layout::JsonArray,
        _ => Layout::JsonLines,
    }
}

/// Examples out of a file, produced lazily: records are read, tokenized and truncated one at a
/// time, so memory stays bounded by one record plus one packing window.
pub(crate) struct ExampleSource {
    reader: RecordReader,
    format: DataFormat,
    tokenizer: Option<TextTokenizer>,
    config: EncodeConfig,
    eos: Option<u32>,
    packer: Option<Packer>,
    pending: VecDeque<Example>,
    finished: bool,
    /// Examples skipped because the answer alone exceeded `max_len`.
    pub skipped_too_long: usize,
}

impl ExampleSource {
    pub fn open(
        path: &Path,
        format: DataFormat,
        tokenizer: Option<&TextTokenizer>,
        config: &EncodeConfig,
    ) -> Result<Self> {
        if config.max_len < 2 {
            return Err(DataError::InvalidConfig(format!(
                "max_len {} leaves no token to predict; it must be at least 2",
                config.max_len
            )));
        }
        if format.needs_tokenizer() && tokenizer.is_none() {
            return Err(DataError::Format {
                path: path.to_path_buf(),
                message: format!("{format:?} data needs a tokenizer"),
            });
        }
        let eos = match (format, tokenizer) {
            (DataFormat::PreTokenized | DataFormat::Chat, _) | (_, None) => None,
            (_, Some(t)) => Some(t.require_eos(&format!("{format:?} data"))?),
        };
        let layout = layout_of(path, format);
        if layout == Layout::JsonArray && format != DataFormat::Alpaca {
            return Err(DataError::Format {
                path: path.to_path_buf(),
                message: format!("a JSON array is only read as Alpaca data, not {format:?}"),
            });
        }
        Ok(Self {
            reader: RecordReader::open(path, layout)?,
            format,
            tokenizer: tokenizer.cloned(),
            config: config.clone(),
            eos,
            packer: (format == DataFormat::Text).then(|| Packer::new(config.max_len)),
            pending: VecDeque::new(),
            finished: false,
            skipped_too_long: 0,
        })
    }

    /// The next example, `None` when the file is exhausted.
    pub fn next_example(&mut self) -> Result<Option<Example>> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Ok(Some(e));
            }
            if let Some(e) = self.packer.as_mut().and_then(Packer::pop_full) {
                return Ok(Some(e));
            }
            if self.finished {
                return Ok(self.packer.as_mut().and_then(Packer::pop_rest));
            }
            match self.reader.next_record()? {
                Some(record) => self.encode(record)?,
                None => self.finished = true,
            }
        }
    }

    fn encode(&mut self, record: RawRecord) -> Result<()> {
        let path: PathBuf = self.reader.path().to_path_buf();
        let line = record.line();
        // Formats other than pre-tokenized checked above that a tokenizer is present.
        let tokenizer = self.tokenizer.as_ref();
        let need = || {
            tokenizer.ok_or_else(|| DataError::Format {
                path: path.clone(),
                message: "this format needs a tokenizer".into(),
            })
        };
        let examples: Vec<Example> = match (&record, self.format) {
            (RawRecord::Text { text, .. }, _) => {
                let eos = self.eos.unwrap_or_default();
                let packer = self.packer.get_or_insert_with(|| Packer::new(self.config.max_len));
                packer.push_document(need()?, text, eos, line)?;
                return Ok(());
            }
            (RawRecord::Json { value, .. }, format) => {
                let fields = Fields::record(&path, line, value)?;
                match format {
                    DataFormat::PreTokenized => {
                        vec![pretokenized::parse(&fields, tokenizer.map(TextTokenizer::vocab_size))?]
                    }
                    DataFormat::Text => {
                        let text = fields.str("text")?;
                        if text.trim().is_empty() {
                            return Err(fields.error("text", "is empty"));
                        }
                        let eos = self.eos.unwrap_or_default();
                        let packer = self.packer.get_or_insert_with(|| Packer::new(self.config.max_len));
                        packer.push_document(need()?, text, eos, line)?;
                        return Ok(());
                    }
                    DataFormat::Alpaca => {
                        vec![instruction::encode_alpaca(&fields, need()?, self.eos.unwrap_or_default())?]
                    }
                    DataFormat::Chat => {
                        vec![instruction::encode_chat(&fields, need()?, &self.config.chat_template)?]
                    }
                    DataFormat::SuperGlue(task) => {
                        let tok = need()?;
                        let mut out = Vec::new();
                        for ex in parse_superglue_record(task, value, &path, line)? {
                            match ex.train_example(tok, &self.config, &path)? {
                                Some(e) => out.push(e),
                                None => self.skipped_too_long += 1,
                            }
                        }
                        // Already fitted: SuperGLUE examples know their own truncation.
                        self.pending.extend(out);
                        return Ok(());
                    }
                }
            }
        };
        for example in examples {
            let bos = tokenizer.and_then(TextTokenizer::bos_id);
            let fitted = fit_or_skip(example, bos, &self.config, &path, line)?;
            match fitted {
                Some(e) => self.pending.push_back(e),
                None => self.skipped_too_long += 1,
            }
        }
        Ok(())
    }
}

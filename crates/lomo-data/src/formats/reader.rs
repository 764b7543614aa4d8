//! Records out of a file, one at a time, each with the line it starts on.
//!
//! JSONL and text files are read line by line and never held whole, so a file larger than memory
//! can be streamed. A JSON array (Alpaca's `.json`) has to be parsed whole.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{DataError, Result};

/// The separator line between documents of a plain-text file (TinyStories' convention, and
/// GPT-2's end-of-text token).
pub(crate) const DOCUMENT_SEPARATOR: &str = "<|endoftext|>";

/// One unit of a file: a JSON record, or a plain-text document.
#[derive(Debug, Clone)]
pub(crate) enum RawRecord {
    Json { line: usize, value: Value },
    Text { line: usize, text: String },
}

impl RawRecord {
    pub fn line(&self) -> usize {
        match self {
            RawRecord::Json { line, .. } | RawRecord::Text { line, .. } => *line,
        }
    }
}

/// How the file is cut into records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// One JSON object per non-blank line.
    JsonLines,
    /// Plain text; documents separated by a line holding only [`DOCUMENT_SEPARATOR`] (a file
    /// without one is a single document).
    TextDocuments,
    /// One JSON array of objects.
    JsonArray,
}

pub(crate) struct RecordReader {
    path: PathBuf,
    source: Source,
}

enum Source {
    Lines { reader: BufReader<File>, line: usize, layout: Layout },
    Array(std::vec::IntoIter<(usize, Value)>),
}

impl RecordReader {
    pub fn open(path: &Path, layout: Layout) -> Result<Self> {
        let source = match layout {
            Layout::JsonArray => Source::Array(read_json_array(path)?.into_iter()),
            Layout::JsonLines | Layout::TextDocuments => {
                let file = File::open(path).map_err(|e| DataError::io(path, e))?;
                Source::Lines { reader: BufReader::with_capacity(1 << 16, file), line: 0, layout }
            }
        };
        Ok(Self { path: path.to_path_buf(), source })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next record, `None` at the end of the file.
    pub fn next_record(&mut self) -> Result<Option<RawRecord>> {
        match &mut self.source {
            Source::Array(items) => Ok(items.next().map(|(line, value)| RawRecord::Json { line, value })),
            Source::Lines { reader, line, layout: Layout::JsonLines } => loop {
                let Some(text) = read_line(reader, line, &self.path)? else { return Ok(None) };
                if text.trim().is_empty() {
                    continue;
                }
                let value = serde_json::from_str(&text).map_err(|source| DataError::Json {
                    path: self.path.clone(),
                    line: *line,
                    source,
                })?;
                return Ok(Some(RawRecord::Json { line: *line, value }));
            },
            Source::Lines { reader, line, .. } => {
                let mut document = String::new();
                let mut first_line = 0;
                loop {
                    let Some(text) = read_line(reader, line, &self.path)? else { break };
                    if text.trim() == DOCUMENT_SEPARATOR {
                        if document.trim().is_empty() {
                            document.clear();
                            continue;
                        }
                        break;
                    }
                    if document.is_empty() {
                        first_line = *line;
                    } else {
                        document.push('\n');
                    }
                    document.push_str(&text);
                }
                // Whitespace around a document is layout, not content: a separator line's
                // neighbouring blank lines would otherwise become tokens.
                let text = document.trim();
                if text.is_empty() {
                    return Ok(None);
                }
                Ok(Some(RawRecord::Text { line: first_line, text: text.to_owned() }))
            }
        }
    }
}

/// One line without its terminator, counting lines; `None` at the end of the file.
fn read_line(reader: &mut BufReader<File>, line: &mut usize, path: &Path) -> Result<Option<String>> {
    let mut buffer = String::new();
    let read = reader.read_line(&mut buffer).map_err(|e| {
        if e.kind() == std::io::ErrorKind::InvalidData {
            DataError::Format { path: path.to_path_buf(), message: format!("line {}: not valid UTF-8", *line + 1) }
        } else {
            DataError::io(path, e)
        }
    })?;
    if read == 0 {
        return Ok(None);
    }
    *line += 1;
    if buffer.ends_with('\n') {
        buffer.pop();
        if buffer.ends_with('\r') {
            buffer.pop();
        }
    }
    Ok(Some(buffer))
}

/// Parses a file holding one JSON array, returning each element with the line it starts on.
fn read_json_array(path: &Path) -> Result<Vec<(usize, Value)>> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    let value: Value = serde_json::from_str(&text).map_err(|source| DataError::Json {
        path: path.to_path_buf(),
        line: source.line(),
        source,
    })?;
    let Value::Array(items) = value else {
        return Err(DataError::Format { path: path.to_path_buf(), message: "expected a JSON array of records".into() });
    };
    let lines = array_element_lines(&text);
    Ok(items.into_iter().enumerate().map(|(i, v)| (lines.get(i).copied().unwrap_or(1), v)).collect())
}

/// The 1-based line on which each element of the top-level JSON array in `text` starts.
/// serde_json keeps no positions, and an error that says "record 512" sends the user counting;
/// a line number opens the editor at the right place. Only called on text that parsed.
fn array_element_lines(text: &str) -> Vec<usize> {
    let mut lines = Vec::new();
    let (mut depth, mut line) = (0usize, 1usize);
    let (mut in_string, mut escaped, mut expect_element) = (false, false, false);
    for c in text.chars() {
        if c == '\n' {
            line += 1;
        }
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        if expect_element && !c.is_whitespace() && c != ']' {
            lines.push(line);
            expect_element = false;
        }
        match c {
            '"' => in_string = true,
            '[' | '{' => {
                depth += 1;
                if depth == 1 && c == '[' {
                    expect_element = true;
                }
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            ',' if depth == 1 => expect_element = true,
            _ => {}
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_elements_are_located() {
        let text = "[\n  {\"a\": \"x,]\\\"\"},\n  {\"b\": [1,\n 2]}, {\"c\": {}}\n]";
        assert_eq!(array_element_lines(text), vec![2, 3, 4]);
        assert_eq!(array_element_lines("[]"), Vec::<usize>::new());
    }
}

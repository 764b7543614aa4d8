//! Typed access to a JSON record's fields, with errors that name the file, line and field.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{DataError, Result};

/// A JSON object at a known place in a file. `prefix` is the path of this object inside the
/// record (`target.`, `messages[2].`), so nested errors name the full field.
#[derive(Debug, Clone)]
pub(crate) struct Fields<'a> {
    pub path: &'a Path,
    pub line: usize,
    prefix: String,
    object: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    /// The record `value`, which must be an object.
    pub fn record(path: &'a Path, line: usize, value: &'a Value) -> Result<Self> {
        match value {
            Value::Object(object) => Ok(Self { path, line, prefix: String::new(), object }),
            other => {
                Err(DataError::field(path, line, "(record)", format!("expected a JSON object, found {}", kind(other))))
            }
        }
    }

    pub fn has(&self, name: &str) -> bool {
        self.object.contains_key(name)
    }

    pub fn error(&self, name: &str, message: impl Into<String>) -> DataError {
        DataError::field(self.path, self.line, format!("{}{name}", self.prefix), message)
    }

    fn get(&self, name: &str) -> Result<&'a Value> {
        self.object.get(name).ok_or_else(|| self.error(name, "missing"))
    }

    pub fn str(&self, name: &str) -> Result<&'a str> {
        match self.get(name)? {
            Value::String(s) => Ok(s),
            other => Err(self.error(name, format!("expected a string, found {}", kind(other)))),
        }
    }

    /// A string field that may be absent or null (Alpaca's `input`).
    pub fn opt_str(&self, name: &str) -> Result<Option<&'a str>> {
        match self.object.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.error(name, format!("expected a string, found {}", kind(other)))),
        }
    }

    pub fn int(&self, name: &str) -> Result<i64> {
        match self.get(name)? {
            Value::Number(n) if n.as_i64().is_some() => Ok(n.as_i64().unwrap_or_default()),
            other => Err(self.error(name, format!("expected an integer, found {}", kind(other)))),
        }
    }

    pub fn bool(&self, name: &str) -> Result<bool> {
        match self.get(name)? {
            Value::Bool(b) => Ok(*b),
            other => Err(self.error(name, format!("expected true or false, found {}", kind(other)))),
        }
    }

    pub fn int_array(&self, name: &str) -> Result<Vec<i64>> {
        let not_ints = || self.error(name, "expected an array of integers");
        match self.get(name)? {
            Value::Array(items) => items.iter().map(|v| v.as_i64().ok_or_else(not_ints)).collect(),
            _ => Err(not_ints()),
        }
    }

    pub fn array(&self, name: &str) -> Result<&'a [Value]> {
        match self.get(name)? {
            Value::Array(items) => Ok(items),
            other => Err(self.error(name, format!("expected an array, found {}", kind(other)))),
        }
    }

    /// The object at `name` (its fields' errors read `name.field`).
    pub fn object(&self, name: &str) -> Result<Fields<'a>> {
        match self.get(name)? {
            Value::Object(object) => {
                Ok(Fields { prefix: format!("{}{name}.", self.prefix), object, path: self.path, line: self.line })
            }
            other => Err(self.error(name, format!("expected an object, found {}", kind(other)))),
        }
    }

    /// Element `index` of the array field `name`, as an object (its errors read
    /// `name[index].field`).
    pub fn element(&self, name: &str, index: usize, value: &'a Value) -> Result<Fields<'a>> {
        let element = format!("{name}[{index}]");
        match value {
            Value::Object(object) => {
                Ok(Fields { prefix: format!("{}{element}.", self.prefix), object, path: self.path, line: self.line })
            }
            other => Err(self.error(&element, format!("expected an object, found {}", kind(other)))),
        }
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

//! The GGUF container (llama.cpp's checkpoint format): header, metadata key/values, tensor infos
//! and the aligned data section, read from bytes and written to bytes. Spec:
//! <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>.
//!
//! This module knows the container only: what a tensor's bytes mean (ggml's quantisations) and
//! which keys a model architecture needs are the models crate's; what the `tokenizer.*` keys
//! mean is [`crate::gguf_tokenizer`]'s.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The first four bytes of every GGUF file.
pub const MAGIC: &[u8; 4] = b"GGUF";
/// The version this module writes.
pub const VERSION: u32 = 3;
/// The alignment of the data section and of every tensor in it when `general.alignment` does
/// not say otherwise.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// What is wrong with a GGUF file or one of its metadata values.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GgufError {
    /// The container is malformed (bad magic, truncated, an unknown value type, …).
    #[error("{}: invalid GGUF file at byte {offset}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Where in the file the problem is.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A metadata value is missing or of the wrong type.
    #[error("field `{key}`: {reason}")]
    Key {
        /// The metadata key.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

impl GgufError {
    fn key(key: &str, reason: impl Into<String>) -> Self {
        Self::Key { key: key.into(), reason: reason.into() }
    }
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)] // One variant per GGUF value type, named as the spec names them.
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl GgufValue {
    /// The value as an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v as u64),
            GgufValue::U16(v) => Some(v as u64),
            GgufValue::U32(v) => Some(v as u64),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            // Via the shortest decimal that round-trips: an f32 `1e-5` means 1e-5, not
            // 9.99999974737875e-6, and the configuration should say what the author wrote.
            GgufValue::F32(v) => format!("{v}").parse().ok(),
            GgufValue::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value's GGUF type id.
    pub fn type_id(&self) -> u32 {
        match self {
            GgufValue::U8(_) => 0,
            GgufValue::I8(_) => 1,
            GgufValue::U16(_) => 2,
            GgufValue::I16(_) => 3,
            GgufValue::U32(_) => 4,
            GgufValue::I32(_) => 5,
            GgufValue::F32(_) => 6,
            GgufValue::Bool(_) => 7,
            GgufValue::String(_) => 8,
            GgufValue::Array(_) => 9,
            GgufValue::U64(_) => 10,
            GgufValue::I64(_) => 11,
            GgufValue::F64(_) => 12,
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            GgufValue::U8(x) => out.push(*x),
            GgufValue::I8(x) => out.push(*x as u8),
            GgufValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
            GgufValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
            GgufValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
            GgufValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
            GgufValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
            GgufValue::Bool(x) => out.push(u8::from(*x)),
            GgufValue::String(s) => put_string(out, s),
            GgufValue::Array(items) => {
                // An empty array is written as one of strings (never written: empty keys are left out).
                out.extend_from_slice(&items.first().map_or(8, GgufValue::type_id).to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for item in items {
                    item.write(out);
                }
            }
            GgufValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
            GgufValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
            GgufValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        }
    }
}

/// Reading typed values off a metadata map, each error naming its key.
pub trait Metadata {
    /// The value under `key`.
    fn value(&self, key: &str) -> Option<&GgufValue>;

    /// A string value, if present (an error if it is not a string).
    fn string(&self, key: &str) -> Result<Option<String>, GgufError> {
        match self.value(key) {
            None => Ok(None),
            Some(v) => v.as_str().map(|s| Some(s.to_owned())).ok_or_else(|| GgufError::key(key, "expected a string")),
        }
    }

    /// An array of strings (empty when absent).
    fn strings(&self, key: &str) -> Result<Vec<String>, GgufError> {
        match self.value(key) {
            None => Ok(Vec::new()),
            Some(GgufValue::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_owned).ok_or_else(|| GgufError::key(key, "expected strings")))
                .collect(),
            Some(_) => Err(GgufError::key(key, "expected an array of strings")),
        }
    }

    /// An array of numbers (empty when absent).
    fn numbers(&self, key: &str) -> Result<Vec<f64>, GgufError> {
        match self.value(key) {
            None => Ok(Vec::new()),
            Some(GgufValue::Array(items)) => {
                items.iter().map(|v| v.as_f64().ok_or_else(|| GgufError::key(key, "expected numbers"))).collect()
            }
            Some(_) => Err(GgufError::key(key, "expected an array of numbers")),
        }
    }

    /// A boolean, if present and one.
    fn bool(&self, key: &str) -> Option<bool> {
        match self.value(key) {
            Some(GgufValue::Bool(b)) => Some(*b),
            _ => None,
        }
    }

    /// A non-negative integer, if present; a per-layer array whose entries are all equal counts
    /// as that value (some converters write one).
    fn usize(&self, key: &str) -> Result<Option<usize>, GgufError> {
        match self.value(key) {
            None => Ok(None),
            Some(GgufValue::Array(items)) => {
                let first = items.first().and_then(GgufValue::as_u64);
                match first {
                    Some(v) if items.iter().all(|i| i.as_u64() == Some(v)) => Ok(Some(v as usize)),
                    _ => Err(GgufError::key(key, "per-layer values differ (not a LLaMA)")),
                }
            }
            Some(v) => v
                .as_u64()
                .map(|v| Some(v as usize))
                .ok_or_else(|| GgufError::key(key, format!("expected an integer, found {v:?}"))),
        }
    }
}

impl Metadata for BTreeMap<String, GgufValue> {
    fn value(&self, key: &str) -> Option<&GgufValue> {
        self.get(key)
    }
}

/// One tensor's entry in the GGUF header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufTensorInfo {
    /// llama.cpp's name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions in ggml order: `dims[0]` varies fastest (the reverse of PyTorch's shape).
    pub dims: Vec<u64>,
    /// ggml type id.
    pub ggml_type: u32,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
}

impl GgufTensorInfo {
    /// The shape in PyTorch / HF order.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A GGUF file's header: everything but the tensor data.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufHeader {
    /// GGUF version (2 or 3).
    pub version: u32,
    /// Metadata key/values.
    pub metadata: BTreeMap<String, GgufValue>,
    /// Tensor infos, in file order.
    pub tensors: Vec<GgufTensorInfo>,
    /// Where the data section starts, from the start of the file.
    pub data_start: u64,
}

/// A bounds-checked little-endian reader over the file's bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn error(&self, reason: impl Into<String>) -> GgufError {
        GgufError::Invalid { path: self.path.to_path_buf(), offset: self.pos as u64, reason: reason.into() }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], GgufError> {
        let end = self.pos.checked_add(n).filter(|&end| end <= self.bytes.len());
        match end {
            Some(end) => {
                let out = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(out)
            }
            None => {
                Err(self.error(format!("file truncated: {n} more bytes needed, {} left", self.bytes.len() - self.pos)))
            }
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A count that must fit in what is left of the file (each item taking at least
    /// `min_item_bytes`), so a corrupt length cannot make us allocate terabytes.
    fn count(&mut self, min_item_bytes: usize, what: &str) -> Result<usize, GgufError> {
        let n = self.u64()?;
        let left = (self.bytes.len() - self.pos) as u64;
        if n.saturating_mul(min_item_bytes.max(1) as u64) > left {
            return Err(self.error(format!("{what} count {n} exceeds what is left of the file (truncated?)")));
        }
        Ok(n as usize)
    }

    fn string(&mut self) -> Result<String, GgufError> {
        let len = self.count(1, "string length")?;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.error("string is not UTF-8"))
    }

    fn value(&mut self, value_type: u32, depth: usize) -> Result<GgufValue, GgufError> {
        Ok(match value_type {
            0 => GgufValue::U8(self.array::<1>()?[0]),
            1 => GgufValue::I8(self.array::<1>()?[0] as i8),
            2 => GgufValue::U16(u16::from_le_bytes(self.array()?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array()?)),
            4 => GgufValue::U32(self.u32()?),
            5 => GgufValue::I32(i32::from_le_bytes(self.array()?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array()?)),
            7 => GgufValue::Bool(self.array::<1>()?[0] != 0),
            8 => GgufValue::String(self.string()?),
            9 => {
                if depth > 4 {
                    return Err(self.error("arrays nested too deep"));
                }
                let item_type = self.u32()?;
                let len = self.count(1, "array length")?;
                let mut items = Vec::with_capacity(len);
                for _ in 0..len {
                    items.push(self.value(item_type, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(self.u64()?),
            11 => GgufValue::I64(i64::from_le_bytes(self.array()?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array()?)),
            other => return Err(self.error(format!("unknown metadata value type {other}"))),
        })
    }

    fn tensor_info(&mut self) -> Result<GgufTensorInfo, GgufError> {
        let name = self.string()?;
        let n_dims = self.u32()?;
        if n_dims > 4 {
            let name = name.escape_debug();
            return Err(self.error(format!("tensor `{name}` has {n_dims} dimensions (at most 4)")));
        }
        let dims = (0..n_dims).map(|_| self.u64()).collect::<Result<Vec<_>, _>>()?;
        let ggml_type = self.u32()?;
        let offset = self.u64()?;
        Ok(GgufTensorInfo { name, dims, ggml_type, offset })
    }
}

impl GgufHeader {
    /// Parses the header at the start of `bytes` (a whole file, usually memory-mapped); `path`
    /// only names the file in errors. Tensor offsets are not checked against the data: that
    /// needs each type's block size.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self, GgufError> {
        let mut r = Reader { bytes, pos: 0, path };
        if r.take(4)? != MAGIC {
            return Err(GgufError::Invalid {
                path: path.to_path_buf(),
                offset: 0,
                reason: "not a GGUF file (bad magic)".into(),
            });
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return Err(r.error(format!("unsupported GGUF version {version} (supported: 2, 3)")));
        }
        // Each tensor info takes at least 24 bytes, each key/value at least 13.
        let num_tensors = r.count(24, "tensor")?;
        let num_kv = r.count(13, "metadata")?;
        let mut metadata = BTreeMap::new();
        for _ in 0..num_kv {
            let key = r.string()?;
            let value_type = r.u32()?;
            let value = r.value(value_type, 0)?;
            metadata.insert(key, value);
        }
        let tensors = (0..num_tensors).map(|_| r.tensor_info()).collect::<Result<Vec<_>, _>>()?;
        let alignment = metadata.get("general.alignment").and_then(GgufValue::as_u64).unwrap_or(DEFAULT_ALIGNMENT);
        if alignment == 0 {
            return Err(r.error("general.alignment is 0"));
        }
        let data_start = (r.pos as u64).next_multiple_of(alignment);
        Ok(Self { version, metadata, tensors, data_start })
    }

    /// The header bytes of a version-3 file with `metadata` (in this order) and `tensors`, padded
    /// to `alignment`: the data section follows, each tensor at its `offset` from there.
    pub fn write(metadata: &[(String, GgufValue)], tensors: &[GgufTensorInfo], alignment: u64) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (key, value) in metadata {
            put_string(&mut out, key);
            out.extend_from_slice(&value.type_id().to_le_bytes());
            value.write(&mut out);
        }
        for t in tensors {
            put_string(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for &d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ggml_type.to_le_bytes());
            out.extend_from_slice(&t.offset.to_le_bytes());
        }
        out.resize((out.len() as u64).next_multiple_of(alignment) as usize, 0);
        out
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_header_parses_back() {
        let metadata = vec![
            ("general.alignment".to_string(), GgufValue::U32(64)),
            ("a.list".to_string(), GgufValue::Array(vec![GgufValue::F32(1.5), GgufValue::F32(-2.0)])),
            ("a.name".to_string(), GgufValue::String("x".into())),
        ];
        let tensors = vec![GgufTensorInfo { name: "t".into(), dims: vec![32, 2], ggml_type: 0, offset: 0 }];
        let bytes = GgufHeader::write(&metadata, &tensors, 64);
        assert_eq!(bytes.len() % 64, 0);
        let header = GgufHeader::parse(&bytes, Path::new("x.gguf")).unwrap();
        assert_eq!(header.version, VERSION);
        assert_eq!(header.tensors, tensors);
        assert_eq!(header.data_start, bytes.len() as u64);
        assert_eq!(header.metadata, metadata.into_iter().collect());
        assert_eq!(header.tensors[0].shape(), [2, 32]);
    }

    #[test]
    fn a_truncated_header_names_the_offset() {
        let bytes = GgufHeader::write(&[], &[], 32);
        let err = GgufHeader::parse(&bytes[..10], Path::new("x.gguf")).unwrap_err();
        assert!(matches!(err, GgufError::Invalid { offset: 8, .. }), "{err}");
    }
}

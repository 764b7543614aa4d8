//! What can go wrong when reading a configuration or a checkpoint, or writing one.

use std::path::PathBuf;

/// An error of this crate. Every variant that comes from a file names it, and the tensor or
/// field in question, so that a user can tell which checkpoint is broken and where. A tensor
/// name is read from the file, so it is printed escaped: the message stays one line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file (`config.json`, `model.safetensors.index.json`) could not be parsed.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What serde said, with line and column.
        #[source]
        source: serde_json::Error,
    },
    /// A configuration field has a value this crate does not implement; building a model
    /// from it anyway would compute something else than the checkpoint's authors did.
    #[error("{path}: field `{field}`: unsupported value {value}")]
    UnsupportedConfig {
        /// The configuration file (or GGUF file) the field comes from.
        path: PathBuf,
        /// The field, as the file spells it.
        field: String,
        /// The offending value.
        value: String,
    },
    /// A configuration field is absent or inconsistent with another one.
    #[error("{path}: field `{field}`: {reason}")]
    InvalidConfig {
        /// The configuration file (or GGUF file) the field comes from.
        path: PathBuf,
        /// The field, as the file spells it.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A safetensors file is malformed (bad header, data out of bounds, truncated).
    #[error("{path}: invalid safetensors file: {reason}")]
    InvalidSafetensors {
        /// The file.
        path: PathBuf,
        /// What the parser found.
        reason: String,
    },
    /// A GGUF file is malformed (bad magic, truncated, data out of bounds).
    #[error("{path}: invalid GGUF file at byte {offset}: {reason}")]
    InvalidGguf {
        /// The file.
        path: PathBuf,
        /// Where in the file the problem is.
        offset: u64,
        /// What the parser found.
        reason: String,
    },
    /// A tensor the model needs is not in the checkpoint.
    #[error("{path}: missing tensor `{}`", .tensor.escape_debug())]
    MissingTensor {
        /// The checkpoint (its index file, when sharded).
        path: PathBuf,
        /// The tensor's name in the checkpoint.
        tensor: String,
    },
    /// The checkpoint holds a tensor that this model has no place for: probably a different
    /// architecture than the configuration says.
    #[error("{path}: unexpected tensor `{}` (not part of a {model_type} model)", .tensor.escape_debug())]
    UnexpectedTensor {
        /// The file holding it.
        path: PathBuf,
        /// The tensor's name in the checkpoint.
        tensor: String,
        /// The architecture the configuration describes.
        model_type: String,
    },
    /// A tensor's shape contradicts the configuration.
    #[error("{path}: tensor `{}` has shape {found:?}, the configuration implies {expected:?}", .tensor.escape_debug())]
    ShapeMismatch {
        /// The file holding it.
        path: PathBuf,
        /// The tensor's name in the checkpoint.
        tensor: String,
        /// The shape the configuration implies.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// A tensor is stored in an element type this crate cannot read.
    #[error("{path}: tensor `{}` has unsupported type {dtype}", .tensor.escape_debug())]
    UnsupportedTensorType {
        /// The file holding it.
        path: PathBuf,
        /// The tensor's name in the checkpoint.
        tensor: String,
        /// The type, as the file names it.
        dtype: String,
    },
    /// A float type other than f32, bf16 or f16 was asked for as storage type.
    #[error("unsupported storage dtype {0:?}: use f32, bf16 or f16")]
    UnsupportedDtype(burn::tensor::DType),
    /// A tensor could not be read back from the backend while saving.
    #[error("reading tensor `{tensor}` back from the device: {reason}")]
    TensorRead {
        /// The tensor's name in the checkpoint being written.
        tensor: String,
        /// What the backend said.
        reason: String,
    },
    /// A batch whose arrays do not match its shape.
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
    /// An unknown preset name.
    #[error("unknown model preset `{0}` (known: {1})")]
    UnknownPreset(String, String),
    /// A placement of the stages on devices that does not fit the model.
    #[error("placement: {0}")]
    Placement(String),
    /// A working copy for `--offload disk` cannot be made or read.
    #[error("offload: {0}")]
    Offload(String),
}

/// Shorthand for results of this crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }
}

impl From<lomo_io::atomic::WriteError> for ModelError {
    fn from(e: lomo_io::atomic::WriteError) -> Self {
        Self::Io { path: e.path, source: e.source }
    }
}

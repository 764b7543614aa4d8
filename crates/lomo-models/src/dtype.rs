//! Storage element types, and the conversion of checkpoint tensors into them one row block
//! at a time, so that loading never holds a second full-size copy of a tensor.

use burn::tensor::{DType, TensorData};
use half::{bf16, f16};

use crate::error::{ModelError, Result};

/// The element type the weights are stored (and mostly computed) in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum StorageDtype {
    /// 32-bit float.
    #[default]
    F32,
    /// bfloat16.
    BF16,
    /// IEEE half precision.
    F16,
}

impl StorageDtype {
    /// The burn dtype.
    pub fn to_burn(self) -> DType {
        match self {
            StorageDtype::F32 => DType::F32,
            StorageDtype::BF16 => DType::BF16,
            StorageDtype::F16 => DType::F16,
        }
    }

    /// The storage dtype of a burn dtype, if it is one.
    pub fn from_burn(dtype: DType) -> Result<Self> {
        match dtype {
            DType::F32 => Ok(StorageDtype::F32),
            DType::BF16 => Ok(StorageDtype::BF16),
            DType::F16 => Ok(StorageDtype::F16),
            other => Err(ModelError::UnsupportedDtype(other)),
        }
    }

    /// Bytes per element.
    pub fn size_of(self) -> usize {
        match self {
            StorageDtype::F32 => 4,
            StorageDtype::BF16 | StorageDtype::F16 => 2,
        }
    }

    /// The name `config.json`'s `torch_dtype` uses.
    pub fn torch_name(self) -> &'static str {
        match self {
            StorageDtype::F32 => "float32",
            StorageDtype::BF16 => "bfloat16",
            StorageDtype::F16 => "float16",
        }
    }

    /// The name a safetensors header uses.
    pub fn safetensors_name(self) -> &'static str {
        match self {
            StorageDtype::F32 => "F32",
            StorageDtype::BF16 => "BF16",
            StorageDtype::F16 => "F16",
        }
    }
}

impl std::fmt::Display for StorageDtype {
    /// The name the command line takes: `f32`, `bf16`, `f16`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StorageDtype::F32 => "f32",
            StorageDtype::BF16 => "bf16",
            StorageDtype::F16 => "f16",
        })
    }
}

impl std::str::FromStr for StorageDtype {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" => Ok(StorageDtype::F32),
            "bf16" | "bfloat16" => Ok(StorageDtype::BF16),
            "f16" | "float16" | "fp16" | "half" => Ok(StorageDtype::F16),
            other => Err(format!("unknown dtype `{other}` (f32, bf16, f16)")),
        }
    }
}

/// A checkpoint tensor seen as `rows × cols` values (a 1-D tensor is one row) that can be
/// decoded to f32 one row at a time, whatever its encoding (plain floats or GGUF blocks).
pub(crate) trait RowSource {
    /// Number of rows.
    fn rows(&self) -> usize;
    /// Values per row.
    fn cols(&self) -> usize;
    /// Decodes row `row` into `out` (`out.len() == cols`).
    fn decode_row(&self, row: usize, out: &mut [f32]);
}

/// Rows decoded per block when transposing: enough that each destination write touches a
/// run of consecutive elements, few enough that the block stays in cache.
const TRANSPOSE_BLOCK_ROWS: usize = 16;

/// Element types a tensor can be built from.
trait FromF32: burn::tensor::Element + Copy + Default {
    fn from_f32(x: f32) -> Self;
}

impl FromF32 for f32 {
    fn from_f32(x: f32) -> Self {
        x
    }
}

impl FromF32 for bf16 {
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
}

impl FromF32 for f16 {
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
}

/// Decodes `source` into a tensor of `dtype`, transposed (`[cols, rows]`) if asked.
///
/// Only the output and one block of decoded rows are ever allocated: converting a bf16
/// checkpoint never passes through an f32 copy of the whole tensor.
pub(crate) fn decode_tensor(
    source: &dyn RowSource,
    shape: Vec<usize>,
    transpose: bool,
    dtype: StorageDtype,
) -> TensorData {
    match dtype {
        StorageDtype::F32 => decode_as::<f32>(source, shape, transpose),
        StorageDtype::BF16 => decode_as::<bf16>(source, shape, transpose),
        StorageDtype::F16 => decode_as::<f16>(source, shape, transpose),
    }
}

fn decode_as<T: FromF32>(source: &dyn RowSource, shape: Vec<usize>, transpose: bool) -> TensorData {
    let (rows, cols) = (source.rows(), source.cols());
    let mut out = vec![T::default(); rows * cols];
    if transpose {
        let mut block = vec![0f32; TRANSPOSE_BLOCK_ROWS * cols];
        for row0 in (0..rows).step_by(TRANSPOSE_BLOCK_ROWS) {
            let n = TRANSPOSE_BLOCK_ROWS.min(rows - row0);
            for r in 0..n {
                source.decode_row(row0 + r, &mut block[r * cols..(r + 1) * cols]);
            }
            for c in 0..cols {
                let dest = &mut out[c * rows + row0..c * rows + row0 + n];
                for (r, d) in dest.iter_mut().enumerate() {
                    *d = T::from_f32(block[r * cols + c]);
                }
            }
        }
        let shape = vec![shape[1], shape[0]];
        TensorData::new(out, shape)
    } else {
        let mut row_buf = vec![0f32; cols];
        for (row, dest) in out.chunks_mut(cols.max(1)).enumerate() {
            source.decode_row(row, &mut row_buf);
            for (d, &x) in dest.iter_mut().zip(&row_buf) {
                *d = T::from_f32(x);
            }
        }
        TensorData::new(out, shape)
    }
}

/// Plain little-endian floats (safetensors, GGUF F32/F16/BF16).
pub(crate) struct PlainFloats<'a> {
    pub bytes: &'a [u8],
    pub encoding: FloatEncoding,
    pub rows: usize,
    pub cols: usize,
}

/// The encodings of [`PlainFloats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FloatEncoding {
    F64,
    F32,
    F16,
    BF16,
}

impl FloatEncoding {
    pub fn size_of(self) -> usize {
        match self {
            FloatEncoding::F64 => 8,
            FloatEncoding::F32 => 4,
            FloatEncoding::F16 | FloatEncoding::BF16 => 2,
        }
    }
}

impl RowSource for PlainFloats<'_> {
    fn rows(&self) -> usize {
        self.rows
    }

    fn cols(&self) -> usize {
        self.cols
    }

    fn decode_row(&self, row: usize, out: &mut [f32]) {
        let size = self.encoding.size_of();
        let bytes = &self.bytes[row * self.cols * size..(row + 1) * self.cols * size];
        match self.encoding {
            FloatEncoding::F64 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                    *o = f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32;
                }
            }
            FloatEncoding::F32 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes(b.try_into().expect("4 bytes"));
                }
            }
            FloatEncoding::F16 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
                }
            }
            FloatEncoding::BF16 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = bf16::from_le_bytes([b[0], b[1]]).to_f32();
                }
            }
        }
    }
}

/// `rows × cols` as a checkpoint tensor of `shape` is decoded: a matrix row by row, a vector
/// as one row.
pub(crate) fn rows_cols(shape: &[usize]) -> (usize, usize) {
    match shape {
        [] => (1, 1),
        [n] => (1, *n),
        [rows, rest @ ..] => (*rows, rest.iter().product()),
    }
}

//! Random initialisation, as HF's `LlamaPreTrainedModel._init_weights` does it: matrices
//! normal with standard deviation `initializer_range` (0.02), norms one, biases zero.
//!
//! Each tensor is generated directly in the storage dtype, row by row from its own seeded
//! stream, so a 7B model in bf16 never passes through an f32 copy, and the weights do not
//! depend on the order tensors are built in.

use crate::dtype::{decode_tensor, RowSource, StorageDtype};
use crate::rng::{mix, SplitMix64};
use crate::tensors::TensorSpec;

/// HF's default `initializer_range`.
pub const INITIALIZER_RANGE: f64 = 0.02;

enum Fill {
    Normal { std: f64, seed: u64 },
    Constant(f32),
}

struct RandomRows {
    rows: usize,
    cols: usize,
    fill: Fill,
}

impl RowSource for RandomRows {
    fn rows(&self) -> usize {
        self.rows
    }

    fn cols(&self) -> usize {
        self.cols
    }

    fn decode_row(&self, row: usize, out: &mut [f32]) {
        match self.fill {
            Fill::Constant(c) => out.fill(c),
            Fill::Normal { std, seed } => {
                let mut rng = SplitMix64::new(mix(&[seed, row as u64]));
                for o in out {
                    *o = (rng.next_normal() * std) as f32;
                }
            }
        }
    }
}

fn name_hash(name: &str) -> u64 {
    // FNV-1a: stable across runs and platforms, unlike `DefaultHasher`'s contract.
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// The random tensor of `spec` in `dtype`, in burn's layout ([`crate::TensorSource::Init`]): its
/// own seeded stream, the same whatever order tensors are made in.
pub(crate) fn init_tensor(spec: &TensorSpec, dtype: StorageDtype, seed: u64) -> burn::tensor::TensorData {
    let fill = if spec.slot.is_norm() {
        Fill::Constant(1.0)
    } else if spec.slot.is_bias() {
        Fill::Constant(0.0)
    } else {
        Fill::Normal { std: INITIALIZER_RANGE, seed: mix(&[seed, name_hash(&spec.name)]) }
    };
    // Generated straight in burn's layout: no transpose needed for random values.
    let shape = if spec.transposed { vec![spec.shape[1], spec.shape[0]] } else { spec.shape.clone() };
    let (rows, cols) = crate::dtype::rows_cols(&shape);
    decode_tensor(&RandomRows { rows, cols, fill }, shape, false, dtype)
}

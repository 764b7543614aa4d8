//! The embedding's weight gradient without atomics: the ids are on the host, so they are
//! grouped there (each id that occurs, with the token positions holding it), and one cube per
//! id sums its positions' gradient rows in f32 and writes its weight row once. Rows of ids that
//! do not occur stay zero. Deterministic, and one rounding to the storage dtype per element
//! (burn's `select_assign` adds row after row in the storage dtype, one unit per column).

use burn::tensor::DType;
use burn_cubecl::ops::numeric::zeros;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use super::{float_dtype, owned_contiguous, row_launch, ROW_UNITS};

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn embedding_backward_kernel<W: Float, G: Float>(
    grad: &Array<G>,
    ids: &Array<u32>,
    starts: &Array<u32>,
    positions: &Array<u32>,
    out: &mut Array<W>,
    groups: usize,
    hidden: usize,
    #[comptime] units: usize,
    #[define(W, G)] _dtypes: [StorageType; 2],
) {
    let group = CUBE_POS;
    if group >= groups {
        terminate!();
    }
    let row = ids[group] as usize * hidden;
    let (first, end) = (starts[group] as usize, starts[group + 1] as usize);
    let mut j = UNIT_POS_X as usize;
    while j < hidden {
        let mut acc = 0.0f32;
        let mut k = first;
        while k < end {
            acc += f32::cast_from(grad[positions[k] as usize * hidden + j]);
            k += 1;
        }
        out[row + j] = W::cast_from(acc);
        j += units;
    }
}

/// Each id that occurs, where its positions start in `positions` (one more entry: the end),
/// and the token positions grouped by id, in order of position within an id.
fn group_by_id(ids: &[i64]) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let mut order: Vec<u32> = (0..ids.len() as u32).collect();
    order.sort_by_key(|&p| (ids[p as usize], p));
    let (mut unique, mut starts) = (Vec::new(), Vec::new());
    for (k, &p) in order.iter().enumerate() {
        let id = ids[p as usize] as u32;
        if unique.last() != Some(&id) {
            unique.push(id);
            starts.push(k as u32);
        }
    }
    starts.push(order.len() as u32);
    (unique, starts, order)
}

fn u32_on<R: CubeRuntime>(like: &CubeTensor<R>, values: &[u32]) -> CubeTensor<R> {
    let handle = like.client.create_from_slice(bytemuck::cast_slice(values));
    CubeTensor::new_contiguous(like.client.clone(), like.device.clone(), [values.len()].into(), handle, DType::U32)
}

/// `[vocab, hidden]` in `dtype`: `grad`'s rows (`[batch, tokens, hidden]`) summed into the rows
/// their ids name.
pub fn embedding_backward<R: CubeRuntime>(
    vocab: usize,
    dtype: DType,
    ids: &[i64],
    grad: CubeTensor<R>,
) -> CubeTensor<R> {
    let grad = owned_contiguous(grad, false);
    let hidden = grad.meta.shape()[2];
    let out = zeros::<R>(grad.device.clone(), [vocab, hidden].into(), dtype);
    if ids.is_empty() || hidden == 0 {
        return out;
    }
    let (unique, starts, positions) = group_by_id(ids);
    let (count, dim) = row_launch(unique.len());
    let dtypes = [float_dtype(&out), float_dtype(&grad)];
    embedding_backward_kernel::launch::<R>(
        &grad.client.clone(),
        count,
        dim,
        grad.clone().into_array_arg(),
        u32_on(&grad, &unique).into_array_arg(),
        u32_on(&grad, &starts).into_array_arg(),
        u32_on(&grad, &positions).into_array_arg(),
        out.clone().into_array_arg(),
        unique.len(),
        hidden,
        ROW_UNITS,
        dtypes,
    );
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn positions_are_grouped_by_id() {
        let (unique, starts, positions) = super::group_by_id(&[5, 2, 5, 0, 2, 5]);
        assert_eq!(unique, [0, 2, 5]);
        assert_eq!(starts, [0, 1, 3, 6]);
        assert_eq!(positions, [3, 1, 4, 0, 2, 5]);
    }
}

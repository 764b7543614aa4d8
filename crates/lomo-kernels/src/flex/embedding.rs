//! Embedding lookup on Flex, and its backward into a gradient whose untouched rows are the
//! zero pages of a fresh allocation (burn-flex 0.21 zeroes a byte vector and copies it into an
//! aligned one first: for a 32000 × 768 f32 embedding, 200 MB written on one thread per step).

use burn::tensor::DType;
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::elem::{contiguous, slice, tensor_from, with_elem, Elem};

/// Rows `ids` of `weight` (`[vocab, hidden]`) as `[batch, tokens, hidden]`.
pub(crate) fn forward(weight: FlexTensor, ids: &[i64], [batch, tokens]: [usize; 2]) -> FlexTensor {
    let weight = contiguous(&weight);
    let hidden = weight.layout().shape()[1];
    with_elem!(weight.dtype(), |E| {
        let w = slice::<E>(&weight);
        let mut out = vec![E::from_f32(0.0); ids.len() * hidden];
        out.par_chunks_mut(hidden.max(1)).zip(ids.par_iter()).for_each(|(row, &id)| {
            row.copy_from_slice(&w[id as usize * hidden..][..hidden]);
        });
        tensor_from(out, vec![batch, tokens, hidden])
    })
}

/// `[vocab, hidden]` zeros of `dtype`, allocated zeroed (the OS's zero pages until written).
fn zeros<E: Elem>(n: usize) -> Vec<E> {
    match std::mem::size_of::<E>() {
        4 => bytemuck::cast_vec(vec![0u32; n]),
        2 => bytemuck::cast_vec(vec![0u16; n]),
        _ => unreachable!("f32, bf16 and f16 only"),
    }
}

/// The rows of `grad` (`[batch, tokens, hidden]`) summed, in f32, into the rows their ids name.
pub(crate) fn backward(vocab: usize, dtype: DType, ids: &[i64], grad: FlexTensor) -> FlexTensor {
    let grad = contiguous(&grad);
    let hidden = grad.layout().shape()[2];
    with_elem!(dtype, |E| {
        let g: Vec<f32> = with_elem!(grad.dtype(), |G| slice::<G>(&grad).iter().map(|v| v.to_f32()).collect());
        // Each id's rows are summed in f32 before the one rounding to the storage dtype.
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_unstable_by_key(|&i| ids[i]);
        let mut dw = zeros::<E>(vocab * hidden);
        let mut acc = vec![0f32; hidden];
        let mut i = 0;
        while i < order.len() {
            let id = ids[order[i]];
            acc.fill(0.0);
            while i < order.len() && ids[order[i]] == id {
                let row = &g[order[i] * hidden..][..hidden];
                acc.iter_mut().zip(row).for_each(|(a, v)| *a += v);
                i += 1;
            }
            let dst = &mut dw[id as usize * hidden..][..hidden];
            dst.iter_mut().zip(&acc).for_each(|(d, &a)| *d = E::from_f32(a));
        }
        tensor_from(dw, vec![vocab, hidden])
    })
}

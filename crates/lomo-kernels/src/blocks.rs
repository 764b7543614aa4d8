//! Large tensors handled in row blocks, so that a cast or an fp32 working copy of a big
//! parameter (an LM head, an untied embedding) never exists whole.
//!
//! The fused step keeps one copy of the weights and, at any moment, the gradients of one
//! stage. What decides its peak beyond that is the working memory of the update of the
//! largest parameter: in bf16/f16, an fp32 copy of the gradient and of the weight (8 bytes
//! per element), and on burn's Flex backend an f64 staging copy inside every cast between
//! float dtypes (8 more). Done in blocks of at most [`BLOCK_ELEMS`] elements along the first
//! dimension, the fp32 and staging copies are a few MiB whatever the parameter's size.
//!
//! The blocks' results are joined with `Tensor::cat` rather than written into the tensor with
//! `slice_assign`: burn 0.21 Flex's `slice_assign` copies the whole destination even when it
//! is uniquely owned (`to_contiguous` keeps a second reference before `Arc::make_mut`), so a
//! write per block would copy the tensor once per block. `cat` costs one copy of the result,
//! in the result's dtype (for an update, the storage dtype: 2 bytes per element in bf16).
//!
//! In f32 nothing here changes anything: casts are no-ops and the rules update in place.

use std::ops::Range;

use burn::tensor::backend::Backend;
use burn::tensor::{DType, ElementConversion, Tensor};

/// The most elements a block holds (4 MiB of f32). Tensors this size or smaller are handled
/// whole.
pub const BLOCK_ELEMS: usize = 1 << 20;

/// The row ranges (first dimension) of the blocks of a tensor of shape `dims`, or `None`
/// when the tensor is handled whole (small enough, or a scalar).
pub fn row_blocks(dims: &[usize]) -> Option<Vec<Range<usize>>> {
    let numel: usize = dims.iter().product();
    let (&rows, rest) = dims.split_first()?;
    if numel <= BLOCK_ELEMS || rows < 2 {
        return None;
    }
    let row_len = rest.iter().product::<usize>().max(1);
    let per_block = (BLOCK_ELEMS / row_len).max(1);
    Some((0..rows).step_by(per_block).map(|r| r..(r + per_block).min(rows)).collect())
}

fn rows<B: Backend, const D: usize>(t: &Tensor<B, D>, r: &Range<usize>) -> Tensor<B, D> {
    t.clone().narrow(0, r.start, r.len())
}

/// `t.cast(dtype)` block by block: the converted blocks, then their concatenation (`t` is
/// dropped first). Peak: `t` and two copies in `dtype`, with no whole-tensor staging copy.
pub fn cast<B: Backend, const D: usize>(t: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    if t.dtype() == dtype {
        return t;
    }
    let Some(blocks) = row_blocks(&t.dims()) else { return t.cast(dtype) };
    let parts: Vec<_> = blocks.iter().map(|r| rows(&t, r).cast(dtype)).collect();
    drop(t);
    Tensor::cat(parts, 0)
}

/// `acc + g` in f32: block by block when `g` must be converted (bf16/f16), so that its f32
/// copy is never whole.
pub fn add_f32<B: Backend, const D: usize>(acc: Tensor<B, D>, g: Tensor<B, D>) -> Tensor<B, D> {
    let acc = cast(acc, DType::F32);
    if g.dtype() == DType::F32 {
        return acc + g;
    }
    let Some(blocks) = row_blocks(&g.dims()) else { return acc + g.cast(DType::F32) };
    let parts: Vec<_> = blocks.iter().map(|r| rows(&acc, r) + rows(&g, r).cast(DType::F32)).collect();
    drop((acc, g));
    Tensor::cat(parts, 0)
}

/// `Σ (g · scale)²` in f32 (as f64), one block at a time. Takes `g` by value so that a small
/// tensor's f32 working copy can reuse its buffer when `g` is the only reference.
pub fn sum_sq_scaled<B: Backend, const D: usize>(g: Tensor<B, D>, scale: f64) -> f64 {
    let block_sum = |b: Tensor<B, D>| {
        let mut b = b.cast(DType::F32);
        if scale != 1.0 {
            b = b.mul_scalar(scale);
        }
        b.square().sum().into_scalar().elem::<f64>()
    };
    match row_blocks(&g.dims()) {
        Some(blocks) => blocks.iter().map(|r| block_sum(rows(&g, r))).sum(),
        None => block_sum(g),
    }
}

/// Applies an elementwise update `f(param_block, grad_block) -> new block` (in `param`'s
/// dtype) block by block. Working memory: one block's fp32 copies, plus the new value in
/// `param`'s dtype (the blocks, then their concatenation once `param` is dropped).
pub fn map_rows<B: Backend, const D: usize>(
    param: Tensor<B, D>,
    grad: &Tensor<B, D>,
    mut f: impl FnMut(Tensor<B, D>, Tensor<B, D>) -> Tensor<B, D>,
) -> Tensor<B, D> {
    let Some(blocks) = row_blocks(&param.dims()) else { return f(param, grad.clone()) };
    let parts: Vec<_> = blocks.iter().map(|r| f(rows(&param, r), rows(grad, r))).collect();
    drop(param);
    Tensor::cat(parts, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cover_every_row_once_and_respect_the_size() {
        assert!(row_blocks(&[BLOCK_ELEMS]).is_none());
        assert!(row_blocks(&[BLOCK_ELEMS + 1]).is_some());
        assert!(row_blocks(&[4, 1024]).is_none());
        assert!(row_blocks(&[1, BLOCK_ELEMS * 4]).is_none());
        let dims = [1000, 3000];
        let blocks = row_blocks(&dims).unwrap();
        assert_eq!(blocks.first().unwrap().start, 0);
        assert_eq!(blocks.last().unwrap().end, 1000);
        for pair in blocks.windows(2) {
            assert_eq!(pair[0].end, pair[1].start);
        }
        assert!(blocks.iter().all(|r| r.len() * 3000 <= BLOCK_ELEMS));
        assert_eq!(blocks[0].len(), BLOCK_ELEMS / 3000);
        // A single row longer than a block is its own block.
        assert_eq!(row_blocks(&[3, BLOCK_ELEMS * 2]).unwrap(), vec![0..1, 1..2, 2..3]);
    }
}

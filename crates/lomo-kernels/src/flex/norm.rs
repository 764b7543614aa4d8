//! RMSNorm on Flex: one pass per row forward, one per row backward, rows in parallel.
//!
//! As HF's `LlamaRMSNorm`: statistics in f32, the normalised row rounded to the storage dtype,
//! then scaled by the weight in the storage dtype.

use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::elem::{contiguous, dot, simd, slice, tensor_from, with_elem, Elem};
use super::rows_per_task;

/// `y = round(round(x · r) · w)` with `r = 1 / sqrt(mean(x²) + eps)` per row of the last
/// dimension.
pub(crate) fn forward(x: FlexTensor, weight: FlexTensor, eps: f64) -> FlexTensor {
    let shape = x.layout().shape().to_vec();
    let x = contiguous(&x);
    let weight = contiguous(&weight);
    with_elem!(x.dtype(), |E| {
        let n = *shape.last().expect("rms_norm: a tensor of rank ≥ 1");
        let w: Vec<f32> = slice::<E>(&weight).iter().map(|v| v.to_f32()).collect();
        let xs = slice::<E>(&x);
        let mut out = vec![E::from_f32(0.0); xs.len()];
        let rows = rows_per_task(n);
        out.par_chunks_mut(rows * n).zip(xs.par_chunks(rows * n)).for_each(|(out, xs)| {
            simd(
                #[inline(always)]
                || {
                    for (out, x) in out.chunks_exact_mut(n).zip(xs.chunks_exact(n)) {
                        let r = inv_rms(x, eps);
                        for ((o, &x), &w) in out.iter_mut().zip(x).zip(&w) {
                            *o = E::from_f32(E::round_trip(x.to_f32() * r) * w);
                        }
                    }
                },
            )
        });
        tensor_from(out, shape)
    })
}

/// `1 / sqrt(mean(x²) + eps)` of one row, in f32 like HF.
#[inline(always)]
fn inv_rms<E: Elem>(x: &[E], eps: f64) -> f32 {
    1.0 / (dot(x, x) / x.len() as f32 + eps as f32).sqrt()
}

/// Gradients of `x` and of the weight: with `x̂ = x · r` and `g = dy · w`,
/// `dx = r · (g − x̂ · mean(g · x̂))` and `dw = Σ_rows dy · round(x̂)`.
pub(crate) fn backward(x: FlexTensor, weight: FlexTensor, eps: f64, grad: FlexTensor) -> (FlexTensor, FlexTensor) {
    let shape = x.layout().shape().to_vec();
    let x = contiguous(&x);
    let weight = contiguous(&weight);
    let grad = contiguous(&grad);
    with_elem!(x.dtype(), |E| {
        let n = *shape.last().expect("rms_norm: a tensor of rank ≥ 1");
        let w: Vec<f32> = slice::<E>(&weight).iter().map(|v| v.to_f32()).collect();
        let xs = slice::<E>(&x);
        let dys = slice::<E>(&grad);
        let mut dx = vec![E::from_f32(0.0); xs.len()];
        let rows = rows_per_task(n);
        let dw = dx
            .par_chunks_mut(rows * n)
            .zip(xs.par_chunks(rows * n).zip(dys.par_chunks(rows * n)))
            .map(|(dx, (xs, dys))| {
                let mut dw = vec![0f32; n];
                let mut g = vec![0f32; n];
                simd(
                    #[inline(always)]
                    || {
                        for ((dx, x), dy) in dx.chunks_exact_mut(n).zip(xs.chunks_exact(n)).zip(dys.chunks_exact(n)) {
                            let r = inv_rms(x, eps);
                            for i in 0..n {
                                let (xh, dy) = (x[i].to_f32() * r, dy[i].to_f32());
                                g[i] = dy * w[i];
                                dw[i] += dy * E::round_trip(xh);
                            }
                            // mean(g · x̂) = r · mean(g · x).
                            let mean = dot(&g, x) * r / n as f32;
                            for i in 0..n {
                                dx[i] = E::from_f32(r * (g[i] - x[i].to_f32() * r * mean));
                            }
                        }
                    },
                );
                dw
            })
            .reduce(
                || vec![0f32; n],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                    a
                },
            );
        let dw: Vec<E> = dw.into_iter().map(E::from_f32).collect();
        (tensor_from(dx, shape), tensor_from(dw, vec![n]))
    })
}

//! `log softmax(logits)[label]` per row on Flex, and its backward written over the logits'
//! own buffer when nothing else holds it: the loss stage's largest tensor is then never
//! copied into a softmax, a log-softmax and a gradient of its own.
//!
//! Forward: two passes over a row (max, then Σ e^(x − max)); backward: one (the row's
//! log-sum-exp is `logits[label] − log p(label)`, read off the forward's output).

use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::elem::{exp, max_of, simd, slice, sum_exp, tensor_from, with_elem, Elem};
use super::rows_per_task;

/// `log p(label)` per row of `logits` (`[n, vocab]`, any float dtype), `[n]` in f32.
pub(crate) fn forward(logits: FlexTensor, labels: &[i64]) -> FlexTensor {
    let shape = logits.layout().shape().to_vec();
    let logits = logits.to_contiguous();
    let (n, vocab) = (shape[0], shape[1]);
    assert_eq!(labels.len(), n, "log_probs: one label per row");
    let out = with_elem!(logits.dtype(), |E| {
        let xs = slice::<E>(&logits);
        let mut out = vec![0f32; n];
        let rows = rows_per_task(vocab);
        out.par_chunks_mut(rows).zip(xs.par_chunks(rows * vocab)).zip(labels.par_chunks(rows)).for_each(
            |((out, xs), labels)| {
                simd(
                    #[inline(always)]
                    || {
                        for ((o, x), &label) in out.iter_mut().zip(xs.chunks_exact(vocab)).zip(labels) {
                            let max = max_of(x);
                            *o = x[label_index(label, vocab)].to_f32() - (max + sum_exp(x, max).ln());
                        }
                    },
                )
            },
        );
        out
    });
    tensor_from(out, vec![n])
}

fn label_index(label: i64, vocab: usize) -> usize {
    usize::try_from(label)
        .ok()
        .filter(|&l| l < vocab)
        .unwrap_or_else(|| panic!("log_probs: label {label} is outside the vocabulary of {vocab}"))
}

fn f32_values(t: &FlexTensor) -> Vec<f32> {
    let t = t.to_contiguous();
    with_elem!(t.dtype(), |G| slice::<G>(&t).iter().map(|v| v.to_f32()).collect())
}

/// `d logits = grad · (onehot(label) − softmax(logits))` per row, in the logits' dtype, with
/// `out` the forward's output. Takes the logits by value: when their buffer is not shared it
/// becomes the gradient.
pub(crate) fn backward(logits: FlexTensor, labels: &[i64], out: FlexTensor, grad: FlexTensor) -> FlexTensor {
    let shape = logits.layout().shape().to_vec();
    let (n, vocab) = (shape[0], shape[1]);
    let (grad, out) = (f32_values(&grad), f32_values(&out));
    // Work on the logits' own buffer when it is exactly this tensor's and unshared.
    let mut logits = if logits.layout().contiguous_offsets() == Some((0, n * vocab))
        && logits.bytes().len() == n * vocab * logits.dtype().size()
    {
        logits
    } else {
        logits.to_contiguous()
    };
    with_elem!(logits.dtype(), |E| {
        let rows = rows_per_task(vocab);
        let xs: &mut [E] = logits.storage_mut();
        xs.par_chunks_mut(rows * vocab)
            .zip(grad.par_chunks(rows).zip(out.par_chunks(rows)))
            .zip(labels.par_chunks(rows))
            .for_each(|((xs, (grad, out)), labels)| {
                simd(
                    #[inline(always)]
                    || {
                        for (((x, &g), &lp), &label) in xs.chunks_exact_mut(vocab).zip(grad).zip(out).zip(labels) {
                            let l = label_index(label, vocab);
                            let lse = x[l].to_f32() - lp;
                            let p_label = exp(lp);
                            for v in x.iter_mut() {
                                *v = E::from_f32(-g * exp(v.to_f32() - lse));
                            }
                            x[l] = E::from_f32(g * (1.0 - p_label));
                        }
                    },
                )
            });
    });
    logits
}

//! `log softmax(logits)[label]` per row on Flex, and its backward written over the logits'
//! own buffer when nothing else holds it: the loss stage's largest tensor is then never
//! copied into a softmax, a log-softmax and a gradient of its own.

use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::elem::{exp, slice, tensor_from, with_elem, Elem};
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
                for ((o, x), &label) in out.iter_mut().zip(xs.chunks_exact(vocab)).zip(labels) {
                    *o = x[label_index(label, vocab)].to_f32() - log_sum_exp(x);
                }
            },
        );
        out
    });
    tensor_from(out, vec![n])
}

fn label_index(label: i64, vocab: usize) -> usize {
    usize::try_from(label).ok().filter(|&l| l < vocab).unwrap_or_else(|| panic!("log_probs: label {label} is outside the vocabulary of {vocab}"))
}

/// `log Σ e^x` of one row, in f32.
#[inline]
fn log_sum_exp<E: Elem>(x: &[E]) -> f32 {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, v| m.max(v.to_f32()));
    let sum: f32 = x.iter().map(|v| exp(v.to_f32() - max)).sum();
    max + sum.ln()
}

/// `d logits = grad · (onehot(label) − softmax(logits))` per row, in the logits' dtype. Takes
/// the logits by value: when their buffer is not shared it becomes the gradient.
pub(crate) fn backward(logits: FlexTensor, labels: &[i64], grad: FlexTensor) -> FlexTensor {
    let shape = logits.layout().shape().to_vec();
    let (n, vocab) = (shape[0], shape[1]);
    let grad = grad.to_contiguous();
    let grad: Vec<f32> = with_elem!(grad.dtype(), |G| slice::<G>(&grad).iter().map(|v| v.to_f32()).collect());
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
        xs.par_chunks_mut(rows * vocab).zip(grad.par_chunks(rows)).zip(labels.par_chunks(rows)).for_each(
            |((xs, grad), labels)| {
                for ((x, &g), &label) in xs.chunks_exact_mut(vocab).zip(grad).zip(labels) {
                    let lse = log_sum_exp(x);
                    let l = label_index(label, vocab);
                    let p_label = exp(x[l].to_f32() - lse);
                    for v in x.iter_mut() {
                        *v = E::from_f32(-g * exp(v.to_f32() - lse));
                    }
                    x[l] = E::from_f32(g * (1.0 - p_label));
                }
            },
        );
    });
    logits
}

//! SwiGLU's gate on Flex: `silu(gate) · up` and its backward in one pass each, in parallel.

use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::elem::{contiguous, exp, simd, slice, tensor_from, with_elem, Elem};

/// Elements per parallel task of an elementwise kernel.
const CHUNK: usize = 1 << 14;

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// `silu(gate) · up`, each rounded to the storage dtype as HF's two ops round it.
pub(crate) fn forward(gate: FlexTensor, up: FlexTensor) -> FlexTensor {
    let shape = gate.layout().shape().to_vec();
    let (gate, up) = (contiguous(&gate), contiguous(&up));
    with_elem!(gate.dtype(), |E| {
        let (g, u) = (slice::<E>(&gate), slice::<E>(&up));
        let mut out = vec![E::from_f32(0.0); g.len()];
        out.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK))).for_each(|(out, (g, u))| {
            simd(
                #[inline(always)]
                || {
                    for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) {
                        let g = g.to_f32();
                        *o = E::from_f32(E::round_trip(g * sigmoid(g)) * u.to_f32());
                    }
                },
            )
        });
        tensor_from(out, shape)
    })
}

/// With `s = sigmoid(gate)`: `d gate = dy · up · s · (1 + gate · (1 − s))`,
/// `d up = dy · gate · s`.
pub(crate) fn backward(gate: FlexTensor, up: FlexTensor, grad: FlexTensor) -> (FlexTensor, FlexTensor) {
    let shape = gate.layout().shape().to_vec();
    let (gate, up, grad) = (contiguous(&gate), contiguous(&up), contiguous(&grad));
    with_elem!(gate.dtype(), |E| {
        let (g, u, dy) = (slice::<E>(&gate), slice::<E>(&up), slice::<E>(&grad));
        let mut d_gate = vec![E::from_f32(0.0); g.len()];
        let mut d_up = vec![E::from_f32(0.0); g.len()];
        d_gate
            .par_chunks_mut(CHUNK)
            .zip(d_up.par_chunks_mut(CHUNK))
            .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)).zip(dy.par_chunks(CHUNK)))
            .for_each(|((dg, du), ((g, u), dy))| {
                simd(
                    #[inline(always)]
                    || {
                        for i in 0..g.len() {
                            let (g, u, dy) = (g[i].to_f32(), u[i].to_f32(), dy[i].to_f32());
                            let s = sigmoid(g);
                            dg[i] = E::from_f32(dy * u * s * (1.0 + g * (1.0 - s)));
                            du[i] = E::from_f32(dy * E::round_trip(g * s));
                        }
                    },
                )
            });
        (tensor_from(d_gate, shape.clone()), tensor_from(d_up, shape))
    })
}

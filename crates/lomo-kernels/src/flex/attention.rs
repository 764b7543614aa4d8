//! Causal grouped-query attention with RoPE on Flex, forward and backward, in the layout the
//! projections produce and read (`[batch, tokens, heads × head_dim]`): no `swap_dims` view, no
//! broadcast mask, no `batch × heads × tokens × tokens` score tensor.
//!
//! Per (row, head) the queries go in blocks of [`QUERY_BLOCK`] against the keys a block can see
//! (causal), with scores, softmax and products in f32 on one thread; heads run in parallel.
//! Forward keeps the log-sum-exp of every query row, so the backward recomputes the
//! probabilities from it without storing them (FlashAttention's arrangement, Dao et al. 2022,
//! without the key tiling: one block of scores is `QUERY_BLOCK × tokens`).
//!
//! A query row that may see no key at all (every key up to it is padding) gets a zero output
//! and no gradient. The reference implementation gives such a row a uniform average instead
//! (HF's additive-mask arithmetic); neither reaches a position that is not padding, since no
//! query that sees a real key sees a padded one.

use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::elem::{contiguous, dot, exp, gemm_f32, max_of, simd, slice, sum_exp, tensor_from, with_elem, Elem};
use crate::AttentionSpec;

/// Query rows per block of scores.
const QUERY_BLOCK: usize = 64;

/// The sizes of one attention call.
#[derive(Debug, Clone, Copy)]
struct Dims {
    batch: usize,
    tokens: usize,
    heads: usize,
    kv_heads: usize,
    dim: usize,
}

impl Dims {
    fn new(q: &FlexTensor, k: &FlexTensor, spec: AttentionSpec) -> Self {
        let qs = q.layout().shape();
        let ks = k.layout().shape();
        assert_eq!(qs.num_dims(), 3, "attention: queries are [batch, tokens, heads × head_dim]");
        let d = Self { batch: qs[0], tokens: qs[1], heads: spec.heads, kv_heads: spec.kv_heads, dim: spec.head_dim };
        assert_eq!(qs[2], d.heads * d.dim, "attention: queries' width is heads × head_dim");
        assert_eq!(
            [ks[0], ks[1], ks[2]],
            [d.batch, d.tokens, d.kv_heads * d.dim],
            "attention: keys are [batch, tokens, kv_heads × head_dim]"
        );
        assert!(
            d.kv_heads > 0 && d.heads.is_multiple_of(d.kv_heads),
            "attention: heads must be a multiple of kv_heads"
        );
        assert!(d.dim.is_multiple_of(2), "attention: RoPE needs an even head_dim");
        d
    }

    fn groups(&self) -> usize {
        self.heads / self.kv_heads
    }

    fn scale(&self) -> f32 {
        (self.dim as f32).powf(-0.5)
    }

    /// Elements of one head's `[tokens, dim]` block.
    fn head_len(&self) -> usize {
        self.tokens * self.dim
    }
}

/// The rotary tables in f32, `[tokens, dim]` each.
struct Rope {
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl Rope {
    fn new(cos: &FlexTensor, sin: &FlexTensor, d: &Dims) -> Self {
        let read = |t: &FlexTensor| -> Vec<f32> {
            let t = contiguous(t);
            let shape = t.layout().shape();
            assert_eq!([shape[0], shape[1]], [d.tokens, d.dim], "attention: RoPE tables are [tokens, head_dim]");
            with_elem!(t.dtype(), |E| slice::<E>(&t).iter().map(|v| v.to_f32()).collect())
        };
        Self { cos: read(cos), sin: read(sin) }
    }
}

/// Which keys a query may see: key `j ≤ t` of its own row that is not padding (and within the
/// sliding window, if any).
struct Visibility<'a> {
    /// `[batch, tokens]`, true for a real token; `None` when no row has padding.
    keep: Option<&'a [bool]>,
    tokens: usize,
    window: Option<usize>,
}

impl Visibility<'_> {
    /// The first key a query seeing keys `..limit` may see.
    #[inline]
    fn start(&self, limit: usize) -> usize {
        self.window.map_or(0, |w| limit.saturating_sub(w))
    }

    /// The padding of row `b`'s keys, `None` when nothing is padded.
    #[inline]
    fn keep_row(&self, b: usize) -> Option<&[bool]> {
        self.keep.map(|keep| &keep[b * self.tokens..][..self.tokens])
    }
}

/// Sets the scores of keys past the causal limit (`j > t`, at `limit = t + 1`), before the
/// window's `start`, or padded to −∞; returns whether any key is left.
#[inline(always)]
fn mask_row(row: &mut [f32], start: usize, limit: usize, keep: Option<&[bool]>) -> bool {
    row[limit..].fill(f32::NEG_INFINITY);
    row[..start].fill(f32::NEG_INFINITY);
    match keep {
        None => limit > start,
        Some(keep) => {
            let mut any = false;
            for (s, &k) in row[start..limit].iter_mut().zip(&keep[start..limit]) {
                if !k {
                    *s = f32::NEG_INFINITY;
                }
                any |= k;
            }
            any
        }
    }
}

/// `[batch, tokens, n × dim]` (storage dtype) → `[batch, n, tokens, dim]` f32, rotated by RoPE and
/// multiplied by `scale` when `rope` is given.
fn pack<E: Elem>(x: &[E], n: usize, d: &Dims, rope: Option<(&Rope, f32)>) -> Vec<f32> {
    let (tokens, dim, half) = (d.tokens, d.dim, d.dim / 2);
    let mut out = vec![0f32; d.batch * n * tokens * dim];
    out.par_chunks_mut(tokens * dim).enumerate().for_each(|(bh, out)| {
        simd(
            #[inline(always)]
            || {
                let (b, h) = (bh / n, bh % n);
                for t in 0..tokens {
                    let src = &x[(b * tokens + t) * n * dim + h * dim..][..dim];
                    let dst = &mut out[t * dim..][..dim];
                    match rope {
                        None => dst.iter_mut().zip(src).for_each(|(o, v)| *o = v.to_f32()),
                        Some((rope, scale)) => {
                            let (cos, sin) = (&rope.cos[t * dim..][..dim], &rope.sin[t * dim..][..dim]);
                            for i in 0..half {
                                let (x1, x2) = (src[i].to_f32(), src[i + half].to_f32());
                                dst[i] = (x1 * cos[i] - x2 * sin[i]) * scale;
                                dst[i + half] = (x2 * cos[i + half] + x1 * sin[i + half]) * scale;
                            }
                        }
                    }
                }
            },
        )
    });
    out
}

/// The inverse of [`pack`] for gradients: `[batch, heads, tokens, dim]` f32 blocks summed over
/// the `sum` heads that share an output head → `[batch, tokens, n × dim]` in the storage dtype,
/// through RoPE's transpose and times `scale` when `rope` is given.
fn unpack<E: Elem>(packed: &[f32], n: usize, sum: usize, d: &Dims, rope: Option<(&Rope, f32)>) -> Vec<E> {
    let (tokens, dim, half) = (d.tokens, d.dim, d.dim / 2);
    let mut out = vec![E::from_f32(0.0); d.batch * tokens * n * dim];
    out.par_chunks_mut(n * dim).enumerate().for_each_init(
        || vec![0f32; dim],
        |acc, (bt, row)| {
            simd(
                #[inline(always)]
                || {
                    let (b, t) = (bt / tokens, bt % tokens);
                    for h in 0..n {
                        acc.fill(0.0);
                        for s in 0..sum {
                            let src = &packed[((b * n + h) * sum + s) * tokens * dim + t * dim..][..dim];
                            acc.iter_mut().zip(src).for_each(|(a, v)| *a += v);
                        }
                        let dst = &mut row[h * dim..][..dim];
                        match rope {
                            None => dst.iter_mut().zip(acc.iter()).for_each(|(o, &v)| *o = E::from_f32(v)),
                            Some((rope, scale)) => {
                                let (cos, sin) = (&rope.cos[t * dim..][..dim], &rope.sin[t * dim..][..dim]);
                                for i in 0..half {
                                    let (g1, g2) = (acc[i], acc[i + half]);
                                    dst[i] = E::from_f32((g1 * cos[i] + g2 * sin[i + half]) * scale);
                                    dst[i + half] = E::from_f32((g2 * cos[i + half] - g1 * sin[i]) * scale);
                                }
                            }
                        }
                    }
                },
            )
        },
    );
    out
}

/// Forward: the output `[batch, tokens, heads × dim]` in the storage dtype and the log-sum-exp
/// of every query row, `[batch, heads, tokens]` f32 (0 for a row that sees no key).
pub(crate) fn forward(
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    cos: FlexTensor,
    sin: FlexTensor,
    padding: Option<&[bool]>,
    spec: AttentionSpec,
) -> (FlexTensor, FlexTensor) {
    let d = Dims::new(&q, &k, spec);
    let rope = Rope::new(&cos, &sin, &d);
    let vis = Visibility { keep: padding, tokens: d.tokens, window: spec.window };
    if let Some(keep) = padding {
        assert_eq!(keep.len(), d.batch * d.tokens, "attention: padding mask is [batch, tokens]");
    }
    let (q, k, v) = (contiguous(&q), contiguous(&k), contiguous(&v));
    with_elem!(q.dtype(), |E| {
        let qs = pack(slice::<E>(&q), d.heads, &d, Some((&rope, d.scale())));
        let kr = pack(slice::<E>(&k), d.kv_heads, &d, Some((&rope, 1.0)));
        let vs = pack(slice::<E>(&v), d.kv_heads, &d, None);
        let (tokens, dim, hl) = (d.tokens, d.dim, d.head_len());
        let mut out = vec![0f32; d.batch * d.heads * hl];
        let mut lse = vec![0f32; d.batch * d.heads * tokens];
        out.par_chunks_mut(hl).zip(lse.par_chunks_mut(tokens)).enumerate().for_each(|(bh, (out, lse))| {
            simd(
                #[inline(always)]
                || {
                    let (b, h) = (bh / d.heads, bh % d.heads);
                    let kv = (b * d.kv_heads + h / d.groups()) * hl;
                    let (q, k, v) = (&qs[bh * hl..][..hl], &kr[kv..][..hl], &vs[kv..][..hl]);
                    let mut scores = vec![0f32; QUERY_BLOCK * tokens];
                    for r0 in (0..tokens).step_by(QUERY_BLOCK) {
                        let r1 = (r0 + QUERY_BLOCK).min(tokens);
                        let (rows, keys) = (r1 - r0, r1);
                        let s = &mut scores[..rows * keys];
                        gemm_f32([rows, keys, dim], (&q[r0 * dim..], dim, 1), (k, 1, dim), (s, keys), false);
                        for (i, row) in s.chunks_exact_mut(keys).enumerate() {
                            let limit = r0 + i + 1;
                            lse[r0 + i] = softmax_row(row, vis.start(limit), limit, vis.keep_row(b));
                        }
                        gemm_f32([rows, dim, keys], (s, keys, 1), (v, dim, 1), (&mut out[r0 * dim..], dim), false);
                    }
                },
            )
        });
        let out = unpack::<E>(&out, d.heads, 1, &d, None);
        (tensor_from(out, vec![d.batch, tokens, d.heads * dim]), tensor_from(lse, vec![d.batch, d.heads, tokens]))
    })
}

/// Turns a row of scores into probabilities over the first `limit` keys that are not padding
/// (0 elsewhere) and returns their log-sum-exp; a row that sees nothing becomes all 0
/// (log-sum-exp 0).
#[inline(always)]
fn softmax_row(row: &mut [f32], start: usize, limit: usize, keep: Option<&[bool]>) -> f32 {
    if !mask_row(row, start, limit, keep) {
        row.fill(0.0);
        return 0.0;
    }
    let (seen, rest) = row.split_at_mut(limit);
    rest.fill(0.0);
    let max = max_of(seen);
    let sum = sum_exp_masked(seen, max);
    let inv = 1.0 / sum;
    for s in seen.iter_mut() {
        // Masked keys hold −∞, whose exp must be exactly 0 (`exp` clamps to the smallest normal).
        *s = if *s == f32::NEG_INFINITY { 0.0 } else { exp(*s - max) * inv };
    }
    max + sum.ln()
}

/// `Σ e^(s − shift)` over the keys not masked to −∞.
#[inline(always)]
fn sum_exp_masked(row: &[f32], shift: f32) -> f32 {
    if row.iter().all(|&s| s != f32::NEG_INFINITY) {
        return sum_exp(row, shift);
    }
    row.iter().filter(|&&s| s != f32::NEG_INFINITY).map(|&s| exp(s - shift)).sum()
}

/// Backward: the gradients of the queries, keys and values, each in its input's layout and
/// dtype, from the forward's output `out` and log-sum-exp `lse` and the output's gradient.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    cos: FlexTensor,
    sin: FlexTensor,
    padding: Option<&[bool]>,
    spec: AttentionSpec,
    out: FlexTensor,
    lse: FlexTensor,
    grad: FlexTensor,
) -> (FlexTensor, FlexTensor, FlexTensor) {
    let d = Dims::new(&q, &k, spec);
    let rope = Rope::new(&cos, &sin, &d);
    let vis = Visibility { keep: padding, tokens: d.tokens, window: spec.window };
    let (q, k, v, out, grad, lse) =
        (contiguous(&q), contiguous(&k), contiguous(&v), contiguous(&out), contiguous(&grad), contiguous(&lse));
    let lse = slice::<f32>(&lse);
    with_elem!(q.dtype(), |E| {
        let qs = pack(slice::<E>(&q), d.heads, &d, Some((&rope, d.scale())));
        let kr = pack(slice::<E>(&k), d.kv_heads, &d, Some((&rope, 1.0)));
        let vs = pack(slice::<E>(&v), d.kv_heads, &d, None);
        let dout = pack(slice::<E>(&grad), d.heads, &d, None);
        let (tokens, dim, hl) = (d.tokens, d.dim, d.head_len());
        // D_i = Σ dO_i · O_i per query row and head, `[batch, heads, tokens]`.
        let (o_rows, g_rows) = (slice::<E>(&out), slice::<E>(&grad));
        let mut row_dot = vec![0f32; d.batch * d.heads * tokens];
        row_dot.par_chunks_mut(tokens).enumerate().for_each(|(bh, dots)| {
            simd(
                #[inline(always)]
                || {
                    let (b, h) = (bh / d.heads, bh % d.heads);
                    for (t, out) in dots.iter_mut().enumerate() {
                        let at = (b * tokens + t) * d.heads * dim + h * dim;
                        *out = dot(&o_rows[at..at + dim], &g_rows[at..at + dim]);
                    }
                },
            )
        });

        let mut dq = vec![0f32; d.batch * d.heads * hl];
        let mut dk = vec![0f32; d.batch * d.heads * hl];
        let mut dv = vec![0f32; d.batch * d.heads * hl];
        dq.par_chunks_mut(hl).zip(dk.par_chunks_mut(hl)).zip(dv.par_chunks_mut(hl)).enumerate().for_each(
            |(bh, ((dq, dk), dv))| {
                simd(
                    #[inline(always)]
                    || {
                        let (b, h) = (bh / d.heads, bh % d.heads);
                        let kv = (b * d.kv_heads + h / d.groups()) * hl;
                        let (q, k, v, go) =
                            (&qs[bh * hl..][..hl], &kr[kv..][..hl], &vs[kv..][..hl], &dout[bh * hl..][..hl]);
                        let (lse, row_dot) = (&lse[bh * tokens..][..tokens], &row_dot[bh * tokens..][..tokens]);
                        let mut probs = vec![0f32; QUERY_BLOCK * tokens];
                        let mut dscores = vec![0f32; QUERY_BLOCK * tokens];
                        for r0 in (0..tokens).step_by(QUERY_BLOCK) {
                            let r1 = (r0 + QUERY_BLOCK).min(tokens);
                            let (rows, keys) = (r1 - r0, r1);
                            let (p, ds) = (&mut probs[..rows * keys], &mut dscores[..rows * keys]);
                            gemm_f32([rows, keys, dim], (&q[r0 * dim..], dim, 1), (k, 1, dim), (p, keys), false);
                            for (i, row) in p.chunks_exact_mut(keys).enumerate() {
                                let t = r0 + i;
                                if !mask_row(row, vis.start(t + 1), t + 1, vis.keep_row(b)) {
                                    row.fill(0.0);
                                    continue;
                                }
                                let (seen, rest) = row.split_at_mut(t + 1);
                                rest.fill(0.0);
                                for s in seen.iter_mut() {
                                    *s = if *s == f32::NEG_INFINITY { 0.0 } else { exp(*s - lse[t]) };
                                }
                            }
                            // dV += Pᵀ dO; dP = dO Vᵀ.
                            gemm_f32([keys, dim, rows], (p, 1, keys), (&go[r0 * dim..], dim, 1), (dv, dim), true);
                            gemm_f32([rows, keys, dim], (&go[r0 * dim..], dim, 1), (v, 1, dim), (ds, keys), false);
                            // dS = P ∘ (dP − D).
                            for i in 0..rows {
                                let dot = row_dot[r0 + i];
                                let (p, ds) = (&p[i * keys..][..keys], &mut ds[i * keys..][..keys]);
                                ds.iter_mut().zip(p).for_each(|(ds, &p)| *ds = p * (*ds - dot));
                            }
                            // dQs = dS K; dK += dSᵀ Qs.
                            gemm_f32([rows, dim, keys], (ds, keys, 1), (k, dim, 1), (&mut dq[r0 * dim..], dim), false);
                            gemm_f32([keys, dim, rows], (ds, 1, keys), (&q[r0 * dim..], dim, 1), (dk, dim), true);
                        }
                    },
                )
            },
        );
        // Qs = scale · rope(q): dq = scale · ropeᵀ(dQs). Kr = rope(k), summed over the query heads
        // that share a key head; V likewise without the rotation.
        let groups = d.groups();
        let dq = unpack::<E>(&dq, d.heads, 1, &d, Some((&rope, d.scale())));
        let dk = unpack::<E>(&dk, d.kv_heads, groups, &d, Some((&rope, 1.0)));
        let dv = unpack::<E>(&dv, d.kv_heads, groups, &d, None);
        let kv_shape = vec![d.batch, tokens, d.kv_heads * dim];
        (
            tensor_from(dq, vec![d.batch, tokens, d.heads * dim]),
            tensor_from(dk, kv_shape.clone()),
            tensor_from(dv, kv_shape),
        )
    })
}

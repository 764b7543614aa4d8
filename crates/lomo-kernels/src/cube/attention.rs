//! Causal grouped-query attention with RoPE, the sliding window and key padding, forward and
//! backward, without a `tokens × tokens` score tensor: one unit per query row (forward, `dq`)
//! or per key row (`dk`, `dv`), online softmax over the keys it may see, f32 inside. RoPE is its
//! own elementwise kernel (and its transpose for the backward) around the attention core.
//!
//! This is the plain arrangement (no tiles in shared memory, no tensor cores): memory-light,
//! and exact against the reference, but its speed on a large GPU against the reference (burn's
//! matmuls and softmax) is unmeasured, so it is used only where asked for
//! ([`set_cube_attention`], or `LOMO_ATTENTION=cube`).

use burn::tensor::DType;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use super::{elementwise_launch, empty_f32, empty_like, float_dtype, owned_contiguous, OptIn};
use crate::{AttentionSpec, KeyPadding};

static CUBE_ATTENTION: OptIn = OptIn::new("LOMO_ATTENTION", "cube");

/// Whether the CubeCL attention replaces the reference on CubeCL backends: as
/// [`set_cube_attention`] last set it, else `LOMO_ATTENTION=cube` in the environment.
pub fn enabled() -> bool {
    CUBE_ATTENTION.on()
}

/// Runs the attention of CubeCL backends (CUDA, wgpu) on lomo's own kernels (`true`: no
/// `tokens × tokens` scores, speed on large GPUs not yet measured) or on the reference
/// composition of burn's ops (`false`, the default unless `LOMO_ATTENTION=cube`).
pub fn set_cube_attention(on: bool) {
    CUBE_ATTENTION.set(on)
}

/// RoPE on `x` (`[batch, tokens, heads × head_dim]`) with the tables `[tokens, head_dim]`, or its
/// transpose (the backward) with `inverse`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn rope_kernel<E: Float, T: Float>(
    x: &Array<E>,
    cos: &Array<T>,
    sin: &Array<T>,
    out: &mut Array<E>,
    tokens: usize,
    width: usize,
    head_dim: usize,
    #[comptime] inverse: bool,
    #[define(E, T)] _dtypes: [StorageType; 2],
) {
    let i = ABSOLUTE_POS;
    if i >= out.len() {
        terminate!();
    }
    let t = (i / width) % tokens;
    let d = i % head_dim;
    let half = head_dim / 2;
    let table = t * head_dim;
    let mut y = f32::cast_from(x[i]) * f32::cast_from(cos[table + d]);
    // x[d]·cos[d] − x[d + h]·sin[d] (d < h), x[d]·cos[d] + x[d − h]·sin[d] (d ≥ h); the transpose
    // takes sin at the partner's position with the opposite sign.
    if d < half {
        let partner = f32::cast_from(x[i + half]);
        if inverse {
            y += partner * f32::cast_from(sin[table + d + half]);
        } else {
            y -= partner * f32::cast_from(sin[table + d]);
        }
    } else {
        let partner = f32::cast_from(x[i - half]);
        if inverse {
            y -= partner * f32::cast_from(sin[table + d - half]);
        } else {
            y += partner * f32::cast_from(sin[table + d]);
        }
    }
    out[i] = E::cast_from(y);
}

/// The first key query `i` sees: `i − window + 1` with a window, else 0.
#[cube]
fn first_key(i: usize, window: usize, #[comptime] windowed: bool) -> usize {
    let mut first = 0;
    if windowed && i + 1 > window {
        first = i + 1 - window;
    }
    first
}

/// Whether key `j` of row `b` holds a real token.
#[cube]
fn kept(keep: &Array<u32>, b: usize, tokens: usize, j: usize, #[comptime] padded: bool) -> bool {
    let mut yes = true;
    if padded {
        yes = keep[b * tokens + j] != 0;
    }
    yes
}

/// One unit per query row `(b, h, i)`: `out` and the row's log-sum-exp.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn forward_kernel<E: Float>(
    q: &Array<E>,
    k: &Array<E>,
    v: &Array<E>,
    keep: &Array<u32>,
    out: &mut Array<E>,
    lse: &mut Array<f32>,
    rows: usize,
    tokens: usize,
    heads: usize,
    kv_heads: usize,
    window: usize,
    scale: f32,
    #[comptime] head_dim: usize,
    #[comptime] windowed: bool,
    #[comptime] padded: bool,
    #[define(E)] _dtype: StorageType,
) {
    let pos = ABSOLUTE_POS;
    if pos >= rows {
        terminate!();
    }
    let i = pos % tokens;
    let h = (pos / tokens) % heads;
    let b = pos / (tokens * heads);
    let kvh = h / (heads / kv_heads);
    let q_base = (b * tokens + i) * heads * head_dim + h * head_dim;
    let mut qv = Array::<f32>::new(head_dim);
    let mut acc = Array::<f32>::new(head_dim);
    #[unroll]
    for d in 0..head_dim {
        qv[d] = f32::cast_from(q[q_base + d]) * scale;
        acc[d] = 0.0f32;
    }
    let mut m = f32::new(-3.0e38);
    let mut l = 0.0f32;
    let mut j = first_key(i, window, windowed);
    while j <= i {
        if kept(keep, b, tokens, j, padded) {
            let k_base = (b * tokens + j) * kv_heads * head_dim + kvh * head_dim;
            let mut s = 0.0f32;
            #[unroll]
            for d in 0..head_dim {
                s += qv[d] * f32::cast_from(k[k_base + d]);
            }
            let m_new = max(m, s);
            let correction = (m - m_new).exp();
            let p = (s - m_new).exp();
            l = l * correction + p;
            #[unroll]
            for d in 0..head_dim {
                acc[d] = acc[d] * correction + p * f32::cast_from(v[k_base + d]);
            }
            m = m_new;
        }
        j += 1;
    }
    let mut inv = 0.0f32;
    if l > 0.0f32 {
        inv = 1.0f32 / l;
    }
    #[unroll]
    for d in 0..head_dim {
        out[q_base + d] = E::cast_from(acc[d] * inv);
    }
    lse[pos] = m + l.ln();
}

/// One unit per query row: `D = rowsum(dO ∘ O)` (kept for the key kernel) and `dq`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn dq_kernel<E: Float>(
    q: &Array<E>,
    k: &Array<E>,
    v: &Array<E>,
    keep: &Array<u32>,
    out: &Array<E>,
    lse: &Array<f32>,
    grad: &Array<E>,
    dq: &mut Array<E>,
    delta: &mut Array<f32>,
    rows: usize,
    tokens: usize,
    heads: usize,
    kv_heads: usize,
    window: usize,
    scale: f32,
    #[comptime] head_dim: usize,
    #[comptime] windowed: bool,
    #[comptime] padded: bool,
    #[define(E)] _dtype: StorageType,
) {
    let pos = ABSOLUTE_POS;
    if pos >= rows {
        terminate!();
    }
    let i = pos % tokens;
    let h = (pos / tokens) % heads;
    let b = pos / (tokens * heads);
    let kvh = h / (heads / kv_heads);
    let q_base = (b * tokens + i) * heads * head_dim + h * head_dim;
    let mut qv = Array::<f32>::new(head_dim);
    let mut dov = Array::<f32>::new(head_dim);
    let mut acc = Array::<f32>::new(head_dim);
    let mut row_delta = 0.0f32;
    #[unroll]
    for d in 0..head_dim {
        qv[d] = f32::cast_from(q[q_base + d]) * scale;
        dov[d] = f32::cast_from(grad[q_base + d]);
        row_delta += dov[d] * f32::cast_from(out[q_base + d]);
        acc[d] = 0.0f32;
    }
    delta[pos] = row_delta;
    let row_lse = lse[pos];
    let mut j = first_key(i, window, windowed);
    while j <= i {
        if kept(keep, b, tokens, j, padded) {
            let k_base = (b * tokens + j) * kv_heads * head_dim + kvh * head_dim;
            let mut s = 0.0f32;
            let mut dp = 0.0f32;
            #[unroll]
            for d in 0..head_dim {
                s += qv[d] * f32::cast_from(k[k_base + d]);
                dp += dov[d] * f32::cast_from(v[k_base + d]);
            }
            let ds = (s - row_lse).exp() * (dp - row_delta);
            #[unroll]
            for d in 0..head_dim {
                acc[d] += ds * f32::cast_from(k[k_base + d]);
            }
        }
        j += 1;
    }
    #[unroll]
    for d in 0..head_dim {
        dq[q_base + d] = E::cast_from(acc[d] * scale);
    }
}

/// One unit per key row `(b, kv head, j)`: `dk` and `dv`, over every query head of its group and
/// every query that sees it.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn dkv_kernel<E: Float>(
    q: &Array<E>,
    k: &Array<E>,
    v: &Array<E>,
    keep: &Array<u32>,
    lse: &Array<f32>,
    delta: &Array<f32>,
    grad: &Array<E>,
    dk: &mut Array<E>,
    dv: &mut Array<E>,
    rows: usize,
    tokens: usize,
    heads: usize,
    kv_heads: usize,
    window: usize,
    scale: f32,
    #[comptime] head_dim: usize,
    #[comptime] windowed: bool,
    #[comptime] padded: bool,
    #[define(E)] _dtype: StorageType,
) {
    let pos = ABSOLUTE_POS;
    if pos >= rows {
        terminate!();
    }
    let j = pos % tokens;
    let kvh = (pos / tokens) % kv_heads;
    let b = pos / (tokens * kv_heads);
    let group = heads / kv_heads;
    let k_base = (b * tokens + j) * kv_heads * head_dim + kvh * head_dim;
    let mut kv = Array::<f32>::new(head_dim);
    let mut vv = Array::<f32>::new(head_dim);
    let mut dk_acc = Array::<f32>::new(head_dim);
    let mut dv_acc = Array::<f32>::new(head_dim);
    #[unroll]
    for d in 0..head_dim {
        kv[d] = f32::cast_from(k[k_base + d]);
        vv[d] = f32::cast_from(v[k_base + d]);
        dk_acc[d] = 0.0f32;
        dv_acc[d] = 0.0f32;
    }
    let mut end = tokens;
    if windowed {
        end = min(tokens, j + window);
    }
    if kept(keep, b, tokens, j, padded) {
        for hh in 0..group {
            let h = kvh * group + hh;
            let mut i = j;
            while i < end {
                let q_base = (b * tokens + i) * heads * head_dim + h * head_dim;
                let row = (b * heads + h) * tokens + i;
                let mut s = 0.0f32;
                let mut dp = 0.0f32;
                #[unroll]
                for d in 0..head_dim {
                    s += f32::cast_from(q[q_base + d]) * scale * kv[d];
                    dp += f32::cast_from(grad[q_base + d]) * vv[d];
                }
                let p = (s - lse[row]).exp();
                let ds = p * (dp - delta[row]);
                #[unroll]
                for d in 0..head_dim {
                    dv_acc[d] += p * f32::cast_from(grad[q_base + d]);
                    dk_acc[d] += ds * f32::cast_from(q[q_base + d]);
                }
                i += 1;
            }
        }
    }
    #[unroll]
    for d in 0..head_dim {
        dk[k_base + d] = E::cast_from(dk_acc[d] * scale);
        dv[k_base + d] = E::cast_from(dv_acc[d]);
    }
}

/// RoPE (or, with `inverse`, its transpose) of `x` `[batch, tokens, n × head_dim]`.
fn rope<R: CubeRuntime>(
    x: &CubeTensor<R>,
    cos: &CubeTensor<R>,
    sin: &CubeTensor<R>,
    dim: usize,
    inverse: bool,
) -> CubeTensor<R> {
    let shape = x.meta.shape();
    let (tokens, width) = (shape[1], shape[2]);
    let out = empty_like(x, x.dtype);
    let (count, cube_dim) = elementwise_launch(&x.client, x.meta.num_elements());
    rope_kernel::launch::<R>(
        &x.client.clone(),
        count,
        cube_dim,
        x.clone().into_array_arg(),
        cos.clone().into_array_arg(),
        sin.clone().into_array_arg(),
        out.clone().into_array_arg(),
        tokens,
        width,
        dim,
        inverse,
        [float_dtype(x), float_dtype(cos)],
    );
    out
}

/// The key padding as a `u32` array on the device (one 1 where there is none, never read).
fn keep_on<R: CubeRuntime>(like: &CubeTensor<R>, padding: Option<&KeyPadding>) -> CubeTensor<R> {
    let keep: Vec<u32> = padding.map_or(vec![1], |p| p.keep().iter().map(|&k| k as u32).collect());
    let handle = like.client.create_from_slice(bytemuck::cast_slice(&keep));
    CubeTensor::new_contiguous(like.client.clone(), like.device.clone(), [keep.len()].into(), handle, DType::U32)
}

/// The inputs of both passes, contiguous, with RoPE applied to `q` and `k`.
struct Rotated<R: CubeRuntime> {
    q: CubeTensor<R>,
    k: CubeTensor<R>,
    v: CubeTensor<R>,
    keep: CubeTensor<R>,
    batch: usize,
    tokens: usize,
}

fn rotated<R: CubeRuntime>(
    [q, k, v, cos, sin]: [CubeTensor<R>; 5],
    padding: Option<&KeyPadding>,
    spec: AttentionSpec,
) -> (Rotated<R>, CubeTensor<R>, CubeTensor<R>) {
    let [q, k, v, cos, sin] = [q, k, v, cos, sin].map(|t| owned_contiguous(t, false));
    let dims = q.meta.shape();
    let (batch, tokens) = (dims[0], dims[1]);
    let q = rope(&q, &cos, &sin, spec.head_dim, false);
    let k = rope(&k, &cos, &sin, spec.head_dim, false);
    let keep = keep_on(&q, padding);
    (Rotated { q, k, v, keep, batch, tokens }, cos, sin)
}

/// The forward (see [`crate::FusedKernels::rope_attention`]): the output and the log-sum-exp.
pub fn forward<R: CubeRuntime>(
    inputs: [CubeTensor<R>; 5],
    padding: Option<&KeyPadding>,
    spec: AttentionSpec,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let (r, _, _) = rotated(inputs, padding, spec);
    let rows = r.batch * spec.heads * r.tokens;
    let out = empty_like(&r.q, r.q.dtype);
    let lse = empty_f32(&r.q, &[r.batch, spec.heads, r.tokens]);
    let (count, dim) = elementwise_launch(&r.q.client, rows);
    let dtype = float_dtype(&r.q);
    forward_kernel::launch::<R>(
        &r.q.client.clone(),
        count,
        dim,
        r.q.into_array_arg(),
        r.k.into_array_arg(),
        r.v.into_array_arg(),
        r.keep.into_array_arg(),
        out.clone().into_array_arg(),
        lse.clone().into_array_arg(),
        rows,
        r.tokens,
        spec.heads,
        spec.kv_heads,
        spec.window.unwrap_or(0),
        (spec.head_dim as f32).powf(-0.5),
        spec.head_dim,
        spec.window.is_some(),
        padding.is_some(),
        dtype,
    );
    (out, lse)
}

/// The backward (see [`crate::FusedKernels::rope_attention_backward`]): `dq`, `dk`, `dv`.
pub fn backward<R: CubeRuntime>(
    inputs: [CubeTensor<R>; 5],
    padding: Option<&KeyPadding>,
    spec: AttentionSpec,
    [out, lse, grad]: [CubeTensor<R>; 3],
) -> (CubeTensor<R>, CubeTensor<R>, CubeTensor<R>) {
    let (r, cos, sin) = rotated(inputs, padding, spec);
    let [out, lse, grad] = [out, lse, grad].map(|t| owned_contiguous(t, false));
    let (rows, key_rows) = (r.batch * spec.heads * r.tokens, r.batch * spec.kv_heads * r.tokens);
    let dq = empty_like(&r.q, r.q.dtype);
    let (dk, dv) = (empty_like(&r.k, r.k.dtype), empty_like(&r.v, r.v.dtype));
    let delta = empty_f32(&r.q, &[rows]);
    let scale = (spec.head_dim as f32).powf(-0.5);
    let (windowed, padded, window) = (spec.window.is_some(), padding.is_some(), spec.window.unwrap_or(0));
    let client = r.q.client.clone();
    let dtype = float_dtype(&r.q);
    let (count, dim) = elementwise_launch(&client, rows);
    dq_kernel::launch::<R>(
        &client,
        count,
        dim,
        r.q.clone().into_array_arg(),
        r.k.clone().into_array_arg(),
        r.v.clone().into_array_arg(),
        r.keep.clone().into_array_arg(),
        out.into_array_arg(),
        lse.clone().into_array_arg(),
        grad.clone().into_array_arg(),
        dq.clone().into_array_arg(),
        delta.clone().into_array_arg(),
        rows,
        r.tokens,
        spec.heads,
        spec.kv_heads,
        window,
        scale,
        spec.head_dim,
        windowed,
        padded,
        dtype,
    );
    let (count, dim) = elementwise_launch(&client, key_rows);
    dkv_kernel::launch::<R>(
        &client,
        count,
        dim,
        r.q.into_array_arg(),
        r.k.into_array_arg(),
        r.v.into_array_arg(),
        r.keep.into_array_arg(),
        lse.into_array_arg(),
        delta.into_array_arg(),
        grad.into_array_arg(),
        dk.clone().into_array_arg(),
        dv.clone().into_array_arg(),
        key_rows,
        r.tokens,
        spec.heads,
        spec.kv_heads,
        window,
        scale,
        spec.head_dim,
        windowed,
        padded,
        dtype,
    );
    let dq = rope(&dq, &cos, &sin, spec.head_dim, true);
    let dk = rope(&dk, &cos, &sin, spec.head_dim, true);
    (dq, dk, dv)
}

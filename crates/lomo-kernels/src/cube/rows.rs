//! One cube per row: RMSNorm forward and backward, `log softmax` at labels and its gradient,
//! and the sum of squares of a gradient (per block of elements). Row statistics are reduced
//! in shared memory, in f32.

use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::*;

use super::{
    elementwise_launch, empty_f32, empty_like, float_dtype, labels_on, owned_contiguous, row_launch, ROW_UNITS,
};

/// The sum of every unit's `value` over the cube, returned to every unit. `units` is the
/// cube's size, a power of two.
#[cube]
pub(super) fn cube_sum(value: f32, #[comptime] units: usize) -> f32 {
    let mut shared = SharedMemory::<f32>::new(units);
    let unit = UNIT_POS_X as usize;
    shared[unit] = value;
    sync_cube();
    let mut stride = CUBE_DIM_X as usize / 2;
    while stride > 0 {
        if unit < stride {
            shared[unit] += shared[unit + stride];
        }
        sync_cube();
        stride /= 2;
    }
    shared[0]
}

/// The largest of every unit's `value` over the cube, returned to every unit.
#[cube]
fn cube_max(value: f32, #[comptime] units: usize) -> f32 {
    let mut shared = SharedMemory::<f32>::new(units);
    let unit = UNIT_POS_X as usize;
    shared[unit] = value;
    sync_cube();
    let mut stride = CUBE_DIM_X as usize / 2;
    while stride > 0 {
        if unit < stride {
            shared[unit] = shared[unit].max(shared[unit + stride]);
        }
        sync_cube();
        stride /= 2;
    }
    shared[0]
}

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn rms_norm_kernel<E: Float>(
    x: &Array<E>,
    weight: &Array<E>,
    out: &mut Array<E>,
    rows: usize,
    n: usize,
    inv_n: f32,
    eps: f32,
    #[comptime] units: usize,
    #[define(E)] _dtype: StorageType,
) {
    let row = CUBE_POS;
    if row >= rows {
        terminate!();
    }
    let base = row * n;
    let mut acc = 0.0f32;
    let mut j = UNIT_POS_X as usize;
    while j < n {
        let v = f32::cast_from(x[base + j]);
        acc += v * v;
        j += units;
    }
    let r = 1.0f32 / (cube_sum(acc, units) * inv_n + eps).sqrt();
    j = UNIT_POS_X as usize;
    while j < n {
        // As HF: normalised in f32, cast to the storage dtype, then scaled.
        let normed = f32::cast_from(E::cast_from(f32::cast_from(x[base + j]) * r));
        out[base + j] = E::cast_from(normed * f32::cast_from(weight[j]));
        j += units;
    }
}

/// `dx` of RMSNorm per row, and each row's `r = 1/sqrt(mean(x²) + eps)` for `dw`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn rms_norm_dx_kernel<E: Float>(
    x: &Array<E>,
    weight: &Array<E>,
    grad: &Array<E>,
    dx: &mut Array<E>,
    r_rows: &mut Array<f32>,
    rows: usize,
    n: usize,
    inv_n: f32,
    eps: f32,
    #[comptime] units: usize,
    #[define(E)] _dtype: StorageType,
) {
    let row = CUBE_POS;
    if row >= rows {
        terminate!();
    }
    let base = row * n;
    let mut sq = 0.0f32;
    let mut gx = 0.0f32;
    let mut j = UNIT_POS_X as usize;
    while j < n {
        let v = f32::cast_from(x[base + j]);
        sq += v * v;
        gx += f32::cast_from(grad[base + j]) * f32::cast_from(weight[j]) * v;
        j += units;
    }
    let r = 1.0f32 / (cube_sum(sq, units) * inv_n + eps).sqrt();
    // mean(g · x̂) with x̂ = x · r.
    let mean = cube_sum(gx, units) * r * inv_n;
    j = UNIT_POS_X as usize;
    while j < n {
        let g = f32::cast_from(grad[base + j]) * f32::cast_from(weight[j]);
        let x_hat = f32::cast_from(x[base + j]) * r;
        dx[base + j] = E::cast_from(r * (g - x_hat * mean));
        j += units;
    }
    if UNIT_POS_X == 0 {
        r_rows[row] = r;
    }
}

/// Partial sums of `dw_j = Σ_i dy_ij · x̂_ij` (x̂ in the storage dtype, as the reference
/// rounds it) over blocks of `chunk` rows: `partial[c, j]`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn rms_norm_dw_kernel<E: Float>(
    x: &Array<E>,
    grad: &Array<E>,
    r_rows: &Array<f32>,
    partial: &mut Array<f32>,
    rows: usize,
    n: usize,
    chunk: usize,
    #[define(E)] _dtype: StorageType,
) {
    let pos = ABSOLUTE_POS;
    if pos >= partial.len() {
        terminate!();
    }
    let c = pos / n;
    let j = pos % n;
    let end = min(c * chunk + chunk, rows);
    let mut acc = 0.0f32;
    let mut i = c * chunk;
    while i < end {
        let x_hat = f32::cast_from(E::cast_from(f32::cast_from(x[i * n + j]) * r_rows[i]));
        acc += f32::cast_from(grad[i * n + j]) * x_hat;
        i += 1;
    }
    partial[pos] = acc;
}

#[cube(launch)]
fn log_probs_kernel<E: Float>(
    logits: &Array<E>,
    labels: &Array<i32>,
    out: &mut Array<f32>,
    rows: usize,
    vocab: usize,
    #[comptime] units: usize,
    #[define(E)] _dtype: StorageType,
) {
    let row = CUBE_POS;
    if row >= rows {
        terminate!();
    }
    let base = row * vocab;
    let mut m = f32::new(-3.0e38);
    let mut j = UNIT_POS_X as usize;
    while j < vocab {
        m = max(m, f32::cast_from(logits[base + j]));
        j += units;
    }
    let m = cube_max(m, units);
    let mut s = 0.0f32;
    j = UNIT_POS_X as usize;
    while j < vocab {
        s += (f32::cast_from(logits[base + j]) - m).exp();
        j += units;
    }
    let s = cube_sum(s, units);
    if UNIT_POS_X == 0 {
        let label = usize::cast_from(labels[row]);
        out[row] = f32::cast_from(logits[base + label]) - m - s.ln();
    }
}

/// `grad · (onehot(label) − softmax(logits))`, written over the logits: each row's
/// log-sum-exp is `logits[label] − out`, read by every unit before any writes.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn log_probs_backward_kernel<E: Float>(
    logits: &mut Array<E>,
    labels: &Array<i32>,
    out: &Array<f32>,
    grad: &Array<f32>,
    rows: usize,
    vocab: usize,
    #[comptime] units: usize,
    #[define(E)] _dtype: StorageType,
) {
    let row = CUBE_POS;
    if row >= rows {
        terminate!();
    }
    let base = row * vocab;
    let label = usize::cast_from(labels[row]);
    let lse = f32::cast_from(logits[base + label]) - out[row];
    let g = grad[row];
    sync_cube();
    let mut j = UNIT_POS_X as usize;
    while j < vocab {
        let p = (f32::cast_from(logits[base + j]) - lse).exp();
        let mut d = -g * p;
        if j == label {
            d += g;
        }
        logits[base + j] = E::cast_from(d);
        j += units;
    }
}

/// Partial sums of `(g · scale)²` over blocks of `per_cube` elements, one per cube.
#[cube(launch)]
fn sum_sq_kernel<E: Float>(
    grad: &Array<E>,
    partial: &mut Array<f32>,
    blocks: usize,
    per_cube: usize,
    scale: f32,
    #[comptime] units: usize,
    #[define(E)] _dtype: StorageType,
) {
    let block = CUBE_POS;
    if block >= blocks {
        terminate!();
    }
    let end = min(block * per_cube + per_cube, grad.len());
    let mut acc = 0.0f32;
    let mut i = block * per_cube + UNIT_POS_X as usize;
    while i < end {
        let v = f32::cast_from(grad[i]) * scale;
        acc += v * v;
        i += units;
    }
    let total = cube_sum(acc, units);
    if UNIT_POS_X == 0 {
        partial[block] = total;
    }
}

/// Rows of `[rows, n]` summed per block in the partial-sum kernels.
const CHUNK_ROWS: usize = 64;

fn rows_of<R: CubeRuntime>(t: &CubeTensor<R>) -> [usize; 2] {
    let dims = t.meta.shape();
    [dims[0], dims[1]]
}

/// RMSNorm of the rows of `x` scaled by `weight`.
pub fn rms_norm<R: CubeRuntime>(x: CubeTensor<R>, weight: CubeTensor<R>, eps: f64) -> CubeTensor<R> {
    let (x, weight) = (owned_contiguous(x, false), owned_contiguous(weight, false));
    let [rows, n] = rows_of(&x);
    let out = empty_like(&x, x.dtype);
    let (count, dim) = row_launch(rows);
    let dtype = float_dtype(&x);
    rms_norm_kernel::launch::<R>(
        &x.client.clone(),
        count,
        dim,
        x.into_array_arg(),
        weight.into_array_arg(),
        out.clone().into_array_arg(),
        rows,
        n,
        1.0 / n as f32,
        eps as f32,
        ROW_UNITS,
        dtype,
    );
    out
}

/// Gradients of `x` and `weight` of [`rms_norm`].
pub fn rms_norm_backward<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    x: CubeTensor<R>,
    weight: CubeTensor<R>,
    eps: f64,
    grad: CubeTensor<R>,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let (x, weight, grad) =
        (owned_contiguous(x, false), owned_contiguous(weight, false), owned_contiguous(grad, false));
    let [rows, n] = rows_of(&x);
    let dtype = float_dtype(&x);
    let dx = empty_like(&x, x.dtype);
    let r_rows = empty_f32(&x, &[rows]);
    let (count, dim) = row_launch(rows);
    rms_norm_dx_kernel::launch::<R>(
        &x.client.clone(),
        count,
        dim,
        x.clone().into_array_arg(),
        weight.into_array_arg(),
        grad.clone().into_array_arg(),
        dx.clone().into_array_arg(),
        r_rows.clone().into_array_arg(),
        rows,
        n,
        1.0 / n as f32,
        eps as f32,
        ROW_UNITS,
        dtype,
    );
    let chunks = rows.div_ceil(CHUNK_ROWS).max(1);
    let partial = empty_f32(&x, &[chunks, n]);
    let (count, dim) = elementwise_launch(&x.client, chunks * n);
    let storage = x.dtype;
    rms_norm_dw_kernel::launch::<R>(
        &x.client.clone(),
        count,
        dim,
        x.into_array_arg(),
        grad.into_array_arg(),
        r_rows.into_array_arg(),
        partial.clone().into_array_arg(),
        rows,
        n,
        CHUNK_ROWS,
        dtype,
    );
    type Cube<R, F, I, BT> = CubeBackend<R, F, I, BT>;
    let dw = Cube::<R, F, I, BT>::float_sum_dim(partial, 0);
    let dw = Cube::<R, F, I, BT>::float_reshape(dw, [n].into());
    (dx, Cube::<R, F, I, BT>::float_cast(dw, storage.into()))
}

/// `log softmax(logits)[i, labels[i]]` per row, `[n]` in f32.
pub fn log_probs<R: CubeRuntime>(logits: CubeTensor<R>, labels: &[i64]) -> CubeTensor<R> {
    let logits = owned_contiguous(logits, false);
    let [rows, vocab] = rows_of(&logits);
    let out = empty_f32(&logits, &[rows]);
    let labels = labels_on(&logits, labels);
    let (count, dim) = row_launch(rows);
    let dtype = float_dtype(&logits);
    log_probs_kernel::launch::<R>(
        &logits.client.clone(),
        count,
        dim,
        logits.into_array_arg(),
        labels.into_array_arg(),
        out.clone().into_array_arg(),
        rows,
        vocab,
        ROW_UNITS,
        dtype,
    );
    out
}

/// Gradient of the logits of [`log_probs`], written over the logits' buffer when it is not
/// shared.
pub fn log_probs_backward<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    logits: CubeTensor<R>,
    labels: &[i64],
    out: CubeTensor<R>,
    grad: CubeTensor<R>,
) -> CubeTensor<R> {
    type Cube<R, F, I, BT> = CubeBackend<R, F, I, BT>;
    let f32_of = |t: FloatTensor<Cube<R, F, I, BT>>| {
        owned_contiguous(Cube::<R, F, I, BT>::float_cast(t, burn::tensor::FloatDType::F32), false)
    };
    let logits = owned_contiguous(logits, true);
    let (out, grad) = (f32_of(out), f32_of(grad));
    let [rows, vocab] = rows_of(&logits);
    let labels = labels_on(&logits, labels);
    let (count, dim) = row_launch(rows);
    let dtype = float_dtype(&logits);
    log_probs_backward_kernel::launch::<R>(
        &logits.client.clone(),
        count,
        dim,
        logits.clone().into_array_arg(),
        labels.into_array_arg(),
        out.into_array_arg(),
        grad.into_array_arg(),
        rows,
        vocab,
        ROW_UNITS,
        dtype,
    );
    logits
}

/// Elements each cube of [`sum_sq_partials`] reduces.
const SUM_SQ_PER_CUBE: usize = ROW_UNITS * 32;

/// `Σ (g · scale)²` as f32 partial sums on the device, one per block of [`SUM_SQ_PER_CUBE`]
/// elements (`[blocks]`; one 0 for an empty tensor).
pub fn sum_sq_partials<R: CubeRuntime>(grad: CubeTensor<R>, scale: f64) -> CubeTensor<R> {
    let grad = owned_contiguous(grad, false);
    let n = grad.meta.num_elements();
    let blocks = n.div_ceil(SUM_SQ_PER_CUBE).max(1);
    let partial = empty_f32(&grad, &[blocks]);
    let (count, dim) = row_launch(blocks);
    let dtype = float_dtype(&grad);
    sum_sq_kernel::launch::<R>(
        &grad.client.clone(),
        count,
        dim,
        grad.into_array_arg(),
        partial.clone().into_array_arg(),
        blocks,
        SUM_SQ_PER_CUBE,
        scale as f32,
        ROW_UNITS,
        dtype,
    );
    partial
}

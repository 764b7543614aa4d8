//! AdaLomo's factored update of a matrix `[m, n]`: the means of `scale(g)² + eps` along rows
//! (one cube per row) and columns (partial sums over blocks of rows), the moments and their
//! factors on the small `[m]` and `[n]` vectors, the sums of squares of the update and of the
//! weight (partial per cube), and the update itself in place on the weight. The two RMS values
//! stay on the device: the last kernel reads them, so no value comes back to the host.

use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use burn::tensor::FloatDType;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::*;

use super::elementwise::scaled;
use super::rows::cube_sum;
use super::{elementwise_launch, empty_f32, float_dtype, owned_contiguous, row_launch, ROW_UNITS};
use crate::{AdaLomoScalars, GradScale};

/// `Σ_j (scale(g)² + eps_sq) / n` per row.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn row_mean_kernel<G: Float>(
    grad: &Array<G>,
    out: &mut Array<f32>,
    rows: usize,
    n: usize,
    inv_scale: f32,
    clip_value: f32,
    coef: f32,
    eps_sq: f32,
    #[comptime] clip: bool,
    #[comptime] units: usize,
    #[define(G)] _dtype: StorageType,
) {
    let row = CUBE_POS;
    if row >= rows {
        terminate!();
    }
    let base = row * n;
    let mut acc = 0.0f32;
    let mut j = UNIT_POS_X as usize;
    while j < n {
        let g = scaled(f32::cast_from(grad[base + j]), inv_scale, clip_value, coef, clip);
        acc += g * g + eps_sq;
        j += units;
    }
    let total = cube_sum(acc, units);
    if UNIT_POS_X == 0 {
        out[row] = total / f32::cast_from(n as u32);
    }
}

/// Partial column sums of `scale(g)² + eps_sq` over blocks of `chunk` rows: `partial[c, j]`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn col_partial_kernel<G: Float>(
    grad: &Array<G>,
    partial: &mut Array<f32>,
    rows: usize,
    n: usize,
    chunk: usize,
    inv_scale: f32,
    clip_value: f32,
    coef: f32,
    eps_sq: f32,
    #[comptime] clip: bool,
    #[define(G)] _dtype: StorageType,
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
        let g = scaled(f32::cast_from(grad[i * n + j]), inv_scale, clip_value, coef, clip);
        acc += g * g + eps_sq;
        i += 1;
    }
    partial[pos] = acc;
}

/// Per cube over blocks of `per_cube` elements: `Σ u²` and `Σ p²` with
/// `u = r_factor[i] · c_factor[j] · scale(g)`, into `partial[2 · cube]` and `partial[2 · cube + 1]`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn square_sums_kernel<P: Float, G: Float>(
    param: &Array<P>,
    grad: &Array<G>,
    r_factor: &Array<f32>,
    c_factor: &Array<f32>,
    partial: &mut Array<f32>,
    blocks: usize,
    per_cube: usize,
    n: usize,
    inv_scale: f32,
    clip_value: f32,
    coef: f32,
    #[comptime] clip: bool,
    #[comptime] units: usize,
    #[define(P, G)] _dtypes: [StorageType; 2],
) {
    let block = CUBE_POS;
    if block >= blocks {
        terminate!();
    }
    let end = min(block * per_cube + per_cube, param.len());
    let mut uu = 0.0f32;
    let mut pp = 0.0f32;
    let mut k = block * per_cube + UNIT_POS_X as usize;
    while k < end {
        let g = scaled(f32::cast_from(grad[k]), inv_scale, clip_value, coef, clip);
        let u = r_factor[k / n] * c_factor[k % n] * g;
        let p = f32::cast_from(param[k]);
        uu += u * u;
        pp += p * p;
        k += units;
    }
    let uu = cube_sum(uu, units);
    let pp = cube_sum(pp, units);
    if UNIT_POS_X == 0 {
        partial[2 * block] = uu;
        partial[2 * block + 1] = pp;
    }
}

/// `p ← p · (1 − lr_t · wd) − lr_t · u / max(1, rms(u) / clip)`, `lr_t = lr · max(eps_scale,
/// rms(p))`, the RMS values from `sums` (`Σ u²`, `Σ p²`) on the device; `inv_numel` is
/// `1 / (m · n)`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn apply_kernel<P: Float, G: Float>(
    param: &mut Array<P>,
    grad: &Array<G>,
    r_factor: &Array<f32>,
    c_factor: &Array<f32>,
    sums: &Array<f32>,
    n: usize,
    inv_scale: f32,
    clip_value: f32,
    coef: f32,
    lr: f32,
    eps_scale: f32,
    clip_threshold: f32,
    weight_decay: f32,
    inv_numel: f32,
    #[comptime] clip: bool,
    #[define(P, G)] _dtypes: [StorageType; 2],
) {
    let k = ABSOLUTE_POS;
    if k >= param.len() {
        terminate!();
    }
    let denom = max((sums[0] * inv_numel).sqrt() / clip_threshold, 1.0f32);
    let lr_t = lr * max(eps_scale, (sums[1] * inv_numel).sqrt());
    let g = scaled(f32::cast_from(grad[k]), inv_scale, clip_value, coef, clip);
    let u = r_factor[k / n] * c_factor[k % n] * g / denom * lr_t;
    let mut p = f32::cast_from(param[k]);
    if weight_decay > 0.0f32 {
        p *= 1.0f32 - lr_t * weight_decay;
    }
    param[k] = P::cast_from(p - u);
}

/// Rows summed per block in [`col_partial_kernel`].
const CHUNK_ROWS: usize = 64;
/// Elements each cube of [`square_sums_kernel`] reduces.
const PER_CUBE: usize = ROW_UNITS * 32;

/// AdaLomo's update of a matrix (see
/// [`UpdateKernels::adalomo_matrix_update`](crate::UpdateKernels::adalomo_matrix_update)):
/// the new weight (in place when not shared), row and col.
pub fn matrix_update<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    param: CubeTensor<R>,
    grad: CubeTensor<R>,
    scale: GradScale,
    moment: Option<(CubeTensor<R>, CubeTensor<R>)>,
    s: AdaLomoScalars,
) -> (CubeTensor<R>, CubeTensor<R>, CubeTensor<R>) {
    type B<R, F, I, BT> = CubeBackend<R, F, I, BT>;
    let param = owned_contiguous(param, true);
    let grad = owned_contiguous(grad, false);
    let dims = param.meta.shape();
    let (m, n) = (dims[0], dims[1]);
    let clip = scale.clip_value.is_some();
    let g_dtype = float_dtype(&grad);
    let client = param.client.clone();
    let (inv_scale, clip_value, coef) =
        (scale.inv_scale as f32, scale.clip_value.unwrap_or(0.0) as f32, scale.clip_coef.unwrap_or(1.0) as f32);

    let row_mean = empty_f32(&param, &[m]);
    let (count, dim) = row_launch(m);
    row_mean_kernel::launch::<R>(
        &client,
        count,
        dim,
        grad.clone().into_array_arg(),
        row_mean.clone().into_array_arg(),
        m,
        n,
        inv_scale,
        clip_value,
        coef,
        s.eps_sq as f32,
        clip,
        ROW_UNITS,
        g_dtype,
    );
    let chunks = m.div_ceil(CHUNK_ROWS).max(1);
    let partial = empty_f32(&param, &[chunks, n]);
    let (count, dim) = elementwise_launch(&client, chunks * n);
    col_partial_kernel::launch::<R>(
        &client,
        count,
        dim,
        grad.clone().into_array_arg(),
        partial.clone().into_array_arg(),
        m,
        n,
        CHUNK_ROWS,
        inv_scale,
        clip_value,
        coef,
        s.eps_sq as f32,
        clip,
        g_dtype,
    );
    let col_mean = B::<R, F, I, BT>::float_mul_scalar(
        B::<R, F, I, BT>::float_reshape(B::<R, F, I, BT>::float_sum_dim(partial, 0), [n].into()),
        (1.0 / m as f64).into(),
    );
    let (row, col) = moments::<R, F, I, BT>(row_mean, col_mean, moment, s.beta);
    let (r_factor, c_factor) = factors::<R, F, I, BT>(row.clone(), col.clone(), m);

    let sums = square_sums::<R, F, I, BT>(&param, &grad, &r_factor, &c_factor, &scale);
    let (count, dim) = elementwise_launch(&client, m * n);
    apply_kernel::launch::<R>(
        &client,
        count,
        dim,
        param.clone().into_array_arg(),
        grad.into_array_arg(),
        r_factor.into_array_arg(),
        c_factor.into_array_arg(),
        sums.into_array_arg(),
        n,
        inv_scale,
        clip_value,
        coef,
        s.lr as f32,
        s.eps_scale as f32,
        s.clip_threshold as f32,
        s.weight_decay as f32,
        (1.0 / (m * n) as f64) as f32,
        clip,
        [float_dtype(&param), g_dtype],
    );
    (param, row, col)
}

/// The moments after this step: `β · old + (1 − β) · mean`, or `(1 − β) · mean` on the first.
fn moments<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    row_mean: FloatTensor<CubeBackend<R, F, I, BT>>,
    col_mean: FloatTensor<CubeBackend<R, F, I, BT>>,
    moment: Option<(CubeTensor<R>, CubeTensor<R>)>,
    beta: f64,
) -> (CubeTensor<R>, CubeTensor<R>) {
    type B<R, F, I, BT> = CubeBackend<R, F, I, BT>;
    let decay = |mean| B::<R, F, I, BT>::float_mul_scalar(mean, (1.0 - beta).into());
    let (row, col) = (decay(row_mean), decay(col_mean));
    match moment {
        Some((old_row, old_col)) => {
            let keep = |old| B::<R, F, I, BT>::float_cast(old, FloatDType::F32);
            let keep_row = B::<R, F, I, BT>::float_mul_scalar(keep(old_row), beta.into());
            let keep_col = B::<R, F, I, BT>::float_mul_scalar(keep(old_col), beta.into());
            (B::<R, F, I, BT>::float_add(keep_row, row), B::<R, F, I, BT>::float_add(keep_col, col))
        }
        None => (row, col),
    }
}

/// `rsqrt(row / mean(row))` and `rsqrt(col)`, contiguous f32.
fn factors<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    row: CubeTensor<R>,
    col: CubeTensor<R>,
    m: usize,
) -> (CubeTensor<R>, CubeTensor<R>) {
    type B<R, F, I, BT> = CubeBackend<R, F, I, BT>;
    let row_avg = B::<R, F, I, BT>::float_mul_scalar(B::<R, F, I, BT>::float_sum(row.clone()), (1.0 / m as f64).into());
    let r = B::<R, F, I, BT>::float_div(row, row_avg);
    let r = B::<R, F, I, BT>::float_recip(B::<R, F, I, BT>::float_sqrt(r));
    let c = B::<R, F, I, BT>::float_recip(B::<R, F, I, BT>::float_sqrt(col));
    (owned_contiguous(r, false), owned_contiguous(c, false))
}

/// `[Σ u², Σ p²]` on the device: per-cube partial sums, then added.
fn square_sums<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    param: &CubeTensor<R>,
    grad: &CubeTensor<R>,
    r_factor: &CubeTensor<R>,
    c_factor: &CubeTensor<R>,
    scale: &GradScale,
) -> CubeTensor<R> {
    type B<R, F, I, BT> = CubeBackend<R, F, I, BT>;
    let numel = param.meta.num_elements();
    let n = param.meta.shape()[1];
    let blocks = numel.div_ceil(PER_CUBE).max(1);
    let partial = empty_f32(param, &[blocks, 2]);
    let (count, dim) = row_launch(blocks);
    square_sums_kernel::launch::<R>(
        &param.client.clone(),
        count,
        dim,
        param.clone().into_array_arg(),
        grad.clone().into_array_arg(),
        r_factor.clone().into_array_arg(),
        c_factor.clone().into_array_arg(),
        partial.clone().into_array_arg(),
        blocks,
        PER_CUBE,
        n,
        scale.inv_scale as f32,
        scale.clip_value.unwrap_or(0.0) as f32,
        scale.clip_coef.unwrap_or(1.0) as f32,
        scale.clip_value.is_some(),
        ROW_UNITS,
        [float_dtype(param), float_dtype(grad)],
    );
    let sums = B::<R, F, I, BT>::float_sum_dim(partial, 0);
    owned_contiguous(B::<R, F, I, BT>::float_reshape(sums, [2].into()), false)
}

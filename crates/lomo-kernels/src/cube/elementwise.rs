//! Elementwise kernels: SwiGLU's gate forward and backward, and LOMO's update. One unit per
//! element, f32 inside whatever the storage dtype, one launch each.

use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use super::{elementwise_launch, empty_like, float_dtype, owned_contiguous};
use crate::GradScale;

#[cube(launch)]
fn swiglu_kernel<E: Float>(gate: &Array<E>, up: &Array<E>, out: &mut Array<E>, #[define(E)] _dtype: StorageType) {
    let i = ABSOLUTE_POS;
    if i < out.len() {
        let g = f32::cast_from(gate[i]);
        let s = 1.0f32 / (1.0f32 + (-g).exp());
        out[i] = E::cast_from(g * s * f32::cast_from(up[i]));
    }
}

#[cube(launch)]
fn swiglu_backward_kernel<E: Float>(
    gate: &Array<E>,
    up: &Array<E>,
    grad: &Array<E>,
    d_gate: &mut Array<E>,
    d_up: &mut Array<E>,
    #[define(E)] _dtype: StorageType,
) {
    let i = ABSOLUTE_POS;
    if i < d_gate.len() {
        let g = f32::cast_from(gate[i]);
        let u = f32::cast_from(up[i]);
        let dy = f32::cast_from(grad[i]);
        let s = 1.0f32 / (1.0f32 + (-g).exp());
        d_gate[i] = E::cast_from(dy * u * s * (1.0f32 + g * (1.0f32 - s)));
        d_up[i] = E::cast_from(dy * g * s);
    }
}

/// The gradient transforms of [`GradScale`] on one element, in its order.
#[cube]
pub(super) fn scaled(g: f32, inv_scale: f32, clip_value: f32, coef: f32, #[comptime] clip: bool) -> f32 {
    let mut g = g * inv_scale;
    if clip {
        g = g.clamp(-clip_value, clip_value);
    }
    g * coef
}

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn lomo_update_kernel<P: Float, G: Float>(
    param: &mut Array<P>,
    grad: &Array<G>,
    decay: f32,
    lr: f32,
    inv_scale: f32,
    clip_value: f32,
    coef: f32,
    #[comptime] clip: bool,
    #[define(P, G)] _dtypes: [StorageType; 2],
) {
    let i = ABSOLUTE_POS;
    if i < param.len() {
        let g = scaled(f32::cast_from(grad[i]), inv_scale, clip_value, coef, clip);
        param[i] = P::cast_from(f32::cast_from(param[i]) * decay - g * lr);
    }
}

/// `silu(gate) · up`.
pub fn swiglu<R: CubeRuntime>(gate: CubeTensor<R>, up: CubeTensor<R>) -> CubeTensor<R> {
    let (gate, up) = (owned_contiguous(gate, false), owned_contiguous(up, false));
    let out = empty_like(&gate, gate.dtype);
    let (count, dim) = elementwise_launch(&gate.client, gate.meta.num_elements());
    swiglu_kernel::launch::<R>(
        &gate.client.clone(),
        count,
        dim,
        gate.clone().into_array_arg(),
        up.into_array_arg(),
        out.clone().into_array_arg(),
        float_dtype(&gate),
    );
    out
}

/// Gradients of `gate` and `up` of [`swiglu`].
pub fn swiglu_backward<R: CubeRuntime>(
    gate: CubeTensor<R>,
    up: CubeTensor<R>,
    grad: CubeTensor<R>,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let (gate, up, grad) = (owned_contiguous(gate, false), owned_contiguous(up, false), owned_contiguous(grad, false));
    let d_gate = empty_like(&gate, gate.dtype);
    let d_up = empty_like(&gate, gate.dtype);
    let (count, dim) = elementwise_launch(&gate.client, gate.meta.num_elements());
    let dtype = float_dtype(&gate);
    swiglu_backward_kernel::launch::<R>(
        &gate.client.clone(),
        count,
        dim,
        gate.into_array_arg(),
        up.into_array_arg(),
        grad.into_array_arg(),
        d_gate.clone().into_array_arg(),
        d_up.clone().into_array_arg(),
        dtype,
    );
    (d_gate, d_up)
}

/// LOMO's update in place on `param`'s buffer (a copy first if it is shared):
/// `p · (1 − lr · weight_decay) − lr · scale(g)` in f32.
pub fn lomo_update<R: CubeRuntime>(
    param: CubeTensor<R>,
    grad: CubeTensor<R>,
    scale: GradScale,
    lr: f64,
    weight_decay: f64,
) -> CubeTensor<R> {
    let param = owned_contiguous(param, true);
    let grad = owned_contiguous(grad, false);
    let (count, dim) = elementwise_launch(&param.client, param.meta.num_elements());
    let decay = if weight_decay > 0.0 { 1.0 - lr * weight_decay } else { 1.0 };
    let dtypes = [float_dtype(&param), float_dtype(&grad)];
    lomo_update_kernel::launch::<R>(
        &param.client.clone(),
        count,
        dim,
        param.clone().into_array_arg(),
        grad.into_array_arg(),
        decay as f32,
        lr as f32,
        scale.inv_scale as f32,
        scale.clip_value.unwrap_or(0.0) as f32,
        scale.clip_coef.unwrap_or(1.0) as f32,
        scale.clip_value.is_some(),
        dtypes,
    );
    param
}

//! The update kernels composed of burn's ops: the default methods of
//! [`UpdateKernels`](super::UpdateKernels) (what NdArray and LibTorch run) and what the
//! Flex and CubeCL kernels are tested against. Elementwise work on a large bf16/f16 parameter runs in row
//! blocks ([`crate::blocks`]), so no whole f32 copy of the weight or of its gradient exists.

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Tensor, TensorMetadata, TensorPrimitive};

use super::{AdaLomoScalars, GradScale};

/// LOMO's update, `p · (1 − lr · weight_decay) − lr · scale(g)` in f32, returned in `param`'s
/// dtype (see [`UpdateKernels::lomo_update`](super::UpdateKernels::lomo_update)).
pub fn lomo_update<B: Backend>(
    param: FloatTensor<B>,
    grad: FloatTensor<B>,
    scale: GradScale,
    lr: f64,
    weight_decay: f64,
) -> FloatTensor<B> {
    fn update<B: Backend>(p: Tensor<B, 1>, g: Tensor<B, 1>, scale: &GradScale, lr: f64, wd: f64) -> Tensor<B, 1> {
        let dtype = p.dtype();
        let mut p = p.cast(DType::F32);
        if wd > 0.0 {
            p = p.mul_scalar(1.0 - lr * wd);
        }
        (p - scale.apply(g).mul_scalar(lr)).cast(dtype)
    }
    let shape = param.shape();
    let n = shape.num_elements();
    let flat = |t: FloatTensor<B>| Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(t)).reshape([n]);
    let (p, g) = (flat(param), flat(grad));
    let p = if p.dtype() == DType::F32 {
        update(p, g, &scale, lr, weight_decay)
    } else {
        // No f32 copy of a whole bf16/f16 parameter or gradient (see `blocks`).
        crate::blocks::map_rows(p, &g, |p, g| update(p, g, &scale, lr, weight_decay))
    };
    B::float_reshape(p.into_primitive().tensor(), shape)
}

/// AdaLomo's update of a matrix from its raw gradient (see
/// [`UpdateKernels::adalomo_matrix_update`](super::UpdateKernels::adalomo_matrix_update)):
/// the new weight, row and col.
pub fn adalomo_matrix_update<B: Backend>(
    param: FloatTensor<B>,
    grad: FloatTensor<B>,
    scale: GradScale,
    moment: Option<(FloatTensor<B>, FloatTensor<B>)>,
    s: AdaLomoScalars,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let t = |p: FloatTensor<B>| Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(p));
    let v = |p: FloatTensor<B>| Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(p));
    let (p, row, col) = factored_update(t(param), scale.apply(t(grad)), moment.map(|(r, c)| (v(r), v(c))), &s);
    (p.into_primitive().tensor(), row.into_primitive().tensor(), col.into_primitive().tensor())
}

/// `Σ (g · scale)²` in f32 per row block, summed in f64.
pub fn sum_sq<B: Backend>(grad: FloatTensor<B>, scale: f64) -> f64 {
    let n = grad.shape().num_elements();
    crate::blocks::sum_sq_scaled(Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(grad)).reshape([n]), scale)
}

/// `||t|| / sqrt(numel)`, in f32, one block at a time (no square of the whole tensor).
fn rms<B: Backend, const D: usize>(t: &Tensor<B, D>) -> f64 {
    let n = t.shape().num_elements() as f64;
    (crate::blocks::sum_sq_scaled(t.clone(), 1.0) / n).sqrt()
}

/// AdaLomo's update of a matrix in burn's ops, `grad` already through [`GradScale`], in f32.
fn factored_update<B: Backend>(
    param: Tensor<B, 2>,
    grad: Tensor<B, 2>,
    moment: Option<(Tensor<B, 1>, Tensor<B, 1>)>,
    s: &AdaLomoScalars,
) -> (Tensor<B, 2>, Tensor<B, 1>, Tensor<B, 1>) {
    let [m, n] = grad.dims();
    let beta = s.beta;
    let sq = grad.clone().square().add_scalar(s.eps_sq);
    let row_mean = sq.clone().mean_dim(1).reshape([m]);
    let col_mean = sq.mean_dim(0).reshape([n]);
    let (row, col) = match moment {
        Some((row, col)) => (
            row.mul_scalar(beta) + row_mean.mul_scalar(1.0 - beta),
            col.mul_scalar(beta) + col_mean.mul_scalar(1.0 - beta),
        ),
        None => (row_mean.mul_scalar(1.0 - beta), col_mean.mul_scalar(1.0 - beta)),
    };
    let row2: Tensor<B, 2> = row.clone().reshape([m, 1]);
    let r_factor = (row2.clone() / row2.mean_dim(0)).sqrt().recip();
    let c_factor: Tensor<B, 2> = col.clone().reshape([1, n]).sqrt().recip();
    let update = (r_factor * c_factor) * grad;
    (adalomo_finish(param, update, s), row, col)
}

/// The end of every AdaLomo update, whatever the parameter's rank, given its unscaled update
/// `u` (f32): `p ← p · (1 − lr_t · wd) − lr_t · u / max(1, rms(u) / clip_threshold)` with
/// `lr_t = lr · max(eps_scale, rms(p))`, in `param`'s dtype (`beta` and `eps_sq` are not used).
pub fn adalomo_finish<B: Backend, const D: usize>(
    param: Tensor<B, D>,
    update: Tensor<B, D>,
    s: &AdaLomoScalars,
) -> Tensor<B, D> {
    let u_rms = rms(&update);
    let denom = (u_rms / s.clip_threshold).max(1.0);
    let update = if denom != 1.0 { update.div_scalar(denom) } else { update };
    let lr_t = s.lr * s.eps_scale.max(rms(&param));
    let update = update.mul_scalar(lr_t);
    let decay = 1.0 - lr_t * s.weight_decay;
    let wd = s.weight_decay;
    // Elementwise from here: in row blocks, so the weight's f32 copy is one block's.
    crate::blocks::map_rows(param, &update, |p, u| {
        let dtype = p.dtype();
        let mut p = p.cast(DType::F32);
        if wd > 0.0 {
            p = p.mul_scalar(decay);
        }
        (p - u).cast(dtype)
    })
}

//! The update's arithmetic as a burn backend extension, [`UpdateKernels`]: LOMO's update,
//! AdaLomo's matrix update and the norm pass's sum of squares, each one parallel pass over the
//! parameter on Flex, GPU kernels on burn's CubeCL backends, burn's ops elsewhere.
//!
//! On burn-flex 0.21 every elementwise op is single-threaded and makes its result as a new
//! tensor unless its input is unshared: LOMO's `p − lr · g` through burn's ops is two serial
//! passes over each parameter (and for a parameter whose gradient sits in untouched zero pages,
//! a tied or untied embedding's, a page fault per 4 KiB on the write). Measured on a 134M f32
//! step: 0.16 s of 2.0. The Flex kernel reads the gradient and rewrites the weight in place, in
//! one pass split over every core, with the same f32 arithmetic in the same order.
//!
//! The trait takes plain scalars ([`GradScale`], [`AdaLomoScalars`]): an optimizer crate turns
//! its own configuration into them, and this crate knows no optimizer.

pub mod reference;

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Tensor, TensorMetadata, TensorPrimitive};

/// The gradient transforms every update applies first, in this order, in f32: unscale (fp16
/// loss scaling), clamp by value, multiply by the global-norm clip coefficient.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GradScale {
    /// The gradient is multiplied by this first (`1 / loss_scale`; 1 without loss scaling).
    pub inv_scale: f64,
    /// Each element is then clamped to `[-v, v]`.
    pub clip_value: Option<f64>,
    /// Then multiplied by this (`min(1, max_norm / (norm + 1e-6))` of a norm pass).
    pub clip_coef: Option<f64>,
}

impl Default for GradScale {
    /// No transform: unscaled, unclipped.
    fn default() -> Self {
        Self { inv_scale: 1.0, clip_value: None, clip_coef: None }
    }
}

impl GradScale {
    /// `grad` in f32 with the transforms applied, composed of burn's ops (a large bf16/f16
    /// gradient is cast in row blocks, see [`crate::blocks`]).
    pub fn apply<B: Backend, const D: usize>(&self, grad: Tensor<B, D>) -> Tensor<B, D> {
        let mut grad = crate::blocks::cast(grad, DType::F32);
        if self.inv_scale != 1.0 {
            grad = grad.mul_scalar(self.inv_scale);
        }
        if let Some(v) = self.clip_value {
            grad = grad.clamp(-v, v);
        }
        if let Some(coef) = self.clip_coef {
            if coef != 1.0 {
                grad = grad.mul_scalar(coef);
            }
        }
        grad
    }
}

/// The scalars of one AdaLomo update of one parameter (Lv et al. 2023, arXiv 2310.10195).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaLomoScalars {
    /// The learning rate of this step.
    pub lr: f64,
    /// The second moment's decay this step: `new = beta · old + (1 − beta) · mean`.
    pub beta: f64,
    /// Added to `g²` so that the second moment is never 0.
    pub eps_sq: f64,
    /// Floor of the parameter's RMS in the relative step size.
    pub eps_scale: f64,
    /// The update's RMS is clipped to this.
    pub clip_threshold: f64,
    /// Decoupled weight decay, scaled by the relative step size (0: none).
    pub weight_decay: f64,
}

/// A backend that applies LOMO's and AdaLomo's updates and sums squares of gradients in one
/// pass each.
///
/// Implemented by Flex and by burn's CubeCL backends (CUDA, wgpu) with kernels of their own and,
/// with the default methods ([`reference`](mod@reference): burn's ops, row blocks for large
/// bf16/f16 parameters as [`crate::blocks`] does them), by NdArray and LibTorch behind the
/// features of those names; `Autodiff<B>` updates on `B`.
pub trait UpdateKernels: Backend {
    /// `p · (1 − lr · weight_decay) − lr · scale(g)`, in f32, returned in `param`'s dtype.
    /// `grad` is the raw gradient (any float dtype); `param` is uniquely owned, so its buffer
    /// may be reused.
    fn lomo_update(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        scale: GradScale,
        lr: f64,
        weight_decay: f64,
    ) -> FloatTensor<Self> {
        reference::lomo_update::<Self>(param, grad, scale, lr, weight_decay)
    }

    /// AdaLomo's update of a matrix `param` `[m, n]` from its raw gradient: the factored second
    /// moment `(row, col)` (f32, `[m]` and `[n]`; `None` on the first update) moves to
    /// `β · old + (1 − β) · mean(scale(g)² + eps_sq)` along each axis, then
    /// `p ← p · (1 − lr_t · wd) − lr_t · u / max(1, rms(u) / clip)` with
    /// `u = scale(g) · rsqrt(row / mean(row)) · rsqrt(col)` and `lr_t = lr · max(eps_scale, rms(p))`.
    /// Returns the new weight (its dtype), row and col.
    fn adalomo_matrix_update(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        scale: GradScale,
        moment: Option<(FloatTensor<Self>, FloatTensor<Self>)>,
        s: AdaLomoScalars,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        reference::adalomo_matrix_update::<Self>(param, grad, scale, moment, s)
    }

    /// `Σ (g · scale)²` in f32 per block of elements, summed in f64.
    fn sum_sq(grad: FloatTensor<Self>, scale: f64) -> f64 {
        reference::sum_sq::<Self>(grad, scale)
    }

    /// [`UpdateKernels::sum_sq`], possibly left on the device for the caller to read later,
    /// together with others ([`SumSq::add_to`]): a backend whose reads wait for a queue of device
    /// work (CUDA, wgpu) returns its f32 partial sums, so that a norm pass reads once per stage
    /// instead of once per parameter. The default reads at once.
    fn sum_sq_deferred(grad: FloatTensor<Self>, scale: f64) -> SumSq<Self> {
        SumSq::Now(Self::sum_sq(grad, scale))
    }
}

/// A sum of squares from [`UpdateKernels::sum_sq_deferred`]: known, or partial sums (f32, any
/// shape) still on the device.
#[derive(Debug)]
pub enum SumSq<B: Backend> {
    /// Already read.
    Now(f64),
    /// f32 partial sums on the device; their total, added in f64, is the sum.
    OnDevice(FloatTensor<B>),
}

impl<B: Backend> SumSq<B> {
    /// `start` plus the total of `sums`, added in f64 in their order, with every partial sum
    /// left on the device read in one transfer (their concatenation) and added last.
    pub fn add_to(start: f64, sums: Vec<Self>) -> f64 {
        let mut total = start;
        let mut pending = Vec::new();
        for s in sums {
            match s {
                SumSq::Now(v) => total += v,
                SumSq::OnDevice(t) => {
                    let n = t.shape().num_elements();
                    pending.push(Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(t)).reshape([n]));
                }
            }
        }
        if !pending.is_empty() {
            let data = Tensor::cat(pending, 0).into_data().convert::<f64>();
            total += data.as_slice::<f64>().map_or(f64::NAN, |v| v.iter().sum::<f64>());
        }
        total
    }
}

//! GPU kernels written once in CubeCL (`#[cube]`), for every burn CubeCL backend without
//! fusion (`CubeBackend<R, …>`: burn's `Cuda` as lomo builds it, and `Wgpu` on Vulkan, Metal,
//! DirectX — Mesa's software Vulkan in CI, where they are tested against [`crate::reference`]).
//!
//! Each is one launch (or two, where a reduction runs along both axes), f32 inside whatever the
//! storage dtype, on contiguous buffers; results in the storage dtype as the reference gives
//! them. What has no kernel here yet takes the trait's default (the reference composition of
//! burn's ops): the embedding's lookup, the linear layer (cubecl's matmul) and the
//! attention.
//!
//! - [`elementwise`]: SwiGLU forward and backward, LOMO's update (in place).
//! - [`rows`]: one cube per row — RMSNorm forward and backward, `log softmax` at labels and its
//!   gradient; the sum of squares of a gradient.
//! - [`embedding`]: the embedding's weight gradient, one cube per id that occurs (grouped on
//!   the host, where the ids are), no atomics.
//! - [`adalomo`]: AdaLomo's factored update of a matrix, with the update's and the weight's
//!   RMS kept on the device.
//! - `cublas` (CUDA only, opt-in): the linear layers on cuBLAS instead of cubecl's matmul.

mod adalomo;
pub(crate) mod attention;
#[cfg(feature = "cuda")]
pub(crate) mod cublas;
mod elementwise;
mod embedding;
mod rows;

use std::sync::atomic::{AtomicU8, Ordering};

use burn::tensor::backend::Backend;
use burn::tensor::ops::{FloatTensor, ModuleOps};
use burn::tensor::{DType, Tensor, TensorPrimitive};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::*;
use cubecl::{calculate_cube_count_elemwise, CubeCount, CubeDim};

use crate::{reference, AdaLomoScalars, AttentionSpec, FusedKernels, GradScale, KeyPadding, SumSq, UpdateKernels};

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> FusedKernels for CubeBackend<R, F, I, BT> {
    fn linear(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: Option<FloatTensor<Self>>) -> FloatTensor<Self> {
        #[cfg(feature = "cuda")]
        if let Some(y) = cublas::linear(&x, &weight) {
            return match bias {
                Some(bias) => {
                    (tensor::<Self, 2>(y) + tensor::<Self, 1>(bias).unsqueeze_dim(0)).into_primitive().tensor()
                }
                None => y,
            };
        }
        <Self as ModuleOps<Self>>::linear(x, weight, bias)
    }

    fn linear_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: bool,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, Option<FloatTensor<Self>>) {
        #[cfg(feature = "cuda")]
        if let Some((dx, dw)) = cublas::linear_backward(&x, &weight, &grad) {
            return (dx, dw, bias.then(|| <Self as ModuleOps<Self>>::linear_bias_backward(grad)));
        }
        crate::linear_backward_ops::<Self>(x, weight, bias, grad)
    }

    fn embedding_backward(vocab: usize, dtype: DType, ids: &[i64], grad: FloatTensor<Self>) -> FloatTensor<Self> {
        embedding::embedding_backward(vocab, dtype, ids, grad)
    }

    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        rows::rms_norm(x, weight, eps)
    }

    fn rms_norm_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f64,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        rows::rms_norm_backward::<R, F, I, BT>(x, weight, eps, grad)
    }

    fn rope_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        padding: Option<&KeyPadding>,
        spec: AttentionSpec,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        if attention::enabled() {
            return attention::forward([q, k, v, cos, sin], padding, spec);
        }
        let [q, k, v] = [q, k, v].map(tensor::<Self, 3>);
        let (out, lse) = reference::rope_attention(q, k, v, tensor(cos), tensor(sin), padding, spec);
        (out.into_primitive().tensor(), lse.into_primitive().tensor())
    }

    fn rope_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        padding: Option<&KeyPadding>,
        spec: AttentionSpec,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        if attention::enabled() {
            return attention::backward([q, k, v, cos, sin], padding, spec, [out, lse, grad]);
        }
        let [q, k, v, out, grad] = [q, k, v, out, grad].map(tensor::<Self, 3>);
        let (cos, sin) = (tensor(cos), tensor(sin));
        let (dq, dk, dv) = reference::rope_attention_backward(q, k, v, cos, sin, padding, spec, out, tensor(lse), grad);
        (dq.into_primitive().tensor(), dk.into_primitive().tensor(), dv.into_primitive().tensor())
    }

    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        elementwise::swiglu(gate, up)
    }

    fn swiglu_backward(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        elementwise::swiglu_backward(gate, up, grad)
    }

    fn log_probs(logits: FloatTensor<Self>, labels: &[i64]) -> FloatTensor<Self> {
        rows::log_probs(logits, labels)
    }

    fn log_probs_backward(
        logits: FloatTensor<Self>,
        labels: &[i64],
        out: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        rows::log_probs_backward::<R, F, I, BT>(logits, labels, out, grad)
    }

    fn release_uploads(device: &Self::Device) {
        // The first flush waits for the writes queued before the last flush and frees them, and
        // queues the newer ones behind a fence; the second waits for that fence and frees them.
        // An error here is the device's, and the next operation on it reports it.
        let client = R::client(device);
        for _ in 0..2 {
            let _ = client.flush();
        }
    }
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> UpdateKernels for CubeBackend<R, F, I, BT> {
    fn lomo_update(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        scale: GradScale,
        lr: f64,
        weight_decay: f64,
    ) -> FloatTensor<Self> {
        elementwise::lomo_update(param, grad, scale, lr, weight_decay)
    }

    fn adalomo_matrix_update(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        scale: GradScale,
        moment: Option<(FloatTensor<Self>, FloatTensor<Self>)>,
        s: AdaLomoScalars,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        adalomo::matrix_update::<R, F, I, BT>(param, grad, scale, moment, s)
    }

    fn sum_sq(grad: FloatTensor<Self>, scale: f64) -> f64 {
        SumSq::<Self>::add_to(0.0, vec![Self::sum_sq_deferred(grad, scale)])
    }

    fn sum_sq_deferred(grad: FloatTensor<Self>, scale: f64) -> SumSq<Self> {
        SumSq::OnDevice(rows::sum_sq_partials(grad, scale))
    }
}

/// A path of this module that runs only where asked for, process-wide: as [`OptIn::set`] last
/// set it, else `VAR=value` in the environment, read on the first question.
pub(crate) struct OptIn {
    /// 0: not decided yet, 1: off, 2: on.
    mode: AtomicU8,
    var: &'static str,
    value: &'static str,
}

impl OptIn {
    pub(crate) const fn new(var: &'static str, value: &'static str) -> Self {
        OptIn { mode: AtomicU8::new(0), var, value }
    }

    pub(crate) fn on(&self) -> bool {
        match self.mode.load(Ordering::Relaxed) {
            0 => {
                let on = std::env::var(self.var).is_ok_and(|v| v == self.value);
                self.set(on);
                on
            }
            mode => mode == 2,
        }
    }

    pub(crate) fn set(&self, on: bool) {
        self.mode.store(if on { 2 } else { 1 }, Ordering::Relaxed);
    }

    /// Turns the path off; whether it was on (cuBLAS's, after a failure).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn turn_off(&self) -> bool {
        self.mode.swap(1, Ordering::Relaxed) == 2
    }
}

/// A float primitive as a `Tensor`.
fn tensor<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// Units per cube of the row kernels (a power of two: the reductions halve it).
const ROW_UNITS: usize = 256;

/// `t` contiguous; with `write`, also uniquely owned, so that a kernel may write into it (a
/// copy when another reference holds it).
fn owned_contiguous<R: CubeRuntime>(t: CubeTensor<R>, write: bool) -> CubeTensor<R> {
    let t = into_contiguous(t);
    if write && !t.can_mut() {
        t.copy()
    } else {
        t
    }
}

/// A new contiguous tensor of `like`'s shape.
fn empty_like<R: CubeRuntime>(like: &CubeTensor<R>, dtype: DType) -> CubeTensor<R> {
    empty_device_dtype(like.client.clone(), like.device.clone(), like.meta.shape().clone(), dtype)
}

/// A new contiguous f32 tensor of `shape`, on `like`'s device.
fn empty_f32<R: CubeRuntime>(like: &CubeTensor<R>, shape: &[usize]) -> CubeTensor<R> {
    empty_device_dtype(like.client.clone(), like.device.clone(), shape.into(), DType::F32)
}

/// The storage type a kernel's `#[define]` takes for a float tensor.
fn float_dtype<R: CubeRuntime>(t: &CubeTensor<R>) -> StorageType {
    t.dtype.into()
}

/// Cubes and units for one unit per element of `n`.
fn elementwise_launch<R: Runtime>(client: &ComputeClient<R>, n: usize) -> (CubeCount, CubeDim) {
    let dim = CubeDim::new(client, n);
    (calculate_cube_count_elemwise(client, n, dim), dim)
}

/// One cube of [`ROW_UNITS`] units per row, `rows` of them (in two dimensions past the 65,535
/// a dimension holds; the kernels read the flat `CUBE_POS` and skip those past the end).
fn row_launch(rows: usize) -> (CubeCount, CubeDim) {
    let x = rows.clamp(1, 65_535);
    let y = rows.div_ceil(x).max(1);
    (CubeCount::Static(x as u32, y as u32, 1), CubeDim::new_1d(ROW_UNITS as u32))
}

/// `labels` on `like`'s device as an i32 array (the kernels' label type).
fn labels_on<R: CubeRuntime>(like: &CubeTensor<R>, labels: &[i64]) -> CubeTensor<R> {
    let ids: Vec<i32> = labels.iter().map(|&l| l as i32).collect();
    let handle = like.client.create_from_slice(bytemuck::cast_slice(&ids));
    CubeTensor::new_contiguous(like.client.clone(), like.device.clone(), [ids.len()].into(), handle, DType::I32)
}

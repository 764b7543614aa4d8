//! The linear layers on CUDA through cuBLAS (`cublasGemmEx`, f32 accumulation), reading and
//! writing the tensors' own device buffers: the forward, `dx` and `dW` are one GEMM each, with
//! any operand row-major (pitched rows included) or a transposed view (the tied LM head) passed
//! to cuBLAS as is, without a copy.
//!
//! cubecl's own matmul (`mma.sync` tiles, no Hopper `wgmma`) may be slower than cuBLAS on the
//! step's shapes; which one is faster there is measured on a GPU, so this path is opt-in
//! (`LOMO_LINEAR=cublas`, or [`set_cublas_linear`]) until it has been.
//!
//! cubecl does not expose its CUDA stream, so each GEMM runs on a stream of its thread's own,
//! between two waits: for cubecl's stream first (every kernel that writes an input, or still
//! reads a buffer the output reuses, has finished), then for its own (the output is written
//! before cubecl's next kernel reads it). The waits give up the overlap of a GEMM with the
//! launches around it. Where cuBLAS cannot be loaded or a call fails, a line on stderr says so
//! and cubecl's matmul runs instead, for the rest of the process.

use std::any::Any;
use std::cell::RefCell;
use std::ffi::{c_int, c_void};

use burn::tensor::DType;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::cuda::{CudaDevice, CudaRuntime};
use cubecl::prelude::ComputeClient;
use cudarc::cublas::{result as blas, sys as blas_sys};
use cudarc::driver::{result as driver, sys as driver_sys};

use super::OptIn;

static CUBLAS_LINEAR: OptIn = OptIn::new("LOMO_LINEAR", "cublas");

/// Whether the linear layers of the CUDA backend run on cuBLAS: as [`set_cublas_linear`] last
/// set it, else `LOMO_LINEAR=cublas` in the environment; false once cuBLAS has failed.
pub fn cublas_linear() -> bool {
    CUBLAS_LINEAR.on()
}

/// Runs the linear layers of the CUDA backend on cuBLAS (`true`; on other backends it changes
/// nothing) or on cubecl's matmul (`false`, the default unless `LOMO_LINEAR=cublas`).
pub fn set_cublas_linear(on: bool) {
    CUBLAS_LINEAR.set(on)
}

/// Turns cuBLAS off for the rest of the process, saying why once.
fn give_up(why: &str) {
    if CUBLAS_LINEAR.turn_off() {
        eprintln!("lomo: cuBLAS for the linear layers failed ({why}); cubecl's matmul runs them from here on");
    }
}

/// This thread's cuBLAS handle and stream for one device, and the device's primary context
/// (the one cubecl's CUDA runtime uses).
struct Blas {
    device: usize,
    context: driver_sys::CUcontext,
    handle: blas_sys::cublasHandle_t,
    stream: driver_sys::CUstream,
}

thread_local! {
    static BLAS: RefCell<Vec<Blas>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's handle and stream for `device` (made on first use), the
/// device's primary context current on this thread.
fn with_blas<T>(device: usize, f: impl FnOnce(&Blas) -> Result<T, String>) -> Result<T, String> {
    BLAS.with(|cell| {
        let mut all = cell.borrow_mut();
        if !all.iter().any(|b| b.device == device) {
            // SAFETY: the primary context is retained once per thread and device and kept for
            // the process (cubecl's runtime holds it too); the library's presence is checked
            // before its first call, since cudarc panics where it cannot load it; the handle
            // and stream are made in that context, current on this thread.
            let made = unsafe {
                let dev = driver::device::get(device as c_int).map_err(|e| format!("device {device}: {e}"))?;
                let context = driver::primary_ctx::retain(dev).map_err(|e| format!("context: {e}"))?;
                driver::ctx::set_current(context).map_err(|e| format!("context: {e}"))?;
                if !blas_sys::is_culib_present() {
                    return Err("libcublas is not on the library path".into());
                }
                let stream = driver::stream::create(driver::stream::StreamKind::NonBlocking)
                    .map_err(|e| format!("stream: {e}"))?;
                let handle = blas::create_handle().map_err(|e| format!("cublasCreate: {e:?}"))?;
                blas::set_stream(handle, stream as blas_sys::cudaStream_t)
                    .map_err(|e| format!("cublasSetStream: {e:?}"))?;
                Blas { device, context, handle, stream }
            };
            all.push(made);
        }
        let blas = all.iter().find(|b| b.device == device).expect("made above");
        // SAFETY: a context retained above, never released.
        unsafe { driver::ctx::set_current(blas.context) }.map_err(|e| format!("context: {e}"))?;
        f(blas)
    })
}

/// A matrix as cuBLAS reads it: `rows × cols`, element `(i, j)` at `i · s0 + j · s1`, with
/// `s1 == 1` (row-major, rows `s0` apart) or `s0 == 1` (column-major, columns `s1` apart).
#[derive(Clone, Copy)]
struct Mat {
    rows: usize,
    cols: usize,
    s0: usize,
    s1: usize,
}

impl Mat {
    /// `t`'s layout, where cuBLAS can read it without a copy.
    fn of<R: CubeRuntime>(t: &CubeTensor<R>) -> Option<Mat> {
        let (shape, strides) = (t.meta.shape(), t.meta.strides());
        if shape.len() != 2 {
            return None;
        }
        let m = Mat { rows: shape[0], cols: shape[1], s0: strides[0], s1: strides[1] };
        (m.row_major().is_some() || m.col_major().is_some()).then_some(m)
    }

    /// The transpose, as a view.
    fn t(self) -> Mat {
        Mat { rows: self.cols, cols: self.rows, s0: self.s1, s1: self.s0 }
    }

    /// The distance between rows, where this is row-major (any stride for one row).
    fn row_major(&self) -> Option<usize> {
        (self.s1 == 1 || self.cols == 1)
            .then_some(if self.rows == 1 { self.cols } else { self.s0 })
            .filter(|&ld| ld >= self.cols)
    }

    /// The distance between columns, where this is column-major.
    fn col_major(&self) -> Option<usize> {
        (self.s0 == 1 || self.rows == 1)
            .then_some(if self.cols == 1 { self.rows } else { self.s1 })
            .filter(|&ld| ld >= self.rows)
    }

    /// How cuBLAS (column-major) reads this matrix's transpose: `(op, leading dimension)`. A
    /// row-major `[r, c]` is a column-major `[c, r]`, the transpose as it is; a column-major
    /// one needs the transposing op.
    fn transposed_operand(&self) -> (blas_sys::cublasOperation_t, usize) {
        match self.row_major() {
            Some(ld) => (blas_sys::cublasOperation_t::CUBLAS_OP_N, ld.max(1)),
            None => (blas_sys::cublasOperation_t::CUBLAS_OP_T, self.col_major().expect("checked in Mat::of").max(1)),
        }
    }
}

/// cuBLAS's name for a float dtype.
fn data_type(dtype: DType) -> Option<blas_sys::cudaDataType> {
    match dtype {
        DType::F32 => Some(blas_sys::cudaDataType::CUDA_R_32F),
        DType::F16 => Some(blas_sys::cudaDataType::CUDA_R_16F),
        DType::BF16 => Some(blas_sys::cudaDataType::CUDA_R_16BF),
        _ => None,
    }
}

/// The CUDA client and device index behind `t`, where `R` is CUDA.
fn cuda<R: CubeRuntime>(t: &CubeTensor<R>) -> Option<(&ComputeClient<CudaRuntime>, usize)> {
    let client = (&t.client as &dyn Any).downcast_ref::<ComputeClient<CudaRuntime>>()?;
    let device = (&t.device as &dyn Any).downcast_ref::<CudaDevice>()?;
    Some((client, device.index))
}

/// `a · b` (`[m, k] · [k, n]`, as [`Mat`] views of `a_t` and `b_t`) into a new row-major
/// `[m, n]` tensor, on cuBLAS; `None` where this path does not apply or failed (nothing
/// written).
fn gemm<R: CubeRuntime>(a_t: &CubeTensor<R>, a: Mat, b_t: &CubeTensor<R>, b: Mat) -> Option<CubeTensor<R>> {
    let dtype = a_t.dtype;
    let ty = data_type(dtype)?;
    if b_t.dtype != dtype || a.cols != b.rows || [a.rows, a.cols, b.cols].contains(&0) {
        return None;
    }
    let int = |v: usize| c_int::try_from(v).ok();
    let (m, k, n) = (int(a.rows)?, int(a.cols)?, int(b.cols)?);
    let (client, device) = cuda(a_t)?;
    let out = empty_device_dtype(a_t.client.clone(), a_t.device.clone(), [a.rows, b.cols].into(), dtype);
    let c = Mat::of(&out).filter(|c| c.s1 == 1)?;
    let resource = |t: &CubeTensor<R>| client.get_resource(t.handle.clone()).map_err(|e| format!("{e:?}"));
    let run = || -> Result<(), String> {
        let (ra, rb, rc) = (resource(a_t)?, resource(b_t)?, resource(&out)?);
        // Every kernel writing an input, or reading a buffer `out` reuses, has finished.
        cubecl::future::block_on(client.sync()).map_err(|e| format!("{e:?}"))?;
        // Row-major C = A·B is column-major Cᵀ = Bᵀ·Aᵀ: cuBLAS's first operand is Bᵀ, its
        // second Aᵀ, its result Cᵀ (row-major C's rows are its columns, `ldc` apart).
        let (op_b, ld_b) = b.transposed_operand();
        let (op_a, ld_a) = a.transposed_operand();
        let ldc = c.row_major().expect("row-major by the filter above");
        let (alpha, beta) = (1.0f32, 0.0f32);
        with_blas(device, |blas| {
            // SAFETY: the pointers are the live buffers of `a_t`, `b_t` and `out` (their
            // resources held until the stream is synchronised below), each at least as large
            // as its shape and leading dimension say; alpha and beta are host f32, as
            // CUBLAS_COMPUTE_32F reads them.
            unsafe {
                blas::gemm_ex(
                    blas.handle,
                    op_b,
                    op_a,
                    n,
                    m,
                    k,
                    (&alpha as *const f32).cast::<c_void>(),
                    rb.resource().ptr as *const c_void,
                    ty,
                    int(ld_b).ok_or("leading dimension")?,
                    ra.resource().ptr as *const c_void,
                    ty,
                    int(ld_a).ok_or("leading dimension")?,
                    (&beta as *const f32).cast::<c_void>(),
                    rc.resource().ptr as *mut c_void,
                    ty,
                    int(ldc).ok_or("leading dimension")?,
                    blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )
                .map_err(|e| format!("cublasGemmEx {m}×{k}·{k}×{n}: {e:?}"))?;
                driver::stream::synchronize(blas.stream).map_err(|e| format!("stream: {e}"))
            }
        })
    };
    match run() {
        Ok(()) => Some(out),
        Err(why) => {
            give_up(&why);
            None
        }
    }
}

/// `x · weight` (`[rows, in] · [in, out]`) on cuBLAS, where this path is on and applies.
pub(crate) fn linear<R: CubeRuntime>(x: &CubeTensor<R>, weight: &CubeTensor<R>) -> Option<CubeTensor<R>> {
    if !cublas_linear() {
        return None;
    }
    gemm(x, Mat::of(x)?, weight, Mat::of(weight)?)
}

/// The gradients of `x` (`grad · weightᵀ`) and of `weight` (`xᵀ · grad`, row-major `[in, out]`)
/// on cuBLAS, where this path is on and applies.
pub(crate) fn linear_backward<R: CubeRuntime>(
    x: &CubeTensor<R>,
    weight: &CubeTensor<R>,
    grad: &CubeTensor<R>,
) -> Option<(CubeTensor<R>, CubeTensor<R>)> {
    if !cublas_linear() {
        return None;
    }
    let (xm, wm, gm) = (Mat::of(x)?, Mat::of(weight)?, Mat::of(grad)?);
    let dx = gemm(grad, gm, weight, wm.t())?;
    let dw = gemm(x, xm.t(), grad, gm)?;
    Some((dx, dw))
}

//! The CUDA-only path of `src/cube/` (the linear layers on cuBLAS, `LOMO_LINEAR=cublas`) against
//! cubecl's matmul on the same GPU: forward, `dx` and `dW`, in f32, bf16 and f16, with the
//! weight row-major and as a transposed view (the tied LM head). Runs where a CUDA device is
//! present (`cargo test -p lomo-kernels --features cuda --test cuda`; xtask/gpu/run.sh runs it
//! on the GPU machine); elsewhere it says it skipped.
//!
//! Tolerances: both accumulate in f32 but in another order; the results agree to 1e-4 of the
//! largest value in f32, and to the storage dtype's rounding (bf16 1e-2, f16 2e-3) in half
//! precision.

use std::path::Path;

use burn::backend::Cuda;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};
use lomo_io::rng::SplitMix64;
use lomo_kernels::{cublas_linear, set_cublas_linear, FusedKernels};

type B = Cuda;

fn gpu() -> bool {
    if !Path::new("/dev/nvidia0").exists() {
        eprintln!("skipped: no CUDA device here (/dev/nvidia0 is missing)");
        return false;
    }
    true
}

fn random<const D: usize>(shape: [usize; D], seed: u64, dtype: DType) -> Tensor<B, D> {
    let mut rng = SplitMix64::new(seed);
    let n = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| rng.next_normal() as f32).collect();
    Tensor::<B, D>::from_data(TensorData::new(values, shape), &Default::default()).cast(dtype)
}

fn prim<const D: usize>(t: &Tensor<B, D>) -> FloatTensor<B> {
    t.clone().into_primitive().tensor()
}

fn values(t: FloatTensor<B>) -> Vec<f32> {
    Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(t)).cast(DType::F32).into_data().to_vec::<f32>().unwrap()
}

fn assert_close(what: &str, got: FloatTensor<B>, want: FloatTensor<B>, tol: f32) {
    let (got, want) = (values(got), values(want));
    assert_eq!(got.len(), want.len(), "{what}: sizes");
    let scale = want.iter().fold(1e-30f32, |m, v| m.max(v.abs()));
    let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(diff / scale <= tol, "{what}: max |diff| {diff} against max |value| {scale} (tolerance {tol})");
}

/// One test: the path is a process-wide switch, flipped between the two sides.
#[test]
fn cublas_linear_matches_cubecl_matmul() {
    if !gpu() {
        return;
    }
    for (dtype, tol) in [(DType::F32, 1e-4), (DType::BF16, 1e-2), (DType::F16, 2e-3)] {
        for (rows, inp, out) in [(5, 96, 80), (1024, 512, 1376), (2048, 4096, 4096)] {
            let x = random([rows, inp], 1, dtype);
            let grad = random([rows, out], 3, dtype);
            let weights =
                [("row-major", random([inp, out], 2, dtype)), ("transposed", random([out, inp], 4, dtype).transpose())];
            for (layout, w) in weights {
                let what = format!("{dtype:?} {rows}×{inp}·{inp}×{out}, weight {layout}");
                set_cublas_linear(false);
                let want_y = B::linear(prim(&x), prim(&w), None);
                let (want_dx, want_dw, _) = B::linear_backward(prim(&x), prim(&w), false, prim(&grad));
                set_cublas_linear(true);
                let got_y = B::linear(prim(&x), prim(&w), None);
                let (got_dx, got_dw, _) = B::linear_backward(prim(&x), prim(&w), false, prim(&grad));
                assert!(cublas_linear(), "{what}: cuBLAS gave up (its line on stderr says why)");
                assert_close(&format!("{what}: y"), got_y, want_y, tol);
                assert_close(&format!("{what}: dx"), got_dx, want_dx, tol);
                assert_close(&format!("{what}: dw"), got_dw, want_dw, tol);
            }
        }
    }
    // The bias is added after the product, as burn's linear does.
    let x = random([7, 33], 5, DType::F32);
    let w = random([33, 19], 6, DType::F32);
    let b = random([19], 7, DType::F32);
    set_cublas_linear(true);
    let got = B::linear(prim(&x), prim(&w), Some(prim(&b)));
    assert!(cublas_linear());
    let want = (x.matmul(w) + b.unsqueeze_dim(0)).into_primitive().tensor();
    assert_close("linear with bias", got, want, 1e-5);
}

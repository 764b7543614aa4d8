//! The update kernels (`UpdateKernels`: one pass per update on Flex) give what their reference,
//! composed of burn's ops, gives: LOMO bit for bit in f32 (same arithmetic in the same order),
//! AdaLomo to f32 rounding of its sums (the means and norms are summed in another order); the
//! sum of squares what an f64 sum gives. And the row-block helpers the reference uses give
//! exactly what the whole-tensor operations give.

use burn::backend::Flex;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Distribution, Tensor, TensorMetadata, TensorPrimitive};
use lomo_kernels::blocks::{self, BLOCK_ELEMS};
use lomo_kernels::update::reference;
use lomo_kernels::{AdaLomoScalars, GradScale, UpdateKernels};

fn random(shape: [usize; 2], dtype: DType, mean: f64) -> Tensor<Flex, 2> {
    Tensor::<Flex, 2>::random(shape, Distribution::Normal(mean, 1.0), &Default::default()).cast(dtype)
}

fn values(t: Tensor<Flex, 2>) -> Vec<f32> {
    t.cast(DType::F32).into_data().to_vec::<f32>().unwrap()
}

fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(1e-30f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max) / scale
}

fn tensor<const D: usize>(t: FloatTensor<Flex>) -> Tensor<Flex, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

const DTYPES: [DType; 3] = [DType::F32, DType::BF16, DType::F16];

#[test]
fn lomo_kernel_equals_the_reference() {
    let scales = [GradScale::default(), GradScale { inv_scale: 0.25, clip_value: Some(0.8), clip_coef: Some(0.6) }];
    for dtype in DTYPES {
        for scale in scales {
            for wd in [0.0, 0.1] {
                let (p, g) = (random([300, 70], dtype, 0.0), random([300, 70], dtype, 0.2));
                let prim = |t: &Tensor<Flex, 2>| t.clone().into_primitive().tensor();
                let composed: Tensor<Flex, 2> =
                    tensor(reference::lomo_update::<Flex>(prim(&p), prim(&g), scale, 0.03, wd));
                let fused: Tensor<Flex, 2> = tensor(Flex::lomo_update(prim(&p), prim(&g), scale, 0.03, wd));
                assert_eq!(fused.dtype(), dtype);
                let (f, c) = (values(fused), values(composed));
                if dtype == DType::F32 {
                    assert_eq!(f, c, "f32, {scale:?}, wd {wd}");
                } else {
                    // One rounding to the storage dtype of nearly equal f32 values.
                    assert!(max_rel_diff(&f, &c) <= 1e-2, "{dtype:?}, {scale:?}, wd {wd}");
                }
            }
        }
    }
}

#[test]
fn adalomo_kernel_equals_the_reference_over_steps() {
    for dtype in DTYPES {
        let scale = GradScale { inv_scale: 0.5, clip_value: None, clip_coef: Some(0.9) };
        let mut pc = random([120, 90], dtype, 0.0).into_primitive().tensor();
        let mut pf = pc.clone();
        let (mut mc, mut mf) = (None, None);
        for step in 0..3 {
            let g = random([120, 90], dtype, 0.1 * step as f64).into_primitive().tensor();
            // AdaLomo's defaults with weight decay, at step t = step + 1: beta = 1 - t^-0.8.
            let beta = 1.0 - ((step + 1) as f64).powf(-0.8);
            let s = AdaLomoScalars {
                lr: 0.01,
                beta,
                eps_sq: 1e-30,
                eps_scale: 1e-3,
                clip_threshold: 1.0,
                weight_decay: 0.05,
            };
            let (p, row, col) = reference::adalomo_matrix_update::<Flex>(pc, g.clone(), scale, mc, s);
            (pc, mc) = (p, Some((row, col)));
            let (p, row, col) = Flex::adalomo_matrix_update(pf, g, scale, mf, s);
            (pf, mf) = (p, Some((row, col)));
        }
        let tol = if dtype == DType::F32 { 1e-5 } else { 1e-2 };
        let diff = max_rel_diff(&values(tensor(pf)), &values(tensor(pc)));
        assert!(diff <= tol, "{dtype:?}: {diff}");
        let sizes =
            |m: &Option<(FloatTensor<Flex>, FloatTensor<Flex>)>| m.as_ref().map(|(r, c)| (r.shape(), c.shape()));
        assert_eq!(sizes(&mc), sizes(&mf));
    }
}

#[test]
fn sum_sq_kernel_equals_an_f64_sum() {
    for dtype in DTYPES {
        let g = random([513, 333], dtype, 0.3);
        let exact: f64 = values(g.clone()).iter().map(|&x| (0.5 * x as f64).powi(2)).sum();
        let got = <Flex as UpdateKernels>::sum_sq(g.into_primitive().tensor(), 0.5);
        assert!(((got - exact) / exact).abs() < 1e-5, "{dtype:?}: {got} vs {exact}");
    }
}

/// `[rows, 1000]` with more elements than a block.
fn big(rows: usize, dtype: DType, seed_shift: f64) -> Tensor<Flex, 2> {
    assert!(rows * 1000 > BLOCK_ELEMS);
    random([rows, 1000], dtype, seed_shift)
}

#[test]
fn blockwise_casts_sums_and_norms_equal_the_whole_tensor_ones() {
    for dtype in [DType::BF16, DType::F16] {
        let t = big(1100, dtype, 0.0);
        assert_eq!(values(blocks::cast(t.clone(), DType::F32)), values(t.clone().cast(DType::F32)), "{dtype:?} → f32");
        let f = big(1100, DType::F32, 0.5);
        assert_eq!(values(blocks::cast(f.clone(), dtype)), values(f.clone().cast(dtype)), "f32 → {dtype:?}");
        let acc = big(1100, DType::F32, 1.0);
        let whole = acc.clone() + t.clone().cast(DType::F32);
        assert_eq!(values(blocks::add_f32(acc, t.clone())), values(whole), "{dtype:?} added into f32");
        // Against an f64 sum on the host. Each block's sum is an f32 reduction of up to 1M
        // squares (off by ~1e-4 on Flex, as a whole-tensor f32 sum is); a block left out or
        // counted twice would be off by over 10%.
        let exact: f64 = values(t.clone()).iter().map(|&x| (0.5 * x as f64).powi(2)).sum();
        let sq = blocks::sum_sq_scaled(t.clone(), 0.5);
        assert!(((sq - exact) / exact).abs() < 1e-3, "{sq} vs {exact}");
    }
}

//! The rules' fused path (`update_raw`, through lomo-kernels' `UpdateKernels`: one pass per
//! update on Flex) gives what the rules composed of burn's ops give: LOMO bit for bit in f32
//! (same arithmetic in the same order), AdaLomo to f32 rounding of its sums (the means and norms
//! are summed in another order). The kernels against their own reference, and the sum of
//! squares, are lomo-kernels' `tests/update.rs`.

use burn::module::ParamId;
use burn::tensor::{DType, Distribution, Tensor};
use lomo_optim::{AdaLomoConfig, GradPrep, Lomo, UpdateRule};

use crate::common::backend::{device, Inner, SUPPORTS_F16};

fn random(shape: [usize; 2], dtype: DType, mean: f64) -> Tensor<Inner, 2> {
    Tensor::<Inner, 2>::random(shape, Distribution::Normal(mean, 1.0), &device()).cast(dtype)
}

fn values(t: Tensor<Inner, 2>) -> Vec<f32> {
    t.cast(DType::F32).into_data().to_vec::<f32>().unwrap()
}

fn dtypes() -> Vec<DType> {
    if SUPPORTS_F16 {
        vec![DType::F32, DType::BF16, DType::F16]
    } else {
        vec![DType::F32]
    }
}

fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(1e-30f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max) / scale
}

#[test]
fn lomo_kernel_equals_the_composed_rule() {
    let preps = [GradPrep::default(), GradPrep { inv_scale: 0.25, clip_value: Some(0.8), clip_coef: Some(0.6) }];
    for dtype in dtypes() {
        for prep in preps {
            for wd in [0.0, 0.1] {
                let (p, g) = (random([300, 70], dtype, 0.0), random([300, 70], dtype, 0.2));
                let mut rule = Lomo::new(wd).unwrap();
                let id = ParamId::new();
                let composed = UpdateRule::<Inner>::update(&mut rule, id, p.clone(), prep.apply(g.clone()), 0.03);
                let fused = UpdateRule::<Inner>::update_raw(&mut rule, id, p, g, &prep, 0.03);
                assert_eq!(fused.dtype(), dtype);
                let (f, c) = (values(fused), values(composed));
                if dtype == DType::F32 {
                    assert_eq!(f, c, "f32, {prep:?}, wd {wd}");
                } else {
                    // One rounding to the storage dtype of nearly equal f32 values.
                    assert!(max_rel_diff(&f, &c) <= 1e-2, "{dtype:?}, {prep:?}, wd {wd}");
                }
            }
        }
    }
}

#[test]
fn adalomo_kernel_equals_the_composed_rule_over_steps() {
    for dtype in dtypes() {
        let config = AdaLomoConfig { weight_decay: 0.05, ..Default::default() };
        let (mut composed, mut fused) = (config.init::<Inner>().unwrap(), config.init::<Inner>().unwrap());
        let id = ParamId::new();
        let prep = GradPrep { inv_scale: 0.5, clip_value: None, clip_coef: Some(0.9) };
        let mut pc = random([120, 90], dtype, 0.0);
        let mut pf = pc.clone();
        for step in 0..3 {
            let g = random([120, 90], dtype, 0.1 * step as f64);
            UpdateRule::<Inner>::begin_step(&mut composed);
            UpdateRule::<Inner>::begin_step(&mut fused);
            pc = UpdateRule::<Inner>::update(&mut composed, id, pc, prep.apply(g.clone()), 0.01);
            pf = UpdateRule::<Inner>::update_raw(&mut fused, id, pf, g, &prep, 0.01);
        }
        let tol = if dtype == DType::F32 { 1e-5 } else { 1e-2 };
        let diff = max_rel_diff(&values(pf.clone()), &values(pc.clone()));
        assert!(diff <= tol, "{dtype:?}: {diff}");
        assert_eq!(composed.state_bytes(), fused.state_bytes());
    }
}

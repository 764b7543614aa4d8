//! fp16 dynamic loss scaling: an overflow step changes no weight bit, the scale halves, and
//! it grows again after a window of clean steps.

use burn::tensor::DType;
use lomo_optim::{FusedConfig, FusedStep, Lomo, LossScaleConfig, RuleUpdater};

use crate::common::backend::{device, TestBackend as TB, SUPPORTS_F16};
use crate::common::model::{batch, TiedMlp};
use crate::common::params_bytes;

fn overflow_leaves_every_weight_bit_identical(dtype: DType, init_scale: f64) {
    let b = batch(8, 24, 21);
    let config = FusedConfig {
        clip_grad_norm: Some(1.0),
        loss_scale: Some(LossScaleConfig { init_scale, window: 2, ..Default::default() }),
        ..Default::default()
    };
    let mut step = FusedStep::new(RuleUpdater::new(Lomo::new(0.01).unwrap()), config).unwrap();
    let model = TiedMlp::<TB>::new(24, 16, 3, 3, &device()).cast(dtype);
    let before = params_bytes(&model);
    let (model, report) = step.step(model, std::slice::from_ref(&b), 0.1).unwrap();
    assert!(report.skipped, "a scale of {init_scale} must overflow in {dtype:?}");
    assert_eq!(report.loss_scale, Some(init_scale));
    assert_eq!(params_bytes(&model), before, "a skipped step changed weights");
    assert_eq!(step.scaler().unwrap().scale(), init_scale / 2.0);
    assert_eq!(step.scaler().unwrap().skipped_steps(), 1);
    // Halve until the step goes through.
    let mut model = model;
    let mut applied = 0;
    for _ in 0..2000 {
        let (m, r) = step.step(model, std::slice::from_ref(&b), 0.1).unwrap();
        model = m;
        if !r.skipped {
            applied += 1;
            assert!(r.grad_norm.unwrap().is_finite());
            break;
        }
    }
    assert_eq!(applied, 1, "the scale never came down far enough");
    assert_ne!(params_bytes(&model), before, "an applied step must change weights");
    // After `window` = 2 clean steps in a row the scale doubles.
    let scale = step.scaler().unwrap().scale();
    let (model, r) = step.step(model, std::slice::from_ref(&b), 0.1).unwrap();
    assert!(!r.skipped);
    assert_eq!(step.scaler().unwrap().scale(), scale * 2.0);
    drop(model);
}

#[test]
fn fp16_overflow_step_leaves_every_weight_bit_identical() {
    if !SUPPORTS_F16 {
        eprintln!("skipped: this backend has no f16 storage (the f32 variant below still runs)");
        return;
    }
    // fp16's largest value is 65504: a loss scale of 2^32 overflows the gradients.
    overflow_leaves_every_weight_bit_identical(DType::F16, 2f64.powi(32));
}

#[test]
fn f32_overflow_step_leaves_every_weight_bit_identical() {
    // A scale past f32's range makes the scaled gradients infinite.
    overflow_leaves_every_weight_bit_identical(DType::F32, 1e300);
}

#[test]
fn scaler_grows_after_its_window_and_never_below_min() {
    let mut s =
        lomo_optim::DynamicLossScaler::new(LossScaleConfig { init_scale: 4.0, factor: 2.0, window: 3, min_scale: 2.0 })
            .unwrap();
    s.overflow();
    s.overflow();
    assert_eq!(s.scale(), 2.0);
    s.clean();
    s.clean();
    assert_eq!(s.scale(), 2.0);
    s.clean();
    assert_eq!(s.scale(), 4.0);
    assert!(lomo_optim::DynamicLossScaler::new(LossScaleConfig { window: 0, ..Default::default() }).is_err());
}

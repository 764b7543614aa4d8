//! The fused step equals the ordinary one: full backward then update.

use burn::optim::{AdamWConfig, SgdConfig};
use lomo_optim::{
    full_backward_grads, full_backward_step, BurnOptimizer, FusedConfig, FusedStep, Lomo, OptimError, RuleUpdater,
};

use crate::common::backend::{device, TestBackend as TB};
use crate::common::model::{batch, Batch, TiedMlp};
use crate::common::{max_abs_diff, ordered, params_host, snapshot};

const VOCAB: usize = 24;
const HIDDEN: usize = 16;

fn model() -> TiedMlp<TB> {
    TiedMlp::new(VOCAB, HIDDEN, 4, 7, &device())
}

fn lomo(config: FusedConfig) -> FusedStep<RuleUpdater<Lomo>> {
    FusedStep::new(RuleUpdater::new(Lomo::new(0.0).unwrap()), config).unwrap()
}

#[test]
fn fused_lomo_equals_full_backward_sgd_with_a_tied_parameter() {
    let b = batch(8, VOCAB, 1);
    let lr = 0.1;
    let (fused, report) = lomo(FusedConfig::default()).step(model(), std::slice::from_ref(&b), lr).unwrap();
    let mut sgd = SgdConfig::new().init();
    let (reference, loss) = full_backward_step::<TB, _, _, 2>(model(), std::slice::from_ref(&b), &mut sgd, lr).unwrap();
    assert!((report.loss - loss).abs() < 1e-5, "loss {} vs {}", report.loss, loss);
    let before = snapshot(&model());
    let after = snapshot(&fused);
    // The step must have moved the weights, the tied embedding included.
    assert!(max_abs_diff(&before, &after) > 1e-3);
    let diff = max_abs_diff(&after, &snapshot(&reference));
    assert!(diff <= 1e-6, "fused LOMO vs full backward + SGD: max abs diff {diff}");
}

#[test]
fn loss_chunks_change_nothing() {
    let b = batch(9, VOCAB, 2);
    let (one, r1) = lomo(FusedConfig::default()).step(model(), std::slice::from_ref(&b), 0.1).unwrap();
    let mut chunked = model();
    chunked.rows_per_chunk = 2;
    let (many, r2) = lomo(FusedConfig::default()).step(chunked, std::slice::from_ref(&b), 0.1).unwrap();
    assert!((r1.loss - r2.loss).abs() < 1e-6);
    let diff = max_abs_diff(&snapshot(&one), &snapshot(&many));
    assert!(diff <= 1e-6, "5 loss chunks vs 1: {diff}");
}

#[test]
fn four_micro_batches_equal_one_batch_of_four() {
    // Micro-batches with different numbers of supervised targets: the loss must be the mean
    // over all targets, not a mean of per-micro-batch means.
    let full = batch(12, VOCAB, 3);
    let micro: Vec<Batch> = (0..4).map(|i| full.slice(i * 3..i * 3 + 3)).collect();
    let mut uneven = micro.clone();
    uneven[1].targets[0] = -100;
    let mut full_uneven = full.clone();
    full_uneven.targets[3] = -100;

    let (a, ra) = lomo(FusedConfig::default()).step(model(), std::slice::from_ref(&full_uneven), 0.1).unwrap();
    let (b, rb) = lomo(FusedConfig::default()).step(model(), &uneven, 0.1).unwrap();
    assert_eq!(ra.targets, rb.targets);
    // Sums in f32 over different groupings: equal to f32 rounding of the loss's magnitude.
    assert!((ra.loss - rb.loss).abs() < 1e-6 * ra.loss.abs().max(1.0), "loss {} vs {}", ra.loss, rb.loss);
    let diff = max_abs_diff(&snapshot(&a), &snapshot(&b));
    assert!(diff <= 1e-6, "4 micro-batches vs one batch: {diff}");
}

#[test]
fn clipped_step_uses_the_clip_coefficient_computed_by_hand() {
    let b = batch(8, VOCAB, 4);
    let lr = 0.05;
    let max_norm = 0.25;
    let m = model();
    // By hand: the global norm of the full gradient, then min(1, max / (norm + 1e-6)).
    let (mut grads, _) = full_backward_grads::<TB, _, 2>(&m, std::slice::from_ref(&b)).unwrap();
    let before = params_host(&m);
    let mut sum_sq = 0f64;
    let mut expected = before.clone();
    let mut grad_host = std::collections::HashMap::new();
    for (id, (shape, _)) in &before {
        let g: Vec<f32> = match shape.len() {
            1 => grads.remove::<crate::common::backend::Inner, 1>(*id).unwrap().into_data().to_vec().unwrap(),
            _ => grads.remove::<crate::common::backend::Inner, 2>(*id).unwrap().into_data().to_vec().unwrap(),
        };
        sum_sq += g.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>();
        grad_host.insert(*id, g);
    }
    let norm = sum_sq.sqrt();
    let coef = (max_norm / (norm + 1e-6)).min(1.0);
    assert!(coef < 0.9, "the test must actually clip (norm {norm})");
    for (id, (_, values)) in expected.iter_mut() {
        for (p, g) in values.iter_mut().zip(&grad_host[id]) {
            *p -= (lr * coef) as f32 * g;
        }
    }
    let expected = ordered(&m, &expected);
    let config = FusedConfig { clip_grad_norm: Some(max_norm), ..Default::default() };
    let (fused, report) = lomo(config).step(m, std::slice::from_ref(&b), lr).unwrap();
    assert!((report.grad_norm.unwrap() - norm).abs() < 1e-5 * norm.max(1.0), "{:?} vs {norm}", report.grad_norm);
    assert!((report.clip_coef.unwrap() - coef).abs() < 1e-6);
    let diff = max_abs_diff(&snapshot(&fused), &expected);
    assert!(diff <= 1e-6, "clipped step vs by hand: {diff}");
}

#[test]
fn clip_by_value_and_weight_decay_match_by_hand() {
    let b = batch(8, VOCAB, 5);
    let (lr, wd, v) = (0.05, 0.1, 0.01);
    let m = model();
    let (mut grads, _) = full_backward_grads::<TB, _, 2>(&m, std::slice::from_ref(&b)).unwrap();
    let mut expected = params_host(&m);
    for (id, (shape, values)) in expected.iter_mut() {
        let g: Vec<f32> = match shape.len() {
            1 => grads.remove::<crate::common::backend::Inner, 1>(*id).unwrap().into_data().to_vec().unwrap(),
            _ => grads.remove::<crate::common::backend::Inner, 2>(*id).unwrap().into_data().to_vec().unwrap(),
        };
        for (p, g) in values.iter_mut().zip(g) {
            *p = *p * (1.0 - (lr * wd) as f32) - lr as f32 * g.clamp(-v as f32, v as f32);
        }
    }
    let expected = ordered(&m, &expected);
    let config = FusedConfig { clip_grad_value: Some(v), ..Default::default() };
    let mut step = FusedStep::new(RuleUpdater::new(Lomo::new(wd).unwrap()), config).unwrap();
    let (fused, _) = step.step(m, std::slice::from_ref(&b), lr).unwrap();
    let diff = max_abs_diff(&snapshot(&fused), &expected);
    assert!(diff <= 1e-6, "clip by value + weight decay vs by hand: {diff}");
}

#[test]
fn stagewise_adamw_equals_full_backward_adamw() {
    let b = batch(8, VOCAB, 6);
    let mut fused = FusedStep::new(BurnOptimizer::new(AdamWConfig::new().init()), FusedConfig::default()).unwrap();
    let mut full = AdamWConfig::new().init();
    let (mut a, mut r) = (model(), model());
    for _ in 0..2 {
        a = fused.step(a, std::slice::from_ref(&b), 0.01).unwrap().0;
        r = full_backward_step::<TB, _, _, 2>(r, std::slice::from_ref(&b), &mut full, 0.01).unwrap().0;
    }
    let diff = max_abs_diff(&snapshot(&a), &snapshot(&r));
    assert!(diff <= 1e-6, "stage-wise AdamW vs full backward AdamW: {diff}");
}

#[test]
fn a_batch_without_targets_is_an_error() {
    let mut b = batch(4, VOCAB, 7);
    b.targets = vec![-100; 4];
    let err = lomo(FusedConfig::default()).step(model(), &[b], 0.1).unwrap_err();
    assert!(matches!(err, OptimError::NoTargets), "{err}");
    let err = lomo(FusedConfig::default()).step(model(), &[], 0.1).unwrap_err();
    assert!(matches!(err, OptimError::NoMicroBatches), "{err}");
}

#[test]
fn bad_configuration_is_refused_with_the_field_named() {
    let err = FusedStep::new(
        RuleUpdater::new(Lomo::default()),
        FusedConfig { clip_grad_norm: Some(-1.0), ..Default::default() },
    )
    .unwrap_err();
    assert!(err.to_string().starts_with("clip_grad_norm:"), "{err}");
    assert!(Lomo::new(f64::NAN).unwrap_err().to_string().starts_with("weight_decay:"));
}

#[test]
fn synced_timers_measure_every_phase_within_the_step() {
    use lomo_optim::StagedModel;
    // Flex finishes every op before returning, so here the waits change no figure; what this
    // checks is their plumbing: each phase measured once, none counted twice, same weights.
    let b = batch(8, VOCAB, 1);
    for config in [FusedConfig::default(), FusedConfig { clip_grad_norm: Some(1.0), ..Default::default() }] {
        let mut step = lomo(config).with_synced_timings(true);
        assert!(step.synced_timings() && !lomo(config).synced_timings(), "off unless asked for");
        let wall = std::time::Instant::now();
        let (synced, report) = step.step(model(), std::slice::from_ref(&b), 0.1).unwrap();
        let wall = wall.elapsed().as_secs_f64();
        let t = &report.timings;
        assert_eq!(t.backward.len(), model().num_stages());
        assert!(t.forward > 0.0 && t.update > 0.0, "{t:?}");
        assert!(t.backward.iter().all(|&s| s > 0.0), "every stage's backward timed: {t:?}");
        assert_eq!(t.norm_pass.is_some_and(|n| n > 0.0), config.clip_grad_norm.is_some(), "{t:?}");
        assert!(t.total() <= wall, "the phases ({}) within the step's wall time ({wall})", t.total());
        let (plain, _) = lomo(config).step(model(), std::slice::from_ref(&b), 0.1).unwrap();
        assert_eq!(max_abs_diff(&snapshot(&synced), &snapshot(&plain)), 0.0, "the waits change no weight");
    }
}

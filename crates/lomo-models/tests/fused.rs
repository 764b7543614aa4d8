//! The fused step of lomo-optim on stories260K reproduces the LOMO authors' package
//! (`lomo-optim` 0.1.1, reference/gen_reference.py steps 3–5).

use burn::module::AutodiffModule;
use lomo_models::{Batch, HfParam, Llama, StorageDtype};
use lomo_optim::{AdaLomoConfig, FusedConfig, FusedStep, Lomo, RuleUpdater, Updater};

use crate::common::{self, max_abs_diff, values, NamedTensors, AD, B};

type Inner = B;

fn setup(reference: &str) -> Option<(Llama<AD>, Batch, NamedTensors, serde_json::Value)> {
    let dir = common::stories260k()?;
    let batch = common::reference_batch()?;
    let expected = common::read_safetensors(&common::shared(&format!("reference/stories260K/{reference}.safetensors"))?);
    let runs = common::shared("reference/stories260K/runs.json")?;
    let runs: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(runs).unwrap()).unwrap();
    let model = Llama::<AD>::load_hf(dir, StorageDtype::F32, &common::device()).unwrap();
    Some((model, batch, expected, runs[reference].clone()))
}

fn run<U: Updater<AD, Llama<AD>>>(
    mut model: Llama<AD>,
    batch: &Batch,
    mut step: FusedStep<U>,
    steps: usize,
    lr: f64,
) -> (Llama<AD>, Vec<f64>) {
    let mut losses = Vec::new();
    for _ in 0..steps {
        let (next, report) = step.step(model, std::slice::from_ref(batch), lr).unwrap();
        assert!(!report.skipped);
        losses.push(report.loss);
        model = next;
    }
    (model, losses)
}

fn assert_weights(model: &Llama<AD>, expected: &NamedTensors, what: &str) {
    let inner = model.valid();
    assert_eq!(inner.hf_params().len(), expected.len());
    for (spec, param) in inner.hf_params() {
        let got = match param {
            HfParam::Vector(p) => values(p.val()),
            HfParam::Matrix(p) if spec.transposed => values(p.val().transpose()),
            HfParam::Matrix(p) => values(p.val()),
        };
        let diff = max_abs_diff(&got, &expected[&spec.name].1);
        assert!(diff <= 1e-5, "{what}: {} differs from the reference by {diff}", spec.name);
    }
}

fn assert_losses(losses: &[f64], run: &serde_json::Value) {
    let expected: Vec<f64> = serde_json::from_value(run["losses_before_each_step"].clone()).unwrap();
    for (got, want) in losses.iter().zip(&expected) {
        assert!((got - want).abs() <= 1e-5, "losses {losses:?} vs reference {expected:?}");
    }
}

#[test]
fn lomo_one_step_matches_reference() {
    let Some((model, batch, expected, _)) = setup("lomo_1step") else { return };
    // opt = Lomo(m, lr=0.05); opt.fused_backward(loss_of(m), 0.05)
    let step = FusedStep::new(RuleUpdater::new(Lomo::new(0.0).unwrap()), FusedConfig::default()).unwrap();
    let (model, _) = run(model, &batch, step, 1, 0.05);
    assert_weights(&model, &expected, "lomo_1step");
}

#[test]
fn lomo_clipped_three_steps_match_reference() {
    let Some((model, batch, expected, reference_run)) = setup("lomo_clip_3steps") else { return };
    // Lomo(m, lr=0.05, clip_grad_norm=1.0, weight_decay=0.01); grad_norm then fused_backward, 3 times
    let config = FusedConfig { clip_grad_norm: Some(1.0), ..Default::default() };
    let step = FusedStep::new(RuleUpdater::new(Lomo::new(0.01).unwrap()), config).unwrap();
    let (model, losses) = run(model, &batch, step, 3, 0.05);
    assert_losses(&losses, &reference_run);
    assert_weights(&model, &expected, "lomo_clip_3steps");
}

#[test]
fn adalomo_three_steps_match_reference() {
    let Some((model, batch, expected, reference_run)) = setup("adalomo_3steps") else { return };
    // AdaLomo(m, lr=0.01) with its defaults; fused_backward 3 times
    let rule = AdaLomoConfig::default().init::<Inner>().unwrap();
    let step = FusedStep::new(RuleUpdater::new(rule), FusedConfig::default()).unwrap();
    let (model, losses) = run(model, &batch, step, 3, 0.01);
    assert_losses(&losses, &reference_run);
    assert_weights(&model, &expected, "adalomo_3steps");
}

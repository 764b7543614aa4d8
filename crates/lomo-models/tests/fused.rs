//! The fused step of lomo-optim on stories260K reproduces the LOMO authors' package
//! (`lomo-optim` 0.1.1, reference/gen_reference.py steps 3–5).

use burn::module::AutodiffModule;
use lomo_models::{load, Batch, HfParam, Llama, Residency, StorageDtype, TensorSource};
use lomo_optim::{AdaLomoConfig, FusedConfig, FusedStep, Lomo, RuleUpdater, Updater};

use crate::common::{self, max_abs_diff, values, NamedTensors, AD, B};

type Inner = B;

fn setup(reference: &str) -> Option<(Llama<AD>, Batch, NamedTensors, serde_json::Value)> {
    let dir = common::stories260k()?;
    let batch = common::reference_batch()?;
    let expected =
        common::read_safetensors(&common::shared(&format!("reference/stories260K/{reference}.safetensors"))?);
    let runs = common::shared("reference/stories260K/runs.json")?;
    let runs: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(runs).unwrap()).unwrap();
    let model = load::<AD>(TensorSource::Hf(dir.as_ref()), Residency::Resident, StorageDtype::F32, &common::device())
        .map(|l| l.model)
        .unwrap();
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

/// The same weights in bf16 and in f32 (the f32 weights rounded to bf16 first, so the only
/// difference is the compute): the loss and one fused LOMO step agree to bf16's rounding.
///
/// Tolerances: bf16 keeps 8 significant bits, 2^-8 ≈ 0.4% relative per rounding. The loss runs
/// through 5 blocks of rounded activations and comes out within 2% of f32's. After the step a
/// bf16 weight is the f32 result rounded (half an ulp, 2^-9 of the weight on average, at most
/// 2^-8) with an update computed from a bf16 gradient; per tensor, in the L2 norm: `|bf16 − f32|
/// ≤ 2^-8 |w| + 25% |Δw|` (a gradient summed over many positions in bf16 can lose more on a
/// single element through cancellation, so the check is on each tensor as a whole).
#[test]
#[cfg_attr(feature = "test-wgpu", ignore = "WGSL has no bf16")]
fn bf16_step_equals_the_f32_step_to_bf16_rounding() {
    half_step_equals_the_f32_step(StorageDtype::BF16, 8);
}

/// The same in f16 (11 significant bits: `|f16 − f32| ≤ 2^-11 |w| + 25% |Δw|`), which wgpu has
/// where the device has `shaderFloat16`: the GPU kernels' half-precision path end to end.
#[test]
fn f16_step_equals_the_f32_step_to_f16_rounding() {
    half_step_equals_the_f32_step(StorageDtype::F16, 11);
}

/// One fused LOMO step in a half dtype of `bits` significant bits against the same step in f32
/// from the same (rounded) weights.
fn half_step_equals_the_f32_step(dtype: StorageDtype, bits: i32) {
    let Some(dir) = common::stories260k() else { return };
    let Some(batch) = common::reference_batch() else { return };
    let half =
        load::<AD>(TensorSource::Hf(&dir), Residency::Resident, dtype, &common::device()).map(|l| l.model).unwrap();
    // f32 weights equal to the half ones: the half model's weights, converted.
    let f32_dir = std::env::temp_dir().join(format!("lomo-{dtype:?}-vs-f32-{}", std::process::id()));
    half.valid().save_hf(&f32_dir, &Default::default()).unwrap();
    let f32m = load::<AD>(TensorSource::Hf(&f32_dir), Residency::Resident, StorageDtype::F32, &common::device())
        .map(|l| l.model)
        .unwrap();
    std::fs::remove_dir_all(&f32_dir).ok();

    let before: Vec<Vec<f32>> = f32m
        .valid()
        .hf_params()
        .into_iter()
        .map(|(_, p)| match p {
            HfParam::Vector(p) => values(p.val()),
            HfParam::Matrix(p) => values(p.val()),
        })
        .collect();
    let lr = 0.05;
    let step = || FusedStep::new(RuleUpdater::new(Lomo::new(0.0).unwrap()), FusedConfig::default()).unwrap();
    let (after_half, loss_half) = run(half, &batch, step(), 1, lr);
    let (after_f32, loss_f32) = run(f32m, &batch, step(), 1, lr);
    let rel = ((loss_half[0] - loss_f32[0]) / loss_f32[0]).abs();
    assert!(rel < 0.02, "{dtype:?} loss {} vs f32 {} ({rel:.4} relative)", loss_half[0], loss_f32[0]);

    let (a, b) = (after_half.valid(), after_f32.valid());
    for (((spec, pa), (_, pb)), w0) in a.hf_params().into_iter().zip(b.hf_params()).zip(&before) {
        let get = |p: HfParam<'_, Inner>| match p {
            HfParam::Vector(p) => values(p.val()),
            HfParam::Matrix(p) => values(p.val()),
        };
        let (wa, wb) = (get(pa), get(pb));
        let norm = |v: &mut dyn Iterator<Item = f32>| v.map(|x| (x as f64).powi(2)).sum::<f64>().sqrt();
        let diff = norm(&mut wa.iter().zip(&wb).map(|(x, y)| x - y));
        let (weight, update) = (norm(&mut wb.iter().copied()), norm(&mut wb.iter().zip(w0).map(|(y, w)| y - w)));
        let allowed = 2f64.powi(-bits) * weight + 0.25 * update;
        eprintln!("{}: |{dtype:?} − f32| {diff:.3e}, |w| {weight:.3e}, |Δw| {update:.3e}", spec.name);
        assert!(
            diff <= allowed,
            "{}: {dtype:?} vs f32 weights after one step differ by {diff:.3e} (allowed {allowed:.3e})",
            spec.name
        );
    }
}

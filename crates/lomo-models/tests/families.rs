//! Every architecture lomo builds from `config.json`'s `model_type` against HF transformers:
//! `tests/fixtures/families/<model_type>/` holds a small random model and HF's logits, loss and
//! gradients on a padded batch (written by `tests/fixtures/gen.py`, eager attention, f32).

use std::path::{Path, PathBuf};

use lomo_models::{load, Batch, ModelType, Residency, StorageDtype, TensorSource};

use crate::common::{self, max_abs_diff, values, AD};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/families").join(name)
}

fn batch(dir: &Path) -> Batch {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("batch.json")).unwrap()).unwrap();
    let rows = |key: &str| -> Vec<Vec<i64>> { serde_json::from_value(json[key].clone()).unwrap() };
    let ids = rows("input_ids");
    let shape = [ids.len(), ids[0].len()];
    let flat = |v: Vec<Vec<i64>>| v.into_iter().flatten().collect::<Vec<_>>();
    Batch::new(flat(ids), Some(flat(rows("attention_mask"))), Some(flat(rows("labels"))), shape).unwrap()
}

/// Loads the family's model, checks its logits, loss and every gradient against HF's; returns
/// the worst differences (logits, gradients).
fn check(name: &str, model_type: ModelType) -> (f32, f32) {
    let dir = fixture(name);
    let model = load::<AD>(TensorSource::Hf(&dir), Residency::Resident, StorageDtype::F32, &common::device())
        .map(|l| l.model)
        .unwrap();
    assert_eq!(model.config().model_type, model_type);
    let batch = batch(&dir);
    let hf = common::read_safetensors(&dir.join("logits.safetensors"));
    let logits = values(model.forward(&batch));
    let mask: Vec<i64> = batch.attention_mask().to_vec();
    let vocab = model.config().vocab_size;
    // Logits at padded positions are not compared (HF computes them from a fully masked row).
    let kept = |v: &[f32]| -> Vec<f32> {
        v.chunks(vocab).zip(&mask).filter(|(_, &m)| m != 0).flat_map(|(r, _)| r.to_vec()).collect()
    };
    let logit_diff = max_abs_diff(&kept(&logits), &kept(&hf["logits"].1));
    let loss = model.loss(&batch);
    let loss_value = values(loss.clone())[0];
    assert!((loss_value - hf["loss"].1[0]).abs() < 1e-5, "{name}: loss {loss_value} vs HF {}", hf["loss"].1[0]);
    let grads = common::hf_grads(&model, &loss.backward());
    let reference = common::read_safetensors(&dir.join("grads.safetensors"));
    // A tied embedding has one gradient in HF's named_parameters as here.
    assert_eq!(grads.len(), reference.len(), "{name}: parameters");
    let mut grad_diff = 0f32;
    for (spec, grad) in grads {
        let (shape, expected) = &reference[&spec.name];
        assert_eq!(shape, &spec.shape, "{name}: {}", spec.name);
        let scale = expected.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-3);
        let diff = max_abs_diff(&grad, expected);
        assert!(diff <= 2e-5 * scale.max(1.0), "{name}: gradient of {} differs by {diff} (largest {scale})", spec.name);
        grad_diff = grad_diff.max(diff);
    }
    eprintln!("{name}: logits max |diff| {logit_diff:.2e}, gradients {grad_diff:.2e}");
    // f32 rounding through two layers: measured 2.6e-6 to 7.6e-6 (logits up to ~6) and
    // gradients 1.1e-6 to 2.3e-6; a skipped norm, bias or window moves them by ~1 (checked
    // for the window: HF's own logits move by 6.1 without it).
    assert!(logit_diff <= 2e-5, "{name}: logits differ by {logit_diff}");
    (logit_diff, grad_diff)
}

/// One fused LOMO step (lr 0.1, no clipping: plain SGD inside the stage-wise backward) leaves
/// every parameter at `w − 0.1 · g` with HF's gradient `g`: the fused step handles the family's
/// parameters (q/k norms, biases, a tied embedding) with no special case.
fn fused_step_is_sgd_with_hf_gradients(name: &str) {
    use burn::module::AutodiffModule;
    use lomo_optim::{FusedConfig, FusedStep, Lomo, RuleUpdater};
    let dir = fixture(name);
    let model = load::<AD>(TensorSource::Hf(&dir), Residency::Resident, StorageDtype::F32, &common::device())
        .map(|l| l.model)
        .unwrap();
    let before: Vec<Vec<f32>> = model.valid().hf_tensors().into_iter().map(|(_, t)| values(t)).collect();
    let mut step = FusedStep::new(RuleUpdater::new(Lomo::new(0.0).unwrap()), FusedConfig::default()).unwrap();
    let (model, report) = step.step(model, &[batch(&dir)], 0.1).unwrap();
    let hf = common::read_safetensors(&dir.join("logits.safetensors"));
    assert!((report.loss - hf["loss"].1[0] as f64).abs() < 1e-5, "{name}: loss {}", report.loss);
    let grads = common::read_safetensors(&dir.join("grads.safetensors"));
    for ((spec, after), w) in model.valid().hf_tensors().into_iter().zip(before) {
        let g = &grads[&spec.name].1;
        let expected: Vec<f32> = w.iter().zip(g).map(|(w, g)| w - 0.1 * g).collect();
        let diff = max_abs_diff(&values(after), &expected);
        assert!(diff <= 1e-5, "{name}: {} after the fused step differs by {diff}", spec.name);
    }
}

#[test]
fn llama_matches_hf() {
    check("llama", ModelType::Llama);
    fused_step_is_sgd_with_hf_gradients("llama");
}

#[test]
fn mistral_matches_hf_with_its_sliding_window_shorter_than_the_batch() {
    check("mistral", ModelType::Mistral);
    fused_step_is_sgd_with_hf_gradients("mistral");
    let config = lomo_models::LlamaConfig::from_file(fixture("mistral").join("config.json")).unwrap();
    assert_eq!(config.sliding_window, Some(5));
}

#[test]
fn mistral_decodes_with_a_kv_cache_as_its_full_forward_past_the_window() {
    let model = load::<crate::common::B>(
        TensorSource::Hf(fixture("mistral").as_ref()),
        Residency::Resident,
        StorageDtype::F32,
        &common::device(),
    )
    .map(|l| l.model)
    .unwrap();
    let seq: Vec<i64> = (0..11).map(|i| 3 + (i * 7) % 60).collect();
    let mut cache = lomo_models::KvCache::new(model.config().num_layers);
    let mut cached = vec![values(model.forward_cached(&seq[..3], 1, &mut cache))];
    for &t in &seq[3..] {
        cached.push(values(model.forward_cached(&[t], 1, &mut cache)));
    }
    let full = model.forward(&Batch::new(seq.clone(), None, None, [1, seq.len()]).unwrap());
    let vocab = model.config().vocab_size;
    for (i, row) in cached.iter().enumerate() {
        let pos = i + 2;
        let last = values(full.clone().narrow(1, pos, 1).reshape([vocab]));
        let diff = max_abs_diff(row, &last);
        assert!(diff <= 1e-5, "position {pos}: cached vs full logits differ by {diff}");
    }
}

#[test]
fn qwen2_matches_hf() {
    check("qwen2", ModelType::Qwen2);
    fused_step_is_sgd_with_hf_gradients("qwen2");
}

#[test]
fn qwen3_matches_hf_with_per_head_qk_norm() {
    check("qwen3", ModelType::Qwen3);
    fused_step_is_sgd_with_hf_gradients("qwen3");
}

#[test]
fn an_unsupported_model_type_names_it_and_the_supported_ones() {
    let dir = common::temp_dir("gemma_config");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("llama").join("config.json")).unwrap()).unwrap();
    config["model_type"] = "gemma".into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let err = lomo_models::LlamaConfig::from_file(dir.join("config.json")).unwrap_err().to_string();
    assert!(err.contains("\"gemma\"") && err.contains("llama, mistral, qwen2, qwen3"), "{err}");
}

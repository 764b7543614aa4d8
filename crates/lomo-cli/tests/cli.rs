//! End-to-end tests of the `lomo` binary against the references made with PyTorch and the
//! LOMO authors' package (`shared/reference`, see its README).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use lomo_testutil::shared;

fn lomo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lomo")).args(args).output().expect("run lomo")
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "lomo failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn tmp(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Every tensor of a safetensors file as f32.
fn tensors(path: &Path) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
            let values = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            (name, view.shape().to_vec(), values)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn max_diff(ours: &Path, reference: &Path) -> f32 {
    let (a, b) = (tensors(ours), tensors(reference));
    assert_eq!(a.iter().map(|t| &t.0).collect::<Vec<_>>(), b.iter().map(|t| &t.0).collect::<Vec<_>>(), "tensor names");
    let mut worst = 0f32;
    for ((name, sa, va), (_, sb, vb)) in a.iter().zip(&b) {
        assert_eq!(sa, sb, "{name}");
        for (x, y) in va.iter().zip(vb) {
            worst = worst.max((x - y).abs());
        }
    }
    worst
}

fn train_reference(optimizer: &str, lr: &str, extra: &[&str], out: &Path) -> Option<()> {
    let model = shared("models/stories260K")?;
    let data = shared("reference/stories260K/batch.jsonl")?;
    let mut args = vec![
        "train", "--model", model.to_str()?, "--data", data.to_str()?, "--optimizer", optimizer, "--lr", lr,
        "--steps", "3", "--batch-size", "2", "--no-shuffle", "--save", out.to_str()?,
    ];
    args.extend_from_slice(extra);
    ok(&lomo(&args));
    Some(())
}

#[test]
fn lomo_with_clipping_and_weight_decay_reproduces_the_authors_package() {
    // gen_reference.py: Lomo(m, lr=0.05, clip_grad_norm=1.0, weight_decay=0.01); per step
    // opt.grad_norm(loss); opt.fused_backward(loss, 0.05) — three steps on batch.json.
    let out = tmp("lomo_clip");
    let Some(()) = train_reference("lomo", "0.05", &["--clip-grad-norm", "1.0", "--weight-decay", "0.01"], &out) else { return };
    let reference = shared("reference/stories260K/lomo_clip_3steps.safetensors").unwrap();
    let diff = max_diff(&out.join("model.safetensors"), &reference);
    assert!(diff <= 1e-5, "weights after 3 clipped LOMO steps differ from the reference by {diff}");
}

#[test]
fn adalomo_reproduces_the_authors_package() {
    // gen_reference.py: AdaLomo(m, lr=0.01) with its defaults; opt.fused_backward(loss, 0.01) × 3.
    let out = tmp("adalomo");
    let Some(()) = train_reference("adalomo", "0.01", &[], &out) else { return };
    let reference = shared("reference/stories260K/adalomo_3steps.safetensors").unwrap();
    let diff = max_diff(&out.join("model.safetensors"), &reference);
    assert!(diff <= 1e-5, "weights after 3 AdaLomo steps differ from the reference by {diff}");
}

#[test]
fn adalomo_stopped_after_step_2_and_resumed_equals_the_uninterrupted_run_bit_for_bit() {
    let (Some(model), Some(data)) = (shared("models/stories260K"), shared("data/tinystories_sample.txt")) else { return };
    let common = |out: &Path| -> Vec<String> {
        [
            "train", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--optimizer", "adalomo",
            "--lr", "0.01", "--steps", "4", "--batch-size", "2", "--max-len", "64", "--schedule", "cosine",
            "--warmup-ratio", "0.25", "--seed", "7", "--save", out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let full = tmp("resume_full");
    let args = common(&full);
    ok(&lomo(&args.iter().map(String::as_str).collect::<Vec<_>>()));

    let first = tmp("resume_first");
    let mut args = common(&first);
    args.extend(["--save-every".to_string(), "2".to_string()]);
    ok(&lomo(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    let resumed = tmp("resume_second");
    let mut args: Vec<String> = common(&resumed).into_iter().collect();
    // --resume replaces --model.
    let i = args.iter().position(|a| a == "--model").unwrap();
    args.splice(i..i + 2, ["--resume".to_string(), first.join("step-2").to_str().unwrap().to_string()]);
    ok(&lomo(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    let a = std::fs::read(full.join("model.safetensors")).unwrap();
    let b = std::fs::read(resumed.join("model.safetensors")).unwrap();
    assert!(a == b, "the resumed run's weights differ from the uninterrupted run's");
    let state = |d: &Path| std::fs::read_to_string(d.join("trainer_state.json")).unwrap();
    assert_eq!(state(&full), state(&resumed));
}

#[test]
fn eval_gives_the_reference_loss() {
    let (Some(model), Some(data)) = (shared("models/stories260K"), shared("reference/stories260K/batch.jsonl")) else { return };
    let out = lomo(&["eval", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap()]);
    ok(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // runs.json "forward_loss": HF's mean loss over the batch's 61 targets.
    let loss = v["loss"].as_f64().unwrap();
    assert!((loss - 1.3739631175994873).abs() < 1e-4, "{v}");
    assert!((v["perplexity"].as_f64().unwrap() - loss.exp()).abs() < 1e-9);
    assert_eq!(v["examples"], 2);
}

#[test]
fn generate_continues_the_story_like_hf_transformers() {
    let Some(model) = shared("models/stories260K") else { return };
    let out = lomo(&["generate", "--model", model.to_str().unwrap(), "--prompt", "Once upon a time", "--max-new-tokens", "40"]);
    ok(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    // shared/README.md: HF transformers' greedy continuation of `<s> Once upon a time`.
    assert_eq!(text.trim(), ", there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball.");
}

fn user_error(args: &[&str], expect: &str) {
    let out = lomo(args);
    assert_eq!(out.status.code(), Some(2), "{args:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "one line expected, got:\n{err}");
    assert!(err.contains(expect), "{err:?} should mention {expect:?}");
    assert!(!err.contains("panicked") && !err.contains("backtrace"), "{err}");
}

#[test]
fn user_errors_are_one_line_and_exit_2() {
    user_error(&["train", "--preset", "stories260k", "--data", "/nonexistent/data.jsonl", "--optimizer", "lomo", "--lr", "0.1", "--steps", "1", "--batch-size", "1"], "/nonexistent/data.jsonl");
    user_error(&["train", "--preset", "stories260k", "--data", "x.jsonl", "--optimizer", "lomo", "--lr", "-1", "--steps", "1", "--batch-size", "1"], "--lr");
    user_error(&["train", "--preset", "nosuchmodel", "--data", "x.jsonl", "--optimizer", "lomo", "--lr", "0.1", "--steps", "1", "--batch-size", "1"], "nosuchmodel");
    user_error(&["train", "--preset", "stories260k", "--data", "x.jsonl", "--optimizer", "lomo", "--lr", "0.1", "--steps", "1", "--batch-size", "4", "--micro-batch-size", "3"], "--micro-batch-size");
    user_error(&["generate", "--model", "/nonexistent", "--prompt", "hi"], "/nonexistent");
    user_error(&["train", "--preset", "stories260k", "--data", "x.jsonl", "--optimizer", "lomo", "--lr", "0.1", "--steps", "1", "--batch-size", "1", "--backend", "cuda"], "--features cuda");
    user_error(&["train", "--preset", "stories260k", "--data", "x.jsonl", "--optimizer", "adamw", "--lr", "0.1", "--steps", "1", "--batch-size", "1", "--dtype", "f16"], "--dtype f16");
}

#[test]
fn a_malformed_data_line_names_the_file_and_line() {
    let dir = tmp("bad_data");
    std::fs::create_dir_all(&dir).unwrap();
    let data = dir.join("bad.jsonl");
    std::fs::write(&data, "{\"input_ids\": [1, 2, 3]}\n{\"input_ids\": \"oops\"}\n").unwrap();
    user_error(
        &["train", "--preset", "stories260k", "--data", data.to_str().unwrap(), "--optimizer", "lomo", "--lr", "0.1", "--steps", "1", "--batch-size", "1"],
        "bad.jsonl:2",
    );
    // Nothing is half-written: no checkpoint directory appears.
    let save = dir.join("out");
    let _ = lomo(&["train", "--preset", "stories260k", "--data", data.to_str().unwrap(), "--optimizer", "lomo", "--lr", "0.1", "--steps", "1", "--batch-size", "1", "--save", save.to_str().unwrap()]);
    assert!(!save.exists());
}

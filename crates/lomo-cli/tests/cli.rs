//! End-to-end tests of the `lomo` binary against the references made with PyTorch and the
//! LOMO authors' package (`shared/reference`, see its README).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use lomo_testutil::shared;

#[cfg(feature = "cuda")]
mod cuda;
#[cfg(feature = "wgpu")]
mod wgpu;

mod reliability;

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
        "train",
        "--model",
        model.to_str()?,
        "--data",
        data.to_str()?,
        "--optimizer",
        optimizer,
        "--lr",
        lr,
        "--steps",
        "3",
        "--batch-size",
        "2",
        "--no-shuffle",
        "--save",
        out.to_str()?,
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
    let Some(()) = train_reference("lomo", "0.05", &["--clip-grad-norm", "1.0", "--weight-decay", "0.01"], &out) else {
        return;
    };
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
    let (Some(model), Some(data)) = (shared("models/stories260K"), shared("data/tinystories_sample.txt")) else {
        return;
    };
    let common = |out: &Path| -> Vec<String> {
        [
            "train",
            "--model",
            model.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--optimizer",
            "adalomo",
            "--lr",
            "0.01",
            "--steps",
            "4",
            "--batch-size",
            "2",
            "--max-len",
            "64",
            "--schedule",
            "cosine",
            "--warmup-ratio",
            "0.25",
            "--seed",
            "7",
            "--save",
            out.to_str().unwrap(),
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
    let (Some(model), Some(data)) = (shared("models/stories260K"), shared("reference/stories260K/batch.jsonl")) else {
        return;
    };
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
    let out = lomo(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "Once upon a time",
        "--max-new-tokens",
        "40",
    ]);
    ok(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    // shared/README.md: HF transformers' greedy continuation of `<s> Once upon a time`.
    assert_eq!(text.trim(), ", there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball.");
}

#[test]
fn generating_past_the_models_context_is_refused_up_front() {
    let Some(model) = shared("models/stories260K") else { return };
    for n in ["18446744073709551615", "1000000000", "508"] {
        user_error(
            &["generate", "--model", model.to_str().unwrap(), "--prompt", "Once upon a time", "--max-new-tokens", n],
            "passes the model's context of 512 positions",
        );
    }
}

fn user_error(args: &[&str], expect: &str) {
    one_line_exit_2(&lomo(args), &format!("{args:?}"), expect);
}

/// What every refusal looks like: exit 2 and one line on stderr that contains `expect`, no
/// panic; `case` names the run in a failure's message.
fn one_line_exit_2(out: &Output, case: &str, expect: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{case}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{case}: one line expected, got:\n{err}");
    assert!(err.contains(expect), "{case}: {err:?} should mention {expect:?}");
    assert!(!err.contains("panicked") && !err.contains("backtrace"), "{case}: {err}");
}

#[test]
fn user_errors_are_one_line_and_exit_2() {
    // `--resume X` names X whatever is wrong with it, rather than asking for flags its config
    // would have supplied.
    let not_a_checkpoint = tmp("resume-not-a-checkpoint");
    std::fs::create_dir_all(&not_a_checkpoint).unwrap();
    std::fs::write(not_a_checkpoint.join("file.txt"), "x").unwrap();
    for (dir, expect) in [
        (Path::new("/nonexistent/run/step-3").to_path_buf(), "step-3: no such directory"),
        (not_a_checkpoint.join("file.txt"), "file.txt: not a directory"),
        (not_a_checkpoint.clone(), "not a checkpoint (no trainer_state.json"),
    ] {
        user_error(&["train", "--resume", dir.to_str().unwrap()], expect);
    }
    // Sizes whose byte counts would wrap are refused, not planned as a few megabytes.
    user_error(
        &[
            "plan",
            "--preset",
            "llama-7b",
            "--optimizer",
            "lomo",
            "--batch-size",
            "4294967296",
            "--max-len",
            "4294967296",
        ],
        "too large to plan",
    );
    user_error(
        &[
            "train",
            "--preset",
            "stories260k",
            "--data",
            "/nonexistent/data.jsonl",
            "--optimizer",
            "lomo",
            "--lr",
            "0.1",
            "--steps",
            "1",
            "--batch-size",
            "1",
        ],
        "/nonexistent/data.jsonl",
    );
    user_error(
        &[
            "train",
            "--preset",
            "stories260k",
            "--data",
            "x.jsonl",
            "--optimizer",
            "lomo",
            "--lr",
            "-1",
            "--steps",
            "1",
            "--batch-size",
            "1",
        ],
        "--lr",
    );
    user_error(
        &[
            "train",
            "--preset",
            "nosuchmodel",
            "--data",
            "x.jsonl",
            "--optimizer",
            "lomo",
            "--lr",
            "0.1",
            "--steps",
            "1",
            "--batch-size",
            "1",
        ],
        "nosuchmodel",
    );
    user_error(
        &[
            "train",
            "--preset",
            "stories260k",
            "--data",
            "x.jsonl",
            "--optimizer",
            "lomo",
            "--lr",
            "0.1",
            "--steps",
            "1",
            "--batch-size",
            "4",
            "--micro-batch-size",
            "3",
        ],
        "--micro-batch-size",
    );
    user_error(&["generate", "--model", "/nonexistent", "--prompt", "hi"], "/nonexistent");
    user_error(
        &[
            "train",
            "--preset",
            "stories260k",
            "--data",
            "x.jsonl",
            "--optimizer",
            "lomo",
            "--lr",
            "0.1",
            "--steps",
            "1",
            "--batch-size",
            "1",
            "--backend",
            "cuda",
        ],
        "--features cuda",
    );
    user_error(
        &[
            "train",
            "--preset",
            "stories260k",
            "--data",
            "x.jsonl",
            "--optimizer",
            "adamw",
            "--lr",
            "0.1",
            "--steps",
            "1",
            "--batch-size",
            "1",
            "--dtype",
            "f16",
        ],
        "--dtype f16",
    );
}

#[test]
fn a_malformed_data_line_names_the_file_and_line() {
    let dir = tmp("bad_data");
    std::fs::create_dir_all(&dir).unwrap();
    let data = dir.join("bad.jsonl");
    std::fs::write(&data, "{\"input_ids\": [1, 2, 3]}\n{\"input_ids\": \"oops\"}\n").unwrap();
    user_error(
        &[
            "train",
            "--preset",
            "stories260k",
            "--data",
            data.to_str().unwrap(),
            "--optimizer",
            "lomo",
            "--lr",
            "0.1",
            "--steps",
            "1",
            "--batch-size",
            "1",
        ],
        "bad.jsonl:2",
    );
    // Nothing is half-written: no checkpoint directory appears.
    let save = dir.join("out");
    let _ = lomo(&[
        "train",
        "--preset",
        "stories260k",
        "--data",
        data.to_str().unwrap(),
        "--optimizer",
        "lomo",
        "--lr",
        "0.1",
        "--steps",
        "1",
        "--batch-size",
        "1",
        "--save",
        save.to_str().unwrap(),
    ]);
    assert!(!save.exists());
}

/// `lomo train`'s flags for a short stories260K run, as on the command line.
fn short_run(model: &Path, data: &Path, steps: &str, save: &Path) -> Vec<String> {
    [
        "train",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--optimizer",
        "adalomo",
        "--lr",
        "0.01",
        "--steps",
        steps,
        "--batch-size",
        "2",
        "--max-len",
        "64",
        "--seed",
        "3",
        "--save",
        save.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn lomo_strings(args: &[String]) -> Output {
    lomo(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn weights(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("model.safetensors")).unwrap()
}

#[test]
fn a_run_config_reproduces_its_flags_the_command_line_overrides_it_and_checkpoints_carry_it() {
    let (Some(model), Some(data)) = (shared("models/stories260K"), shared("data/tinystories_sample.txt")) else {
        return;
    };
    let dir = tmp("run_config");
    std::fs::create_dir_all(&dir).unwrap();
    let by_flags = dir.join("flags");
    ok(&lomo_strings(&short_run(&model, &data, "2", &by_flags)));

    // The same run from a file; the file's lr and save are overridden on the command line.
    let config = dir.join("run.toml");
    std::fs::write(
        &config,
        format!(
            "# a run\nmodel = {:?}\ndata = [{:?}]\noptimizer = \"adalomo\"\nlr = 0.5\nsteps = 2\nbatch_size = 2\nmax_len = 64\nseed = 3\nsave = {:?}\n",
            model.to_str().unwrap(),
            data.to_str().unwrap(),
            dir.join("unused").to_str().unwrap()
        ),
    )
    .unwrap();
    let by_file = dir.join("file");
    ok(&lomo(&["train", "--config", config.to_str().unwrap(), "--lr", "0.01", "--save", by_file.to_str().unwrap()]));
    assert!(weights(&by_flags) == weights(&by_file), "--config and the same flags trained different weights");
    assert!(!dir.join("unused").exists(), "--save on the command line overrides the file's");

    // The checkpoint's resolved config reruns the run.
    let saved = std::fs::read_to_string(by_file.join("lomo_config.toml")).unwrap();
    assert!(saved.contains("lr = 0.01") && saved.contains("batch_size = 2"), "{saved}");
    let rerun = dir.join("rerun");
    ok(&lomo(&[
        "train",
        "--config",
        by_file.join("lomo_config.toml").to_str().unwrap(),
        "--save",
        rerun.to_str().unwrap(),
    ]));
    assert!(weights(&by_flags) == weights(&rerun), "the saved lomo_config.toml trained different weights");

    // --data on the command line replaces the file's list, it does not extend it.
    let missing = dir.join("missing.txt");
    user_error(&["train", "--config", config.to_str().unwrap(), "--data", missing.to_str().unwrap()], "missing.txt");
}

#[test]
fn a_resumed_run_needs_no_flag_but_resume() {
    let (Some(model), Some(data)) = (shared("models/stories260K"), shared("data/tinystories_sample.txt")) else {
        return;
    };
    let full = tmp("resume_bare_full");
    ok(&lomo_strings(&short_run(&model, &data, "3", &full)));
    let interrupted = tmp("resume_bare");
    let mut args = short_run(&model, &data, "3", &interrupted);
    let log = interrupted.join("log.jsonl");
    args.extend(["--save-every".into(), "1".into(), "--log".into(), log.to_str().unwrap().into()]);
    ok(&lomo_strings(&args));
    let losses = |text: &str| -> Vec<(u64, f64)> {
        text.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
            .collect()
    };
    let before = losses(&std::fs::read_to_string(&log).unwrap());
    std::fs::remove_file(interrupted.join("model.safetensors")).unwrap();
    // Only --resume: everything else (the data, the schedule, --save, --log) comes from step-1's
    // config.
    ok(&lomo(&["train", "--resume", interrupted.join("step-1").to_str().unwrap()]));
    assert!(weights(&full) == weights(&interrupted), "the bare resume ended at other weights");
    // The log goes on from step 1: steps 2 and 3 again, with the same losses, not twice.
    assert_eq!(losses(&std::fs::read_to_string(&log).unwrap()), before);
}

#[test]
fn bad_config_keys_and_values_name_the_file_and_line() {
    let dir = tmp("bad_config");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("run.toml");
    let base = "preset = \"stories260k\"\ndata = [\"x.jsonl\"]\noptimizer = \"lomo\"\nlr = 0.1\nsteps = 1\n";
    std::fs::write(&config, format!("{base}batch_sise = 2\n")).unwrap();
    user_error(&["train", "--config", config.to_str().unwrap()], "run.toml:6: unknown key `batch_sise`");
    std::fs::write(&config, format!("{base}batch_size = \"two\"\n")).unwrap();
    user_error(&["train", "--config", config.to_str().unwrap()], "run.toml:6: invalid value 'two' for '--batch-size");
    std::fs::write(&config, format!("{base}batch_size = 1\nno_shuffle = 1\n")).unwrap();
    user_error(&["train", "--config", config.to_str().unwrap()], "run.toml:7: `no_shuffle` is a switch");
    std::fs::write(&config, format!("{base}batch_size = [1]\n")).unwrap();
    user_error(&["train", "--config", config.to_str().unwrap()], "run.toml:6: `batch_size` takes one value");
    std::fs::write(&config, format!("{base}batch_size = \n")).unwrap();
    user_error(&["train", "--config", config.to_str().unwrap()], "run.toml:6:");
    user_error(&["train", "--config", dir.join("none.toml").to_str().unwrap()], "none.toml");
}

#[test]
fn checkpoints_rotate_keeping_the_best_and_interrupted_saves_are_tidied() {
    let (Some(model), Some(data)) = (shared("models/stories260K"), shared("data/tinystories_sample.txt")) else {
        return;
    };
    let dir = tmp("rotate");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("run");
    // What a killed save leaves: a temporary directory beside the run and one inside it, and a
    // checkpoint moved aside whose replacement never took its name (process 4000000 is no lomo).
    std::fs::create_dir_all(dir.join(".run.tmp-4000000")).unwrap();
    std::fs::create_dir_all(out.join(".step-1.tmp-4000001")).unwrap();
    std::fs::create_dir_all(out.join(".step-9.old-4000002")).unwrap();
    std::fs::write(out.join(".step-9.old-4000002").join("marker"), "x").unwrap();
    let mut args = short_run(&model, &data, "5", &out);
    args.extend(
        [
            "--save-every",
            "1",
            "--save-total-limit",
            "2",
            "--keep-best",
            "--eval",
            data.to_str().unwrap(),
            "--eval-every",
            "1",
            "--log",
        ]
        .map(String::from),
    );
    // The log inside the run's directory, which every save replaces: it must survive them.
    args.push(out.join("log.jsonl").to_str().unwrap().to_string());
    let run = lomo_strings(&args);
    ok(&run);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("note: removed") && stderr.contains(".run.tmp-4000000"), "{stderr}");
    assert!(!dir.join(".run.tmp-4000000").exists() && !out.join(".step-1.tmp-4000001").exists());
    assert!(out.join("step-9").join("marker").exists(), "the checkpoint moved aside is restored");

    // Kept: the two newest by number (step-9 and step-4) and the one with the lowest eval loss.
    let summary: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let best = summary["eval"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["step"].as_u64().unwrap() < 5)
        .min_by(|a, b| a["result"]["loss"].as_f64().unwrap().total_cmp(&b["result"]["loss"].as_f64().unwrap()))
        .unwrap()["step"]
        .as_u64()
        .unwrap();
    let mut kept: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("step-"))
        .collect();
    kept.sort();
    // step-9 counts as the newest by its number; best-so-far is never removed, so the best of
    // steps 1..4 is the best overall.
    let mut expected: Vec<String> = vec!["step-9".into(), "step-4".into(), format!("step-{best}")];
    expected.sort();
    expected.dedup();
    assert_eq!(kept, expected, "best by eval loss: step-{best}");

    let log = std::fs::read_to_string(out.join("log.jsonl")).unwrap();
    let evals = log.lines().filter(|l| l.contains("\"eval\"")).count();
    assert_eq!((log.lines().count() - evals, evals), (5, 5), "one log line per step and per eval");
    // loss.svg beside the log: train loss, eval loss and the learning rate, one line each.
    let svg = std::fs::read_to_string(out.join("loss.svg")).unwrap();
    let doc = roxmltree::Document::parse(&svg).expect("loss.svg parses as XML");
    // The data lines are the coloured polylines (plotters draws the axes' ticks in black).
    let lines = doc
        .descendants()
        .filter(|n| n.tag_name().name() == "polyline" && n.attribute("stroke").is_some_and(|s| s != "#000000"))
        .count();
    assert_eq!(lines, 3, "{svg}");
}

#[test]
fn an_unwritable_save_directory_fails_before_training() {
    let dir = tmp("unwritable");
    std::fs::create_dir_all(&dir).unwrap();
    let data = dir.join("d.jsonl");
    std::fs::write(&data, "{\"input_ids\": [1, 2, 3]}\n").unwrap();
    user_error(
        &[
            "train",
            "--preset",
            "stories260k",
            "--data",
            data.to_str().unwrap(),
            "--optimizer",
            "lomo",
            "--lr",
            "0.1",
            "--steps",
            "1",
            "--batch-size",
            "1",
            "--save",
            "/proc/lomo-x",
        ],
        "--save /proc/lomo-x: /proc is not writable",
    );
    let file = dir.join("a-file");
    std::fs::write(&file, "").unwrap();
    user_error(
        &[
            "train",
            "--preset",
            "stories260k",
            "--data",
            data.to_str().unwrap(),
            "--optimizer",
            "lomo",
            "--lr",
            "0.1",
            "--steps",
            "1",
            "--batch-size",
            "1",
            "--save",
            file.to_str().unwrap(),
        ],
        "exists and is not a directory",
    );
}

#[test]
fn export_writes_a_gguf_that_generates_like_the_checkpoint() {
    let Some(model) = shared("models/stories260K") else { return };
    let dir = tmp("export");
    std::fs::create_dir_all(&dir).unwrap();
    let continuation = |model: &Path| {
        let out = lomo(&[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "Once upon a time",
            "--max-new-tokens",
            "40",
        ]);
        ok(&out);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let expected = continuation(&model);
    for ty in ["f32", "f16", "q8_0"] {
        let gguf = dir.join(format!("stories-{ty}.gguf"));
        ok(&lomo(&["export", "--model", model.to_str().unwrap(), "--gguf", gguf.to_str().unwrap(), "--type", ty]));
        // The tokenizer travels in the GGUF's metadata: the same text comes out.
        let text = continuation(&gguf);
        if ty == "q8_0" {
            // Greedy decoding may take another word once the weights are 8-bit; the start holds.
            assert_eq!(
                text.split(' ').take(6).collect::<Vec<_>>(),
                expected.split(' ').take(6).collect::<Vec<_>>(),
                "{ty}"
            );
        } else {
            assert_eq!(text, expected, "{ty}");
        }
    }
    user_error(
        &["export", "--model", model.to_str().unwrap(), "--gguf", dir.join("x.bin").to_str().unwrap()],
        "must end in .gguf",
    );
    user_error(
        &["export", "--model", model.to_str().unwrap(), "--gguf", "/nonexistent/x.gguf"],
        "no directory /nonexistent",
    );
}

/// Data parallel on loopback: `lomo launch` with 2 ranks, each holding half of every batch,
/// against one process on the whole batch. The sums across ranks run in f32 in another order
/// than one process's, so the weights agree to rounding (1e-6), not bit for bit.
#[test]
fn two_ranks_on_loopback_train_the_weights_of_one_process() {
    let (Some(model), Some(data)) = (shared("models/stories260K"), shared("data/tinystories_sample.txt")) else {
        return;
    };
    let dir = tmp("data_parallel");
    std::fs::create_dir_all(&dir).unwrap();
    // AdaLomo divides by the update's RMS, which carries f32 rounding further: at lr 0.01 one
    // process with two micro-batches already differs from one with one by 1.0e-6 (measured),
    // and 2 ranks from 1 process by 7.7e-7.
    for (name, optimizer, lr, extra) in
        [("lomo-clip", "lomo", "0.05", vec!["--clip-grad-norm", "1.0"]), ("adalomo", "adalomo", "0.01", vec![])]
    {
        let run = |save: &Path| -> Vec<String> {
            let mut args: Vec<String> = [
                "train",
                "--model",
                model.to_str().unwrap(),
                "--data",
                data.to_str().unwrap(),
                "--optimizer",
                optimizer,
                "--lr",
                lr,
                "--steps",
                "3",
                "--batch-size",
                "4",
                "--max-len",
                "64",
                "--seed",
                "3",
                "--save",
                save.to_str().unwrap(),
            ]
            .map(String::from)
            .to_vec();
            args.extend(extra.iter().map(|s| s.to_string()));
            args
        };
        let one = dir.join(format!("{name}-one"));
        // One process, with whole batches as the group uses them (a group drops a last partial one).
        ok(&lomo_strings(&run(&one)));
        let two = dir.join(format!("{name}-two"));
        let mut launch: Vec<String> = ["launch", "--nproc", "2", "--"].map(String::from).to_vec();
        launch.extend(run(&two));
        launch.extend(["--collective-timeout".into(), "30".into()]);
        let started = std::time::Instant::now();
        ok(&lomo_strings(&launch));
        assert!(started.elapsed().as_secs() < 60, "{name}: the group took {:?}", started.elapsed());
        let diff = max_diff(&two.join("model.safetensors"), &one.join("model.safetensors"));
        assert!(diff <= 1e-6, "{name}: 2 ranks vs 1 process: max |diff| {diff}");
        // The same group with its weights on disk (a working copy per rank): the same sums in
        // the same order, so the resident group's weights bit for bit.
        let offloaded = dir.join(format!("{name}-two-offload"));
        let mut launch: Vec<String> = ["launch", "--nproc", "2", "--"].map(String::from).to_vec();
        launch.extend(run(&offloaded));
        launch.extend(["--collective-timeout", "30", "--offload", "disk"].map(String::from));
        ok(&lomo_strings(&launch));
        assert!(weights(&offloaded) == weights(&two), "{name}: 2 ranks offloaded to disk differ from 2 resident ranks");
        assert!(!offloaded.join("offload").exists(), "{name}: the ranks' working copies are removed");
        let state = |d: &Path| -> serde_json::Value {
            serde_json::from_str(&std::fs::read_to_string(d.join("trainer_state.json")).unwrap()).unwrap()
        };
        assert_eq!(state(&two)["world_size"], 2);
        // A resume must use the same number of ranks: the error names the checkpoint's config
        // line that set them (lomo_config.toml:N: world_size 2: give --coordinator …).
        user_error(&["train", "--resume", two.to_str().unwrap(), "--steps", "4"], "world_size 2: give --coordinator");
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A rank that never connects, or dies, makes the others exit non-zero within the timeout.
#[test]
fn a_missing_or_killed_rank_makes_the_others_fail_within_the_timeout() {
    let (Some(model), Some(data)) = (shared("models/stories260K"), shared("data/tinystories_sample.txt")) else {
        return;
    };
    let rank = |r: usize, coordinator: u16, steps: &str| -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_lomo"));
        c.args(["train", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--optimizer", "lomo"])
            .args([
                "--lr",
                "0.01",
                "--steps",
                steps,
                "--batch-size",
                "2",
                "--max-len",
                "64",
                "--collective-timeout",
                "5",
            ])
            .args([
                "--world-size",
                "2",
                "--rank",
                &r.to_string(),
                "--coordinator",
                &format!("ws://127.0.0.1:{coordinator}"),
            ])
            .args(["--node-address", &format!("ws://127.0.0.1:{}", free_port())])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        c
    };
    // Nobody serves the coordinator's port: joining gives up after the timeout.
    let started = std::time::Instant::now();
    let out = rank(0, free_port(), "2").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("no answer from the other ranks within 5 s"), "{err}");
    assert!(started.elapsed().as_secs() < 30, "took {:?}", started.elapsed());

    // Both ranks start with a coordinator; rank 1 is killed while they train.
    let port = lomo_dist::free_coordinator_port().unwrap();
    let mut coordinator = Command::new(env!("CARGO_BIN_EXE_lomo"))
        .args(["coordinator", "--port", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let mut r0 = rank(0, port, "100000").spawn().unwrap();
    let mut r1 = rank(1, port, "100000").spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(r0.try_wait().unwrap().is_none(), "rank 0 should still be training");
    r1.kill().unwrap();
    let _ = r1.wait();
    let killed = std::time::Instant::now();
    let status = loop {
        if let Some(s) = r0.try_wait().unwrap() {
            break s;
        }
        if killed.elapsed().as_secs() > 30 {
            let _ = r0.kill();
            panic!("rank 0 still runs 30 s after rank 1 died");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let _ = coordinator.kill();
    let _ = coordinator.wait();
    let mut err = String::new();
    std::io::Read::read_to_string(r0.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("data parallel"), "{err}");
}

#[test]
fn stages_placed_with_devices_train_the_weights_of_one_device_bit_for_bit() {
    let (Some(model), Some(data)) = (shared("models/stories260K"), shared("data/tinystories_sample.txt")) else {
        return;
    };
    let dir = tmp("devices");
    std::fs::create_dir_all(&dir).unwrap();
    for (optimizer, lr, extra) in
        [("lomo", "0.05", vec!["--clip-grad-norm", "1.0"]), ("adalomo", "0.01", vec!["--micro-batch-size", "2"])]
    {
        let run = |save: &Path, devices: Option<&str>| -> Output {
            let mut args = vec![
                "train",
                "--model",
                model.to_str().unwrap(),
                "--data",
                data.to_str().unwrap(),
                "--optimizer",
                optimizer,
                "--lr",
                lr,
                "--steps",
                "3",
                "--batch-size",
                "4",
                "--max-len",
                "64",
                "--seed",
                "3",
                "--save",
                save.to_str().unwrap(),
            ];
            args.extend(extra.iter().copied());
            if let Some(d) = devices {
                args.extend(["--devices", d]);
            }
            lomo(&args)
        };
        let one = dir.join(format!("{optimizer}-one"));
        ok(&run(&one, None));
        let placed = dir.join(format!("{optimizer}-placed"));
        let out = run(&placed, Some("cpu,cpu,cpu"));
        ok(&out);
        // The split is printed, each device with its stages and predicted peak.
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("stages on 3 devices") && err.contains("embedding") && err.contains("norm + LM head"),
            "{err}"
        );
        assert!(weights(&placed) == weights(&one), "{optimizer}: the placed run's weights differ from one device's");
    }
    let base = [
        "train",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--lr",
        "0.1",
        "--steps",
        "1",
        "--batch-size",
        "1",
    ];
    let with = |extra: &[&'static str]| -> Vec<&str> { base.iter().copied().chain(extra.iter().copied()).collect() };
    user_error(&with(&["--optimizer", "lomo", "--devices", "cuda:0"]), "the CPU backend has one device");
    user_error(&with(&["--optimizer", "adamw", "--devices", "cpu"]), "fused step");
    user_error(
        &with(&["--optimizer", "lomo", "--devices", "cpu,cpu,cpu,cpu,cpu,cpu,cpu,cpu"]),
        "each device needs a stage",
    );
}

#[test]
fn plan_splits_llama_65b_over_8_devices_within_24_gib_each() {
    let out = lomo(&[
        "plan",
        "--preset",
        "llama-65b",
        "--devices",
        "8",
        "--dtype",
        "bf16",
        "--optimizer",
        "lomo",
        "--batch-size",
        "1",
        "--max-len",
        "512",
    ]);
    ok(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().filter(|l| l.starts_with(|c: char| c.is_ascii_digit()) && l.contains(" GiB")).count(),
        8,
        "{text}"
    );
    assert!(text.contains("largest per-device peak"), "{text}");
    let out = lomo(&[
        "plan",
        "--preset",
        "llama-65b",
        "--devices",
        "8",
        "--dtype",
        "bf16",
        "--optimizer",
        "lomo",
        "--batch-size",
        "1",
        "--max-len",
        "512",
        "--json",
    ]);
    ok(&out);
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let devices = plan["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 8);
    for d in devices {
        assert!(d["plan"]["total"].as_u64().unwrap() < 24 << 30, "{d}");
    }
    user_error(
        &[
            "plan",
            "--preset",
            "stories260k",
            "--devices",
            "9",
            "--optimizer",
            "lomo",
            "--batch-size",
            "1",
            "--max-len",
            "8",
        ],
        "--devices 9",
    );
}

#[test]
fn offload_to_disk_or_host_trains_the_weights_of_the_resident_run_bit_for_bit_and_resumes_after_a_crash() {
    let (Some(model), Some(data)) = (shared("models/stories260K"), shared("data/tinystories_sample.txt")) else {
        return;
    };
    let dir = tmp("offload");
    std::fs::create_dir_all(&dir).unwrap();
    let run = |optimizer: &str, save: &Path, extra: &[&str]| -> Output {
        let (lr, more): (&str, &[&str]) = match optimizer {
            "lomo" => ("0.05", &["--clip-grad-norm", "1.0"]),
            _ => ("0.01", &["--micro-batch-size", "2"]),
        };
        let mut args = vec![
            "train",
            "--model",
            model.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--optimizer",
            optimizer,
            "--lr",
            lr,
            "--steps",
            "3",
            "--batch-size",
            "4",
            "--max-len",
            "64",
            "--seed",
            "3",
            "--save",
            save.to_str().unwrap(),
        ];
        args.extend(more.iter().copied());
        args.extend(extra.iter().copied());
        lomo(&args)
    };
    for optimizer in ["lomo", "adalomo"] {
        let resident = dir.join(format!("{optimizer}-resident"));
        ok(&run(optimizer, &resident, &[]));
        let disk = dir.join(format!("{optimizer}-disk"));
        let out = run(optimizer, &disk, &["--offload", "disk"]);
        ok(&out);
        assert!(
            weights(&disk) == weights(&resident),
            "{optimizer}: --offload disk's weights differ from the resident run's"
        );
        assert!(!disk.join("offload").exists(), "the working copy goes once the checkpoint holds it");
        let host = dir.join(format!("{optimizer}-host"));
        ok(&run(optimizer, &host, &["--offload", "host"]));
        assert!(
            weights(&host) == weights(&resident),
            "{optimizer}: --offload host's weights differ from the resident run's"
        );

        // A crash between two stages' write-backs in step 3 (stories260K: 7 stage files, each
        // written back once a step), then --resume from the step-2 checkpoint.
        let crashed = dir.join(format!("{optimizer}-crashed"));
        let fail = Command::new(env!("CARGO_BIN_EXE_lomo"))
            .env("LOMO_OFFLOAD_FAIL_AFTER", "17")
            .args([
                "train",
                "--model",
                model.to_str().unwrap(),
                "--data",
                data.to_str().unwrap(),
                "--optimizer",
                optimizer,
                "--lr",
                if optimizer == "lomo" { "0.05" } else { "0.01" },
                "--steps",
                "3",
                "--batch-size",
                "4",
                "--max-len",
                "64",
                "--seed",
                "3",
                "--save",
                crashed.to_str().unwrap(),
                "--save-every",
                "1",
                "--offload",
                "disk",
            ])
            .args(if optimizer == "lomo" { ["--clip-grad-norm", "1.0"] } else { ["--micro-batch-size", "2"] })
            .output()
            .unwrap();
        assert!(!fail.status.success());
        let err = String::from_utf8_lossy(&fail.stderr);
        assert!(err.contains("injected failure") && !err.contains("panicked"), "{err}");
        let step2 = crashed.join("step-2");
        let out = Command::new(env!("CARGO_BIN_EXE_lomo"))
            .args([
                "train",
                "--resume",
                step2.to_str().unwrap(),
                "--data",
                data.to_str().unwrap(),
                "--optimizer",
                optimizer,
                "--lr",
                if optimizer == "lomo" { "0.05" } else { "0.01" },
                "--steps",
                "3",
                "--batch-size",
                "4",
                "--max-len",
                "64",
                "--seed",
                "3",
                "--save",
                crashed.to_str().unwrap(),
                "--offload",
                "disk",
            ])
            .args(if optimizer == "lomo" { ["--clip-grad-norm", "1.0"] } else { ["--micro-batch-size", "2"] })
            .output()
            .unwrap();
        ok(&out);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("interrupted during step 3") && err.contains("at step 2"), "{err}");
        assert!(
            weights(&crashed) == weights(&resident),
            "{optimizer}: the resumed run's weights differ from the uninterrupted run's"
        );
    }
    let base = [
        "train",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--lr",
        "0.1",
        "--steps",
        "1",
        "--batch-size",
        "1",
    ];
    let with = |extra: &[&'static str]| -> Vec<&str> { base.iter().copied().chain(extra.iter().copied()).collect() };
    user_error(&with(&["--optimizer", "adamw", "--offload", "host"]), "fused step");
    user_error(&with(&["--optimizer", "lomo", "--offload", "disk"]), "--offload-dir");
    user_error(&with(&["--optimizer", "lomo", "--offload", "host", "--offload-dir", "x"]), "only --offload disk");
    user_error(
        &with(&["--optimizer", "lomo", "--offload", "disk", "--offload-dir", "x", "--eval", "y.jsonl"]),
        "--eval",
    );
}

#[test]
fn plan_with_offload_to_disk_fits_a_llama_13b_step_in_a_fraction_of_24_gib() {
    let args = [
        "plan",
        "--preset",
        "llama-13b",
        "--offload",
        "disk",
        "--dtype",
        "bf16",
        "--optimizer",
        "lomo",
        "--batch-size",
        "1",
        "--max-len",
        "512",
    ];
    let out = lomo(&args);
    ok(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("offloaded to disk") && text.contains("read per step") && text.contains("written per step"),
        "{text}"
    );
    let json: Vec<&str> = args.iter().copied().chain(["--json"]).collect();
    let out = lomo(&json);
    ok(&out);
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let resident = lomo(&[
        "plan",
        "--preset",
        "llama-13b",
        "--dtype",
        "bf16",
        "--optimizer",
        "lomo",
        "--batch-size",
        "1",
        "--max-len",
        "512",
        "--json",
    ]);
    ok(&resident);
    let resident: serde_json::Value = serde_json::from_slice(&resident.stdout).unwrap();
    assert!(resident["total"].as_u64().unwrap() > 24 << 30, "{resident}");
    assert!(plan["device"]["total"].as_u64().unwrap() < 6 << 30, "{plan}");
    assert_eq!(plan["written_per_step"], resident["weights"], "{plan}");
    user_error(
        &[
            "plan",
            "--preset",
            "llama-13b",
            "--offload",
            "disk",
            "--devices",
            "2",
            "--optimizer",
            "lomo",
            "--batch-size",
            "1",
            "--max-len",
            "8",
        ],
        "--devices",
    );
    user_error(
        &[
            "plan",
            "--preset",
            "llama-13b",
            "--offload",
            "disk",
            "--optimizer",
            "adamw",
            "--batch-size",
            "1",
            "--max-len",
            "8",
        ],
        "fused step",
    );
}

#[test]
fn eval_and_generate_with_stages_placed_on_devices_give_the_one_device_results() {
    let (Some(model), Some(data)) = (shared("models/stories260K"), shared("reference/stories260K/batch.jsonl")) else {
        return;
    };
    let eval = |devices: &[&str]| -> Output {
        let args: Vec<&str> = ["eval", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap()]
            .iter()
            .copied()
            .chain(devices.iter().copied())
            .collect();
        lomo(&args)
    };
    let one = eval(&[]);
    ok(&one);
    let placed = eval(&["--devices", "cpu,cpu,cpu"]);
    ok(&placed);
    assert_eq!(one.stdout, placed.stdout, "eval: the placed model's result differs");
    assert!(String::from_utf8_lossy(&placed.stderr).contains("stages on 3 devices"));
    let generate = |devices: &[&str]| -> Output {
        let args: Vec<&str> =
            ["generate", "--model", model.to_str().unwrap(), "--prompt", "Once upon a time", "--max-new-tokens", "40"]
                .iter()
                .copied()
                .chain(devices.iter().copied())
                .collect();
        lomo(&args)
    };
    let one = generate(&[]);
    ok(&one);
    let placed = generate(&["--devices", "cpu,cpu"]);
    ok(&placed);
    assert_eq!(
        String::from_utf8_lossy(&one.stdout),
        String::from_utf8_lossy(&placed.stdout),
        "generate: the placed model's text differs"
    );
    user_error(
        &["eval", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--devices", "cuda:0"],
        "the CPU backend has one device",
    );
}

/// A token id the model has no embedding for is refused before training, naming the example
/// (counting across the --data files) and the id, in one line.
#[test]
fn token_ids_outside_the_vocabulary_are_refused_naming_the_example() {
    let dir = tmp("outside-vocab");
    std::fs::create_dir_all(&dir).unwrap();
    let (a, b) = (dir.join("a.jsonl"), dir.join("b.jsonl"));
    std::fs::write(&a, "{\"input_ids\": [1, 5, 9], \"labels\": [1, 5, 9]}\n").unwrap();
    std::fs::write(&b, "{\"input_ids\": [1, 600, 9], \"labels\": [1, 600, 9]}\n").unwrap();
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    let args = [
        "train",
        "--preset",
        "stories260k",
        "--data",
        a,
        "--data",
        b,
        "--optimizer",
        "lomo",
        "--lr",
        "0.1",
        "--steps",
        "1",
        "--batch-size",
        "1",
    ];
    user_error(&args, "--data: example 2 (counting across the --data files in order) has token id 600, outside the model's vocabulary of 512");
}

/// `strace`, which the kill test injects its kills with; `None` after saying how to get it
/// (a failure under `CI`, whose `.ci/run` installs it).
fn strace() -> Option<&'static str> {
    if Command::new("strace").arg("-V").output().is_ok_and(|o| o.status.success()) {
        return Some("strace");
    }
    let note = "strace is missing: `apt-get install strace` (the kill test injects SIGKILL with it)";
    assert!(std::env::var_os("CI").is_none(), "{note}");
    eprintln!("skipping: {note}");
    None
}

/// The `rename(from, to)` calls in an strace log, with `base` (and its trailing `/`) cut off.
fn renames(log: &str, base: &Path) -> Vec<(String, String)> {
    let base = format!("{}/", base.display());
    log.lines()
        .filter_map(|line| {
            let args = line.split_once("rename(\"")?.1;
            let (from, rest) = args.split_once("\", \"")?;
            let to = rest.split_once('"')?.0;
            Some((from.replace(&base, ""), to.replace(&base, "")))
        })
        .collect()
}

/// The checkpoint a rename marks complete (`…/.NAME.tmp-PID/.lomo-save-complete`), as
/// `…/NAME` relative to the run's base directory.
fn marked_complete(to: &str) -> Option<String> {
    let staged = to.strip_suffix(&format!("/{}", lomo_cli::save_dir::COMPLETE))?;
    let (parent, file) = staged.rsplit_once('/').unwrap_or(("", staged));
    let name = file.strip_prefix('.')?.rsplit_once(".tmp-")?.0;
    Some(if parent.is_empty() { name.to_string() } else { format!("{parent}/{name}") })
}

/// A kill at each rename of a run's saves in turn (every file of every `step-N`, their marks,
/// the final checkpoint's carry-over and swap) loses no checkpoint: after the next start's
/// recovery (`save_dir::prepare`, what `lomo train` runs first) every checkpoint whose files
/// were complete before the kill is in place with the uninterrupted run's weights and state,
/// every checkpoint on disk is whole, and nothing of the interrupted save is left over.
#[test]
fn a_kill_at_any_rename_of_a_save_loses_no_checkpoint() {
    use std::os::unix::process::ExitStatusExt;
    let (Some(model), Some(data)) = (shared("models/stories260K"), shared("data/tinystories_sample.txt")) else {
        return;
    };
    let Some(strace) = strace() else { return };
    let dir = tmp("kill-save");
    let run = |base: &Path, inject: Option<usize>| {
        std::fs::create_dir_all(base).unwrap();
        let mut args = short_run(&model, &data, "3", &base.join("out"));
        args.extend(["--save-every", "1"].map(String::from));
        let log = base.join("strace.log");
        let mut command = Command::new(strace);
        command.args(["-f", "-qq", "-e", "trace=rename,renameat,renameat2", "-o"]).arg(&log);
        if let Some(k) = inject {
            command.args(["-e", &format!("inject=rename,renameat,renameat2:signal=SIGKILL:when={k}")]);
        }
        let out = command.arg(env!("CARGO_BIN_EXE_lomo")).args(&args).output().expect("run strace");
        (out, std::fs::read_to_string(&log).unwrap())
    };
    let clean = dir.join("clean");
    let (out, log) = run(&clean, None);
    ok(&out);
    let calls = renames(&log, &clean);
    let complete: Vec<(usize, String)> =
        calls.iter().enumerate().filter_map(|(i, (_, to))| Some((i + 1, marked_complete(to)?))).collect();
    assert_eq!(
        complete.iter().map(|(_, c)| c.as_str()).collect::<Vec<_>>(),
        ["out/step-1", "out/step-2", "out"],
        "{calls:?}"
    );
    let checkpoint = |base: &Path, name: &str| {
        let dir = base.join(name);
        (weights(&dir), std::fs::read_to_string(dir.join("trainer_state.json")).unwrap())
    };
    for k in 1..=calls.len() {
        let base = dir.join(format!("kill-{k}"));
        let (out, _) = run(&base, Some(k));
        assert_eq!(out.status.signal(), Some(9), "kill at rename {k} ({:?}) did not happen", calls[k - 1]);
        lomo_cli::save_dir::prepare(&base.join("out")).unwrap();
        for (at, name) in &complete {
            if *at < k {
                assert!(base.join(name).join("trainer_state.json").exists(), "{name} lost by a kill at rename {k}");
            }
        }
        let mut on_disk = vec!["out".to_string()];
        if let Ok(entries) = std::fs::read_dir(base.join("out")) {
            on_disk.extend(entries.map(|e| format!("out/{}", e.unwrap().file_name().to_string_lossy())));
        }
        for name in on_disk.iter().filter(|n| n.as_str() == "out" || n.starts_with("out/step-")) {
            if base.join(name).join("trainer_state.json").exists() {
                assert!(checkpoint(&base, name) == checkpoint(&clean, name), "{name} differs after a kill at {k}");
            }
        }
        for place in [base.clone(), base.join("out")] {
            for entry in std::fs::read_dir(&place).into_iter().flatten() {
                let file = entry.unwrap().file_name().to_string_lossy().into_owned();
                assert!(
                    !file.contains(".tmp-") && !file.contains(".old-") && file != lomo_cli::save_dir::COMPLETE,
                    "{file} left in {} after a kill at rename {k}",
                    place.display()
                );
            }
        }
    }
}

/// A run whose stdout and stderr are closed after it starts (`lomo train … 2>&1 | head -2`)
/// trains to the end and saves, as it would with a reader: printing into a closed pipe is
/// dropped, not a crash.
#[test]
fn closed_output_pipes_do_not_stop_training() {
    use std::process::Stdio;
    let (Some(model), Some(data)) = (shared("models/stories260K"), shared("data/tinystories_sample.txt")) else {
        return;
    };
    let dir = tmp("closed-pipes");
    let out = dir.join("out");
    let args = short_run(&model, &data, "3", &out);
    let mut child = Command::new(env!("CARGO_BIN_EXE_lomo"))
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run lomo");
    drop(child.stdout.take());
    drop(child.stderr.take());
    let status = child.wait().unwrap();
    assert!(status.success(), "lomo train with closed pipes: {status}");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("trainer_state.json")).unwrap()).unwrap();
    assert_eq!(state["step"], 3);
}

/// `--epochs` so large that the step count overflows is refused, not wrapped into a short run.
#[test]
fn an_epoch_count_past_counting_is_refused() {
    let (Some(model), Some(data)) = (shared("models/stories260K"), shared("data/tinystories_sample.txt")) else {
        return;
    };
    let save = tmp("epochs-overflow");
    let mut args = short_run(&model, &data, "1", &save);
    let i = args.iter().position(|a| a == "--steps").unwrap();
    args.splice(i..i + 2, ["--epochs".to_string(), "4611686018427387905".to_string()]);
    user_error(&args.iter().map(String::as_str).collect::<Vec<_>>(), "--epochs 4611686018427387905");
    assert!(!save.join("trainer_state.json").exists());
}

/// A bad `--eval` file is found before the first step, naming its line, not at the first
/// evaluation: no step runs and nothing is saved.
#[test]
fn a_bad_eval_file_fails_before_training() {
    let (Some(model), Some(data)) = (shared("models/stories260K"), shared("data/tinystories_sample.txt")) else {
        return;
    };
    let dir = tmp("bad-eval");
    std::fs::create_dir_all(&dir).unwrap();
    let eval = dir.join("dev.jsonl");
    std::fs::write(&eval, "{\"text\": \"Once upon a time\"}\n{\"text\": \n").unwrap();
    let save = dir.join("out");
    let mut args = short_run(&model, &data, "3", &save);
    args.extend(["--eval", eval.to_str().unwrap(), "--eval-every", "100", "--save-every", "1"].map(String::from));
    user_error(&args.iter().map(String::as_str).collect::<Vec<_>>(), "dev.jsonl:2");
    assert!(!save.join("step-1").exists(), "a step ran before the eval file was read");
}

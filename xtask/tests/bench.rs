//! Runs `cargo xtask bench` (the built binary) on a tiny preset so that the harness cannot rot:
//! both the training-step bench and `--generate`, without the peer and without any assertion on
//! time, only on what the reports hold.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn target() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("target"))
}

fn report(name: &str) -> Value {
    let path = target().join(format!("bench/{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("the report is JSON")
}

fn run(args: &[&str]) {
    let status = Command::new(env!("CARGO_BIN_EXE_xtask")).args(args).status().expect("running the xtask binary");
    assert!(status.success(), "cargo xtask {}: {status}", args.join(" "));
}

#[test]
fn bench_runs_every_case_and_reports_phases() {
    run(&[
        "bench",
        "--preset",
        "stories260k",
        "--batch-size",
        "2",
        "--tokens",
        "16",
        "--warmup",
        "1",
        "--steps",
        "2",
        "--case",
        "lomo",
        "--case",
        "lomo-clip",
        "--case",
        "adalomo",
        "--case",
        "adamw",
        "--name",
        "ci-step",
    ]);
    let r = report("ci-step");
    let cases = r["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 4);
    for c in cases {
        let kind = c["kind"].as_str().unwrap();
        assert!(c["error"].is_null(), "{kind}: {}", c["error"]);
        let steps = c["ours"]["steps"].as_array().unwrap();
        assert_eq!(steps.len(), 3, "{kind}: warm-up + 2 steps");
        assert!(steps.iter().all(|s| s["loss"].as_f64().unwrap().is_finite() && s["seconds"].as_f64().unwrap() > 0.0));
        // The same weights and batch: every case starts from the same loss.
        let first = steps[0]["loss"].as_f64().unwrap();
        let lomo_first = cases[0]["ours"]["steps"][0]["loss"].as_f64().unwrap();
        assert!((first - lomo_first).abs() < 1e-5, "{kind}: first loss {first} vs {lomo_first}");
        let timings = &steps[1]["timings"];
        if kind == "adamw" {
            assert!(timings["backward"].as_array().unwrap().is_empty(), "full backward has no stage timers");
        } else {
            // Embedding, 5 blocks, loss stage.
            assert_eq!(timings["backward"].as_array().unwrap().len(), 7, "{kind}");
            assert_eq!(
                timings["norm_pass"].is_null(),
                kind != "lomo-clip",
                "{kind}: the norm pass runs with clipping only"
            );
        }
        assert!(c["peer"].is_null() && c["peer_error"].is_string(), "{kind}: no peer was asked for");
    }
    let md = std::fs::read_to_string(target().join("bench/ci-step.md")).unwrap();
    assert!(md.contains("fused LOMO") && md.contains("Where one step of ours goes"), "{md}");
}

#[test]
fn bench_generate_decodes_the_asked_tokens() {
    run(&[
        "bench",
        "--generate",
        "--preset",
        "stories260k",
        "--tokens",
        "5",
        "--max-new-tokens",
        "70",
        "--name",
        "ci-generate",
    ]);
    let r = report("ci-generate");
    assert_eq!(r["prompt_ids"].as_array().unwrap().len(), 5);
    // 5 + 70 positions: past one block of the KV cache.
    assert_eq!(r["ours"]["new_ids"].as_array().unwrap().len(), 70);
    assert!(r["ours"]["decode_tokens_per_s"].as_f64().unwrap() > 0.0);
}

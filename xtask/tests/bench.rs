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

/// A peer's result as the script prints it (with `--device cuda`'s memory fields), every step
/// taking `seconds`.
fn peer_json(seconds: f64, mib: u64) -> Value {
    let step = serde_json::json!({ "seconds": seconds, "cpu_seconds": seconds, "loss": 6.0 });
    serde_json::json!({
        "steps": [step.clone(), step.clone(), step],
        "peak_rss": 1u64 << 30, "threads": 2, "versions": {}, "attn_implementation": "sdpa",
        "device": "cuda", "max_memory_allocated": mib << 20, "max_memory_reserved": (mib + 1) << 20,
        "nvidia_smi_peak": (mib + 2) << 20,
    })
}

#[test]
fn the_report_shows_both_peers_mfu_and_device_memory() {
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
        "--peak-tflops",
        "1e-6",
        "--name",
        "ci-report",
    ]);
    // The peers' figures and ours' device memory as a GPU run would give them, written into the
    // report's JSON and redrawn (`bench-report`), as a report is after a change to its format.
    let mut r = report("ci-report");
    assert_eq!(r["peak"]["tflops"].as_f64(), Some(1e-6));
    let case = &mut r["cases"][0];
    case["peer"] = peer_json(2.0, 1000);
    case["hooks"] = peer_json(0.5, 3000);
    case["ours"]["device_reserved_peak"] = Value::from(5000u64 << 20);
    let json = target().join("bench/ci-report-gpu.json");
    std::fs::write(&json, r.to_string()).unwrap();
    run(&["bench-report", json.to_str().unwrap()]);
    let md = std::fs::read_to_string(json.with_extension("md")).unwrap();
    let row = md.lines().find(|l| l.starts_with("| fused LOMO |")).expect("the lomo row");
    // MFU = 8 × parameters × tokens / s/step / peak: the peers' steps take 2 s and 0.5 s.
    let flops = 8.0 * r["params"].as_f64().unwrap() * 32.0;
    for seconds in [2.0, 0.5] {
        let mfu = format!("| {:.1} % |", 100.0 * flops / seconds / 1e6);
        assert!(row.contains(&mfu), "{mfu} in {row}");
    }
    assert!(row.contains("| 2.000 (2.000–2.000) | 16 |") && row.contains("| 0.500 (0.500–0.500) | 64 |"), "{row}");
    assert!(md.contains("lomo / hooks") && !md.contains("data sheet"), "{md}");
    let memory = md.lines().skip_while(|l| !l.starts_with("Peak device memory")).nth(4).expect("the memory row");
    assert!(memory.contains("| 5000 | – | 1000 | 1001 | 1002 | 3000 | 3001 | 3002 |"), "{memory}");
    assert!(std::fs::read_to_string(json.with_extension("svg")).unwrap().contains("PyTorch hooks"));
}

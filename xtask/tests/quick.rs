//! Runs `cargo xtask profile --suite quick` (the built binary) and checks the memory story
//! of design/lomo.md on its measurements: fused LOMO holds about one copy of the weights,
//! full-backward AdamW about four, with the weights offloaded to disk a fraction of one, and the
//! planner predicts every case's peak within 10%.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn u64_at(v: &Value, path: &[&str]) -> u64 {
    let mut v = v;
    for key in path {
        v = &v[*key];
    }
    v.as_u64().unwrap_or_else(|| panic!("{path:?} is not a number: {v}"))
}

#[test]
fn quick_suite_fused_lomo_fits_in_one_copy_and_the_plan_matches() {
    let status = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["profile", "--suite", "quick", "--backend", "cpu"])
        .status()
        .expect("running the xtask binary");
    assert!(status.success(), "cargo xtask profile --suite quick: {status}");

    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("target"));
    let path = target.join("profile/quick.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let result: Value = serde_json::from_str(&text).expect("quick.json is JSON");
    let cases = result["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 9, "four optimizers in two modes, and fused LOMO offloaded to disk");

    let find = |mode: &str, optimizer: &str| {
        cases
            .iter()
            .find(|c| {
                c["case"]["mode"] == mode && c["case"]["optimizer"] == optimizer && c["case"]["offload"].is_null()
            })
            .unwrap_or_else(|| panic!("no {mode} {optimizer} case"))
    };
    for c in cases {
        let label = format!("{} {} (offload {})", c["case"]["mode"], c["case"]["optimizer"], c["case"]["offload"]);
        assert!(c["error"].is_null(), "{label} failed: {}", c["error"]);
        let heap = u64_at(c, &["measured", "peak_heap"]) as f64;
        let plan = u64_at(c, &["plan", "total"]) as f64;
        let err = plan / heap - 1.0;
        assert!(err.abs() <= 0.10, "{label}: plan {plan:.0} vs measured peak heap {heap:.0} ({:+.1}%)", err * 100.0);
    }

    let lomo = find("fused", "lomo");
    let weights = u64_at(lomo, &["plan", "weights"]) as f64;
    let ratio = u64_at(lomo, &["measured", "peak_heap"]) as f64 / weights;
    assert!(ratio <= 1.2, "fused LOMO peak heap {ratio:.3} × weight bytes");
    // With the weights on disk, two stages are resident, not the model.
    let offloaded = cases.iter().find(|c| c["case"]["offload"] == "disk").expect("the offload case");
    let ratio = u64_at(offloaded, &["measured", "peak_heap"]) as f64 / weights;
    assert!(ratio <= 0.3, "fused LOMO offloaded to disk: peak heap {ratio:.3} × weight bytes");
    assert_eq!(
        u64_at(offloaded, &["measured", "offload_io", "written"]) as f64,
        weights,
        "every weight written back once"
    );
    let adamw = find("full", "adamw");
    let ratio = u64_at(adamw, &["measured", "peak_heap"]) as f64 / weights;
    assert!(ratio >= 3.5, "full-backward AdamW peak heap {ratio:.3} × weight bytes");
}

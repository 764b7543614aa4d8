//! Bad input found before any work, and full disks named: a config.json claiming sizes past any
//! model, a bad value in `--config`, a full disk under `--log` or under the `--offload disk`
//! working copy. Each is one line, exit 2, and leaves nothing half-written.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::{one_line_exit_2, strace, tmp, user_error};
use lomo_testutil::shared;

/// stories260K's checkpoint in `dir`, its config.json's fields set as `claims` say.
fn checkpoint_claiming(dir: &Path, model: &Path, claims: &[(&str, &str)]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for file in ["model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(model.join(file), dir.join(file)).unwrap();
    }
    let config = std::fs::read_to_string(model.join("config.json")).unwrap();
    let mut value: serde_json::Value = serde_json::from_str(&config).unwrap();
    for (field, claim) in claims {
        value[field] = serde_json::from_str(claim).unwrap();
    }
    std::fs::write(dir.join("config.json"), value.to_string()).unwrap();
    dir.to_path_buf()
}

/// `lomo args` with its address space capped at 4 GiB, so that a regression that sizes
/// something from a claimed size fails here (an allocation failure) instead of exhausting the
/// machine.
fn lomo_capped(args: &[&str]) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 4194304 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_lomo"))
        .args(args)
        .output()
        .expect("run lomo under sh")
}

/// A config.json claiming a billion layers (or sizes past any model) is refused naming the
/// file and the field, before anything is sized from it: `lomo plan` had aborted after
/// exhausting memory listing a billion layers' tensors, and train and generate with it.
#[test]
fn a_config_claiming_sizes_past_any_model_is_refused_before_anything_is_sized() {
    let (Some(model), Some(data)) = (shared("models/stories260K"), shared("data/tinystories_sample.txt")) else {
        return;
    };
    let base = tmp("huge-config");
    let claims: [(&[(&str, &str)], &str); 5] = [
        (&[("num_hidden_layers", "1000000000")], "field `num_hidden_layers`: 1000000000 is past the limit"),
        (&[("hidden_size", "1099511627776")], "field `hidden_size`: 1099511627776 is past the limit"),
        (&[("intermediate_size", "4294967296")], "field `intermediate_size`: 4294967296 is past the limit"),
        (&[("vocab_size", "18446744073709551615")], "field `vocab_size`: 18446744073709551615 is past the limit"),
        // Each size within its limit, together past any model's parameter count.
        (
            &[("num_hidden_layers", "4096"), ("hidden_size", "131072"), ("intermediate_size", "524288")],
            "field `num_hidden_layers`: the sizes make",
        ),
    ];
    for (i, (fields, expect)) in claims.into_iter().enumerate() {
        let dir = checkpoint_claiming(&base.join(format!("{i}")), &model, fields);
        let (dir, data) = (dir.to_str().unwrap(), data.to_str().unwrap());
        let expect = format!("config.json: {expect}");
        let plan = ["plan", "--model", dir, "--optimizer", "lomo", "--batch-size", "1", "--max-len", "16"];
        one_line_exit_2(&lomo_capped(&plan), "plan", &expect);
        let train = ["train", "--model", dir, "--data", data, "--optimizer", "lomo", "--lr", "1e-3", "--steps", "1"];
        one_line_exit_2(
            &lomo_capped(&[&train[..], &["--batch-size", "1", "--max-len", "16"]].concat()),
            "train",
            &expect,
        );
        let generate = ["generate", "--model", dir, "--prompt", "Once upon a time", "--max-new-tokens", "4"];
        one_line_exit_2(&lomo_capped(&generate), "generate", &expect);
    }
}

/// A bad value in `--config` names the file's line and the key (`lr = nan`, `batch_size = 0`
/// had been reported as `--lr: …` with no file); the same value on the command line still
/// names the flag.
#[test]
fn a_bad_value_in_a_run_config_names_the_files_line() {
    let dir = tmp("bad-config-values");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("run.toml");
    let head = "preset = \"stories260k\"\ndata = [\"x.jsonl\"]\noptimizer = \"lomo\"\n";
    let cases = [
        ("lr = nan\nsteps = 1\nbatch_size = 1\n", "run.toml:4: lr: must be a finite number > 0, got NaN"),
        ("lr = 0.1\nsteps = 1\nbatch_size = 0\n", "run.toml:6: batch_size: must be at least 1"),
        ("lr = 0.1\nbatch_size = 2\nmax_len = 1\nsteps = 1\n", "run.toml:6: max_len: must be at least 2"),
    ];
    for (tail, expect) in cases {
        std::fs::write(&config, format!("{head}{tail}")).unwrap();
        user_error(&["train", "--config", config.to_str().unwrap()], expect);
    }
    std::fs::write(&config, format!("{head}lr = 0.1\nsteps = 1\n")).unwrap();
    user_error(
        &["train", "--config", config.to_str().unwrap(), "--batch-size", "0"],
        "--batch-size: must be at least 1",
    );
}

/// A full disk under `--log` names the log file (the error had said only "No space left on
/// device"). The full disk is strace's: every write to the log fails with ENOSPC.
#[test]
fn a_full_disk_under_the_log_names_the_log_file() {
    let (Some(model), Some(data)) = (shared("models/stories260K"), shared("data/tinystories_sample.txt")) else {
        return;
    };
    let Some(strace) = strace() else { return };
    let dir = tmp("log-disk-full");
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("run.log");
    let out = Command::new(strace)
        .args(["-f", "-qq", "-o", "/dev/null", "-e", "trace=write", "-e", "inject=write:error=ENOSPC", "-P"])
        .arg(&log)
        .arg(env!("CARGO_BIN_EXE_lomo"))
        .args(["train", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap()])
        .args(["--optimizer", "lomo", "--lr", "1e-3", "--steps", "2", "--batch-size", "1", "--max-len", "32"])
        .arg("--log")
        .arg(&log)
        .output()
        .expect("run strace");
    // The run says its first steps before the log's first write fails: the error is its last line.
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let last = err.trim_end().lines().last().unwrap_or_default();
    let expect = format!("error: --log {}: writing: No space left on device", log.display());
    assert!(last.starts_with(&expect), "{last:?} should start with {expect:?}");
    assert!(!err.contains("panicked"), "{err}");
}

/// A full disk while the `--offload disk` working copy is made (a stage file's write, a stage
/// file's sync, `store.json`'s write failing with ENOSPC, by strace) leaves no file of it and
/// names the directory: partial stage files had stayed behind.
#[test]
fn a_full_disk_while_making_the_offload_working_copy_leaves_nothing() {
    let (Some(model), Some(data)) = (shared("models/stories260K"), shared("data/tinystories_sample.txt")) else {
        return;
    };
    let Some(strace) = strace() else { return };
    let base = tmp("offload-disk-full");
    for (syscall, file) in [
        ("pwrite64", "stage-00000.safetensors.tmp"),
        ("fsync", "stage-00003.safetensors.tmp"),
        ("write", "store.json.tmp"),
    ] {
        let offload = base.join(syscall).join("offload");
        let out = Command::new(strace)
            .args(["-f", "-qq", "-o", "/dev/null", "-e", &format!("trace={syscall}")])
            .args(["-e", &format!("inject={syscall}:error=ENOSPC"), "-P"])
            .arg(offload.join(file))
            .arg(env!("CARGO_BIN_EXE_lomo"))
            .args(["train", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap()])
            .args(["--optimizer", "lomo", "--lr", "1e-3", "--steps", "1", "--batch-size", "1", "--max-len", "32"])
            .args(["--offload", "disk", "--offload-dir"])
            .arg(&offload)
            .output()
            .expect("run strace");
        one_line_exit_2(&out, "offload", &format!("in {}", offload.display()));
        assert!(String::from_utf8_lossy(&out.stderr).contains("No space left on device"), "{syscall}");
        let left: Vec<_> =
            std::fs::read_dir(&offload).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
        assert!(left.is_empty(), "{syscall} on {file}: the failed working copy left {left:?}");
        assert!(!offload.exists(), "{syscall}: the directory made for the working copy stays");
    }
}

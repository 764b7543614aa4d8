//! The profile suites: which cases each runs.

use anyhow::{bail, Result};
use lomo_models::plan::{OffloadTarget, PlanOptimizer, StepMode};
use lomo_models::presets::preset;
use lomo_models::{LlamaConfig, StorageDtype};

use super::case::Case;

/// The suites `--suite` names.
pub const SUITES: &[&str] = &["quick", "paper", "scale", "offload"];

/// The model of the quick suite: small enough that all eight cases run in about two minutes
/// on two cores, with blocks wide and many enough that one stage's gradients and
/// intermediates are a small part of the weights, as in a real LLM (where a block is under
/// 3% of the model). 125.9M parameters: 16 blocks of hidden 768, FFN 2048, 12 heads; an
/// untied vocabulary of 8192. (With 12 blocks, one stage's work was 16% of the weights on
/// Flex with its `simd` feature, too close to the 1.2 × bound for a bound on the method.)
pub fn quick_model() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 8192,
        hidden_size: 768,
        intermediate_size: 2048,
        num_layers: 16,
        num_heads: 12,
        num_kv_heads: 12,
        head_dim: 64,
        max_position_embeddings: 2048,
        ..preset("TinyLlama-1.1B").expect("a known preset")
    }
}

/// Every optimizer in both modes on one model, dtype and batch shape.
#[allow(clippy::too_many_arguments)]
fn all_optimizers(
    model_name: &str,
    model: &LlamaConfig,
    dtype: StorageDtype,
    batch_size: usize,
    tokens: usize,
    loss_chunk_tokens: Option<usize>,
    modes: &[StepMode],
) -> Vec<Case> {
    let mut cases = Vec::new();
    for &mode in modes {
        for optimizer in PlanOptimizer::ALL {
            cases.push(Case {
                model_name: model_name.into(),
                model: model.to_hf(dtype),
                dtype: format!("{dtype:?}").to_lowercase(),
                optimizer,
                mode,
                batch_size,
                micro_batch_size: batch_size,
                tokens,
                loss_chunk_tokens,
                seed: 0,
                offload: None,
            });
        }
    }
    cases
}

/// The cases of `suite`.
pub fn cases(suite: &str) -> Result<Vec<Case>> {
    let both = [StepMode::Fused, StepMode::Full];
    Ok(match suite {
        // f32, one row of 128 tokens, the loss in one chunk (the default chunking). (Before
        // every Linear ran on 2-D rows, burn's 3-D Linear backward made b weight-sized
        // products per projection, and b = 2 put this model's fused step at 1.35× its weights.)
        "quick" => {
            let mut cases = all_optimizers("custom-16L-768", &quick_model(), StorageDtype::F32, 1, 128, None, &both);
            // Fused LOMO with the weights on disk: two stages resident instead of the model.
            let mut offloaded = cases[0].clone();
            offloaded.offload = Some(OffloadTarget::Disk);
            cases.push(offloaded);
            cases
        }
        // The largest preset whose full-backward AdamW step fits this 24 GiB machine: the
        // 1.24B Llama-3.2-1B in bf16 (weights 2.3 GiB, gradients 2.3, AdamW moments 4.6,
        // plus activations); Llama-3.2-3B would need 24 GiB for those three alone.
        "paper" => {
            let model = preset("Llama-3.2-1B")?;
            all_optimizers("Llama-3.2-1B", &model, StorageDtype::BF16, 1, 128, None, &both)
        }
        // One fused LOMO step of the LLaMA-7B shape in bf16: the weights alone are 12.55 GiB,
        // so every transient copy shows in the peak.
        "scale" => {
            let model = preset("LLaMA-7B")?;
            let mut cases = all_optimizers("LLaMA-7B", &model, StorageDtype::BF16, 1, 512, None, &[StepMode::Fused]);
            cases.retain(|c| c.optimizer == PlanOptimizer::Lomo);
            cases
        }
        // One fused LOMO step of the LLaMA-13B shape in bf16 with the weights on disk: 24.2 GiB
        // of weights, more than this 24 GiB machine can hold beside anything else.
        "offload" => {
            let model = preset("llama-13b")?;
            let mut cases = all_optimizers("LLaMA-13B", &model, StorageDtype::BF16, 1, 512, None, &[StepMode::Fused]);
            cases.retain(|c| c.optimizer == PlanOptimizer::Lomo);
            cases.iter_mut().for_each(|c| c.offload = Some(OffloadTarget::Disk));
            cases
        }
        other => bail!("--suite: unknown suite `{other}` ({})", SUITES.join(", ")),
    })
}

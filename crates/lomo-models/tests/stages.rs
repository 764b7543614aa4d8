//! The model as the fused step drives it: the chain of stages and the chunked loss stage
//! compute HF's loss.

use std::collections::HashSet;

use burn::module::{AutodiffModule, ParamId};
use lomo_models::{Batch, Llama, LossChunking, Residency, StorageDtype, TensorSource};
use lomo_optim::{param_ids, StagedModel};

use crate::common::{self, values, AD};

/// Mean loss through `forward_stage` × (n - 1) then every chunk of `forward_loss`, summed and
/// divided by `num_targets`, as the fused step combines them.
fn staged_loss(model: &Llama<AD>, batch: &Batch) -> f32 {
    let stages = StagedModel::num_stages(model);
    let mut x = None;
    for stage in 0..stages - 1 {
        x = Some(model.forward_stage(stage, x, batch));
    }
    let hidden = x.unwrap();
    let chunks = StagedModel::num_loss_chunks(model, batch);
    let sum: f32 = (0..chunks).map(|c| values(model.forward_loss(hidden.clone(), batch, c))[0]).sum();
    sum / <Llama<AD> as StagedModel<AD, 3>>::num_targets(batch) as f32
}

/// The same on the inner backend (no tape), as the fused step's first forward runs it.
fn inner_staged_loss(model: &Llama<AD>, batch: &Batch) -> f32 {
    let inner = model.valid();
    let stages = StagedModel::num_stages(model);
    let mut x = None;
    for stage in 0..stages - 1 {
        x = Some(Llama::<AD>::inner_forward_stage(&inner, stage, x, batch));
    }
    let hidden = x.unwrap();
    let chunks = StagedModel::num_loss_chunks(model, batch);
    let sum: f32 =
        (0..chunks).map(|c| values(Llama::<AD>::inner_forward_loss(&inner, hidden.clone(), batch, c))[0]).sum();
    sum / batch.num_targets() as f32
}

fn load(dtype: StorageDtype) -> Option<(Llama<AD>, Batch)> {
    let dir = common::stories260k()?;
    let batch = common::reference_batch()?;
    Some((
        lomo_models::load::<AD>(TensorSource::Hf(dir.as_ref()), Residency::Resident, dtype, &common::device())
            .map(|l| l.model)
            .unwrap(),
        batch,
    ))
}

#[test]
fn staged_forward_equals_whole_model_loss() {
    let Some((model, batch)) = load(StorageDtype::F32) else { return };
    assert_eq!(batch.num_targets(), 61);
    assert_eq!(StagedModel::num_loss_chunks(&model, &batch), 1);
    let whole = values(model.loss(&batch))[0];
    let staged = staged_loss(&model, &batch);
    let inner = inner_staged_loss(&model, &batch);
    assert!((whole - staged).abs() <= 1e-6, "whole {whole} vs staged {staged}");
    assert!((whole - inner).abs() <= 1e-6, "whole {whole} vs inner staged {inner}");
    // The reference loss (runs.json "forward_loss"), so the chain is not merely self-consistent.
    assert!((whole - 1.373_963_1).abs() <= 1e-5, "loss {whole}");
}

#[test]
fn several_loss_chunks_equal_one() {
    let Some((model, batch)) = load(StorageDtype::F32) else { return };
    let one = staged_loss(&model, &batch);
    // 61 targets in chunks of 7: 9 chunks, the last one short.
    let model = model.with_loss_chunking(LossChunking::Tokens(7));
    assert_eq!(StagedModel::num_loss_chunks(&model, &batch), 9);
    let chunked = staged_loss(&model, &batch);
    assert!((one - chunked).abs() <= 1e-6, "one chunk {one} vs nine {chunked}");
    assert!((one - inner_staged_loss(&model, &batch)).abs() <= 1e-6);
    // A logits budget of 16 positions × 512 vocab gives chunks of 16 targets.
    let model = model.with_loss_chunking(LossChunking::MaxLogits(16 * 512));
    assert_eq!(StagedModel::num_loss_chunks(&model, &batch), 4);
    assert!((one - staged_loss(&model, &batch)).abs() <= 1e-6);
}

/// The head runs only at target positions: their log-probabilities are those of the whole
/// logits, and the loss stage of a batch without targets is a zero loss with zero gradients.
#[test]
fn loss_reads_target_positions_only() {
    let Some((model, batch)) = load(StorageDtype::F32) else { return };
    let targets = batch.targets();
    assert_eq!(targets.len(), 61);
    let picked = values(model.target_log_probs(&batch));
    let logits = model.forward(&batch);
    let [_, tokens, vocab] = logits.dims();
    let log_p = values(burn::tensor::activation::log_softmax(logits, 2));
    for (&(position, label), got) in targets.iter().zip(&picked) {
        let want = log_p[position * vocab + label as usize];
        assert!((want - got).abs() <= 1e-5, "position {position} (row {}): {got} vs {want}", position / tokens);
    }

    let [rows, len] = [batch.batch_size(), batch.seq_len()];
    let unlabeled =
        Batch::new(batch.input_ids().to_vec(), Some(batch.attention_mask().to_vec()), None, [rows, len]).unwrap();
    assert!(unlabeled.targets().is_empty());
    assert_eq!(values(model.target_log_probs(&unlabeled)).len(), 0);
    assert_eq!(StagedModel::num_loss_chunks(&model, &unlabeled), 1);
    let mut x = None;
    for stage in 0..StagedModel::num_stages(&model) - 1 {
        x = Some(model.forward_stage(stage, x, &unlabeled));
    }
    let hidden = x.unwrap().detach().require_grad();
    let loss = model.forward_loss(hidden.clone(), &unlabeled, 0);
    assert_eq!(values(loss.clone()), vec![0.0]);
    let mut grads = loss.backward();
    let grad = hidden.grad_remove(&mut grads).expect("the hidden state gets a gradient");
    assert!(values(grad).iter().all(|&g| g == 0.0));
}

#[test]
fn stages_partition_the_parameters() {
    let Some((model, _)) = load(StorageDtype::F32) else { return };
    let stages = StagedModel::num_stages(&model);
    assert_eq!(stages, 5 + 2);
    let embedding = model.embed_tokens.weight.id;
    let mut seen: Vec<ParamId> = Vec::new();
    for stage in 0..stages {
        let ids = model.stage_params(stage);
        assert!(!ids.is_empty(), "stage {stage} has no parameters");
        seen.extend(ids);
    }
    // Every parameter once, except the tied embedding: read by stage 0 and by the LM head.
    let all: HashSet<ParamId> = param_ids(&model).into_iter().collect();
    assert_eq!(seen.len(), all.len() + 1);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), all.len());
    assert_eq!(model.stage_params(0), vec![embedding]);
    assert!(model.stage_params(stages - 1).contains(&embedding));
}

#[test]
fn half_precision_storage_computes_the_same_model() {
    let Some((reference, batch)) = load(StorageDtype::F32) else { return };
    let expected = values(reference.loss(&batch))[0];
    for dtype in [StorageDtype::BF16, StorageDtype::F16] {
        let Some((model, _)) = load(dtype) else { return };
        assert_eq!(model.dtype(), dtype);
        assert_eq!(model.layers[0].mlp.up_proj.weight.val().dtype(), dtype.to_burn());
        let whole = values(model.loss(&batch))[0];
        let staged = staged_loss(&model, &batch);
        // bf16 keeps 8 bits of mantissa: the loss moves in the third digit, not more.
        assert!((whole - expected).abs() < 0.03, "{dtype:?}: loss {whole} vs f32 {expected}");
        assert!((whole - staged).abs() < 1e-3, "{dtype:?}: whole {whole} vs staged {staged}");
    }
}

//! stories260K against the numbers PyTorch / HF transformers produced
//! (shared/reference/gen_reference.py).

use lomo_models::{generate, load, GenerationConfig, Residency, StorageDtype, TensorSource};

use crate::common::{self, max_abs_diff, values, AD, B};

#[test]
fn logits_and_loss_match_hf() {
    let (Some(dir), Some(batch), Some(reference)) =
        (common::stories260k(), common::reference_batch(), common::shared("reference/stories260K/forward.safetensors"))
    else {
        return;
    };
    let model = load::<B>(TensorSource::Hf(&dir), Residency::Resident, StorageDtype::F32, &common::device())
        .map(|l| l.model)
        .unwrap();
    let reference = common::read_safetensors(&reference);

    // o = m(input_ids=..., attention_mask=..., labels=...); o.logits [2, 40, 512]
    let (shape, expected) = &reference["logits"];
    let logits = model.forward(&batch);
    assert_eq!(logits.dims().to_vec(), *shape);
    let logits = values(logits);
    let vocab = shape[2];
    // Only where attention_mask is 1: a padded query's logits are unspecified.
    let mut compared = 0;
    for (pos, &mask) in batch.attention_mask().iter().enumerate() {
        if mask == 1 {
            let range = pos * vocab..(pos + 1) * vocab;
            let diff = max_abs_diff(&logits[range.clone()], &expected[range]);
            assert!(diff <= 1e-4, "logits at flat position {pos} differ by {diff}");
            compared += 1;
        }
    }
    assert_eq!(compared, 67);

    // o.loss: mean over the 61 supervised targets.
    let loss = values(model.loss(&batch))[0];
    let expected_loss = reference["loss"].1[0];
    assert!((loss - expected_loss).abs() <= 1e-5, "loss {loss} vs HF {expected_loss}");
}

#[test]
fn gradients_match_hf() {
    let (Some(dir), Some(batch), Some(reference)) =
        (common::stories260k(), common::reference_batch(), common::shared("reference/stories260K/grads.safetensors"))
    else {
        return;
    };
    let model = load::<AD>(TensorSource::Hf(&dir), Residency::Resident, StorageDtype::F32, &common::device())
        .map(|l| l.model)
        .unwrap();
    let reference = common::read_safetensors(&reference);
    // loss_of(m).backward(); {n: p.grad for n, p in m.named_parameters()}
    let grads = common::hf_grads(&model, &model.loss(&batch).backward());
    assert_eq!(grads.len(), reference.len());
    for (spec, grad) in grads {
        let (shape, expected) = &reference[&spec.name];
        assert_eq!(shape, &spec.shape, "{}", spec.name);
        let diff = max_abs_diff(&grad, expected);
        assert!(diff <= 1e-5, "gradient of {} differs by {diff}", spec.name);
    }
}

#[test]
fn greedy_generation_matches_hf() {
    let Some(dir) = common::stories260k() else { return };
    let model = load::<B>(TensorSource::Hf(&dir), Residency::Resident, StorageDtype::F32, &common::device())
        .map(|l| l.model)
        .unwrap();
    let tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let prompt = "Once upon a time";
    let ids = tokenizer.encode(prompt, true).unwrap().get_ids().to_vec();
    assert_eq!(ids[0], 1, "the tokenizer adds <s>");
    let new = generate(&model, &ids, &GenerationConfig::greedy(40));
    assert_eq!(new.len(), 40);
    let all: Vec<u32> = ids.iter().chain(&new).copied().collect();
    let text = tokenizer.decode(&all, true).unwrap();
    // HF transformers: model.generate(<s> Once upon a time, max_new_tokens=40, do_sample=False)
    let expected = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. \
                    One day, she saw a big, red ball.";
    assert_eq!(text, expected);
}

#[test]
fn sampled_generation_is_reproducible() {
    let Some(dir) = common::stories260k() else { return };
    let model = load::<B>(TensorSource::Hf(&dir), Residency::Resident, StorageDtype::F32, &common::device())
        .map(|l| l.model)
        .unwrap();
    let prompt = [1, 403, 407, 261, 378];
    let sampled = |temperature, top_p, seed| {
        let config = GenerationConfig {
            max_new_tokens: 20,
            sampling: lomo_models::Sampling::TopP { temperature, top_p, seed },
            stop_tokens: vec![],
        };
        generate(&model, &prompt, &config)
    };
    assert_eq!(sampled(1.0, 0.95, 42), sampled(1.0, 0.95, 42));
    assert_ne!(sampled(1.5, 1.0, 42), sampled(1.5, 1.0, 43));
    // A nucleus this small holds only the most likely token: greedy decoding.
    let mut greedy = GenerationConfig::greedy(20);
    greedy.stop_tokens = vec![];
    assert_eq!(sampled(1.0, 1e-6, 7), generate(&model, &prompt, &greedy));
}

/// Past one block of the KV cache (64 positions) the cached decoding, which attends block by
/// block and merges by log-sum-exp, still gives the logits of a full forward pass over the
/// whole sequence.
#[test]
fn cached_decoding_across_cache_blocks_equals_the_full_forward() {
    let Some(dir) = common::stories260k() else { return };
    let model = load::<B>(TensorSource::Hf(&dir), Residency::Resident, StorageDtype::F32, &common::device())
        .map(|l| l.model)
        .unwrap();
    let prompt: Vec<i64> = vec![1, 403, 407, 261, 378, 300, 290];
    let mut cache = lomo_models::KvCache::new(model.config().num_layers);
    let mut seq = prompt.clone();
    let mut logits = model.forward_cached(&prompt, 1, &mut cache);
    for step in 0..150 {
        let row = values(logits.clone());
        let next = row.iter().enumerate().fold((0, f32::MIN), |m, (i, &v)| if v > m.1 { (i, v) } else { m }).0 as i64;
        seq.push(next);
        if step % 37 == 36 || step == 149 {
            // The full forward's logits at the last position, against the cached step's.
            let batch = lomo_models::Batch::new(seq[..seq.len() - 1].to_vec(), None, None, [1, seq.len() - 1]).unwrap();
            let full = model.forward(&batch);
            let vocab = full.dims()[2];
            let last = values(full.narrow(1, seq.len() - 2, 1).reshape([vocab]));
            let diff = max_abs_diff(&row, &last);
            assert!(diff <= 1e-4, "position {}: cached vs full logits differ by {diff}", seq.len() - 2);
        }
        logits = model.forward_cached(&[next], 1, &mut cache);
    }
    assert!(cache.len() > 2 * lomo_models::kv_cache::CACHE_BLOCK);
}

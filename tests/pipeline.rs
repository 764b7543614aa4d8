//! The crates together: lomo-data's batches, lomo-models' LLaMA, lomo-optim's fused step, on
//! stories260K, against the PyTorch / LOMO-package references in `shared/reference`.

use std::path::Path;

use burn::backend::{Autodiff, Flex};
use burn::tensor::{DType, Tensor};
use lomo_data::{collate, Dataset, EncodeConfig, PaddingConfig};
use lomo_models::{load, Batch, Llama, LossChunking, Residency, StorageDtype, TensorSource};
use lomo_optim::{AdaLomoConfig, FusedConfig, FusedStep, Lomo, RuleUpdater};
use lomo_testutil::shared;

type B = Autodiff<Flex>;

/// batch.jsonl through lomo-data (pre-tokenized, right padding), as the model's batch.
fn reference_batch(rows: std::ops::Range<usize>) -> Option<Batch> {
    let data = shared("reference/stories260K/batch.jsonl")?;
    let dataset = Dataset::load(&data, None, None, &EncodeConfig::with_max_len(64)).unwrap();
    let b = collate(dataset.examples[rows].iter(), &PaddingConfig::default()).unwrap();
    Some(Batch::new(b.input_ids, Some(b.attention_mask), Some(b.labels), [b.batch_size, b.seq_len]).unwrap())
}

fn model() -> Option<Llama<B>> {
    let dir = shared("models/stories260K")?;
    Some(
        load::<B>(
            TensorSource::Hf(dir.as_ref()),
            Residency::Resident,
            StorageDtype::F32,
            &burn::backend::flex::FlexDevice,
        )
        .map(|l| l.model)
        .unwrap(),
    )
}

fn weights(model: &Llama<B>) -> Vec<(String, Vec<f32>)> {
    let mut out: Vec<(String, Vec<f32>)> = model
        .hf_tensors()
        .into_iter()
        .map(|(spec, t): (_, Tensor<B, 2>)| {
            (spec.name.clone(), t.cast(DType::F32).into_data().to_vec::<f32>().unwrap())
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn max_diff_to_reference(model: &Llama<B>, file: &Path) -> f32 {
    let bytes = std::fs::read(file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut worst = 0f32;
    let ours = weights(model);
    assert_eq!(ours.len(), st.len(), "tensor count");
    for (name, values) in ours {
        let view = st.tensor(&name).unwrap_or_else(|_| panic!("{name} missing from {}", file.display()));
        let reference: Vec<f32> =
            view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        assert_eq!(values.len(), reference.len(), "{name}");
        for (x, y) in values.iter().zip(&reference) {
            worst = worst.max((x - y).abs());
        }
    }
    worst
}

#[test]
fn one_lomo_step_from_data_to_weights_equals_the_reference() {
    let (Some(m), Some(batch)) = (model(), reference_batch(0..2)) else { return };
    let Some(reference) = shared("reference/stories260K/lomo_1step.safetensors") else { return };
    // gen_reference.py: Lomo(m, lr=0.05); opt.fused_backward(loss_of(m), 0.05)
    let mut step = FusedStep::new(RuleUpdater::new(Lomo::new(0.0).unwrap()), FusedConfig::default()).unwrap();
    let (m, report) = step.step(m, std::slice::from_ref(&batch), 0.05).unwrap();
    assert!((report.loss - 1.3739631175994873).abs() < 1e-5, "loss {}", report.loss);
    let diff = max_diff_to_reference(&m, &reference);
    assert!(diff <= 1e-5, "after one LOMO step: max abs diff {diff}");
}

#[test]
fn two_micro_batches_of_one_row_equal_one_batch_of_two_on_a_real_llama() {
    let (Some(a), Some(b)) = (model(), model()) else { return };
    let (Some(full), Some(r0), Some(r1)) = (reference_batch(0..2), reference_batch(0..1), reference_batch(1..2)) else {
        return;
    };
    // Rows of different lengths and prompt masks: the mean is over all 61 targets, not per row.
    let new_step = || {
        FusedStep::new(
            RuleUpdater::new(AdaLomoConfig::default().init().unwrap()),
            FusedConfig { clip_grad_norm: Some(1.0), ..Default::default() },
        )
        .unwrap()
    };
    let (mut sa, mut sb) = (new_step(), new_step());
    let (mut a, mut b) = (a.with_loss_chunking(LossChunking::Tokens(16)), b);
    for _ in 0..2 {
        let (na, ra) = sa.step(a, std::slice::from_ref(&full), 0.01).unwrap();
        let (nb, rb) = sb.step(b, &[r0.clone(), r1.clone()], 0.01).unwrap();
        assert_eq!(ra.targets, rb.targets);
        assert!((ra.loss - rb.loss).abs() < 1e-5, "{} vs {}", ra.loss, rb.loss);
        assert!((ra.grad_norm.unwrap() - rb.grad_norm.unwrap()).abs() < 1e-5);
        (a, b) = (na, nb);
    }
    let (wa, wb) = (weights(&a), weights(&b));
    let worst = wa
        .iter()
        .zip(&wb)
        .flat_map(|((_, x), (_, y))| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0f32, f32::max);
    // The second row alone is 27 tokens wide, in the batch it is padded to 40: reductions run
    // over different lengths, so agreement is to rounding (the updates are ~1e-3), as the
    // references' 1e-5.
    assert!(worst <= 1e-5, "micro-batches vs one batch, 2 AdaLomo steps: {worst}");
}

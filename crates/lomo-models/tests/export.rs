//! GGUF export: what `Llama::save_gguf` writes reads back through `GgufFile` as the same
//! model, within the rounding of the tensor type.

use lomo_models::{
    load, GgufExportType, GgufFile, GgufTokenizerModel, GgufTokenizerSpec, Llama, Residency, StorageDtype, TensorSource,
};

use crate::common::{self, max_abs_diff, values, B};

/// A placeholder vocabulary: these tests look at the weights, the CLI's at the tokenizer.
fn tokenizer(vocab: usize) -> GgufTokenizerSpec {
    GgufTokenizerSpec::new(GgufTokenizerModel::Llama, (0..vocab).map(|i| format!("t{i}")).collect(), Vec::new())
}

/// Every HF tensor of a model, by name.
fn tensors(model: &Llama<B>) -> Vec<(String, Vec<f32>)> {
    model.hf_tensors().into_iter().map(|(spec, t)| (spec.name, values(t))).collect()
}

#[test]
fn exported_gguf_reads_back_as_the_model_within_the_types_rounding() {
    let Some(dir) = common::stories260k() else { return };
    let Some(batch) = common::reference_batch() else { return };
    let model = load::<B>(TensorSource::Hf(&dir), Residency::Resident, StorageDtype::F32, &common::device())
        .map(|l| l.model)
        .unwrap();
    let out = common::temp_dir("gguf_export");
    let reference = tensors(&model);
    let logits = values(model.forward(&batch));
    for ty in [GgufExportType::F32, GgufExportType::F16, GgufExportType::Q8_0] {
        let path = out.join(format!("{ty:?}.gguf"));
        model.save_gguf(&path, ty, &tokenizer(model.config().vocab_size), "stories260K").unwrap();
        let file = GgufFile::open(&path).unwrap();
        let back = load::<B>(TensorSource::Gguf(&file), Residency::Resident, StorageDtype::F32, &common::device())
            .map(|l| l.model)
            .unwrap();
        assert_eq!(back.config().num_params(), model.config().num_params());
        for ((name, w), (name_back, w_back)) in reference.iter().zip(tensors(&back)) {
            assert_eq!(name, &name_back);
            let vector = model.hf_tensors().iter().find(|(s, _)| &s.name == name).unwrap().0.shape.len() == 1;
            match (ty, vector) {
                // F32, and the norms of every type (llama.cpp keeps them in F32): exact.
                (GgufExportType::F32, _) | (_, true) => assert_eq!(w, &w_back, "{ty:?} {name}"),
                // IEEE half: round to nearest, relative error at most 2^-11 (normal range).
                (GgufExportType::F16, false) => {
                    for (x, y) in w.iter().zip(&w_back) {
                        assert!((x - y).abs() <= x.abs() * 2f32.powi(-11) + 2f32.powi(-24), "{name}: {x} -> {y}");
                    }
                }
                // Q8_0: per block of 32, steps of d = max|x| / 127 (d itself in f16): at most
                // half a step, plus the step's own f16 rounding times 127.
                (GgufExportType::Q8_0, false) => {
                    for (block, back) in w.chunks(32).zip(w_back.chunks(32)) {
                        let d = block.iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0;
                        for (x, y) in block.iter().zip(back) {
                            assert!(
                                (x - y).abs() <= d * (0.5 + 127.0 * 2f32.powi(-11)) + 1e-7,
                                "{name}: {x} -> {y} (d {d})"
                            );
                        }
                    }
                }
            }
        }
        let diff = max_abs_diff(&logits, &values(back.forward(&batch)));
        let scale = logits.iter().fold(0f32, |m, x| m.max(x.abs()));
        eprintln!("{ty:?}: logits max |diff| {diff:.2e} (largest logit {scale:.1})");
        match ty {
            GgufExportType::F32 => assert_eq!(diff, 0.0),
            // The weight checks above are the exact ones; these catch a model gone wrong (a
            // wrong permutation moves logits by their own size, ~20). Measured on this
            // 64-wide model: 1.65e-2 (f16), 0.59 (q8_0); bounds at about 2.5 times that.
            GgufExportType::F16 => assert!(diff < 0.04, "{diff}"),
            GgufExportType::Q8_0 => assert!(diff < 1.5, "{diff}"),
        }
    }
    std::fs::remove_dir_all(&out).unwrap();
}

//! Peak heap while loading a checkpoint, measured with a counting global allocator (its own
//! test binary so that nothing else allocates meanwhile). Loading must not hold a second copy
//! of the weights: the peak stays within 1.1 × the bytes of the loaded weights.

mod common;

use lomo_io::memory::{live, peak, reset_peak, CountingAllocator};
use lomo_models::{load, GgufFile, Residency, SaveOptions, StorageDtype, TensorSource};

use common::B;

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// The result of `f` and the most heap it held above what was live before it.
fn peak_of<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let before = live();
    reset_peak();
    let result = f();
    (result, peak() - before)
}

fn check(what: &str, peak: usize, weights: u64) {
    let ratio = peak as f64 / weights as f64;
    eprintln!(
        "{what}: peak heap {:.1} MB for {:.1} MB of weights: {ratio:.3} ×",
        peak as f64 / 1e6,
        weights as f64 / 1e6
    );
    assert!(ratio <= 1.1, "{what}: loading peaked at {ratio:.3} × the weights");
}

/// One test, so that no other test's allocations overlap the measurement.
#[test]
fn loading_peaks_at_the_weights() {
    // A checkpoint of 35 M parameters (140 MB in f32), untied, written by this crate.
    let config = common::config_35m();
    let dir = common::temp_dir("load_memory");
    {
        let model = load::<B>(
            TensorSource::Init { config: &config.clone(), seed: 1 },
            Residency::Resident,
            StorageDtype::F32,
            &common::device(),
        )
        .unwrap()
        .model;
        model.save_hf(&dir, &SaveOptions::default()).unwrap();
    }
    // Random initialisation in bf16 makes each tensor in bf16: no transient f32 model.
    let (model, peak) = peak_of(|| {
        load::<B>(
            TensorSource::Init { config: &config.clone(), seed: 1 },
            Residency::Resident,
            StorageDtype::BF16,
            &common::device(),
        )
        .unwrap()
        .model
    });
    check("random init in BF16", peak, config.num_bytes(StorageDtype::BF16));
    drop(model);
    for dtype in [StorageDtype::F32, StorageDtype::BF16] {
        let (model, peak) = peak_of(|| {
            load::<B>(TensorSource::Hf(&dir), Residency::Resident, dtype, &common::device()).map(|l| l.model).unwrap()
        });
        check(&format!("safetensors f32 → {dtype:?}"), peak, config.num_bytes(dtype));
        drop(model);
    }
    std::fs::remove_dir_all(&dir).unwrap();

    // A real quantised checkpoint: SmolLM2-135M-Instruct Q4_1 dequantised to bf16.
    if let Some(path) = common::smol_gguf() {
        let ((model, config), peak) = peak_of(|| {
            let file = GgufFile::open(&path).unwrap();
            let config = file.config().unwrap();
            (
                load::<B>(TensorSource::Gguf(&file), Residency::Resident, StorageDtype::BF16, &common::device())
                    .map(|l| l.model)
                    .unwrap(),
                config,
            )
        });
        check("GGUF Q4_1 → BF16 (tokenizer metadata included)", peak, config.num_bytes(StorageDtype::BF16));
        drop(model);
    }
}

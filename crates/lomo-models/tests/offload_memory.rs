//! Resident weights with `--offload disk`, measured with a counting global allocator (its own
//! test binary, so that nothing else allocates meanwhile): the model outside the store holds
//! placeholders only, and whenever a stage is released, what the step holds above that is at
//! most two stages' weights (the stage that ran and the one read ahead) plus its boundary
//! activations — never the model.

mod common;

use burn::module::ParamId;
use lomo_io::memory::{live, CountingAllocator};
use lomo_models::{load, Batch, DiskStore, Llama, LlamaConfig, Residency, StorageDtype, TensorSource};
use lomo_optim::{FusedConfig, FusedStep, Local, Lomo, OptimError, RuleUpdater, StageStore};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

type AD = burn::backend::Autodiff<common::B>;

/// The disk store, with the live heap read at every release.
struct Probe<'a> {
    store: &'a mut DiskStore,
    baseline: usize,
    most: usize,
    releases: usize,
}

impl StageStore<AD, Llama<AD>> for Probe<'_> {
    fn fetch(&mut self, model: Llama<AD>, stage: usize) -> Result<Llama<AD>, OptimError> {
        self.store.fetch(model, stage)
    }

    fn prefetch(&mut self, stage: usize) -> Result<(), OptimError> {
        StageStore::<AD, Llama<AD>>::prefetch(self.store, stage)
    }

    fn release(&mut self, model: Llama<AD>, stage: usize, updated: &[ParamId]) -> Result<Llama<AD>, OptimError> {
        self.most = self.most.max(live().saturating_sub(self.baseline));
        self.releases += 1;
        self.store.release(model, stage, updated)
    }

    fn end_step(&mut self) -> Result<(), OptimError> {
        StageStore::<AD, Llama<AD>>::end_step(self.store)
    }
}

#[test]
fn resident_weights_never_exceed_two_stages() {
    // 8 blocks of 1.3 M parameters (5.2 MB in f32), untied; one row of 8 tokens, so the
    // boundary activations are a few KB and the weights are what counts.
    let config = LlamaConfig {
        hidden_size: 256,
        intermediate_size: 1024,
        num_layers: 8,
        num_heads: 4,
        num_kv_heads: 4,
        head_dim: 64,
        vocab_size: 2048,
        tie_word_embeddings: false,
        ..lomo_models::presets::preset("stories260K").unwrap()
    };
    let dir = common::temp_dir("offload_memory");
    let before = live();
    let (skeleton, mut store) = load::<AD>(
        TensorSource::Init { config: &config.clone(), seed: 1 },
        Residency::Disk { dir: &dir, step: 0 },
        StorageDtype::F32,
        &common::device(),
    )
    .map(|l| (l.model, l.store.expect("a working copy")))
    .unwrap();
    let largest = (0..skeleton.num_stages()).map(|s| store.stage_bytes(s)).max().unwrap() as usize;
    let model_bytes = config.num_bytes(StorageDtype::F32) as usize;
    assert!(model_bytes > 6 * largest, "the check must be able to fail: {model_bytes} vs {largest}");
    let skeleton_bytes = live() - before;
    eprintln!("skeleton: {skeleton_bytes} bytes of heap for a model of {model_bytes} bytes");
    assert!(skeleton_bytes < largest / 4, "the skeleton holds {skeleton_bytes} bytes");

    let ids: Vec<i64> = (0..8).map(|i| i * 97 % 2000 + 1).collect();
    let batch = Batch::new(ids.clone(), None, Some(ids), [1, 8]).unwrap();
    let mut step = FusedStep::new(
        RuleUpdater::new(Lomo::new(0.0).unwrap()),
        FusedConfig { clip_grad_norm: Some(1.0), ..Default::default() },
    )
    .unwrap();
    // One step first: the matrix products' per-thread packing buffers, which live as long as
    // their threads, are then part of the baseline, not counted as weights.
    let mut model = step.step_stored(skeleton, std::slice::from_ref(&batch), 0.01, &mut Local, &mut store).unwrap().0;
    let mut probe = Probe { store: &mut store, baseline: live(), most: 0, releases: 0 };
    for _ in 0..2 {
        model = step.step_stored(model, std::slice::from_ref(&batch), 0.01, &mut Local, &mut probe).unwrap().0;
    }
    let (most, releases) = (probe.most, probe.releases);
    eprintln!(
        "most held at a release: {most} bytes ({:.2} stages of {largest}), {releases} releases",
        most as f64 / largest as f64
    );
    // Two stages of weights and 512 KiB for the boundaries, the upstream gradient and the
    // step's bookkeeping.
    assert!(most <= 2 * largest + (512 << 10), "held {most} bytes at a release, two stages are {}", 2 * largest);
    assert_eq!(releases, 2 * (3 * skeleton_stages(&config) - 1));
}

fn skeleton_stages(config: &LlamaConfig) -> usize {
    config.num_layers + 2
}

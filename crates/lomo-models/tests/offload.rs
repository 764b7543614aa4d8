//! Weights offloaded while their stage is not running (issue 14): the disk store's working copy
//! and the host store give the resident step bit for bit (f32, fused LOMO with clip-by-norm and
//! AdaLomo, tied and untied heads, 2 micro-batches); a failure between two stages' write-backs
//! leaves every stage file from one step or the other, and a run resumed from the checkpoint
//! before it ends at the uninterrupted run's weights.

use burn::module::AutodiffModule;
use lomo_models::presets::preset;
use lomo_models::{
    load, DiskStore, Llama, LlamaConfig, Residency, SaveOptions, StorageDtype, TensorSource, TrainBackend,
};
use lomo_optim::{
    AdaLomoConfig, FusedConfig, FusedStep, HostStore, Local, Lomo, Resident, RuleUpdater, StageStore, Updater,
};

use crate::common::{temp_dir, values};

type AD = burn::backend::Autodiff<crate::common::B>;

fn config(tied: bool) -> LlamaConfig {
    LlamaConfig { tie_word_embeddings: tied, ..preset("stories260K").unwrap() }
}

fn batches() -> Vec<lomo_models::Batch> {
    let ids: Vec<i64> = (0..24).map(|i| (i * 41 % 500) as i64 + 1).collect();
    let mut labels = ids.clone();
    labels[0..2].fill(-100);
    let a = lomo_models::Batch::new(ids[..12].to_vec(), None, Some(labels[..12].to_vec()), [2, 6]).unwrap();
    let b = lomo_models::Batch::new(ids[12..].to_vec(), None, Some(labels[12..].to_vec()), [2, 6]).unwrap();
    vec![a, b]
}

fn lomo_step() -> FusedStep<RuleUpdater<Lomo>> {
    let fused = FusedConfig { clip_grad_norm: Some(1.0), ..Default::default() };
    FusedStep::new(RuleUpdater::new(Lomo::new(0.01).unwrap()), fused).unwrap()
}

fn adalomo_step() -> FusedStep<RuleUpdater<lomo_optim::AdaLomo<crate::common::B>>> {
    let rule = AdaLomoConfig::default().init::<crate::common::B>().unwrap();
    FusedStep::new(RuleUpdater::new(rule), FusedConfig::default()).unwrap()
}

/// `n` steps with `store`; the losses.
fn run<U: Updater<AD, Llama<AD>>>(
    mut model: Llama<AD>,
    step: &mut FusedStep<U>,
    store: &mut dyn StageStore<AD, Llama<AD>>,
    n: usize,
) -> (Llama<AD>, Vec<f64>) {
    let batches = batches();
    let mut losses = Vec::new();
    for _ in 0..n {
        let (next, report) = step.step_stored(model, &batches, 0.05, &mut Local, store).unwrap();
        losses.push(report.loss);
        model = next;
    }
    (model, losses)
}

fn weights<B: TrainBackend>(model: &Llama<B>) -> Vec<(String, Vec<f32>)> {
    model.valid().hf_tensors().into_iter().map(|(spec, t)| (spec.name, values(t))).collect()
}

fn assert_same(got: &[(String, Vec<f32>)], want: &[(String, Vec<f32>)], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for ((name, g), (_, w)) in got.iter().zip(want) {
        assert!(g == w, "{what}: `{name}` is not bit for bit the resident run's");
    }
}

/// The weights of a working copy, through an HF checkpoint written from it.
fn saved_weights(store: &DiskStore, skeleton: &Llama<AD>, name: &str) -> Vec<(String, Vec<f32>)> {
    let dir = temp_dir(name);
    store.save_hf(skeleton, &dir, &SaveOptions::default()).unwrap();
    let model = load::<AD>(TensorSource::Hf(&dir), Residency::Resident, StorageDtype::F32, &crate::common::device())
        .map(|l| l.model)
        .unwrap();
    weights(&model)
}

#[test]
fn disk_and_host_offload_equal_the_resident_step_bit_for_bit() {
    let device = crate::common::device();
    for tied in [true, false] {
        for optimizer in ["lomo", "adalomo"] {
            let what = format!("{optimizer}, tied {tied}");
            let three = |model: Llama<AD>, store: &mut dyn StageStore<AD, Llama<AD>>| match optimizer {
                "lomo" => run(model, &mut lomo_step(), store, 3),
                _ => run(model, &mut adalomo_step(), store, 3),
            };
            let resident = load::<AD>(
                TensorSource::Init { config: &config(tied), seed: 5 },
                Residency::Resident,
                StorageDtype::F32,
                &device,
            )
            .unwrap()
            .model;
            let (resident, want_losses) = three(resident, &mut Resident);
            let want = weights(&resident);

            // Disk: the working copy made by random init straight into the store.
            let dir = temp_dir(&format!("offload-{optimizer}-{tied}"));
            let (skeleton, mut store) = load::<AD>(
                TensorSource::Init { config: &config(tied), seed: 5 },
                Residency::Disk { dir: &dir, step: 0 },
                StorageDtype::F32,
                &device,
            )
            .map(|l| (l.model, l.store.expect("a working copy")))
            .unwrap();
            let (skeleton, losses) = three(skeleton, &mut store);
            assert_eq!(losses, want_losses, "{what}: disk losses");
            assert_eq!(store.step(), 3);
            let copy = DiskStore::inspect(&dir).unwrap();
            assert!(!copy.interrupted() && copy.step == 3 && copy.stage_steps.iter().all(|&s| s == 3), "{copy:?}");
            let io = store.io();
            let bytes = config(tied).num_bytes(StorageDtype::F32);
            // Each step writes every weight back once, and reads what each stage reads in the
            // forward pass (not the loss stage), the norm pass (LOMO here clips by norm) and the
            // updating pass.
            let n = skeleton.num_stages();
            let forward: u64 = (0..n - 1).map(|s| store.stage_bytes(s)).sum();
            let all: u64 = (0..n).map(|s| store.stage_bytes(s)).sum();
            assert_eq!(io.written, 3 * bytes, "{what}: {io:?}");
            let passes = if optimizer == "lomo" { 2 } else { 1 };
            assert_eq!(io.read, 3 * (forward + passes * all), "{what}: {io:?}");
            assert_same(
                &saved_weights(&store, &skeleton, &format!("offload-saved-{optimizer}-{tied}")),
                &want,
                &format!("{what}, disk"),
            );

            // Host: the same code path, every move the identity on the CPU.
            let model = load::<AD>(
                TensorSource::Init { config: &config(tied), seed: 5 },
                Residency::Resident,
                StorageDtype::F32,
                &device,
            )
            .unwrap()
            .model;
            let (model, mut host) = HostStore::new::<AD, _, 3>(model, Some(crate::common::device())).unwrap();
            assert_eq!(host.held_bytes() as u64, bytes);
            let (model, losses) = three(model, &mut host);
            assert_eq!(losses, want_losses, "{what}: host losses");
            let model = host.fetch_all(model).unwrap();
            assert_same(&weights(&model), &want, &format!("{what}, host"));
        }
    }
}

#[test]
fn a_working_copy_made_from_an_hf_checkpoint_trains_as_the_checkpoint_does() {
    let device = crate::common::device();
    let source = temp_dir("offload-source");
    load::<AD>(TensorSource::Init { config: &config(false), seed: 9 }, Residency::Resident, StorageDtype::F32, &device)
        .unwrap()
        .model
        .save_hf(&source, &SaveOptions::default())
        .unwrap();
    let resident = load::<AD>(TensorSource::Hf(&source), Residency::Resident, StorageDtype::F32, &device)
        .map(|l| l.model)
        .unwrap();
    let (resident, _) = run(resident, &mut lomo_step(), &mut Resident, 2);
    let dir = temp_dir("offload-from-hf");
    let (skeleton, mut store) =
        load::<AD>(TensorSource::Hf(&source), Residency::Disk { dir: &dir, step: 0 }, StorageDtype::F32, &device)
            .map(|l| (l.model, l.store.expect("a working copy")))
            .unwrap();
    let (skeleton, _) = run(skeleton, &mut lomo_step(), &mut store, 2);
    assert_same(&saved_weights(&store, &skeleton, "offload-from-hf-saved"), &weights(&resident), "from HF");
    // The user's checkpoint is read, never written.
    let again = load::<AD>(TensorSource::Hf(&source), Residency::Resident, StorageDtype::F32, &device)
        .map(|l| l.model)
        .unwrap();
    let init = load::<AD>(
        TensorSource::Init { config: &config(false), seed: 9 },
        Residency::Resident,
        StorageDtype::F32,
        &device,
    )
    .unwrap()
    .model;
    assert_same(&weights(&again), &weights(&init), "the source checkpoint");
    // A directory holding other files is never made a working copy.
    let err =
        load::<AD>(TensorSource::Hf(&source), Residency::Disk { dir: &source, step: 0 }, StorageDtype::F32, &device)
            .map(|l| (l.model, l.store.expect("a working copy")))
            .unwrap_err()
            .to_string();
    assert!(err.contains("not part of a lomo working copy"), "{err}");
}

#[test]
fn a_failure_between_write_backs_then_resuming_from_the_checkpoint_ends_at_the_same_weights() {
    let device = crate::common::device();
    let (uninterrupted, _) = run(
        load::<AD>(
            TensorSource::Init { config: &config(true), seed: 2 },
            Residency::Resident,
            StorageDtype::F32,
            &device,
        )
        .unwrap()
        .model,
        &mut lomo_step(),
        &mut Resident,
        3,
    );

    let dir = temp_dir("offload-crash");
    let (skeleton, mut store) = load::<AD>(
        TensorSource::Init { config: &config(true), seed: 2 },
        Residency::Disk { dir: &dir, step: 0 },
        StorageDtype::F32,
        &device,
    )
    .map(|l| (l.model, l.store.expect("a working copy")))
    .unwrap();
    let mut step = lomo_step();
    let (skeleton, _) = run(skeleton, &mut step, &mut store, 1);
    let checkpoint = temp_dir("offload-crash-checkpoint");
    store.save_hf(&skeleton, &checkpoint, &SaveOptions::default()).unwrap();
    // Step 2 stops after 3 of its stages were written back.
    store.fail_after_writes(3);
    let err = step.step_stored(skeleton, &batches(), 0.05, &mut Local, &mut store).unwrap_err().to_string();
    assert!(err.contains("injected failure"), "{err}");
    drop(store);
    let copy = DiskStore::inspect(&dir).unwrap();
    assert!(copy.interrupted(), "{copy:?}");
    assert_eq!(copy.step, 1);
    let stages = copy.stage_steps.len();
    assert_eq!(copy.stage_steps.iter().filter(|&&s| s == 2).count(), 3, "{copy:?}");
    assert_eq!(copy.stage_steps.iter().filter(|&&s| s == 1).count(), stages - 3, "{copy:?}");

    // Resume: a new working copy from the checkpoint of step 1, then steps 2 and 3.
    let (skeleton, mut store) =
        load::<AD>(TensorSource::Hf(&checkpoint), Residency::Disk { dir: &dir, step: 1 }, StorageDtype::F32, &device)
            .map(|l| (l.model, l.store.expect("a working copy")))
            .unwrap();
    assert_eq!(store.step(), 1);
    let (skeleton, _) = run(skeleton, &mut step, &mut store, 2);
    assert_eq!(store.step(), 3);
    assert_same(&saved_weights(&store, &skeleton, "offload-crash-final"), &weights(&uninterrupted), "resumed");
}

#[test]
fn a_working_copy_made_from_a_gguf_file_holds_its_weights() {
    let Some(path) = crate::common::smol_gguf() else { return };
    let device = crate::common::device();
    let gguf = lomo_models::GgufFile::open(&path).unwrap();
    let resident = load::<AD>(TensorSource::Gguf(&gguf), Residency::Resident, StorageDtype::BF16, &device)
        .map(|l| l.model)
        .unwrap();
    let dir = temp_dir("offload-gguf");
    let (skeleton, store) =
        load::<AD>(TensorSource::Gguf(&gguf), Residency::Disk { dir: &dir, step: 0 }, StorageDtype::BF16, &device)
            .map(|l| (l.model, l.store.expect("a working copy")))
            .unwrap();
    assert_eq!(store.step(), 0);
    let saved = temp_dir("offload-gguf-saved");
    store.save_hf(&skeleton, &saved, &SaveOptions::default()).unwrap();
    let reloaded = load::<AD>(TensorSource::Hf(&saved), Residency::Resident, StorageDtype::BF16, &device)
        .map(|l| l.model)
        .unwrap();
    assert_same(&weights(&reloaded), &weights(&resident), "from GGUF");
}

#[test]
fn offload_composes_with_stages_placed_on_devices() {
    // The CPU device repeated: the placement code runs, the store puts each stage's weights
    // on the device its placeholders name.
    let device = crate::common::device();
    let placement =
        lomo_models::Placement::from_assignment(&crate::common::devices::<3>(), &[0, 0, 1, 1, 1, 2, 2]).unwrap();
    let (resident, _) = run(
        load::<AD>(
            TensorSource::Init { config: &config(false), seed: 4 },
            Residency::Resident,
            StorageDtype::F32,
            &device,
        )
        .unwrap()
        .model,
        &mut lomo_step(),
        &mut Resident,
        2,
    );
    let dir = temp_dir("offload-placed");
    let (skeleton, mut store) = load::<AD>(
        TensorSource::Init { config: &config(false), seed: 4 },
        Residency::Disk { dir: &dir, step: 0 },
        StorageDtype::F32,
        &placement,
    )
    .map(|l| (l.model, l.store.expect("a working copy")))
    .unwrap();
    assert_eq!(skeleton.placement(), placement);
    let (skeleton, _) = run(skeleton, &mut lomo_step(), &mut store, 2);
    assert_eq!(skeleton.placement(), placement, "placeholders keep their stage's device");
    assert_same(&saved_weights(&store, &skeleton, "offload-placed-saved"), &weights(&resident), "placed and offloaded");
}

//! Stages placed on devices (issue 13, part 1): the placement code run with every "device" the
//! same one — the CPU backend has one — gives the unplaced step bit for bit, for fused LOMO with
//! clip-by-norm and for AdaLomo, tied and untied heads, built placed by the loader or moved.
//! The planner's split is what places the stages. On a machine with a CUDA device the same
//! checks run with `cuda:0` repeated (build with `--features cuda`); without one they skip,
//! saying so.

use burn::module::AutodiffModule;
use lomo_models::plan::{PlanConfig, PlanOptimizer, StepMode};
use lomo_models::presets::preset;
use lomo_models::{
    load, Batch, Llama, LlamaConfig, LossChunking, Placement, Residency, StorageDtype, TensorSource, TrainBackend,
};
use lomo_optim::{AdaLomoConfig, FusedConfig, FusedStep, Lomo, RuleUpdater, Updater};

use crate::common::values;

fn config(tied: bool) -> LlamaConfig {
    LlamaConfig { tie_word_embeddings: tied, ..preset("stories260K").unwrap() }
}

fn batches() -> Vec<Batch> {
    // Two micro-batches with padding and a prompt that is not trained on.
    let ids: Vec<i64> = (0..24).map(|i| (i * 37 % 500) as i64 + 1).collect();
    let mut labels = ids.clone();
    labels[0..3].fill(-100);
    let mut mask = [1; 24];
    mask[22..].fill(0);
    labels[22..].fill(-100);
    let a = Batch::new(ids[..12].to_vec(), Some(mask[..12].to_vec()), Some(labels[..12].to_vec()), [2, 6]).unwrap();
    let b = Batch::new(ids[12..].to_vec(), Some(mask[12..].to_vec()), Some(labels[12..].to_vec()), [2, 6]).unwrap();
    vec![a, b]
}

/// The planner's split of `config`'s stages over `n` devices, as a placement on `devices`.
fn planned<D: Clone>(config: &LlamaConfig, devices: &[D]) -> Placement<D> {
    let plan = PlanConfig {
        model: config.clone(),
        dtype: StorageDtype::F32,
        optimizer: PlanOptimizer::Lomo,
        mode: StepMode::Fused,
        batch_size: 4,
        micro_batch_size: 2,
        max_tokens: 6,
        loss_chunking: LossChunking::Tokens(5),
        f64_cast_staging: true,
    }
    .plan_devices(devices.len())
    .unwrap();
    // Every device gets a range, so the test crosses every boundary kind (embedding | blocks |
    // head).
    let used: std::collections::BTreeSet<usize> = plan.assignment.iter().copied().collect();
    assert_eq!(used.len(), devices.len(), "{plan}");
    Placement::from_assignment(devices, &plan.assignment).unwrap()
}

fn steps<B: TrainBackend, U: Updater<B, Llama<B>>>(
    mut model: Llama<B>,
    mut step: FusedStep<U>,
    lr: f64,
) -> (Llama<B>, Vec<f64>) {
    let batches = batches();
    let mut losses = Vec::new();
    for _ in 0..3 {
        let (next, report) = step.step(model, &batches, lr).unwrap();
        losses.push(report.loss);
        model = next;
    }
    (model, losses)
}

fn weights<B: TrainBackend>(model: &Llama<B>) -> Vec<(String, Vec<f32>)> {
    model.valid().hf_tensors().into_iter().map(|(spec, t)| (spec.name, values(t))).collect()
}

/// Fused LOMO (clip-by-norm) and AdaLomo, 3 steps on 2 micro-batches: placed on `devices`
/// (built placed, and moved) equals everything on `devices[0]`, bit for bit.
fn placed_equals_unplaced<B: TrainBackend>(devices: &[B::Device]) {
    for tied in [true, false] {
        let config = config(tied);
        let placement = planned(&config, devices);
        for optimizer in ["lomo", "adalomo"] {
            let run = |model: Llama<B>| match optimizer {
                "lomo" => {
                    let fused = FusedConfig { clip_grad_norm: Some(1.0), ..Default::default() };
                    steps(model, FusedStep::new(RuleUpdater::new(Lomo::new(0.01).unwrap()), fused).unwrap(), 0.05)
                }
                _ => {
                    let rule = AdaLomoConfig::default().init::<B::InnerBackend>().unwrap();
                    steps(model, FusedStep::new(RuleUpdater::new(rule), FusedConfig::default()).unwrap(), 0.01)
                }
            };
            let plain = load::<B>(
                TensorSource::Init { config: &config.clone(), seed: 3 },
                Residency::Resident,
                StorageDtype::F32,
                &devices[0],
            )
            .unwrap()
            .model;
            let built = load::<B>(
                TensorSource::Init { config: &config.clone(), seed: 3 },
                Residency::Resident,
                StorageDtype::F32,
                &placement,
            )
            .unwrap()
            .model;
            assert_eq!(built.placement(), placement);
            let moved = load::<B>(
                TensorSource::Init { config: &config.clone(), seed: 3 },
                Residency::Resident,
                StorageDtype::F32,
                &devices[0],
            )
            .unwrap()
            .model
            .place(&placement)
            .unwrap();
            assert_eq!(moved.placement(), placement);
            let (plain, plain_losses) = run(plain);
            let expected = weights(&plain);
            for (what, model) in [("built placed", built), ("moved", moved)] {
                let (model, losses) = run(model);
                assert_eq!(losses, plain_losses, "{optimizer}, tied {tied}, {what}: losses");
                assert_eq!(model.placement(), placement, "the step keeps each stage on its device");
                for ((name, got), (_, want)) in weights(&model).iter().zip(&expected) {
                    assert!(
                        got == want,
                        "{optimizer}, tied {tied}, {what}: `{name}` is not bit for bit the unplaced step's"
                    );
                }
            }
        }
    }
}

#[test]
fn stages_placed_on_the_cpu_device_repeated_equal_the_unplaced_step_bit_for_bit() {
    placed_equals_unplaced::<burn::backend::Autodiff<crate::common::B>>(&crate::common::devices::<3>());
}

#[test]
fn a_placement_that_does_not_fit_the_model_is_an_error() {
    let device = crate::common::device();
    let model = load::<crate::common::B>(
        TensorSource::Init { config: &config(true), seed: 3 },
        Residency::Resident,
        StorageDtype::F32,
        &device,
    )
    .unwrap()
    .model;
    let err = model.place(&Placement::single(crate::common::device(), 4)).unwrap_err().to_string();
    assert!(err.contains("4 stages") && err.contains("7"), "{err}");
    let err = Placement::from_assignment(&crate::common::devices::<2>(), &[0, 1, 0]).unwrap_err().to_string();
    assert!(err.contains("stage 2") && err.contains("in order"), "{err}");
    let err = Placement::from_assignment(&crate::common::devices::<2>(), &[0, 2]).unwrap_err().to_string();
    assert!(err.contains("device 2"), "{err}");
    // The loaders check a placement against the checkpoint's layers before reading a tensor.
    let placement = Placement::single(device, 3);
    let Some(dir) = crate::common::stories260k() else { return };
    let err =
        load::<crate::common::B>(TensorSource::Hf(dir.as_ref()), Residency::Resident, StorageDtype::F32, &placement)
            .map(|l| l.model)
            .unwrap_err()
            .to_string();
    assert!(err.contains("placement"), "{err}");
}

/// `cuda:0` repeated, where a CUDA device is at hand.
#[cfg(feature = "cuda")]
#[test]
fn stages_placed_on_cuda_0_repeated_equal_the_unplaced_step_bit_for_bit() {
    if !std::path::Path::new("/dev/nvidia0").exists() {
        eprintln!("skipped: no CUDA device here (/dev/nvidia0 is missing)");
        return;
    }
    use burn::tensor::backend::Backend;
    type Cuda = burn::backend::Cuda;
    if <Cuda as Backend>::device_count(0) == 0 {
        eprintln!("skipped: CUDA reports no device");
        return;
    }
    let device = burn::backend::cuda::CudaDevice::new(0);
    placed_equals_unplaced::<burn::backend::Autodiff<Cuda>>(&[device.clone(), device.clone(), device]);
}

/// `Module::to_device` would leave each weight a node of the move (not a leaf that requires its
/// gradient), and the fused step would see no gradient for it: `place` forks.
#[test]
fn moved_parameters_still_require_their_gradients() {
    use burn::module::{Module, ModuleVisitor, Param};
    type AD = burn::backend::Autodiff<crate::common::B>;
    struct Leaves(Vec<bool>);
    impl ModuleVisitor<AD> for Leaves {
        fn visit_float<const D: usize>(&mut self, p: &Param<burn::tensor::Tensor<AD, D>>) {
            self.0.push(p.val().is_require_grad());
        }
    }
    let device = crate::common::device();
    let model = load::<AD>(
        TensorSource::Init { config: &config(true), seed: 3 },
        Residency::Resident,
        StorageDtype::F32,
        &device,
    )
    .unwrap()
    .model
    .place(&Placement::single(device, 7))
    .unwrap();
    let mut leaves = Leaves(Vec::new());
    model.visit(&mut leaves);
    assert!(!leaves.0.is_empty() && leaves.0.iter().all(|&r| r), "{:?}", leaves.0);
}

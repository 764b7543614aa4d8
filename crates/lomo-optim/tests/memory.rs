//! Peak live heap of one step, from a counting global allocator (deterministic, so it can
//! be asserted), on a model of over 100M parameters in f32:
//! fused LOMO ≤ 1.2 × parameter bytes, full backward + SGD ≥ 1.9 ×, + AdamW ≥ 3.9 ×.
//!
//! Its own test binary, because the allocator is process-wide; the cases run one after the
//! other in one test so nothing else allocates meanwhile.

mod common;

use burn::module::ParamId;
use burn::optim::{AdamWConfig, SgdConfig};
use burn::tensor::{DType, Distribution, Tensor};
use lomo_io::memory::{live, peak, reset_peak, CountingAllocator};
use lomo_kernels::blocks;
use lomo_optim::{full_backward_step, FusedConfig, FusedStep, GradPrep, Lomo, RuleUpdater, UpdateRule};

use common::backend::{device, Inner, TestBackend as TB, HEAP_VISIBLE, SUPPORTS_F16};
use common::model::{batch, TiedMlp};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

const VOCAB: usize = 2048;
const HIDDEN: usize = 2048;
const BLOCKS: usize = 24;

/// Each case is measured on its second step: an optimizer's state is created during its
/// first one and lives from then on, so the second is the steady state a training run sees.
///
/// Peak live heap during `run`, relative to the bytes of the model's parameters.
fn peak_ratio(param_bytes: usize, run: impl FnOnce()) -> f64 {
    reset_peak();
    run();
    peak() as f64 / param_bytes as f64
}

#[test]
fn fused_lomo_holds_one_copy_of_the_weights_and_the_baselines_do_not() {
    if !HEAP_VISIBLE {
        eprintln!(
            "skipped: this backend allocates outside Rust's global allocator; measure it with `cargo xtask profile`"
        );
        return;
    }
    let b = batch(4, VOCAB, 1);
    let new_model = || TiedMlp::<TB>::new(VOCAB, HIDDEN, BLOCKS, 3, &device());
    let model = new_model();
    let params: usize = burn::module::Module::num_params(&model);
    assert!(params >= 100_000_000, "{params} parameters");
    let param_bytes = params * 4;

    let mut fused = FusedStep::new(RuleUpdater::new(Lomo::new(0.0).unwrap()), FusedConfig::default()).unwrap();
    let (model, _) = fused.step(model, std::slice::from_ref(&b), 0.01).unwrap();
    let mut model = Some(model);
    let lomo = peak_ratio(param_bytes, || {
        let (m, _) = fused.step(model.take().unwrap(), std::slice::from_ref(&b), 0.01).unwrap();
        drop(m);
    });

    let mut sgd = SgdConfig::new().init();
    let (m, _) = full_backward_step::<TB, _, _, 2>(new_model(), std::slice::from_ref(&b), &mut sgd, 0.01).unwrap();
    let mut model = Some(m);
    let sgd_ratio = peak_ratio(param_bytes, || {
        let (m, _) =
            full_backward_step::<TB, _, _, 2>(model.take().unwrap(), std::slice::from_ref(&b), &mut sgd, 0.01).unwrap();
        drop(m);
    });

    let mut adamw = AdamWConfig::new().init();
    let (m, _) = full_backward_step::<TB, _, _, 2>(new_model(), std::slice::from_ref(&b), &mut adamw, 0.01).unwrap();
    let mut model = Some(m);
    let adamw_ratio = peak_ratio(param_bytes, || {
        let (m, _) =
            full_backward_step::<TB, _, _, 2>(model.take().unwrap(), std::slice::from_ref(&b), &mut adamw, 0.01)
                .unwrap();
        drop(m);
    });

    eprintln!(
        "peak live heap / parameter bytes ({params} parameters, f32): fused LOMO {lomo:.3}, full backward + SGD {sgd_ratio:.3}, full backward + AdamW {adamw_ratio:.3}"
    );
    assert!(lomo <= 1.2, "fused LOMO peak {lomo:.3} × parameter bytes");
    assert!(sgd_ratio >= 1.9, "full backward + SGD peak {sgd_ratio:.3} ×");
    assert!(adamw_ratio >= 3.9, "full backward + AdamW peak {adamw_ratio:.3} ×");

    // LOMO on a large bf16 weight, as the fused step applies it (row blocks): beyond the
    // weight and its gradient, the new value (2 bytes per element) and a few blocks of
    // working memory. The whole-tensor update holds f32 copies of both (8 bytes per element),
    // plus Flex's f64 staging copy in each cast (8 more).
    if SUPPORTS_F16 {
        let dims = [4096, 8192];
        let new = |mean| Tensor::<Inner, 2>::random(dims, Distribution::Normal(mean, 1.0), &device()).cast(DType::BF16);
        let (p, g) = (new(0.0), new(0.1));
        let mut rule = Lomo::new(0.01).unwrap();
        let prep = GradPrep::default();
        let id = ParamId::new();
        let before = live();
        reset_peak();
        let p = blocks::map_rows(p, &g, |p, g| UpdateRule::<Inner>::update(&mut rule, id, p, prep.apply(g), 0.01));
        let extra = peak() - before;
        assert_eq!(p.dtype(), DType::BF16);
        eprintln!(
            "bf16 LOMO update of {} elements in row blocks: {extra} bytes beyond weight and gradient",
            dims[0] * dims[1]
        );
        let weight_bytes = dims[0] * dims[1] * 2;
        assert!(
            extra <= weight_bytes + 32 * blocks::BLOCK_ELEMS,
            "{extra} bytes of working memory for a {weight_bytes}-byte weight"
        );
    }
}

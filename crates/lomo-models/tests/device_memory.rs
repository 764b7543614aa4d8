//! Device memory of a model on a cubecl backend, read from cubecl's own counters (its memory
//! management is the same code on CUDA and wgpu; wgpu on Mesa's software Vulkan runs here, with
//! `--features test-wgpu`). Its own test binary, so that nothing else allocates on the device
//! meanwhile. Without the feature the tests run on the CPU backend, which has no device pool:
//! there is nothing to count, and the binary holds no test.

#![cfg(feature = "test-wgpu")]

mod common;

use burn::cubecl::wgpu::WgpuRuntime;
use burn::cubecl::Runtime;
use lomo_models::plan::{PlanConfig, PlanOptimizer, StepMode};
use lomo_models::{load, Batch, Llama, LlamaConfig, LossChunking, Residency, StorageDtype, TensorSource};
use lomo_optim::{FusedConfig, FusedStep, Lomo, RuleUpdater};

use common::{AD, B};

/// What cubecl's pools hold on the test device: (bytes in use, bytes reserved).
fn usage() -> (u64, u64) {
    let usage = WgpuRuntime::client(&common::device()).memory_usage().unwrap();
    (usage.bytes_in_use, usage.bytes_reserved)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

/// The 35 M-parameter model of [`common::config_35m`] on the test device, in f32, from its seed.
fn load_35m<X: lomo_kernels::FusedKernels<Device = burn::tensor::Device<B>>>() -> (LlamaConfig, Llama<X>) {
    let config = common::config_35m();
    let model = load::<X>(
        TensorSource::Init { config: &config, seed: 1 },
        Residency::Resident,
        StorageDtype::F32,
        &common::device(),
    )
    .unwrap()
    .model;
    (config, model)
}

/// One test, so that nothing else allocates on the device while it measures.
#[test]
fn device_memory_of_a_load_and_of_fused_steps() {
    loaded_weights_take_their_own_bytes_of_device_memory();
    fused_steps_reserve();
}

/// The weights are buffers of their own size (cubecl's persistent memory, as burn's
/// `Param::from_data` allocates): after a load the device holds the weights' bytes and at most
/// one alignment of padding per tensor, not pages of the pools (which hold up to a page of
/// slack each).
fn loaded_weights_take_their_own_bytes_of_device_memory() {
    let (in_use_before, reserved_before) = usage();
    let (config, model) = load_35m::<B>();
    let (in_use, reserved) = usage();
    let (in_use, reserved) = (in_use - in_use_before, reserved - reserved_before);
    let weights = config.num_bytes(StorageDtype::F32);
    let tensors = config.tensor_specs().len() as u64;
    eprintln!(
        "weights {:.2} MiB in {tensors} tensors: in use {:.2} MiB, reserved {:.2} MiB",
        mib(weights),
        mib(in_use),
        mib(reserved)
    );
    // wgpu's storage alignment is at most 256 bytes.
    assert!(in_use >= weights && in_use <= weights + 256 * tensors, "in use {in_use} for {weights} of weights");
    assert!(reserved <= in_use + 256 * tensors, "reserved {reserved} for {in_use} in use");
    drop(model);
}

/// Fused LOMO steps, batch 2 × 128, leave the device holding the weights and nothing else (the
/// update writes each weight's own buffer; every transient is freed); what the pools reserved
/// meanwhile is printed beside the planner's peak.
fn fused_steps_reserve() {
    let (batch, tokens) = (2, 128);
    let (in_use_before, reserved_before) = usage();
    let (config, model) = load_35m::<AD>();
    let (in_use_loaded, _) = usage();
    let ids: Vec<i64> = (0..batch * tokens).map(|i| (i * 7919 % config.vocab_size) as i64).collect();
    let batch_data = Batch::new(ids.clone(), None, Some(ids), [batch, tokens]).unwrap();
    let mut step = FusedStep::new(RuleUpdater::new(Lomo::new(0.0).unwrap()), FusedConfig::default()).unwrap();
    let mut model = model;
    for _ in 0..2 {
        model = step.step(model, std::slice::from_ref(&batch_data), 1e-3).unwrap().0;
    }
    let (in_use, reserved) = usage();
    let plan = PlanConfig {
        model: config.clone(),
        dtype: StorageDtype::F32,
        optimizer: PlanOptimizer::Lomo,
        mode: StepMode::Fused,
        batch_size: batch,
        micro_batch_size: batch,
        max_tokens: tokens,
        loss_chunking: LossChunking::default(),
        f64_cast_staging: false,
    }
    .plan()
    .unwrap();
    eprintln!(
        "2 fused LOMO steps, {batch} × {tokens}: in use after {:.2} MiB, reserved {:.2} MiB more than before the load; plan: weights {:.2} MiB, peak {:.2} MiB",
        mib(in_use - in_use_before),
        mib(reserved - reserved_before),
        mib(plan.weights),
        mib(plan.total)
    );
    assert_eq!(in_use, in_use_loaded, "the steps left {} bytes on the device", in_use as i64 - in_use_loaded as i64);
    drop(model);
}

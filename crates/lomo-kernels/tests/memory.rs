//! A bf16 Linear's forward and backward make no f32 tensor of the weight's size: the products
//! run on AMX tiles or on f32 panels of at most 2^18 elements, and the weight gradient is rounded
//! to bf16 panel by panel (issue "bf16 compute"). Measured with a counting allocator, alone in
//! this test binary.

use burn::backend::{Autodiff, Flex};
use burn::tensor::{DType, Distribution, Tensor};
use lomo_io::memory::{self, CountingAllocator};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

type AD = Autodiff<Flex>;

#[test]
fn bf16_linear_allocates_no_f32_copy_of_its_weight() {
    let device = Default::default();
    let (rows, inner, out) = (64, 2048, 4096);
    let w = Tensor::<Flex, 2>::random([inner, out], Distribution::Normal(0.0, 0.02), &device).cast(DType::BF16);
    let x = Tensor::<Flex, 2>::random([rows, inner], Distribution::Normal(0.0, 1.0), &device).cast(DType::BF16);
    let g = Tensor::<Flex, 2>::random([rows, out], Distribution::Normal(0.0, 1.0), &device).cast(DType::BF16);
    let weight_f32 = inner * out * 4;
    let weight_bf16 = inner * out * 2;

    let (wa, xa) = (Tensor::<AD, 2>::from_inner(w).require_grad(), Tensor::<AD, 2>::from_inner(x).require_grad());
    let before = memory::live();
    memory::reset_peak();
    let y = lomo_kernels::linear(xa.clone(), wa.clone(), None);
    let mut grads = (y * Tensor::from_inner(g)).sum().backward();
    let dw = wa.grad_remove(&mut grads).expect("a weight gradient");
    let extra = memory::peak() - before;
    assert_eq!(dw.dtype(), DType::BF16);
    eprintln!(
        "bf16 Linear {rows}×{inner}×{out} ({}): peak {:.1} MiB above the inputs; weight {:.1} MiB in bf16, {:.1} MiB in f32",
        lomo_kernels::cpu_bf16_matmul(),
        extra as f64 / 1048576.0,
        weight_bf16 as f64 / 1048576.0,
        weight_f32 as f64 / 1048576.0
    );
    // The bf16 gradient itself, the activations (`rows × in`, `rows × out`, bf16 and f32 ones)
    // and a few panels per thread: well under one f32 copy of the weight.
    let activations = rows * (inner + out) * (2 + 4) * 2;
    assert!(extra <= weight_bf16 + activations + (8 << 20), "{extra} bytes above the inputs");
    assert!(
        extra < weight_bf16 + weight_f32 / 2,
        "an f32 copy of the weight would be {weight_f32} bytes; the peak was {extra} above the inputs"
    );
}

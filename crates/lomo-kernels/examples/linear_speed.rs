//! The bf16 Linear's speed on the shapes of a LLaMA step, forward and backward, in GFLOP/s:
//! `cargo run --release -p lomo-kernels --example linear_speed [rows] [reps]`
//! (`LOMO_NO_AMX=1` for the f32-panel path, `RAYON_NUM_THREADS` for the threads).

use std::time::Instant;

use burn::backend::{Autodiff, Flex};
use burn::tensor::{DType, Distribution, Tensor};

type AD = Autodiff<Flex>;

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("rows and reps are numbers")).collect();
    let rows = args.first().copied().unwrap_or(512);
    let reps = args.get(1).copied().unwrap_or(5);
    let device = Default::default();
    println!("bf16 products: {}, {rows} rows", lomo_kernels::cpu_bf16_matmul());
    println!("{:>6} {:>6} | {:>10} {:>10}", "in", "out", "fwd GF/s", "bwd GF/s");
    for (inner, out) in [(768, 768), (768, 2048), (2048, 768), (768, 32000), (4096, 4096), (4096, 11008), (11008, 4096)]
    {
        let bf = |shape: [usize; 2], std: f64| {
            Tensor::<Flex, 2>::random(shape, Distribution::Normal(0.0, std), &device).cast(DType::BF16)
        };
        let (w, x, g) = (bf([inner, out], 0.02), bf([rows, inner], 1.0), bf([rows, out], 1.0));
        let flops = 2.0 * (rows * inner * out) as f64;
        let (mut fwd, mut bwd) = (f64::MAX, f64::MAX);
        for _ in 0..reps {
            let t = Instant::now();
            let y = lomo_kernels::linear(x.clone(), w.clone(), None);
            let _ = y.into_data();
            fwd = fwd.min(t.elapsed().as_secs_f64());
            let (wa, xa) = (
                Tensor::<AD, 2>::from_inner(w.clone()).require_grad(),
                Tensor::<AD, 2>::from_inner(x.clone()).require_grad(),
            );
            let y = lomo_kernels::linear(xa.clone(), wa.clone(), None);
            let loss = (y * Tensor::from_inner(g.clone())).sum();
            let t = Instant::now();
            let mut grads = loss.backward();
            let _ = wa.grad_remove(&mut grads).map(|t| t.into_data());
            let _ = xa.grad_remove(&mut grads).map(|t| t.into_data());
            bwd = bwd.min(t.elapsed().as_secs_f64());
        }
        println!("{inner:>6} {out:>6} | {:>10.0} {:>10.0}", flops / fwd / 1e9, 2.0 * flops / bwd / 1e9);
    }
}

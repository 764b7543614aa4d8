//! The CubeCL kernels (`src/cube/`) on burn's wgpu backend against the reference compositions
//! of burn's ops on the same backend, in f32 (WGSL has no bf16). On a machine without a GPU
//! this runs on Mesa's software Vulkan (lavapipe: `apt-get install mesa-vulkan-drivers
//! libvulkan1`), so the shapes are small, but each is chosen to cross the kernels' edges: rows
//! wider than a cube's 256 units and not a multiple of them, more rows than one block of
//! partial sums (64), more elements than one block of the sum of squares (8,192).
//!
//! Tolerances: the kernels sum in another order than burn's reductions (a tree in shared
//! memory), so sums agree to f32 rounding of the sum, 1e-5 relative to the largest value;
//! elementwise kernels do the reference's arithmetic and agree to 1e-6.

use burn::backend::Wgpu;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};
use lomo_io::rng::SplitMix64;
use lomo_kernels::update::reference as update_reference;
use lomo_kernels::{
    reference, AdaLomoScalars, AttentionSpec, FusedKernels, GradScale, KeyPadding, SumSq, UpdateKernels,
};

type B = Wgpu;

fn random<const D: usize>(shape: [usize; D], seed: u64, mean: f64) -> Tensor<B, D> {
    let mut rng = SplitMix64::new(seed);
    let n = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| (mean + rng.next_normal()) as f32).collect();
    Tensor::from_data(TensorData::new(values, shape), &Default::default())
}

fn values<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().unwrap()
}

fn prim<const D: usize>(t: &Tensor<B, D>) -> FloatTensor<B> {
    t.clone().into_primitive().tensor()
}

fn tensor<const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// Largest absolute difference over the largest magnitude of `want`.
fn assert_close<const D: usize>(what: &str, got: Tensor<B, D>, want: Tensor<B, D>, tol: f32) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let (got, want) = (values(got), values(want));
    let scale = want.iter().fold(1e-30f32, |m, v| m.max(v.abs()));
    let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(got.iter().all(|v| v.is_finite()), "{what}: non-finite values");
    assert!(diff / scale <= tol, "{what}: max |diff| {diff} against max |value| {scale} (tolerance {tol})");
}

#[test]
fn rms_norm_forward_and_backward() {
    for (rows, n) in [(5, 37), (130, 600)] {
        let x = random([rows, n], 1, 0.3);
        let w = random([n], 2, 1.0);
        let dy = random([rows, n], 3, 0.0);
        let got = tensor::<2>(B::rms_norm(prim(&x), prim(&w), 1e-6));
        assert_close("rms_norm", got, reference::rms_norm(x.clone(), w.clone(), 1e-6), 1e-6);
        let (dx, dw) = B::rms_norm_backward(prim(&x), prim(&w), 1e-6, prim(&dy));
        let (want_dx, want_dw) = reference::rms_norm_backward(x, w, 1e-6, dy);
        assert_close("rms_norm dx", tensor::<2>(dx), want_dx, 1e-5);
        assert_close("rms_norm dw", tensor::<1>(dw), want_dw, 1e-5);
    }
}

#[test]
fn embedding_backward_sums_each_ids_rows() {
    let (vocab, hidden) = (40, 300);
    // Ids repeated within and across rows, most of the vocabulary absent.
    let ids: Vec<i64> = [3, 17, 3, 39, 0, 17, 17, 5, 3, 0].to_vec();
    let grad = random([2, 5, hidden], 15, 0.0);
    let got = tensor::<2>(B::embedding_backward(vocab, DType::F32, &ids, prim(&grad)));
    let want = reference::embedding_backward(vocab, DType::F32, &ids, grad);
    assert_close("embedding backward", got, want, 1e-6);
}

#[test]
fn swiglu_forward_and_backward() {
    let (gate, up, dy) = (random([7, 333], 4, 0.0), random([7, 333], 5, 0.0), random([7, 333], 6, 0.0));
    let got = tensor::<2>(B::swiglu(prim(&gate), prim(&up)));
    assert_close("swiglu", got, reference::swiglu(gate.clone(), up.clone()), 1e-6);
    let (d_gate, d_up) = B::swiglu_backward(prim(&gate), prim(&up), prim(&dy));
    let (want_gate, want_up) = reference::swiglu_backward(gate, up, dy);
    assert_close("swiglu d_gate", tensor::<2>(d_gate), want_gate, 1e-6);
    assert_close("swiglu d_up", tensor::<2>(d_up), want_up, 1e-6);
}

#[test]
fn log_probs_forward_and_backward() {
    let (rows, vocab) = (9, 700);
    let logits = random([rows, vocab], 7, 0.0).mul_scalar(3.0);
    let labels: Vec<i64> = (0..rows as i64).map(|i| (i * 97 + 5) % vocab as i64).collect();
    let out = tensor::<1>(B::log_probs(prim(&logits), &labels));
    assert_close("log_probs", out.clone(), reference::log_probs(logits.clone(), &labels), 1e-5);
    let grad = random([rows], 8, 0.0);
    let want = reference::log_probs_backward(logits.clone(), &labels, grad.clone());
    let before = values(logits.clone());
    // Shared logits: the kernel works on a copy and the caller's stay as they were.
    let got = tensor::<2>(B::log_probs_backward(prim(&logits), &labels, prim(&out), prim(&grad)));
    assert_close("log_probs backward (shared logits)", got, want.clone(), 1e-5);
    assert_eq!(values(logits.clone()), before, "the caller's logits were written over");
    // Logits of its own (a new buffer): the gradient is written over them.
    let owned = logits.mul_scalar(1.0).into_primitive().tensor();
    let got = tensor::<2>(B::log_probs_backward(owned, &labels, prim(&out), prim(&grad)));
    assert_close("log_probs backward (in place)", got, want, 1e-5);
}

#[test]
fn lomo_update_with_every_transform() {
    let scales = [GradScale::default(), GradScale { inv_scale: 0.25, clip_value: Some(0.3), clip_coef: Some(0.6) }];
    for scale in scales {
        for wd in [0.0, 0.1] {
            let (p, g) = (random([300, 7], 9, 0.0), random([300, 7], 10, 0.2));
            let got = tensor::<2>(B::lomo_update(prim(&p), prim(&g), scale, 1e-2, wd));
            let want = tensor::<2>(update_reference::lomo_update::<B>(prim(&p), prim(&g), scale, 1e-2, wd));
            assert_close("lomo_update", got, want, 1e-6);
        }
    }
}

#[test]
fn sum_of_squares_over_blocks() {
    let g = random([20_000], 11, 0.1);
    let got = B::sum_sq(prim(&g), 0.5);
    let want: f64 = values(g.clone()).iter().map(|&v| (v as f64 * 0.5).powi(2)).sum();
    assert!((got - want).abs() <= 1e-5 * want, "sum_sq {got} against {want}");
    // Left on the device, two tensors' sums are read together, after what is known already.
    let h = random([3, 5], 14, 0.0);
    let deferred = vec![B::sum_sq_deferred(prim(&g), 0.5), B::sum_sq_deferred(prim(&h), 0.5)];
    assert!(matches!(deferred[0], SumSq::OnDevice(_)), "wgpu's sums stay on the device");
    let both = SumSq::add_to(1.0, deferred);
    let want = 1.0 + want + values(h).iter().map(|&v| (v as f64 * 0.5).powi(2)).sum::<f64>();
    assert!((both - want).abs() <= 1e-5 * want, "deferred sums {both} against {want}");
}

#[test]
fn adalomo_first_and_later_updates() {
    let s =
        AdaLomoScalars { lr: 1e-2, beta: 0.8, eps_sq: 1e-30, eps_scale: 1e-3, clip_threshold: 1.0, weight_decay: 0.05 };
    let scale = GradScale { inv_scale: 0.5, clip_value: Some(2.0), clip_coef: Some(0.9) };
    let (p, g) = (random([70, 45], 12, 0.0), random([70, 45], 13, 0.1));
    let run = |moment: Option<(Tensor<B, 1>, Tensor<B, 1>)>| {
        let m = || moment.as_ref().map(|(r, c)| (prim(r), prim(c)));
        let (gp, gr, gc) = B::adalomo_matrix_update(prim(&p), prim(&g), scale, m(), s);
        let (wp, wr, wc) = update_reference::adalomo_matrix_update::<B>(prim(&p), prim(&g), scale, m(), s);
        assert_close("adalomo row", tensor::<1>(gr), tensor::<1>(wr.clone()), 1e-5);
        assert_close("adalomo col", tensor::<1>(gc), tensor::<1>(wc.clone()), 1e-5);
        assert_close("adalomo weight", tensor::<2>(gp), tensor::<2>(wp), 1e-5);
        (tensor::<1>(wr), tensor::<1>(wc))
    };
    let moment = run(None);
    run(Some(moment));
}

/// The kernels' other storage dtype path (what bf16 takes on CUDA: read, f32 inside, one
/// rounding out), in f16, which Vulkan has where the device has `shaderFloat16` (lavapipe
/// does). Against the reference in f16, to f16 rounding.
#[test]
fn half_precision_storage() {
    let h = |t: Tensor<B, 2>| t.cast(DType::F16);
    let f = |t: Tensor<B, 2>| t.cast(DType::F32);
    let (x, dy) = (h(random([6, 300], 16, 0.3)), h(random([6, 300], 17, 0.0)));
    let w = random([300], 18, 1.0).cast(DType::F16);
    let got = tensor::<2>(B::rms_norm(prim(&x), prim(&w), 1e-6));
    assert_eq!(got.dtype(), DType::F16);
    assert_close("rms_norm f16", f(got), f(reference::rms_norm(x.clone(), w.clone(), 1e-6)), 2e-3);
    let (dx, dw) = B::rms_norm_backward(prim(&x), prim(&w), 1e-6, prim(&dy));
    let (want_dx, want_dw) = reference::rms_norm_backward(x.clone(), w, 1e-6, dy.clone());
    assert_close("rms_norm dx f16", f(tensor::<2>(dx)), f(want_dx), 2e-3);
    assert_close("rms_norm dw f16", tensor::<1>(dw).cast(DType::F32), want_dw.cast(DType::F32), 2e-3);
    let got = tensor::<2>(B::swiglu(prim(&x), prim(&dy)));
    assert_close("swiglu f16", f(got), f(reference::swiglu(x.clone(), dy.clone())), 2e-3);
    let scale = GradScale { inv_scale: 0.5, clip_value: Some(1.0), clip_coef: Some(0.9) };
    let got = tensor::<2>(B::lomo_update(prim(&x), prim(&dy), scale, 1e-2, 0.1));
    let want = tensor::<2>(update_reference::lomo_update::<B>(prim(&x), prim(&dy), scale, 1e-2, 0.1));
    assert_close("lomo_update f16", f(got), f(want), 1e-3);
    let labels: Vec<i64> = (0..6).map(|i| i * 41 % 300).collect();
    let got = tensor::<1>(B::log_probs(prim(&x), &labels));
    assert_close("log_probs f16", got, reference::log_probs(x.clone(), &labels), 1e-4);
    let s =
        AdaLomoScalars { lr: 1e-2, beta: 0.8, eps_sq: 1e-30, eps_scale: 1e-3, clip_threshold: 1.0, weight_decay: 0.05 };
    let (gp, gr, gc) = B::adalomo_matrix_update(prim(&x), prim(&dy), scale, None, s);
    let (wp, wr, wc) = update_reference::adalomo_matrix_update::<B>(prim(&x), prim(&dy), scale, None, s);
    assert_close("adalomo row f16", tensor::<1>(gr), tensor::<1>(wr), 1e-4);
    assert_close("adalomo col f16", tensor::<1>(gc), tensor::<1>(wc), 1e-4);
    assert_close("adalomo weight f16", f(tensor::<2>(gp)), f(tensor::<2>(wp)), 1e-3);
    let grad = random([2, 3, 300], 19, 0.0).cast(DType::F16);
    let ids = [4, 1, 4, 0, 4, 1];
    let got = tensor::<2>(B::embedding_backward(5, DType::F16, &ids, prim(&grad)));
    let want = reference::embedding_backward(5, DType::F16, &ids, grad);
    assert_close("embedding backward f16", f(got), f(want), 2e-3);
}

/// The attention kernels (`set_cube_attention(true)`): grouped heads, RoPE, with and without a
/// sliding window, a right-padded row; forward (output and log-sum-exp) and backward against
/// the reference composition on the same backend.
#[test]
fn rope_attention_forward_and_backward() {
    lomo_kernels::set_cube_attention(true);
    let (batch, tokens, heads, kv_heads, dim) = (2, 9, 4, 2, 8);
    let q = random([batch, tokens, heads * dim], 20, 0.0);
    let k = random([batch, tokens, kv_heads * dim], 21, 0.0);
    let v = random([batch, tokens, kv_heads * dim], 22, 0.0);
    let grad = random([batch, tokens, heads * dim], 23, 0.0);
    // HF's tables: cat(freqs, freqs) of positions × inverse frequencies.
    let freqs: Vec<f32> = (0..tokens)
        .flat_map(|t| (0..dim).map(move |d| t as f32 * 10_000f32.powf(-2.0 * (d % (dim / 2)) as f32 / dim as f32)))
        .collect();
    let table = |f: fn(f32) -> f32| {
        let values: Vec<f32> = freqs.iter().map(|&x| f(x)).collect();
        Tensor::<B, 2>::from_data(TensorData::new(values, [tokens, dim]), &Default::default())
    };
    let (cos, sin) = (table(f32::cos), table(f32::sin));
    let mut mask = vec![1i64; batch * tokens];
    mask[tokens + 7..].fill(0);
    let padding = KeyPadding::from_mask(&mask, batch);
    for window in [None, Some(3)] {
        let spec = AttentionSpec { heads, kv_heads, head_dim: dim, window };
        let what = |s: &str| format!("attention {s}, window {window:?}");
        let args = || [prim(&q), prim(&k), prim(&v), prim(&cos), prim(&sin)];
        let [a, b, c, d, e] = args();
        let (out, lse) = B::rope_attention(a, b, c, d, e, padding.as_ref(), spec);
        let (want_out, want_lse) = reference::rope_attention(
            q.clone(),
            k.clone(),
            v.clone(),
            cos.clone(),
            sin.clone(),
            padding.as_ref(),
            spec,
        );
        assert_close(&what("out"), tensor::<3>(out.clone()), want_out.clone(), 1e-5);
        assert_close(&what("lse"), tensor::<3>(lse.clone()), want_lse.clone(), 1e-5);
        let [a, b, c, d, e] = args();
        let (dq, dk, dv) = B::rope_attention_backward(a, b, c, d, e, padding.as_ref(), spec, out, lse, prim(&grad));
        let (want_dq, want_dk, want_dv) = reference::rope_attention_backward(
            q.clone(),
            k.clone(),
            v.clone(),
            cos.clone(),
            sin.clone(),
            padding.as_ref(),
            spec,
            want_out,
            want_lse,
            grad.clone(),
        );
        assert_close(&what("dq"), tensor::<3>(dq), want_dq, 1e-5);
        assert_close(&what("dk"), tensor::<3>(dk), want_dk, 1e-5);
        assert_close(&what("dv"), tensor::<3>(dv), want_dv, 1e-5);
    }
}

/// Uploads released while later ones are still queued (`release_uploads` between writes, as a
/// loader calls it) arrive whole: 200 tensors of distinct contents written, released every 16
/// writes, then read back.
#[test]
fn released_uploads_arrive_whole() {
    let device = Default::default();
    let shapes = |i: usize| [1 + i % 7, 300 + 13 * (i % 11)];
    let tensors: Vec<Tensor<B, 2>> = (0..200)
        .map(|i| {
            let t = random(shapes(i), 100 + i as u64, i as f64);
            if i % 16 == 15 {
                B::release_uploads(&device);
            }
            t
        })
        .collect();
    B::release_uploads(&device);
    for (i, t) in tensors.into_iter().enumerate() {
        assert_eq!(t.dims(), shapes(i));
        assert_eq!(values(t), values(random(shapes(i), 100 + i as u64, i as f64)), "tensor {i}");
    }
}

//! Each fused op three ways on the same inputs: burn's autodiff of the plain composition
//! (`reference::*` forward on `Autodiff<Flex>`), the Flex kernels through `Autodiff<Flex>`
//! (this crate's backward node), and the reference backward formulas on Flex. All three must
//! agree: in f32 to float rounding (1e-5 relative to the largest value), in bf16 to bf16's
//! rounding of the inputs and output (2^-8 relative per rounding, a few of them: 3e-2).

use burn::backend::{Autodiff, Flex};
use burn::tensor::{DType, Tensor, TensorData};
use lomo_kernels::{reference, AttentionSpec, FusedKernels, KeyPadding};

type AD = Autodiff<Flex>;

/// Deterministic values in [-scale, scale).
fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn tensor<B: burn::tensor::backend::Backend, const D: usize>(
    shape: [usize; D],
    seed: u64,
    scale: f32,
    dtype: DType,
) -> Tensor<B, D> {
    let n = shape.iter().product();
    Tensor::<B, D>::from_data(TensorData::new(values(n, seed, scale), shape), &Default::default()).cast(dtype)
}

fn to_vec<B: burn::tensor::backend::Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.cast(DType::F32).into_data().to_vec::<f32>().unwrap()
}

/// `max |a − b| ≤ tol · max(1, max |b|)`.
fn assert_close(what: &str, a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
    let (i, err) =
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .enumerate()
            .fold((0, 0f32), |m, (i, e)| if e > m.1 { (i, e) } else { m });
    assert!(a.iter().all(|v| v.is_finite()), "{what}: non-finite values");
    assert!(err <= tol * scale, "{what}: max error {err} at {i} ({} vs {}), allowed {}", a[i], b[i], tol * scale);
}

fn tol(dtype: DType) -> f32 {
    if dtype == DType::F32 {
        1e-5
    } else {
        3e-2
    }
}

fn on_ad<const D: usize>(t: &Tensor<Flex, D>) -> Tensor<AD, D> {
    Tensor::from_inner(t.clone()).require_grad()
}

#[test]
fn rms_norm_three_ways() {
    for dtype in [DType::F32, DType::BF16] {
        let x = tensor::<Flex, 2>([7, 96], 1, 2.0, dtype);
        let w = tensor::<Flex, 1>([96], 2, 1.5, dtype);
        let g = tensor::<Flex, 2>([7, 96], 3, 1.0, dtype);
        let (xa, wa) = (on_ad(&x), on_ad(&w));
        let y_ref = reference::rms_norm(xa.clone(), wa.clone(), 1e-5);
        let mut grads = (y_ref.clone() * Tensor::from_inner(g.clone())).sum().backward();
        let (dx_ref, dw_ref) = (xa.grad_remove(&mut grads).unwrap(), wa.grad_remove(&mut grads).unwrap());

        let (xb, wb) = (on_ad(&x), on_ad(&w));
        let y = lomo_kernels::rms_norm(xb.clone(), wb.clone(), 1e-5);
        let mut grads = (y.clone() * Tensor::from_inner(g.clone())).sum().backward();
        let t = tol(dtype);
        assert_close("rms_norm forward", &to_vec(y.inner()), &to_vec(y_ref.inner()), t);
        assert_close("rms_norm dx", &to_vec(xb.grad_remove(&mut grads).unwrap()), &to_vec(dx_ref.clone()), t);
        assert_close("rms_norm dw", &to_vec(wb.grad_remove(&mut grads).unwrap()), &to_vec(dw_ref.clone()), t);

        let (dx, dw) = reference::rms_norm_backward(x, w, 1e-5, g);
        assert_close("reference rms_norm dx", &to_vec(dx), &to_vec(dx_ref), t);
        assert_close("reference rms_norm dw", &to_vec(dw), &to_vec(dw_ref), t);
    }
}

#[test]
fn swiglu_three_ways() {
    for dtype in [DType::F32, DType::BF16] {
        let gate = tensor::<Flex, 2>([33, 40], 4, 6.0, dtype);
        let up = tensor::<Flex, 2>([33, 40], 5, 2.0, dtype);
        let g = tensor::<Flex, 2>([33, 40], 6, 1.0, dtype);
        let (ga, ua) = (on_ad(&gate), on_ad(&up));
        let y_ref = reference::swiglu(ga.clone(), ua.clone());
        let mut grads = (y_ref.clone() * Tensor::from_inner(g.clone())).sum().backward();
        let (dg_ref, du_ref) = (ga.grad_remove(&mut grads).unwrap(), ua.grad_remove(&mut grads).unwrap());

        let (gb, ub) = (on_ad(&gate), on_ad(&up));
        let y = lomo_kernels::swiglu(gb.clone(), ub.clone());
        let mut grads = (y.clone() * Tensor::from_inner(g.clone())).sum().backward();
        let t = tol(dtype);
        assert_close("swiglu forward", &to_vec(y.inner()), &to_vec(y_ref.inner()), t);
        assert_close("swiglu d gate", &to_vec(gb.grad_remove(&mut grads).unwrap()), &to_vec(dg_ref.clone()), t);
        assert_close("swiglu d up", &to_vec(ub.grad_remove(&mut grads).unwrap()), &to_vec(du_ref.clone()), t);

        let (dg, du) = reference::swiglu_backward(gate, up, g);
        assert_close("reference swiglu d gate", &to_vec(dg), &to_vec(dg_ref), t);
        assert_close("reference swiglu d up", &to_vec(du), &to_vec(du_ref), t);
    }
}

#[test]
fn log_probs_three_ways() {
    for dtype in [DType::F32, DType::BF16] {
        let logits = tensor::<Flex, 2>([9, 301], 7, 8.0, dtype);
        let labels: Vec<i64> = (0..9).map(|i| (i * 37 % 301) as i64).collect();
        let g = tensor::<Flex, 1>([9], 8, 1.0, DType::F32);
        let la = on_ad(&logits);
        let y_ref = reference::log_probs(la.clone(), &labels);
        let mut grads = (y_ref.clone() * Tensor::from_inner(g.clone())).sum().backward();
        let d_ref = la.grad_remove(&mut grads).unwrap();

        let lb = on_ad(&logits);
        let y = lomo_kernels::log_probs(lb.clone(), &labels);
        let mut grads = (y.clone() * Tensor::from_inner(g.clone())).sum().backward();
        let t = tol(dtype);
        assert_close("log_probs forward", &to_vec(y.inner()), &to_vec(y_ref.inner()), t);
        assert_close("log_probs d logits", &to_vec(lb.grad_remove(&mut grads).unwrap()), &to_vec(d_ref.clone()), t);
        assert_close(
            "reference log_probs d logits",
            &to_vec(reference::log_probs_backward(logits, &labels, g)),
            &to_vec(d_ref),
            t,
        );
    }
}

/// RoPE tables as the model makes them (θ = 10⁴), `[tokens, dim]`.
fn rope_tables(tokens: usize, dim: usize, dtype: DType) -> (Tensor<Flex, 2>, Tensor<Flex, 2>) {
    let half = dim / 2;
    let mut cos = Vec::new();
    let mut sin = Vec::new();
    for t in 0..tokens {
        for _ in 0..2 {
            for i in 0..half {
                let a = t as f32 / 10000f32.powf(2.0 * i as f32 / dim as f32);
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
    }
    let make =
        |v: Vec<f32>| Tensor::<Flex, 2>::from_data(TensorData::new(v, [tokens, dim]), &Default::default()).cast(dtype);
    (make(cos), make(sin))
}

fn attention_three_ways(batch: usize, tokens: usize, spec: AttentionSpec, mask: Option<Vec<i64>>, dtype: DType) {
    let AttentionSpec { heads, kv_heads, head_dim, .. } = spec;
    let q = tensor::<Flex, 3>([batch, tokens, heads * head_dim], 11, 1.5, dtype);
    let k = tensor::<Flex, 3>([batch, tokens, kv_heads * head_dim], 12, 1.5, dtype);
    let v = tensor::<Flex, 3>([batch, tokens, kv_heads * head_dim], 13, 1.0, dtype);
    let g = tensor::<Flex, 3>([batch, tokens, heads * head_dim], 14, 1.0, dtype);
    let (cos, sin) = rope_tables(tokens, head_dim, dtype);
    let padding = mask.and_then(|m| KeyPadding::from_mask(&m, batch));
    // Only rows that see at least one real key are defined alike (see the kernel's docs); the
    // masks here are right padding, where every row does.
    let (qa, ka, va) = (on_ad(&q), on_ad(&k), on_ad(&v));
    let ad = |t: &Tensor<Flex, 2>| Tensor::<AD, 2>::from_inner(t.clone());
    let (y_ref, lse_ref) =
        reference::rope_attention(qa.clone(), ka.clone(), va.clone(), ad(&cos), ad(&sin), padding.as_ref(), spec);
    let mut grads = (y_ref.clone() * Tensor::from_inner(g.clone())).sum().backward();
    let refs =
        [qa.grad_remove(&mut grads).unwrap(), ka.grad_remove(&mut grads).unwrap(), va.grad_remove(&mut grads).unwrap()];

    let (qb, kb, vb) = (on_ad(&q), on_ad(&k), on_ad(&v));
    let y =
        lomo_kernels::rope_attention(qb.clone(), kb.clone(), vb.clone(), ad(&cos), ad(&sin), padding.as_ref(), spec);
    let mut grads = (y.clone() * Tensor::from_inner(g.clone())).sum().backward();
    let t = tol(dtype);
    let what = format!("attention {batch}×{tokens} {spec:?} {dtype:?} padded={}", padding.is_some());
    assert_close(&format!("{what} forward"), &to_vec(y.inner()), &to_vec(y_ref.clone().inner()), t);
    let got =
        [qb.grad_remove(&mut grads).unwrap(), kb.grad_remove(&mut grads).unwrap(), vb.grad_remove(&mut grads).unwrap()];
    for (name, (a, b)) in ["dq", "dk", "dv"].iter().zip(got.into_iter().zip(refs.clone())) {
        assert_close(&format!("{what} {name}"), &to_vec(a), &to_vec(b), t);
    }

    let (_, lse) = <Flex as FusedKernels>::rope_attention(
        q.clone().into_primitive().tensor(),
        k.clone().into_primitive().tensor(),
        v.clone().into_primitive().tensor(),
        cos.clone().into_primitive().tensor(),
        sin.clone().into_primitive().tensor(),
        padding.as_ref(),
        spec,
    );
    let lse = Tensor::<Flex, 3>::from_primitive(burn::tensor::TensorPrimitive::Float(lse));
    assert_close(&format!("{what} lse"), &to_vec(lse), &to_vec(lse_ref.clone().inner()), t);
    let back = reference::rope_attention_backward(
        q,
        k,
        v,
        cos,
        sin,
        padding.as_ref(),
        spec,
        y_ref.inner(),
        lse_ref.inner(),
        g,
    );
    for (name, (a, b)) in ["dq", "dk", "dv"].iter().zip([back.0, back.1, back.2].into_iter().zip(refs)) {
        assert_close(&format!("{what} reference {name}"), &to_vec(a), &to_vec(b), t);
    }
}

#[test]
fn attention_three_ways_mha_gqa_padding_and_blocks() {
    let mha = AttentionSpec::causal(4, 4, 16);
    let gqa = AttentionSpec::causal(6, 2, 8);
    attention_three_ways(2, 9, mha, None, DType::F32);
    attention_three_ways(1, 150, gqa, None, DType::F32); // three query blocks, the last partial
    let mask: Vec<i64> = (0..2 * 70).map(|i| if i >= 70 && i % 70 >= 52 { 0 } else { 1 }).collect();
    attention_three_ways(2, 70, gqa, Some(mask.clone()), DType::F32);
    attention_three_ways(2, 70, gqa, Some(mask.clone()), DType::BF16);
    // Mistral's sliding window, shorter than the sequence, across query blocks; with padding,
    // wide enough that every query still sees a real key (the 18 padded keys of row 2 < 30).
    attention_three_ways(2, 70, AttentionSpec { window: Some(5), ..gqa }, None, DType::F32);
    attention_three_ways(2, 70, AttentionSpec { window: Some(30), ..gqa }, Some(mask), DType::F32);
    attention_three_ways(1, 150, AttentionSpec { window: Some(64), ..mha }, None, DType::BF16);
}

fn linear_case(rows: usize, inner: usize, out: usize, transposed: bool, bias: bool, dtype: DType) {
    let x = tensor::<Flex, 2>([rows, inner], 21, 1.0, dtype);
    // A transposed view: the tied LM head reads the embedding `[vocab, hidden]` this way.
    let w = if transposed {
        tensor::<Flex, 2>([out, inner], 22, 0.5, dtype).transpose()
    } else {
        tensor::<Flex, 2>([inner, out], 22, 0.5, dtype)
    };
    let b = tensor::<Flex, 1>([out], 23, 0.5, dtype);
    let g = tensor::<Flex, 2>([rows, out], 24, 1.0, dtype);
    let run = |fused: bool| {
        let (xa, wa, ba) = (on_ad(&x), on_ad(&w), on_ad(&b));
        let bias_a = bias.then(|| ba.clone());
        let y = if fused {
            lomo_kernels::linear(xa.clone(), wa.clone(), bias_a)
        } else {
            burn::tensor::module::linear(xa.clone(), wa.clone(), bias_a)
        };
        let mut grads = (y.clone() * Tensor::from_inner(g.clone())).sum().backward();
        let db = bias.then(|| to_vec(ba.grad_remove(&mut grads).unwrap()));
        (
            to_vec(y.inner()),
            to_vec(xa.grad_remove(&mut grads).unwrap()),
            to_vec(wa.grad_remove(&mut grads).unwrap()),
            db,
        )
    };
    let (want, got) = (run(false), run(true));
    let what = format!("linear {rows}×{inner}×{out} transposed={transposed} bias={bias} {dtype:?}");
    // The products sum `inner` terms: relative to the largest value, f32 rounding grows with it.
    let t = tol(dtype) * if dtype == DType::F32 { 10.0 } else { 1.0 };
    assert_close(&format!("{what} forward"), &got.0, &want.0, t);
    assert_close(&format!("{what} dx"), &got.1, &want.1, t);
    assert_close(&format!("{what} dw"), &got.2, &want.2, t);
    if let (Some(a), Some(b)) = (got.3, want.3) {
        assert_close(&format!("{what} db"), &a, &b, t);
    }
}

#[test]
fn linear_three_ways_layouts_bias_and_panels() {
    // bf16 runs on AMX tiles where this CPU has them (else f32 panels): say which was tested.
    eprintln!("bf16 products here: {}", lomo_kernels::cpu_bf16_matmul());
    for dtype in [DType::F32, DType::BF16] {
        linear_case(7, 33, 20, false, false, dtype);
        linear_case(7, 33, 20, true, false, dtype);
        linear_case(5, 16, 12, false, true, dtype);
    }
    // Large enough for several weight panels (2^18 elements each) and threaded gemm. f16 never
    // runs on AMX, so it tests the f32-panel path that bf16 takes on CPUs without AMX.
    for dtype in [DType::BF16, DType::F16] {
        linear_case(64, 1024, 600, false, false, dtype);
        linear_case(64, 600, 1024, true, false, dtype);
        linear_case(7, 33, 20, true, true, dtype);
        // A taller than one AMX row block (1024 rows): the rows of x and dy in the forward and
        // dx, dyᵀ's (one per output, as a tied head's) and xᵀ's in the weight gradients.
        linear_case(1100, 40, 1300, true, false, dtype);
        linear_case(40, 1100, 70, false, true, dtype);
    }
    linear_case(64, 1024, 600, false, true, DType::F32);
}

#[test]
fn embedding_three_ways_with_repeated_ids() {
    for dtype in [DType::F32, DType::BF16] {
        let w = tensor::<Flex, 2>([50, 12], 31, 1.0, dtype);
        let ids: Vec<i64> = vec![3, 7, 3, 49, 0, 7, 7, 11];
        let g = tensor::<Flex, 3>([2, 4, 12], 32, 1.0, dtype);
        let wa = on_ad(&w);
        let y_ref = reference::embedding(wa.clone(), &ids, [2, 4]);
        let mut grads = (y_ref.clone() * Tensor::from_inner(g.clone())).sum().backward();
        let dw_ref = wa.grad_remove(&mut grads).unwrap();
        let wb = on_ad(&w);
        let y = lomo_kernels::embedding(wb.clone(), &ids, [2, 4]);
        let mut grads = (y.clone() * Tensor::from_inner(g.clone())).sum().backward();
        let t = tol(dtype);
        assert_close("embedding forward", &to_vec(y.inner()), &to_vec(y_ref.inner()), t);
        assert_close("embedding dw", &to_vec(wb.grad_remove(&mut grads).unwrap()), &to_vec(dw_ref.clone()), t);
        assert_close(
            "reference embedding dw",
            &to_vec(reference::embedding_backward(50, dtype, &ids, g)),
            &to_vec(dw_ref),
            t,
        );
    }
}

#[test]
fn linear_of_a_few_rows_streams_the_weight_alike() {
    // Decoding's shapes: one to eight rows, both weight layouts (the tied head is transposed).
    for dtype in [DType::F32, DType::BF16] {
        for rows in [1, 3, 8] {
            linear_case(rows, 96, 700, false, false, dtype);
            linear_case(rows, 96, 700, true, false, dtype);
            linear_case(rows, 64, 40, false, true, dtype);
        }
    }
}

/// LibTorch's attention (its flash CPU kernels, forward and backward) against the reference
/// composition differentiated by burn's autodiff, both on LibTorch (`--features tch`).
#[cfg(feature = "tch")]
#[test]
fn libtorch_flash_attention_equals_the_reference() {
    use burn::backend::LibTorch;
    type TAD = Autodiff<LibTorch>;
    for (spec, dtype) in [
        (AttentionSpec::causal(4, 4, 16), DType::F32),
        (AttentionSpec::causal(6, 2, 8), DType::F32),
        (AttentionSpec::causal(6, 2, 8), DType::BF16),
        // A window shorter than the sequence: the reference ops, not flash attention.
        (AttentionSpec { window: Some(5), ..AttentionSpec::causal(6, 2, 8) }, DType::F32),
    ] {
        let (batch, tokens) = (2, 37);
        let AttentionSpec { heads, kv_heads, head_dim, .. } = spec;
        let mk = |shape: [usize; 3], seed, scale| tensor::<LibTorch, 3>(shape, seed, scale, dtype);
        let (q, k, v) = (
            mk([batch, tokens, heads * head_dim], 11, 1.5),
            mk([batch, tokens, kv_heads * head_dim], 12, 1.5),
            mk([batch, tokens, kv_heads * head_dim], 13, 1.0),
        );
        let g = mk([batch, tokens, heads * head_dim], 14, 1.0);
        let (cos, sin) = rope_tables(tokens, head_dim, dtype);
        let to_t = |t: Tensor<Flex, 2>| {
            Tensor::<LibTorch, 2>::from_data(t.cast(DType::F32).into_data(), &Default::default()).cast(dtype)
        };
        let (cos, sin) = (to_t(cos), to_t(sin));
        // The reference runs in f32 on the same (rounded) values: burn-tch's autodiff of a
        // bf16 matmul after a cast mixes dtypes.
        let run = |fused: bool| {
            let ad = |t: &Tensor<LibTorch, 3>| {
                let t = if fused { t.clone() } else { t.clone().cast(DType::F32) };
                Tensor::<TAD, 3>::from_inner(t).require_grad()
            };
            let (qa, ka, va) = (ad(&q), ad(&k), ad(&v));
            let c = |t: &Tensor<LibTorch, 2>| {
                Tensor::<TAD, 2>::from_inner(if fused { t.clone() } else { t.clone().cast(DType::F32) })
            };
            let y = if fused {
                lomo_kernels::rope_attention(qa.clone(), ka.clone(), va.clone(), c(&cos), c(&sin), None, spec)
            } else {
                reference::rope_attention(qa.clone(), ka.clone(), va.clone(), c(&cos), c(&sin), None, spec).0
            };
            let g = if fused { g.clone() } else { g.clone().cast(DType::F32) };
            let mut grads = (y.clone() * Tensor::from_inner(g)).sum().backward();
            [
                to_vec(y.inner()),
                to_vec(qa.grad_remove(&mut grads).unwrap()),
                to_vec(ka.grad_remove(&mut grads).unwrap()),
                to_vec(va.grad_remove(&mut grads).unwrap()),
            ]
        };
        let (want, got) = (run(false), run(true));
        for (name, (a, b)) in ["out", "dq", "dk", "dv"].iter().zip(got.iter().zip(&want)) {
            assert_close(&format!("libtorch {spec:?} {dtype:?} {name}"), a, b, tol(dtype));
        }
    }
}

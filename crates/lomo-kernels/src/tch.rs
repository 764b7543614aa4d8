//! [`FusedKernels`] for LibTorch: attention through LibTorch's own flash-attention CPU kernels
//! (`_scaled_dot_product_flash_attention_for_cpu` and its backward: causal, log-sum-exp kept,
//! no score tensor), RoPE and grouped-query heads around them in burn's ops; everything else the
//! trait's defaults (burn's ops). A padded batch, f16, or tensors on a GPU take the default
//! attention.

use burn::backend::libtorch::TchTensor;
use burn::backend::LibTorch;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive};

use crate::reference::{merge_heads, rope, rope_transpose, split_heads};
use crate::{AttentionSpec, FusedKernels, KeyPadding};

type T<const D: usize> = Tensor<LibTorch, D>;

fn wrap<const D: usize>(t: tch::Tensor) -> T<D> {
    Tensor::from_primitive(TensorPrimitive::Float(TchTensor::new(t)))
}

fn raw<const D: usize>(t: T<D>) -> tch::Tensor {
    t.into_primitive().tensor().tensor
}

fn float<const D: usize>(t: FloatTensor<LibTorch>) -> T<D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// Whether LibTorch's CPU flash kernel takes this call: f32 or bf16 on the CPU, no padding.
fn flash(q: &FloatTensor<LibTorch>, padding: Option<&KeyPadding>) -> bool {
    padding.is_none()
        && q.tensor.device() == tch::Device::Cpu
        && matches!(q.tensor.kind(), tch::Kind::Float | tch::Kind::BFloat16)
}

/// Rotated queries and keys and the values as `[batch, heads, tokens, dim]`, the key/value heads
/// repeated for each query head of their group.
fn heads(
    q: FloatTensor<LibTorch>,
    k: FloatTensor<LibTorch>,
    v: FloatTensor<LibTorch>,
    cos: &T<2>,
    sin: &T<2>,
    spec: AttentionSpec,
) -> (T<4>, T<4>, T<4>) {
    let AttentionSpec { heads, kv_heads, head_dim, .. } = spec;
    let groups = heads / kv_heads;
    let q = rope(split_heads(float(q), heads, head_dim), cos, sin);
    let k = rope(split_heads(float(k), kv_heads, head_dim), cos, sin);
    let v = split_heads(float(v), kv_heads, head_dim);
    let repeat =
        |t: T<4>| if groups == 1 { t } else { wrap(raw(t).repeat_interleave_self_int(groups as i64, 1, None)) };
    (q, repeat(k), repeat(v))
}

/// Whether a sliding window hides keys of this sequence (LibTorch's CPU flash attention has
/// no window: those run on the reference ops).
fn windowed(q: &FloatTensor<LibTorch>, spec: AttentionSpec) -> bool {
    spec.window.is_some_and(|w| (w as i64) < q.tensor.size()[1])
}

impl FusedKernels for LibTorch {
    fn rope_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        padding: Option<&KeyPadding>,
        spec: AttentionSpec,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        if !flash(&q, padding) || windowed(&q, spec) {
            let (out, lse) =
                crate::reference::rope_attention(float(q), float(k), float(v), float(cos), float(sin), padding, spec);
            return (out.into_primitive().tensor(), lse.into_primitive().tensor());
        }
        let (q, k, v) = heads(q, k, v, &float(cos), &float(sin), spec);
        let (out, lse) = tch::Tensor::internal_scaled_dot_product_flash_attention_for_cpu(
            &raw(q),
            &raw(k),
            &raw(v),
            0.0,
            true,
            None::<tch::Tensor>,
            None,
        );
        (merge_heads(wrap::<4>(out)).into_primitive().tensor(), TchTensor::new(lse))
    }

    fn rope_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        padding: Option<&KeyPadding>,
        spec: AttentionSpec,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        if !flash(&q, padding) || windowed(&q, spec) {
            let (dq, dk, dv) = crate::reference::rope_attention_backward(
                float(q),
                float(k),
                float(v),
                float(cos),
                float(sin),
                padding,
                spec,
                float(out),
                float(lse),
                float(grad),
            );
            return (dq.into_primitive().tensor(), dk.into_primitive().tensor(), dv.into_primitive().tensor());
        }
        let AttentionSpec { heads: n_heads, kv_heads, head_dim, .. } = spec;
        let (cos, sin) = (float::<2>(cos), float::<2>(sin));
        let (qr, kr, vr) = heads(q, k, v, &cos, &sin, spec);
        let out4 = split_heads(float::<3>(out), n_heads, head_dim);
        let grad4 = split_heads(float::<3>(grad), n_heads, head_dim);
        let (dq, dk, dv) = tch::Tensor::internal_scaled_dot_product_flash_attention_for_cpu_backward(
            &raw(grad4).contiguous(),
            &raw(qr),
            &raw(kr),
            &raw(vr),
            &raw(out4).contiguous(),
            &lse.tensor,
            0.0,
            true,
            None::<tch::Tensor>,
            None,
        );
        let groups = (n_heads / kv_heads) as i64;
        // The repeated key/value heads' gradients summed back onto their head.
        let fold = |t: tch::Tensor| -> T<4> {
            if groups == 1 {
                return wrap(t);
            }
            let s = t.size();
            wrap(t.reshape([s[0], kv_heads as i64, groups, s[2], s[3]]).sum_dim_intlist(2, false, None::<tch::Kind>))
        };
        let dq = merge_heads(rope_transpose(wrap::<4>(dq), &cos, &sin));
        let dk = merge_heads(rope_transpose(fold(dk), &cos, &sin));
        let dv = merge_heads(fold(dv));
        (dq.into_primitive().tensor(), dk.into_primitive().tensor(), dv.into_primitive().tensor())
    }
}

//! [`FusedKernels`] for `Autodiff<B>`: each op is one node of the graph whose backward calls
//! `B`'s backward kernel (the burn book's "custom operations" arrangement, as burn-autodiff's
//! own `linear` is written).
//!
//! What a node keeps for its backward: Linear its input and weight, RMSNorm its input and weight, SwiGLU gate and up,
//! attention its queries, keys, values, output and log-sum-exp, `log_probs` the logits (by
//! value, so that its backward can write the gradient over them). The `*_backward` methods on
//! `Autodiff<B>` themselves compute on `B` and return untracked tensors: there are no
//! second-order gradients through these ops.
//!
//! [`UpdateKernels`] for `Autodiff<B>` updates on `B`: an update is applied to a finished
//! gradient, outside any graph, so its results carry none.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::FloatTensor;

use crate::{AdaLomoScalars, AttentionSpec, FusedKernels, GradScale, KeyPadding, UpdateKernels};

fn untracked<B: FusedKernels, C: CheckpointStrategy>(t: FloatTensor<B>) -> FloatTensor<Autodiff<B, C>> {
    <Autodiff<B, C> as AutodiffBackend>::from_inner(t)
}

#[derive(Debug)]
struct EmbeddingBackward;

impl<B: FusedKernels> Backward<B, 1> for EmbeddingBackward {
    /// The ids, the vocabulary size and the weight's dtype.
    type State = (Arc<[i64]>, usize, burn::tensor::DType);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_weight] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (ids, vocab, dtype) = ops.state;
        if let Some(node) = node_weight {
            grads.register::<B>(node.id, <B as FusedKernels>::embedding_backward(vocab, dtype, &ids, grad));
        }
    }
}

#[derive(Debug)]
struct LinearBackward;

impl<B: FusedKernels> Backward<B, 2> for LinearBackward {
    type State = (NodeId, NodeId);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let [node_x, node_weight] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let x = checkpointer.retrieve_node_output(ops.state.0);
        let weight = checkpointer.retrieve_node_output(ops.state.1);
        let (dx, dw, _) = <B as FusedKernels>::linear_backward(x, weight, false, grad);
        if let Some(node) = node_x {
            grads.register::<B>(node.id, dx);
        }
        if let Some(node) = node_weight {
            grads.register::<B>(node.id, dw);
        }
    }
}

#[derive(Debug)]
struct LinearBiasBackward;

impl<B: FusedKernels> Backward<B, 3> for LinearBiasBackward {
    type State = (NodeId, NodeId);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let [node_x, node_weight, node_bias] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let x = checkpointer.retrieve_node_output(ops.state.0);
        let weight = checkpointer.retrieve_node_output(ops.state.1);
        let (dx, dw, db) = <B as FusedKernels>::linear_backward(x, weight, true, grad);
        for (node, g) in [(node_x, Some(dx)), (node_weight, Some(dw)), (node_bias, db)] {
            if let (Some(node), Some(g)) = (node, g) {
                grads.register::<B>(node.id, g);
            }
        }
    }
}

#[derive(Debug)]
struct RmsNormBackward;

impl<B: FusedKernels> Backward<B, 2> for RmsNormBackward {
    type State = (NodeId, NodeId, f64);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let [node_x, node_weight] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x, weight, eps) = ops.state;
        let x = checkpointer.retrieve_node_output(x);
        let weight = checkpointer.retrieve_node_output(weight);
        let (dx, dw) = B::rms_norm_backward(x, weight, eps, grad);
        if let Some(node) = node_x {
            grads.register::<B>(node.id, dx);
        }
        if let Some(node) = node_weight {
            grads.register::<B>(node.id, dw);
        }
    }
}

#[derive(Debug)]
struct SwigluBackward;

impl<B: FusedKernels> Backward<B, 2> for SwigluBackward {
    type State = (NodeId, NodeId);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let [node_gate, node_up] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let gate = checkpointer.retrieve_node_output(ops.state.0);
        let up = checkpointer.retrieve_node_output(ops.state.1);
        let (d_gate, d_up) = B::swiglu_backward(gate, up, grad);
        if let Some(node) = node_gate {
            grads.register::<B>(node.id, d_gate);
        }
        if let Some(node) = node_up {
            grads.register::<B>(node.id, d_up);
        }
    }
}

#[derive(Debug)]
struct LogProbsBackward;

impl<B: FusedKernels> Backward<B, 1> for LogProbsBackward {
    /// The logits, the labels and the output.
    type State = (FloatTensor<B>, Arc<[i64]>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_logits] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (logits, labels, out) = ops.state;
        if let Some(node) = node_logits {
            grads.register::<B>(node.id, B::log_probs_backward(logits, &labels, out, grad));
        }
    }
}

/// What the attention node keeps: the inputs' ids, the tables, the mask, the output and its
/// log-sum-exp.
#[derive(Debug, Clone)]
struct AttentionState<B: FusedKernels> {
    q: NodeId,
    k: NodeId,
    v: NodeId,
    cos: FloatTensor<B>,
    sin: FloatTensor<B>,
    padding: Option<KeyPadding>,
    spec: AttentionSpec,
    out: FloatTensor<B>,
    lse: FloatTensor<B>,
}

#[derive(Debug)]
struct AttentionBackward;

impl<B: FusedKernels> Backward<B, 3> for AttentionBackward {
    type State = AttentionState<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let [node_q, node_k, node_v] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let s = ops.state;
        let q = checkpointer.retrieve_node_output(s.q);
        let k = checkpointer.retrieve_node_output(s.k);
        let v = checkpointer.retrieve_node_output(s.v);
        let (dq, dk, dv) =
            B::rope_attention_backward(q, k, v, s.cos, s.sin, s.padding.as_ref(), s.spec, s.out, s.lse, grad);
        for (node, g) in [(node_q, dq), (node_k, dk), (node_v, dv)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, g);
            }
        }
    }
}

impl<B: FusedKernels, C: CheckpointStrategy> FusedKernels for Autodiff<B, C> {
    fn embedding(weight: FloatTensor<Self>, ids: &[i64], shape: [usize; 2]) -> FloatTensor<Self> {
        use burn::tensor::TensorMetadata;
        let (vocab, dtype) = (weight.shape()[0], weight.dtype());
        match EmbeddingBackward.prepare::<C>([weight.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                prep.finish((ids.into(), vocab, dtype), <B as FusedKernels>::embedding(weight.primitive, ids, shape))
            }
            OpsKind::UnTracked(prep) => prep.finish(<B as FusedKernels>::embedding(weight.primitive, ids, shape)),
        }
    }

    fn embedding_backward(
        vocab: usize,
        dtype: burn::tensor::DType,
        ids: &[i64],
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        untracked::<B, C>(<B as FusedKernels>::embedding_backward(vocab, dtype, ids, grad.primitive))
    }

    fn linear(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: Option<FloatTensor<Self>>) -> FloatTensor<Self> {
        match bias {
            None => match LinearBackward.prepare::<C>([x.node.clone(), weight.node.clone()]).compute_bound().stateful()
            {
                OpsKind::Tracked(mut prep) => {
                    let state = (prep.checkpoint(&x), prep.checkpoint(&weight));
                    prep.finish(state, <B as FusedKernels>::linear(x.primitive, weight.primitive, None))
                }
                OpsKind::UnTracked(prep) => {
                    prep.finish(<B as FusedKernels>::linear(x.primitive, weight.primitive, None))
                }
            },
            Some(bias) => {
                let nodes = [x.node.clone(), weight.node.clone(), bias.node.clone()];
                match LinearBiasBackward.prepare::<C>(nodes).compute_bound().stateful() {
                    OpsKind::Tracked(mut prep) => {
                        let state = (prep.checkpoint(&x), prep.checkpoint(&weight));
                        prep.finish(
                            state,
                            <B as FusedKernels>::linear(x.primitive, weight.primitive, Some(bias.primitive)),
                        )
                    }
                    OpsKind::UnTracked(prep) => {
                        prep.finish(<B as FusedKernels>::linear(x.primitive, weight.primitive, Some(bias.primitive)))
                    }
                }
            }
        }
    }

    fn linear_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: bool,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, Option<FloatTensor<Self>>) {
        let (dx, dw, db) = <B as FusedKernels>::linear_backward(x.primitive, weight.primitive, bias, grad.primitive);
        (untracked::<B, C>(dx), untracked::<B, C>(dw), db.map(untracked::<B, C>))
    }

    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        match RmsNormBackward.prepare::<C>([x.node.clone(), weight.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&x), prep.checkpoint(&weight), eps);
                prep.finish(state, B::rms_norm(x.primitive, weight.primitive, eps))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::rms_norm(x.primitive, weight.primitive, eps)),
        }
    }

    fn rms_norm_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f64,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (dx, dw) = B::rms_norm_backward(x.primitive, weight.primitive, eps, grad.primitive);
        (untracked::<B, C>(dx), untracked::<B, C>(dw))
    }

    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        match SwigluBackward.prepare::<C>([gate.node.clone(), up.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&gate), prep.checkpoint(&up));
                prep.finish(state, B::swiglu(gate.primitive, up.primitive))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::swiglu(gate.primitive, up.primitive)),
        }
    }

    fn swiglu_backward(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (dg, du) = B::swiglu_backward(gate.primitive, up.primitive, grad.primitive);
        (untracked::<B, C>(dg), untracked::<B, C>(du))
    }

    fn log_probs(logits: FloatTensor<Self>, labels: &[i64]) -> FloatTensor<Self> {
        match LogProbsBackward.prepare::<C>([logits.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let out = B::log_probs(logits.primitive.clone(), labels);
                prep.finish((logits.primitive, labels.into(), out.clone()), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::log_probs(logits.primitive, labels)),
        }
    }

    fn log_probs_backward(
        logits: FloatTensor<Self>,
        labels: &[i64],
        out: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        untracked::<B, C>(B::log_probs_backward(logits.primitive, labels, out.primitive, grad.primitive))
    }

    fn rope_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        padding: Option<&KeyPadding>,
        spec: AttentionSpec,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let nodes = [q.node.clone(), k.node.clone(), v.node.clone()];
        match AttentionBackward.prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let (q_id, k_id, v_id) = (prep.checkpoint(&q), prep.checkpoint(&k), prep.checkpoint(&v));
                let (cos, sin) = (cos.primitive, sin.primitive);
                let (out, lse) =
                    B::rope_attention(q.primitive, k.primitive, v.primitive, cos.clone(), sin.clone(), padding, spec);
                let state = AttentionState {
                    q: q_id,
                    k: k_id,
                    v: v_id,
                    cos,
                    sin,
                    padding: padding.cloned(),
                    spec,
                    out: out.clone(),
                    lse: lse.clone(),
                };
                (prep.finish(state, out), untracked::<B, C>(lse))
            }
            OpsKind::UnTracked(prep) => {
                let (out, lse) = B::rope_attention(
                    q.primitive,
                    k.primitive,
                    v.primitive,
                    cos.primitive,
                    sin.primitive,
                    padding,
                    spec,
                );
                (prep.finish(out), untracked::<B, C>(lse))
            }
        }
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
        let (dq, dk, dv) = B::rope_attention_backward(
            q.primitive,
            k.primitive,
            v.primitive,
            cos.primitive,
            sin.primitive,
            padding,
            spec,
            out.primitive,
            lse.primitive,
            grad.primitive,
        );
        (untracked::<B, C>(dq), untracked::<B, C>(dk), untracked::<B, C>(dv))
    }

    fn release_uploads(device: &Self::Device) {
        B::release_uploads(device)
    }
}

/// The fused step updates inner tensors; this impl completes the bound on autodiff models.
impl<B: UpdateKernels, C: CheckpointStrategy> UpdateKernels for Autodiff<B, C> {
    fn lomo_update(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        scale: GradScale,
        lr: f64,
        weight_decay: f64,
    ) -> FloatTensor<Self> {
        let p = B::lomo_update(Self::inner(param), Self::inner(grad), scale, lr, weight_decay);
        Self::from_inner(p)
    }

    fn adalomo_matrix_update(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        scale: GradScale,
        moment: Option<(FloatTensor<Self>, FloatTensor<Self>)>,
        s: AdaLomoScalars,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let moment = moment.map(|(r, c)| (Self::inner(r), Self::inner(c)));
        let (p, r, c) = B::adalomo_matrix_update(Self::inner(param), Self::inner(grad), scale, moment, s);
        (Self::from_inner(p), Self::from_inner(r), Self::from_inner(c))
    }

    fn sum_sq(grad: FloatTensor<Self>, scale: f64) -> f64 {
        B::sum_sq(Self::inner(grad), scale)
    }
}

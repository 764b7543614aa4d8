//! The LLaMA-family causal language model (HF's `LlamaForCausalLM` / `Qwen2ForCausalLM`).

use std::collections::HashMap;

use burn::module::{Module, Param};
use burn::nn::{Embedding, Linear};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorData};
use lomo_kernels::{FusedKernels, KeyPadding};

use crate::attention::{Attention, AttentionInputs};
use crate::batch::Batch;
use crate::config::LlamaConfig;
use crate::dtype::StorageDtype;
use crate::error::Result;
use crate::kv_cache::KvCache;
use crate::mlp::Mlp;
use crate::norm::RmsNorm;
use crate::placement::{to_device, On, Placement};
use crate::rope::{RopeTables, RotaryEmbedding};
use crate::tensors::{BlockTensor, Slot, TensorSpec};

/// One decoder block: pre-norm attention and pre-norm MLP, each with a residual.
#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    /// Norm before attention.
    pub input_layernorm: RmsNorm<B>,
    /// Self-attention.
    pub self_attn: Attention<B>,
    /// Norm before the MLP.
    pub post_attention_layernorm: RmsNorm<B>,
    /// Feed-forward block.
    pub mlp: Mlp<B>,
}

impl<B: FusedKernels> DecoderLayer<B> {
    /// Applies the block to `[batch, tokens, hidden]`.
    pub fn forward(&self, x: Tensor<B, 3>, inputs: AttentionInputs<'_, B>) -> Tensor<B, 3> {
        let h = x.clone() + self.self_attn.forward(self.input_layernorm.forward(x), inputs);
        h.clone() + self.mlp.forward(self.post_attention_layernorm.forward(h))
    }
}

/// A parameter of [`Llama`], as [`Llama::hf_params`] lists it.
#[derive(Debug)]
pub enum HfParam<'a, B: Backend> {
    /// A norm weight or a bias.
    Vector(&'a Param<Tensor<B, 1>>),
    /// An embedding or Linear weight (burn's layout).
    Matrix(&'a Param<Tensor<B, 2>>),
}

impl<B: Backend> HfParam<'_, B> {
    /// The parameter's id.
    pub fn id(&self) -> burn::module::ParamId {
        match self {
            HfParam::Vector(p) => p.id,
            HfParam::Matrix(p) => p.id,
        }
    }
}

/// How the loss stage splits a batch's targets into chunks, so that the logits of all of
/// them (`targets × vocab`) never exist at once.
///
/// The loss stage computes logits only at positions that have a target (row by row, see
/// [`Batch::targets`]): prompt and padding positions never reach the LM head, so an
/// instruction or classification batch whose answers are a few tokens per row costs a few
/// rows of logits, not `batch × tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossChunking {
    /// At most this many target positions (all rows together) in a chunk.
    Tokens(usize),
    /// As many target positions per chunk as keep `positions × vocab` at or below this
    /// many logits (at least one position).
    MaxLogits(usize),
}

impl Default for LossChunking {
    /// 2²⁴ logits: 64 MiB in f32, whatever the vocabulary and batch size.
    fn default() -> Self {
        LossChunking::MaxLogits(1 << 24)
    }
}

/// A LLaMA-family causal language model.
///
/// Build one with [`crate::load()`] (safetensors, GGUF or random weights); save with
/// [`Llama::save_hf`] or [`Llama::save_gguf`]. Training presents it to the fused
/// step through [`lomo_optim::StagedModel`] (see `stages.rs`); generation is in
/// [`crate::generate()`].
#[derive(Module, Debug)]
pub struct Llama<B: Backend> {
    /// Token embedding, `[vocab, hidden]`; also the LM head when tied.
    pub embed_tokens: Embedding<B>,
    /// Decoder blocks.
    pub layers: Vec<DecoderLayer<B>>,
    /// Final norm.
    pub norm: RmsNorm<B>,
    /// LM head, `[hidden, vocab]` in burn's layout; `None` when tied to the embedding.
    pub lm_head: Option<Linear<B>>,
    #[module(skip)]
    pub(crate) config: LlamaConfig,
    #[module(skip)]
    pub(crate) rope: RotaryEmbedding,
    #[module(skip)]
    pub(crate) loss_chunking: LossChunking,
}

impl<B: Backend> Llama<B> {
    /// The resolved configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The storage dtype of the weights.
    ///
    /// # Panics
    /// If the weights were made with a dtype other than f32, bf16, f16 (not possible
    /// through this crate's constructors).
    pub fn dtype(&self) -> StorageDtype {
        StorageDtype::from_burn(self.embed_tokens.weight.val().dtype()).expect("weights are f32, bf16 or f16")
    }

    /// The device the weights live on.
    pub fn device(&self) -> B::Device {
        self.embed_tokens.weight.device()
    }

    /// The loss-chunking policy of the loss stage.
    pub fn loss_chunking(&self) -> LossChunking {
        self.loss_chunking
    }

    /// Sets how the loss stage is chunked.
    ///
    /// # Panics
    /// If the size is 0.
    pub fn with_loss_chunking(mut self, chunking: LossChunking) -> Self {
        let (LossChunking::Tokens(n) | LossChunking::MaxLogits(n)) = chunking;
        assert!(n > 0, "a loss chunk must hold at least one token");
        self.loss_chunking = chunking;
        self
    }

    /// Target positions in one loss chunk (the last chunk may hold fewer).
    pub fn loss_chunk_targets(&self) -> usize {
        match self.loss_chunking {
            LossChunking::Tokens(n) => n,
            LossChunking::MaxLogits(n) => (n / self.config.vocab_size).max(1),
        }
    }

    /// Number of loss chunks for `batch`: at least one, so that a batch without targets
    /// still runs the loss stage (its loss and gradients are zero).
    pub fn num_loss_chunks(&self, batch: &Batch) -> usize {
        batch.num_targets().div_ceil(self.loss_chunk_targets()).max(1)
    }

    /// Builds the model from tensors handed out by `take` (already in burn's layout and the
    /// storage dtype), one at a time: whatever `take` maps or reads, only the model's own
    /// copy of each tensor stays. Which tensors exist (biases, Qwen3's q/k norms, an untied
    /// head) is the configuration's rows of the tensor table. The backend's queued host copies
    /// of the uploads are released every [`RELEASE_UPLOADS_EVERY`] bytes per device
    /// ([`FusedKernels::release_uploads`]) and at the end.
    pub(crate) fn from_tensors(
        config: LlamaConfig,
        on: On<'_, B::Device>,
        take: impl FnMut(&TensorSpec) -> Result<TensorData>,
    ) -> Result<Self>
    where
        B: FusedKernels,
    {
        on.check(config.num_layers + 2)?;
        let specs = config.tensor_specs().into_iter().map(|s| (s.slot, s)).collect();
        let mut b = Builder::<B, _> {
            specs,
            take,
            on,
            num_layers: config.num_layers,
            eps: config.rms_norm_eps,
            uploaded: Vec::new(),
        };
        let embed_tokens = Embedding { weight: b.param(Slot::Embedding)? };
        let mut layers = Vec::with_capacity(config.num_layers);
        for layer in 0..config.num_layers {
            let slot = |tensor| Slot::Block { layer, tensor, bias: false };
            // Qwen3's per-head norms of queries and keys.
            let q_norm = b.maybe(slot(BlockTensor::QNorm))?.map(|weight| RmsNorm { weight, eps: b.eps });
            let k_norm = b.maybe(slot(BlockTensor::KNorm))?.map(|weight| RmsNorm { weight, eps: b.eps });
            let self_attn = Attention {
                q_proj: b.linear(slot(BlockTensor::QProj))?,
                k_proj: b.linear(slot(BlockTensor::KProj))?,
                v_proj: b.linear(slot(BlockTensor::VProj))?,
                o_proj: b.linear(slot(BlockTensor::OProj))?,
                num_heads: config.num_heads,
                num_kv_heads: config.num_kv_heads,
                head_dim: config.head_dim,
                q_norm,
                k_norm,
                window: config.sliding_window,
            };
            let mlp = Mlp {
                gate_proj: b.linear(slot(BlockTensor::GateProj))?,
                up_proj: b.linear(slot(BlockTensor::UpProj))?,
                down_proj: b.linear(slot(BlockTensor::DownProj))?,
            };
            let input_layernorm = b.rms(slot(BlockTensor::InputNorm))?;
            let post_attention_layernorm = b.rms(slot(BlockTensor::PostAttentionNorm))?;
            layers.push(DecoderLayer { input_layernorm, self_attn, post_attention_layernorm, mlp });
        }
        let norm = b.rms(Slot::FinalNorm)?;
        let lm_head = b.maybe(Slot::LmHead)?.map(|weight| Linear { weight, bias: None });
        for (device, _) in b.uploaded.drain(..) {
            B::release_uploads(&device);
        }
        let rope = RotaryEmbedding::new(&config);
        Ok(Self { embed_tokens, layers, norm, lm_head, config, rope, loss_chunking: LossChunking::default() })
    }

    /// The parameter in `slot`, if the model has it (a bias the configuration has none of, a
    /// tied head, a layer past the last are `None`).
    pub fn param(&self, slot: Slot) -> Option<HfParam<'_, B>> {
        fn linear<B: Backend>(l: &Linear<B>, bias: bool) -> Option<HfParam<'_, B>> {
            if bias {
                l.bias.as_ref().map(HfParam::Vector)
            } else {
                Some(HfParam::Matrix(&l.weight))
            }
        }
        fn norm<B: Backend>(n: Option<&RmsNorm<B>>, bias: bool) -> Option<HfParam<'_, B>> {
            n.filter(|_| !bias).map(|n| HfParam::Vector(&n.weight))
        }
        match slot {
            Slot::Embedding => Some(HfParam::Matrix(&self.embed_tokens.weight)),
            Slot::FinalNorm => Some(HfParam::Vector(&self.norm.weight)),
            Slot::LmHead => self.lm_head.as_ref().map(|h| HfParam::Matrix(&h.weight)),
            Slot::Block { layer, tensor, bias } => {
                let l = self.layers.get(layer)?;
                match tensor {
                    BlockTensor::QProj => linear(&l.self_attn.q_proj, bias),
                    BlockTensor::KProj => linear(&l.self_attn.k_proj, bias),
                    BlockTensor::VProj => linear(&l.self_attn.v_proj, bias),
                    BlockTensor::OProj => linear(&l.self_attn.o_proj, bias),
                    BlockTensor::GateProj => linear(&l.mlp.gate_proj, bias),
                    BlockTensor::UpProj => linear(&l.mlp.up_proj, bias),
                    BlockTensor::DownProj => linear(&l.mlp.down_proj, bias),
                    BlockTensor::QNorm => norm(l.self_attn.q_norm.as_ref(), bias),
                    BlockTensor::KNorm => norm(l.self_attn.k_norm.as_ref(), bias),
                    BlockTensor::InputNorm => norm(Some(&l.input_layernorm), bias),
                    BlockTensor::PostAttentionNorm => norm(Some(&l.post_attention_layernorm), bias),
                }
            }
        }
    }

    /// Every parameter under its HF name, in the order of [`LlamaConfig::tensor_specs`].
    /// `spec.transposed` says whether burn holds the transpose of the HF tensor.
    pub fn hf_params(&self) -> Vec<(TensorSpec, HfParam<'_, B>)> {
        self.config
            .tensor_specs()
            .into_iter()
            .map(|spec| {
                let param = self.param(spec.slot).unwrap_or_else(|| panic!("model has no `{}`", spec.name));
                (spec, param)
            })
            .collect()
    }

    /// Every tensor under its HF name and in HF's layout (`[out, in]` for Linear weights,
    /// a vector as `[1, n]`), in the order of [`LlamaConfig::tensor_specs`]. Each is a view of
    /// the weight, not a copy.
    pub fn hf_tensors(&self) -> Vec<(TensorSpec, Tensor<B, 2>)> {
        self.hf_params()
            .into_iter()
            .map(|(spec, param)| {
                let tensor = match param {
                    HfParam::Vector(p) => p.val().unsqueeze::<2>(),
                    HfParam::Matrix(p) if spec.transposed => p.val().transpose(),
                    HfParam::Matrix(p) => p.val(),
                };
                (spec, tensor)
            })
            .collect()
    }
}

impl<B: Backend> Llama<B> {
    /// The device stage `stage`'s parameters live on.
    ///
    /// # Panics
    /// If `stage` is not below `num_layers + 2`.
    pub fn stage_device(&self, stage: usize) -> B::Device {
        let layers = self.layers.len();
        match stage {
            0 => self.embed_tokens.weight.device(),
            s if s <= layers => self.layers[s - 1].input_layernorm.weight.device(),
            s if s == layers + 1 => self.norm.weight.device(),
            s => panic!("stage {s} out of range: the model has {} stages", layers + 2),
        }
    }

    /// The device of the loss stage (final norm and LM head).
    pub fn head_device(&self) -> B::Device {
        self.norm.weight.device()
    }

    /// Where the stages are now.
    pub fn placement(&self) -> Placement<B::Device> {
        Placement::from_stages((0..self.layers.len() + 2).map(|s| self.stage_device(s)).collect())
    }

    /// Moves each stage's parameters to its device in `placement`, as leaves that still require
    /// their gradient, ids kept (burn's `Module::fork`; `to_device` would leave each weight a
    /// node of the move, whose gradient the fused step never sees).
    ///
    /// # Errors
    /// If the placement is for another number of stages.
    pub fn place(self, placement: &Placement<B::Device>) -> Result<Self> {
        let n = self.layers.len() + 2;
        On::Stages(placement).check(n)?;
        let Llama { embed_tokens, layers, norm, lm_head, config, rope, loss_chunking } = self;
        let embed_tokens = embed_tokens.fork(placement.stage(0));
        let layers = layers.into_iter().enumerate().map(|(i, l)| l.fork(placement.stage(i + 1))).collect();
        let norm = norm.fork(placement.stage(n - 1));
        let lm_head = lm_head.map(|h| h.fork(placement.stage(n - 1)));
        Ok(Llama { embed_tokens, layers, norm, lm_head, config, rope, loss_chunking })
    }
}

/// Bytes uploaded to a device between two [`FusedKernels::release_uploads`] while a model
/// loads: what a backend that queues its uploads' host copies holds at most (plus a tensor).
pub const RELEASE_UPLOADS_EVERY: usize = 256 << 20;

/// Makes the parameters of a model being built, each on its stage's device, from the tensors
/// `take` hands out for the configuration's rows of the tensor table.
struct Builder<'o, B: Backend, F> {
    specs: HashMap<Slot, TensorSpec>,
    take: F,
    on: On<'o, B::Device>,
    num_layers: usize,
    eps: f64,
    /// Per device written to: bytes uploaded since its last release.
    uploaded: Vec<(B::Device, usize)>,
}

impl<B: FusedKernels, F: FnMut(&TensorSpec) -> Result<TensorData>> Builder<'_, B, F> {
    /// The parameter in `slot`, or `None` when the configuration has no such tensor.
    fn maybe<const D: usize>(&mut self, slot: Slot) -> Result<Option<Param<Tensor<B, D>>>> {
        let Some(spec) = self.specs.get(&slot) else { return Ok(None) };
        let data = (self.take)(spec)?;
        let (dtype, bytes) = (data.dtype, data.bytes.len());
        let device = self.on.stage(slot.stage(self.num_layers)).clone();
        // A weight lives as long as the model: in cubecl's persistent memory (as burn's own
        // `Param::from_data` puts it) it is a buffer of its own size, where the pools would
        // give it a slice of a page shared with the step's transients (a no-op elsewhere).
        let tensor = if bytes == 0 {
            Tensor::from_data(data, (&device, dtype))
        } else {
            B::memory_persistent_allocations(&device, data, |data| Tensor::from_data(data, (&device, dtype)))
        };
        let at = match self.uploaded.iter().position(|(d, _)| *d == device) {
            Some(at) => at,
            None => {
                self.uploaded.push((device, 0));
                self.uploaded.len() - 1
            }
        };
        let (device, pending) = &mut self.uploaded[at];
        *pending += bytes;
        if *pending >= RELEASE_UPLOADS_EVERY {
            B::release_uploads(device);
            *pending = 0;
        }
        Ok(Some(Param::from_tensor(tensor)))
    }

    fn param<const D: usize>(&mut self, slot: Slot) -> Result<Param<Tensor<B, D>>> {
        Ok(self.maybe(slot)?.unwrap_or_else(|| panic!("`{}` is not in the tensor specs", slot.hf_name())))
    }

    /// The Linear whose weight is `slot`, with its bias when the configuration has one.
    fn linear(&mut self, slot: Slot) -> Result<Linear<B>> {
        let weight = self.param(slot)?;
        let bias = match slot {
            Slot::Block { layer, tensor, .. } => self.maybe(Slot::Block { layer, tensor, bias: true })?,
            _ => None,
        };
        Ok(Linear { weight, bias })
    }

    fn rms(&mut self, slot: Slot) -> Result<RmsNorm<B>> {
        Ok(RmsNorm { weight: self.param(slot)?, eps: self.eps })
    }
}

impl<B: FusedKernels> Llama<B> {
    /// Stage 0: token embedding, `[batch, tokens, hidden]`.
    pub fn embed(&self, batch: &Batch) -> Tensor<B, 3> {
        lomo_kernels::embedding(
            self.embed_tokens.weight.val(),
            batch.input_ids(),
            [batch.batch_size(), batch.seq_len()],
        )
    }

    /// RoPE tables on `device` and padded keys for a training / scoring forward over `batch`.
    pub(crate) fn attention_inputs(&self, batch: &Batch, device: &B::Device) -> (RopeTables<B>, Option<KeyPadding>) {
        let rope = self.rope.tables(0, batch.seq_len(), self.dtype().to_burn(), device);
        (rope, KeyPadding::from_mask(batch.attention_mask(), batch.batch_size()))
    }

    /// Runs decoder block `layer` on `x` (no cache: training and scoring), on the block's
    /// device (`x` is moved there first when it is elsewhere).
    pub fn block(&self, layer: usize, x: Tensor<B, 3>, batch: &Batch) -> Tensor<B, 3> {
        let device = self.stage_device(layer + 1);
        let (rope, padding) = self.attention_inputs(batch, &device);
        self.layers[layer]
            .forward(to_device(x, &device), AttentionInputs::Batch { rope: &rope, padding: padding.as_ref() })
    }

    /// Final norm and LM head: logits `[batch, tokens, vocab]` in f32.
    pub fn head(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [batch, tokens, hidden] = x.dims();
        let logits = self.head_rows(x.reshape([batch * tokens, hidden]));
        let vocab = logits.dims()[1];
        logits.reshape([batch, tokens, vocab])
    }

    /// Final norm and LM head on rows of hidden states, `[rows, hidden]` → `[rows, vocab]`
    /// in f32. The head always sees a 2-D input: burn's Linear backward on a 3-D input
    /// makes one weight-sized product per batch row before summing them.
    pub fn head_rows(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.head_logits(x).cast(DType::F32)
    }

    /// Final norm and LM head on rows, `[rows, hidden]` → `[rows, vocab]` in the storage dtype.
    /// Runs on the loss stage's device (`x` is moved there first when it is elsewhere).
    fn head_logits(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let device = self.head_device();
        let x = self.norm.forward(to_device(x, &device));
        match &self.lm_head {
            Some(head) => crate::attention::dense(head, x),
            // Tied: the embedding `[vocab, hidden]` read as a `[hidden, vocab]` view, no copy;
            // a copy on the head's device when the embedding's stage is placed elsewhere.
            None => lomo_kernels::linear(x, to_device(self.embed_tokens.weight.val(), &device).transpose(), None),
        }
    }

    /// The last decoder block's output for `batch`, `[batch, tokens, hidden]` (before the
    /// final norm): the whole model but the head.
    pub fn hidden_states(&self, batch: &Batch) -> Tensor<B, 3> {
        let mut x = self.embed(batch);
        let mut inputs: Option<(B::Device, RopeTables<B>, Option<KeyPadding>)> = None;
        for (i, layer) in self.layers.iter().enumerate() {
            // The tables are made again only where the placement changes device.
            let device = self.stage_device(i + 1);
            if inputs.as_ref().is_none_or(|(d, ..)| d != &device) {
                let (rope, padding) = self.attention_inputs(batch, &device);
                inputs = Some((device.clone(), rope, padding));
            }
            let (_, rope, padding) = inputs.as_ref().expect("made above");
            x = layer.forward(to_device(x, &device), AttentionInputs::Batch { rope, padding: padding.as_ref() });
        }
        x
    }

    /// Logits of every position, `[batch, tokens, vocab]` in f32: the whole model at once.
    pub fn forward(&self, batch: &Batch) -> Tensor<B, 3> {
        self.head(self.hidden_states(batch))
    }

    /// `log p(target)` of each of `batch`'s targets, in [`Batch::targets`] order, `[n]` in
    /// f32: the LM head runs on those positions only. A batch without targets gives `[0]`.
    pub fn target_log_probs(&self, batch: &Batch) -> Tensor<B, 1> {
        self.log_probs(batch, &batch.targets())
    }

    /// `log p(token)` of the next token after each `(b × seq_len + t, token)` of `reads`
    /// (the distribution at row b, position t), `[n]` in f32, whatever `batch`'s labels say:
    /// several tokens may be read at one position. The LM head runs on those positions only.
    ///
    /// # Panics
    /// If a position is outside the batch or a token outside the vocabulary.
    pub fn log_probs(&self, batch: &Batch, reads: &[(usize, i64)]) -> Tensor<B, 1> {
        if reads.is_empty() {
            return Tensor::zeros([0], (&self.head_device(), DType::F32));
        }
        let positions = batch.batch_size() * batch.seq_len();
        let vocab = self.config.vocab_size as i64;
        for &(position, token) in reads {
            assert!(position < positions, "position {position} is outside the batch ({positions} positions)");
            assert!((0..vocab).contains(&token), "token {token} is outside the vocabulary of {vocab}");
        }
        log_probs_at(self, self.hidden_states(batch), reads)
    }

    /// HF's loss: mean cross-entropy over the batch's targets, `[1]`, computed from the
    /// whole batch's logits at once (no chunking; a reference for the staged path).
    pub fn loss(&self, batch: &Batch) -> Tensor<B, 1> {
        let logits = self.forward(batch);
        let num_targets = batch.num_targets().max(1);
        cross_entropy_sum(logits, batch).div_scalar(num_targets as f64)
    }

    /// Chunk `chunk` of the loss stage: final norm, LM head and cross-entropy of targets
    /// `[chunk × n, (chunk + 1) × n)` of [`Batch::targets`] only, **summed**, `[1]`. For a
    /// batch without targets, chunk 0 is a zero loss that still depends on `hidden` (so the
    /// stage's gradients exist, all zero).
    ///
    /// # Panics
    /// If `chunk` is not below [`Self::num_loss_chunks`].
    pub fn loss_chunk(&self, hidden: Tensor<B, 3>, batch: &Batch, chunk: usize) -> Tensor<B, 1> {
        let targets = batch.targets();
        if targets.is_empty() {
            assert_eq!(chunk, 0, "a batch without targets has one loss chunk");
            return log_probs_at(self, hidden, &[(0, 0)]).sum().mul_scalar(0.0);
        }
        let per_chunk = self.loss_chunk_targets();
        let start = chunk * per_chunk;
        assert!(start < targets.len(), "loss chunk {chunk} is past the batch's {} targets", targets.len());
        let end = (start + per_chunk).min(targets.len());
        log_probs_at(self, hidden, &targets[start..end]).sum().neg()
    }

    /// Logits of the last position of each row for `input_ids` (`[batch, tokens]`, no
    /// padding) following the positions in `cache`, which it extends: incremental decoding.
    pub fn forward_cached(&self, input_ids: &[i64], batch_size: usize, cache: &mut KvCache<B>) -> Tensor<B, 2> {
        let tokens = input_ids.len() / batch_size;
        let offset = cache.len();
        let mut x = lomo_kernels::embedding(self.embed_tokens.weight.val(), input_ids, [batch_size, tokens]);
        let mut tables: Option<(B::Device, RopeTables<B>)> = None;
        for (i, layer) in self.layers.iter().enumerate() {
            let device = self.stage_device(i + 1);
            if tables.as_ref().is_none_or(|(d, _)| d != &device) {
                tables = Some((device.clone(), self.rope.tables(offset, tokens, self.dtype().to_burn(), &device)));
            }
            let (_, rope) = tables.as_ref().expect("made above");
            x = layer
                .forward(to_device(x, &device), AttentionInputs::Cached { rope, offset, cache: cache.layer_mut(i) });
        }
        cache.advance(tokens);
        let logits = self.head(x.narrow(1, tokens - 1, 1));
        let vocab = logits.dims()[2];
        logits.reshape([batch_size, vocab])
    }
}

/// `log p(label)` at each `(flat position, label)` of `targets`, `[n]` in f32: the rows of
/// `hidden` (`[batch, tokens, hidden]`, flattened) at those positions go through the head.
fn log_probs_at<B: FusedKernels>(model: &Llama<B>, hidden: Tensor<B, 3>, targets: &[(usize, i64)]) -> Tensor<B, 1> {
    let device = hidden.device();
    let [batch, tokens, width] = hidden.dims();
    let n = targets.len();
    let positions: Vec<i64> = targets.iter().map(|&(p, _)| p as i64).collect();
    let labels: Vec<i64> = targets.iter().map(|&(_, l)| l).collect();
    let positions = Tensor::<B, 1, Int>::from_data(TensorData::new(positions, [n]), &device);
    let rows = hidden.reshape([batch * tokens, width]).select(0, positions);
    // One fused op reads log-softmax at the labels; its backward writes over the logits.
    lomo_kernels::log_probs(model.head_logits(rows), &labels)
}

/// Sum over the batch's targets of `-log p(target)`, `[1]`, from the logits of every
/// position, `[batch, tokens, vocab]` in f32: the whole-model reference that the staged,
/// target-only loss is tested against.
fn cross_entropy_sum<B: Backend>(logits: Tensor<B, 3>, batch: &Batch) -> Tensor<B, 1> {
    let device = logits.device();
    let [rows, len] = [batch.batch_size(), batch.seq_len()];
    let mut targets = Vec::with_capacity(rows * len);
    let mut weights = Vec::with_capacity(rows * len);
    for b in 0..rows {
        for t in 0..len {
            let target = batch.target(b, t);
            targets.push(target.unwrap_or(0));
            weights.push(if target.is_some() { 1f32 } else { 0f32 });
        }
    }
    let targets = Tensor::<B, 3, Int>::from_data(TensorData::new(targets, [rows, len, 1]), &device);
    let weights = Tensor::<B, 2>::from_data(TensorData::new(weights, [rows, len]), (&device, DType::F32));
    let log_probs = log_softmax(logits, 2).gather(2, targets).reshape([rows, len]);
    (log_probs * weights).sum().neg()
}

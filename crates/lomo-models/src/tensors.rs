//! The tensor table of the LLaMA family: every tensor of the model as a [`Slot`] (which
//! parameter it is), with its HF name, its llama.cpp (GGUF) name, its HF shape and whether burn
//! stores it transposed.
//!
//! Loading, saving, the GGUF reader and writer, the working copy, initialisation and the planner
//! all read names off this table ([`LlamaConfig::tensor_specs`], [`hf_to_gguf`],
//! [`gguf_to_hf`]): a name is written here and nowhere else. The families this crate builds
//! (`llama`, `qwen2`, `qwen3`, `mistral`) share HF's and llama.cpp's names; they differ only in
//! which rows of the table their configuration includes (biases, Qwen3's q/k norms, a tied
//! head).

use crate::config::LlamaConfig;

/// A tensor of one decoder block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockTensor {
    /// The query projection.
    QProj,
    /// The key projection.
    KProj,
    /// The value projection.
    VProj,
    /// The attention output projection.
    OProj,
    /// The MLP's gate projection.
    GateProj,
    /// The MLP's up projection.
    UpProj,
    /// The MLP's down projection.
    DownProj,
    /// Qwen3's per-head norm of the queries.
    QNorm,
    /// Qwen3's per-head norm of the keys.
    KNorm,
    /// The norm before attention.
    InputNorm,
    /// The norm before the MLP.
    PostAttentionNorm,
}

/// Which parameter of the model a tensor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Slot {
    /// The token embedding (also the LM head when tied).
    Embedding,
    /// A weight (`bias == false`) or bias of decoder block `layer`.
    Block {
        /// The block.
        layer: usize,
        /// Which of its tensors.
        tensor: BlockTensor,
        /// The projection's bias rather than its weight.
        bias: bool,
    },
    /// The final norm.
    FinalNorm,
    /// The untied LM head.
    LmHead,
}

/// The block tensors: HF's name (after `model.layers.N.`) and llama.cpp's (after `blk.N.`).
const BLOCK_NAMES: [(BlockTensor, &str, &str); 11] = [
    (BlockTensor::QProj, "self_attn.q_proj", "attn_q"),
    (BlockTensor::KProj, "self_attn.k_proj", "attn_k"),
    (BlockTensor::VProj, "self_attn.v_proj", "attn_v"),
    (BlockTensor::OProj, "self_attn.o_proj", "attn_output"),
    (BlockTensor::GateProj, "mlp.gate_proj", "ffn_gate"),
    (BlockTensor::UpProj, "mlp.up_proj", "ffn_up"),
    (BlockTensor::DownProj, "mlp.down_proj", "ffn_down"),
    (BlockTensor::QNorm, "self_attn.q_norm", "attn_q_norm"),
    (BlockTensor::KNorm, "self_attn.k_norm", "attn_k_norm"),
    (BlockTensor::InputNorm, "input_layernorm", "attn_norm"),
    (BlockTensor::PostAttentionNorm, "post_attention_layernorm", "ffn_norm"),
];

/// The tensors outside the blocks: HF's name and llama.cpp's, both without `.weight`.
const MODEL_NAMES: [(Slot, &str, &str); 3] = [
    (Slot::Embedding, "model.embed_tokens", "token_embd"),
    (Slot::FinalNorm, "model.norm", "output_norm"),
    (Slot::LmHead, "lm_head", "output"),
];

/// How a name is spelled: HF's or llama.cpp's.
#[derive(Clone, Copy)]
enum Naming {
    Hf,
    Gguf,
}

impl Naming {
    fn block_prefix(self) -> &'static str {
        match self {
            Naming::Hf => "model.layers.",
            Naming::Gguf => "blk.",
        }
    }

    fn pick(self, hf: &'static str, gguf: &'static str) -> &'static str {
        match self {
            Naming::Hf => hf,
            Naming::Gguf => gguf,
        }
    }
}

impl BlockTensor {
    /// Whether the tensor is a norm weight (a vector of ones at initialisation).
    pub fn is_norm(self) -> bool {
        matches!(self, Self::QNorm | Self::KNorm | Self::InputNorm | Self::PostAttentionNorm)
    }

    fn names(self) -> (&'static str, &'static str) {
        let (_, hf, gguf) = BLOCK_NAMES.iter().find(|(t, ..)| *t == self).expect("every block tensor is in the table");
        (hf, gguf)
    }
}

impl Slot {
    fn name(self, naming: Naming) -> String {
        match self {
            Slot::Block { layer, tensor, bias } => {
                let (hf, gguf) = tensor.names();
                let kind = if bias { "bias" } else { "weight" };
                format!("{}{layer}.{}.{kind}", naming.block_prefix(), naming.pick(hf, gguf))
            }
            top => {
                let (_, hf, gguf) = MODEL_NAMES.iter().find(|(s, ..)| *s == top).expect("in the table");
                format!("{}.weight", naming.pick(hf, gguf))
            }
        }
    }

    fn parse(name: &str, naming: Naming) -> Option<Slot> {
        let (stem, kind) = name.rsplit_once('.')?;
        let bias = match kind {
            "weight" => false,
            "bias" => true,
            _ => return None,
        };
        if let Some(rest) = stem.strip_prefix(naming.block_prefix()) {
            let (layer, part) = rest.split_once('.')?;
            let layer = layer.parse().ok()?;
            let (tensor, ..) = BLOCK_NAMES.iter().find(|(_, hf, gguf)| naming.pick(hf, gguf) == part)?;
            return Some(Slot::Block { layer, tensor: *tensor, bias });
        }
        let (slot, ..) = MODEL_NAMES.iter().find(|(_, hf, gguf)| naming.pick(hf, gguf) == stem)?;
        (!bias).then_some(*slot)
    }

    /// HF's name, e.g. `model.layers.3.self_attn.q_proj.weight`.
    pub fn hf_name(self) -> String {
        self.name(Naming::Hf)
    }

    /// llama.cpp's name, e.g. `blk.3.attn_q.weight`.
    pub fn gguf_name(self) -> String {
        self.name(Naming::Gguf)
    }

    /// The slot an HF name stands for, if it is one of the table's.
    pub fn from_hf_name(name: &str) -> Option<Slot> {
        Self::parse(name, Naming::Hf)
    }

    /// The slot a llama.cpp name stands for, if it is one of the table's.
    pub fn from_gguf_name(name: &str) -> Option<Slot> {
        Self::parse(name, Naming::Gguf)
    }

    /// The stage that owns the tensor: 0 the embedding, `1..=L` the blocks, `L + 1` the loss stage.
    pub fn stage(self, num_layers: usize) -> usize {
        match self {
            Slot::Embedding => 0,
            Slot::Block { layer, .. } => layer + 1,
            Slot::FinalNorm | Slot::LmHead => num_layers + 1,
        }
    }

    /// Whether it is a norm weight (ones at initialisation).
    pub fn is_norm(self) -> bool {
        match self {
            Slot::Block { tensor, bias, .. } => tensor.is_norm() && !bias,
            Slot::FinalNorm => true,
            Slot::Embedding | Slot::LmHead => false,
        }
    }

    /// Whether it is a bias (zeros at initialisation).
    pub fn is_bias(self) -> bool {
        matches!(self, Slot::Block { bias: true, .. })
    }

    /// The number of heads llama.cpp interleaves the rows of this tensor by (`Some` for the
    /// query and key projections, weight and bias): GGUF stores them permuted for its rotary
    /// layout.
    pub fn gguf_permuted_heads(self, config: &LlamaConfig) -> Option<usize> {
        match self {
            Slot::Block { tensor: BlockTensor::QProj, .. } => Some(config.num_heads),
            Slot::Block { tensor: BlockTensor::KProj, .. } => Some(config.num_kv_heads),
            _ => None,
        }
    }
}

/// The llama.cpp name of an HF tensor name, if the table has it.
pub fn hf_to_gguf(hf: &str) -> Option<String> {
    Slot::from_hf_name(hf).map(Slot::gguf_name)
}

/// The HF name of a llama.cpp tensor name, if the table has it.
pub fn gguf_to_hf(gguf: &str) -> Option<String> {
    Slot::from_gguf_name(gguf).map(Slot::hf_name)
}

/// How a checkpoint tensor maps onto the model: which parameter it is, its HF name, its HF
/// shape and whether burn stores it transposed (a `Linear` weight is `[out, in]` in HF,
/// `[in, out]` in burn).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// Which parameter it is.
    pub slot: Slot,
    /// HF name, e.g. `model.layers.3.self_attn.q_proj.weight` ([`Slot::hf_name`]).
    pub name: String,
    /// Shape as HF stores it.
    pub shape: Vec<usize>,
    /// Whether burn holds the transpose of the HF tensor.
    pub transposed: bool,
}

impl TensorSpec {
    fn new(slot: Slot, shape: Vec<usize>, transposed: bool) -> Self {
        Self { slot, name: slot.hf_name(), shape, transposed }
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// llama.cpp's name ([`Slot::gguf_name`]).
    pub fn gguf_name(&self) -> String {
        self.slot.gguf_name()
    }
}

impl LlamaConfig {
    /// Every tensor of the model, in the order HF lists them: the rows of the tensor table this
    /// configuration has. The single source of truth for loading, saving and counting.
    pub fn tensor_specs(&self) -> Vec<TensorSpec> {
        let (h, i, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let q_out = self.num_heads * self.head_dim;
        let kv_out = self.num_kv_heads * self.head_dim;
        let mut specs = vec![TensorSpec::new(Slot::Embedding, vec![v, h], false)];
        for layer in 0..self.num_layers {
            let block = |tensor, bias| Slot::Block { layer, tensor, bias };
            let mut linear = |tensor: BlockTensor, out: usize, inp: usize, bias: bool| {
                specs.push(TensorSpec::new(block(tensor, false), vec![out, inp], true));
                if bias {
                    specs.push(TensorSpec::new(block(tensor, true), vec![out], false));
                }
            };
            linear(BlockTensor::QProj, q_out, h, self.qkv_bias);
            linear(BlockTensor::KProj, kv_out, h, self.qkv_bias);
            linear(BlockTensor::VProj, kv_out, h, self.qkv_bias);
            linear(BlockTensor::OProj, h, q_out, self.o_bias);
            linear(BlockTensor::GateProj, i, h, self.mlp_bias);
            linear(BlockTensor::UpProj, i, h, self.mlp_bias);
            linear(BlockTensor::DownProj, h, i, self.mlp_bias);
            let mut norm = |tensor: BlockTensor, width: usize| {
                specs.push(TensorSpec::new(block(tensor, false), vec![width], false));
            };
            if self.qk_norm {
                norm(BlockTensor::QNorm, self.head_dim);
                norm(BlockTensor::KNorm, self.head_dim);
            }
            norm(BlockTensor::InputNorm, h);
            norm(BlockTensor::PostAttentionNorm, h);
        }
        specs.push(TensorSpec::new(Slot::FinalNorm, vec![h], false));
        if !self.tie_word_embeddings {
            specs.push(TensorSpec::new(Slot::LmHead, vec![v, h], true));
        }
        specs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for hf in
            ["model.layers.12.self_attn.k_proj.weight", "model.norm.weight", "model.layers.0.mlp.down_proj.weight"]
        {
            assert_eq!(gguf_to_hf(&hf_to_gguf(hf).unwrap()).unwrap(), hf);
        }
        assert_eq!(hf_to_gguf("model.layers.3.self_attn.q_proj.bias").unwrap(), "blk.3.attn_q.bias");
        assert_eq!(gguf_to_hf("token_embd.weight").unwrap(), "model.embed_tokens.weight");
        assert_eq!(gguf_to_hf("rope_freqs.weight"), None);
        assert_eq!(hf_to_gguf("model.norm.bias"), None);
    }
}

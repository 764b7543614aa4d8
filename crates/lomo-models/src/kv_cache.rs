//! The key/value cache of incremental decoding. Owned by the generation code: training
//! never builds one, so a training step never holds keys and values past their layer.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// Keys and values of the positions seen so far in one layer, `[batch, kv_heads, seen, head_dim]`,
/// after RoPE.
#[derive(Debug, Clone, Default)]
pub struct LayerKvCache<B: Backend> {
    keys: Option<Tensor<B, 4>>,
    values: Option<Tensor<B, 4>>,
}

impl<B: Backend> LayerKvCache<B> {
    /// Appends the new positions' keys and values; returns all keys and values so far.
    pub fn append(&mut self, keys: Tensor<B, 4>, values: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let keys = match self.keys.take() {
            Some(old) => Tensor::cat(vec![old, keys], 2),
            None => keys,
        };
        let values = match self.values.take() {
            Some(old) => Tensor::cat(vec![old, values], 2),
            None => values,
        };
        self.keys = Some(keys.clone());
        self.values = Some(values.clone());
        (keys, values)
    }
}

/// One [`LayerKvCache`] per decoder layer, and the number of positions they hold.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    layers: Vec<LayerKvCache<B>>,
    len: usize,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for a model with `num_layers` decoder layers.
    pub fn new(num_layers: usize) -> Self {
        Self { layers: (0..num_layers).map(|_| LayerKvCache { keys: None, values: None }).collect(), len: 0 }
    }

    /// Number of positions cached (the position of the next token).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn layer_mut(&mut self, layer: usize) -> &mut LayerKvCache<B> {
        &mut self.layers[layer]
    }

    pub(crate) fn advance(&mut self, tokens: usize) {
        self.len += tokens;
    }
}

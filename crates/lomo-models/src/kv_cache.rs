//! The key/value cache of incremental decoding. Owned by the generation code: training
//! never builds one, so a training step never holds keys and values past their layer.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// Positions per block of a layer's cache: appending a token copies at most one block's keys
/// and values, never the whole cache.
pub const CACHE_BLOCK: usize = 64;

/// Keys and values of the positions seen so far in one layer, after RoPE, in blocks of at
/// most [`CACHE_BLOCK`] positions (a prompt longer than that is one block of its own), each
/// `[batch, kv_heads, positions, head_dim]`. Attention runs per block and merges the blocks
/// by their log-sum-exp, so no concatenation of the whole cache is ever made.
#[derive(Debug, Clone, Default)]
pub struct LayerKvCache<B: Backend> {
    blocks: Vec<CacheBlock<B>>,
}

/// One block of a layer's cache.
#[derive(Debug, Clone)]
pub struct CacheBlock<B: Backend> {
    /// Position of its first key.
    pub start: usize,
    /// Keys, `[batch, kv_heads, positions, head_dim]`.
    pub keys: Tensor<B, 4>,
    /// Values, same shape.
    pub values: Tensor<B, 4>,
}

impl<B: Backend> CacheBlock<B> {
    /// Positions it holds.
    pub fn len(&self) -> usize {
        self.keys.dims()[2]
    }

    /// Whether it holds none (never, once made).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<B: Backend> LayerKvCache<B> {
    /// Appends the new positions' keys and values (`[batch, kv_heads, new, head_dim]`): into
    /// the last block while it stays within [`CACHE_BLOCK`], else as a new block.
    pub fn append(&mut self, keys: Tensor<B, 4>, values: Tensor<B, 4>) {
        let new = keys.dims()[2];
        match self.blocks.last_mut() {
            Some(last) if last.len() + new <= CACHE_BLOCK => {
                last.keys = Tensor::cat(vec![last.keys.clone(), keys], 2);
                last.values = Tensor::cat(vec![last.values.clone(), values], 2);
            }
            _ => {
                let start = self.blocks.last().map_or(0, |b| b.start + b.len());
                self.blocks.push(CacheBlock { start, keys, values });
            }
        }
    }

    /// The blocks, oldest first.
    pub fn blocks(&self) -> &[CacheBlock<B>] {
        &self.blocks
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
        Self { layers: (0..num_layers).map(|_| LayerKvCache { blocks: Vec::new() }).collect(), len: 0 }
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

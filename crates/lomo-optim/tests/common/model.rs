//! A small staged model with a tied parameter: an embedding lookup (stage 0), residual
//! `tanh` MLP blocks (stages 1..=L), and a loss stage whose output layer is the embedding
//! transposed, scaled by a 1-D gain. Boundary activations are `[batch, hidden]` (rank 2),
//! so nothing here is a transformer.

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Int, Tensor, TensorData};
use lomo_optim::{param_ids, StagedModel};

#[derive(Module, Debug)]
pub struct TiedMlp<B: Backend> {
    pub embed: Param<Tensor<B, 2>>,
    pub blocks: Vec<Linear<B>>,
    pub gain: Param<Tensor<B, 1>>,
    pub rows_per_chunk: usize,
}

/// One micro-batch: a token per row and its target class (-100: no loss).
#[derive(Debug, Clone)]
pub struct Batch {
    pub tokens: Vec<i64>,
    pub targets: Vec<i64>,
}

impl Batch {
    pub fn rows(&self) -> usize {
        self.tokens.len()
    }
    /// Rows `range` of this batch.
    pub fn slice(&self, range: std::ops::Range<usize>) -> Batch {
        Batch { tokens: self.tokens[range.clone()].to_vec(), targets: self.targets[range].to_vec() }
    }
}

impl<B: Backend> TiedMlp<B> {
    /// Weights from `seed` through our own generator: the backend's RNG is global and tests
    /// run in parallel, so two models built from one seed would otherwise differ.
    pub fn new(vocab: usize, hidden: usize, blocks: usize, seed: u64, device: &B::Device) -> Self {
        let mut rng = XorShift::new(seed);
        let mut tensor = |shape: Vec<usize>, lo: f32, hi: f32| {
            let n = shape.iter().product::<usize>();
            let values: Vec<f32> = (0..n).map(|_| lo + (hi - lo) * rng.unit()).collect();
            Tensor::<B, 2>::from_data(TensorData::new(values, shape), device)
        };
        let embed = tensor(vec![vocab, hidden], -1.0, 1.0);
        let k = (1.0 / hidden as f32).sqrt();
        let blocks = (0..blocks)
            .map(|_| {
                let mut linear = LinearConfig::new(hidden, hidden).init(device);
                linear.weight = Param::from_tensor(tensor(vec![hidden, hidden], -k, k));
                linear.bias = Some(Param::from_tensor(tensor(vec![1, hidden], -k, k).reshape([hidden])));
                linear
            })
            .collect();
        let gain = tensor(vec![1, hidden], 0.5, 1.5).reshape([hidden]);
        Self { embed: Param::from_tensor(embed), blocks, gain: Param::from_tensor(gain), rows_per_chunk: usize::MAX }
    }

    /// The same model with every float parameter cast to `dtype`.
    pub fn cast(self, dtype: DType) -> Self {
        struct Cast(DType);
        impl<B: Backend> burn::module::ModuleMapper<B> for Cast {
            fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
                let (id, t, mapper) = param.consume();
                Param::from_mapped_value(id, t.cast(self.0), mapper)
            }
        }
        self.map(&mut Cast(dtype))
    }
}

fn stage<B: Backend>(m: &TiedMlp<B>, stage: usize, input: Option<Tensor<B, 2>>, batch: &Batch) -> Tensor<B, 2> {
    if stage == 0 {
        let device = m.embed.val().device();
        let ids = Tensor::<B, 1, Int>::from_data(TensorData::new(batch.tokens.clone(), [batch.rows()]), &device);
        return m.embed.val().select(0, ids);
    }
    let h = input.expect("stages after 0 get an input");
    h.clone() + m.blocks[stage - 1].forward(h).tanh()
}

fn chunk_rows(m_rows_per_chunk: usize, batch: &Batch, chunk: usize) -> std::ops::Range<usize> {
    let start = chunk * m_rows_per_chunk;
    start..(start.saturating_add(m_rows_per_chunk)).min(batch.rows())
}

fn loss<B: Backend>(m: &TiedMlp<B>, h: Tensor<B, 2>, batch: &Batch, chunk: usize) -> Tensor<B, 1> {
    let rows = chunk_rows(m.rows_per_chunk, batch, chunk);
    let device = h.device();
    let h = h.slice([rows.clone()]);
    let logits = (h * m.gain.val().unsqueeze_dim(0)).matmul(m.embed.val().transpose());
    let logp = log_softmax(logits.cast(DType::F32), 1);
    let [n, vocab] = logp.dims();
    let mut onehot = vec![0f32; n * vocab];
    for (r, &t) in batch.targets[rows].iter().enumerate() {
        if t >= 0 {
            onehot[r * vocab + t as usize] = 1.0;
        }
    }
    let onehot = Tensor::<B, 2>::from_data(TensorData::new(onehot, [n, vocab]), &device);
    (logp * onehot).sum().neg()
}

impl<B: AutodiffBackend> StagedModel<B, 2> for TiedMlp<B> {
    type Batch = Batch;

    fn num_stages(&self) -> usize {
        self.blocks.len() + 2
    }

    fn stage_params(&self, s: usize) -> Vec<burn::module::ParamId> {
        if s == 0 {
            vec![self.embed.id]
        } else if s <= self.blocks.len() {
            param_ids(&self.blocks[s - 1])
        } else {
            vec![self.embed.id, self.gain.id]
        }
    }

    fn num_targets(batch: &Batch) -> usize {
        batch.targets.iter().filter(|&&t| t >= 0).count()
    }

    fn num_loss_chunks(&self, batch: &Batch) -> usize {
        batch.rows().div_ceil(self.rows_per_chunk.min(batch.rows()).max(1))
    }

    fn forward_stage(&self, s: usize, input: Option<Tensor<B, 2>>, batch: &Batch) -> Tensor<B, 2> {
        stage(self, s, input, batch)
    }

    fn forward_loss(&self, input: Tensor<B, 2>, batch: &Batch, chunk: usize) -> Tensor<B, 1> {
        loss(self, input, batch, chunk)
    }

    fn inner_forward_stage(
        inner: &TiedMlp<B::InnerBackend>,
        s: usize,
        input: Option<Tensor<B::InnerBackend, 2>>,
        batch: &Batch,
    ) -> Tensor<B::InnerBackend, 2> {
        stage(inner, s, input, batch)
    }

    fn inner_forward_loss(
        inner: &TiedMlp<B::InnerBackend>,
        input: Tensor<B::InnerBackend, 2>,
        batch: &Batch,
        chunk: usize,
    ) -> Tensor<B::InnerBackend, 1> {
        loss(inner, input, batch, chunk)
    }
}

/// xorshift64: test data that does not depend on a crate's RNG or on test order.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// A batch of `rows` rows over `vocab` classes, some targets ignored.
pub fn batch(rows: usize, vocab: usize, seed: u64) -> Batch {
    let mut rng = XorShift::new(seed);
    let mut next = move || rng.next_u64();
    let tokens = (0..rows).map(|_| (next() % vocab as u64) as i64).collect();
    let targets = (0..rows).map(|r| if r % 3 == 2 { -100 } else { (next() % vocab as u64) as i64 }).collect();
    Batch { tokens, targets }
}

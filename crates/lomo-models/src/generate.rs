//! Text generation with a KV cache: greedy, or temperature / top-p sampling from a seeded
//! PRNG so that a sampled continuation can be reproduced.

use lomo_kernels::FusedKernels;

use crate::kv_cache::KvCache;
use crate::llama::Llama;
use crate::rng::SplitMix64;

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// The most likely token (the first of equals, as `torch.argmax`).
    Greedy,
    /// Sample from `softmax(logits / temperature)` restricted to the smallest set of most
    /// likely tokens whose probability reaches `top_p` (nucleus sampling).
    TopP {
        /// Divides the logits; must be positive.
        temperature: f32,
        /// Probability mass kept, in `(0, 1]`.
        top_p: f32,
        /// Seed of the sampler's PRNG.
        seed: u64,
    },
}

/// What [`generate`] does.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// Stop after this many new tokens.
    pub max_new_tokens: usize,
    /// Greedy or sampled.
    pub sampling: Sampling,
    /// Stop after producing any of these (it is included in the output). Empty: the model
    /// configuration's `eos_token_ids`.
    pub stop_tokens: Vec<u32>,
}

impl GenerationConfig {
    /// Greedy decoding of up to `max_new_tokens`, stopping at the model's EOS.
    pub fn greedy(max_new_tokens: usize) -> Self {
        Self { max_new_tokens, sampling: Sampling::Greedy, stop_tokens: Vec::new() }
    }
}

/// Index of the largest logit (the first one among equals).
pub fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best
}

/// Draws a token from `logits` with temperature and top-p.
///
/// # Panics
/// If `temperature <= 0` or `top_p` is not in `(0, 1]`.
pub fn sample_top_p(logits: &[f32], temperature: f32, top_p: f32, rng: &mut SplitMix64) -> usize {
    assert!(temperature > 0.0, "temperature must be positive (use Sampling::Greedy for 0)");
    assert!(top_p > 0.0 && top_p <= 1.0, "top_p must be in (0, 1]");
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(usize, f64)> =
        logits.iter().enumerate().map(|(i, &x)| (i, (((x - max) / temperature) as f64).exp())).collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    // Most likely first; ties by id so the order (and the draw) is deterministic.
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut kept = 0;
    let mut mass = 0.0;
    for (_, p) in &probs {
        kept += 1;
        mass += p / total;
        if mass >= top_p as f64 {
            break;
        }
    }
    let probs = &probs[..kept];
    let kept_total: f64 = probs.iter().map(|p| p.1).sum();
    let mut u = rng.next_f64() * kept_total;
    for &(id, p) in probs {
        if u < p {
            return id;
        }
        u -= p;
    }
    probs[kept - 1].0
}

/// Continues `prompt` (token ids, one sequence) and returns the new tokens, the stop token
/// included when one ends the generation.
///
/// # Panics
/// If `prompt` is empty, or the sampling parameters are out of range.
pub fn generate<B: FusedKernels>(model: &Llama<B>, prompt: &[u32], config: &GenerationConfig) -> Vec<u32> {
    assert!(!prompt.is_empty(), "generation needs at least one prompt token");
    let stop: &[u32] = if config.stop_tokens.is_empty() { &model.config().eos_token_ids } else { &config.stop_tokens };
    let mut rng = match config.sampling {
        Sampling::TopP { seed, .. } => SplitMix64::new(seed),
        Sampling::Greedy => SplitMix64::new(0),
    };
    let mut cache = KvCache::new(model.config().num_layers);
    let mut input: Vec<i64> = prompt.iter().map(|&t| t as i64).collect();
    // Never more than the model's context up front, whatever a caller asks for.
    let mut out = Vec::with_capacity(config.max_new_tokens.min(model.config().max_position_embeddings));
    while out.len() < config.max_new_tokens {
        let logits = model.forward_cached(&input, 1, &mut cache);
        let logits: Vec<f32> = logits.into_data().convert::<f32>().into_vec().expect("f32 logits");
        let next = match config.sampling {
            Sampling::Greedy => argmax(&logits),
            Sampling::TopP { temperature, top_p, .. } => sample_top_p(&logits, temperature, top_p, &mut rng),
        } as u32;
        out.push(next);
        if stop.contains(&next) {
            break;
        }
        input = vec![next as i64];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_first_of_equals() {
        assert_eq!(argmax(&[0.0, 3.0, 3.0, -1.0]), 1);
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // p = softmax([10, 9, 0, 0]) ≈ [0.73, 0.27, 3e-5, 3e-5]: with top_p 0.9 only ids 0 and 1 are drawn.
        let logits = [10.0, 9.0, 0.0, 0.0];
        let mut rng = SplitMix64::new(3);
        let mut counts = [0usize; 4];
        for _ in 0..2000 {
            counts[sample_top_p(&logits, 1.0, 0.9, &mut rng)] += 1;
        }
        assert_eq!(counts[2] + counts[3], 0);
        let share = counts[0] as f64 / 2000.0;
        assert!((share - 0.731).abs() < 0.04, "share of id 0: {share}");
        // A tiny top_p is greedy.
        assert_eq!(sample_top_p(&logits, 1.0, 1e-6, &mut rng), 0);
    }

    #[test]
    fn sampling_is_reproducible_from_the_seed() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let draw = |seed| {
            let mut rng = SplitMix64::new(seed);
            (0..20).map(|_| sample_top_p(&logits, 0.8, 0.95, &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(draw(11), draw(11));
        assert_ne!(draw(11), draw(12));
    }
}

//! The data-parallel hook: two ranks in two threads, each with half of a batch, summing through
//! an in-memory reducer, end at the weights of one process stepping on the whole batch.

use std::sync::{Arc, Barrier, Mutex};

use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use lomo_optim::{AdaLomoConfig, FusedConfig, FusedStep, Lomo, OptimError, RuleUpdater, StepReducer, Updater};

use crate::common::backend::{device, Inner, TestBackend as TB};
use crate::common::model::{batch, Batch, TiedMlp};
use crate::common::{max_abs_diff, snapshot};

const VOCAB: usize = 24;
const HIDDEN: usize = 16;

/// What the ranks share: a slot per rank, and a barrier to meet at.
struct Shared {
    barrier: Barrier,
    slots: Mutex<Vec<Vec<f64>>>,
}

/// One rank's side of a sum over threads: deposit, meet, add everything up, meet again.
struct ThreadReducer {
    rank: usize,
    shared: Arc<Shared>,
}

impl ThreadReducer {
    fn sum(&self, values: Vec<f64>) -> Vec<f64> {
        self.shared.slots.lock().unwrap()[self.rank] = values;
        self.shared.barrier.wait();
        let slots = self.shared.slots.lock().unwrap();
        let mut sum = vec![0.0; slots[0].len()];
        for slot in slots.iter() {
            assert_eq!(slot.len(), sum.len(), "the ranks' calls do not line up");
            sum.iter_mut().zip(slot).for_each(|(s, v)| *s += v);
        }
        drop(slots);
        self.shared.barrier.wait();
        sum
    }
}

impl StepReducer<Inner> for ThreadReducer {
    fn world_size(&self) -> usize {
        2
    }

    fn sum_scalars(&mut self, values: &mut [f64]) -> Result<(), OptimError> {
        let sum = self.sum(values.to_vec());
        values.copy_from_slice(&sum);
        Ok(())
    }

    fn sum_grad(&mut self, grad: FloatTensor<Inner>) -> Result<FloatTensor<Inner>, OptimError> {
        let data = Tensor::<Inner, 1>::from_primitive(TensorPrimitive::Float(grad)).into_data();
        let shape = data.shape.clone();
        let values: Vec<f64> = data.to_vec::<f32>().unwrap().into_iter().map(f64::from).collect();
        let sum: Vec<f32> = self.sum(values).into_iter().map(|v| v as f32).collect();
        Ok(<Inner as FloatTensorOps<Inner>>::float_from_data(TensorData::new(sum, shape), &device()))
    }
}

fn model() -> TiedMlp<TB> {
    TiedMlp::new(VOCAB, HIDDEN, 4, 11, &device())
}

/// Three steps on the whole batch in one process, and on its two halves in two threads.
fn compare<U, F>(make: F, config: FusedConfig, halves: [Batch; 2], whole: Batch)
where
    U: Updater<TB, TiedMlp<TB>> + Send + 'static,
    F: Fn(FusedConfig) -> FusedStep<U> + Send + Sync + Copy + 'static,
{
    let mut one = make(config);
    let mut m = model();
    let mut losses = Vec::new();
    for _ in 0..3 {
        let (next, report) = one.step(m, std::slice::from_ref(&whole), 0.05).unwrap();
        losses.push(report.loss);
        m = next;
    }
    let reference = snapshot(&m);
    let shared = Arc::new(Shared { barrier: Barrier::new(2), slots: Mutex::new(vec![Vec::new(); 2]) });
    let ranks: Vec<_> = halves
        .into_iter()
        .enumerate()
        .map(|(rank, half)| {
            let shared = shared.clone();
            std::thread::spawn(move || {
                let mut reducer = ThreadReducer { rank, shared };
                let mut step = make(config);
                let mut m = model();
                let mut losses = Vec::new();
                for _ in 0..3 {
                    let (next, report) = step.step_reduced(m, std::slice::from_ref(&half), 0.05, &mut reducer).unwrap();
                    losses.push(report.loss);
                    m = next;
                }
                (snapshot(&m), losses)
            })
        })
        .collect();
    for rank in ranks {
        let (weights, rank_losses) = rank.join().unwrap();
        let diff = max_abs_diff(&weights, &reference);
        assert!(diff <= 1e-6, "a rank's weights differ from one process's by {diff}");
        for (a, b) in rank_losses.iter().zip(&losses) {
            assert!((a - b).abs() < 1e-5, "loss {a} vs {b}");
        }
    }
}

fn lomo(config: FusedConfig) -> FusedStep<RuleUpdater<Lomo>> {
    FusedStep::new(RuleUpdater::new(Lomo::new(0.0).unwrap()), config).unwrap()
}

fn adalomo(config: FusedConfig) -> FusedStep<RuleUpdater<lomo_optim::AdaLomo<Inner>>> {
    FusedStep::new(RuleUpdater::new(AdaLomoConfig::default().init().unwrap()), config).unwrap()
}

fn halves(whole: &Batch) -> [Batch; 2] {
    [whole.slice(0..5), whole.slice(5..12)]
}

#[test]
fn two_ranks_equal_one_process_lomo_with_clipping() {
    let whole = batch(12, VOCAB, 5);
    let config = FusedConfig { clip_grad_norm: Some(0.5), ..FusedConfig::default() };
    compare(lomo, config, halves(&whole), whole);
}

#[test]
fn two_ranks_equal_one_process_adalomo() {
    let whole = batch(12, VOCAB, 6);
    compare(adalomo, FusedConfig::default(), halves(&whole), whole);
}

#[test]
fn a_rank_whose_slice_has_no_target_still_takes_part() {
    let mut whole = batch(12, VOCAB, 7);
    for t in &mut whole.targets[..4] {
        *t = -100;
    }
    let halves = [whole.slice(0..4), whole.slice(4..12)];
    assert!(halves[0].targets.iter().all(|&t| t == -100));
    compare(lomo, FusedConfig { clip_grad_norm: Some(1.0), ..FusedConfig::default() }, halves, whole);
}

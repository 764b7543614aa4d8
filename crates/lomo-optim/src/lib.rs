//! The fused LOMO / AdaLomo step on burn.
//!
//! LOMO (Lv et al., "Full Parameter Fine-tuning for Large Language Models with Limited
//! Resources", ACL 2024) applies each parameter's update as soon as its gradient is known
//! during the backward pass and frees that gradient, so gradients for the whole model never
//! exist at once. burn's autodiff returns all gradients of one `backward()` together, so the
//! fusion here is stage-wise: a model presents itself as a chain of stages
//! ([`StagedModel`]), and [`FusedStep`] runs the backward pass one stage at a time, handing
//! each stage's final gradients to an update rule ([`Lomo`], [`AdaLomo`], or any burn
//! optimizer through [`BurnOptimizer`]) before the next stage runs.
//!
//! # Training a model of your own
//!
//! Any burn module becomes trainable by the fused step once it says what its stages are. Here
//! a three-layer regression network (nothing of a transformer) is cut into three stages: the
//! first reads the batch, the second reads the first's output, and the last turns its input
//! into the **summed** loss (the step divides by the number of targets, so micro-batches add
//! up to one batch). Each forward is written once, generic over the backend, and serves both
//! the autodiff pass and the tape-free one.
//!
//! ```
//! use burn::backend::{Autodiff, Flex};
//! use burn::module::{Module, ParamId};
//! use burn::nn::{Linear, LinearConfig};
//! use burn::tensor::backend::{AutodiffBackend, Backend};
//! use burn::tensor::{Tensor, TensorData};
//! use lomo_optim::{param_ids, FusedConfig, FusedStep, Lomo, RuleUpdater, StagedModel};
//!
//! #[derive(Module, Debug)]
//! struct Regressor<B: Backend> {
//!     input: Linear<B>,
//!     hidden: Linear<B>,
//!     output: Linear<B>,
//! }
//!
//! /// A batch: `rows` inputs of 4 features and one target each.
//! struct Batch {
//!     x: Vec<f32>,
//!     y: Vec<f32>,
//! }
//!
//! fn stage<B: Backend>(m: &Regressor<B>, stage: usize, input: Option<Tensor<B, 2>>, batch: &Batch) -> Tensor<B, 2> {
//!     match (stage, input) {
//!         (0, _) => {
//!             let device = m.input.weight.val().device();
//!             let x = Tensor::from_data(TensorData::new(batch.x.clone(), [batch.y.len(), 4]), &device);
//!             m.input.forward(x).tanh()
//!         }
//!         (_, Some(h)) => m.hidden.forward(h).tanh(),
//!         (_, None) => unreachable!("stages after the first get the previous stage's output"),
//!     }
//! }
//!
//! fn summed_loss<B: Backend>(m: &Regressor<B>, h: Tensor<B, 2>, batch: &Batch) -> Tensor<B, 1> {
//!     let y = Tensor::<B, 2>::from_data(TensorData::new(batch.y.clone(), [batch.y.len(), 1]), &h.device());
//!     let error = m.output.forward(h) - y;
//!     (error.clone() * error).sum()
//! }
//!
//! impl<B: AutodiffBackend> StagedModel<B, 2> for Regressor<B> {
//!     type Batch = Batch;
//!
//!     fn num_stages(&self) -> usize {
//!         3
//!     }
//!     fn stage_params(&self, stage: usize) -> Vec<ParamId> {
//!         param_ids(match stage {
//!             0 => &self.input,
//!             1 => &self.hidden,
//!             _ => &self.output,
//!         })
//!     }
//!     fn num_targets(batch: &Batch) -> usize {
//!         batch.y.len()
//!     }
//!     fn forward_stage(&self, s: usize, input: Option<Tensor<B, 2>>, batch: &Batch) -> Tensor<B, 2> {
//!         stage(self, s, input, batch)
//!     }
//!     fn forward_loss(&self, input: Tensor<B, 2>, batch: &Batch, _chunk: usize) -> Tensor<B, 1> {
//!         summed_loss(self, input, batch)
//!     }
//!     fn inner_forward_stage(
//!         inner: &Regressor<B::InnerBackend>,
//!         s: usize,
//!         input: Option<Tensor<B::InnerBackend, 2>>,
//!         batch: &Batch,
//!     ) -> Tensor<B::InnerBackend, 2> {
//!         stage(inner, s, input, batch)
//!     }
//!     fn inner_forward_loss(
//!         inner: &Regressor<B::InnerBackend>,
//!         input: Tensor<B::InnerBackend, 2>,
//!         batch: &Batch,
//!         _chunk: usize,
//!     ) -> Tensor<B::InnerBackend, 1> {
//!         summed_loss(inner, input, batch)
//!     }
//! }
//!
//! # fn main() -> Result<(), lomo_optim::OptimError> {
//! type B = Autodiff<Flex>;
//! let device = Default::default();
//! let mut model = Regressor::<B> {
//!     input: LinearConfig::new(4, 16).init(&device),
//!     hidden: LinearConfig::new(16, 16).init(&device),
//!     output: LinearConfig::new(16, 1).init(&device),
//! };
//!
//! // y = 0.5·x0 − x1 + 0.25·x2·x3 on 64 points of [-1, 1]^4, from a fixed sequence.
//! let x: Vec<f32> = (0..64 * 4).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
//! let y: Vec<f32> = x.chunks(4).map(|r| 0.5 * r[0] - r[1] + 0.25 * r[2] * r[3]).collect();
//! let halves = [
//!     Batch { x: x[..128].to_vec(), y: y[..32].to_vec() },
//!     Batch { x: x[128..].to_vec(), y: y[32..].to_vec() },
//! ];
//!
//! // Plain LOMO (SGD fused into the backward pass, no optimizer state), clipped by global
//! // norm; the two micro-batches are accumulated into one update.
//! let config = FusedConfig { clip_grad_norm: Some(1.0), ..Default::default() };
//! let mut step = FusedStep::new(RuleUpdater::new(Lomo::new(0.0)?), config)?;
//! let mut losses = Vec::new();
//! for _ in 0..150 {
//!     let (updated, report) = step.step(model, &halves, 0.1)?;
//!     model = updated;
//!     losses.push(report.loss);
//! }
//! let (first, last) = (losses[0], losses[losses.len() - 1]);
//! assert!(last < 0.05 * first, "the mean squared error fell from {first} to {last}");
//! # Ok(())
//! # }
//! ```
//!
//! AdaLomo is [`AdaLomo`] in place of [`Lomo`]; any burn optimizer runs stage by stage through
//! [`BurnOptimizer`]; [`FusedStep::step_reduced`] and [`FusedStep::step_stored`] add data
//! parallelism and offloaded weights without changing the model.
#![warn(missing_docs)]

pub mod adalomo;
pub mod baseline;
mod clock;
pub mod error;
pub mod fused;
pub mod lomo;
pub mod reduce;
pub mod rule;
pub mod scaler;
pub mod schedule;
pub mod stages;
pub mod store;

// The row-block helpers live in lomo-kernels, beside the update kernels' reference that needs
// them; the rules and the fused step reach them as `crate::blocks`.
use lomo_kernels::blocks;

pub use adalomo::{AdaLomo, AdaLomoConfig, AdaLomoParamRecord, AdaLomoRecord, SecondMoment};
pub use baseline::{full_backward_grads, full_backward_step, full_forward_loss, BurnOptimizer};
pub use error::OptimError;
pub use fused::{FusedConfig, FusedStep, StepReport, StepTimings};
pub use lomo::Lomo;
/// The backend extension the fused step's updates run through (lomo-kernels'): the bound
/// [`FusedStep`] puts on the inner backend.
pub use lomo_kernels::UpdateKernels;
pub use reduce::{Local, StepReducer};
pub use rule::{param_paths, GradPrep, RuleUpdater, UpdateRule, Updater};
pub use scaler::{DynamicLossScaler, LossScaleConfig};
pub use schedule::{LrSchedule, ScheduleKind};
pub use stages::{param_ids, StagedModel};
pub use store::{put_params, take_params, Held, HostStore, Resident, StageParams, StageStore, Take};

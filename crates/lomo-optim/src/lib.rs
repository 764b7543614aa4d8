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
//! ```ignore
//! let mut step = FusedStep::new(RuleUpdater::new(Lomo::new(0.0)?), FusedConfig::default())?;
//! let (model, report) = step.step(model, &micro_batches, lr)?;
//! ```
#![warn(missing_docs)]

pub mod adalomo;
pub mod baseline;
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
/// The backend extension the fused step's updates run through (lomo-kernels'): the bound
/// [`FusedStep`] puts on the inner backend.
pub use lomo_kernels::UpdateKernels;
pub use lomo::Lomo;
pub use reduce::{Local, StepReducer};
pub use rule::{param_paths, GradPrep, RuleUpdater, UpdateRule, Updater};
pub use scaler::{DynamicLossScaler, LossScaleConfig};
pub use schedule::{LrSchedule, ScheduleKind};
pub use stages::{param_ids, StagedModel};
pub use store::{put_params, take_params, Held, HostStore, Resident, StageParams, StageStore, Take};

//! The fused LOMO / AdaLomo step on burn.
//!
//! LOMO (Lv et al., "Full Parameter Fine-tuning for Large Language Models with Limited
//! Resources", ACL 2024) applies each parameter's update as soon as its gradient is known
//! during the backward pass and frees that gradient, so gradients for the whole model never
//! exist at once. burn's autodiff returns all gradients of one `backward()` together, so the
//! fusion here is stage-wise: see [`stages`] and `ARCHITECTURE.md`.

pub mod stages;

pub use stages::{param_ids, StagedModel};

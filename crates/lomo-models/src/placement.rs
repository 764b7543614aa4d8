//! Which device each stage's parameters live on: the stages of one model spread over the
//! devices of one machine (LOMO's 65B on 8 GPUs).
//!
//! A [`Placement`] gives every stage (embedding, each decoder block, the loss stage) a device.
//! Loaders build each tensor straight on its stage's device ([`On`]), so a model larger than one
//! device never lands whole on one; [`crate::Llama::place`] moves a model that exists. The stages then
//! read their device off their own parameters: the forward pass moves the boundary activation to
//! the next stage's device (`Tensor::to_device`, a graph node whose backward moves the gradient
//! back), so the fused step's stage-wise backward runs each stage on its device and hands the
//! input gradient to the stage before it on that stage's device. With every stage on one device
//! nothing moves and the step is the unplaced one, bit for bit.
//!
//! A tied embedding and LM head is one parameter read by the first and the last stage: it lives
//! on stage 0's device; when the loss stage is elsewhere it reads a copy moved to its device per
//! loss chunk, and the copy's gradient flows back through the move onto the weight's device,
//! where it waits for stage 0's as on one device.
//!
//! [`crate::plan::PlanConfig::plan_devices`] chooses the split: contiguous ranges of stages, one
//! per device, that make the largest per-device peak as small as it can be.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::error::{ModelError, Result};

/// One device per stage of a model (`num_layers + 2` stages).
#[derive(Debug, Clone, PartialEq)]
pub struct Placement<D> {
    stages: Vec<D>,
}

impl<D: Clone> Placement<D> {
    /// Stage `s` on `stages[s]`.
    pub(crate) fn from_stages(stages: Vec<D>) -> Self {
        Self { stages }
    }

    /// Every stage on `device`.
    pub fn single(device: D, num_stages: usize) -> Self {
        Self { stages: vec![device; num_stages] }
    }

    /// Stage `s` on `devices[assignment[s]]`.
    ///
    /// # Errors
    /// If an assignment names a device past the list, or the assignment goes back to an
    /// earlier device (the ranges must be contiguous and in order).
    pub fn from_assignment(devices: &[D], assignment: &[usize]) -> Result<Self> {
        let mut stages = Vec::with_capacity(assignment.len());
        for (s, &d) in assignment.iter().enumerate() {
            let device = devices.get(d).ok_or_else(|| {
                ModelError::Placement(format!(
                    "stage {s} is assigned device {d}, but {} devices were given",
                    devices.len()
                ))
            })?;
            if s > 0 && d < assignment[s - 1] {
                return Err(ModelError::Placement(format!(
                    "stage {s} goes back to device {d}: the ranges must be in order"
                )));
            }
            stages.push(device.clone());
        }
        Ok(Self { stages })
    }

    /// The device of stage `stage`.
    pub fn stage(&self, stage: usize) -> &D {
        &self.stages[stage]
    }

    /// Number of stages.
    pub fn num_stages(&self) -> usize {
        self.stages.len()
    }
}

/// Where a loader puts the tensors it builds: one device for all, or a [`Placement`].
#[derive(Debug, Clone, Copy)]
pub enum On<'a, D> {
    /// Every stage on this device.
    One(&'a D),
    /// Each stage on its device.
    Stages(&'a Placement<D>),
}

impl<'a, D> From<&'a D> for On<'a, D> {
    fn from(device: &'a D) -> Self {
        On::One(device)
    }
}

impl<'a, D> From<&'a Placement<D>> for On<'a, D> {
    fn from(placement: &'a Placement<D>) -> Self {
        On::Stages(placement)
    }
}

impl<D: Clone> On<'_, D> {
    /// The device of stage `stage`.
    pub fn stage(&self, stage: usize) -> &D {
        match self {
            On::One(d) => d,
            On::Stages(p) => p.stage(stage),
        }
    }

    /// Checks a placement against a model of `num_stages` stages.
    pub fn check(&self, num_stages: usize) -> Result<()> {
        match self {
            On::Stages(p) if p.num_stages() != num_stages => Err(ModelError::Placement(format!(
                "the placement has {} stages, the model {num_stages} (its layers + 2)",
                p.num_stages()
            ))),
            _ => Ok(()),
        }
    }
}

/// `x` on `device`: itself when it is there already (no graph node, no copy).
pub(crate) fn to_device<B: Backend, const D: usize>(x: Tensor<B, D>, device: &B::Device) -> Tensor<B, D> {
    if &x.device() == device {
        x
    } else {
        x.to_device(device)
    }
}

//! Learning-rate schedules. The fused step is given its lr; these compute it from the step.

use serde::{Deserialize, Serialize};

use crate::error::OptimError;

/// The shape of the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// The peak lr throughout (after warmup, if any).
    Constant,
    /// Linear warmup from 0 to the peak, then linear decay to 0 at the last step.
    Linear,
    /// Linear warmup, then half a cosine from the peak to 0 at the last step.
    Cosine,
}

impl std::str::FromStr for ScheduleKind {
    type Err = OptimError;
    fn from_str(s: &str) -> Result<Self, OptimError> {
        match s {
            "constant" => Ok(Self::Constant),
            "linear" => Ok(Self::Linear),
            "cosine" => Ok(Self::Cosine),
            other => Err(OptimError::Config {
                field: "schedule",
                message: format!("unknown schedule `{other}` (expected constant, linear or cosine)"),
            }),
        }
    }
}

/// A learning-rate schedule over a known number of steps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    /// Its shape.
    pub kind: ScheduleKind,
    /// The peak learning rate.
    pub peak_lr: f64,
    /// Steps of linear warmup.
    pub warmup_steps: u64,
    /// Steps in the whole run.
    pub total_steps: u64,
}

impl LrSchedule {
    /// A schedule; `warmup_ratio` of `total_steps` (rounded up) warm up.
    pub fn new(kind: ScheduleKind, peak_lr: f64, warmup_ratio: f64, total_steps: u64) -> Result<Self, OptimError> {
        if !(peak_lr > 0.0 && peak_lr.is_finite()) {
            return Err(OptimError::Config {
                field: "lr",
                message: format!("must be a finite number > 0, got {peak_lr}"),
            });
        }
        if !(0.0..=1.0).contains(&warmup_ratio) {
            return Err(OptimError::Config {
                field: "warmup_ratio",
                message: format!("must be in [0, 1], got {warmup_ratio}"),
            });
        }
        if total_steps == 0 {
            return Err(OptimError::Config { field: "steps", message: "must be at least 1".into() });
        }
        let warmup_steps = (warmup_ratio * total_steps as f64).ceil() as u64;
        Ok(Self { kind, peak_lr, warmup_steps, total_steps })
    }

    /// The lr of step `step` (0-based).
    ///
    /// Warmup reaches the peak at step `warmup_steps` and starts above 0 (HF's convention:
    /// `(step + 1) / (warmup + 1)` would differ; we use `(step + 1) / warmup` so the first
    /// step already learns). Decay ends at `peak / (total - warmup)`, never exactly 0.
    pub fn lr(&self, step: u64) -> f64 {
        let w = self.warmup_steps;
        if step < w {
            return self.peak_lr * (step + 1) as f64 / w as f64;
        }
        let decay_steps = self.total_steps.saturating_sub(w).max(1) as f64;
        let progress = ((step - w) as f64 / decay_steps).min(1.0);
        match self.kind {
            ScheduleKind::Constant => self.peak_lr,
            ScheduleKind::Linear => self.peak_lr * (1.0 - progress),
            ScheduleKind::Cosine => self.peak_lr * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        }
    }
}

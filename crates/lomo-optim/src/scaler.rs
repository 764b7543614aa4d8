//! fp16 dynamic loss scaling that never half-applies a step.
//!
//! The authors' scaler halves the scale on overflow but never grows it again, and when the
//! overflow shows up during the updating pass some weights are already changed. Here the
//! overflow check happens in a pass that changes nothing (the norm pass), so a skipped step
//! leaves every weight bit-identical, and the scale grows after `window` clean steps.

use serde::{Deserialize, Serialize};

use crate::error::OptimError;

/// Settings of [`DynamicLossScaler`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossScaleConfig {
    /// The first scale (2^16).
    pub init_scale: f64,
    /// Multiplied or divided by this on growth or overflow (2).
    pub factor: f64,
    /// Clean steps before the scale grows (1000).
    pub window: u64,
    /// The scale never goes below this (1).
    pub min_scale: f64,
}

impl Default for LossScaleConfig {
    fn default() -> Self {
        Self { init_scale: 65536.0, factor: 2.0, window: 1000, min_scale: 1.0 }
    }
}

/// The loss scale and its history; serialisable so a resumed run continues with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DynamicLossScaler {
    config: LossScaleConfig,
    scale: f64,
    clean_steps: u64,
    skipped_steps: u64,
}

impl DynamicLossScaler {
    /// A scaler at `config.init_scale`.
    pub fn new(config: LossScaleConfig) -> Result<Self, OptimError> {
        let bad = |field, message: String| Err(OptimError::Config { field, message });
        if !(config.init_scale >= 1.0 && config.init_scale.is_finite()) {
            return bad("init_scale", format!("must be finite and >= 1, got {}", config.init_scale));
        }
        if !(config.factor > 1.0 && config.factor.is_finite()) {
            return bad("factor", format!("must be > 1, got {}", config.factor));
        }
        if config.window == 0 {
            return bad("window", "must be at least 1".into());
        }
        if !(config.min_scale > 0.0 && config.min_scale <= config.init_scale) {
            return bad("min_scale", format!("must be in (0, init_scale], got {}", config.min_scale));
        }
        Ok(Self { config, scale: config.init_scale, clean_steps: 0, skipped_steps: 0 })
    }

    /// The current scale.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Steps skipped for overflow so far.
    pub fn skipped_steps(&self) -> u64 {
        self.skipped_steps
    }

    /// Records an overflow: the step was skipped, the scale shrinks.
    pub fn overflow(&mut self) {
        self.scale = (self.scale / self.config.factor).max(self.config.min_scale);
        self.clean_steps = 0;
        self.skipped_steps += 1;
    }

    /// Records a clean step: after `window` of them in a row the scale grows.
    pub fn clean(&mut self) {
        self.clean_steps += 1;
        if self.clean_steps >= self.config.window {
            self.scale *= self.config.factor;
            self.clean_steps = 0;
        }
    }
}

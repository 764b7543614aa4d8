//! The clock of the fused step's phase timers.
//!
//! On an asynchronous backend (CUDA, wgpu) a tensor operation returns once its kernel is
//! queued, so a wall clock read between two phases measures how long the phase took to queue,
//! and the device's work lands in whichever later phase first waits for a result. A synced
//! clock waits for every device of the model (`Backend::sync`) before each read, so each phase
//! is charged its own device time. The waits cost a pipeline drain at every phase boundary,
//! which is why they happen only when timings are asked for
//! ([`FusedStep::with_synced_timings`](crate::FusedStep::with_synced_timings)); on a CPU backend
//! `sync` returns at once and both clocks read the same.

use std::time::Instant;

use burn::tensor::backend::Backend;

use crate::error::OptimError;

/// Reads the wall clock, first waiting for `devices` when it has any.
pub(crate) struct PhaseClock<B: Backend> {
    /// The devices whose queued work a read waits for; empty: reads never wait.
    devices: Vec<B::Device>,
}

impl<B: Backend> PhaseClock<B> {
    /// A clock that waits for `devices` (a model's, without duplicates) before every read; with
    /// `synced` false, one that never waits.
    pub(crate) fn new(synced: bool, devices: impl FnOnce() -> Vec<B::Device>) -> Self {
        Self { devices: if synced { devices() } else { Vec::new() } }
    }

    /// Waits for every queued operation on the devices to finish.
    pub(crate) fn wait(&self) -> Result<(), OptimError> {
        for device in &self.devices {
            B::sync(device).map_err(|error| OptimError::Device { device: format!("{device:?}"), error })?;
        }
        Ok(())
    }

    /// The start of a phase: the devices idle, then the time.
    pub(crate) fn start(&self) -> Result<Instant, OptimError> {
        self.wait()?;
        Ok(Instant::now())
    }

    /// Seconds since `start` once the devices are idle: the phase's work done, not queued.
    pub(crate) fn seconds_since(&self, start: Instant) -> Result<f64, OptimError> {
        self.wait()?;
        Ok(start.elapsed().as_secs_f64())
    }
}

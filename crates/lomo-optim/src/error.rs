//! Errors of the fused step and its update rules.

/// What can go wrong in a step or when restoring optimizer state.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OptimError {
    /// The micro-batches of a step hold no supervised target, so the mean loss is undefined.
    #[error("the batch has no supervised targets (every label is ignored): nothing to train on")]
    NoTargets,
    /// A step was given no micro-batch.
    #[error("a step needs at least one micro-batch")]
    NoMicroBatches,
    /// The model reports fewer than two stages.
    #[error("a staged model needs at least 2 stages (got {0}): one or more forward stages and the loss stage")]
    TooFewStages(usize),
    /// A configuration value is out of range.
    #[error("{field}: {message}")]
    Config {
        /// The configuration field, as a user names it (`clip_grad_norm`, …).
        field: &'static str,
        /// Why the value is refused.
        message: String,
    },
    /// A sum across the ranks of a data-parallel step failed (a rank died, a timeout).
    #[error("data parallel: {0}")]
    Collective(String),
    /// A stage store could not fetch or write back a stage's weights (a file, a device).
    #[error("offload: {0}")]
    Store(String),
    /// A device reported a failure when the phase timers waited for it (an asynchronous
    /// backend's kernel error surfaces at the next wait).
    #[error("the device {device} failed (found while the phase timers waited for it): {}", one_line(error))]
    Device {
        /// The device, as its backend prints it.
        device: String,
        /// The backend's report.
        error: burn::tensor::backend::ExecutionError,
    },
    /// Saved optimizer state does not fit the model it is loaded into.
    #[error("optimizer state for parameter `{param}`: {message}")]
    State {
        /// The parameter's path in the model (`layers.3.attn.q.weight`).
        param: String,
        /// What does not fit.
        message: String,
    },
    /// Optimizer state could not be written to or read from its file.
    #[error("{action} the {rule} state {}: {message}", file.display())]
    StateFile {
        /// `writing` or `reading`.
        action: &'static str,
        /// The rule whose state it is (`AdaLomo`).
        rule: &'static str,
        /// The file, as the recorder names it (with its extension).
        file: std::path::PathBuf,
        /// The recorder's error.
        message: String,
    },
}

/// A backend's multi-line report on one line, so that an error stays one line for the CLI.
fn one_line(error: &impl std::fmt::Display) -> String {
    error.to_string().split_whitespace().collect::<Vec<_>>().join(" ")
}

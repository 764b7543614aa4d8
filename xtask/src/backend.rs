//! Cases generic over the backend, run on the one `--backend` names: the type comes from
//! `lomo_cli::backend`, the one place a cargo feature becomes a burn backend (xtask's `cuda`,
//! `wgpu` and `tch` features turn on lomo-cli's).

use anyhow::{bail, Result};
pub use lomo_cli::backend::{BackendKind, DeviceMemory};

/// A one-line error when this binary lacks the backend `kind`.
pub fn check_built(kind: BackendKind) -> Result<()> {
    if !kind.is_built() {
        bail!(
            "--backend {0}: this xtask was built without the `{0}` feature (cargo run -p xtask --release --features {0} -- profile …)",
            kind.name()
        );
    }
    Ok(())
}

/// Runs `f` with the autodiff backend type of `kind`, its default device and that device's
/// memory report.
pub fn run_on<R>(kind: BackendKind, f: impl CaseRunner<Output = R>) -> Result<R> {
    check_built(kind)?;
    lomo_cli::with_backend!(kind, |B, device| {
        let memory = Clone::clone(&device);
        f.run::<B>(device, &memory)
    })
}

/// A computation generic over the backend (a closure cannot be).
pub trait CaseRunner {
    /// What the computation returns.
    type Output;
    /// Runs on backend `B`.
    fn run<B: lomo_models::TrainBackend>(
        self,
        device: burn::tensor::Device<B>,
        memory: &dyn DeviceMemory,
    ) -> Result<Self::Output>;
}

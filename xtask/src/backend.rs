//! The one place that maps cargo features to burn backends.
//!
//! Flex (pure Rust CPU) is always built; `--features cuda` adds CUDA and `--features tch`
//! LibTorch. A profile case is generic over the backend; [`run_on`] picks the type for the
//! backend named on the command line.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// The backends `--backend` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// burn's Flex, on the host.
    Cpu,
    /// burn's CUDA backend (feature `cuda`).
    Cuda,
    /// burn's LibTorch backend (feature `tch`), on the CPU.
    Tch,
}

impl std::str::FromStr for BackendKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" | "flex" => Ok(BackendKind::Cpu),
            "cuda" => Ok(BackendKind::Cuda),
            "tch" | "libtorch" => Ok(BackendKind::Tch),
            other => Err(format!("--backend: unknown backend `{other}` (cpu, cuda, tch)")),
        }
    }
}

impl BackendKind {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Cpu => "cpu",
            BackendKind::Cuda => "cuda",
            BackendKind::Tch => "tch",
        }
    }

    /// Whether this binary was built with the backend.
    pub fn is_built(self) -> bool {
        match self {
            BackendKind::Cpu => true,
            BackendKind::Cuda => cfg!(feature = "cuda"),
            BackendKind::Tch => cfg!(feature = "tch"),
        }
    }

    /// Whether the backend's tensors live in Rust's global allocator, so that the counting
    /// allocator sees them (LibTorch allocates in C++, CUDA on the device).
    pub fn heap_visible(self) -> bool {
        matches!(self, BackendKind::Cpu)
    }

    /// A one-line error when this binary lacks the backend.
    pub fn check_built(self) -> Result<()> {
        if !self.is_built() {
            bail!(
                "--backend {0}: this xtask was built without the `{0}` feature (cargo run -p xtask --release --features {0} -- profile …)",
                self.name()
            );
        }
        Ok(())
    }
}

/// What a case needs from its backend besides the tensors: the device memory in use.
pub trait DeviceMemory {
    /// Bytes the device's memory pool holds after the step (its high-water mark, since pools
    /// do not shrink during a step), where the backend reports it.
    fn device_reserved_bytes(&self) -> Option<u64>;
}

/// Runs `f` with the autodiff backend type of `kind`.
pub fn run_on<R>(kind: BackendKind, f: impl CaseRunner<Output = R>) -> Result<R> {
    kind.check_built()?;
    match kind {
        BackendKind::Cpu => f.run::<burn::backend::Autodiff<burn::backend::Flex>>(Default::default(), &NoDeviceMemory),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => {
            let device = burn::backend::cuda::CudaDevice::default();
            let stats = CudaMemory(device.clone());
            f.run::<burn::backend::Autodiff<burn::backend::Cuda>>(device, &stats)
        }
        #[cfg(feature = "tch")]
        BackendKind::Tch => {
            f.run::<burn::backend::Autodiff<burn::backend::LibTorch>>(Default::default(), &NoDeviceMemory)
        }
        #[allow(unreachable_patterns)] // Reached only for a backend this binary was built without.
        other => bail!("--backend {}: not built", other.name()),
    }
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

/// Host backends: no device memory to report.
pub struct NoDeviceMemory;

impl DeviceMemory for NoDeviceMemory {
    fn device_reserved_bytes(&self) -> Option<u64> {
        None
    }
}

#[cfg(feature = "cuda")]
struct CudaMemory(burn::backend::cuda::CudaDevice);

#[cfg(feature = "cuda")]
impl DeviceMemory for CudaMemory {
    fn device_reserved_bytes(&self) -> Option<u64> {
        use burn::cubecl::Runtime;
        let usage = burn::cubecl::cuda::CudaRuntime::client(&self.0).memory_usage().ok()?;
        Some(usage.bytes_reserved)
    }
}

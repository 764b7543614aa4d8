//! The one place that maps `--backend` and cargo features to a burn backend type.

use anyhow::{bail, Result};
use clap::ValueEnum;

/// The backends `--backend` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// burn's Flex: pure-Rust CPU, f32/bf16/f16. Always built.
    Cpu,
    /// burn's CUDA backend (cargo feature `cuda`).
    Cuda,
    /// LibTorch 2.9 (cargo feature `tch`).
    Tch,
}

/// Runs `$body` with `$B` bound to the autodiff backend `$kind` names and `$device` to its
/// default device; a backend not compiled in is a one-line error naming the feature.
macro_rules! with_backend {
    ($kind:expr, |$B:ident, $device:ident| $body:expr) => {{
        match $kind {
            $crate::backend::BackendKind::Cpu => {
                type $B = burn::backend::Autodiff<burn::backend::Flex>;
                let $device = Default::default();
                $body
            }
            $crate::backend::BackendKind::Cuda => {
                #[cfg(feature = "cuda")]
                {
                    type $B = burn::backend::Autodiff<burn::backend::Cuda>;
                    let $device = Default::default();
                    $body
                }
                #[cfg(not(feature = "cuda"))]
                {
                    $crate::backend::not_built("cuda")
                }
            }
            $crate::backend::BackendKind::Tch => {
                #[cfg(feature = "tch")]
                {
                    type $B = burn::backend::Autodiff<burn::backend::LibTorch>;
                    let $device = Default::default();
                    $body
                }
                #[cfg(not(feature = "tch"))]
                {
                    $crate::backend::not_built("tch")
                }
            }
        }
    }};
}
pub(crate) use with_backend;

/// The error for a backend that this binary was built without.
#[allow(dead_code)]
pub fn not_built<T>(feature: &str) -> Result<T> {
    let extra = if feature == "tch" {
        " (it needs libtorch 2.9: `pip install torch==2.9.0`, then build with LIBTORCH_USE_PYTORCH=1)"
    } else {
        ""
    };
    bail!("--backend {feature}: this lomo was built without it; rebuild with `cargo install --path crates/lomo-cli --features {feature}`{extra}")
}

/// The devices `--devices LIST` names for the backend `kind` (whose device type is `B`'s):
/// `cuda:N` (CUDA, LibTorch), `all` (every CUDA device), `cpu` (the CPU backend, LibTorch),
/// `mps` (LibTorch). A device may repeat (two ranges of stages on one device).
pub fn parse_devices<B: burn::tensor::backend::Backend>(kind: BackendKind, list: &str) -> Result<Vec<B::Device>> {
    use burn::tensor::backend::{Device, DeviceId};
    let cuda_count = || B::device_count(0);
    if list.trim() == "all" {
        return match kind {
            BackendKind::Cuda => {
                let n = cuda_count();
                if n == 0 {
                    bail!("--devices all: CUDA reports no device");
                }
                Ok((0..n).map(|i| B::Device::from_id(DeviceId::new(0, i as u16))).collect())
            }
            BackendKind::Cpu => Ok(vec![B::Device::default()]),
            BackendKind::Tch => {
                bail!("--devices all: LibTorch does not say how many GPUs it sees here; list them (cuda:0,cuda:1,…)")
            }
        };
    }
    let mut devices = Vec::new();
    for item in list.split(',').map(str::trim) {
        let device = match (kind, item) {
            (BackendKind::Cpu, "cpu") => B::Device::default(),
            (BackendKind::Tch, "cpu") => B::Device::from_id(DeviceId::new(2, 0)),
            (BackendKind::Tch, "mps") => B::Device::from_id(DeviceId::new(1, 0)),
            (BackendKind::Cuda | BackendKind::Tch, cuda) if cuda.starts_with("cuda:") => {
                let index: u16 = cuda["cuda:".len()..]
                    .parse()
                    .map_err(|_| anyhow::anyhow!("--devices: `{item}`: expected cuda:N with N a device number"))?;
                if kind == BackendKind::Cuda && usize::from(index) >= cuda_count() {
                    bail!("--devices: `{item}`: CUDA sees {} devices", cuda_count());
                }
                B::Device::from_id(DeviceId::new(0, index))
            }
            (BackendKind::Cpu, _) => bail!("--devices: `{item}`: the CPU backend has one device, `cpu`"),
            (BackendKind::Cuda, _) => bail!("--devices: `{item}`: expected cuda:N or all"),
            (BackendKind::Tch, _) => bail!("--devices: `{item}`: expected cuda:N, cpu or mps"),
        };
        devices.push(device);
    }
    Ok(devices)
}

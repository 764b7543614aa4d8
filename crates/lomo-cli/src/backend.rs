//! The one place that maps `--backend` and cargo features to a burn backend type, shared by the
//! `lomo` binary and xtask.
//!
//! Flex (pure Rust CPU) is always built; the feature `cuda` adds burn's CUDA backend, `wgpu`
//! burn's wgpu backend (Vulkan, or Metal on macOS: AMD, Intel and Apple GPUs) and `tch` LibTorch.
//! [`with_backend!`](crate::with_backend) runs code generic over the backend with the type
//! `--backend` names; whether a feature is on is decided here, in this crate, whichever crate
//! expands the macro (xtask's `cuda`, `wgpu` and `tch` features turn on this crate's).

use anyhow::{bail, Result};
use clap::ValueEnum;

#[cfg(feature = "cuda")]
mod cuda_driver;
#[cfg(any(feature = "cuda", feature = "wgpu"))]
pub mod kernel_cache;
#[cfg(feature = "wgpu")]
mod wgpu_adapter;
#[cfg(feature = "wgpu")]
pub use wgpu_adapter::Adapter as WgpuAdapter;

/// The number of GPUs the NVIDIA driver sees, asked before burn touches CUDA; where
/// `--backend cuda` cannot run here (no driver, the toolkit's stub libcuda first on the library
/// path, a driver older than this build, no GPU, no NVRTC), a one-line error saying what is
/// missing and what to do. [`with_backend!`](crate::with_backend) calls it first.
#[cfg(feature = "cuda")]
pub fn check_cuda() -> Result<usize> {
    cuda_driver::check()
}

/// The adapter `device` runs on (its name, whether it has f16), asked of wgpu before burn
/// touches it; where `--backend wgpu` cannot run here (no Vulkan or Metal driver, a
/// `--devices wgpu:N` past the GPUs there), a one-line error saying what to install or name.
/// [`with_backend!`](crate::with_backend) calls it first.
#[cfg(feature = "wgpu")]
pub fn check_wgpu(device: &burn::backend::wgpu::WgpuDevice) -> Result<WgpuAdapter> {
    wgpu_adapter::check(device)
}

/// Whether `--backend kind` stores weights in `dtype` (on the devices `--devices` names, where
/// given): wgpu's shaders (WGSL) have no bf16, and f16 only on an adapter with `shader-f16`.
/// A one-line error naming what to use instead; the subcommands ask before any work.
pub fn check_dtype(kind: BackendKind, dtype: lomo_models::StorageDtype, devices: Option<&str>) -> Result<()> {
    use lomo_models::StorageDtype;
    if kind != BackendKind::Wgpu || dtype == StorageDtype::F32 || !kind.is_built() {
        return Ok(());
    }
    if dtype == StorageDtype::BF16 {
        bail!("--dtype bf16 --backend wgpu: wgpu's shaders (WGSL) have no bf16; use --dtype f32 (or --backend cuda / cpu for bf16)");
    }
    #[cfg(feature = "wgpu")]
    {
        let named = match devices.map(str::trim) {
            None | Some("all") => vec![burn::backend::wgpu::WgpuDevice::DefaultDevice],
            Some(list) => list.split(',').map(|item| wgpu_adapter::parse(item.trim())).collect::<Result<_>>()?,
        };
        for device in &named {
            let adapter = check_wgpu(device)?;
            if !adapter.shader_f16 {
                bail!("--dtype f16 --backend wgpu: the adapter {} has no f16 in its shaders (shader-f16); use --dtype f32", adapter.name);
            }
        }
    }
    let _ = devices;
    Ok(())
}

/// The log's line about the first steps on a GPU backend, which compile and autotune its
/// kernels (kept for later runs where `backend::kernel_cache` put them); `None` on the CPU.
pub fn warm_up_note(kind: BackendKind) -> Option<String> {
    #[cfg(any(feature = "cuda", feature = "wgpu"))]
    if matches!(kind, BackendKind::Cuda | BackendKind::Wgpu) && kind.is_built() {
        // cubecl-wgpu keeps compiled SPIR-V only, and lomo's wgpu build compiles WGSL.
        let kept = if kind == BackendKind::Cuda { "kept" } else { "the autotune results kept" };
        return Some(match kernel_cache::configure() {
            Some(dir) => format!(
                "the first steps are a warm-up: GPU kernels are compiled and autotuned on first use, {kept} in {} for later runs (LOMO_KERNEL_CACHE moves them)",
                dir.display()
            ),
            None => "the first steps are a warm-up: GPU kernels are compiled and autotuned on first use (where they are kept is cubecl's configuration's)".into(),
        });
    }
    let _ = kind;
    None
}

/// The backends `--backend` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// burn's Flex: pure-Rust CPU, f32/bf16/f16. Always built.
    Cpu,
    /// burn's CUDA backend (cargo feature `cuda`).
    Cuda,
    /// burn's wgpu backend: Vulkan, or Metal on macOS (AMD, Intel, Apple GPUs; cargo feature
    /// `wgpu`). f32, and f16 where the adapter has it; no bf16.
    Wgpu,
    /// LibTorch 2.9 (cargo feature `tch`).
    Tch,
}

impl BackendKind {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Cpu => "cpu",
            BackendKind::Cuda => "cuda",
            BackendKind::Wgpu => "wgpu",
            BackendKind::Tch => "tch",
        }
    }

    /// Whether this build has the backend.
    pub fn is_built(self) -> bool {
        match self {
            BackendKind::Cpu => true,
            BackendKind::Cuda => cfg!(feature = "cuda"),
            BackendKind::Wgpu => cfg!(feature = "wgpu"),
            BackendKind::Tch => cfg!(feature = "tch"),
        }
    }

    /// Whether the backend's tensors live in Rust's global allocator, so that a counting
    /// allocator sees them (LibTorch allocates in C++, CUDA and wgpu on the device).
    pub fn heap_visible(self) -> bool {
        matches!(self, BackendKind::Cpu)
    }
}

/// The autodiff backend of `--backend cpu`.
pub type Cpu = burn::backend::Autodiff<burn::backend::Flex>;
/// The autodiff backend of `--backend cuda`.
#[cfg(feature = "cuda")]
pub type Cuda = burn::backend::Autodiff<burn::backend::Cuda>;
/// The autodiff backend of `--backend wgpu`.
#[cfg(feature = "wgpu")]
pub type Wgpu = burn::backend::Autodiff<burn::backend::Wgpu>;
/// The autodiff backend of `--backend tch`.
#[cfg(feature = "tch")]
pub type Tch = burn::backend::Autodiff<burn::backend::LibTorch>;

/// Runs `$body` with `$B` bound to the autodiff backend `$kind` (a
/// [`BackendKind`](crate::backend::BackendKind)) names and `$device` to its default device; a
/// backend not compiled in is a one-line error naming the feature
/// ([`not_built`](crate::backend::not_built)), and CUDA or wgpu where it cannot run (no driver,
/// no GPU) one naming what is missing, before anything touches it. `$body` is an `anyhow::Result`.
#[macro_export]
macro_rules! with_backend {
    ($kind:expr, |$B:ident, $device:ident| $body:expr) => {{
        match $kind {
            $crate::backend::BackendKind::Cpu => {
                type $B = $crate::backend::Cpu;
                let $device = Default::default();
                $body
            }
            $crate::backend::BackendKind::Cuda => $crate::__if_cuda!(
                {
                    match $crate::backend::check_cuda() {
                        Err(e) => Err(e),
                        Ok(_) => {
                            $crate::backend::kernel_cache::configure();
                            type $B = $crate::backend::Cuda;
                            let $device = Default::default();
                            $body
                        }
                    }
                },
                $crate::backend::not_built("cuda")
            ),
            $crate::backend::BackendKind::Wgpu => $crate::__if_wgpu!(
                {
                    match $crate::backend::check_wgpu(&Default::default()) {
                        Err(e) => Err(e),
                        Ok(_) => {
                            $crate::backend::kernel_cache::configure();
                            type $B = $crate::backend::Wgpu;
                            let $device = Default::default();
                            $body
                        }
                    }
                },
                $crate::backend::not_built("wgpu")
            ),
            $crate::backend::BackendKind::Tch => $crate::__if_tch!(
                {
                    type $B = $crate::backend::Tch;
                    let $device = Default::default();
                    $body
                },
                $crate::backend::not_built("tch")
            ),
        }
    }};
}
pub use crate::with_backend;

// `with_backend!` is expanded in the caller's crate, where `#[cfg(feature = …)]` would ask the
// caller's features; these ask this crate's, so the type aliases above and the code that
// uses them are compiled together or not at all.
#[cfg(feature = "cuda")]
#[doc(hidden)]
#[macro_export]
macro_rules! __if_cuda {
    ($built:block, $missing:expr) => {
        $built
    };
}
#[cfg(not(feature = "cuda"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __if_cuda {
    ($built:block, $missing:expr) => {
        $missing
    };
}
#[cfg(feature = "wgpu")]
#[doc(hidden)]
#[macro_export]
macro_rules! __if_wgpu {
    ($built:block, $missing:expr) => {
        $built
    };
}
#[cfg(not(feature = "wgpu"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __if_wgpu {
    ($built:block, $missing:expr) => {
        $missing
    };
}
#[cfg(feature = "tch")]
#[doc(hidden)]
#[macro_export]
macro_rules! __if_tch {
    ($built:block, $missing:expr) => {
        $built
    };
}
#[cfg(not(feature = "tch"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __if_tch {
    ($built:block, $missing:expr) => {
        $missing
    };
}

/// The number of GPUs the NVIDIA driver sees (`check_cuda`: asked of the driver, not of cubecl,
/// which panics where CUDA cannot run); an error in a build without CUDA.
fn cuda_device_count() -> Result<usize> {
    #[cfg(feature = "cuda")]
    return check_cuda();
    #[cfg(not(feature = "cuda"))]
    not_built("cuda")
}

/// The number of discrete GPUs wgpu sees (`--devices all`); an error where it finds no adapter
/// at all, or in a build without wgpu.
fn wgpu_discrete_count() -> Result<usize> {
    #[cfg(feature = "wgpu")]
    return wgpu_adapter::discrete_count();
    #[cfg(not(feature = "wgpu"))]
    not_built("wgpu")
}

/// The error for a backend that this binary was built without.
pub fn not_built<T>(feature: &str) -> Result<T> {
    let extra = if feature == "tch" {
        " (it needs libtorch 2.9: `pip install torch==2.9.0`, then build with LIBTORCH_USE_PYTORCH=1)"
    } else {
        ""
    };
    bail!("--backend {feature}: this lomo was built without it; rebuild with `cargo install --path crates/lomo-cli --features {feature}`{extra}")
}

/// What a device's memory pool holds, where its backend reports it (the device types of the
/// backends above implement it).
pub trait DeviceMemory {
    /// Bytes the device's memory pool holds (its high-water mark during a step, since pools do
    /// not shrink then); `None` for host backends, whose memory the process's counters see.
    fn device_reserved_bytes(&self) -> Option<u64>;
}

impl DeviceMemory for burn::backend::flex::FlexDevice {
    fn device_reserved_bytes(&self) -> Option<u64> {
        None
    }
}

#[cfg(feature = "tch")]
impl DeviceMemory for burn::backend::libtorch::LibTorchDevice {
    fn device_reserved_bytes(&self) -> Option<u64> {
        None
    }
}

#[cfg(feature = "wgpu")]
impl DeviceMemory for burn::backend::wgpu::WgpuDevice {
    fn device_reserved_bytes(&self) -> Option<u64> {
        use burn::cubecl::Runtime;
        let usage = burn::cubecl::wgpu::WgpuRuntime::client(self).memory_usage().ok()?;
        Some(usage.bytes_reserved)
    }
}

#[cfg(feature = "cuda")]
impl DeviceMemory for burn::backend::cuda::CudaDevice {
    fn device_reserved_bytes(&self) -> Option<u64> {
        use burn::cubecl::Runtime;
        let usage = burn::cubecl::cuda::CudaRuntime::client(self).memory_usage().ok()?;
        Some(usage.bytes_reserved)
    }
}

/// The devices `--devices LIST` names for the backend `kind` (whose device type is `B`'s):
/// `cuda:N` (CUDA, LibTorch), `all` (every CUDA device, every discrete GPU on wgpu), `cpu` (the
/// CPU backend, LibTorch), `mps` (LibTorch), `wgpu`, `wgpu:N`, `wgpu:integrated:N`, `wgpu:cpu`
/// (wgpu: the default adapter, the N-th discrete GPU, …). A device may repeat (two ranges of
/// stages on one device).
pub fn parse_devices<B: burn::tensor::backend::Backend>(kind: BackendKind, list: &str) -> Result<Vec<B::Device>> {
    use burn::tensor::backend::{Device, DeviceId};
    if list.trim() == "all" {
        return match kind {
            BackendKind::Cuda => {
                let n = cuda_device_count()?;
                if n == 0 {
                    bail!("--devices all: CUDA reports no device");
                }
                Ok((0..n).map(|i| B::Device::from_id(DeviceId::new(0, i as u16))).collect())
            }
            BackendKind::Wgpu => {
                let n = wgpu_discrete_count()?;
                if n == 0 {
                    bail!("--devices all: wgpu sees no discrete GPU here; name the adapter (wgpu, wgpu:integrated:N, wgpu:cpu)");
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
                if kind == BackendKind::Cuda {
                    let count = cuda_device_count()?;
                    if usize::from(index) >= count {
                        let numbers =
                            if count == 1 { "cuda:0".to_string() } else { format!("cuda:0 to cuda:{}", count - 1) };
                        bail!(
                            "--devices: `{item}`: the NVIDIA driver sees {count} GPU{} here ({numbers})",
                            if count == 1 { "" } else { "s" }
                        );
                    }
                }
                B::Device::from_id(DeviceId::new(0, index))
            }
            (BackendKind::Wgpu, _) => wgpu_device::<B>(item)?,
            (BackendKind::Cpu, _) => bail!("--devices: `{item}`: the CPU backend has one device, `cpu`"),
            (BackendKind::Cuda, _) => bail!("--devices: `{item}`: expected cuda:N or all"),
            (BackendKind::Tch, _) => bail!("--devices: `{item}`: expected cuda:N, cpu or mps"),
        };
        devices.push(device);
    }
    Ok(devices)
}

/// The wgpu device `--devices` item `item` names, checked with wgpu (an adapter is there for
/// it), as `B`'s device type: cubecl-wgpu's `DeviceId`s.
fn wgpu_device<B: burn::tensor::backend::Backend>(item: &str) -> Result<B::Device> {
    #[cfg(feature = "wgpu")]
    {
        use burn::tensor::backend::Device;
        let device = wgpu_adapter::parse(item)?;
        check_wgpu(&device)?;
        Ok(B::Device::from_id(device.to_id()))
    }
    #[cfg(not(feature = "wgpu"))]
    {
        let _ = item;
        not_built("wgpu")
    }
}

//! Whether this machine can run `--backend wgpu`, asked of wgpu before burn is. cubecl-wgpu
//! picks the adapter (the GPU, through Vulkan, or Metal on macOS) when a device's first tensor
//! is made, and panics where there is none: no Vulkan driver, or `--devices wgpu:N` past the
//! GPUs there. This asks wgpu the same question by cubecl-wgpu's own rules, and says in one
//! line what is missing and what to do.

use std::sync::Mutex;

use anyhow::{bail, Result};
use burn::backend::wgpu::graphics::{AutoGraphicsApi, GraphicsApi};
use burn::backend::wgpu::WgpuDevice;

/// The adapter cubecl-wgpu will run a device on.
#[derive(Debug, Clone)]
pub struct Adapter {
    /// Its name, as wgpu reports it (`llvmpipe (LLVM 15.0.6, 256 bits)`).
    pub name: String,
    /// Whether its shaders compute in f16 (WebGPU's `shader-f16`, which cubecl's WGSL needs).
    pub shader_f16: bool,
}

/// What `--devices` names on wgpu, for the help and the messages.
pub const DEVICE_NAMES: &str =
    "wgpu (the default adapter), wgpu:N (the N-th discrete GPU), wgpu:integrated:N, wgpu:cpu, or all";

/// The device `--devices` item `item` names: `wgpu`, `wgpu:N`, `wgpu:integrated:N`, `wgpu:cpu`.
pub fn parse(item: &str) -> Result<WgpuDevice> {
    let index = |text: &str| text.parse::<usize>().ok();
    let device = match item.strip_prefix("wgpu").map(|rest| rest.strip_prefix(':')) {
        Some(None) if item == "wgpu" => Some(WgpuDevice::DefaultDevice),
        Some(Some("cpu")) => Some(WgpuDevice::Cpu),
        Some(Some(rest)) => match rest.strip_prefix("integrated:") {
            Some(n) => index(n).map(WgpuDevice::IntegratedGpu),
            None => index(rest).map(WgpuDevice::DiscreteGpu),
        },
        _ => None,
    };
    match device {
        Some(device) => Ok(device),
        None => bail!("--devices: `{item}`: expected {DEVICE_NAMES}"),
    }
}

/// How `--devices` writes `device`.
fn name(device: &WgpuDevice) -> String {
    match device {
        WgpuDevice::DiscreteGpu(n) => format!("wgpu:{n}"),
        WgpuDevice::IntegratedGpu(n) => format!("wgpu:integrated:{n}"),
        WgpuDevice::VirtualGpu(n) => format!("wgpu (CUBECL_WGPU_DEFAULT_DEVICE=VirtualGpu({n}))"),
        WgpuDevice::Cpu => "wgpu:cpu".into(),
        _ => "wgpu".into(),
    }
}

/// The graphics API cubecl-wgpu asks wgpu for (`AutoGraphicsApi`): Metal on macOS, else Vulkan.
fn api() -> wgpu::Backend {
    AutoGraphicsApi::backend()
}

/// What to install where wgpu finds no adapter.
fn install_hint() -> &'static str {
    if cfg!(target_os = "macos") {
        "Metal needs macOS 10.13 or later on a Mac with a Metal GPU"
    } else if cfg!(windows) {
        "install your GPU vendor's driver, which brings Vulkan (AMD Adrenalin, Intel Arc/Iris Xe, NVIDIA)"
    } else {
        "install a Vulkan driver and the Vulkan loader (Debian/Ubuntu: `apt-get install mesa-vulkan-drivers libvulkan1` for AMD and Intel, or NVIDIA's driver); `vulkaninfo --summary` lists what Vulkan sees"
    }
}

/// Every adapter of the graphics API.
fn adapters(instance: &wgpu::Instance) -> Vec<wgpu::Adapter> {
    burn::cubecl::future::block_on(instance.enumerate_adapters(api().into()))
}

/// The adapters a message lists: `name (kind)`, comma-separated.
fn listing(adapters: &[wgpu::Adapter]) -> String {
    let kind = |t: wgpu::DeviceType| match t {
        wgpu::DeviceType::DiscreteGpu => "discrete GPU",
        wgpu::DeviceType::IntegratedGpu => "integrated GPU",
        wgpu::DeviceType::VirtualGpu => "virtual GPU",
        wgpu::DeviceType::Cpu => "CPU",
        wgpu::DeviceType::Other => "other",
    };
    let names: Vec<String> =
        adapters.iter().map(|a| a.get_info()).map(|i| format!("{} ({})", i.name, kind(i.device_type))).collect();
    names.join(", ")
}

/// `CUBECL_WGPU_DEFAULT_DEVICE`, which cubecl-wgpu reads in place of the default device
/// (spelled as `WgpuDevice`'s variants: `DiscreteGpu(1)`, `Cpu`, …).
fn default_override() -> Option<WgpuDevice> {
    let var = std::env::var("CUBECL_WGPU_DEFAULT_DEVICE").ok()?;
    let inner = |prefix: &str| var.strip_prefix(prefix)?.strip_suffix(')')?.parse::<usize>().ok();
    if var == "Cpu" {
        return Some(WgpuDevice::Cpu);
    }
    inner("DiscreteGpu(")
        .map(WgpuDevice::DiscreteGpu)
        .or_else(|| inner("IntegratedGpu(").map(WgpuDevice::IntegratedGpu))
        .or_else(|| inner("VirtualGpu(").map(WgpuDevice::VirtualGpu))
}

/// The adapter cubecl-wgpu's `request_adapter` picks for `device`, by its rules: the default
/// device is wgpu's high-performance choice; a numbered one counts the adapters of its kind,
/// then (where there are too few) those wgpu calls "other".
fn select(instance: &wgpu::Instance, device: &WgpuDevice) -> Result<wgpu::Adapter> {
    let all = adapters(instance);
    if all.is_empty() {
        bail!("--backend wgpu: wgpu finds no {:?} adapter here: {}", api(), install_hint());
    }
    let (kind, n) = match device {
        WgpuDevice::DiscreteGpu(n) => (wgpu::DeviceType::DiscreteGpu, *n),
        WgpuDevice::IntegratedGpu(n) => (wgpu::DeviceType::IntegratedGpu, *n),
        WgpuDevice::VirtualGpu(n) => (wgpu::DeviceType::VirtualGpu, *n),
        WgpuDevice::Cpu => (wgpu::DeviceType::Cpu, 0),
        _ => {
            let options = wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                force_fallback_adapter: false,
                compatible_surface: None,
            };
            return burn::cubecl::future::block_on(instance.request_adapter(&options))
                .map_err(|e| anyhow::anyhow!("--backend wgpu: wgpu picks no adapter ({e}) among {}", listing(&all)));
        }
    };
    let of = |t: wgpu::DeviceType| all.iter().filter(move |a| a.get_info().device_type == t);
    match of(kind).nth(n).or_else(|| of(wgpu::DeviceType::Other).nth(n)) {
        Some(adapter) => Ok(adapter.clone()),
        None => bail!(
            "--devices: `{}`: wgpu sees {} {} here; its adapters: {} (--devices takes {DEVICE_NAMES})",
            name(device),
            of(kind).count(),
            match kind {
                wgpu::DeviceType::DiscreteGpu => "discrete GPU(s)",
                wgpu::DeviceType::IntegratedGpu => "integrated GPU(s)",
                wgpu::DeviceType::VirtualGpu => "virtual GPU(s)",
                _ => "CPU adapter(s)",
            },
            listing(&all)
        ),
    }
}

/// The adapter `device` runs on, or a one-line error naming what is missing; asked of wgpu once
/// per device and process. [`with_backend!`](crate::with_backend) calls it before burn does.
pub fn check(device: &WgpuDevice) -> Result<Adapter> {
    static SEEN: Mutex<Vec<(WgpuDevice, Adapter)>> = Mutex::new(Vec::new());
    let device = match device {
        WgpuDevice::DefaultDevice => default_override().unwrap_or(WgpuDevice::DefaultDevice),
        other => other.clone(),
    };
    let mut seen = SEEN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((_, adapter)) = seen.iter().find(|(d, _)| *d == device) {
        return Ok(adapter.clone());
    }
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: api().into(),
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let adapter = select(&instance, &device)?;
    let found =
        Adapter { name: adapter.get_info().name, shader_f16: adapter.features().contains(wgpu::Features::SHADER_F16) };
    seen.push((device, found.clone()));
    Ok(found)
}

/// The number of discrete GPUs wgpu sees (`--devices all`).
pub fn discrete_count() -> Result<usize> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: api().into(),
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let all = adapters(&instance);
    if all.is_empty() {
        bail!("--backend wgpu: wgpu finds no {:?} adapter here: {}", api(), install_hint());
    }
    Ok(all.iter().filter(|a| a.get_info().device_type == wgpu::DeviceType::DiscreteGpu).count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_parse_to_cubecls_devices_and_back() {
        for (text, device) in [
            ("wgpu", WgpuDevice::DefaultDevice),
            ("wgpu:0", WgpuDevice::DiscreteGpu(0)),
            ("wgpu:3", WgpuDevice::DiscreteGpu(3)),
            ("wgpu:integrated:1", WgpuDevice::IntegratedGpu(1)),
            ("wgpu:cpu", WgpuDevice::Cpu),
        ] {
            assert_eq!(parse(text).unwrap(), device, "{text}");
            assert_eq!(name(&device), text);
        }
        for bad in ["gpu", "wgpu:", "wgpu:x", "wgpu:-1", "wgpu:integrated:", "cuda:0", "wgpux"] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("`{bad}`")) && err.contains("wgpu:N"), "{bad}: {err}");
        }
    }
}

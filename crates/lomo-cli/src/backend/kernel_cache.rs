//! Where CubeCL keeps what it learns on this machine between runs: the compiled kernels (CUDA's
//! PTX; cubecl-wgpu keeps only SPIR-V, which lomo's WGSL build does not make, so on wgpu each run
//! compiles its shaders again) and the autotune results (which kernel is fastest for each shape,
//! on CUDA and wgpu alike). Without a place for them every run compiles and autotunes again in
//! its first steps; with one, only the first run on a machine does.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use burn::cubecl::config::cache::CacheConfig;
use burn::cubecl::config::profiling::ProfilingLogLevel;
use burn::cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};

/// The configuration files cubecl reads itself, looked for from the working directory up.
const CUBECL_FILES: [&str; 4] = ["cubecl.toml", "CubeCL.toml", "burn.toml", "Burn.toml"];

/// The cache directory: `LOMO_KERNEL_CACHE`, else `$XDG_CACHE_HOME/lomo/cubecl`, else
/// `~/.cache/lomo/cubecl`; `None` where there is no home either.
pub fn dir() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = var("LOMO_KERNEL_CACHE") {
        return Some(dir);
    }
    let base = var("XDG_CACHE_HOME").or_else(|| var("HOME").map(|home| home.join(".cache")))?;
    Some(base.join("lomo").join("cubecl"))
}

/// Whether a cubecl configuration file applies here (it then decides the caches itself).
fn user_config(from: &Path) -> Option<PathBuf> {
    from.ancestors().flat_map(|d| CUBECL_FILES.iter().map(move |f| d.join(f))).find(|p| p.is_file())
}

/// `LOMO_KERNEL_PROFILE`: a file for cubecl's per-kernel profile (each kernel timed on the
/// device, synchronised one by one, so steps run slower; a table of the kernels' device time at
/// every `Backend::sync`, which `xtask bench` calls after each step), or `None`.
pub fn profile_file() -> Option<PathBuf> {
    std::env::var_os("LOMO_KERNEL_PROFILE").filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// Points cubecl's kernel and autotune caches at [`dir`], and its profiler at
/// [`profile_file`] where one is named, once, before any GPU client exists (cubecl reads its
/// configuration when the first one starts). A `cubecl.toml` or `burn.toml` of the user's wins,
/// as do cubecl's environment variables (`CUBECL_AUTOTUNE_LEVEL`, …). Returns where the caches
/// are, or `None` where cubecl decides.
pub fn configure() -> Option<PathBuf> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let here = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        if user_config(&here).is_some() {
            return None;
        }
        let (dir, profile) = (dir(), profile_file());
        if dir.is_none() && profile.is_none() {
            return None;
        }
        let mut slot = CubeClRuntimeConfig::storage().lock();
        if slot.is_some() {
            return None;
        }
        let mut config = CubeClRuntimeConfig::default().override_from_env();
        if let Some(dir) = &dir {
            config.compilation.cache = Some(CacheConfig::File(dir.clone()));
            config.autotune.cache = CacheConfig::File(dir.clone());
        }
        if let Some(file) = profile {
            config.profiling.logger.level = ProfilingLogLevel::Basic;
            config.profiling.logger.file = Some(file);
            config.profiling.logger.append = false;
        }
        *slot = Some(Arc::new(config));
        dir
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cubecl_file_above_the_working_directory_is_the_users_choice() {
        let root = std::env::temp_dir().join(format!("lomo-kernel-cache-{}", std::process::id()));
        let deep = root.join("a").join("b");
        std::fs::create_dir_all(&deep).unwrap();
        assert_eq!(user_config(&deep), None);
        std::fs::write(root.join("burn.toml"), "").unwrap();
        assert_eq!(user_config(&deep), Some(root.join("burn.toml")));
        std::fs::remove_dir_all(&root).unwrap();
    }
}

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

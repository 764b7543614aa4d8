//! burn's other backends: the traits' default methods, which compose burn's own ops
//! ([`crate::reference`] for [`crate::FusedKernels`], [`crate::update::reference`] for
//! [`crate::UpdateKernels`]). LibTorch's `FusedKernels` is in `tch.rs`; the CubeCL backends
//! (CUDA, wgpu) are implemented in `cube/`. Each is behind the cargo
//! feature of its name, so that this crate builds only the backends a binary asks for.

#[cfg(feature = "ndarray")]
impl crate::FusedKernels for burn::backend::NdArray {}
#[cfg(feature = "ndarray")]
impl crate::UpdateKernels for burn::backend::NdArray {}

#[cfg(feature = "tch")]
impl crate::UpdateKernels for burn::backend::LibTorch {}

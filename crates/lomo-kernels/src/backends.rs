//! burn's other backends: the traits' default methods, which compose burn's own ops
//! ([`crate::reference`] for [`crate::FusedKernels`], [`crate::update::reference`] for
//! [`crate::UpdateKernels`]). LibTorch's `FusedKernels` is in `tch.rs`. Each is behind the cargo
//! feature of its name, so that this crate builds only the backends a binary asks for.

#[cfg(feature = "ndarray")]
impl crate::FusedKernels for burn::backend::NdArray {}
#[cfg(feature = "ndarray")]
impl crate::UpdateKernels for burn::backend::NdArray {}

#[cfg(feature = "tch")]
impl crate::UpdateKernels for burn::backend::LibTorch {}

#[cfg(feature = "cuda")]
impl crate::FusedKernels for burn::backend::Cuda {}
#[cfg(feature = "cuda")]
impl crate::UpdateKernels for burn::backend::Cuda {}

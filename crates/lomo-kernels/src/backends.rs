//! burn's other backends: the trait's default methods, which compose burn's own ops
//! ([`crate::reference`]). LibTorch's impl is in `tch.rs`. Each is behind the cargo feature of its name, so that this crate
//! builds only the backends a binary asks for.

#[cfg(feature = "ndarray")]
impl crate::FusedKernels for burn::backend::NdArray {}

#[cfg(feature = "cuda")]
impl crate::FusedKernels for burn::backend::Cuda {}

//! The one place that maps a cargo feature to the backend the tests run on.
//! `cargo test -p lomo-optim` uses Flex; `--no-default-features --features test-ndarray`
//! (or `test-tch`, `test-cuda`, `test-wgpu`) picks another.

#[cfg(feature = "test-flex")]
pub type Inner = burn::backend::Flex;
#[cfg(all(feature = "test-ndarray", not(feature = "test-flex")))]
pub type Inner = burn::backend::NdArray;
#[cfg(all(feature = "test-tch", not(any(feature = "test-flex", feature = "test-ndarray"))))]
pub type Inner = burn::backend::LibTorch;
#[cfg(all(feature = "test-cuda", not(any(feature = "test-flex", feature = "test-ndarray", feature = "test-tch"))))]
pub type Inner = burn::backend::Cuda;
#[cfg(all(
    feature = "test-wgpu",
    not(any(feature = "test-flex", feature = "test-ndarray", feature = "test-tch", feature = "test-cuda"))
))]
pub type Inner = burn::backend::Wgpu;

/// The autodiff backend of the tests.
pub type TestBackend = burn::backend::Autodiff<Inner>;

/// Whether the backend stores f16 (NdArray does not; wgpu only where the device has it).
pub const SUPPORTS_F16: bool =
    !cfg!(all(any(feature = "test-ndarray", feature = "test-wgpu"), not(feature = "test-flex")));

/// Whether allocations of this backend go through Rust's global allocator (LibTorch's and
/// CUDA's do not, so a counting allocator cannot see them).
pub const HEAP_VISIBLE: bool = cfg!(any(feature = "test-flex", feature = "test-ndarray"));

pub fn device() -> burn::tensor::Device<Inner> {
    Default::default()
}

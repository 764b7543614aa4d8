//! A counting global allocator: live and peak heap bytes, for the progress line, the run
//! summary and the demo's memory table. Deterministic, unlike RSS; backends that allocate
//! outside Rust (LibTorch, CUDA) are not seen, so RSS is reported too.

pub use lomo_io::memory::{live, peak, reset_peak, CountingAllocator as Counting};

/// Peak resident set size of the process (VmHWM), where /proc has it.
pub fn peak_rss() -> Option<usize> {
    lomo_io::memory::peak_rss().map(|b| b as usize)
}

/// `1.23 GiB`, `456.7 MiB`.
pub fn human(bytes: usize) -> String {
    let b = bytes as f64;
    if b >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2} GiB", b / (1024.0 * 1024.0 * 1024.0))
    } else if b >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / (1024.0 * 1024.0))
    } else {
        format!("{:.1} KiB", b / 1024.0)
    }
}

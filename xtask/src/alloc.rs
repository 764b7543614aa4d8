//! A counting global allocator: live heap bytes and their high-water mark.
//!
//! Every host tensor of the CPU backends goes through Rust's global allocator, so the peak of
//! live bytes is the peak memory of a step, deterministic enough to assert on (unlike RSS,
//! which also counts the allocator's retained pages and the binary). Each profile case runs
//! in its own process, so nothing else allocates meanwhile.

pub use lomo_optim::memory::{live, peak, peak_rss, reset_peak, CountingAllocator as Counting};

//! The leaf of lomo's crate graph: what several crates need and none of them owns, with no
//! dependency on burn or on another lomo crate.
//!
//! - [`atomic`]: every file lomo writes for keeps (checkpoints, working copies, GGUF exports,
//!   logs' charts, reports) goes through a temporary file beside it that is synced, renamed into
//!   place, and its directory synced: a reader sees the old file or the new one, never half.
//! - [`gguf`], [`gguf_tokenizer`]: the GGUF container (header, metadata, tensor infos) and the
//!   one description of the tokenizer it carries, shared by the model and data crates.
//! - [`rng`]: `SplitMix64`, the seeded generator behind every shuffle and random weight.
//! - [`memory`]: a counting global allocator and the process's peak RSS.
//!
//! ```
//! use lomo_io::{atomic, rng::SplitMix64};
//!
//! # fn main() -> Result<(), atomic::WriteError> {
//! let dir = std::env::temp_dir().join(format!("lomo-io-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).map_err(|e| atomic::WriteError::new(&dir, e))?;
//! let path = dir.join("order.json");
//! let mut order: Vec<u32> = (0..8).collect();
//! SplitMix64::new(42).shuffle(&mut order);
//! atomic::write(&path, format!("{order:?}"))?;
//! assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{order:?}"));
//! // The same seed gives the same order, on every machine.
//! let mut again: Vec<u32> = (0..8).collect();
//! SplitMix64::new(42).shuffle(&mut again);
//! assert_eq!(again, order);
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

pub mod atomic;
pub mod gguf;
pub mod gguf_tokenizer;
pub mod memory;
pub mod rng;

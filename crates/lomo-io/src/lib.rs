//! The leaf of lomo's crate graph: what several crates need and none of them owns, with no
//! dependency on burn or on another lomo crate.
#![warn(missing_docs)]

pub mod atomic;
pub mod gguf;
pub mod gguf_tokenizer;
pub mod memory;
pub mod rng;

//! What the `lomo` binary shares with xtask and its tests: the backend a command line names
//! ([`backend`], the one place a cargo feature becomes a burn backend type), the SVG charts'
//! frame ([`chart`]), the crash-safe swap of a checkpoint directory ([`save_dir`]) and printing
//! that a closed pipe cannot crash ([`output`]: `say!`, `sayln!`, `note!`, `noteln!`). The
//! subcommands themselves live in the binary.
#![warn(missing_docs)]

pub mod backend;
pub mod chart;
pub mod output;
pub mod save_dir;

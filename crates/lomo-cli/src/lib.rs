//! What the `lomo` binary shares with xtask: the backend a command line names
//! ([`backend`], the one place a cargo feature becomes a burn backend type) and the SVG charts'
//! frame ([`chart`]). The subcommands themselves live in the binary.
#![warn(missing_docs)]

pub mod backend;
pub mod chart;

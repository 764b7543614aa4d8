//! Integration tests of lomo-models (one binary; the loading-memory measurement has its own).

mod common;

mod checkpoints;
mod export;
mod families;
mod fused;
mod mutations;
mod offload;
mod placement;
mod presets;
mod reference;
mod smol;
mod stages;

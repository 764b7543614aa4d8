//! Integration tests of lomo-models (one binary; the loading-memory measurement has its own).

mod common;

mod reference;
mod stages;
mod checkpoints;
mod smol;
mod presets;
mod fused;
mod export;
mod families;
mod placement;
mod offload;

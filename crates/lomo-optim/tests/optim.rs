//! lomo-optim's behaviour tests, on the backend that `common::backend` picks.

mod common;

mod adalomo;
mod blocks;
mod fused;
mod kernels;
mod reduce;
mod scaling;
mod schedule;

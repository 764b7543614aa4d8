//! `lomo plan`: the predicted peak memory of a training step.

use anyhow::Result;

use crate::args::PlanArgs;

pub fn run(args: PlanArgs) -> Result<()> {
    let _ = args;
    anyhow::bail!("lomo plan: the planner lands with `cargo xtask profile`")
}

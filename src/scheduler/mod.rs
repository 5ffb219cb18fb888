//! The scheduler: plans every buffer of a training step before it runs (plan.rs), assigns arena
//! offsets (memory.rs) and executes the plan on a backend (exec.rs).

pub mod exec;
pub mod instr;
pub mod memory;
pub mod plan;
pub mod report;

pub use exec::{Batch, Executor};
pub use plan::{Plan, PlanOptions, Strategy};

use crate::error::Result;
use crate::model::Program;
use crate::precision::Precision;

/// The training plan of a program with offsets assigned.
pub fn training_plan(
    prog: &Program,
    strategy: Strategy,
    check_reconstruction: bool,
) -> Result<Plan> {
    plan_with(
        prog,
        &PlanOptions {
            strategy,
            inference: false,
            check_reconstruction,
            exact_coupling: None,
            precision: Precision::F32,
        },
    )
}

/// The plan of a program under any options, offsets assigned.
pub fn plan_with(prog: &Program, opt: &PlanOptions) -> Result<Plan> {
    let mut plan = plan::build_training(prog, opt)?;
    memory::assign(&mut plan);
    Ok(plan)
}

/// The forward-only plan: running statistics, reversible chains in place, sigmoid output; keeps
/// no activation for a backward.
pub fn inference_plan(prog: &Program) -> Result<Plan> {
    plan_with(
        prog,
        &PlanOptions {
            strategy: Strategy::Recompute,
            inference: true,
            check_reconstruction: false,
            exact_coupling: None,
            precision: Precision::F32,
        },
    )
}

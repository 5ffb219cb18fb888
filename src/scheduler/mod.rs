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

/// The storage a plan for backend `b` lays its activations out in: bf16 where the backend's
/// arena holds each buffer in its own storage (the CPU's bf16 backend), f32 otherwise (GPU
/// backends multiply in TF32 or bf16 but keep f32 buffers).
pub fn storage_precision<B: crate::backend::Backend>(b: &B) -> Precision {
    if b.byte_regions() {
        Precision::Bf16
    } else {
        Precision::F32
    }
}

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
    inference_plan_in(prog, Precision::F32)
}

/// `inference_plan` with activations in `precision`'s storage.
pub fn inference_plan_in(prog: &Program, precision: Precision) -> Result<Plan> {
    plan_with(
        prog,
        &PlanOptions {
            strategy: Strategy::Recompute,
            inference: true,
            check_reconstruction: false,
            exact_coupling: None,
            precision,
        },
    )
}

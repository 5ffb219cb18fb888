//! `revseg bench step` and `revseg bench table`: full training steps (forward, backward, Adam)
//! through the scheduler, with the planned and the measured memory.

use super::time_median;
use crate::backend::Backend;
use crate::error::Result;
use crate::json::Json;
use crate::model::Program;
use crate::rng::Rng;
use crate::scheduler::report::PlanSummary;
use crate::scheduler::{self, Batch, Executor, Strategy};
use crate::tensor::Element;

#[derive(Clone, Debug)]
pub struct StepBench {
    pub label: String,
    pub params: usize,
    pub step_secs: f64,
    pub gflop: f64,
    pub arena_bytes: usize,
    /// Largest arena byte any instruction touched while the steps ran.
    pub measured_bytes: usize,
    pub activation_bytes: usize,
}

pub fn bench_step<B: Backend>(
    b: &B,
    prog: &Program,
    strategy: Strategy,
    label: &str,
    steps: usize,
) -> Result<StepBench> {
    bench_step_profiled(b, prog, strategy, label, steps, false).map(|r| r.0)
}

/// Time per op name over the timed steps, largest first.
pub type OpProfile = Vec<(&'static str, f64, usize)>;

pub fn bench_step_profiled<B: Backend>(
    b: &B,
    prog: &Program,
    strategy: Strategy,
    label: &str,
    steps: usize,
    profile: bool,
) -> Result<(StepBench, OpProfile)> {
    let plan = scheduler::training_plan(prog, strategy, false)?;
    let elem = std::mem::size_of::<B::Elem>();
    let summary = PlanSummary::new(&plan, prog.param_count(), elem);
    let mut ex = Executor::new(b, prog, plan, 1)?;
    ex.poison = false;
    let mut rng = Rng::new(3);
    let n_in = prog.tensors[prog.input].shape.len();
    let n_out = prog.tensors[prog.output].shape.len();
    let image: Vec<B::Elem> = rng
        .normals(n_in)
        .into_iter()
        .map(B::Elem::from_f64)
        .collect();
    let target: Vec<B::Elem> = (0..n_out)
        .map(|_| B::Elem::from_f64((rng.uniform() < 0.7) as u8 as f64))
        .collect();
    let mask = vec![B::Elem::ONE; n_out];
    let batch = Batch {
        image: &image,
        target: &target,
        mask: &mask,
    };
    let mut err = None;
    if profile {
        ex.profile = Some(Default::default());
    }
    let secs = time_median(steps.max(1), 0.0, || {
        if let Err(e) = ex.train_step(b, &batch, true) {
            err.get_or_insert(e);
        }
    });
    if let Some(e) = err {
        return Err(e);
    }
    let mut prof: OpProfile = ex
        .profile
        .take()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, (t, n))| (k, t, n))
        .collect();
    prof.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap());
    let bench = StepBench {
        label: label.to_string(),
        params: prog.param_count(),
        step_secs: secs,
        gflop: summary.flops / 1e9,
        arena_bytes: summary.arena_bytes,
        measured_bytes: ex.high_water.get() * elem,
        activation_bytes: summary.activation_bytes(),
    };
    Ok((bench, prof))
}

pub fn json(rows: &[StepBench], device: &str) -> Json {
    Json::obj([
        ("device", Json::from(device)),
        (
            "rows",
            Json::Arr(
                rows.iter()
                    .map(|r| {
                        Json::obj([
                            ("model", Json::from(r.label.clone())),
                            ("params", Json::from(r.params)),
                            ("step_seconds", Json::from(r.step_secs)),
                            ("step_gflop", Json::from(r.gflop)),
                            ("gflops", Json::from(r.gflop / r.step_secs)),
                            ("arena_bytes", Json::from(r.arena_bytes)),
                            ("measured_high_water_bytes", Json::from(r.measured_bytes)),
                            ("activation_bytes", Json::from(r.activation_bytes)),
                        ])
                    })
                    .collect(),
            ),
        ),
    ])
}

pub fn markdown(rows: &[StepBench]) -> String {
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    let base = rows.first().map_or(1.0, |r| r.arena_bytes as f64);
    let mut s = String::from(
        "| model | params | step (s) | GFLOP/step | GFLOP/s | peak (MiB) | measured (MiB) | activations+workspace (MiB) | peak vs first row |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        s += &format!(
            "| {} | {} | {:.2} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0}% |\n",
            r.label,
            r.params,
            r.step_secs,
            r.gflop,
            r.gflop / r.step_secs,
            mib(r.arena_bytes),
            mib(r.measured_bytes),
            mib(r.activation_bytes),
            100.0 * r.arena_bytes as f64 / base
        );
    }
    s
}

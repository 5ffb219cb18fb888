//! `revseg bench step` and `revseg bench table`: full training steps (forward, backward, Adam)
//! through the scheduler, with the planned and the measured memory.

use super::time_median;
use crate::backend::Backend;
use crate::error::Result;
use crate::json::{self, Json};
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
    bench_step_profiled(b, prog, strategy, label, steps, false, false).map(|r| r.0)
}

/// Time per op name over the timed steps, largest first.
pub type OpProfile = Vec<(&'static str, f64, usize)>;

/// One executor with a fixed random batch, ready to run timed training steps.
pub struct StepRunner<'a, B: Backend> {
    b: &'a B,
    pub ex: Executor<B>,
    pub summary: PlanSummary,
    image: Vec<B::Elem>,
    target: Vec<B::Elem>,
    mask: Vec<B::Elem>,
}

impl<'a, B: Backend> StepRunner<'a, B> {
    pub fn new(b: &'a B, prog: &Program, strategy: Strategy) -> Result<Self> {
        Self::with_coupling(b, prog, strategy, false)
    }

    /// `new`, with the reversible chains in exact coupling (the state format of the backend's
    /// storage: 16 bits in bf16) when `exact`.
    pub fn with_coupling(
        b: &'a B,
        prog: &Program,
        strategy: Strategy,
        exact: bool,
    ) -> Result<Self> {
        let precision = scheduler::storage_precision(b);
        let plan = scheduler::plan_with(
            prog,
            &scheduler::PlanOptions {
                strategy,
                inference: false,
                check_reconstruction: false,
                exact_coupling: crate::ops::coupling::FixedPoint::for_plan(exact, precision),
                precision,
            },
        )?;
        let summary = PlanSummary::new(&plan, prog.param_count());
        let mut ex = Executor::new(b, prog, plan, 1)?;
        ex.poison = false;
        let mut rng = Rng::new(3);
        let n_in = prog.tensors[prog.input].shape.len();
        let n_out = prog.tensors[prog.output].shape.len();
        let image = rng
            .normals(n_in)
            .into_iter()
            .map(B::Elem::from_f64)
            .collect();
        let target = (0..n_out)
            .map(|_| B::Elem::from_f64((rng.uniform() < 0.7) as u8 as f64))
            .collect();
        Ok(Self {
            b,
            ex,
            summary,
            image,
            target,
            mask: vec![B::Elem::ONE; n_out],
        })
    }

    /// One full training step (forward, loss, backward, Adam); its wall time in seconds.
    pub fn step(&mut self) -> Result<f64> {
        let batch = Batch {
            image: &self.image,
            target: &self.target,
            mask: &self.mask,
        };
        let t0 = std::time::Instant::now();
        self.ex.train_step(self.b, &batch, true)?;
        Ok(t0.elapsed().as_secs_f64())
    }
}

pub fn bench_step_profiled<B: Backend>(
    b: &B,
    prog: &Program,
    strategy: Strategy,
    label: &str,
    steps: usize,
    profile: bool,
    exact_coupling: bool,
) -> Result<(StepBench, OpProfile)> {
    let mut run = StepRunner::with_coupling(b, prog, strategy, exact_coupling)?;
    let mut err = None;
    if profile {
        run.ex.profile = Some(Default::default());
    }
    let secs = time_median(steps.max(1), 0.0, || {
        if let Err(e) = run.step() {
            err.get_or_insert(e);
        }
    });
    if let Some(e) = err {
        return Err(e);
    }
    let mut prof: OpProfile = run
        .ex
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
        gflop: run.summary.flops / 1e9,
        arena_bytes: run.summary.arena_bytes,
        measured_bytes: run.ex.high_water.get(),
        activation_bytes: run.summary.activation_bytes(),
    };
    Ok((bench, prof))
}

/// Step times of the Recompute plan and the store-all plan of one network, measured in
/// alternation within one process so that the machine's drift hits both alike.
pub struct RatioBench {
    /// (recompute seconds, store-all seconds) per pair.
    pub pairs: Vec<(f64, f64)>,
    pub gflop: (f64, f64),
    pub arena_bytes: (usize, usize),
    /// The executors' measured high-water marks.
    pub measured_bytes: (usize, usize),
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

impl RatioBench {
    pub fn ratios(&self) -> Vec<f64> {
        self.pairs.iter().map(|(r, s)| r / s).collect()
    }
    /// Median of the recompute steps over the median of the store-all steps.
    pub fn ratio_of_medians(&self) -> f64 {
        median(self.pairs.iter().map(|p| p.0).collect())
            / median(self.pairs.iter().map(|p| p.1).collect())
    }
    /// Fastest recompute step over fastest store-all step.
    pub fn ratio_of_minima(&self) -> f64 {
        let min = |f: fn(&(f64, f64)) -> f64| self.pairs.iter().map(f).fold(f64::MAX, f64::min);
        min(|p| p.0) / min(|p| p.1)
    }
}

/// The Recompute plan against the store-all plan (see `alternate`).
pub fn bench_ratio<B: Backend>(
    b: &B,
    prog: &Program,
    pairs: usize,
    progress: impl FnMut(usize, f64, f64),
) -> Result<RatioBench> {
    let rec = StepRunner::new(b, prog, Strategy::Recompute)?;
    let all = StepRunner::new(b, prog, Strategy::StoreAll)?;
    alternate(rec, all, pairs, progress)
}

/// The same plan of one network on two backends (bf16 storage against f32), alternated as
/// `bench_ratio` does: pairs hold (first backend, second backend) seconds.
pub fn bench_backend_ratio<A: Backend, C: Backend>(
    a: &A,
    c: &C,
    prog: &Program,
    strategy: Strategy,
    pairs: usize,
    progress: impl FnMut(usize, f64, f64),
) -> Result<RatioBench> {
    let first = StepRunner::new(a, prog, strategy)?;
    let second = StepRunner::new(c, prog, strategy)?;
    alternate(first, second, pairs, progress)
}

/// One warm-up step of each runner, then `pairs` pairs of steps, the order inside a pair
/// alternating from pair to pair.
fn alternate<A: Backend, C: Backend>(
    mut x: StepRunner<A>,
    mut y: StepRunner<C>,
    pairs: usize,
    mut progress: impl FnMut(usize, f64, f64),
) -> Result<RatioBench> {
    x.step()?;
    y.step()?;
    let mut out = Vec::with_capacity(pairs);
    for i in 0..pairs.max(1) {
        let (r, s) = if i % 2 == 0 {
            let r = x.step()?;
            (r, y.step()?)
        } else {
            let s = y.step()?;
            (x.step()?, s)
        };
        progress(i, r, s);
        out.push((r, s));
    }
    Ok(RatioBench {
        pairs: out,
        gflop: (x.summary.flops / 1e9, y.summary.flops / 1e9),
        arena_bytes: (x.summary.arena_bytes, y.summary.arena_bytes),
        measured_bytes: (x.ex.high_water.get(), y.ex.high_water.get()),
    })
}

pub fn json(rows: &[StepBench], device: &str) -> Json {
    json::obj([
        ("device", Json::from(device)),
        (
            "rows",
            Json::Array(
                rows.iter()
                    .map(|r| {
                        json::obj([
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

//! Finite-difference gradient checks: every op's backward against central differences of its
//! forward in f64, and the f32 path against the f64 path. `revseg gradcheck` and the tests both run
//! these cases.
//!
//! Error measure, per differentiated input: max over elements of |a - n| / max(|a|, |n|, 1e-3 s),
//! with a the analytic and n the numeric gradient, and s the largest |n| of that input. The floor
//! keeps elements whose gradient is (nearly) zero from turning rounding noise into a large ratio.

pub mod cases;

pub use cases::{all_cases, Case, OpKind, OPS};

use crate::backend::cpu::CpuBackend;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::rng::Rng;

/// Finite-difference step: central differences at h and h/2 combined by Richardson extrapolation
/// (error O(h^4)), so a large step keeps rounding noise small without truncation error.
pub const FD_STEP: f64 = 1e-3;
/// Largest allowed error of the f64 backward against finite differences.
pub const FD_TOL: f64 = 1e-6;
/// Largest allowed error of the f32 path against the f64 path, measured norm-wise
/// (max |a - b| / max |b|): f32 rounding is relative to the size of the sums, not of each element.
pub const F32_TOL: f64 = 3e-5;
/// Largest allowed error of a device's f32 backward against f64 finite differences, norm-wise over
/// the sampled elements (max |a - n| / max |n|). The device computes in f32 from the same f32-rounded
/// inputs the differences use, so the error is f32 rounding of sums of up to a few hundred terms,
/// around 1e-6 of the gradient's scale; 1e-4 leaves two orders of margin and still rejects a
/// backward that is 1% off (the checker's fault injection).
pub const DEVICE_FD_TOL: f64 = 1e-4;
/// Elements perturbed per input (all of them when there are fewer).
pub const FD_SAMPLES: usize = 160;

#[derive(Clone, Debug)]
pub struct CheckResult {
    pub op: String,
    pub variant: String,
    pub shape: String,
    pub fd_err: f64,
    pub f32_err: f64,
    pub evaluated: usize,
    pub passed: bool,
}

/// ||a - b||_2 / ||b||_2.
pub fn l2_rel_err(a: &[f64], b: &[f64]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let n: f64 = b.iter().map(|y| y * y).sum();
    (d / n.max(1e-300)).sqrt()
}

pub fn normwise_err(a: &[f64], b: &[f64]) -> f64 {
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-300);
    a.iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

pub fn rel_err(analytic: &[f64], numeric: &[f64]) -> f64 {
    let scale = numeric
        .iter()
        .chain(analytic)
        .fold(0.0f64, |m, v| m.max(v.abs()));
    let floor = (1e-3 * scale).max(1e-300);
    analytic.iter().zip(numeric).fold(0.0f64, |m, (&a, &n)| {
        m.max((a - n).abs() / a.abs().max(n.abs()).max(floor))
    })
}

/// sum(dy * (y(x + h e) - y(x - h e))) / 2h, differencing per output element so that outputs the
/// perturbation does not reach contribute exactly zero.
fn central(
    case: &Case,
    b: &CpuBackend<f64>,
    vals: &mut [Vec<f64>],
    i: usize,
    e: usize,
    h: f64,
    dy: &[f64],
) -> Result<f64> {
    let x0 = vals[i][e];
    vals[i][e] = x0 + h;
    let yp = case.eval(b, vals, None, &[])?.output;
    vals[i][e] = x0 - h;
    let ym = case.eval(b, vals, None, &[])?.output;
    vals[i][e] = x0;
    Ok(dy
        .iter()
        .zip(yp.iter().zip(&ym))
        .map(|(r, (p, m))| r * (p - m))
        .sum::<f64>()
        / (2.0 * h))
}

/// Largest error of `grads` (times `fault`) against Richardson-extrapolated central differences
/// of the f64 CPU forward, over up to FD_SAMPLES elements of each differentiated input, and the
/// number of elements compared.
fn fd_error(
    case: &Case,
    vals: &[Vec<f64>],
    dy: &[f64],
    grads: &[Vec<f64>],
    fault: f64,
    rng: &mut Rng,
    metric: fn(&[f64], &[f64]) -> f64,
) -> Result<(f64, usize)> {
    let cpu64 = CpuBackend::<f64>::new();
    let (mut worst, mut evaluated) = (0.0f64, 0);
    for (i, input) in case.inputs.iter().enumerate() {
        if !input.diff {
            continue;
        }
        let n = input.shape.len();
        let mut idx: Vec<usize> = (0..n).collect();
        if n > FD_SAMPLES {
            rng.shuffle(&mut idx);
            idx.truncate(FD_SAMPLES);
        }
        let mut a = Vec::with_capacity(idx.len());
        let mut num = Vec::with_capacity(idx.len());
        let mut v = vals.to_vec();
        for &e in &idx {
            let d1 = central(case, &cpu64, &mut v, i, e, FD_STEP, dy)?;
            let d2 = central(case, &cpu64, &mut v, i, e, FD_STEP / 2.0, dy)?;
            num.push((4.0 * d2 - d1) / 3.0);
            a.push(grads[i][e] * fault);
        }
        evaluated += idx.len();
        worst = worst.max(metric(&a, &num));
    }
    Ok((worst, evaluated))
}

/// Check one case. `fault` scales the analytic gradient (1.0 in normal use; the tests use 1.01 to
/// show that the checker rejects a slightly wrong backward).
pub fn check_case(case: &Case, seed: u64, fault: f64) -> Result<CheckResult> {
    let cpu64 = CpuBackend::<f64>::new();
    let cpu32 = CpuBackend::<f32>::new();
    let mut rng = Rng::new(seed ^ 0x5eed);
    let vals: Vec<Vec<f64>> = case.inputs.iter().map(|i| i.data.clone()).collect();
    let dy = rng.normals(case.out_shape.len());
    let prior: Vec<Vec<f64>> = case
        .inputs
        .iter()
        .map(|i| rng.normals(i.shape.len()))
        .collect();
    let ana = cpu64.eval_case(case, &vals, &dy, &prior)?;
    let (fd_err, evaluated) = fd_error(case, &vals, &dy, &ana.grads, fault, &mut rng, rel_err)?;
    // The f32 path, from the same inputs rounded to f32, against the f64 path on those inputs.
    let vals32: Vec<Vec<f64>> = vals.iter().map(|v| cases::round_to::<f32>(v)).collect();
    let dy32 = cases::round_to::<f32>(&dy);
    let prior32: Vec<Vec<f64>> = prior.iter().map(|v| cases::round_to::<f32>(v)).collect();
    let r64 = cpu64.eval_case(case, &vals32, &dy32, &prior32)?;
    let r32 = cpu32.eval_case(case, &vals32, &dy32, &prior32)?;
    let mut f32_err = normwise_err(&r32.output, &r64.output);
    for (g32, g64) in r32.grads.iter().zip(&r64.grads) {
        f32_err = f32_err.max(normwise_err(g32, g64));
    }
    let passed =
        fd_err <= FD_TOL && f32_err <= F32_TOL && fd_err.is_finite() && f32_err.is_finite();
    Ok(CheckResult {
        op: case.op.to_string(),
        variant: case.variant.clone(),
        shape: case.shape_desc(),
        fd_err,
        f32_err,
        evaluated,
        passed,
    })
}

/// Check one case on an f32 device: its analytic gradients against f64 finite differences at the
/// same (f32-rounded) point, and its outputs and gradients against the f64 CPU path. `fd_err` here
/// is norm-wise (see DEVICE_FD_TOL).
pub fn check_case_on<B: Backend<Elem = f32>>(
    dev: &B,
    case: &Case,
    seed: u64,
    fault: f64,
) -> Result<CheckResult> {
    let cpu64 = CpuBackend::<f64>::new();
    let mut rng = Rng::new(seed ^ 0x5eed);
    let vals: Vec<Vec<f64>> = case
        .inputs
        .iter()
        .map(|i| cases::round_to::<f32>(&i.data))
        .collect();
    let dy = cases::round_to::<f32>(&rng.normals(case.out_shape.len()));
    let prior: Vec<Vec<f64>> = case
        .inputs
        .iter()
        .map(|i| cases::round_to::<f32>(&rng.normals(i.shape.len())))
        .collect();
    let ana = dev.eval_case(case, &vals, &dy, &prior)?;
    let (fd_err, evaluated) =
        fd_error(case, &vals, &dy, &ana.grads, fault, &mut rng, normwise_err)?;
    let r64 = cpu64.eval_case(case, &vals, &dy, &prior)?;
    let mut f32_err = normwise_err(&ana.output, &r64.output);
    for (g, g64) in ana.grads.iter().zip(&r64.grads) {
        f32_err = f32_err.max(normwise_err(g, g64));
    }
    let passed =
        fd_err <= DEVICE_FD_TOL && f32_err <= F32_TOL && fd_err.is_finite() && f32_err.is_finite();
    Ok(CheckResult {
        op: case.op.to_string(),
        variant: case.variant.clone(),
        shape: case.shape_desc(),
        fd_err,
        f32_err,
        evaluated,
        passed,
    })
}

/// `run` on an f32 device.
pub fn run_on<B: Backend<Elem = f32>>(
    dev: &B,
    op: Option<&str>,
    seed: u64,
    fault: f64,
) -> Result<Vec<CheckResult>> {
    if let Some(name) = op {
        if !OPS.contains(&name) {
            return Err(Error::Invalid(format!(
                "unknown op '{name}'; known ops: {}",
                OPS.join(", ")
            )));
        }
    }
    all_cases(seed)
        .iter()
        .filter(|c| op.is_none_or(|o| c.op == o))
        .map(|c| check_case_on(dev, c, seed, fault))
        .collect()
}

trait EvalCase {
    fn eval_case(
        &self,
        case: &Case,
        vals: &[Vec<f64>],
        dy: &[f64],
        prior: &[Vec<f64>],
    ) -> Result<cases::Evaluation>;
}

impl<B: Backend> EvalCase for B {
    fn eval_case(
        &self,
        case: &Case,
        vals: &[Vec<f64>],
        dy: &[f64],
        prior: &[Vec<f64>],
    ) -> Result<cases::Evaluation> {
        case.eval(self, vals, Some(dy), prior)
    }
}

/// Run the checks for `op` (all ops when None).
pub fn run(op: Option<&str>, seed: u64, fault: f64) -> Result<Vec<CheckResult>> {
    if let Some(name) = op {
        if !OPS.contains(&name) {
            return Err(Error::Invalid(format!(
                "unknown op '{name}'; known ops: {}",
                OPS.join(", ")
            )));
        }
    }
    all_cases(seed)
        .iter()
        .filter(|c| op.is_none_or(|o| c.op == o))
        .map(|c| check_case(c, seed, fault))
        .collect()
}

//! `revseg gradcheck`: the finite-difference checks of every op, as a table or JSON.

use crate::backend::device::{self, Device};
use crate::error::Result;
use crate::gradcheck::{self, CheckResult, DEVICE_FD_TOL, F32_TOL, FD_TOL};
use crate::json::{self, Json};
use clap::Args;

#[derive(Args, Debug)]
pub struct GradcheckArgs {
    /// Check one op family only (conv3d, conv_transpose, maxpool, elu, add, coupling, batchnorm, bce_loss).
    #[arg(long)]
    pub op: Option<String>,
    /// Device whose backward is checked: cpu, emu (the CUDA kernels on the CPU), cuda, cuda:N, auto.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Seed of the random shapes and values.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Returns whether every check passed.
pub fn run(args: &GradcheckArgs) -> Result<bool> {
    let device = super::select_device(&args.device)?;
    let op = args.op.as_deref();
    let (results, fd_tol) = match device {
        Device::Cpu => (gradcheck::run(op, args.seed, 1.0)?, FD_TOL),
        Device::Emu => (
            gradcheck::run_on(&device::emu_backend(), op, args.seed, 1.0)?,
            DEVICE_FD_TOL,
        ),
        Device::Cuda(n) => (
            gradcheck::run_on(&device::cuda_backend(n)?, op, args.seed, 1.0)?,
            DEVICE_FD_TOL,
        ),
    };
    if args.json {
        println!("{}", to_json(&results, fd_tol));
    } else {
        print!("{}", table(&results, device, fd_tol));
    }
    Ok(results.iter().all(|r| r.passed))
}

pub fn table(results: &[CheckResult], device: Device, fd_tol: f64) -> String {
    let mut s = format!(
        "{:<15} {:<24} {:<44} {:>11} {:>11}  {}\n",
        "op", "variant", "shape", "fd err", "f32 err", "result"
    );
    for r in results {
        s += &format!(
            "{:<15} {:<24} {:<44} {:>11.2e} {:>11.2e}  {}\n",
            r.op,
            r.variant,
            r.shape,
            r.fd_err,
            r.f32_err,
            if r.passed { "pass" } else { "FAIL" }
        );
    }
    let failed = results.iter().filter(|r| !r.passed).count();
    s += &format!(
        "{} checks on {device:?}, {} failed (limits: {} <= {fd_tol:e}, f32 vs f64 <= {F32_TOL:e})\n",
        results.len(),
        failed,
        if device == Device::Cpu {
            "f64 backward vs finite differences"
        } else {
            "f32 device backward vs f64 finite differences, norm-wise"
        }
    );
    s
}

pub fn to_json(results: &[CheckResult], fd_tol: f64) -> Json {
    json::obj([
        ("fd_tolerance", Json::from(fd_tol)),
        ("f32_tolerance", Json::from(F32_TOL)),
        ("passed", Json::from(results.iter().all(|r| r.passed))),
        (
            "checks",
            Json::Array(
                results
                    .iter()
                    .map(|r| {
                        json::obj([
                            ("op", Json::from(r.op.clone())),
                            ("variant", Json::from(r.variant.clone())),
                            ("shape", Json::from(r.shape.clone())),
                            ("max_rel_err", Json::from(r.fd_err)),
                            ("f32_vs_f64_rel_err", Json::from(r.f32_err)),
                            ("elements_checked", Json::from(r.evaluated)),
                            ("passed", Json::from(r.passed)),
                        ])
                    })
                    .collect(),
            ),
        ),
    ])
}

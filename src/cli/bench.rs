//! `revseg bench ...`: speed and memory figures.

use crate::backend::cpu::CpuBackend;
use crate::backend::Backend;
use crate::bench::ops;
use crate::error::Result;
use clap::{Args, Subcommand};

#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// GFLOP/s of conv3d forward and both backward passes for each convolution of the network.
    Ops(OpsArgs),
}

#[derive(Args, Debug)]
pub struct OpsArgs {
    /// Patch D,H,W.
    #[arg(long, default_value = "18,160,160")]
    pub patch: String,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Least seconds spent timing each pass (median of the runs).
    #[arg(long, default_value_t = 0.5)]
    pub min_secs: f64,
    #[arg(long)]
    pub json: bool,
}

pub fn run(cmd: &BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Ops(a) => {
            super::check_device(&a.device)?;
            let patch = super::parse_patch(&a.patch)?;
            let b = CpuBackend::<f32>::new();
            let quiet = a.json;
            let res = ops::run(&b, patch, a.min_secs, |r| {
                if !quiet {
                    let g = r.gflops();
                    eprintln!(
                        "  {:<14} {:<30} fwd {:>6.1}  bwd-in {:>6.1}  bwd-w {:>6.1} GFLOP/s",
                        r.layer.name,
                        ops::shape_str(&r.layer.geom),
                        g[0],
                        g[1],
                        g[2]
                    );
                }
            })?;
            if a.json {
                println!("{}", ops::json(&res, &b.name()));
            } else {
                println!(
                    "device: {}, patch {}x{}x{}\n",
                    b.name(),
                    patch.0,
                    patch.1,
                    patch.2
                );
                print!("{}", ops::markdown(&res));
            }
            Ok(())
        }
    }
}

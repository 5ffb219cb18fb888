//! `revseg plan`: what a training step of a network costs, before anything runs.

use super::net::NetArgs;
use crate::error::Result;
use crate::json::{self, Json};
use crate::ops::coupling::FixedPoint;
use crate::plot::{LinePlot, Series, BLUE};
use crate::precision::Precision;
use crate::scheduler::report::{live_curve, PlanSummary};
use crate::scheduler::{self, PlanOptions, Strategy};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct PlanArgs {
    #[command(flatten)]
    pub net: NetArgs,
    /// Keep every activation (the classic backward) instead of reconstructing and recomputing.
    #[arg(long)]
    pub store_all: bool,
    #[arg(long)]
    pub json: bool,
    /// List the buffers live at the peak, largest first.
    #[arg(long)]
    pub verbose: bool,
    /// Storage of activations and workspace: f32 (also for tf32) or bf16. The plan is the same
    /// on every device.
    #[arg(long)]
    pub precision: Option<String>,
    /// Reversible chains in exact (fixed-point) coupling: their state in the f32 container
    /// (k x 2^-16); always on with bf16 activations, in 16 bits (k x 2^-7).
    #[arg(long)]
    pub exact_coupling: bool,
    /// Write the live bytes over the plan's steps as a PNG plot.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

pub fn run(a: &PlanArgs) -> Result<()> {
    let prog = a.net.program()?;
    let strategy = if a.store_all {
        Strategy::StoreAll
    } else {
        Strategy::Recompute
    };
    let precision = match &a.precision {
        Some(p) => Precision::parse(p)?,
        None => Precision::F32,
    };
    let plan = scheduler::plan_with(
        &prog,
        &PlanOptions {
            strategy,
            inference: false,
            check_reconstruction: false,
            exact_coupling: FixedPoint::for_plan(a.exact_coupling, precision),
            precision,
        },
    )?;
    let s = PlanSummary::new(&plan, prog.param_count());
    let (pts, phases) = live_curve(&plan);
    if let Some(path) = &a.plot {
        let p = LinePlot {
            title: format!(
                "live memory of one training step: {} rev blocks, patch {}, {strategy:?}",
                prog.config.rev_blocks, a.net.patch
            ),
            x_label: "plan step".into(),
            y_label: "MiB".into(),
            series: vec![Series {
                name: "live".into(),
                color: BLUE,
                points: pts.clone(),
            }],
            markers: phases.iter().map(|(n, i)| (*i as f64, n.clone())).collect(),
            y_from_zero: true,
        };
        p.save(path)?;
    }
    if a.json {
        let mut j = s.json();
        if let Json::Object(f) = &mut j {
            f.insert(
                "live_mib".into(),
                Json::Array(pts.iter().map(|p| Json::from(p.1)).collect()),
            );
            f.insert(
                "phases".into(),
                json::obj(phases.iter().map(|(n, i)| (n.clone(), Json::from(*i)))),
            );
        }
        println!("{j}");
    } else {
        println!(
            "network: {} scales, widths {:?}, {} rev blocks, patch {} ({precision})",
            prog.config.widths.len(),
            prog.config.widths,
            prog.config.rev_blocks,
            a.net.patch
        );
        print!("{}", s.text());
        if a.verbose {
            let (i, ins) = (plan.peak_index, &plan.instrs[plan.peak_index]);
            println!(
                "peak at step {i} ({:?} {}); live buffers:",
                ins.0,
                ins.1.op_name()
            );
            let life = scheduler::memory::lifetimes(&plan);
            let mut live: Vec<_> = plan
                .bufs
                .iter()
                .zip(&life)
                .filter(|(b, l)| !b.persistent && l.is_some_and(|(f, z)| f <= i && i <= z))
                .collect();
            live.sort_by_key(|(b, _)| std::cmp::Reverse(b.bytes()));
            for (b, l) in live {
                let (f, z) = l.unwrap();
                println!(
                    "  {:>9.1} MiB  {:<4} {:<40} steps {f}..{z}",
                    b.bytes() as f64 / (1 << 20) as f64,
                    b.storage.name(),
                    b.name
                );
            }
        }
        if let Some(p) = &a.plot {
            println!("plot: {}", p.display());
        }
    }
    Ok(())
}

//! Figures of a plan: FLOPs per step and the peak's breakdown, for `revseg plan` and the benches.

use super::instr::Instr;
use super::memory::{breakdown_at, phase_ranges};
use super::plan::{Plan, Strategy};
use crate::json::{self, Json};
use crate::ops::conv3d::Conv3dGeom;
use crate::ops::conv_transpose::ConvTransposeGeom;
use crate::precision::Precision;

/// Convolution FLOPs of every instruction of the plan (recomputations included).
pub fn step_flops(plan: &Plan) -> f64 {
    plan.instrs
        .iter()
        .map(|(_, i)| match i {
            Instr::Conv { x, w, y, .. } => {
                Conv3dGeom::check(x.shape, w.shape, y.shape).map_or(0.0, |g| g.flops())
            }
            Instr::ConvBwdInput { dy, w, dx, .. } => {
                Conv3dGeom::check(dx.shape, w.shape, dy.shape).map_or(0.0, |g| g.flops())
            }
            Instr::ConvBwdWeight { x, dy, dw, .. } => {
                Conv3dGeom::check(x.shape, dw.shape, dy.shape).map_or(0.0, |g| g.flops())
            }
            Instr::ConvT { x, w, y, .. }
            | Instr::ConvTBwdWeight {
                x, dw: w, dy: y, ..
            } => ConvTransposeGeom::check(x.shape, w.shape, y.shape).map_or(0.0, |g| g.flops()),
            Instr::ConvTBwdInput { dy, w, dx, .. } => {
                ConvTransposeGeom::check(dx.shape, w.shape, dy.shape).map_or(0.0, |g| g.flops())
            }
            _ => 0.0,
        })
        .sum()
}

pub struct PlanSummary {
    pub strategy: Strategy,
    pub precision: Precision,
    pub params: usize,
    pub flops: f64,
    pub arena_bytes: usize,
    pub peak_live_bytes: usize,
    pub breakdown: Vec<(&'static str, usize)>,
    pub instructions: usize,
    pub buffers: usize,
}

impl PlanSummary {
    pub fn new(plan: &Plan, params: usize) -> Self {
        PlanSummary {
            strategy: plan.strategy,
            precision: plan.precision,
            params,
            flops: step_flops(plan),
            arena_bytes: plan.arena_bytes,
            peak_live_bytes: plan.live.get(plan.peak_index).copied().unwrap_or(0),
            breakdown: breakdown_at(plan, plan.peak_index)
                .into_iter()
                .map(|(c, b)| (c.name(), b))
                .collect(),
            instructions: plan.instrs.len(),
            buffers: plan.bufs.len(),
        }
    }

    /// Activations and workspace at the peak: the part that depends on depth and patch.
    pub fn activation_bytes(&self) -> usize {
        self.breakdown
            .iter()
            .filter(|(n, _)| *n == "activations" || *n == "workspace")
            .map(|(_, b)| b)
            .sum()
    }

    pub fn json(&self) -> Json {
        json::obj([
            ("strategy", Json::from(format!("{:?}", self.strategy))),
            ("precision", Json::from(self.precision.name())),
            ("params", Json::from(self.params)),
            ("step_gflop", Json::from(self.flops / 1e9)),
            ("arena_bytes", Json::from(self.arena_bytes)),
            ("peak_live_bytes", Json::from(self.peak_live_bytes)),
            ("peak_activation_bytes", Json::from(self.activation_bytes())),
            (
                "peak_breakdown_bytes",
                json::obj(self.breakdown.iter().map(|(n, b)| (*n, Json::from(*b)))),
            ),
            ("instructions", Json::from(self.instructions)),
            ("buffers", Json::from(self.buffers)),
        ])
    }

    pub fn text(&self) -> String {
        let mib = |b: usize| b as f64 / (1 << 20) as f64;
        let mut s = format!(
            "strategy {:?} in {}: {} parameters, {:.1} GFLOP per training step, {} instructions, {} buffers\n",
            self.strategy,
            self.precision,
            self.params,
            self.flops / 1e9,
            self.instructions,
            self.buffers
        );
        s += &format!(
            "arena {:.1} MiB (peak live {:.1} MiB)\n",
            mib(self.arena_bytes),
            mib(self.peak_live_bytes)
        );
        for (n, b) in &self.breakdown {
            s += &format!("  {:<12} {:>9.1} MiB\n", n, mib(*b));
        }
        s
    }
}

/// Live bytes after each instruction, with the phase boundaries, for plots.
pub fn live_curve(plan: &Plan) -> (Vec<(f64, f64)>, Vec<(String, usize)>) {
    let pts = plan
        .live
        .iter()
        .enumerate()
        .map(|(i, l)| (i as f64, *l as f64 / (1 << 20) as f64))
        .collect();
    let phases = phase_ranges(plan)
        .into_iter()
        .map(|(p, a, _)| (format!("{p:?}"), a))
        .collect();
    (pts, phases)
}

//! The executor: allocates the plan's arena once and runs its instructions on a backend, step after
//! step, with no allocation inside a step. In checking mode (tests, debug builds) it poisons every
//! freed buffer with NaN, so a read after free shows up in the results.

use super::instr::{Instr, Opd, Phase};
use super::plan::Plan;
use crate::backend::{Backend, BnRunning, BnStats, Region, View};
use crate::error::{Error, Result};
use crate::model::{ParamKind, Program};
use crate::nvtx;
use crate::ops::batchnorm::BatchNormArgs;
use crate::ops::coupling::Direction;
use crate::ops::optim::AdamParams;
use crate::precision::Storage;
use crate::rng::Rng;
use crate::tensor::Element;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::time::Instant;

/// Bytes of the plan per element of a backend's arena: plans in f32 storage place buffers at
/// multiples of 4 bytes, and an arena of f32 (or, for reference checks, f64) elements holds one
/// element per 4 planned bytes.
const SLOT: usize = 4;

pub struct Executor<B: Backend> {
    pub plan: Plan,
    arena: B::Arena,
    pub step: u64,
    pub adam: AdamParams,
    pub bn: BatchNormArgs,
    /// Fill freed buffers with NaN after their last use.
    pub poison: bool,
    /// Largest arena offset (bytes) any instruction touched: the measured high-water mark.
    pub high_water: Cell<usize>,
    /// Relative L2 error ||rebuilt - true|| / ||true|| of each checked reconstruction in the last
    /// step.
    pub recon_errors: Vec<f64>,
    /// When set, wall time and count per op name (synchronous backends only).
    pub profile: Option<BTreeMap<&'static str, (f64, usize)>>,
    /// The backend addresses its arena in bytes, each buffer in the plan's storage.
    byte_regions: bool,
}

/// One training example: image (1 channel) and targets/mask shaped like the logits.
pub struct Batch<'a, T> {
    pub image: &'a [T],
    pub target: &'a [T],
    pub mask: &'a [T],
}

impl<B: Backend> Executor<B> {
    /// Allocate the arena and initialise the parameters (Kaiming-normal weights with ELU's ~ReLU
    /// gain, zero biases, BN gamma 1 and beta 0, running mean 0 and variance 1, Adam moments 0).
    pub fn new(b: &B, prog: &Program, plan: Plan, seed: u64) -> Result<Self> {
        if plan.arena_bytes == 0 {
            return Err(Error::Invalid(
                "plan has no memory assignment (call memory::assign)".into(),
            ));
        }
        let byte_regions = b.byte_regions();
        if let Some(buf) = plan.bufs.iter().find(|x| x.storage != Storage::F32) {
            if !byte_regions {
                return Err(Error::Invalid(format!(
                    "the plan stores {} in {}; backend {} holds one element type per arena, so it \
                     runs plans in f32 storage only",
                    buf.name,
                    buf.storage.name(),
                    b.name()
                )));
            }
        }
        let arena = b.alloc_arena(if byte_regions {
            plan.arena_bytes
        } else {
            plan.arena_bytes / SLOT
        })?;
        let mut ex = Executor {
            plan,
            arena,
            step: 0,
            adam: AdamParams::default(),
            bn: BatchNormArgs::default(),
            poison: cfg!(debug_assertions),
            high_water: Cell::new(0),
            recon_errors: vec![],
            profile: None,
            byte_regions,
        };
        let mut rng = Rng::new(seed);
        for (i, p) in prog.params.iter().enumerate() {
            let vals: Vec<f64> = match p.kind {
                ParamKind::ConvWeight { fan_in } => {
                    let std = (2.0 / fan_in as f64).sqrt();
                    rng.normals(p.shape.len())
                        .into_iter()
                        .map(|v| v * std)
                        .collect()
                }
                ParamKind::Bias | ParamKind::BnBeta => vec![0.0; p.shape.len()],
                ParamKind::BnGamma => vec![1.0; p.shape.len()],
            };
            ex.set_param(b, i, &vals)?;
            let pb = ex.plan.params[i];
            for o in [pb.m, pb.v].into_iter().flatten() {
                let r = ex.region(o);
                b.fill(&mut ex.arena, r, B::Elem::ZERO)?;
            }
        }
        for k in 0..ex.plan.running.len() {
            let (m, v) = ex.plan.running[k];
            let (rm, rv) = (ex.region(m), ex.region(v));
            b.fill(&mut ex.arena, rm, B::Elem::ZERO)?;
            b.fill(&mut ex.arena, rv, B::Elem::ONE)?;
        }
        Ok(ex)
    }

    fn region(&self, o: Opd) -> Region {
        self.span(o.buf, o.at, o.shape.len())
    }

    /// `len` elements of buffer `buf` from element `at` on, in the arena's units.
    fn span(&self, buf: usize, at: usize, len: usize) -> Region {
        let b = &self.plan.bufs[buf];
        if self.byte_regions {
            Region::bytes_at(b.offset + at * b.storage.bytes(), len, b.storage)
        } else {
            Region::new(b.offset / SLOT + at, len)
        }
    }

    fn view(&self, o: Opd) -> View {
        let r = self.region(o);
        let end = if self.byte_regions {
            r.byte_end()
        } else {
            r.end() * SLOT
        };
        self.high_water.set(self.high_water.get().max(end));
        View {
            region: r,
            shape: o.shape,
        }
    }

    pub fn set_param(&mut self, b: &B, i: usize, vals: &[f64]) -> Result<()> {
        let o = self.plan.params[i].value;
        if vals.iter().any(|v| !v.is_finite()) {
            return Err(Error::Value {
                what: format!("parameter {i}"),
                detail: "holds a non-finite value".into(),
            });
        }
        if vals.len() != o.shape.len() {
            return Err(Error::shape(
                "set_param",
                format!("{} values for a parameter of {}", vals.len(), o.shape.len()),
            ));
        }
        let d: Vec<B::Elem> = vals.iter().map(|&v| B::Elem::from_f64(v)).collect();
        let r = self.region(o);
        b.upload(&mut self.arena, r, &d)
    }

    pub fn read(&self, b: &B, o: Opd) -> Result<Vec<f64>> {
        let mut d = vec![B::Elem::ZERO; o.shape.len()];
        b.download(&self.arena, self.region(o), &mut d)?;
        Ok(d.iter().map(|v| v.to_f64()).collect())
    }

    pub fn param(&self, b: &B, i: usize) -> Result<Vec<f64>> {
        self.read(b, self.plan.params[i].value)
    }

    pub fn grad(&self, b: &B, i: usize) -> Result<Vec<f64>> {
        let g = self.plan.params[i].grad;
        let g = g.ok_or_else(|| Error::Invalid("an inference plan has no gradients".into()))?;
        self.read(b, g)
    }

    fn upload(&mut self, b: &B, o: Opd, data: &[B::Elem], what: &str) -> Result<()> {
        if data.len() != o.shape.len() {
            return Err(Error::shape(
                "train_step",
                format!(
                    "{what} has {} values, the plan expects {} ({})",
                    data.len(),
                    o.shape.len(),
                    o.shape
                ),
            ));
        }
        let v = self.view(o);
        b.upload(&mut self.arena, v.region, data)
    }

    /// Forward, loss, backward and (with `update`) Adam. Returns the loss.
    pub fn train_step(&mut self, b: &B, batch: &Batch<B::Elem>, update: bool) -> Result<f64> {
        self.run(
            b,
            batch,
            if update {
                Phase::Update
            } else {
                Phase::Backward
            },
        )
    }

    /// A step one instruction at a time, for lockstep comparisons of two backends (tests/
    /// full_step.rs): uploads the batch and counts the step as `train_step` does, and returns how
    /// many instructions such a step runs; then `run_instr` for each, with `read` and `write`
    /// between them.
    pub fn begin_step(&mut self, b: &B, batch: &Batch<B::Elem>, update: bool) -> Result<usize> {
        self.upload_batch(b, batch)?;
        if update {
            self.step += 1;
        }
        let order = [Phase::Forward, Phase::Loss, Phase::Backward, Phase::Update];
        let at = |p: &Phase| order.iter().position(|q| q == p).unwrap();
        let last = at(if update {
            &Phase::Update
        } else {
            &Phase::Backward
        });
        Ok(self
            .plan
            .instrs
            .iter()
            .take_while(|(p, _)| at(p) <= last)
            .count())
    }

    /// Instruction `i` of the plan alone (see `begin_step`).
    pub fn run_instr(&mut self, b: &B, i: usize) -> Result<()> {
        let ins = self.plan.instrs[i].1.clone();
        self.exec(b, &ins)
    }

    /// Forward and loss only (parameters untouched; running statistics move).
    pub fn loss(&mut self, b: &B, batch: &Batch<B::Elem>) -> Result<f64> {
        self.run(b, batch, Phase::Loss)
    }

    fn run(&mut self, b: &B, batch: &Batch<B::Elem>, last_phase: Phase) -> Result<f64> {
        self.upload_batch(b, batch)?;
        if last_phase == Phase::Update {
            self.step += 1;
        }
        let _step = nvtx::range(|| format!("step {}", self.step));
        self.execute(b, last_phase, false)?;
        let loss = self.read(b, self.plan.loss)?[0];
        if loss.is_finite() {
            return Ok(loss);
        }
        // Run the forward again, checking every output, to name the first op that went bad.
        self.upload_batch(b, batch)?;
        let culprit = self.execute(b, Phase::Forward, true)?;
        Err(Error::Value {
            what: "loss".into(),
            detail: format!(
                "not finite ({loss}) at step {}; first non-finite value: {}",
                self.step,
                culprit.unwrap_or_else(|| "none in the forward (the loss itself)".into())
            ),
        })
    }

    /// Run the forward on a batch, checking every output; the first op and buffer holding a
    /// non-finite value, if any.
    pub fn first_nonfinite(&mut self, b: &B, batch: &Batch<B::Elem>) -> Result<Option<String>> {
        self.upload_batch(b, batch)?;
        self.execute(b, Phase::Forward, true)
    }

    fn upload_batch(&mut self, b: &B, batch: &Batch<B::Elem>) -> Result<()> {
        let (input, target, mask) = (self.plan.input, self.plan.target, self.plan.mask);
        self.upload(b, input, batch.image, "image")?;
        self.upload(b, target, batch.target, "target")?;
        self.upload(b, mask, batch.mask, "mask")
    }

    /// Affinities (after the sigmoid) of an inference plan for one input patch.
    pub fn predict(&mut self, b: &B, image: &[B::Elem]) -> Result<Vec<B::Elem>> {
        let _r = nvtx::range(|| "predict".into());
        let input = self.plan.input;
        self.upload(b, input, image, "image")?;
        self.execute(b, Phase::Forward, false)?;
        let out = self.plan.logits;
        let mut d = vec![B::Elem::ZERO; out.shape.len()];
        b.download(&self.arena, self.region(out), &mut d)?;
        if d.iter().all(|v| v.to_f64().is_finite()) {
            return Ok(d);
        }
        // Run the forward again, checking every output, to name the first op that went bad.
        self.upload(b, input, image, "image")?;
        let culprit = self.execute(b, Phase::Forward, true)?;
        Err(Error::Value {
            what: "predicted affinities".into(),
            detail: format!(
                "not finite; first non-finite value: {}",
                culprit.unwrap_or_else(|| "none in the forward (the output itself)".into())
            ),
        })
    }

    /// Runs the plan's instructions up to the end of `last_phase`. With `check_finite`, reads back
    /// every forward output and returns the first op and buffer holding a non-finite value.
    fn execute(&mut self, b: &B, last_phase: Phase, check_finite: bool) -> Result<Option<String>> {
        self.recon_errors.clear();
        let order = [Phase::Forward, Phase::Loss, Phase::Backward, Phase::Update];
        let stop = order.iter().position(|p| *p == last_phase).unwrap();
        let mut checks = self.plan.recon_checks.clone().into_iter().peekable();
        let mut phase_range: Option<(Phase, nvtx::Range)> = None;
        for i in 0..self.plan.instrs.len() {
            let (phase, ins) = self.plan.instrs[i].clone();
            if order.iter().position(|p| *p == phase).unwrap() > stop {
                break;
            }
            if phase_range.as_ref().is_none_or(|(p, _)| *p != phase) {
                // Close the previous phase before the next one opens.
                drop(phase_range.take());
                phase_range = Some((phase, nvtx::range(|| format!("{phase:?}").to_lowercase())));
            }
            let t0 = self.profile.is_some().then(Instant::now);
            {
                let _op = nvtx::range(|| match ins.written().first() {
                    Some(o) => format!("{} {}", ins.op_name(), self.plan.bufs[o.buf].name),
                    None => ins.op_name().to_string(),
                });
                self.exec(b, &ins)?;
            }
            if let (Some(p), Some(t0)) = (self.profile.as_mut(), t0) {
                let e = p.entry(ins.op_name()).or_insert((0.0, 0));
                e.0 += t0.elapsed().as_secs_f64();
                e.1 += 1;
            }
            if check_finite {
                for o in ins.written() {
                    if self.read(b, o)?.iter().any(|v| !v.is_finite()) {
                        return Ok(Some(format!(
                            "{} writing {}",
                            ins.op_name(),
                            self.plan.bufs[o.buf].name
                        )));
                    }
                }
            }
            while checks.peek().is_some_and(|c| c.after == i) {
                let c = checks.next().unwrap();
                let saved = self.read(b, c.saved)?;
                let rebuilt = self.read(b, c.rebuilt)?;
                self.recon_errors
                    .push(crate::gradcheck::l2_rel_err(&rebuilt, &saved));
            }
            if self.poison {
                for k in 0..self.plan.free_after[i].len() {
                    let buf = self.plan.free_after[i][k];
                    let r = self.span(buf, 0, self.plan.bufs[buf].len);
                    b.fill(&mut self.arena, r, B::Elem::NAN)?;
                }
            }
        }
        Ok(None)
    }

    /// Running mean and variance of BatchNorm k.
    pub fn running(&self, b: &B, k: usize) -> Result<(Vec<f64>, Vec<f64>)> {
        let (m, v) = self.plan.running[k];
        Ok((self.read(b, m)?, self.read(b, v)?))
    }

    pub fn set_running(&mut self, b: &B, k: usize, mean: &[f64], var: &[f64]) -> Result<()> {
        let (m, v) = self.plan.running[k];
        self.write(b, m, mean)?;
        self.write(b, v, var)
    }

    /// Adam's moments of parameter i (training plans).
    pub fn moments(&self, b: &B, i: usize) -> Result<(Vec<f64>, Vec<f64>)> {
        let pb = self.plan.params[i];
        match (pb.m, pb.v) {
            (Some(m), Some(v)) => Ok((self.read(b, m)?, self.read(b, v)?)),
            _ => Err(Error::Invalid(
                "an inference plan has no optimiser state".into(),
            )),
        }
    }

    pub fn set_moments(&mut self, b: &B, i: usize, m: &[f64], v: &[f64]) -> Result<()> {
        let pb = self.plan.params[i];
        match (pb.m, pb.v) {
            (Some(mo), Some(vo)) => {
                self.write(b, mo, m)?;
                self.write(b, vo, v)
            }
            _ => Err(Error::Invalid(
                "an inference plan has no optimiser state".into(),
            )),
        }
    }

    /// Overwrites a buffer's span with `vals` (also for lockstep runs: see `begin_step`).
    pub fn write(&mut self, b: &B, o: Opd, vals: &[f64]) -> Result<()> {
        if vals.len() != o.shape.len() {
            return Err(Error::shape(
                "executor",
                format!("{} values for a buffer of {}", vals.len(), o.shape.len()),
            ));
        }
        let d: Vec<B::Elem> = vals.iter().map(|&v| B::Elem::from_f64(v)).collect();
        let r = self.region(o);
        b.upload(&mut self.arena, r, &d)
    }

    fn exec(&mut self, b: &B, ins: &Instr) -> Result<()> {
        use Instr::*;
        match *ins {
            Zero { dst } => {
                let r = self.view(dst).region;
                b.fill(&mut self.arena, r, B::Elem::ZERO)
            }
            Copy { src, dst } => {
                let (s, d) = (self.view(src).region, self.view(dst).region);
                b.copy(&mut self.arena, s, d)
            }
            Conv { x, w, b: bias, y } => {
                let bias = bias.map(|o| self.view(o).region);
                let (x, w, y) = (self.view(x), self.view(w), self.view(y));
                b.conv3d_forward(&mut self.arena, x, w, bias, y)
            }
            ConvBwdInput { dy, w, dx, mode } => {
                let (dy, w, dx) = (self.view(dy), self.view(w), self.view(dx));
                b.conv3d_backward_input(&mut self.arena, dy, w, dx, mode)
            }
            ConvBwdWeight { x, dy, dw, mode } => {
                let (x, dy, dw) = (self.view(x), self.view(dy), self.view(dw));
                b.conv3d_backward_weight(&mut self.arena, x, dy, dw, mode)
            }
            BiasBwd { dy, db, mode } => {
                let (dy, db) = (self.view(dy), self.view(db).region);
                b.conv3d_backward_bias(&mut self.arena, dy, db, mode)
            }
            ConvT { x, w, b: bias, y } => {
                let (x, w, bias, y) = (
                    self.view(x),
                    self.view(w),
                    self.view(bias).region,
                    self.view(y),
                );
                b.conv_transpose_forward(&mut self.arena, x, w, Some(bias), y)
            }
            ConvTBwdInput { dy, w, dx, mode } => {
                let (dy, w, dx) = (self.view(dy), self.view(w), self.view(dx));
                b.conv_transpose_backward_input(&mut self.arena, dy, w, dx, mode)
            }
            ConvTBwdWeight { x, dy, dw, mode } => {
                let (x, dy, dw) = (self.view(x), self.view(dy), self.view(dw));
                b.conv_transpose_backward_weight(&mut self.arena, x, dy, dw, mode)
            }
            Pool { x, y } => {
                let (x, y) = (self.view(x), self.view(y));
                b.maxpool_forward(&mut self.arena, x, y)
            }
            PoolBwd { x, dy, dx, mode } => {
                let (x, dy, dx) = (self.view(x), self.view(dy), self.view(dx));
                b.maxpool_backward(&mut self.arena, x, dy, dx, mode)
            }
            Elu { x, y } => {
                let (x, y) = (self.view(x), self.view(y));
                b.elu_forward(&mut self.arena, x, y)
            }
            EluBwd { y, dy, dx, mode } => {
                let (y, dy, dx) = (self.view(y), self.view(dy), self.view(dx));
                b.elu_backward(&mut self.arena, y, dy, dx, mode)
            }
            Add { p, q, out } => {
                let (p, q, out) = (self.view(p), self.view(q), self.view(out));
                b.add(&mut self.arena, p, q, out)
            }
            AddAssign { dst, src } => {
                let (d, s) = (self.view(dst), self.view(src));
                b.add_assign(&mut self.arena, d, s)
            }
            SubAssign { dst, src } => {
                let (d, s) = (self.view(dst), self.view(src));
                b.sub_assign(&mut self.arena, d, s)
            }
            Coupling { x, f, y, dir, fp } => {
                let (xv, fv, yv) = (self.view(x), f.map(|o| self.view(o)), self.view(y));
                b.coupling(&mut self.arena, xv, fv, yv, dir, fp)
                    .map_err(|e| match e {
                        Error::Value { detail, .. } => Error::Value {
                            what: match f {
                                Some(f) => format!(
                                    "reversible chain, {} of {}",
                                    match dir {
                                        Direction::Forward => "adding the output",
                                        Direction::Inverse => "subtracting the output",
                                    },
                                    self.plan.bufs[f.buf].name
                                ),
                                None => format!(
                                    "reversible chain {}, its input",
                                    self.plan.bufs[y.buf].name
                                ),
                            },
                            detail,
                        },
                        e => e,
                    })
            }
            BnTrain {
                x,
                gamma,
                beta,
                y,
                mean,
                invstd,
                running,
            } => {
                let (x, y) = (self.view(x), self.view(y));
                let (g, be) = (self.view(gamma).region, self.view(beta).region);
                let stats = BnStats {
                    mean: self.view(mean).region,
                    invstd: self.view(invstd).region,
                };
                let running = running.map(|(m, v)| BnRunning {
                    mean: self.view(m).region,
                    var: self.view(v).region,
                });
                b.batchnorm_forward_train(&mut self.arena, x, g, be, y, stats, running, self.bn)
            }
            BnInfer {
                x,
                gamma,
                beta,
                mean,
                var,
                y,
            } => {
                let (x, y) = (self.view(x), self.view(y));
                let (g, be) = (self.view(gamma).region, self.view(beta).region);
                let running = BnRunning {
                    mean: self.view(mean).region,
                    var: self.view(var).region,
                };
                b.batchnorm_forward_infer(&mut self.arena, x, g, be, running, y, self.bn.eps)
            }
            BnApply {
                x,
                gamma,
                beta,
                mean,
                invstd,
                y,
                elu,
            } => {
                let (x, y) = (self.view(x), self.view(y));
                let (g, be) = (self.view(gamma).region, self.view(beta).region);
                let stats = BnStats {
                    mean: self.view(mean).region,
                    invstd: self.view(invstd).region,
                };
                if elu {
                    b.batchnorm_apply_elu(&mut self.arena, x, g, be, stats, y)
                } else {
                    b.batchnorm_apply(&mut self.arena, x, g, be, stats, y)
                }
            }
            Sigmoid { x, y } => {
                let (x, y) = (self.view(x), self.view(y));
                b.sigmoid(&mut self.arena, x, y)
            }
            BnBwd {
                x,
                dy,
                gamma,
                mean,
                invstd,
                dx,
                dgamma,
                dbeta,
                mode,
            } => {
                let (x, dy, dx) = (self.view(x), self.view(dy), self.view(dx));
                let g = self.view(gamma).region;
                let stats = BnStats {
                    mean: self.view(mean).region,
                    invstd: self.view(invstd).region,
                };
                let (dg, db) = (self.view(dgamma).region, self.view(dbeta).region);
                b.batchnorm_backward(&mut self.arena, x, dy, g, stats, dx, dg, db, mode)
            }
            BceWeights {
                target,
                mask,
                weight,
            } => {
                let (t, m, w) = (self.view(target), self.view(mask), self.view(weight));
                b.bce_weights(&mut self.arena, t, m, w)
            }
            Bce {
                z,
                target,
                weight,
                mask,
                loss,
                dz,
            } => {
                let (z, t, w, m) = (
                    self.view(z),
                    self.view(target),
                    self.view(weight),
                    self.view(mask),
                );
                let l = self.view(loss).region;
                let dz = dz.map(|o| self.view(o));
                b.bce_loss(&mut self.arena, z, t, w, m, l, dz)
            }
            Adam { p, g, m, v } => {
                let (p, g, m, v) = (
                    self.view(p).region,
                    self.view(g).region,
                    self.view(m).region,
                    self.view(v).region,
                );
                b.adam_step(&mut self.arena, p, g, m, v, self.adam, self.step.max(1))
            }
        }
    }
}

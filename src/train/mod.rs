//! Training on EM volumes: random patches with augmentation, the class-rebalanced masked loss,
//! Adam with the learning rate halved on plateau, validation on held-out sections, checkpoints,
//! a metrics CSV and a loss-curve PNG that update as it runs.

pub mod augment;
pub mod config;
pub mod data;
pub mod progress;
pub mod state;
pub mod targets;

pub use config::TrainConfig;
pub use data::Dataset;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::model::{self, Program};
use crate::plot::{LinePlot, Series, BLUE, GREEN, ORANGE};
use crate::predict::{predict_volume, PredictOptions};
use crate::rng::Rng;
use crate::scheduler::{self, Batch, Executor, Strategy};
use crate::tensor::Element;
use progress::Progress;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Figures of one validation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Validation {
    pub loss: f64,
    /// Fraction of masked nearest-neighbour edges where (prediction > 0.5) equals the target.
    pub boundary_accuracy: f64,
    /// The same for the trivial predictor that says "connected" everywhere.
    pub all_ones_accuracy: f64,
}

pub struct TrainSummary {
    pub steps: usize,
    pub first_loss: f64,
    pub last_loss: f64,
    pub validation: Option<Validation>,
    pub seconds: f64,
    /// Seconds in training steps alone (no validation, checkpoints or logging), this session's.
    pub step_seconds: f64,
    pub out_dir: PathBuf,
    pub arena_bytes: usize,
    /// Stopped early by `RunOptions::stop`, after saving a checkpoint.
    pub interrupted: bool,
}

/// Files a training run writes into its output folder.
pub struct Outputs {
    pub dir: PathBuf,
}

impl Outputs {
    /// The checkpoint: model tensors, optimiser state and the loop's state in one file.
    pub fn model(&self) -> PathBuf {
        self.dir.join("model.safetensors")
    }
    pub fn metrics(&self) -> PathBuf {
        self.dir.join("metrics.csv")
    }
    pub fn plot(&self) -> PathBuf {
        self.dir.join("loss.png")
    }
}

pub struct Trainer<'a, B: Backend> {
    pub b: &'a B,
    pub cfg: TrainConfig,
    pub prog: Program,
    pub ex: Executor<B>,
    pub rng: Rng,
    pub lr: f64,
    pub best_val: f64,
    pub bad_vals: usize,
    /// (step, training loss) and (step, validation) so far, for the plot.
    pub losses: Vec<(usize, f64)>,
    pub vals: Vec<(usize, Validation)>,
}

impl<'a, B: Backend> Trainer<'a, B> {
    pub fn new(b: &'a B, cfg: TrainConfig) -> Result<Self> {
        cfg.validate()?;
        let prog = model::build(&cfg.net, cfg.patch)?;
        let strategy = if cfg.store_all {
            Strategy::StoreAll
        } else {
            Strategy::Recompute
        };
        let precision = scheduler::storage_precision(b);
        let plan = scheduler::plan_with(
            &prog,
            &scheduler::PlanOptions {
                strategy,
                inference: false,
                check_reconstruction: false,
                exact_coupling: crate::ops::coupling::FixedPoint::for_plan(
                    cfg.exact_coupling,
                    precision,
                ),
                precision,
            },
        )?;
        let mut ex = Executor::new(b, &prog, plan, cfg.seed)?;
        ex.poison = false;
        ex.adam.lr = cfg.lr;
        ex.adam.eps = cfg.adam_eps;
        ex.bn.momentum = cfg.bn_momentum;
        Ok(Trainer {
            b,
            rng: Rng::new(cfg.seed ^ 0xda7a),
            lr: cfg.lr,
            cfg,
            prog,
            ex,
            best_val: f64::INFINITY,
            bad_vals: 0,
            losses: vec![],
            vals: vec![],
        })
    }

    pub fn step(&self) -> usize {
        self.ex.step as usize
    }

    /// One training step on a freshly sampled, augmented patch. Returns the loss.
    pub fn train_step(&mut self, data: &Dataset) -> Result<f64> {
        let s = data.sample(&self.cfg, &mut self.rng)?;
        let cast = |v: &[f32]| -> Vec<B::Elem> {
            v.iter().map(|&x| B::Elem::from_f64(x as f64)).collect()
        };
        let (image, target, mask) = (cast(&s.image), cast(&s.target), cast(&s.mask));
        let step = self.step() + 1;
        if self.cfg.lr_schedule == config::LrSchedule::Cosine {
            self.lr = self.cfg.scheduled_lr(step);
        }
        self.ex.adam.lr = self.lr;
        let loss = self
            .ex
            .train_step(
                self.b,
                &Batch {
                    image: &image,
                    target: &target,
                    mask: &mask,
                },
                true,
            )
            .map_err(|e| Error::Value {
                what: format!("training step {step}"),
                detail: e.to_string(),
            })?;
        self.losses.push((step, loss));
        Ok(loss)
    }

    /// Predict the held-out sections with a forward-only plan carrying the current weights.
    pub fn validate(&mut self, data: &Dataset) -> Result<Validation> {
        let (image, labels, shape) = data.validation()?;
        let at = |e: Error| Error::Value {
            what: format!("validation after step {}", self.step()),
            detail: e.to_string(),
        };
        let pred = self.predict(&image, shape, false).map_err(at)?;
        let v = data::score(
            &pred,
            &labels,
            shape,
            self.cfg.net.outputs,
            targets::TargetOptions {
                widen_borders: self.cfg.widen_borders,
            },
        )?;
        if !v.loss.is_finite() {
            return Err(at(Error::Value {
                what: "validation loss".into(),
                detail: format!("not finite ({})", v.loss),
            }));
        }
        self.vals.push((self.step(), v));
        // Halve the learning rate when validation stops improving.
        if v.loss < self.best_val * (1.0 - 1e-4) {
            self.best_val = v.loss;
            self.bad_vals = 0;
        } else {
            self.bad_vals += 1;
            if self.bad_vals >= self.cfg.plateau_patience.max(1)
                && self.cfg.lr_schedule == config::LrSchedule::Plateau
            {
                self.lr /= 2.0;
                self.bad_vals = 0;
            }
        }
        Ok(v)
    }

    /// Every parameter and running statistic is finite, or the first one that is not is named
    /// with the step and the phase that produced it.
    pub fn check_state(&self, phase: &str) -> Result<()> {
        for (i, p) in self.prog.params.iter().enumerate() {
            if self.ex.param(self.b, i)?.iter().any(|v| !v.is_finite()) {
                return Err(self.diverged(&p.name, phase));
            }
        }
        for (k, bn) in self.prog.bns.iter().enumerate() {
            let (m, v) = self.ex.running(self.b, k)?;
            if m.iter().chain(&v).any(|v| !v.is_finite()) {
                return Err(self.diverged(&format!("{} running statistics", bn.name), phase));
            }
        }
        Ok(())
    }

    fn diverged(&self, name: &str, phase: &str) -> Error {
        Error::Value {
            what: format!("{name} after the {phase} of step {}", self.step()),
            detail: format!(
                "holds a non-finite value: training diverged (learning rate {:e}); the last checkpoint stays as it was, lower lr and resume or start again",
                self.lr
            ),
        }
    }

    /// An inference executor for patches of the training size, with the current weights.
    pub fn inference_executor(&self) -> Result<Executor<B>> {
        let mut inf = Executor::new(
            self.b,
            &self.prog,
            scheduler::inference_plan_in(&self.prog, scheduler::storage_precision(self.b))?,
            self.cfg.seed,
        )?;
        inf.poison = false;
        for i in 0..self.prog.params.len() {
            inf.set_param(self.b, i, &self.ex.param(self.b, i)?)?;
        }
        for k in 0..self.prog.bns.len() {
            let (m, v) = self.ex.running(self.b, k)?;
            inf.set_running(self.b, k, &m, &v)?;
        }
        Ok(inf)
    }

    pub fn predict(
        &self,
        image: &[f32],
        shape: (usize, usize, usize),
        tta: bool,
    ) -> Result<Vec<f32>> {
        let mut inf = self.inference_executor()?;
        let opt = PredictOptions {
            patch: self.cfg.patch,
            tta,
        };
        predict_volume(
            self.b,
            &mut inf,
            image,
            shape,
            self.cfg.net.outputs,
            &opt,
            |_, _| {},
        )
    }

    pub fn plot(&self, path: &Path) -> Result<()> {
        // A running mean keeps the training curve readable next to the validation points.
        let k = 10usize;
        let smooth: Vec<(f64, f64)> = self
            .losses
            .iter()
            .enumerate()
            .map(|(i, (s, _))| {
                let lo = i.saturating_sub(k - 1);
                let m = self.losses[lo..=i].iter().map(|p| p.1).sum::<f64>() / (i + 1 - lo) as f64;
                (*s as f64, m)
            })
            .collect();
        let mut series = vec![Series {
            name: "train loss".into(),
            color: BLUE,
            points: smooth,
        }];
        if !self.vals.is_empty() {
            series.push(Series {
                name: "val loss".into(),
                color: ORANGE,
                points: self.vals.iter().map(|(s, v)| (*s as f64, v.loss)).collect(),
            });
            series.push(Series {
                name: "val error".into(),
                color: GREEN,
                points: self
                    .vals
                    .iter()
                    .map(|(s, v)| (*s as f64, 1.0 - v.boundary_accuracy))
                    .collect(),
            });
        }
        let p = LinePlot {
            title: format!(
                "training: {} rev blocks, patch {:?}",
                self.cfg.net.rev_blocks, self.cfg.patch
            ),
            x_label: "step".into(),
            y_label: "loss / error".into(),
            series,
            markers: vec![],
            y_from_zero: true,
        };
        p.save(path)
    }
}

/// What `train` reports as it goes.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    pub out_dir: PathBuf,
    pub resume: bool,
    pub quiet: bool,
    /// A fresh run into a folder that holds a run replaces it; without this it is refused.
    pub overwrite: bool,
    /// Set (by a signal handler) to stop after the current step with a checkpoint.
    pub stop: Option<Arc<AtomicBool>>,
}

const CSV_HEADER: &str = "step,loss,lr,val_loss,val_boundary_accuracy,all_ones_accuracy,seconds";

/// Outputs a run leaves in its folder (loss.png is only drawn from them).
fn run_files(out: &Outputs) -> Vec<PathBuf> {
    vec![out.model(), out.metrics(), out.plot()]
}

/// What the kept rows of metrics.csv give a resumed run.
struct Logged {
    /// `seconds` of the last kept row: the clock goes on from there.
    clock: f64,
    losses: Vec<(usize, f64)>,
    vals: Vec<(usize, Validation)>,
}

/// metrics.csv on resume: the rows up to the checkpoint's step are kept (later ones were logged
/// after it and will be trained again), written atomically.
fn truncate_metrics(path: &Path, step: usize) -> Result<Logged> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Error::Io(format!("cannot read {}: {e}", path.display()))),
    };
    let mut kept = vec![CSV_HEADER.to_string()];
    let (mut clock, mut losses, mut vals) = (0.0, vec![], vec![]);
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let Some(s) = f.first().and_then(|s| s.parse::<usize>().ok()) else {
            continue;
        };
        if s > step || f.len() != 7 {
            continue;
        }
        let num = |i: usize| f[i].parse::<f64>().ok();
        if let Some(l) = num(1) {
            losses.push((s, l));
        }
        if let (Some(loss), Some(ba), Some(ones)) = (num(3), num(4), num(5)) {
            let v = Validation {
                loss,
                boundary_accuracy: ba,
                all_ones_accuracy: ones,
            };
            vals.push((s, v));
        }
        clock = num(6).unwrap_or(clock);
        kept.push(line.to_string());
    }
    let body = kept.join("\n") + "\n";
    crate::volume::array::write_file_atomic(path, |w| {
        w.write_all(body.as_bytes())
            .map_err(|e| Error::Io(format!("cannot write {}: {e}", path.display())))
    })?;
    Ok(Logged {
        clock,
        losses,
        vals,
    })
}

/// The training loop: steps, validation every `val_every` steps, checkpoints, metrics CSV and
/// loss plot. On a non-finite loss, parameter, running statistic or validation it stops with the
/// step, the phase and the op or tensor by name; the last checkpoint written stays as it was.
pub fn train<B: Backend>(
    b: &B,
    cfg: TrainConfig,
    data: &Dataset,
    opt: &RunOptions,
) -> Result<TrainSummary> {
    std::fs::create_dir_all(&opt.out_dir)
        .map_err(|e| Error::Io(format!("cannot create {}: {e}", opt.out_dir.display())))?;
    let out = Outputs {
        dir: opt.out_dir.clone(),
    };
    if !opt.resume {
        let old: Vec<PathBuf> = run_files(&out).into_iter().filter(|p| p.exists()).collect();
        if !old.is_empty() && !opt.overwrite {
            return Err(Error::Invalid(format!(
                "{} already holds a training run ({}): continue it with --resume, replace it with --overwrite, or choose another --out",
                opt.out_dir.display(),
                old.iter()
                    .filter_map(|p| p.file_name())
                    .map(|n| n.to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        for p in old {
            std::fs::remove_file(&p)
                .map_err(|e| Error::Io(format!("cannot remove {}: {e}", p.display())))?;
        }
    }
    let mut t = Trainer::new(b, cfg)?;
    let mut clock = 0.0;
    if opt.resume {
        state::load(&mut t, &out)?;
        let logged = truncate_metrics(&out.metrics(), t.step())?;
        (clock, t.losses, t.vals) = (logged.clock, logged.losses, logged.vals);
    }
    let start_step = t.step();
    if start_step >= t.cfg.steps {
        return Err(Error::Invalid(format!(
            "nothing to train: the run is at step {start_step} and steps = {}; give --steps above {start_step} to train further",
            t.cfg.steps
        )));
    }
    let mut csv = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out.metrics())
        .map_err(|e| Error::Io(format!("cannot write {}: {e}", out.metrics().display())))?;
    let io =
        |e: std::io::Error| Error::Io(format!("cannot write {}: {e}", out.metrics().display()));
    if start_step == 0 {
        writeln!(csv, "{CSV_HEADER}").map_err(io)?;
    }
    let arena = t.ex.plan.arena_bytes;
    let voxels = (t.cfg.patch.0 * t.cfg.patch.1 * t.cfg.patch.2) as f64;
    let mut bar = Progress::new("train", t.cfg.steps.saturating_sub(start_step));
    let started = Instant::now();
    let seconds = || clock + started.elapsed().as_secs_f64();
    let mut first = None;
    let mut last = f64::NAN;
    let mut validation = None;
    let mut interrupted = false;
    let mut step_seconds = 0.0;
    while t.step() < t.cfg.steps {
        let t0 = Instant::now();
        let loss = t.train_step(data)?;
        let dt = t0.elapsed().as_secs_f64();
        step_seconds += dt;
        first.get_or_insert(loss);
        last = loss;
        let step = t.step();
        t.check_state("update")?;
        let mut row = format!("{step},{loss:.6},{:.6e},,,,{:.3}", t.lr, seconds());
        if step % t.cfg.val_every == 0 || step == t.cfg.steps {
            let v = t.validate(data)?;
            validation = Some(v);
            row = format!(
                "{step},{loss:.6},{:.6e},{:.6},{:.6},{:.6},{:.3}",
                t.lr,
                v.loss,
                v.boundary_accuracy,
                v.all_ones_accuracy,
                seconds()
            );
            t.plot(&out.plot())?;
        }
        writeln!(csv, "{row}").map_err(io)?;
        csv.flush().map_err(io)?;
        interrupted = opt.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst));
        if step % t.cfg.checkpoint_every == 0 || step == t.cfg.steps || interrupted {
            // The rows a checkpoint covers are on disk before it is.
            csv.sync_data().map_err(io)?;
            state::save(&t, &out)?;
        }
        if !opt.quiet {
            let val = validation.map_or(String::new(), |v| {
                format!(" | val acc {:.3}", v.boundary_accuracy)
            });
            bar.update(
                step - start_step,
                "steps",
                &format!(
                    "loss {loss:.4}{val} | {:.2} Mvox/s | {:.2} s/step | arena {:.0} MiB",
                    voxels / dt / 1e6,
                    dt,
                    arena as f64 / (1 << 20) as f64
                ),
            );
        }
        if interrupted {
            break;
        }
    }
    if !opt.quiet {
        bar.finish();
    }
    t.plot(&out.plot())?;
    Ok(TrainSummary {
        steps: t.step(),
        first_loss: first.unwrap_or(f64::NAN),
        last_loss: last,
        validation,
        seconds: seconds(),
        step_seconds,
        out_dir: opt.out_dir.clone(),
        arena_bytes: arena,
        interrupted,
    })
}

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
    pub out_dir: PathBuf,
    pub arena_bytes: usize,
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
        let plan = scheduler::training_plan(&prog, strategy, false)?;
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
        self.ex.adam.lr = self.lr;
        let step = self.step() + 1;
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
        let pred = self.predict(&image, shape, false)?;
        let v = data::score(&pred, &labels, shape, self.cfg.net.outputs)?;
        self.vals.push((self.step(), v));
        // Halve the learning rate when validation stops improving.
        if v.loss < self.best_val * (1.0 - 1e-4) {
            self.best_val = v.loss;
            self.bad_vals = 0;
        } else {
            self.bad_vals += 1;
            if self.bad_vals >= self.cfg.plateau_patience.max(1) {
                self.lr /= 2.0;
                self.bad_vals = 0;
            }
        }
        Ok(v)
    }

    /// An inference executor for patches of the training size, with the current weights.
    pub fn inference_executor(&self) -> Result<Executor<B>> {
        let mut inf = Executor::new(
            self.b,
            &self.prog,
            scheduler::inference_plan(&self.prog)?,
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
pub struct RunOptions {
    pub out_dir: PathBuf,
    pub resume: bool,
    pub quiet: bool,
}

/// The training loop: steps, validation every `val_every` steps, checkpoints, metrics CSV and
/// loss plot. On a non-finite loss it stops with the step and the first op that produced a
/// non-finite value; the last checkpoint written stays as it was.
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
    let mut t = Trainer::new(b, cfg)?;
    if opt.resume {
        state::load(&mut t, &out)?;
    }
    let start_step = t.step();
    let mut csv = std::fs::OpenOptions::new()
        .create(true)
        .append(start_step > 0)
        .write(true)
        .truncate(start_step == 0)
        .open(out.metrics())
        .map_err(|e| Error::Io(format!("cannot write {}: {e}", out.metrics().display())))?;
    if start_step == 0 {
        writeln!(
            csv,
            "step,loss,lr,val_loss,val_boundary_accuracy,all_ones_accuracy,seconds"
        )
        .map_err(Error::from)?;
    }
    let arena = t.ex.plan.arena_len * std::mem::size_of::<B::Elem>();
    let voxels = (t.cfg.patch.0 * t.cfg.patch.1 * t.cfg.patch.2) as f64;
    let mut bar = Progress::new("train", t.cfg.steps.saturating_sub(start_step));
    let started = Instant::now();
    let mut first = None;
    let mut last = f64::NAN;
    let mut validation = None;
    while t.step() < t.cfg.steps {
        let t0 = Instant::now();
        let loss = t.train_step(data)?;
        let dt = t0.elapsed().as_secs_f64();
        first.get_or_insert(loss);
        last = loss;
        let step = t.step();
        let mut row = format!(
            "{step},{loss:.6},{:.6e},,,,{:.3}",
            t.lr,
            started.elapsed().as_secs_f64()
        );
        if step % t.cfg.val_every == 0 || step == t.cfg.steps {
            let v = t.validate(data)?;
            validation = Some(v);
            row = format!(
                "{step},{loss:.6},{:.6e},{:.6},{:.6},{:.6},{:.3}",
                t.lr,
                v.loss,
                v.boundary_accuracy,
                v.all_ones_accuracy,
                started.elapsed().as_secs_f64()
            );
            t.plot(&out.plot())?;
        }
        writeln!(csv, "{row}").map_err(Error::from)?;
        csv.flush().map_err(Error::from)?;
        if step % t.cfg.checkpoint_every == 0 || step == t.cfg.steps {
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
        seconds: started.elapsed().as_secs_f64(),
        out_dir: opt.out_dir.clone(),
        arena_bytes: arena,
    })
}

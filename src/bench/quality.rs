//! `revseg bench quality`: the paper's Table 1 with its accuracy column, on synthetic volumes.
//! The base network and RevNets with n = 1..4 reversible blocks train for the same steps from the
//! same seeds on the same training volume and are scored on the same unseen test volume through
//! the demo's pipeline (prediction from the saved checkpoint, watershed, agglomeration at several
//! thresholds). Speed and memory come from the same runs, so every column of a row describes one
//! trained network.

use crate::backend::Backend;
use crate::cli::demo::{self, best_row, segment_and_score, train_and_predict, write_u32, write_u8};
use crate::error::{Error, Result};
use crate::json::{self, Json};
use crate::model;
use crate::plot::{Bars, BLUE, ORANGE};
use crate::segment::Dims;
use crate::train::{Dataset, RunOptions, TrainConfig};
use std::path::{Path, PathBuf};

/// One network of the table: the base network (no reversible blocks, every activation stored,
/// as a conventional network trains) or a RevNet with `rev_blocks` blocks (reconstructing).
#[derive(Clone, Debug, PartialEq)]
pub struct Variant {
    pub rev_blocks: usize,
}

impl Variant {
    pub fn label(&self) -> String {
        match self.rev_blocks {
            0 => "base".into(),
            n => format!("RevNet n={n}"),
        }
    }
    fn slug(&self) -> String {
        match self.rev_blocks {
            0 => "base".into(),
            n => format!("rev{n}"),
        }
    }
    pub fn config(&self, base: &TrainConfig, seed: u64) -> TrainConfig {
        let mut c = base.clone();
        c.net.rev_blocks = self.rev_blocks;
        c.store_all = self.rev_blocks == 0;
        c.seed = seed;
        c
    }
}

/// What the benchmark trains and scores.
pub struct Spec {
    /// Network and training settings; each variant replaces `rev_blocks`, `store_all` and `seed`.
    pub base: TrainConfig,
    pub train_size: (usize, usize, usize),
    pub test_size: (usize, usize, usize),
    /// Seed of the two synthetic volumes (the test volume's is this + 1000), the same for all.
    pub data_seed: u64,
    /// Training seeds (initialisation, patch sampling, augmentation), one run per seed.
    pub seeds: Vec<u64>,
    pub variants: Vec<Variant>,
    pub out: PathBuf,
}

/// One trained network's row.
#[derive(Clone, Debug)]
pub struct Run {
    pub seed: u64,
    pub params: usize,
    /// Mean seconds of one training step (forward, backward, Adam; no validation).
    pub step_seconds: f64,
    /// The training plan's arena: the peak memory of a training step.
    pub peak_bytes: usize,
    /// Boundary accuracy on the held-out sections of the training volume after the last step.
    pub boundary_accuracy: f64,
    pub adapted_rand_error: f64,
    pub voi_split: f64,
    pub voi_merge: f64,
    /// The agglomeration threshold with the lowest adapted Rand error.
    pub threshold: f64,
    /// Where that segmentation was written (`FILE.h5:/segmentation`).
    pub segmentation: String,
}

pub struct VariantResult {
    pub variant: Variant,
    pub runs: Vec<Run>,
}

/// Mean and sample standard deviation (0 for one value).
pub fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n.max(1.0);
    if v.len() < 2 {
        return (m, 0.0);
    }
    let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0);
    (m, var.sqrt())
}

/// The figures of a column, one per run.
type Column = fn(&Run) -> f64;

const COLUMNS: [(&str, Column); 8] = [
    ("params", |r| r.params as f64),
    ("step_seconds", |r| r.step_seconds),
    ("peak_mib", |r| r.peak_bytes as f64 / (1 << 20) as f64),
    ("boundary_accuracy", |r| r.boundary_accuracy),
    ("adapted_rand_error", |r| r.adapted_rand_error),
    ("voi_split", |r| r.voi_split),
    ("voi_merge", |r| r.voi_merge),
    ("threshold", |r| r.threshold),
];

impl VariantResult {
    pub fn stat(&self, f: Column) -> (f64, f64) {
        mean_sd(&self.runs.iter().map(f).collect::<Vec<_>>())
    }
}

/// The test labels' file, written once for all runs (what `revseg eval` compares against).
pub fn labels_path(out: &Path) -> String {
    format!("{}:/labels", out.join("test_labels.h5").display())
}

pub fn run<B: Backend>(b: &B, spec: &Spec, quiet: bool) -> Result<Vec<VariantResult>> {
    if spec.seeds.is_empty() || spec.variants.is_empty() {
        return Err(Error::Invalid(
            "bench quality: give at least one seed and one variant".into(),
        ));
    }
    std::fs::create_dir_all(&spec.out)
        .map_err(|e| Error::Io(format!("cannot create {}: {e}", spec.out.display())))?;
    let (train_vol, test_vol) = demo::volumes(spec.train_size, spec.test_size, spec.data_seed)?;
    let ts = spec.test_size;
    write_u8(
        &format!("{}:/image", spec.out.join("test.h5").display()),
        ts,
        test_vol.image.clone(),
    )?;
    write_u32(
        &labels_path(&spec.out),
        &[ts.0, ts.1, ts.2],
        test_vol.labels.clone(),
    )?;
    let image: Vec<f32> = train_vol.image.iter().map(|&v| v as f32 / 255.0).collect();
    let test_image: Vec<f32> = test_vol.image.iter().map(|&v| v as f32 / 255.0).collect();
    let dims = Dims::new(ts.0, ts.1, ts.2);
    let total = spec.variants.len() * spec.seeds.len();
    let mut out = Vec::new();
    let mut k = 0;
    for v in &spec.variants {
        let mut runs = Vec::new();
        for &seed in &spec.seeds {
            k += 1;
            let cfg = v.config(&spec.base, seed);
            cfg.validate()?;
            if !quiet {
                eprintln!(
                    "[{k}/{total}] {} seed {seed}: training {} steps",
                    v.label(),
                    cfg.steps
                );
            }
            let data = Dataset::new(
                image.clone(),
                train_vol.labels.clone(),
                spec.train_size,
                &cfg,
                "synthetic training volume",
            )?;
            let dir = spec.out.join(format!("{}-seed{seed}", v.slug()));
            let opt = RunOptions {
                out_dir: dir.clone(),
                // The benchmark makes each run's folder anew from its own settings.
                overwrite: true,
                quiet,
                ..RunOptions::default()
            };
            let (summary, aff) = train_and_predict(b, &cfg, &data, &opt, &test_image, ts, || {})?;
            let rows = segment_and_score(&aff, &test_vol.labels, dims)?;
            let best = &rows[best_row(&rows)];
            let seg = format!(
                "{}:/segmentation",
                dir.join("test_segmentation.h5").display()
            );
            write_u32(&seg, &[ts.0, ts.1, ts.2], best.segmentation.clone())?;
            let params = model::build(&cfg.net, cfg.patch)?.param_count();
            let r = Run {
                seed,
                params,
                step_seconds: summary.step_seconds / summary.steps.max(1) as f64,
                peak_bytes: summary.arena_bytes,
                boundary_accuracy: summary.validation.map_or(f64::NAN, |x| x.boundary_accuracy),
                adapted_rand_error: best.metrics.adapted_rand_error,
                voi_split: best.metrics.voi_split,
                voi_merge: best.metrics.voi_merge,
                threshold: best.threshold,
                segmentation: seg,
            };
            if !quiet {
                eprintln!(
                    "      {} seed {seed}: adapted Rand {:.4} at {:.1}, boundary accuracy {:.4}, {:.3} s/step",
                    v.label(),
                    r.adapted_rand_error,
                    r.threshold,
                    r.boundary_accuracy,
                    r.step_seconds
                );
            }
            runs.push(r);
        }
        out.push(VariantResult {
            variant: v.clone(),
            runs,
        });
    }
    Ok(out)
}

/// The paper's claim, per RevNet against the base network: mean adapted Rand errors within the
/// larger of the two spreads, and boundary accuracy within 1 point.
pub struct Comparison {
    pub label: String,
    pub rand_diff: f64,
    pub larger_spread: f64,
    pub rand_within: bool,
    pub accuracy_diff: f64,
    pub accuracy_within: bool,
}

pub fn comparisons(res: &[VariantResult]) -> Vec<Comparison> {
    let Some(base) = res.iter().find(|r| r.variant.rev_blocks == 0) else {
        return vec![];
    };
    let (bm, bs) = base.stat(|r| r.adapted_rand_error);
    let (ba, _) = base.stat(|r| r.boundary_accuracy);
    res.iter()
        .filter(|r| r.variant.rev_blocks > 0)
        .map(|r| {
            let (m, s) = r.stat(|r| r.adapted_rand_error);
            let (a, _) = r.stat(|r| r.boundary_accuracy);
            let spread = bs.max(s);
            Comparison {
                label: r.variant.label(),
                rand_diff: m - bm,
                larger_spread: spread,
                rand_within: (m - bm).abs() <= spread,
                accuracy_diff: a - ba,
                accuracy_within: (a - ba).abs() <= 0.01,
            }
        })
        .collect()
}

fn cell(r: &VariantResult, f: Column, decimals: usize) -> String {
    let (m, s) = r.stat(f);
    if r.runs.len() < 2 {
        format!("{m:.decimals$}")
    } else {
        format!("{m:.decimals$} ± {s:.decimals$}")
    }
}

pub fn markdown(res: &[VariantResult], device: &str, spec: &Spec) -> String {
    let seeds = spec.seeds.len();
    let mut s = format!(
        "device: {device}; {} steps, patch {:?}, widths {:?}; training volume {:?}, unseen test volume {:?} (data seed {}); {seeds} training seed{}{}\n\n",
        spec.base.steps,
        spec.base.patch,
        spec.base.net.widths,
        spec.train_size,
        spec.test_size,
        spec.data_seed,
        if seeds == 1 { "" } else { "s" },
        if seeds > 1 { ", mean ± sample standard deviation" } else { "" }
    );
    s += "| variant | params | s/step | peak training memory (MiB) | val boundary accuracy | adapted Rand error | VOI split | VOI merge | threshold |\n|---|---|---|---|---|---|---|---|---|\n";
    for r in res {
        let ths: Vec<String> = r
            .runs
            .iter()
            .map(|x| format!("{:.1}", x.threshold))
            .collect();
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.variant.label(),
            r.runs.first().map_or(0, |x| x.params),
            cell(r, COLUMNS[1].1, 3),
            cell(r, COLUMNS[2].1, 1),
            cell(r, COLUMNS[3].1, 4),
            cell(r, COLUMNS[4].1, 4),
            cell(r, COLUMNS[5].1, 3),
            cell(r, COLUMNS[6].1, 3),
            ths.join(", ")
        );
    }
    let cmp = comparisons(res);
    if !cmp.is_empty() {
        s += "\nagainst the base network (adapted Rand: mean difference against the larger spread; boundary accuracy: within 1 point):\n\n";
        s += "| variant | adapted Rand difference | larger spread | within | boundary accuracy difference | within 1 point |\n|---|---|---|---|---|---|\n";
        for c in &cmp {
            let yes = |b: bool| if b { "yes" } else { "no" };
            s += &format!(
                "| {} | {:+.4} | {:.4} | {} | {:+.4} | {} |\n",
                c.label,
                c.rand_diff,
                c.larger_spread,
                if seeds < 2 {
                    "(one seed: no spread)"
                } else {
                    yes(c.rand_within)
                },
                c.accuracy_diff,
                yes(c.accuracy_within)
            );
        }
    }
    s
}

pub fn json(res: &[VariantResult], device: &str, spec: &Spec) -> Json {
    let variants = res
        .iter()
        .map(|r| {
            let runs = r
                .runs
                .iter()
                .map(|x| {
                    json::obj([
                        ("seed", Json::from(x.seed)),
                        ("params", x.params.into()),
                        ("step_seconds", x.step_seconds.into()),
                        ("peak_bytes", x.peak_bytes.into()),
                        ("boundary_accuracy", x.boundary_accuracy.into()),
                        ("adapted_rand_error", x.adapted_rand_error.into()),
                        ("voi_split", x.voi_split.into()),
                        ("voi_merge", x.voi_merge.into()),
                        ("threshold", x.threshold.into()),
                        ("segmentation", x.segmentation.clone().into()),
                    ])
                })
                .collect();
            let stat = |sd: bool| {
                Json::Object(
                    COLUMNS
                        .iter()
                        .map(|(k, f)| {
                            let (m, s) = r.stat(*f);
                            (k.to_string(), Json::from(if sd { s } else { m }))
                        })
                        .collect(),
                )
            };
            json::obj([
                ("label", Json::from(r.variant.label())),
                ("rev_blocks", r.variant.rev_blocks.into()),
                ("store_all", (r.variant.rev_blocks == 0).into()),
                ("runs", Json::Array(runs)),
                ("mean", stat(false)),
                ("spread", stat(true)),
            ])
        })
        .collect();
    let cmp = comparisons(res)
        .into_iter()
        .map(|c| {
            json::obj([
                ("label", Json::from(c.label)),
                ("adapted_rand_difference", c.rand_diff.into()),
                ("larger_spread", c.larger_spread.into()),
                ("adapted_rand_within_spread", c.rand_within.into()),
                ("boundary_accuracy_difference", c.accuracy_diff.into()),
                ("boundary_accuracy_within_1_point", c.accuracy_within.into()),
            ])
        })
        .collect();
    let size = |s: (usize, usize, usize)| Json::Array(vec![s.0.into(), s.1.into(), s.2.into()]);
    json::obj([
        ("device", Json::from(device)),
        ("steps", spec.base.steps.into()),
        ("train_size", size(spec.train_size)),
        ("test_size", size(spec.test_size)),
        ("data_seed", spec.data_seed.into()),
        (
            "seeds",
            Json::Array(spec.seeds.iter().map(|&s| s.into()).collect()),
        ),
        ("test_labels", labels_path(&spec.out).into()),
        ("config", spec.base.to_json()),
        ("variants", Json::Array(variants)),
        ("comparisons", Json::Array(cmp)),
    ])
}

/// Adapted Rand error (with spread), boundary accuracy and peak memory per variant, side by side.
pub fn plot(res: &[VariantResult], path: &Path) -> Result<()> {
    let labels: Vec<String> = res.iter().map(|r| r.variant.label()).collect();
    let chart = |title: &str, y: &str, f: Column, color| {
        let stats: Vec<(f64, f64)> = res.iter().map(|r| r.stat(f)).collect();
        Bars {
            title: title.into(),
            y_label: y.into(),
            labels: labels.clone(),
            values: stats.iter().map(|s| s.0).collect(),
            spreads: stats.iter().map(|s| s.1).collect(),
            color,
        }
    };
    let charts = [
        chart(
            "adapted Rand error (lower is better)",
            "error",
            COLUMNS[4].1,
            ORANGE,
        ),
        chart(
            "validation boundary accuracy",
            "accuracy",
            COLUMNS[3].1,
            BLUE,
        ),
        chart(
            "peak training memory",
            "MiB",
            COLUMNS[2].1,
            crate::plot::GREEN,
        ),
    ];
    let (w, h, px) = crate::plot::bar_charts(&charts, 420, 360);
    crate::volume::png::write(path, w, h, 3, &px)
}

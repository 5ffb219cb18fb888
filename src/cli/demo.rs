//! `revseg demo`: the whole pipeline in a few minutes on a CPU with no data at hand: synthesize a
//! training volume and a test volume, train the reversible network, predict the test volume,
//! segment it (watershed + agglomeration) and score it against its labels.

use crate::error::{Error, Result};
use crate::metrics::evaluate;
use crate::model::{NetConfig, Norm};
use crate::segment::agglomerate::{agglomerate, Score};
use crate::segment::watershed::{watershed, Params};
use crate::segment::Dims;
use crate::synth::{synthesize, SynthConfig};
use crate::train::{self, data::score, Dataset, RunOptions, TrainConfig, Trainer};
use crate::volume::array::{Array, Dtype};
use crate::volume::io::create_volume;
use clap::Args;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Output folder.
    #[arg(long, default_value = "out/demo")]
    pub out: PathBuf,
    /// Training steps (about 0.1 s each on 2 cores). 2000 instead of 1200: best adapted Rand
    /// 0.586 instead of 0.616 on the test volume (before the Adam eps fix, which gives 0.475),
    /// and the whole demo in 4 min 16 s on a quiet 2-core machine (2400 steps took 5 min 22 s;
    /// docs/PERFORMANCE.md).
    #[arg(long, default_value_t = 2000)]
    pub steps: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// A training setting on top of the demo's (`key=value`, the keys of `revseg train`'s
    /// `--set`), for trying variants on the same data; repeatable.
    #[arg(long = "set")]
    pub set: Vec<String>,
    #[arg(long)]
    pub json: bool,
}

/// The demo's network: the Superhuman layout, narrower and with 3 scales so that it learns in
/// minutes on a CPU; reversible blocks as in the full preset.
pub fn demo_config(steps: usize, seed: u64) -> TrainConfig {
    TrainConfig {
        net: NetConfig {
            widths: vec![12, 16, 24],
            rev_blocks: 2,
            norm: Norm::Batch,
            // Long-range affinities as an auxiliary target (segmentation uses the nearest
            // three): 0.509 -> 0.475 best adapted Rand at no cost in time (docs/PERFORMANCE.md).
            outputs: 12,
        },
        patch: (8, 64, 64),
        steps,
        lr: 0.005,
        // Superhuman's 0.01 suits a summed loss; revseg's loss is a mean over the patch, so its
        // gradients (and Adam's sqrt(v)) are far below 0.01 and that eps turned Adam into a
        // slow SGD: 1e-8 gives best adapted Rand 0.509 instead of 0.586 (docs/PERFORMANCE.md).
        adam_eps: 1e-8,
        bn_momentum: 0.05,
        seed,
        val_every: (steps / 6).max(1),
        val_fraction: 0.25,
        checkpoint_every: steps.max(1),
        // The exact one-edge border: widened borders make thin tubes mostly boundary, a target
        // that itself segments at adapted Rand 0.41 (docs/PERFORMANCE.md); 0.658 -> 0.616.
        widen_borders: false,
        ..TrainConfig::default()
    }
}

/// The demo's segmentation: watershed with absolute thresholds (the network's affinities are
/// probabilities, so percentiles of their histogram would move with how well it trained), then
/// mean agglomeration.
pub fn demo_watershed_params() -> Params {
    Params {
        low: 0.01,
        high: 0.99,
        merge: vec![(200, 0.3)],
        dust: 50,
        relative: false,
    }
}

pub const DEMO_TRAIN_SIZE: (usize, usize, usize) = (32, 160, 160);
pub const DEMO_TEST_SIZE: (usize, usize, usize) = (24, 160, 160);

pub const DEMO_THRESHOLDS: [f64; 7] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7];

/// One agglomeration threshold's segmentation and its scores.
pub struct Row {
    pub threshold: f64,
    pub metrics: crate::metrics::Metrics,
    pub segmentation: Vec<u32>,
}

/// Segments `aff` (3, Z, Y, X) the demo's way at every threshold of [`DEMO_THRESHOLDS`] and
/// scores each against `labels`.
pub fn segment_and_score(aff: &[f32], labels: &[u32], dims: Dims) -> Result<Vec<Row>> {
    let (frag, _) = watershed::<u32>(aff, dims, &demo_watershed_params())?;
    let agg = agglomerate(aff, &frag, dims, &DEMO_THRESHOLDS, Score::OneMinusMean)?;
    (0..DEMO_THRESHOLDS.len())
        .map(|i| {
            let seg = agg.apply(i, &frag);
            Ok(Row {
                threshold: DEMO_THRESHOLDS[i],
                metrics: evaluate(&seg, labels, dims, None)?,
                segmentation: seg,
            })
        })
        .collect()
}

/// Index of the row with the lowest adapted Rand error.
pub fn best_row(rows: &[Row]) -> usize {
    (0..rows.len())
        .min_by(|&a, &b| {
            rows[a]
                .metrics
                .adapted_rand_error
                .total_cmp(&rows[b].metrics.adapted_rand_error)
        })
        .unwrap_or(0)
}

/// Trains `cfg` on `data` into `opt.out_dir`, then predicts `test_image` (of `test_size`) from
/// the checkpoint training saved, as a user's `revseg predict` would; returns the nearest three
/// affinity channels (long-range ones are a training target only). `trained` runs in between.
pub fn train_and_predict<B: crate::backend::Backend>(
    b: &B,
    cfg: &TrainConfig,
    data: &Dataset,
    opt: &RunOptions,
    test_image: &[f32],
    test_size: (usize, usize, usize),
    trained: impl FnOnce(),
) -> Result<(train::TrainSummary, Vec<f32>)> {
    let s = train::train(b, cfg.clone(), data, opt)?;
    trained();
    let mut t = Trainer::new(b, cfg.clone())?;
    let ck = crate::checkpoint::load(opt.out_dir.join("model.safetensors"))?;
    train::state::load_model(b, &t.prog, &mut t.ex, &ck, "model.safetensors")?;
    let mut aff = t.predict(test_image, test_size, false)?;
    aff.truncate(3 * test_size.0 * test_size.1 * test_size.2);
    Ok((s, aff))
}

/// A training volume and an unseen test volume with the synthesizer's defaults: the training
/// volume from `seed`, the test volume from `seed + 1000`.
pub fn volumes(
    train_size: (usize, usize, usize),
    test_size: (usize, usize, usize),
    seed: u64,
) -> Result<(crate::synth::SynthVolume, crate::synth::SynthVolume)> {
    let make = |size, seed| {
        synthesize(&SynthConfig {
            size,
            seed,
            ..SynthConfig::default()
        })
    };
    Ok((make(train_size, seed)?, make(test_size, seed + 1000)?))
}

/// `key=value` settings (the keys of `revseg train --set`) over `cfg`, then checked.
pub fn apply_sets(cfg: &mut TrainConfig, sets: &[String]) -> Result<()> {
    for kv in sets {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| Error::Invalid(format!("--set '{kv}': expected key=value")))?;
        cfg.set(k, v)?;
    }
    cfg.validate()
}

pub(crate) fn write_u8(spec: &str, shape: (usize, usize, usize), data: Vec<u8>) -> Result<()> {
    let s = vec![shape.0, shape.1, shape.2];
    let mut w = create_volume(spec, &s, Dtype::U8, None)?;
    w.write_region(&[0, 0, 0], &Array::new(s, data)?)?;
    w.finish()
}

pub(crate) fn write_u32(spec: &str, shape: &[usize], data: Vec<u32>) -> Result<()> {
    let mut w = create_volume(spec, shape, Dtype::U32, None)?;
    w.write_region(&vec![0; shape.len()], &Array::new(shape.to_vec(), data)?)?;
    w.finish()
}

pub fn run(a: &DemoArgs) -> Result<()> {
    let t0 = Instant::now();
    std::fs::create_dir_all(&a.out)
        .map_err(|e| Error::Io(format!("cannot create {}: {e}", a.out.display())))?;
    let out = |name: &str| a.out.join(name).display().to_string();
    eprintln!("[1/5] synthesizing a training volume and an unseen test volume");
    let (size, test_size) = (DEMO_TRAIN_SIZE, DEMO_TEST_SIZE);
    let (train_vol, test_vol) = volumes(size, test_size, a.seed)?;
    write_u8(
        &format!("{}:/image", out("train.h5")),
        size,
        train_vol.image.clone(),
    )?;
    write_u32(
        &format!("{}:/labels", out("train_labels.h5")),
        &[size.0, size.1, size.2],
        train_vol.labels.clone(),
    )?;
    write_u8(
        &format!("{}:/image", out("test.h5")),
        test_size,
        test_vol.image.clone(),
    )?;

    eprintln!("[2/5] training the reversible network ({} steps)", a.steps);
    let mut cfg = demo_config(a.steps, a.seed);
    apply_sets(&mut cfg, &a.set)?;
    let image: Vec<f32> = train_vol.image.iter().map(|&v| v as f32 / 255.0).collect();
    let data = Dataset::new(
        image,
        train_vol.labels.clone(),
        size,
        &cfg,
        "synthetic training volume",
    )?;
    let dev = super::select_device(&a.device)?;
    // `--set precision=bf16` picks the backend as `revseg train` does; without this the demo
    // would record bf16 in its config and still train in f32.
    let precision = crate::precision::Precision::for_device(cfg.precision, dev)?;
    eprintln!("        on {dev:?} in {precision}");
    let opt = RunOptions {
        out_dir: a.out.clone(),
        // The demo makes everything it trains on anew, so its folder is its own to replace.
        overwrite: true,
        ..RunOptions::default()
    };
    let test_image: Vec<f32> = test_vol.image.iter().map(|&v| v as f32 / 255.0).collect();
    let (summary, aff) = crate::on_device!(dev, precision, |b| train_and_predict(
        b,
        &cfg,
        &data,
        &opt,
        &test_image,
        test_size,
        || eprintln!("[3/5] predicting the test volume")
    ))?;
    let v = score(
        &aff,
        &test_vol.labels,
        test_size,
        3,
        crate::train::targets::TargetOptions {
            widen_borders: cfg.widen_borders,
        },
    )?;
    let mut w = create_volume(
        &format!("{}:/affinities", out("test_affinities.h5")),
        &[3, test_size.0, test_size.1, test_size.2],
        Dtype::F32,
        None,
    )?;
    w.write_region(
        &[0, 0, 0, 0],
        &Array::new(vec![3, test_size.0, test_size.1, test_size.2], aff.clone())?,
    )?;
    w.finish()?;

    eprintln!("[4/5] segmenting: watershed, then agglomeration at several thresholds");
    let dims = Dims::new(test_size.0, test_size.1, test_size.2);
    eprintln!("[5/5] scoring against the test volume's labels");
    let rows = segment_and_score(&aff, &test_vol.labels, dims)?;
    let best = best_row(&rows);
    let shape = [test_size.0, test_size.1, test_size.2];
    write_u32(
        &format!("{}:/segmentation", out("test_segmentation.h5")),
        &shape,
        rows[best].segmentation.clone(),
    )?;
    write_u32(
        &format!("{}:/labels", out("test_labels.h5")),
        &shape,
        test_vol.labels.clone(),
    )?;

    crate::render::write_section_panels(
        &a.out.join("test_panels.png"),
        &crate::render::Section {
            shape: test_size,
            image: &test_image,
            labels: &test_vol.labels,
            affinities: &aff,
            segmentation: &rows[best].segmentation,
        },
        test_size.0 / 2,
    )?;

    let secs = t0.elapsed().as_secs_f64();
    if a.json {
        use crate::json::{self, Json};
        println!(
            "{}",
            json::obj([
                ("train_steps", Json::from(summary.steps)),
                ("first_loss", summary.first_loss.into()),
                ("last_loss", summary.last_loss.into()),
                ("test_boundary_accuracy", v.boundary_accuracy.into()),
                ("all_ones_accuracy", v.all_ones_accuracy.into()),
                ("best_threshold", rows[best].threshold.into()),
                (
                    "adapted_rand_error",
                    rows[best].metrics.adapted_rand_error.into()
                ),
                ("voi_split", rows[best].metrics.voi_split.into()),
                ("voi_merge", rows[best].metrics.voi_merge.into()),
                ("seconds", secs.into()),
            ])
        );
        return Ok(());
    }
    println!(
        "\nrevseg demo: {} steps of training in {:.0} s (loss {:.3} -> {:.3}); whole demo {:.0} s",
        summary.steps, summary.seconds, summary.first_loss, summary.last_loss, secs
    );
    println!(
        "\nunseen test volume {}x{}x{}, nearest-neighbour affinities:",
        test_size.0, test_size.1, test_size.2
    );
    println!("| predictor | boundary accuracy |\n|---|---|");
    println!(
        "| trained network | {:.4} |\n| all-ones (trivial) | {:.4} |",
        v.boundary_accuracy, v.all_ones_accuracy
    );
    println!("\nsegmentation (watershed, then mean-affinity agglomeration):");
    println!("| threshold | segments | adapted Rand error | VOI split | VOI merge |\n|---|---|---|---|---|");
    for Row {
        threshold: t,
        metrics: m,
        segmentation: seg,
    } in &rows
    {
        let n = seg
            .iter()
            .copied()
            .collect::<std::collections::HashSet<u32>>()
            .len();
        println!(
            "| {t:.1} | {n} | {:.4} | {:.3} | {:.3} |",
            m.adapted_rand_error, m.voi_split, m.voi_merge
        );
    }
    println!("\noutputs in {}:", a.out.display());
    println!("  train.h5:/image, train_labels.h5:/labels   synthetic training volume");
    println!("  test.h5:/image, test_labels.h5:/labels     unseen test volume");
    println!("  model.safetensors                          trained weights (docs/CHECKPOINTS.md)");
    println!("  metrics.csv, loss.png                      training curves");
    println!("  test_affinities.h5:/affinities             predicted affinities");
    println!(
        "  test_segmentation.h5:/segmentation         segmentation at threshold {:.1}",
        rows[best].threshold
    );
    println!("  test_panels.png                            middle test section: image, truth, affinities, segmentation");
    Ok(())
}

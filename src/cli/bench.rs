//! `revseg bench ...`: speed and memory figures.

use crate::backend::Backend;
use crate::bench::{ops, step};
use crate::cli::net::{NetArgs, PrecisionArg};
use crate::error::{Error, Result};
use crate::json::{self, Json};
use crate::model::{self, NetConfig};
use crate::scheduler::Strategy;
use clap::{Args, Subcommand};

#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// GFLOP/s of conv3d forward and both backward passes for each convolution of the network.
    Ops(OpsArgs),
    /// Median time of full training steps (forward, backward, Adam) and the measured peak.
    Step(StepArgs),
    /// Time of a Recompute step over a store-all step of the same network, the two alternated in
    /// one process.
    Ratio(RatioArgs),
    /// The paper's table on this engine: params, step time and peak memory for the base network
    /// and 1-4 reversible blocks.
    Table(TableArgs),
    /// Time and peak memory of watershed + agglomeration on a synthetic affinity volume.
    Segment(crate::bench::segment::SegmentBenchArgs),
    /// The paper's table with its accuracy column: base network and RevNet n=1..4 trained the
    /// same steps from the same seeds, each scored on the same unseen synthetic volume.
    Quality(QualityArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum QualityPreset {
    /// The demo's network, volumes and steps: about 25 min for the five variants on 2 quiet cores.
    Demo,
    /// The full Superhuman network (18x160x160 patches) on larger volumes: for a GPU.
    Superhuman,
}

#[derive(Args, Debug)]
pub struct QualityArgs {
    #[arg(long, value_enum, default_value = "demo")]
    pub preset: QualityPreset,
    /// Training steps of every run (default: the preset's, 2000 for demo, 5000 for superhuman).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Training seeds per variant (1..=K); with 2 or more the table gives mean and spread.
    #[arg(long, default_value_t = 1)]
    pub seeds: usize,
    /// Reversible block counts to train, 0 being the base network (store-all).
    #[arg(long, default_value = "0,1,2,3,4")]
    pub variants: String,
    /// Training volume Z,Y,X (default: the preset's).
    #[arg(long)]
    pub train_size: Option<String>,
    /// Unseen test volume Z,Y,X (default: the preset's).
    #[arg(long)]
    pub test_size: Option<String>,
    /// Seed of the synthetic volumes (the test volume's is this + 1000).
    #[arg(long, default_value_t = 1)]
    pub data_seed: u64,
    /// A training setting on top of the preset's (`key=value`, the keys of `revseg train --set`).
    #[arg(long = "set")]
    pub set: Vec<String>,
    /// Folder for every run's checkpoint and segmentation, the test volume, quality.png.
    #[arg(long, default_value = "out/bench-quality")]
    pub out: std::path::PathBuf,
    #[arg(long, default_value = "auto")]
    pub device: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct StepArgs {
    #[command(flatten)]
    pub net: NetArgs,
    #[arg(long)]
    pub store_all: bool,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[command(flatten)]
    pub precision: PrecisionArg,
    /// Timed steps after one warm-up step.
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    /// Also print the time spent in each op.
    #[arg(long)]
    pub profile: bool,
    /// Reversible chains in exact (fixed-point) coupling (always on in bf16, the state in 16 bits).
    #[arg(long)]
    pub exact_coupling: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RatioArgs {
    #[command(flatten)]
    pub net: NetArgs,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[command(flatten)]
    pub precision: PrecisionArg,
    /// Timed pairs (one Recompute and one store-all step each) after one warm-up step of each.
    #[arg(long, default_value_t = 5)]
    pub pairs: usize,
    /// Time the step in `--precision bf16` against the same plan's f32 step (CPU) instead of
    /// Recompute against store-all.
    #[arg(long)]
    pub against_f32: bool,
    /// With --against-f32: the store-all plan (default: Recompute).
    #[arg(long)]
    pub store_all: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct TableArgs {
    #[arg(long, default_value = "18,160,160")]
    pub patch: String,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[command(flatten)]
    pub precision: PrecisionArg,
    #[arg(long, default_value_t = 2)]
    pub steps: usize,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct OpsArgs {
    /// Patch D,H,W.
    #[arg(long, default_value = "18,160,160")]
    pub patch: String,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[command(flatten)]
    pub precision: PrecisionArg,
    /// Least seconds spent timing each pass (median of the runs).
    #[arg(long, default_value_t = 0.5)]
    pub min_secs: f64,
    /// Only the layers whose name contains this text (e.g. `rev0`, `res`).
    #[arg(long)]
    pub only: Option<String>,
    #[arg(long)]
    pub json: bool,
}

pub fn run(cmd: &BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Ops(a) => {
            let dev = super::select_device(&a.device)?;
            // On the CPU the ops bench times the bf16 convolution kernels beside f32, even where
            // the CPU lacks the bf16 instructions a training run needs (the scalar path).
            let asked = a.precision.precision.as_deref();
            if dev == crate::backend::device::Device::Cpu
                && asked.map(crate::precision::Precision::parse).transpose()?
                    == Some(crate::precision::Precision::Bf16)
            {
                return ops_bf16(a);
            }
            let p = a.precision.resolve(dev)?;
            crate::on_device!(dev, p, |b| ops_on(b, a))
        }
        BenchCmd::Step(a) => {
            let dev = super::select_device(&a.device)?;
            let p = a.precision.resolve(dev)?;
            crate::on_device!(dev, p, |b| step_on(b, a))
        }
        BenchCmd::Ratio(a) => {
            let dev = super::select_device(&a.device)?;
            let p = a.precision.resolve(dev)?;
            if a.against_f32 {
                return ratio_against_f32(dev, p, a);
            }
            crate::on_device!(dev, p, |b| ratio_on(b, a))
        }
        BenchCmd::Segment(a) => crate::bench::segment::run_cli(a),
        BenchCmd::Quality(a) => {
            let dev = super::select_device(&a.device)?;
            let spec = quality_spec(a)?;
            crate::on_device!(dev, |b| quality_on(b, a, &spec))
        }
        BenchCmd::Table(a) => {
            let dev = super::select_device(&a.device)?;
            let p = a.precision.resolve(dev)?;
            crate::on_device!(dev, p, |b| table_on(b, a))
        }
    }
}

fn ops_bf16(a: &OpsArgs) -> Result<()> {
    let patch = super::parse_patch(&a.patch)?;
    let quiet = a.json;
    let rows = ops::run_bf16_beside_f32(patch, a.min_secs, a.only.as_deref(), |h, f| {
        if !quiet {
            let p = ops::beside(h, f);
            eprintln!(
                "  {:<14} {:<30} bf16 / f32 GFLOP/s: fwd {}, bwd-in {}, bwd-w {}",
                h.layer.name,
                ops::shape_str(&h.layer.geom),
                p[0],
                p[1],
                p[2]
            );
        }
    })?;
    let path = crate::backend::cpu::conv3d_bf16::Path::best();
    if a.json {
        let hs: Vec<ops::ConvBench> = rows.iter().map(|r| r.0.clone()).collect();
        let fs: Vec<ops::ConvBench> = rows.iter().map(|r| r.1.clone()).collect();
        println!(
            "{}",
            crate::json::obj([
                ("bf16", ops::json(&hs, &format!("cpu bf16 ({path:?})"))),
                ("f32", ops::json(&fs, "cpu f32")),
            ])
        );
    } else {
        println!(
            "device: cpu, bf16 kernels {path:?}, patch {}x{}x{}\n",
            patch.0, patch.1, patch.2
        );
        print!("{}", ops::markdown_bf16(&rows));
    }
    Ok(())
}

fn ops_on<B: Backend>(b: &B, a: &OpsArgs) -> Result<()> {
    let patch = super::parse_patch(&a.patch)?;
    let quiet = a.json;
    let res = ops::run(b, patch, a.min_secs, a.only.as_deref(), |r| {
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

/// `bench ratio --against-f32`: one plan's step on the CPU's bf16 backend against the f32 one.
fn ratio_against_f32(
    dev: crate::backend::device::Device,
    p: crate::precision::Precision,
    a: &RatioArgs,
) -> Result<()> {
    use crate::precision::Precision;
    if dev != crate::backend::device::Device::Cpu || p != Precision::Bf16 {
        return Err(Error::Invalid(format!(
            "bench ratio --against-f32 times the CPU's bf16 step against its f32 step; got \
             --device {dev:?} --precision {p}: use --device cpu --precision bf16"
        )));
    }
    let prog = a.net.program()?;
    let strategy = if a.store_all {
        Strategy::StoreAll
    } else {
        Strategy::Recompute
    };
    let (bf, f32b) = (
        crate::backend::cpu::mixed::CpuMixedBackend,
        crate::backend::cpu::CpuBackend::<f32>::new(),
    );
    let labels = ("bf16", "f32");
    let r = step::bench_backend_ratio(&bf, &f32b, &prog, strategy, a.pairs, |i, x, y| {
        progress_line(a, labels, i, x, y)
    })?;
    print_ratio(&bf.name(), &prog, a, &r, labels)
}

fn progress_line(a: &RatioArgs, labels: (&str, &str), i: usize, x: f64, y: f64) {
    if !a.json {
        eprintln!(
            "  pair {}/{}: {} {x:.3} s, {} {y:.3} s, ratio {:.3}",
            i + 1,
            a.pairs.max(1),
            labels.0,
            labels.1,
            x / y
        );
    }
}

fn ratio_on<B: Backend>(b: &B, a: &RatioArgs) -> Result<()> {
    let prog = a.net.program()?;
    let labels = ("recompute", "store-all");
    let r = step::bench_ratio(b, &prog, a.pairs, |i, x, y| {
        progress_line(a, labels, i, x, y)
    })?;
    print_ratio(&b.name(), &prog, a, &r, labels)
}

fn print_ratio(
    device: &str,
    prog: &crate::model::Program,
    a: &RatioArgs,
    r: &step::RatioBench,
    labels: (&str, &str),
) -> Result<()> {
    if a.json {
        // Keys name what was compared (`gflop_recompute`, `gflop_bf16`, ...), so a reader of the
        // JSON never has to map positions back to `compared`.
        let key = |what: &str, label: &str| format!("{what}_{}", label.replace('-', "_"));
        let pairs = r
            .pairs
            .iter()
            .map(|&(x, y)| Json::Array(vec![Json::from(x), Json::from(y)]))
            .collect();
        let mut out = json::obj([
            ("device", Json::from(device)),
            (
                "compared",
                Json::Array(vec![Json::from(labels.0), Json::from(labels.1)]),
            ),
            ("rev_blocks", Json::from(prog.config.rev_blocks)),
            ("patch", Json::from(a.net.patch.clone())),
            ("pairs_seconds", Json::Array(pairs)),
            ("ratio_of_medians", Json::from(r.ratio_of_medians())),
            ("ratio_of_minima", Json::from(r.ratio_of_minima())),
            (
                "measured_bytes",
                Json::Array(vec![
                    Json::from(r.measured_bytes.0),
                    Json::from(r.measured_bytes.1),
                ]),
            ),
        ]);
        if let Json::Object(m) = &mut out {
            for (label, gflop, bytes) in [
                (labels.0, r.gflop.0, r.arena_bytes.0),
                (labels.1, r.gflop.1, r.arena_bytes.1),
            ] {
                m.insert(key("gflop", label), Json::from(gflop));
                m.insert(key("arena_bytes", label), Json::from(bytes));
            }
        }
        println!("{out}");
        return Ok(());
    }
    println!(
        "device: {device}, {} rev blocks, patch {}\n",
        prog.config.rev_blocks, a.net.patch
    );
    println!(
        "| pair | {} (s/step) | {} (s/step) | ratio |\n|---|---|---|---|",
        labels.0, labels.1
    );
    for (i, (x, y)) in r.pairs.iter().enumerate() {
        println!("| {} | {x:.2} | {y:.2} | {:.3} |", i + 1, x / y);
    }
    let mib = |v: usize| v as f64 / (1 << 20) as f64;
    println!(
        "\nratio of medians {:.3}, fastest over fastest {:.3}; FLOP ratio {:.3} ({:.0} / {:.0} GFLOP); peak {:.1} / {:.1} MiB, measured {:.1} / {:.1} MiB",
        r.ratio_of_medians(),
        r.ratio_of_minima(),
        r.gflop.0 / r.gflop.1,
        r.gflop.0,
        r.gflop.1,
        mib(r.arena_bytes.0),
        mib(r.arena_bytes.1),
        mib(r.measured_bytes.0),
        mib(r.measured_bytes.1)
    );
    Ok(())
}

fn step_on<B: Backend>(b: &B, a: &StepArgs) -> Result<()> {
    let prog = a.net.program()?;
    let strategy = if a.store_all {
        Strategy::StoreAll
    } else {
        Strategy::Recompute
    };
    let label = format!(
        "{} rev blocks, {strategy:?}{}",
        prog.config.rev_blocks,
        if crate::ops::coupling::FixedPoint::for_plan(
            a.exact_coupling,
            crate::scheduler::storage_precision(b),
        )
        .is_some()
        {
            ", exact coupling"
        } else {
            ""
        }
    );
    let (r, prof) = step::bench_step_profiled(
        b,
        &prog,
        strategy,
        &label,
        a.steps,
        a.profile,
        a.exact_coupling,
    )?;
    if a.json {
        println!("{}", step::json(&[r], &b.name()));
    } else {
        println!("device: {}, patch {}\n", b.name(), a.net.patch);
        print!("{}", step::markdown(&[r]));
        if a.profile {
            let total: f64 = prof.iter().map(|p| p.1).sum();
            println!("\n| op | calls per step | seconds per step | share |\n|---|---|---|---|");
            // time_median runs one untimed warm-up before the timed steps; the profile saw them all.
            let steps = a.steps.max(1) as f64 + 1.0;
            for (name, t, n) in &prof {
                println!(
                    "| {name} | {:.0} | {:.3} | {:.1}% |",
                    *n as f64 / steps,
                    t / steps,
                    100.0 * t / total
                );
            }
        }
    }
    Ok(())
}

fn table_on<B: Backend>(b: &B, a: &TableArgs) -> Result<()> {
    let patch = super::parse_patch(&a.patch)?;
    let rows_spec: Vec<(usize, Strategy, String)> = [
        (0, Strategy::StoreAll, "base, store-all".to_string()),
        (0, Strategy::Recompute, "base, recompute".into()),
    ]
    .into_iter()
    .chain((1..=4).map(|n| (n, Strategy::Recompute, format!("RevNet n={n}"))))
    .chain([(2, Strategy::StoreAll, "RevNet n=2, store-all".to_string())])
    .collect();
    let mut rows = Vec::new();
    for (n, strategy, label) in rows_spec {
        let prog = model::build(&NetConfig::superhuman(n), patch)?;
        let r = step::bench_step(b, &prog, strategy, &label, a.steps)?;
        if !a.json {
            eprintln!(
                "  {label}: {:.2} s/step, peak {:.1} MiB",
                r.step_secs,
                r.arena_bytes as f64 / (1 << 20) as f64
            );
        }
        rows.push(r);
    }
    if a.json {
        println!("{}", step::json(&rows, &b.name()));
    } else {
        println!(
            "device: {}, patch {}x{}x{}\n",
            b.name(),
            patch.0,
            patch.1,
            patch.2
        );
        print!("{}", step::markdown(&rows));
    }
    Ok(())
}

fn quality_spec(a: &QualityArgs) -> Result<crate::bench::quality::Spec> {
    use crate::bench::quality::{Spec, Variant};
    use crate::error::Error;
    let (mut base, train_size, test_size) = match a.preset {
        QualityPreset::Demo => (
            crate::cli::demo::demo_config(a.steps.unwrap_or(2000), 1),
            crate::cli::demo::DEMO_TRAIN_SIZE,
            crate::cli::demo::DEMO_TEST_SIZE,
        ),
        QualityPreset::Superhuman => {
            let steps = a.steps.unwrap_or(5000);
            let c = crate::train::TrainConfig {
                steps,
                // Superhuman's 0.001 is for runs of 10^5 steps; a few thousand need faster
                // running statistics for inference to match training.
                bn_momentum: 0.01,
                val_every: (steps / 6).max(1),
                checkpoint_every: steps.max(1),
                widen_borders: false,
                ..crate::train::TrainConfig::default()
            };
            (c, (96, 320, 320), (48, 320, 320))
        }
    };
    if let Some(s) = a.steps {
        base.steps = s;
        base.val_every = (s / 6).max(1);
        base.checkpoint_every = s.max(1);
    }
    crate::cli::demo::apply_sets(&mut base, &a.set)?;
    let size = |s: &Option<String>, d| s.as_deref().map_or(Ok(d), super::parse_patch);
    if a.seeds == 0 {
        return Err(Error::Invalid(
            "--seeds 0: give at least 1 (runs per variant)".into(),
        ));
    }
    let variants = a
        .variants
        .split(',')
        .map(|v| match v.trim().parse::<usize>() {
            Ok(n) if n <= crate::model::MAX_REV_BLOCKS => Ok(Variant { rev_blocks: n }),
            _ => Err(Error::Invalid(format!(
                "--variants '{}': expected reversible block counts 0..={} separated by commas, e.g. 0,2",
                a.variants,
                crate::model::MAX_REV_BLOCKS
            ))),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Spec {
        base,
        train_size: size(&a.train_size, train_size)?,
        test_size: size(&a.test_size, test_size)?,
        data_seed: a.data_seed,
        seeds: (1..=a.seeds as u64).collect(),
        variants,
        out: a.out.clone(),
    })
}

fn quality_on<B: Backend>(
    b: &B,
    a: &QualityArgs,
    spec: &crate::bench::quality::Spec,
) -> Result<()> {
    use crate::bench::quality;
    // Progress goes to stderr in both modes: the runs take minutes each.
    let res = quality::run(b, spec, false)?;
    let png = spec.out.join("quality.png");
    quality::plot(&res, &png)?;
    let md = quality::markdown(&res, &b.name(), spec);
    let js = quality::json(&res, &b.name(), spec).to_string();
    for (name, text) in [("quality.md", &md), ("quality.json", &js)] {
        let path = spec.out.join(name);
        crate::volume::array::write_file_atomic(&path, |w| {
            std::io::Write::write_all(w, text.as_bytes()).map_err(|e| {
                crate::error::Error::Io(format!("cannot write {}: {e}", path.display()))
            })
        })?;
    }
    if a.json {
        println!("{js}");
    } else {
        print!("{md}");
        println!(
            "\nplot: {}; the table in quality.md and quality.json, each run's checkpoint and segmentation under {}",
            png.display(),
            spec.out.display()
        );
    }
    Ok(())
}

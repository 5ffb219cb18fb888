//! `revseg train`: train the network on an image volume and its labels.

use crate::error::{Error, Result};
use crate::train::config::Settings;
use crate::train::{self, state, Dataset, Outputs, RunOptions, TrainConfig};
use clap::Args;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    /// Image volume: FILE.tif, FILE.h5:/DATASET, DIR.zarr, FILE.raw:Z,Y,X:DTYPE.
    #[arg(long)]
    pub input: String,
    /// Label volume of the same shape (0 = boundary or unlabelled).
    #[arg(long)]
    pub labels: String,
    /// TOML file of `key = value` settings (keys as printed at start); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Output folder: model.safetensors, metrics.csv, loss.png.
    #[arg(long, default_value = "out/train")]
    pub out: PathBuf,
    /// cpu, emu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Continue from the checkpoint in --out, exactly where it stopped, with its saved settings
    /// (steps, lr, val_every, checkpoint_every, plateau_patience may be given again).
    #[arg(long)]
    pub resume: bool,
    /// Replace a run that --out already holds (without it, a fresh run there is refused).
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    #[arg(long)]
    pub steps: Option<usize>,
    /// Patch D,H,W.
    #[arg(long)]
    pub patch: Option<String>,
    #[arg(long)]
    pub rev_blocks: Option<usize>,
    /// Widths per scale, e.g. 28,36,48,64,80.
    #[arg(long)]
    pub widths: Option<String>,
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long)]
    pub val_every: Option<usize>,
    /// 3 or 12 output channels.
    #[arg(long)]
    pub outputs: Option<usize>,
    #[arg(long)]
    pub no_augment: bool,
    /// Keep every activation (the classic backward) instead of reconstructing.
    #[arg(long)]
    pub store_all: bool,
    /// Voxel size Z,Y,X in nm when the image file does not record it (e.g. 30,6,6).
    #[arg(long)]
    pub voxel_size: Option<String>,
    /// Convolution and activation format: f32, tf32 (GPU tensor cores) or bf16 (default: the
    /// device's, see `revseg info`).
    #[arg(long)]
    pub precision: Option<String>,
    /// Reversible chains rebuild their inputs bit for bit (exact coupling arithmetic); always
    /// on with `--precision bf16`.
    #[arg(long)]
    pub exact_coupling: bool,
    /// Any other setting, as key=value (repeatable).
    #[arg(long = "set")]
    pub set: Vec<String>,
    /// Print a JSON summary at the end.
    #[arg(long)]
    pub json: bool,
}

/// Settings that a resumed run may change: how long it goes on and how it steps, not what it
/// trains or on which data.
const RESUMABLE: &[&str] = &[
    "steps",
    "lr",
    "val_every",
    "checkpoint_every",
    "plateau_patience",
];

impl TrainArgs {
    /// The settings this command line gives: the TOML file, then the flags over it.
    pub fn settings(&self) -> Result<Settings> {
        let mut s = match &self.config {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| Error::Io(format!("cannot read config {}: {e}", p.display())))?;
                Settings::from_toml(&text, &p.display().to_string())?
            }
            None => Settings::default(),
        };
        let list = |k: &str, v: &Option<String>| -> Result<Settings> {
            v.as_ref()
                .map_or(Ok(Settings::default()), |v| Settings::from_key_value(k, v))
        };
        let flags = Settings {
            steps: self.steps,
            rev_blocks: self.rev_blocks,
            lr: self.lr,
            seed: self.seed,
            val_every: self.val_every,
            outputs: self.outputs,
            augment: self.no_augment.then_some(false),
            store_all: self.store_all.then_some(true),
            precision: self
                .precision
                .as_deref()
                .map(crate::precision::Precision::parse)
                .transpose()?,
            exact_coupling: self.exact_coupling.then_some(true),
            ..Settings::default()
        };
        for part in [
            list("patch", &self.patch)?,
            list("widths", &self.widths)?,
            list("voxel_size", &self.voxel_size)?,
            flags,
        ] {
            s = s.merge(part);
        }
        for kv in &self.set {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| Error::Invalid(format!("--set '{kv}': expected key=value")))?;
            s = s.merge(Settings::from_key_value(k, v)?);
        }
        Ok(s)
    }

    /// The configuration of this run. A resumed run is the saved one, with the settings of
    /// `RESUMABLE` given again applied (each said in one line) and any other change refused.
    pub fn resolve(&self) -> Result<TrainConfig> {
        let given = self.settings()?;
        let mut c = TrainConfig::default();
        if !self.resume {
            c.apply(&given)?;
            c.validate()?;
            return Ok(c);
        }
        let path = Outputs {
            dir: self.out.clone(),
        }
        .model();
        let p = path.display().to_string();
        if !path.exists() {
            return Err(Error::Invalid(format!(
                "--resume: {p} does not exist; train without --resume to start a run there"
            )));
        }
        let saved = state::config_of(&crate::checkpoint::load(&path)?, &p)?;
        let was = saved.settings();
        c = saved.clone();
        for key in given.keys() {
            let one = Settings::default().merge(pick(&given, key));
            let mut probe = saved.clone();
            probe.apply(&one)?;
            if probe.settings() == was {
                continue;
            }
            let show = |s: &Settings| {
                serde_json::to_value(s).map_or(String::new(), |j| j[key].to_string())
            };
            if !RESUMABLE.contains(&key) {
                return Err(Error::Invalid(format!(
                    "--resume: {key} is {} in the checkpoint and cannot change in a resumed run (only {} can); drop it, or train afresh into another --out",
                    show(&was),
                    RESUMABLE.join(", ")
                )));
            }
            c.apply(&one)?;
            eprintln!(
                "resume: {key} {} -> {} (given again)",
                show(&was),
                show(&c.settings())
            );
        }
        c.validate()?;
        Ok(c)
    }
}

/// The one setting `key` of `s`.
fn pick(s: &Settings, key: &str) -> Settings {
    let j = serde_json::to_value(s).unwrap_or_default();
    let one = crate::json::obj([(key, j[key].clone())]);
    serde_json::from_value(one).unwrap_or_default()
}

pub fn run(a: &TrainArgs) -> Result<()> {
    let inputs = [
        ("--input", super::spec_file(&a.input)?),
        ("--labels", super::spec_file(&a.labels)?),
    ];
    let inputs: Vec<(&str, &std::path::Path)> =
        inputs.iter().map(|(f, p)| (*f, p.as_path())).collect();
    let outs = train::Outputs { dir: a.out.clone() };
    for out in [outs.model(), outs.metrics(), outs.plot()] {
        crate::fsutil::refuse_output_over_inputs(("--out", &out), &inputs)?;
    }
    let mut cfg = a.resolve()?;
    if cfg.voxel_size.is_none() {
        let v = crate::volume::io::open_volume(&a.input)?.voxel_size();
        cfg.voxel_size = v.map(|v| (v.z, v.y, v.x));
    }
    let (image, shape) = super::read_image(&a.input)?;
    let (labels, lshape) = super::read_labels(&a.labels)?;
    if shape != lshape {
        return Err(Error::shape(
            "train",
            format!(
                "image {} is {shape:?} but labels {} are {lshape:?}",
                a.input, a.labels
            ),
        ));
    }
    let data = Dataset::new(
        image,
        labels,
        shape,
        &cfg,
        &format!("{} / {}", a.input, a.labels),
    )?;
    let dev = super::select_device(&a.device)?;
    let precision = crate::precision::Precision::for_device(cfg.precision, dev)?;
    eprintln!(
        "revseg train on {dev:?} in {precision}, volume {shape:?}, {} training and {} held-out sections",
        data.val_from,
        shape.0 - data.val_from
    );
    eprintln!("config: {}", cfg.to_json());
    let opt = RunOptions {
        out_dir: a.out.clone(),
        resume: a.resume,
        quiet: false,
        overwrite: a.overwrite,
        stop: Some(stop_on_signals()?),
    };
    let s = crate::on_device!(dev, precision, |b| train::train(b, cfg, &data, &opt))?;
    if s.interrupted {
        eprintln!(
            "interrupted: stopped after step {} with a checkpoint in {}; continue with --resume",
            s.steps,
            s.out_dir.display()
        );
        std::process::exit(130);
    }
    let v = s.validation;
    if a.json {
        println!(
            "{}",
            crate::json::obj([
                ("steps", crate::json::Json::from(s.steps)),
                ("first_loss", s.first_loss.into()),
                ("last_loss", s.last_loss.into()),
                ("val_loss", v.map_or(f64::NAN, |v| v.loss).into()),
                (
                    "val_boundary_accuracy",
                    v.map_or(f64::NAN, |v| v.boundary_accuracy).into()
                ),
                (
                    "all_ones_accuracy",
                    v.map_or(f64::NAN, |v| v.all_ones_accuracy).into()
                ),
                ("seconds", s.seconds.into()),
                ("arena_bytes", s.arena_bytes.into()),
                ("out", s.out_dir.display().to_string().into()),
            ])
        );
    } else {
        println!(
            "trained {} steps in {:.0} s: loss {:.4} -> {:.4}",
            s.steps, s.seconds, s.first_loss, s.last_loss
        );
        if let Some(v) = v {
            println!(
                "validation: loss {:.4}, boundary accuracy {:.4} (all-ones predictor {:.4})",
                v.loss, v.boundary_accuracy, v.all_ones_accuracy
            );
        }
        println!(
            "outputs in {}: model.safetensors, metrics.csv, loss.png",
            s.out_dir.display()
        );
    }
    Ok(())
}

/// A first SIGINT or SIGTERM sets the flag (the loop finishes its step, saves and stops); a
/// second one while the flag is set exits at once.
fn stop_on_signals() -> Result<Arc<AtomicBool>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 130, Arc::clone(&flag))
            .and_then(|_| signal_hook::flag::register(sig, Arc::clone(&flag)))
            .map_err(|e| Error::Io(format!("cannot install the signal handler: {e}")))?;
    }
    Ok(flag)
}

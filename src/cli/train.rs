//! `revseg train`: train the network on an image volume and its labels.

use crate::error::{Error, Result};
use crate::train::{self, Dataset, RunOptions, TrainConfig};
use clap::Args;
use std::path::PathBuf;

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
    /// Continue from the checkpoint in --out, exactly where it stopped.
    #[arg(long)]
    pub resume: bool,
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
    /// Any other setting, as key=value (repeatable).
    #[arg(long = "set")]
    pub set: Vec<String>,
    /// Print a JSON summary at the end.
    #[arg(long)]
    pub json: bool,
}

impl TrainArgs {
    pub fn resolve(&self) -> Result<TrainConfig> {
        let mut c = TrainConfig::default();
        if let Some(p) = &self.config {
            let text = std::fs::read_to_string(p)
                .map_err(|e| Error::Io(format!("cannot read config {}: {e}", p.display())))?;
            c.apply_toml(&text, &p.display().to_string())?;
        }
        let mut set = |k: &str, v: Option<String>| v.map_or(Ok(()), |v| c.set(k, &v));
        set("steps", self.steps.map(|v| v.to_string()))?;
        set("patch", self.patch.clone())?;
        set("rev_blocks", self.rev_blocks.map(|v| v.to_string()))?;
        set("widths", self.widths.clone())?;
        set("lr", self.lr.map(|v| v.to_string()))?;
        set("seed", self.seed.map(|v| v.to_string()))?;
        set("val_every", self.val_every.map(|v| v.to_string()))?;
        set("outputs", self.outputs.map(|v| v.to_string()))?;
        set("voxel_size", self.voxel_size.clone())?;
        if self.no_augment {
            c.augment = false;
        }
        if self.store_all {
            c.store_all = true;
        }
        for kv in &self.set {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| Error::Invalid(format!("--set '{kv}': expected key=value")))?;
            c.set(k.trim(), v.trim())?;
        }
        c.validate()?;
        Ok(c)
    }
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
    eprintln!(
        "revseg train on {dev:?}, volume {shape:?}, {} training and {} held-out sections",
        data.val_from,
        shape.0 - data.val_from
    );
    eprintln!("config: {}", cfg.to_json());
    let opt = RunOptions {
        out_dir: a.out.clone(),
        resume: a.resume,
        quiet: false,
    };
    let s = crate::on_device!(dev, |b| train::train(b, cfg, &data, &opt))?;
    let v = s.validation;
    if a.json {
        println!(
            "{}",
            crate::json::Json::obj([
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

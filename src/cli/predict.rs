//! `revseg predict`: sliding-window inference of a trained checkpoint over a volume.

use crate::error::{Error, Result};
use crate::model;
use crate::predict::{predict_stream, PredictOptions};
use crate::scheduler::{self, Executor};
use crate::train::{progress::Progress, state};
use crate::volume::array::VoxelSize;
use crate::volume::array::{Array, Dtype};
use crate::volume::io::{create_volume_with, WriteOptions};
use clap::Args;

#[derive(Args, Debug)]
pub struct PredictArgs {
    /// Checkpoint written by `revseg train` (model.safetensors).
    #[arg(long)]
    pub checkpoint: String,
    /// Image volume (FILE.tif, FILE.h5:/DATASET, DIR.zarr, FILE.raw:Z,Y,X:DTYPE).
    #[arg(long)]
    pub input: String,
    /// Where to write the affinities (channels, Z, Y, X), in any writable format.
    #[arg(long)]
    pub output: String,
    #[arg(long, default_value = "auto")]
    pub device: String,
    #[command(flatten)]
    pub precision: super::net::PrecisionArg,
    /// Patch D,H,W (default: the training patch).
    #[arg(long)]
    pub patch: Option<String>,
    /// Output type: float32; float16 (rounded to nearest half, half the size; zarr or raw);
    /// or uint8 (affinity x 255, rounded; a quarter of the size).
    #[arg(long, default_value = "float32")]
    pub dtype: String,
    /// Voxel size Z,Y,X in nm when the input file does not record it (e.g. 30,6,6).
    #[arg(long)]
    pub voxel_size: Option<String>,
    /// 16-fold test-time augmentation (flips and y/x transposes, averaged).
    #[arg(long)]
    pub tta: bool,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub blocks: crate::blocks::BlockArgs,
}

pub fn run(a: &PredictArgs) -> Result<()> {
    if a.blocks.active() {
        return crate::blocks::predict::run(a, &a.blocks);
    }
    crate::fsutil::refuse_output_over_inputs(
        ("--output", &super::spec_file(&a.output)?),
        &[
            ("--input", &super::spec_file(&a.input)?),
            ("--checkpoint", std::path::Path::new(&a.checkpoint)),
        ],
    )?;
    let ck = crate::checkpoint::load(&a.checkpoint)?;
    let cfg = state::config_of(&ck, &a.checkpoint)?;
    let patch = match &a.patch {
        Some(p) => super::parse_patch(p)?,
        None => cfg.patch,
    };
    let prog = model::build(&cfg.net, patch)?;
    let reader = crate::volume::io::open_volume(&a.input)?;
    let shape = super::shape3(&reader, "image")?;
    let channels = cfg.net.outputs;
    let out_shape = vec![channels, shape.0, shape.1, shape.2];
    // Sections stream in and out: the whole volume never has to fit in memory.
    let dtype = output_dtype(&a.dtype)?;
    let voxel = voxel_size_arg(a.voxel_size.as_deref(), reader.voxel_size())?;
    if let (Some(VoxelSize { z, y, x }), Some((tz, ty, tx))) = (voxel, cfg.voxel_size) {
        let (an, tan) = (z / y.min(x), tz / ty.min(tx));
        if (an / tan - 1.0).abs() > 0.1 {
            eprintln!(
                "warning: {} has anisotropy {an:.2} (voxel {z}x{y}x{x} nm) but the network was trained at {tan:.2} ({tz}x{ty}x{tx} nm); predictions may suffer",
                a.input
            );
        }
    }
    let opt_w = WriteOptions {
        voxel_size: voxel,
        ..WriteOptions::default()
    };
    let mut w = create_volume_with(&a.output, &out_shape, dtype, &opt_w)?;
    let dev = super::select_device(&a.device)?;
    let precision = a.precision.resolve(dev)?;
    let t0 = std::time::Instant::now();
    let arena = crate::on_device!(dev, precision, |b| {
        let plan = scheduler::inference_plan_in(&prog, scheduler::storage_precision(b))?;
        let arena = plan.arena_bytes;
        let mut ex = Executor::new(b, &prog, plan, 0)?;
        ex.poison = false;
        state::load_model(b, &prog, &mut ex, &ck, &a.checkpoint)?;
        let mut bar: Option<Progress> = None;
        let vox = (patch.0 * patch.1 * patch.2) as f64 * if a.tta { 16.0 } else { 1.0 };
        let started = std::time::Instant::now();
        let opt = PredictOptions { patch, tta: a.tta };
        let read = |z0: usize, d: usize| super::read_image_sections(&reader, z0, d);
        let write = |z: usize, plane: &[f32]| {
            let s = vec![channels, 1, shape.1, shape.2];
            if dtype == Dtype::U8 {
                let q = plane
                    .iter()
                    .map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
                    .collect();
                w.write_region(&[0, z, 0, 0], &Array::new(s, q)?)
            } else {
                w.write_region(&[0, z, 0, 0], &Array::new(s, plane.to_vec())?)
            }
        };
        predict_stream(
            b,
            &mut ex,
            shape,
            channels,
            &opt,
            read,
            write,
            |done, total| {
                let rate = vox * done as f64 / started.elapsed().as_secs_f64().max(1e-9) / 1e6;
                let bar = bar.get_or_insert_with(|| Progress::new("predict", total));
                bar.update(done, "patches", &format!("{rate:.2} Mvox/s"));
            },
        )?;
        if let Some(bar) = bar {
            bar.finish();
        }
        Ok::<_, Error>(arena)
    })?;
    w.finish()?;
    let secs = t0.elapsed().as_secs_f64();
    if a.json {
        println!(
            "{}",
            crate::json::obj([
                ("output", crate::json::Json::from(a.output.clone())),
                (
                    "shape",
                    crate::json::Json::Array(out_shape.iter().map(|v| (*v).into()).collect())
                ),
                ("seconds", secs.into()),
                ("inference_arena_bytes", arena.into()),
            ])
        );
    } else {
        println!(
            "wrote {} ({channels}x{}x{}x{} {}) in {secs:.1} s; inference plan peak {:.1} MiB",
            a.output,
            shape.0,
            shape.1,
            shape.2,
            a.dtype,
            arena as f64 / (1 << 20) as f64
        );
    }
    Ok(())
}

/// The output element type `--dtype` names.
pub fn output_dtype(name: &str) -> Result<Dtype> {
    match name {
        "float32" => Ok(Dtype::F32),
        "float16" => Ok(Dtype::F16),
        "uint8" => Ok(Dtype::U8),
        d => Err(Error::Invalid(format!(
            "--dtype {d}: choose float32, float16 or uint8"
        ))),
    }
}

/// The voxel size `--voxel-size` gives (parsed as the training config's `voxel_size`), else the
/// input's own.
pub fn voxel_size_arg(given: Option<&str>, input: Option<VoxelSize>) -> Result<Option<VoxelSize>> {
    match given {
        Some(s) => {
            let mut c = crate::train::TrainConfig::default();
            c.set("voxel_size", s)?;
            Ok(c.voxel_size.map(|(z, y, x)| VoxelSize { z, y, x }))
        }
        None => Ok(input),
    }
}

//! `revseg synth --out DIR [--size Z,Y,X] [--seed S]`: writes a synthetic EM volume.
//!
//! Output in DIR:
//! - `image.zarr`: uint8 (Z, Y, X), zarr v2, gzip level 1, chunks of up to 16 x 256 x 256,
//!   `resolution` [30, 6, 6] (nm) in .zattrs (scaled to the anisotropy asked for).
//! - `labels.zarr`: uint32, same layout; dense labels 1..n (no 0).
//! - `synth.json`: size, seed, object count, artefacts and per-section contrast.
//! - `preview.png`: a few sections (first, middle, artefacts), each as the image beside a colour
//!   overlay of its labels.
//!
//! zarr because any zarr reader (zarr-python, tensorstore, napari) opens it and chunks keep large
//! volumes out of memory.

use crate::error::{Error, Result};
use crate::json::{self, Json};
use crate::synth::{difficulty, synthesize, ArtefactKind, Difficulty, SynthConfig, SynthVolume};
use crate::volume::array::{Array, Dtype, VoxelSize};
use crate::volume::io::{create_volume_with, WriteOptions};
use crate::volume::png;
use clap::Args;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args, Debug, Clone)]
pub struct SynthArgs {
    /// Output directory (created; existing image.zarr / labels.zarr there are replaced).
    #[arg(long)]
    pub out: PathBuf,
    /// Volume size Z,Y,X in voxels.
    #[arg(long, default_value = "64,256,256")]
    pub size: String,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Section thickness over pixel width.
    #[arg(long, default_value_t = 5.0)]
    pub anisotropy: f64,
    /// Leave out blank, duplicated and shifted sections.
    #[arg(long)]
    pub no_artefacts: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_size(s: &str) -> Result<(usize, usize, usize)> {
    let bad = || {
        Error::Invalid(format!(
            "--size '{s}': expected three positive integers Z,Y,X, e.g. 64,256,256"
        ))
    };
    let v: Vec<usize> = s
        .split(',')
        .map(|p| p.trim().parse::<usize>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| bad())?;
    match v[..] {
        [z, y, x] if z > 0 && y > 0 && x > 0 => Ok((z, y, x)),
        _ => Err(bad()),
    }
}

pub fn run(args: &SynthArgs) -> Result<()> {
    let size = parse_size(&args.size)?;
    let cfg = SynthConfig {
        size,
        seed: args.seed,
        anisotropy: args.anisotropy,
        artefacts: !args.no_artefacts,
        ..SynthConfig::default()
    };
    let t0 = Instant::now();
    let vol = synthesize(&cfg)?;
    let t_gen = t0.elapsed().as_secs_f64();
    std::fs::create_dir_all(&args.out)
        .map_err(|e| Error::Io(format!("{}: {e}", args.out.display())))?;
    let t1 = Instant::now();
    write_outputs(&args.out, &cfg, &vol)?;
    let t_write = t1.elapsed().as_secs_f64();
    let summary = summary_json(&cfg, &vol, t_gen, t_write);
    if args.json {
        println!("{summary}");
    } else {
        println!(
            "synthetic volume {}x{}x{} (seed {}): {} objects, {} artefacts; generated in {t_gen:.2} s, written in {t_write:.2} s",
            size.0,
            size.1,
            size.2,
            cfg.seed,
            vol.n_objects,
            vol.artefacts.len()
        );
        for a in &vol.artefacts {
            println!("  z {:>4}: {}", a.z, artefact_str(&a.kind));
        }
        println!(
            "wrote {0}/image.zarr, {0}/labels.zarr, {0}/synth.json, {0}/preview.png",
            args.out.display()
        );
    }
    Ok(())
}

fn artefact_str(k: &ArtefactKind) -> String {
    match k {
        ArtefactKind::Blank => "blank section".into(),
        ArtefactKind::Duplicate { of } => format!("duplicate of section {of}"),
        ArtefactKind::Shift { dy, dx } => format!("section shifted by ({dy}, {dx})"),
        ArtefactKind::Slip { dy, dx } => {
            format!("slip: this and later sections shifted by ({dy}, {dx})")
        }
    }
}

fn difficulty_json(d: &Difficulty) -> Json {
    let q = |v: &[usize; 5]| {
        json::obj([
            ("min", Json::from(v[0])),
            ("p10", v[1].into()),
            ("median", v[2].into()),
            ("p90", v[3].into()),
            ("max", v[4].into()),
        ])
    };
    json::obj([
        ("objects", Json::from(d.objects)),
        ("object_voxels", q(&d.size)),
        ("object_z_sections", q(&d.z_extent)),
        ("z_neighbour_same_label", d.z_same.into()),
        ("xy_neighbour_same_label", d.xy_same.into()),
    ])
}

fn summary_json(cfg: &SynthConfig, vol: &SynthVolume, t_gen: f64, t_write: f64) -> Json {
    let (z, y, x) = vol.shape;
    let arts = vol
        .artefacts
        .iter()
        .map(|a| {
            let mut f: Vec<(String, Json)> = vec![("z".into(), a.z.into())];
            match &a.kind {
                ArtefactKind::Blank => f.push(("kind".into(), "blank".into())),
                ArtefactKind::Duplicate { of } => {
                    f.push(("kind".into(), "duplicate".into()));
                    f.push(("of".into(), (*of).into()));
                }
                ArtefactKind::Shift { dy, dx } | ArtefactKind::Slip { dy, dx } => {
                    let kind = if matches!(a.kind, ArtefactKind::Shift { .. }) {
                        "shift"
                    } else {
                        "slip"
                    };
                    f.push(("kind".into(), kind.into()));
                    f.push(("dy".into(), Json::from(*dy)));
                    f.push(("dx".into(), Json::from(*dx)));
                }
            }
            json::obj(f)
        })
        .collect();
    json::obj([
        ("shape", Json::Array(vec![z.into(), y.into(), x.into()])),
        ("seed", Json::from(cfg.seed)),
        ("anisotropy", Json::from(cfg.anisotropy)),
        ("objects", Json::from(vol.n_objects)),
        (
            "labels",
            Json::from("dense: every voxel belongs to an object 1..n, no 0"),
        ),
        ("artefacts", Json::Array(arts)),
        (
            "difficulty",
            difficulty_json(&difficulty(&vol.labels, vol.shape)),
        ),
        (
            "section_contrast",
            Json::Array(
                vol.section_contrast
                    .iter()
                    .map(|(g, o)| Json::Array(vec![Json::from(*g as f64), Json::from(*o as f64)]))
                    .collect(),
            ),
        ),
        ("generate_s", Json::from(t_gen)),
        ("write_s", Json::from(t_write)),
    ])
}

/// The volumes are complete in temporary places before they are renamed into place, so that a
/// failure (a full disk) leaves the previous ones as they were.
fn write_outputs(dir: &Path, cfg: &SynthConfig, vol: &SynthVolume) -> Result<()> {
    let (z, y, x) = vol.shape;
    let shape = [z, y, x];
    let opt = WriteOptions {
        chunks: Some(vec![z.min(16), y.min(256), x.min(256)]),
        voxel_size: Some(VoxelSize {
            z: 6.0 * cfg.anisotropy,
            y: 6.0,
            x: 6.0,
        }),
        compress: true,
        gzip_level: Some(1),
        ..WriteOptions::default()
    };
    let spec = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let mut img = create_volume_with(&spec("image.zarr"), &shape, Dtype::U8, &opt)?;
    img.write_region(&[0, 0, 0], &Array::new(shape.to_vec(), vol.image.clone())?)?;
    let mut lab = create_volume_with(&spec("labels.zarr"), &shape, Dtype::U32, &opt)?;
    lab.write_region(&[0, 0, 0], &Array::new(shape.to_vec(), vol.labels.clone())?)?;
    write_preview(&dir.join("preview.png"), vol)?;
    img.finish()?;
    lab.finish()?;
    // Last: it describes the volumes, so it only replaces the old one once they are in place.
    let summary = summary_json(cfg, vol, 0.0, 0.0);
    let p = dir.join("synth.json");
    crate::volume::array::write_file_atomic(&p, |w| {
        use std::io::Write;
        writeln!(w, "{summary}").map_err(|e| Error::Io(format!("{}: {e}", p.display())))
    })
}

/// Sections shown in the preview: the first, the middle, and up to two artefacts.
pub fn preview_sections(vol: &SynthVolume) -> Vec<usize> {
    let nz = vol.shape.0;
    let mut zs = vec![0, nz / 2];
    for a in vol.artefacts.iter().take(2) {
        zs.push(a.z);
    }
    zs.sort_unstable();
    zs.dedup();
    zs
}

/// Image beside a label overlay for a few sections, downsampled to at most 512 pixels wide.
pub fn write_preview(path: &Path, vol: &SynthVolume) -> Result<()> {
    let (_, ny, nx) = vol.shape;
    let step = nx.div_ceil(512).max(ny.div_ceil(512)).max(1);
    let (h, w) = (ny.div_ceil(step), nx.div_ceil(step));
    let zs = preview_sections(vol);
    let gap = 4;
    let width = 2 * w + gap;
    let height = zs.len() * h + (zs.len() - 1) * gap;
    let mut rgb = vec![255u8; width * height * 3];
    let color = |l: u32| -> [f32; 3] {
        let mut hsh = (l as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        hsh ^= hsh >> 29;
        [
            (hsh & 0xff) as f32,
            ((hsh >> 8) & 0xff) as f32,
            ((hsh >> 16) & 0xff) as f32,
        ]
    };
    for (row, &z) in zs.iter().enumerate() {
        let top = row * (h + gap);
        for yy in 0..h {
            for xx in 0..w {
                let i = (z * ny + yy * step) * nx + xx * step;
                let v = vol.image[i] as f32;
                let c = color(vol.labels[i]);
                let o1 = ((top + yy) * width + xx) * 3;
                let o2 = ((top + yy) * width + w + gap + xx) * 3;
                for k in 0..3 {
                    rgb[o1 + k] = v as u8;
                    rgb[o2 + k] = (0.55 * v + 0.45 * c[k]).round() as u8;
                }
            }
        }
    }
    png::write(path, width, height, 3, &rgb)
}

//! `revseg render`: one section of image, ground truth, affinities and segmentation as PNG panels.

use crate::error::{Error, Result};
use crate::render::{write_section_panels, Section};
use crate::volume::io::open_volume;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct RenderArgs {
    /// Image volume (uint8, or float in [0, 1]), any spec `revseg predict` reads.
    #[arg(long)]
    pub image: String,
    #[arg(long)]
    pub labels: String,
    /// Affinities (C, Z, Y, X), the first three channels z, y, x.
    #[arg(long)]
    pub affinities: String,
    #[arg(long)]
    pub segmentation: String,
    /// Section to show (default: the middle one).
    #[arg(long)]
    pub z: Option<usize>,
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: &RenderArgs) -> Result<()> {
    let img = open_volume(&a.image)?;
    let shape = img.shape().to_vec();
    let [nz, ny, nx] = shape[..] else {
        return Err(Error::Invalid(format!(
            "{}: expected a (Z, Y, X) image, found {shape:?}",
            a.image
        )));
    };
    let image: Vec<f32> = match img.read_all::<u8>() {
        Ok(v) => v.data.iter().map(|&p| p as f32 / 255.0).collect(),
        Err(_) => img.read_all::<f32>()?.data,
    };
    let labels = open_volume(&a.labels)?.read_all::<u32>()?.data;
    let affinities = open_volume(&a.affinities)?.read_all::<f32>()?.data;
    let segmentation = open_volume(&a.segmentation)?.read_all::<u32>()?.data;
    write_section_panels(
        &a.out,
        &Section {
            shape: (nz, ny, nx),
            image: &image,
            labels: &labels,
            affinities: &affinities,
            segmentation: &segmentation,
        },
        a.z.unwrap_or(nz / 2),
    )?;
    println!("wrote {}", a.out.display());
    Ok(())
}

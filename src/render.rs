//! A picture a person can read: one section of image, ground truth, predicted affinities and
//! segmentation side by side (`revseg demo` writes it as `test_panels.png`).

use crate::error::{Error, Result};
use crate::plot::{label_color, panels};
use std::path::Path;

/// Volumes of one (Z, Y, X) shape: image in [0, 1], labels, affinities (3, Z, Y, X; nearest
/// neighbour, z y x), segmentation.
pub struct Section<'a> {
    pub shape: (usize, usize, usize),
    pub image: &'a [f32],
    pub labels: &'a [u32],
    pub affinities: &'a [f32],
    pub segmentation: &'a [u32],
}

/// Writes section `z` as four panels: the image, the ground truth and the segmentation with a
/// colour per object, and the affinities as RGB (red z, green y, blue x: dark where the network
/// sees a border in every direction, red-free where objects end between sections).
pub fn write_section_panels(path: &Path, s: &Section, z: usize) -> Result<()> {
    let (nz, ny, nx) = s.shape;
    let plane = ny * nx;
    let n = nz * plane;
    if z >= nz
        || s.image.len() != n
        || s.labels.len() != n
        || s.segmentation.len() != n
        || s.affinities.len() < 3 * n
    {
        return Err(Error::Invalid(format!(
            "render: section {z} of a {nz}x{ny}x{nx} volume, with {} image, {} label, {} affinity and {} segmentation values",
            s.image.len(),
            s.labels.len(),
            s.affinities.len(),
            s.segmentation.len()
        )));
    }
    let at = z * plane;
    let grey = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
    let mut img = Vec::with_capacity(3 * plane);
    let mut gt = Vec::with_capacity(3 * plane);
    let mut aff = Vec::with_capacity(3 * plane);
    let mut seg = Vec::with_capacity(3 * plane);
    for i in at..at + plane {
        img.extend([grey(s.image[i]); 3]);
        gt.extend(label_color(s.labels[i] as u64));
        aff.extend((0..3).map(|c| grey(s.affinities[c * n + i])));
        seg.extend(label_color(s.segmentation[i] as u64));
    }
    let scale = (480 / nx.max(ny)).clamp(1, 4);
    let titles = [
        format!("IMAGE Z {z}"),
        "GROUND TRUTH".to_string(),
        "AFFINITIES (R Z, G Y, B X)".to_string(),
        "SEGMENTATION".to_string(),
    ];
    let t: Vec<&str> = titles.iter().map(|s| s.as_str()).collect();
    let (w, h, px) = panels(&t, &[img, gt, aff, seg], nx, ny, scale);
    crate::volume::png::write(path, w, h, 3, &px)
}

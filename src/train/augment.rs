//! Augmentations of a training sample (image f32 (Z, Y, X) in [0, 1], labels u32 of the same
//! shape), applied before the targets are computed, deterministic for the state of the `Rng`.
//!
//! Order, and why:
//! 1. flip / transpose (one of 16) of the whole window;
//! 2. misalignment, which also crops the window to the patch: sections are read at shifted
//!    offsets of a window larger than the patch, so shifted sections have no holes
//!    ([`margin`] says how much larger; [`window_shape`] gives the shape to sample). Image and
//!    labels are shifted together, as gunpowder and DeepEM do, so the z affinities computed
//!    afterwards say "disconnected" where an object no longer overlaps itself across the cut;
//! 3. greyscale (image only);
//! 4. blur of single sections (image only);
//! 5. missing sections (image only) last, so a missing section holds exactly its fill value
//!    whatever the greyscale change, as a missing section in real data does.
//!
//! Flipping before the crop gives the same patch as flipping after it, because the margin is
//! the same on both sides; doing it first keeps the reported shift in the output's frame.

use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::volume::array::Array;

/// How the greyscale change is drawn (Superhuman / DeepEM "mix": per section or whole patch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GreyscaleMode {
    /// One change for the whole patch (3D).
    Whole,
    /// An independent change per section (2D).
    PerSection,
    /// Whole or per section with probability 1/2 each.
    Mix,
}

/// What a missing section is filled with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MissingFill {
    Zero,
    /// A constant drawn uniformly in [0, 1] per section.
    Constant,
    /// Zero or a constant with probability 1/2 each, per section.
    Mix,
}

/// Every switch and probability. `Default` turns everything on.
#[derive(Clone, Debug, PartialEq)]
pub struct AugmentConfig {
    /// One of the 16 flips / y-x transposes, uniformly (transposes only for square patches).
    pub flip: bool,

    pub greyscale: bool,
    pub greyscale_prob: f64,
    pub greyscale_mode: GreyscaleMode,
    /// Contrast factor 1 + (u - 1/2) * contrast, u uniform in [0, 1).
    pub contrast: f64,
    /// Brightness offset (u - 1/2) * brightness.
    pub brightness: f64,
    /// Gamma 2^(v * gamma_log2), v uniform in [-1, 1).
    pub gamma_log2: f64,

    pub missing: bool,
    pub missing_prob: f64,
    /// 1 ..= missing_max sections (distinct) when it applies.
    pub missing_max: usize,
    pub missing_fill: MissingFill,

    pub misalign: bool,
    pub misalign_prob: f64,
    /// Largest shift in pixels along y and along x; the sampled window needs this margin.
    pub max_shift: usize,
    /// Probability that a misalignment is a slip (every section from z on) rather than a shift
    /// of one section.
    pub slip_prob: f64,

    pub blur: bool,
    pub blur_prob: f64,
    /// 1 ..= blur_max sections (distinct) when it applies.
    pub blur_max: usize,
    /// Gaussian sigma in pixels, uniform in [blur_sigma_min, blur_sigma_max).
    pub blur_sigma_min: f64,
    pub blur_sigma_max: f64,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig {
            flip: true,
            greyscale: true,
            greyscale_prob: 0.5,
            greyscale_mode: GreyscaleMode::Mix,
            contrast: 0.3,
            brightness: 0.3,
            gamma_log2: 1.0,
            missing: true,
            missing_prob: 0.3,
            missing_max: 3,
            missing_fill: MissingFill::Mix,
            misalign: true,
            misalign_prob: 0.3,
            max_shift: 17,
            slip_prob: 0.5,
            blur: true,
            blur_prob: 0.3,
            blur_max: 3,
            blur_sigma_min: 0.5,
            blur_sigma_max: 5.0,
        }
    }
}

impl AugmentConfig {
    /// Everything off: `augment` returns the window unchanged (cropped by the margin, which is 0).
    pub fn none() -> Self {
        AugmentConfig {
            flip: false,
            greyscale: false,
            missing: false,
            misalign: false,
            blur: false,
            ..AugmentConfig::default()
        }
    }

    fn check(&self) -> Result<()> {
        let probs = [
            ("greyscale_prob", self.greyscale_prob),
            ("missing_prob", self.missing_prob),
            ("misalign_prob", self.misalign_prob),
            ("slip_prob", self.slip_prob),
            ("blur_prob", self.blur_prob),
        ];
        for (n, p) in probs {
            if !(0.0..=1.0).contains(&p) {
                return Err(Error::Value {
                    what: format!("augment {n}"),
                    detail: format!("{p} is not a probability in [0, 1]"),
                });
            }
        }
        let nonneg = [
            ("contrast", self.contrast),
            ("brightness", self.brightness),
            ("gamma_log2", self.gamma_log2),
            ("blur_sigma_min", self.blur_sigma_min),
        ];
        for (n, v) in nonneg {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::Value {
                    what: format!("augment {n}"),
                    detail: format!("{v} must be finite and >= 0"),
                });
            }
        }
        if self.contrast >= 2.0 {
            return Err(Error::Value {
                what: "augment contrast".into(),
                detail: format!(
                    "{} would allow a contrast factor <= 0 (inverting the image); use < 2",
                    self.contrast
                ),
            });
        }
        if !(self.blur_sigma_max.is_finite() && self.blur_sigma_max >= self.blur_sigma_min) {
            return Err(Error::Value {
                what: "augment blur_sigma_max".into(),
                detail: format!(
                    "{} must be finite and >= blur_sigma_min {}",
                    self.blur_sigma_max, self.blur_sigma_min
                ),
            });
        }
        Ok(())
    }
}

/// Extra voxels on each side, (z, y, x), that the sampled window needs around the patch.
pub fn margin(cfg: &AugmentConfig) -> [usize; 3] {
    let m = if cfg.misalign { cfg.max_shift } else { 0 };
    [0, m, m]
}

/// The window to sample for an output patch of `patch` (z, y, x).
pub fn window_shape(cfg: &AugmentConfig, patch: [usize; 3]) -> [usize; 3] {
    let m = margin(cfg);
    [patch[0], patch[1] + 2 * m[1], patch[2] + 2 * m[2]]
}

/// A flip / transpose as 4 bits: 1 = flip z, 2 = flip y, 4 = flip x, 8 = transpose y <-> x.
/// The transpose is applied first, then the flips.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Flip(pub u8);

impl Flip {
    pub const ALL: [Flip; 16] = {
        let mut a = [Flip(0); 16];
        let mut i = 0;
        while i < 16 {
            a[i] = Flip(i as u8);
            i += 1;
        }
        a
    };
    pub fn flip_z(self) -> bool {
        self.0 & 1 != 0
    }
    pub fn flip_y(self) -> bool {
        self.0 & 2 != 0
    }
    pub fn flip_x(self) -> bool {
        self.0 & 4 != 0
    }
    pub fn transpose(self) -> bool {
        self.0 & 8 != 0
    }
}

fn check_shape(shape: &[usize], len: usize, what: &str) -> Result<[usize; 3]> {
    match shape {
        [z, y, x] if z * y * x == len => Ok([*z, *y, *x]),
        _ => Err(Error::shape(
            "augment",
            format!(
                "{what} must be (Z, Y, X) with matching data; got shape {shape:?} and {len} values"
            ),
        )),
    }
}

/// Applies `f` to a (Z, Y, X) array: out = flips(transpose(a)).
pub fn apply_flip<T: Copy>(a: &Array<T>, f: Flip) -> Result<Array<T>> {
    let [nz, ny, nx] = check_shape(&a.shape, a.data.len(), "flip input")?;
    if f.transpose() && ny != nx {
        return Err(Error::shape(
            "flip",
            format!("a y <-> x transpose needs a square section; got {ny} x {nx}"),
        ));
    }
    let mut out = Vec::with_capacity(a.data.len());
    for z in 0..nz {
        let sz = if f.flip_z() { nz - 1 - z } else { z };
        for y in 0..ny {
            let sy = if f.flip_y() { ny - 1 - y } else { y };
            for x in 0..nx {
                let sx = if f.flip_x() { nx - 1 - x } else { x };
                // transpose(a)[z][y][x] = a[z][x][y]
                let (ry, rx) = if f.transpose() { (sx, sy) } else { (sy, sx) };
                out.push(a.data[(sz * ny + ry) * nx + rx]);
            }
        }
    }
    Ok(Array {
        shape: a.shape.clone(),
        data: out,
    })
}

/// The inverse of [`apply_flip`]: flips first (each is its own inverse), then the transpose.
pub fn undo_flip<T: Copy>(a: &Array<T>, f: Flip) -> Result<Array<T>> {
    let flips = apply_flip(a, Flip(f.0 & 7))?;
    if f.transpose() {
        apply_flip(&flips, Flip(8))
    } else {
        Ok(flips)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MisalignKind {
    /// Section `z` alone is displaced.
    Shift,
    /// Every section from `z` on is displaced.
    Slip,
}

/// Content of the displaced sections appears (dy, dx) pixels further along y, x than it would
/// without the misalignment: out[z][y][x] = window[z][y + m - dy][x + m - dx] for displaced
/// sections, window[z][y + m][x + m] for the others (m = the margin).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Misalignment {
    pub kind: MisalignKind,
    pub z: usize,
    pub dy: isize,
    pub dx: isize,
}

impl Misalignment {
    pub fn displaces(&self, z: usize) -> bool {
        match self.kind {
            MisalignKind::Shift => z == self.z,
            MisalignKind::Slip => z >= self.z,
        }
    }
}

/// One greyscale change: v -> clamp(v * contrast + brightness, 0, 1) ^ gamma.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GreyChange {
    pub contrast: f64,
    pub brightness: f64,
    pub gamma: f64,
}

/// What `augment` did.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct AugmentReport {
    /// None when flips are off.
    pub flip: Option<Flip>,
    pub misalign: Option<Misalignment>,
    /// One change for the whole patch, or one per section (index = z).
    pub greyscale: Vec<GreyChange>,
    pub greyscale_per_section: bool,
    /// (section, sigma).
    pub blurred: Vec<(usize, f64)>,
    /// (section, fill value), sections sorted.
    pub missing: Vec<(usize, f32)>,
}

fn distinct_sections(rng: &mut Rng, nz: usize, max: usize) -> Vec<usize> {
    let k = rng.range(1, max.min(nz).max(1));
    let mut all: Vec<usize> = (0..nz).collect();
    rng.shuffle(&mut all);
    let mut v = all[..k.min(nz)].to_vec();
    v.sort_unstable();
    v
}

/// Augments a sampled window (shape [`window_shape`] of the patch) and returns the patch,
/// its labels and what was done.
pub fn augment(
    cfg: &AugmentConfig,
    rng: &mut Rng,
    image: &Array<f32>,
    labels: &Array<u32>,
) -> Result<(Array<f32>, Array<u32>, AugmentReport)> {
    cfg.check()?;
    let [wz, wy, wx] = check_shape(&image.shape, image.data.len(), "image window")?;
    check_shape(&labels.shape, labels.data.len(), "label window")?;
    if labels.shape != image.shape {
        return Err(Error::shape(
            "augment",
            format!(
                "image window {:?} and label window {:?} differ",
                image.shape, labels.shape
            ),
        ));
    }
    let m = margin(cfg)[1];
    if wy <= 2 * m || wx <= 2 * m || wz == 0 {
        return Err(Error::shape(
            "augment",
            format!(
                "window {:?} leaves no patch inside a margin of {m} on each side in y and x; sample window_shape(cfg, patch)",
                image.shape
            ),
        ));
    }
    let (py, px) = (wy - 2 * m, wx - 2 * m);
    check_image_range("augment image", &image.data, |i| format!("at index {i}"))?;
    let mut report = AugmentReport::default();

    // 1. Flip / transpose.
    let (mut img, mut lab) = (image.clone(), labels.clone());
    if cfg.flip {
        let n = if py == px { 16 } else { 8 };
        let f = Flip(rng.range(0, n - 1) as u8);
        img = apply_flip(&img, f)?;
        lab = apply_flip(&lab, f)?;
        report.flip = Some(f);
    }

    // 2. Misalignment and crop to the patch.
    if cfg.misalign && m > 0 && rng.uniform() < cfg.misalign_prob {
        let slip = rng.uniform() < cfg.slip_prob;
        let (dy, dx) = loop {
            let dy = rng.range(0, 2 * m) as isize - m as isize;
            let dx = rng.range(0, 2 * m) as isize - m as isize;
            if dy != 0 || dx != 0 {
                break (dy, dx);
            }
        };
        // A slip from section 0 would move everything, which is no misalignment.
        let kind = if slip && wz > 1 {
            MisalignKind::Slip
        } else {
            MisalignKind::Shift
        };
        let z = match kind {
            MisalignKind::Slip => rng.range(1, wz - 1),
            MisalignKind::Shift => rng.range(0, wz - 1),
        };
        report.misalign = Some(Misalignment { kind, z, dy, dx });
    }
    let misalign = report.misalign;
    let crop = |z: usize| -> (usize, usize) {
        match misalign {
            Some(mi) if mi.displaces(z) => {
                ((m as isize - mi.dy) as usize, (m as isize - mi.dx) as usize)
            }
            _ => (m, m),
        }
    };
    let mut out_img = Vec::with_capacity(wz * py * px);
    let mut out_lab = Vec::with_capacity(wz * py * px);
    for z in 0..wz {
        let (oy, ox) = crop(z);
        for y in 0..py {
            let row = (z * wy + y + oy) * wx + ox;
            out_img.extend_from_slice(&img.data[row..row + px]);
            out_lab.extend_from_slice(&lab.data[row..row + px]);
        }
    }
    let mut img = Array {
        shape: vec![wz, py, px],
        data: out_img,
    };
    let lab = Array {
        shape: vec![wz, py, px],
        data: out_lab,
    };
    let plane = py * px;

    // 3. Greyscale.
    if cfg.greyscale && rng.uniform() < cfg.greyscale_prob {
        let per_section = match cfg.greyscale_mode {
            GreyscaleMode::Whole => false,
            GreyscaleMode::PerSection => true,
            GreyscaleMode::Mix => rng.uniform() < 0.5,
        };
        let mut draw = || GreyChange {
            contrast: 1.0 + (rng.uniform() - 0.5) * cfg.contrast,
            brightness: (rng.uniform() - 0.5) * cfg.brightness,
            gamma: 2f64.powf((rng.uniform() * 2.0 - 1.0) * cfg.gamma_log2),
        };
        let changes: Vec<GreyChange> = if per_section {
            (0..wz).map(|_| draw()).collect()
        } else {
            vec![draw()]
        };
        for (i, v) in img.data.iter_mut().enumerate() {
            let g = if per_section {
                changes[i / plane]
            } else {
                changes[0]
            };
            let w = (*v as f64 * g.contrast + g.brightness).clamp(0.0, 1.0);
            *v = w.powf(g.gamma).clamp(0.0, 1.0) as f32;
        }
        report.greyscale = changes;
        report.greyscale_per_section = per_section;
    }

    // 4. Blur.
    if cfg.blur && cfg.blur_max > 0 && rng.uniform() < cfg.blur_prob {
        for z in distinct_sections(rng, wz, cfg.blur_max) {
            let sigma =
                cfg.blur_sigma_min + rng.uniform() * (cfg.blur_sigma_max - cfg.blur_sigma_min);
            gaussian_blur_section(&mut img.data[z * plane..(z + 1) * plane], py, px, sigma);
            report.blurred.push((z, sigma));
        }
    }

    // 5. Missing sections.
    if cfg.missing && cfg.missing_max > 0 && rng.uniform() < cfg.missing_prob {
        for z in distinct_sections(rng, wz, cfg.missing_max) {
            let constant = match cfg.missing_fill {
                MissingFill::Zero => false,
                MissingFill::Constant => true,
                MissingFill::Mix => rng.uniform() < 0.5,
            };
            let v = if constant { rng.uniform() as f32 } else { 0.0 };
            img.data[z * plane..(z + 1) * plane].fill(v);
            report.missing.push((z, v));
        }
    }

    Ok((img, lab, report))
}

/// Mirror index (edge pixel not repeated: ... 2 1 | 0 1 2 ... n-1 | n-2 ...), as scipy's
/// "mirror" mode; for kernels wider than the section it folds again.
fn mirror(i: isize, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n as isize - 1);
    let mut j = i.rem_euclid(period);
    if j >= n as isize {
        j = period - j;
    }
    j as usize
}

/// Separable Gaussian blur of one (Y, X) section in place, mirrored at the edges so that no
/// darkening or brightening creeps in from outside.
pub fn gaussian_blur_section(sec: &mut [f32], ny: usize, nx: usize, sigma: f64) {
    if sigma <= 0.0 || sec.is_empty() {
        return;
    }
    let r = (3.0 * sigma).ceil() as isize;
    let mut k: Vec<f64> = (-r..=r)
        .map(|d| (-(d * d) as f64 / (2.0 * sigma * sigma)).exp())
        .collect();
    let s: f64 = k.iter().sum();
    k.iter_mut().for_each(|v| *v /= s);
    let mut tmp = vec![0f32; sec.len()];
    for y in 0..ny {
        for x in 0..nx {
            let mut acc = 0.0;
            for (t, w) in k.iter().enumerate() {
                let xx = mirror(x as isize + t as isize - r, nx);
                acc += w * sec[y * nx + xx] as f64;
            }
            tmp[y * nx + x] = acc as f32;
        }
    }
    for y in 0..ny {
        for x in 0..nx {
            let mut acc = 0.0;
            for (t, w) in k.iter().enumerate() {
                let yy = mirror(y as isize + t as isize - r, ny);
                acc += w * tmp[yy * nx + x] as f64;
            }
            sec[y * nx + x] = (acc as f32).clamp(0.0, 1.0);
        }
    }
}

/// The network sees images in [0, 1] (uint8 / 255, uint16 / 65535, floats as stored); training
/// and prediction refuse anything else alike, `at(i)` naming where value `i` lies.
pub fn check_image_range(what: &str, data: &[f32], at: impl Fn(usize) -> String) -> Result<()> {
    match data.iter().position(|v| !(0.0..=1.0).contains(v)) {
        None => Ok(()),
        Some(i) => Err(Error::Value {
            what: what.into(),
            detail: format!(
                "value {} {} is {}; scale float images to [0, 1] first (uint8 and uint16 images are scaled when read)",
                data[i],
                at(i),
                if data[i].is_finite() {
                    "not in [0, 1]"
                } else {
                    "not finite"
                }
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A window whose every voxel holds a different value in (0, 1], and labels that encode the
    /// voxel position, so that any permutation or shift is visible.
    fn window(shape: [usize; 3], seed: u64) -> (Array<f32>, Array<u32>) {
        let n = shape.iter().product::<usize>();
        let mut rng = Rng::new(seed);
        let mut idx: Vec<usize> = (0..n).collect();
        rng.shuffle(&mut idx);
        let img = idx.iter().map(|&i| (i + 1) as f32 / n as f32).collect();
        let lab = (0..n as u32).map(|i| i + 1).collect();
        (
            Array::new(shape.to_vec(), img).unwrap(),
            Array::new(shape.to_vec(), lab).unwrap(),
        )
    }

    #[test]
    fn sixteen_flips_invert_and_differ() {
        let (img, _) = window([3, 4, 4], 1);
        let mut seen: Vec<Vec<f32>> = Vec::new();
        for f in Flip::ALL {
            let out = apply_flip(&img, f).unwrap();
            assert_eq!(undo_flip(&out, f).unwrap(), img, "{f:?}");
            // Same multiset of values: a permutation.
            let mut a = out.data.clone();
            let mut b = img.data.clone();
            a.sort_by(f32::total_cmp);
            b.sort_by(f32::total_cmp);
            assert_eq!(a, b);
            assert!(!seen.contains(&out.data), "{f:?} repeats another flip");
            seen.push(out.data);
        }
        assert_eq!(seen.len(), 16);
        // Independent spot checks of the definitions, on a non-cubic shape.
        let (a, _) = window([2, 3, 5], 2);
        let at = |a: &Array<f32>, z, y, x| a.data[(z * a.shape[1] + y) * a.shape[2] + x];
        let fx = apply_flip(&a, Flip(4)).unwrap();
        let fzy = apply_flip(&a, Flip(3)).unwrap();
        for z in 0..2 {
            for y in 0..3 {
                for x in 0..5 {
                    assert_eq!(at(&fx, z, y, x), at(&a, z, y, 4 - x));
                    assert_eq!(at(&fzy, z, y, x), at(&a, 1 - z, 2 - y, x));
                }
            }
        }
        let (s, _) = window([1, 3, 3], 3);
        let t = apply_flip(&s, Flip(8)).unwrap();
        let ty = apply_flip(&s, Flip(8 | 2)).unwrap();
        for y in 0..3 {
            for x in 0..3 {
                assert_eq!(at(&t, 0, y, x), at(&s, 0, x, y));
                // Transpose, then flip y.
                assert_eq!(at(&ty, 0, y, x), at(&s, 0, x, 2 - y));
            }
        }
        assert!(apply_flip(&a, Flip(8)).is_err());
    }

    fn only(f: impl FnOnce(&mut AugmentConfig)) -> AugmentConfig {
        let mut c = AugmentConfig::none();
        f(&mut c);
        c
    }

    #[test]
    fn greyscale_stays_in_range_and_changes_values() {
        let (img, lab) = window([4, 8, 8], 4);
        for mode in [GreyscaleMode::Whole, GreyscaleMode::PerSection] {
            let cfg = only(|c| {
                c.greyscale = true;
                c.greyscale_prob = 1.0;
                c.greyscale_mode = mode;
            });
            for seed in 0..20 {
                let (out, l, rep) = augment(&cfg, &mut Rng::new(seed), &img, &lab).unwrap();
                assert_eq!(l, lab);
                assert!(out.data.iter().all(|v| (0.0..=1.0).contains(v)));
                let changed = out
                    .data
                    .iter()
                    .zip(&img.data)
                    .filter(|(a, b)| a != b)
                    .count();
                assert!(
                    changed > img.data.len() / 2,
                    "seed {seed}: {changed} changed"
                );
                assert_eq!(
                    rep.greyscale.len(),
                    if mode == GreyscaleMode::Whole { 1 } else { 4 }
                );
                // The report's formula reproduces a voxel.
                let g = rep.greyscale[if rep.greyscale_per_section { 3 } else { 0 }];
                let i = 3 * 64 + 17;
                let want = (img.data[i] as f64 * g.contrast + g.brightness)
                    .clamp(0.0, 1.0)
                    .powf(g.gamma);
                assert!((out.data[i] as f64 - want).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn missing_sections_are_where_reported() {
        let (img, lab) = window([6, 5, 5], 5);
        let cfg = only(|c| {
            c.missing = true;
            c.missing_prob = 1.0;
            c.missing_max = 3;
            c.missing_fill = MissingFill::Constant;
        });
        let mut counts = std::collections::HashSet::new();
        for seed in 0..30 {
            let (out, l, rep) = augment(&cfg, &mut Rng::new(seed), &img, &lab).unwrap();
            assert_eq!(l, lab, "labels untouched");
            assert!(!rep.missing.is_empty() && rep.missing.len() <= 3);
            counts.insert(rep.missing.len());
            for z in 0..6 {
                let got = &out.data[z * 25..(z + 1) * 25];
                match rep.missing.iter().find(|(s, _)| *s == z) {
                    Some(&(_, v)) => assert!(got.iter().all(|&g| g == v)),
                    None => assert_eq!(got, &img.data[z * 25..(z + 1) * 25]),
                }
            }
        }
        assert!(counts.len() > 1, "the number of missing sections varies");
    }

    #[test]
    fn shift_and_slip_move_image_and_labels_by_the_reported_amount() {
        let m = 3;
        for slip in [0.0, 1.0] {
            let cfg = only(|c| {
                c.misalign = true;
                c.misalign_prob = 1.0;
                c.max_shift = m;
                c.slip_prob = slip;
            });
            let patch = [5, 6, 7];
            let ws = window_shape(&cfg, patch);
            assert_eq!(ws, [5, 12, 13]);
            let (img, lab) = window(ws, 6);
            for seed in 0..10 {
                let (out, l, rep) = augment(&cfg, &mut Rng::new(seed), &img, &lab).unwrap();
                assert_eq!(out.shape, patch.to_vec());
                let mi = rep.misalign.expect("misalignment at probability 1");
                assert_eq!(mi.kind == MisalignKind::Slip, slip == 1.0);
                assert!(mi.dy != 0 || mi.dx != 0);
                assert!(mi.dy.unsigned_abs() <= m && mi.dx.unsigned_abs() <= m);
                let mut displaced = 0;
                for z in 0..5 {
                    let (sy, sx) = if mi.displaces(z) {
                        displaced += 1;
                        (mi.dy, mi.dx)
                    } else {
                        (0, 0)
                    };
                    for y in 0..6 {
                        for x in 0..7 {
                            let wy = (y as isize + m as isize - sy) as usize;
                            let wx = (x as isize + m as isize - sx) as usize;
                            let o = (z * 6 + y) * 7 + x;
                            let w = (z * 12 + wy) * 13 + wx;
                            assert_eq!(out.data[o], img.data[w]);
                            assert_eq!(l.data[o], lab.data[w]);
                        }
                    }
                }
                match mi.kind {
                    MisalignKind::Shift => assert_eq!(displaced, 1),
                    MisalignKind::Slip => assert_eq!(displaced, 5 - mi.z),
                }
            }
        }
    }

    #[test]
    fn blur_changes_only_reported_sections() {
        let (img, lab) = window([4, 9, 9], 7);
        let cfg = only(|c| {
            c.blur = true;
            c.blur_prob = 1.0;
            c.blur_max = 2;
            c.blur_sigma_min = 1.0;
            c.blur_sigma_max = 2.0;
        });
        let (out, _, rep) = augment(&cfg, &mut Rng::new(8), &img, &lab).unwrap();
        assert!(!rep.blurred.is_empty());
        for z in 0..4 {
            let a = &out.data[z * 81..(z + 1) * 81];
            let b = &img.data[z * 81..(z + 1) * 81];
            if rep.blurred.iter().any(|(s, _)| *s == z) {
                assert!(a != b);
                // Blurring shrinks the spread of values.
                let var = |v: &[f32]| {
                    let mu = v.iter().sum::<f32>() / v.len() as f32;
                    v.iter().map(|x| (x - mu) * (x - mu)).sum::<f32>()
                };
                assert!(var(a) < 0.5 * var(b));
            } else {
                assert_eq!(a, b);
            }
        }
        // A single bright pixel spreads symmetrically and keeps its total.
        let mut sec = vec![0f32; 81];
        sec[40] = 1.0;
        gaussian_blur_section(&mut sec, 9, 9, 1.0);
        assert!(sec[40] < 0.2 && sec[39] > 0.05);
        assert!((sec[39] - sec[41]).abs() < 1e-6 && (sec[31] - sec[49]).abs() < 1e-6);
        assert!((sec.iter().sum::<f32>() - 1.0).abs() < 1e-3);
    }

    #[test]
    fn same_seed_same_output_other_seed_other_output() {
        let cfg = AugmentConfig {
            greyscale_prob: 1.0,
            misalign_prob: 1.0,
            missing_prob: 1.0,
            blur_prob: 1.0,
            max_shift: 4,
            ..AugmentConfig::default()
        };
        let ws = window_shape(&cfg, [6, 10, 10]);
        let (img, lab) = window(ws, 9);
        let a = augment(&cfg, &mut Rng::new(42), &img, &lab).unwrap();
        let b = augment(&cfg, &mut Rng::new(42), &img, &lab).unwrap();
        assert_eq!(a, b);
        let c = augment(&cfg, &mut Rng::new(43), &img, &lab).unwrap();
        assert_ne!(a.0, c.0);
        assert_ne!(a.2, c.2);
        assert_eq!(a.0.shape, vec![6, 10, 10]);
        // Defaults are all on.
        let d = AugmentConfig::default();
        assert!(d.flip && d.greyscale && d.missing && d.misalign && d.blur);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let cfg = AugmentConfig::default();
        let (img, lab) = window([2, 10, 10], 10);
        let e = augment(&cfg, &mut Rng::new(1), &img, &lab)
            .unwrap_err()
            .to_string();
        assert!(e.contains("window_shape"), "{e}");
        let cfg = AugmentConfig::none();
        let (img2, _) = window([2, 10, 11], 10);
        let e = augment(&cfg, &mut Rng::new(1), &img2, &lab)
            .unwrap_err()
            .to_string();
        assert!(e.contains("differ"), "{e}");
        let mut hot = img.clone();
        hot.data[3] = 255.0;
        let e = augment(&cfg, &mut Rng::new(1), &hot, &lab)
            .unwrap_err()
            .to_string();
        assert!(e.contains("255"), "{e}");
        let bad = AugmentConfig {
            blur_prob: 1.5,
            ..AugmentConfig::none()
        };
        assert!(augment(&bad, &mut Rng::new(1), &img, &lab).is_err());
    }

    #[test]
    fn rectangular_patches_skip_transposes() {
        let cfg = only(|c| c.flip = true);
        let (img, lab) = window([2, 4, 6], 11);
        for seed in 0..40 {
            let (out, l, rep) = augment(&cfg, &mut Rng::new(seed), &img, &lab).unwrap();
            let f = rep.flip.unwrap();
            assert!(!f.transpose());
            assert_eq!(out, apply_flip(&img, f).unwrap());
            assert_eq!(l, apply_flip(&lab, f).unwrap());
        }
    }
}

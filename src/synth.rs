//! `revseg synth`: a synthetic serial-section EM volume with dense ground-truth labels, for demos
//! and tests when no real data is at hand.
//!
//! How it is made (all deterministic for a seed, through `crate::rng::Rng` only):
//! 1. Neurites: tubes along smooth random 3D curves (a turning rate that itself drifts), with
//!    radii that vary along the tube and between tubes (log-uniform: many thin axons, a few thick
//!    dendrites), some branching (a branch keeps its parent's label). Tubes start in space that is
//!    still empty until a set fraction of the volume is covered; where tubes meet, a voxel goes
//!    to the tube it is relatively deepest inside (distance / radius), so touching tubes share a
//!    smooth wall.
//! 2. Dense packing: every remaining voxel takes the label of the nearest tube voxel (exact
//!    anisotropic Euclidean feature transform), as neuropil has no empty space.
//! 3. Labels are made connected (6-connectivity), slivers below a size merged into a neighbour,
//!    and numbered 1..n. Labels are dense: no voxel is 0 (SNEMI3D style; the membrane pixels
//!    belong to the objects on either side, so affinities are 0 exactly across object borders).
//! 4. Image: grey cytoplasm varying per object, soft texture, dark membranes at in-plane label
//!    borders (and fainter where the neighbour section differs, as oblique membranes smear),
//!    mitochondria (elongated dark capsules with a darker double membrane, along the tube) and
//!    vesicle clusters (small dark rings) inside their host object, blur, per-section contrast
//!    and brightness, Gaussian noise.
//! 5. Voxels are anisotropic: one section is `anisotropy` pixels thick (5 by default, as
//!    30 nm / 6 nm), so objects change more between sections than between pixels.
//! 6. Section artefacts, listed in `SynthVolume::artefacts`: blank sections (image 0), duplicated
//!    sections (image of the section before), one shifted section, and a slip (every section
//!    from some z on shifted). As in gunpowder's defect augmentation, shifts move image and labels
//!    together (the annotation follows the image) and blank/duplicate sections change only the
//!    image (the labels keep the true tissue, which a network should learn to infer).
//! 7. Labels are made 6-connected once more in the cropped, shifted output: a shift or the crop
//!    can cut one tube into pieces that do not touch in the stack, and an affinity target (or a
//!    proofreader of this stack) cannot join what does not touch. Each piece gets its own id, so
//!    perfect affinities segment the truth exactly (the benchmark's ceiling is 0 error).

use crate::error::{Error, Result};
use crate::rng::Rng;
use rayon::prelude::*;

/// What to generate. `Default` gives the demo's look; `size` and `seed` are what users change.
#[derive(Clone, Debug)]
pub struct SynthConfig {
    /// (z, y, x) in voxels.
    pub size: (usize, usize, usize),
    pub seed: u64,
    /// Section thickness over pixel width.
    pub anisotropy: f64,
    /// Tube radius range in pixels (log-uniform between them).
    pub radius: (f64, f64),
    /// Fraction of the volume covered by tubes before the rest is grown into.
    pub fill_fraction: f64,
    /// Expected branches per 100 pixels of tube length.
    pub branch_rate: f64,
    /// Gaussian blur in pixels (in-plane).
    pub blur: f64,
    /// Noise standard deviation in grey levels.
    pub noise: f64,
    /// Standard deviation of the per-section gain (brightness follows it).
    pub contrast_jitter: f64,
    /// Insert section artefacts (needs at least 12 sections).
    pub artefacts: bool,
    /// Largest shift of a shifted section or a slip, in pixels.
    pub max_shift: usize,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            size: (64, 256, 256),
            seed: 1,
            anisotropy: 5.0,
            radius: (3.5, 13.0),
            fill_fraction: 0.8,
            branch_rate: 0.15,
            blur: 1.0,
            noise: 9.0,
            contrast_jitter: 0.08,
            artefacts: true,
            max_shift: 12,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum ArtefactKind {
    /// Image 0 (a lost section).
    Blank,
    /// Image copied from section `of` (a section imaged twice).
    Duplicate { of: usize },
    /// This section alone is shifted by (dy, dx): its content at (y, x) is the tissue at
    /// (y + dy, x + dx) of an aligned stack.
    Shift { dy: i64, dx: i64 },
    /// This and every later section are shifted by (dy, dx) (added to any other shift).
    Slip { dy: i64, dx: i64 },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Artefact {
    pub z: usize,
    pub kind: ArtefactKind,
}

/// A generated volume. `image` and `labels` are (z, y, x) C-order.
#[derive(Clone, Debug)]
pub struct SynthVolume {
    pub image: Vec<u8>,
    pub labels: Vec<u32>,
    pub shape: (usize, usize, usize),
    pub artefacts: Vec<Artefact>,
    /// (gain, offset) applied to each section's grey values around 128.
    pub section_contrast: Vec<(f32, f32)>,
    /// Labels are 1..=n_objects.
    pub n_objects: usize,
}

/// One piece of a tube's centre line, in physical units (pixels; z scaled by anisotropy).
#[derive(Clone, Copy, Debug)]
struct Seg {
    a: [f64; 3],
    b: [f64; 3],
    ra: f64,
    rb: f64,
    label: u32,
}

#[derive(Clone, Copy, Debug)]
enum OrganelleKind {
    /// Capsule: centre segment and radius.
    Mito,
    /// Sphere at `a`.
    Vesicle,
}

#[derive(Clone, Copy, Debug)]
struct Organelle {
    kind: OrganelleKind,
    a: [f64; 3],
    b: [f64; 3],
    r: f64,
    host: u32,
    /// Phase of the cristae stripes.
    phase: f64,
}

fn sub(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}
fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}
fn norm(a: [f64; 3]) -> [f64; 3] {
    let l = dot(a, a).sqrt().max(1e-12);
    [a[0] / l, a[1] / l, a[2] / l]
}
fn add_scaled(a: [f64; 3], b: [f64; 3], s: f64) -> [f64; 3] {
    [a[0] + b[0] * s, a[1] + b[1] * s, a[2] + b[2] * s]
}

/// Distance from p to segment a-b and the position t in [0, 1] of the nearest point.
fn seg_dist(p: [f64; 3], a: [f64; 3], b: [f64; 3]) -> (f64, f64) {
    let ab = sub(b, a);
    let l2 = dot(ab, ab);
    let t = if l2 > 0.0 {
        (dot(sub(p, a), ab) / l2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let c = add_scaled(a, ab, t);
    let d = sub(p, c);
    (dot(d, d).sqrt(), t)
}

struct Grid {
    /// Full (padded) volume shape z, y, x.
    z: usize,
    y: usize,
    x: usize,
    aniso: f64,
}

impl Grid {
    fn len(&self) -> usize {
        self.z * self.y * self.x
    }
    fn idx(&self, z: usize, y: usize, x: usize) -> usize {
        (z * self.y + y) * self.x + x
    }
}

/// Validates a config and the memory it needs.
fn check(cfg: &SynthConfig) -> Result<()> {
    let (z, y, x) = cfg.size;
    if z == 0 || y < 16 || x < 16 {
        return Err(Error::Invalid(format!(
            "synth size {z},{y},{x}: need at least 1 section of 16x16 pixels"
        )));
    }
    // Labels, depth and component ids are 4 bytes a voxel each, and label ids must fit u32.
    z.checked_mul(y + 64)
        .and_then(|v| v.checked_mul(x + 64))
        .filter(|&n| n < u32::MAX as usize / 2)
        .ok_or_else(|| {
            Error::Invalid(format!(
                "synth size {z},{y},{x} is too large (at most about 2e9 voxels)"
            ))
        })?;
    let pos = |v: f64| v.is_finite() && v > 0.0;
    let radius_ok = pos(cfg.radius.0) && cfg.radius.1 >= cfg.radius.0;
    let ok = pos(cfg.anisotropy)
        && radius_ok
        && (0.05..=0.95).contains(&cfg.fill_fraction)
        && (0.0..=8.0).contains(&cfg.blur)
        && (cfg.noise >= 0.0 && cfg.noise.is_finite())
        && (0.0..0.5).contains(&cfg.contrast_jitter)
        && (cfg.branch_rate >= 0.0 && cfg.branch_rate.is_finite());
    if !ok {
        return Err(Error::Invalid(format!(
            "synth config out of range: {cfg:?} (anisotropy > 0, 0 < radius min <= max, fill 0.05-0.95, blur 0-8, noise >= 0, contrast jitter 0-0.5)"
        )));
    }
    Ok(())
}

/// Generates a volume and its labels.
pub fn synthesize(cfg: &SynthConfig) -> Result<SynthVolume> {
    check(cfg)?;
    let (nz, ny, nx) = cfg.size;
    let mut rng = Rng::new(cfg.seed);

    // Artefacts first: they fix the margin that shifted sections read from.
    let (artefacts, offsets) = plan_artefacts(cfg, &mut rng);
    let pad_blur = (3.0 * cfg.blur).ceil() as usize + 1;
    let margin = 2 * cfg.max_shift + pad_blur + 1;
    let g = Grid {
        z: nz,
        y: ny + 2 * margin,
        x: nx + 2 * margin,
        aniso: cfg.anisotropy,
    };

    let mut labels = vec![0u32; g.len()];
    let mut depth = vec![f32::INFINITY; g.len()];
    let segs = grow_tubes(cfg, &g, &mut rng, &mut labels, &mut depth);
    fill_nearest(&g, &mut labels, &mut depth);
    drop(depth);
    let (labels, _) = connected_relabel(&g, &labels, 40);
    let organelles = place_organelles(&g, &segs, &labels, &mut rng);

    // Per-object brightness, from the label and the seed (independent of the section).
    let n_full = labels.iter().copied().max().unwrap_or(0) as usize;
    let mut obj_rng = Rng::new(cfg.seed ^ 0x0B1E_C7B5);
    let obj_base: Vec<f32> = (0..=n_full)
        .map(|_| (172.0 + 14.0 * obj_rng.normal()).clamp(135.0, 215.0) as f32)
        .collect();

    let section_contrast: Vec<(f32, f32)> = (0..nz)
        .map(|_| {
            let gain = (1.0 + cfg.contrast_jitter * rng.normal()).clamp(0.6, 1.4);
            let off = 100.0 * cfg.contrast_jitter * rng.normal();
            (gain as f32, off.clamp(-40.0, 40.0) as f32)
        })
        .collect();

    // Organelles by the sections they cross.
    let mut by_z: Vec<Vec<usize>> = vec![Vec::new(); nz];
    for (i, o) in organelles.iter().enumerate() {
        let lo = o.a[0].min(o.b[0]) - o.r;
        let hi = o.a[0].max(o.b[0]) + o.r;
        let z0 = (lo / g.aniso).ceil().max(0.0) as usize;
        let z1 = (hi / g.aniso).floor().min(nz as f64 - 1.0);
        if z1 < 0.0 {
            continue;
        }
        for list in &mut by_z[z0..=(z1 as usize)] {
            list.push(i);
        }
    }

    let plane = ny * nx;
    let mut image = vec![0u8; nz * plane];
    let mut out_labels = vec![0u32; nz * plane];
    image
        .par_chunks_mut(plane)
        .zip(out_labels.par_chunks_mut(plane))
        .enumerate()
        .for_each(|(z, (img, lab))| {
            let (oy, ox) = offsets[z];
            let oy = (margin as i64 + oy) as usize;
            let ox = (margin as i64 + ox) as usize;
            for y in 0..ny {
                let row = g.idx(z, y + oy, ox);
                lab[y * nx..(y + 1) * nx].copy_from_slice(&labels[row..row + nx]);
            }
            render_section(
                cfg,
                &g,
                &labels,
                z,
                (oy, ox),
                (ny, nx),
                pad_blur,
                &obj_base,
                &organelles,
                &by_z[z],
                section_contrast[z],
                img,
            );
        });

    for a in &artefacts {
        match a.kind {
            ArtefactKind::Blank => image[a.z * plane..(a.z + 1) * plane].fill(0),
            ArtefactKind::Duplicate { of } => {
                image.copy_within(of * plane..(of + 1) * plane, a.z * plane)
            }
            _ => {}
        }
    }

    // The evaluation truth is what the volume shows: the shifted section, the slip and the crop
    // can leave one tube in pieces that touch nowhere in this stack (no nearest-neighbour
    // affinity joins them, and no annotator of this stack could), so each 6-connected piece is
    // its own object. Nothing is merged: the pieces keep their voxels, so the image stays exact.
    let out_grid = Grid {
        z: nz,
        y: ny,
        x: nx,
        aniso: cfg.anisotropy,
    };
    let (out_labels, n_objects) = connected_relabel(&out_grid, &out_labels, 1);
    Ok(SynthVolume {
        image,
        labels: out_labels,
        shape: cfg.size,
        artefacts,
        section_contrast,
        n_objects,
    })
}

/// Chooses artefact sections and each section's (dy, dx) offset into the aligned tissue.
fn plan_artefacts(cfg: &SynthConfig, rng: &mut Rng) -> (Vec<Artefact>, Vec<(i64, i64)>) {
    let nz = cfg.size.0;
    let mut offsets = vec![(0i64, 0i64); nz];
    let mut arts = Vec::new();
    if !cfg.artefacts || nz < 12 || cfg.max_shift == 0 {
        return (arts, offsets);
    }
    let ms = cfg.max_shift as i64;
    let shift = |rng: &mut Rng| -> (i64, i64) {
        loop {
            let dy = rng.range(0, 2 * ms as usize) as i64 - ms;
            let dx = rng.range(0, 2 * ms as usize) as i64 - ms;
            // Shifts of a pixel or two hide in the blur; ask for a visible one.
            if dy.abs().max(dx.abs()) >= (ms / 2).max(1) {
                return (dy, dx);
            }
        }
    };
    let per = nz.div_ceil(48);
    // Distinct sections, none at 0 (a duplicate needs a predecessor) and none adjacent, so
    // each artefact is seen on its own.
    let mut used: Vec<usize> = Vec::new();
    let mut pick = |rng: &mut Rng| -> Option<usize> {
        for _ in 0..200 {
            let z = rng.range(2, nz - 2);
            if used.iter().all(|&u| u.abs_diff(z) > 1) {
                used.push(z);
                return Some(z);
            }
        }
        None
    };
    let slip_z = pick(rng);
    let mut singles = Vec::new();
    for _ in 0..per {
        singles.push((pick(rng), 0));
        singles.push((pick(rng), 1));
        singles.push((pick(rng), 2));
    }
    if let Some(z) = slip_z {
        let (dy, dx) = shift(rng);
        for o in offsets.iter_mut().skip(z) {
            *o = (dy, dx);
        }
        arts.push(Artefact {
            z,
            kind: ArtefactKind::Slip { dy, dx },
        });
    }
    for (z, k) in singles {
        let Some(z) = z else { continue };
        let kind = match k {
            0 => ArtefactKind::Blank,
            1 => ArtefactKind::Duplicate { of: z - 1 },
            _ => {
                let (dy, dx) = shift(rng);
                offsets[z].0 += dy;
                offsets[z].1 += dx;
                ArtefactKind::Shift { dy, dx }
            }
        };
        arts.push(Artefact { z, kind });
    }
    arts.sort_by_key(|a| a.z);
    (arts, offsets)
}

fn random_dir(rng: &mut Rng) -> [f64; 3] {
    // Neurites in serial-section data run more often across sections than within them.
    norm([1.6 * rng.normal(), rng.normal(), rng.normal()])
}

/// Grows tubes until `fill_fraction` of the volume is covered; paints labels and the relative
/// depth (distance / radius) of the owning tube.
fn grow_tubes(
    cfg: &SynthConfig,
    g: &Grid,
    rng: &mut Rng,
    labels: &mut [u32],
    depth: &mut [f32],
) -> Vec<Seg> {
    let ext = [g.z as f64 * g.aniso, g.y as f64, g.x as f64];
    let total = g.len();
    let mut covered = 0usize;
    let mut segs_all: Vec<Seg> = Vec::new();
    let mut label = 0u32;
    let (lr0, lr1) = (cfg.radius.0.ln(), cfg.radius.1.ln());
    let mut misses = 0;
    while (covered as f64) < cfg.fill_fraction * total as f64
        && misses < 200
        && label < u32::MAX / 4
    {
        // Start in empty space so that the tubes spread over the volume.
        let mut start = None;
        for _ in 0..30 {
            let zi = rng.range(0, g.z - 1);
            let yi = rng.range(0, g.y - 1);
            let xi = rng.range(0, g.x - 1);
            if depth[g.idx(zi, yi, xi)] >= 1.0 {
                start = Some([
                    (zi as f64 + rng.uniform() - 0.5) * g.aniso,
                    yi as f64 + rng.uniform() - 0.5,
                    xi as f64 + rng.uniform() - 0.5,
                ]);
                break;
            }
        }
        let Some(start) = start else {
            misses += 1;
            continue;
        };
        label += 1;
        let r0 = (lr0 + (lr1 - lr0) * rng.uniform()).exp();
        let dir = random_dir(rng);
        let mut segs = Vec::new();
        // Both ways from the start, then branches (queued with their own start and direction).
        let mut queue = vec![
            (start, dir, r0, 0u32),
            (start, [-dir[0], -dir[1], -dir[2]], r0, 0u32),
        ];
        while let Some((p, d, r, generation)) = queue.pop() {
            trace_tube(
                cfg, ext, rng, p, d, r, generation, label, &mut segs, &mut queue,
            );
        }
        let before = covered;
        for s in &segs {
            covered += paint_seg(g, s, labels, depth);
        }
        if covered == before {
            misses += 1;
        }
        segs_all.extend(segs);
    }
    segs_all
}

#[allow(clippy::too_many_arguments)]
fn trace_tube(
    cfg: &SynthConfig,
    ext: [f64; 3],
    rng: &mut Rng,
    mut p: [f64; 3],
    mut d: [f64; 3],
    r0: f64,
    generation: u32,
    label: u32,
    segs: &mut Vec<Seg>,
    queue: &mut Vec<([f64; 3], [f64; 3], f64, u32)>,
) {
    let mut turn = [0.0f64; 3];
    let mut logr = 0.0f64;
    let mut r = r0;
    let max_len = 3.0 * dot(ext, ext).sqrt() / (1.0 + generation as f64);
    let mut len = 0.0;
    while len < max_len {
        let step = (0.6 * r).clamp(1.0, 6.0);
        // Turning rate drifts slowly: smooth curves with changing curvature.
        for t in turn.iter_mut() {
            *t = 0.9 * *t + 0.03 * rng.normal();
        }
        d = norm(add_scaled(d, turn, step / 6.0));
        // Radius wanders around the tube's own size (varicosities, thinning).
        logr = 0.97 * logr + 0.05 * rng.normal();
        let rn = (r0 * logr.clamp(-0.5, 0.5).exp()).max(cfg.radius.0 * 0.6);
        let q = add_scaled(p, d, step);
        segs.push(Seg {
            a: p,
            b: q,
            ra: r,
            rb: rn,
            label,
        });
        p = q;
        r = rn;
        len += step;
        if (0..3).any(|k| p[k] < -r - 2.0 || p[k] > ext[k] + r + 2.0) {
            break;
        }
        if generation < 2 && rng.uniform() < cfg.branch_rate * step / 100.0 {
            // A branch leaves at 30-70 degrees and is thinner.
            let mut perp = norm([rng.normal(), rng.normal(), rng.normal()]);
            let dp = dot(perp, d);
            perp = norm(add_scaled(perp, d, -dp));
            let ang = (30.0 + 40.0 * rng.uniform()).to_radians();
            let nd = norm(add_scaled(
                [d[0] * ang.cos(), d[1] * ang.cos(), d[2] * ang.cos()],
                perp,
                ang.sin(),
            ));
            let br = (r * (0.45 + 0.3 * rng.uniform())).max(cfg.radius.0 * 0.7);
            queue.push((p, nd, br, generation + 1));
        }
    }
}

/// Paints one segment; returns how many voxels went from empty to covered.
fn paint_seg(g: &Grid, s: &Seg, labels: &mut [u32], depth: &mut [f32]) -> usize {
    let rmax = s.ra.max(s.rb);
    let lo = [
        s.a[0].min(s.b[0]) - rmax,
        s.a[1].min(s.b[1]) - rmax,
        s.a[2].min(s.b[2]) - rmax,
    ];
    let hi = [
        s.a[0].max(s.b[0]) + rmax,
        s.a[1].max(s.b[1]) + rmax,
        s.a[2].max(s.b[2]) + rmax,
    ];
    let range = |lo: f64, hi: f64, scale: f64, n: usize| -> Option<(usize, usize)> {
        let a = (lo / scale).ceil().max(0.0);
        let b = (hi / scale).floor().min(n as f64 - 1.0);
        (a <= b).then_some((a as usize, b as usize))
    };
    let (Some((z0, z1)), Some((y0, y1)), Some((x0, x1))) = (
        range(lo[0], hi[0], g.aniso, g.z),
        range(lo[1], hi[1], 1.0, g.y),
        range(lo[2], hi[2], 1.0, g.x),
    ) else {
        return 0;
    };
    // A segment is short (at most 6 px), so a ball around its middle bounds it tightly; rows
    // visit only the x range inside that ball (about half the bounding box).
    let mid = [
        0.5 * (s.a[0] + s.b[0]),
        0.5 * (s.a[1] + s.b[1]),
        0.5 * (s.a[2] + s.b[2]),
    ];
    let half = 0.5 * dot(sub(s.b, s.a), sub(s.b, s.a)).sqrt();
    let ball2 = (rmax + half) * (rmax + half);
    let mut newly = 0;
    for z in z0..=z1 {
        let pz = z as f64 * g.aniso;
        let dz2 = (pz - mid[0]) * (pz - mid[0]);
        for y in y0..=y1 {
            let rest = ball2 - dz2 - (y as f64 - mid[1]) * (y as f64 - mid[1]);
            if rest < 0.0 {
                continue;
            }
            let hw = rest.sqrt();
            let xa = ((mid[2] - hw).ceil().max(x0 as f64)) as usize;
            let xb = (mid[2] + hw).floor().min(x1 as f64);
            if xb < xa as f64 {
                continue;
            }
            let base = g.idx(z, y, 0);
            for x in xa..=(xb as usize) {
                let (d, t) = seg_dist([pz, y as f64, x as f64], s.a, s.b);
                let r = s.ra + (s.rb - s.ra) * t;
                let q = (d / r) as f32;
                let i = base + x;
                if q < 1.0 && q < depth[i] {
                    if depth[i] >= 1.0 {
                        newly += 1;
                    }
                    depth[i] = q;
                    labels[i] = s.label;
                }
            }
        }
    }
    newly
}

/// Every voxel not in a tube takes the label of the nearest tube voxel (exact Euclidean distance
/// with sections `aniso` pixels apart): separable feature transform (Felzenszwalb & Huttenlocher
/// lower envelope of parabolas, carrying the label of each parabola's site).
fn fill_nearest(g: &Grid, labels: &mut [u32], d2: &mut [f32]) {
    for (l, d) in labels.iter().zip(d2.iter_mut()) {
        *d = if *l != 0 { 0.0 } else { f32::INFINITY };
    }
    let plane = g.y * g.x;
    // x, then y, within each section.
    labels
        .par_chunks_mut(plane)
        .zip(d2.par_chunks_mut(plane))
        .for_each(|(lab, dd)| {
            let mut w = Envelope::new(g.x.max(g.y));
            let mut f = vec![0f32; g.x.max(g.y)];
            let mut fl = vec![0u32; g.x.max(g.y)];
            for y in 0..g.y {
                let r = y * g.x..(y + 1) * g.x;
                f[..g.x].copy_from_slice(&dd[r.clone()]);
                fl[..g.x].copy_from_slice(&lab[r.clone()]);
                w.run(&f[..g.x], &fl[..g.x], 1.0, &mut dd[r.clone()], &mut lab[r]);
            }
            let mut od = vec![0f32; g.y];
            let mut ol = vec![0u32; g.y];
            for x in 0..g.x {
                for y in 0..g.y {
                    f[y] = dd[y * g.x + x];
                    fl[y] = lab[y * g.x + x];
                }
                w.run(&f[..g.y], &fl[..g.y], 1.0, &mut od, &mut ol);
                for y in 0..g.y {
                    dd[y * g.x + x] = od[y];
                    lab[y * g.x + x] = ol[y];
                }
            }
        });
    if g.z > 1 {
        // Across sections, one row of y at a time: gather the (z, x) block, run each column.
        let s2 = g.aniso * g.aniso;
        let mut w = Envelope::new(g.z);
        let mut bd = vec![0f32; g.z * g.x];
        let mut bl = vec![0u32; g.z * g.x];
        let (mut f, mut fl, mut od, mut ol) = (
            vec![0f32; g.z],
            vec![0u32; g.z],
            vec![0f32; g.z],
            vec![0u32; g.z],
        );
        for y in 0..g.y {
            for z in 0..g.z {
                let s = g.idx(z, y, 0);
                bd[z * g.x..(z + 1) * g.x].copy_from_slice(&d2[s..s + g.x]);
                bl[z * g.x..(z + 1) * g.x].copy_from_slice(&labels[s..s + g.x]);
            }
            for x in 0..g.x {
                for z in 0..g.z {
                    f[z] = bd[z * g.x + x];
                    fl[z] = bl[z * g.x + x];
                }
                w.run(&f, &fl, s2, &mut od, &mut ol);
                for z in 0..g.z {
                    bd[z * g.x + x] = od[z];
                    bl[z * g.x + x] = ol[z];
                }
            }
            for z in 0..g.z {
                let s = g.idx(z, y, 0);
                d2[s..s + g.x].copy_from_slice(&bd[z * g.x..(z + 1) * g.x]);
                labels[s..s + g.x].copy_from_slice(&bl[z * g.x..(z + 1) * g.x]);
            }
        }
    }
}

/// Work space of the 1D lower-envelope transform.
struct Envelope {
    v: Vec<usize>,
    zb: Vec<f64>,
}

impl Envelope {
    fn new(n: usize) -> Self {
        Envelope {
            v: vec![0; n],
            zb: vec![0.0; n + 1],
        }
    }

    /// out_d[i] = min_q s2 (i - q)^2 + f[q]; out_l[i] = label of the minimising q.
    fn run(&mut self, f: &[f32], fl: &[u32], s2: f64, out_d: &mut [f32], out_l: &mut [u32]) {
        let n = f.len();
        let mut k: isize = -1;
        for q in 0..n {
            if !f[q].is_finite() {
                continue;
            }
            let fq = f[q] as f64 + s2 * (q * q) as f64;
            loop {
                if k < 0 {
                    k = 0;
                    self.v[0] = q;
                    self.zb[0] = f64::NEG_INFINITY;
                    self.zb[1] = f64::INFINITY;
                    break;
                }
                let vk = self.v[k as usize];
                let fv = f[vk] as f64 + s2 * (vk * vk) as f64;
                let s = (fq - fv) / (2.0 * s2 * (q - vk) as f64);
                if s <= self.zb[k as usize] {
                    k -= 1;
                    continue;
                }
                k += 1;
                self.v[k as usize] = q;
                self.zb[k as usize] = s;
                self.zb[k as usize + 1] = f64::INFINITY;
                break;
            }
        }
        if k < 0 {
            out_d.fill(f32::INFINITY);
            out_l.copy_from_slice(fl);
            return;
        }
        let mut j = 0usize;
        for i in 0..n {
            while self.zb[j + 1] < i as f64 {
                j += 1;
            }
            let q = self.v[j];
            let di = i as f64 - q as f64;
            out_d[i] = (s2 * di * di + f[q] as f64) as f32;
            out_l[i] = fl[q];
        }
    }
}

/// Splits labels into 6-connected components, merges components smaller than `min_size` into a
/// touching larger one, and numbers them 1..n. Returns the labels and n.
fn connected_relabel(g: &Grid, labels: &[u32], min_size: usize) -> (Vec<u32>, usize) {
    let n = g.len();
    let mut out = vec![0u32; n];
    let mut sizes: Vec<usize> = vec![0];
    let mut stack: Vec<usize> = Vec::new();
    let (sy, sz) = (g.x, g.x * g.y);
    for start in 0..n {
        if out[start] != 0 {
            continue;
        }
        let id = sizes.len() as u32;
        let l = labels[start];
        out[start] = id;
        stack.push(start);
        let mut size = 0;
        while let Some(i) = stack.pop() {
            size += 1;
            let x = i % g.x;
            let y = (i / sy) % g.y;
            let z = i / sz;
            let mut visit = |j: usize, out: &mut Vec<u32>| {
                if out[j] == 0 && labels[j] == l {
                    out[j] = id;
                    stack.push(j);
                }
            };
            if x > 0 {
                visit(i - 1, &mut out);
            }
            if x + 1 < g.x {
                visit(i + 1, &mut out);
            }
            if y > 0 {
                visit(i - sy, &mut out);
            }
            if y + 1 < g.y {
                visit(i + sy, &mut out);
            }
            if z > 0 {
                visit(i - sz, &mut out);
            }
            if z + 1 < g.z {
                visit(i + sz, &mut out);
            }
        }
        sizes.push(size);
    }
    // Slivers (where a tube was cut by others) merge into a neighbour; a few sweeps reach all.
    for _ in 0..6 {
        let mut changed = false;
        for i in 0..n {
            let c = out[i] as usize;
            if sizes[c] >= min_size {
                continue;
            }
            let x = i % g.x;
            let y = (i / sy) % g.y;
            let z = i / sz;
            let mut cand = [usize::MAX; 6];
            if x > 0 {
                cand[0] = i - 1;
            }
            if x + 1 < g.x {
                cand[1] = i + 1;
            }
            if y > 0 {
                cand[2] = i - sy;
            }
            if y + 1 < g.y {
                cand[3] = i + sy;
            }
            if z > 0 {
                cand[4] = i - sz;
            }
            if z + 1 < g.z {
                cand[5] = i + sz;
            }
            if let Some(j) = cand
                .iter()
                .filter(|&&j| j != usize::MAX)
                .copied()
                .find(|&j| sizes[out[j] as usize] >= min_size)
            {
                let t = out[j] as usize;
                sizes[t] += 1;
                sizes[c] -= 1;
                out[i] = t as u32;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    renumber(out)
}

/// Numbers the labels present 1..n in order of first appearance.
fn renumber(mut labels: Vec<u32>) -> (Vec<u32>, usize) {
    let max = labels.iter().copied().max().unwrap_or(0) as usize;
    let mut map = vec![0u32; max + 1];
    let mut next = 0u32;
    for l in labels.iter_mut() {
        let m = &mut map[*l as usize];
        if *m == 0 {
            next += 1;
            *m = next;
        }
        *l = *m;
    }
    (labels, next as usize)
}

/// Mitochondria along tubes thick enough to hold them, vesicle clusters in thinner ones.
fn place_organelles(g: &Grid, segs: &[Seg], labels: &[u32], rng: &mut Rng) -> Vec<Organelle> {
    let mut out = Vec::new();
    let host_at = |p: [f64; 3]| -> Option<u32> {
        let z = (p[0] / g.aniso).round();
        let (y, x) = (p[1].round(), p[2].round());
        if z < 0.0 || y < 0.0 || x < 0.0 || z >= g.z as f64 || y >= g.y as f64 || x >= g.x as f64 {
            return None;
        }
        Some(labels[g.idx(z as usize, y as usize, x as usize)])
    };
    for s in segs {
        let len = dot(sub(s.b, s.a), sub(s.b, s.a)).sqrt();
        let r = 0.5 * (s.ra + s.rb);
        let dir = norm(sub(s.b, s.a));
        if r >= 4.0 && rng.uniform() < len / 60.0 {
            let mr = (r * (0.3 + 0.2 * rng.uniform())).clamp(2.5, 7.0);
            let half = mr * (1.5 + 3.0 * rng.uniform());
            let off = norm([rng.normal(), rng.normal(), rng.normal()]);
            let c = add_scaled(s.a, off, (r - mr) * 0.5 * rng.uniform());
            let d = norm(add_scaled(dir, off, 0.25));
            if let Some(host) = host_at(c) {
                out.push(Organelle {
                    kind: OrganelleKind::Mito,
                    a: add_scaled(c, d, -half),
                    b: add_scaled(c, d, half),
                    r: mr,
                    host,
                    phase: rng.uniform() * 6.3,
                });
            }
        }
        if r < 8.0 && rng.uniform() < len / 260.0 {
            let n = rng.range(6, 18);
            for _ in 0..n {
                let off = norm([rng.normal(), rng.normal(), rng.normal()]);
                let c = add_scaled(s.a, off, r * 0.75 * rng.uniform().sqrt());
                if let Some(host) = host_at(c) {
                    out.push(Organelle {
                        kind: OrganelleKind::Vesicle,
                        a: c,
                        b: c,
                        r: 2.5 + 1.2 * rng.uniform(),
                        host,
                        phase: 0.0,
                    });
                }
            }
        }
    }
    out
}

/// Seeded per section so that sections can be rendered in any order (and in parallel).
fn section_rng(seed: u64, z: usize) -> Rng {
    Rng::new(seed ^ (z as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5EC7_1011)
}

fn gaussian_kernel(sigma: f64) -> Vec<f32> {
    if sigma <= 0.0 {
        return vec![1.0];
    }
    let r = (3.0 * sigma).ceil() as i64;
    let mut k: Vec<f32> = (-r..=r)
        .map(|i| (-(i * i) as f64 / (2.0 * sigma * sigma)).exp() as f32)
        .collect();
    let s: f32 = k.iter().sum();
    k.iter_mut().for_each(|v| *v /= s);
    k
}

/// Separable blur of an h x w image (edges clamped).
fn blur2d(img: &mut [f32], h: usize, w: usize, k: &[f32]) {
    if k.len() == 1 {
        return;
    }
    let r = (k.len() / 2) as isize;
    let mut tmp = vec![0f32; img.len()];
    for y in 0..h {
        let row = &img[y * w..(y + 1) * w];
        for x in 0..w {
            let mut s = 0.0;
            for (j, kv) in k.iter().enumerate() {
                let xx = (x as isize + j as isize - r).clamp(0, w as isize - 1) as usize;
                s += kv * row[xx];
            }
            tmp[y * w + x] = s;
        }
    }
    for y in 0..h {
        for x in 0..w {
            let mut s = 0.0;
            for (j, kv) in k.iter().enumerate() {
                let yy = (y as isize + j as isize - r).clamp(0, h as isize - 1) as usize;
                s += kv * tmp[yy * w + x];
            }
            img[y * w + x] = s;
        }
    }
}

/// Smooth noise in [-1, 1]-ish: a coarse random grid, bilinearly interpolated.
fn smooth_noise(rng: &mut Rng, h: usize, w: usize, cell: usize) -> Vec<f32> {
    let gh = h / cell + 2;
    let gw = w / cell + 2;
    let grid: Vec<f32> = (0..gh * gw).map(|_| rng.normal() as f32).collect();
    let mut out = vec![0f32; h * w];
    for y in 0..h {
        let fy = y as f32 / cell as f32;
        let y0 = fy as usize;
        let ty = fy - y0 as f32;
        for x in 0..w {
            let fx = x as f32 / cell as f32;
            let x0 = fx as usize;
            let tx = fx - x0 as f32;
            let a = grid[y0 * gw + x0] * (1.0 - tx) + grid[y0 * gw + x0 + 1] * tx;
            let b = grid[(y0 + 1) * gw + x0] * (1.0 - tx) + grid[(y0 + 1) * gw + x0 + 1] * tx;
            out[y * w + x] = a * (1.0 - ty) + b * ty;
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn render_section(
    cfg: &SynthConfig,
    g: &Grid,
    labels: &[u32],
    z: usize,
    (oy, ox): (usize, usize),
    (ny, nx): (usize, usize),
    pad: usize,
    obj_base: &[f32],
    organelles: &[Organelle],
    here: &[usize],
    (gain, offset): (f32, f32),
    out: &mut [u8],
) {
    let mut rng = section_rng(cfg.seed, z);
    // Work on the window plus a border so the blur sees real neighbours.
    let (wy0, wx0) = (oy - pad, ox - pad);
    let (h, w) = (ny + 2 * pad, nx + 2 * pad);
    let lab = |y: usize, x: usize| labels[g.idx(z, wy0 + y, wx0 + x)];
    let tex_coarse = smooth_noise(&mut rng, h, w, 9);
    let tex_fine = smooth_noise(&mut rng, h, w, 3);
    let mut img = vec![0f32; h * w];
    for y in 0..h {
        for x in 0..w {
            let l = lab(y, x);
            let mut v =
                obj_base[l as usize] + 9.0 * tex_coarse[y * w + x] + 6.0 * tex_fine[y * w + x];
            // Membrane: in-plane border (both sides get it, about 2 px before blur), fainter
            // where the object ends in the next or previous section (oblique membrane).
            let fy = wy0 + y;
            let fx = wx0 + x;
            let mut m: f32 = 0.0;
            if (fx > 0 && labels[g.idx(z, fy, fx - 1)] != l)
                || (fx + 1 < g.x && labels[g.idx(z, fy, fx + 1)] != l)
                || (fy > 0 && labels[g.idx(z, fy - 1, fx)] != l)
                || (fy + 1 < g.y && labels[g.idx(z, fy + 1, fx)] != l)
            {
                m = 1.0;
            }
            if z > 0 && labels[g.idx(z - 1, fy, fx)] != l {
                m += 0.25;
            }
            if z + 1 < g.z && labels[g.idx(z + 1, fy, fx)] != l {
                m += 0.25;
            }
            v -= 125.0 * m.min(1.0);
            img[y * w + x] = v;
        }
    }
    let pz = z as f64 * g.aniso;
    // Organelles that overlap darken as the darkest of them, not their sum.
    let mut org = vec![0f32; h * w];
    for &oi in here {
        let o = &organelles[oi];
        let y0 = ((o.a[1].min(o.b[1]) - o.r).floor() as i64 - wy0 as i64).max(0) as usize;
        let y1 = ((o.a[1].max(o.b[1]) + o.r).ceil() as i64 - wy0 as i64).min(h as i64 - 1);
        let x0 = ((o.a[2].min(o.b[2]) - o.r).floor() as i64 - wx0 as i64).max(0) as usize;
        let x1 = ((o.a[2].max(o.b[2]) + o.r).ceil() as i64 - wx0 as i64).min(w as i64 - 1);
        if y1 < 0 || x1 < 0 {
            continue;
        }
        for y in y0..=(y1 as usize) {
            for x in x0..=(x1 as usize) {
                if lab(y, x) != o.host {
                    continue;
                }
                let p = [pz, (wy0 + y) as f64, (wx0 + x) as f64];
                let (d, t) = seg_dist(p, o.a, o.b);
                let dark = match o.kind {
                    OrganelleKind::Mito => {
                        if d > o.r {
                            continue;
                        }
                        // Darker matrix, a darker double membrane, stripes across the axis.
                        let edge = if o.r - d < 1.3 { 35.0 } else { 0.0 };
                        let len = dot(sub(o.b, o.a), sub(o.b, o.a)).sqrt();
                        let cristae = 12.0 * (t * len * 1.3 + o.phase).sin().max(0.0);
                        45.0 + edge + cristae as f32 as f64
                    }
                    OrganelleKind::Vesicle => {
                        let dz = pz - o.a[0];
                        let rc2 = o.r * o.r - dz * dz;
                        if rc2 <= 0.5 {
                            continue;
                        }
                        let rc = rc2.sqrt();
                        let ring = (d - rc).abs();
                        if ring < 0.75 {
                            70.0
                        } else if d < rc {
                            12.0
                        } else {
                            continue;
                        }
                    }
                };
                let o = &mut org[y * w + x];
                *o = o.max(dark as f32);
            }
        }
    }
    for (v, o) in img.iter_mut().zip(&org) {
        *v -= o;
    }
    blur2d(&mut img, h, w, &gaussian_kernel(cfg.blur));
    let noise = cfg.noise as f32;
    for y in 0..ny {
        for x in 0..nx {
            let v = img[(y + pad) * w + x + pad];
            let v = (v - 128.0) * gain + 128.0 + offset + noise * rng.normal() as f32;
            out[y * nx + x] = v.round().clamp(0.0, 255.0) as u8;
        }
    }
}

/// How hard a label volume is to segment, computed from the labels alone so that a change to the
/// generator shows up in numbers (docs/PERFORMANCE.md, "Synthetic data").
#[derive(Clone, Debug, PartialEq)]
pub struct Difficulty {
    pub objects: usize,
    /// Voxels per object: min, 10th percentile, median, 90th percentile, max.
    pub size: [usize; 5],
    /// Sections an object spans (last z - first z + 1), same quantiles.
    pub z_extent: [usize; 5],
    /// Fraction of voxels with z > 0 whose z - 1 neighbour has the same label (the z affinity's
    /// positive rate: low means objects change much between sections).
    pub z_same: f64,
    /// Same for the y - 1 and x - 1 neighbours together (the in-plane positive rate).
    pub xy_same: f64,
}

fn quantiles(mut v: Vec<usize>) -> [usize; 5] {
    if v.is_empty() {
        return [0; 5];
    }
    v.sort_unstable();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    [at(0.0), at(0.1), at(0.5), at(0.9), at(1.0)]
}

/// Object count, size and z-extent distributions and neighbour agreement of `labels` (Z, Y, X);
/// label 0 is not an object and never counts as agreement.
pub fn difficulty(labels: &[u32], shape: (usize, usize, usize)) -> Difficulty {
    let (_, ny, nx) = shape;
    let plane = ny * nx;
    let max = labels.iter().copied().max().unwrap_or(0) as usize;
    let mut size = vec![0usize; max + 1];
    let mut z_lo = vec![usize::MAX; max + 1];
    let mut z_hi = vec![0usize; max + 1];
    let (mut z_same, mut z_pairs, mut xy_same, mut xy_pairs) = (0u64, 0u64, 0u64, 0u64);
    for (i, &l) in labels.iter().enumerate() {
        let (z, y, x) = (i / plane, i / nx % ny, i % nx);
        let l = l as usize;
        size[l] += 1;
        z_lo[l] = z_lo[l].min(z);
        z_hi[l] = z_hi[l].max(z);
        let same = |j: usize| (l != 0 && labels[j] as usize == l) as u64;
        if z > 0 {
            z_pairs += 1;
            z_same += same(i - plane);
        }
        if y > 0 {
            xy_pairs += 1;
            xy_same += same(i - nx);
        }
        if x > 0 {
            xy_pairs += 1;
            xy_same += same(i - 1);
        }
    }
    let ids: Vec<usize> = (1..=max).filter(|&l| size[l] > 0).collect();
    let frac = |a: u64, n: u64| if n == 0 { 0.0 } else { a as f64 / n as f64 };
    Difficulty {
        objects: ids.len(),
        size: quantiles(ids.iter().map(|&l| size[l]).collect()),
        z_extent: quantiles(ids.iter().map(|&l| z_hi[l] - z_lo[l] + 1).collect()),
        z_same: frac(z_same, z_pairs),
        xy_same: frac(xy_same, xy_pairs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn difficulty_counts_by_hand() {
        // 2 sections of 2x2: object 1 fills section 0 and one voxel of section 1, object 2 the
        // rest of section 1. z pairs 4, same 1; in-plane pairs 8, same 4 (section 0) + 2.
        let labels = [1, 1, 1, 1, 1, 2, 2, 2];
        let d = difficulty(&labels, (2, 2, 2));
        assert_eq!(d.objects, 2);
        assert_eq!(d.size, [3, 3, 5, 5, 5]);
        assert_eq!(d.z_extent, [1, 1, 2, 2, 2]);
        assert_eq!(d.z_same, 0.25);
        assert_eq!(d.xy_same, 6.0 / 8.0);
    }

    #[test]
    fn envelope_matches_brute_force() {
        let f = [
            f32::INFINITY,
            4.0,
            f32::INFINITY,
            0.0,
            f32::INFINITY,
            f32::INFINITY,
            1.0,
        ];
        let fl = [0, 7, 0, 8, 0, 0, 9];
        let mut e = Envelope::new(f.len());
        let (mut od, mut ol) = (vec![0f32; f.len()], vec![0u32; f.len()]);
        e.run(&f, &fl, 2.0, &mut od, &mut ol);
        for i in 0..f.len() {
            let (mut best, mut bl) = (f64::INFINITY, 0);
            for q in 0..f.len() {
                let v = 2.0 * ((i as f64 - q as f64).powi(2)) + f[q] as f64;
                if v < best {
                    best = v;
                    bl = fl[q];
                }
            }
            assert_eq!(od[i] as f64, best, "at {i}");
            assert_eq!(ol[i], bl, "label at {i}");
        }
    }
}

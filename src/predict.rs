//! Sliding-window inference: patches overlapping by half, each weighted by a bump function that
//! falls to almost zero at the patch border (where a "same"-padded network sees zeros instead of
//! context), summed and normalised by the summed weights. Optional 16-fold test-time augmentation:
//! every combination of flips in z, y, x and the y/x transpose, each inverted on the output and
//! averaged.

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::scheduler::Executor;
use crate::tensor::Element;

/// Affinity offsets (z, y, x) of the output channels, ENGINEERING.md section 1.
pub const OFFSETS: [(usize, usize, usize); 12] = [
    (1, 0, 0),
    (0, 1, 0),
    (0, 0, 1),
    (2, 0, 0),
    (0, 3, 0),
    (0, 0, 3),
    (3, 0, 0),
    (0, 9, 0),
    (0, 0, 9),
    (4, 0, 0),
    (0, 27, 0),
    (0, 0, 27),
];

/// Window starts along one axis: every `stride`, the last one flush with the end.
pub fn starts(len: usize, patch: usize) -> Result<Vec<usize>> {
    if patch > len {
        return Err(Error::Invalid(format!(
            "patch size {patch} exceeds the volume size {len} along an axis; use a smaller patch"
        )));
    }
    let stride = (patch / 2).max(1);
    let mut v: Vec<usize> = (0..=len - patch).step_by(stride).collect();
    if *v.last().unwrap() != len - patch {
        v.push(len - patch);
    }
    Ok(v)
}

/// 1-D bump exp(-1 / (t (1 - t))) at t = (i + 1) / (n + 1), scaled to peak 1.
fn bump_1d(n: usize) -> Vec<f32> {
    let f = |t: f64| (-1.0 / (t * (1.0 - t))).exp();
    let peak = f(0.5);
    (0..n)
        .map(|i| (f((i as f64 + 1.0) / (n as f64 + 1.0)) / peak) as f32)
        .collect()
}

/// The blending weight of a patch: the product of the 1-D bumps (never exactly zero).
pub fn bump(d: usize, h: usize, w: usize) -> Vec<f32> {
    let (bz, by, bx) = (bump_1d(d), bump_1d(h), bump_1d(w));
    let mut out = Vec::with_capacity(d * h * w);
    for z in &bz {
        for y in &by {
            for x in &bx {
                out.push((z * y * x).max(1e-12));
            }
        }
    }
    out
}

/// One of the 16 flip/transpose combinations: bits 0-2 flip z, y, x; bit 3 transposes y and x.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transform(pub u8);

impl Transform {
    fn flip(&self, axis: usize) -> bool {
        self.0 & (1 << axis) != 0
    }
    fn transpose(&self) -> bool {
        self.0 & 8 != 0
    }
    /// Where voxel (z, y, x) of the original patch lands in the transformed patch (n: sizes).
    fn map(&self, p: [usize; 3], n: [usize; 3]) -> [usize; 3] {
        let mut q = p;
        for a in 0..3 {
            if self.flip(a) {
                q[a] = n[a] - 1 - q[a];
            }
        }
        if self.transpose() {
            q.swap(1, 2);
        }
        q
    }
}

/// Apply a transform to a single-channel patch (d, h, w); transposing needs h == w.
pub fn transform_image(t: Transform, img: &[f32], n: [usize; 3]) -> Vec<f32> {
    let mut out = vec![0.0; img.len()];
    let m = if t.transpose() { [n[0], n[2], n[1]] } else { n };
    for z in 0..n[0] {
        for y in 0..n[1] {
            for x in 0..n[2] {
                let q = t.map([z, y, x], n);
                out[(q[0] * m[1] + q[1]) * m[2] + q[2]] = img[(z * n[1] + y) * n[2] + x];
            }
        }
    }
    out
}

/// Bring affinities predicted on a transformed patch back to the original frame. An edge of
/// channel c joins p - o and p; after flipping axis a it joins q and q + o_a, so it is stored at
/// the transformed position of p - o (shifted by the offset). Transposing swaps y and x channels.
pub fn untransform_affinities(
    t: Transform,
    aff: &[f32],
    channels: usize,
    n: [usize; 3],
) -> Vec<f32> {
    let sp = n[0] * n[1] * n[2];
    let m = if t.transpose() { [n[0], n[2], n[1]] } else { n };
    let mut out = vec![0.0; aff.len()];
    for c in 0..channels {
        let o = OFFSETS[c];
        let o = [o.0, o.1, o.2];
        // The channel in the transformed frame that holds this edge direction.
        let tc = if t.transpose() { swap_yx_channel(c) } else { c };
        for z in 0..n[0] {
            for y in 0..n[1] {
                for x in 0..n[2] {
                    let p = [z, y, x];
                    let mut src = p;
                    let mut inside = true;
                    for a in 0..3 {
                        if t.flip(a) && o[a] > 0 {
                            if p[a] < o[a] {
                                inside = false;
                            } else {
                                src[a] = p[a] - o[a];
                            }
                        }
                    }
                    if !inside {
                        continue;
                    }
                    let q = t.map(src, n);
                    out[c * sp + (z * n[1] + y) * n[2] + x] =
                        aff[tc * sp + (q[0] * m[1] + q[1]) * m[2] + q[2]];
                }
            }
        }
    }
    out
}

/// Channel index of the same offset with y and x exchanged (z channels stay).
fn swap_yx_channel(c: usize) -> usize {
    match c % 3 {
        1 => c + 1,
        2 => c - 1,
        _ => c,
    }
}

pub struct PredictOptions {
    pub patch: (usize, usize, usize),
    pub tta: bool,
}

/// Affinities (channels, Z, Y, X) for a whole volume held in memory, image values in [0, 1].
pub fn predict_volume<B: Backend>(
    b: &B,
    ex: &mut Executor<B>,
    image: &[f32],
    shape: (usize, usize, usize),
    channels: usize,
    opt: &PredictOptions,
    progress: impl FnMut(usize, usize),
) -> Result<Vec<f32>> {
    let plane = shape.1 * shape.2;
    let sp = shape.0 * plane;
    let mut out = vec![0.0f32; channels * sp];
    let read = |z0: usize, d: usize| Ok(image[z0 * plane..(z0 + d) * plane].to_vec());
    let write = |z: usize, p: &[f32]| {
        for c in 0..channels {
            out[c * sp + z * plane..][..plane].copy_from_slice(&p[c * plane..(c + 1) * plane]);
        }
        Ok(())
    };
    predict_stream(b, ex, shape, channels, opt, read, write, progress)?;
    Ok(out)
}

/// Affinities (channels, d, h, w) of one window `patch` (d, h, w), averaged over `transforms`.
pub fn predict_window<B: Backend>(
    b: &B,
    ex: &mut Executor<B>,
    patch: &[f32],
    n: [usize; 3],
    channels: usize,
    transforms: &[Transform],
) -> Result<Vec<f32>> {
    let mut avg = vec![0.0f32; channels * n[0] * n[1] * n[2]];
    for &t in transforms {
        let input: Vec<B::Elem> = transform_image(t, patch, n)
            .into_iter()
            .map(|v| B::Elem::from_f64(v as f64))
            .collect();
        let out: Vec<f32> = ex
            .predict(b, &input)?
            .iter()
            .map(|v| v.to_f64() as f32)
            .collect();
        let back = untransform_affinities(t, &out, channels, n);
        for (a, v) in avg.iter_mut().zip(back) {
            *a += v / transforms.len() as f32;
        }
    }
    Ok(avg)
}

/// The transforms averaged by test-time augmentation (all 16), or the identity alone.
pub fn transforms(tta: bool) -> Vec<Transform> {
    if tta {
        (0..16).map(Transform).collect()
    } else {
        vec![Transform(0)]
    }
}

/// Sliding-window prediction that holds only one window depth of sections at a time: `read(z0, d)`
/// returns sections z0..z0+d of the image (d * Y * X values), and `write(z, plane)` receives each
/// finished section of affinities (channels * Y * X values) in increasing z. Volumes larger than
/// memory stream through it by section.
#[allow(clippy::too_many_arguments)]
pub fn predict_stream<B: Backend>(
    b: &B,
    ex: &mut Executor<B>,
    shape: (usize, usize, usize),
    channels: usize,
    opt: &PredictOptions,
    mut read: impl FnMut(usize, usize) -> Result<Vec<f32>>,
    mut write: impl FnMut(usize, &[f32]) -> Result<()>,
    mut progress: impl FnMut(usize, usize),
) -> Result<()> {
    let (pd, ph, pw) = opt.patch;
    let (zs, ys, xs) = (
        starts(shape.0, pd)?,
        starts(shape.1, ph)?,
        starts(shape.2, pw)?,
    );
    if opt.tta && ph != pw {
        return Err(Error::Invalid(format!(
            "test-time augmentation transposes y and x: the patch must be square in y, x (got {ph}x{pw})"
        )));
    }
    let (ny, nx) = (shape.1, shape.2);
    // One window depth of sections is held at once: the weighted sums (channels planes), their
    // weights, the image slab and the reader's copy before conversion (at most 8 bytes a voxel).
    crate::alloc::check(
        &format!("predict: {pd} sections of {ny}x{nx} in flight"),
        &[pd, ny, nx, channels + 4],
        4,
    )?;
    let plane = ny * nx;
    let weight = bump(pd, ph, pw);
    let n = [pd, ph, pw];
    let psp = pd * ph * pw;
    let total = zs.len() * ys.len() * xs.len();
    let mut done = 0;
    let transforms = transforms(opt.tta);
    // Sections not yet written: their weighted sums (channels planes each) and summed weights.
    let mut pending: std::collections::VecDeque<(usize, Vec<f32>, Vec<f32>)> = Default::default();
    let mut patch = vec![0.0f32; psp];
    for (zi, &z0) in zs.iter().enumerate() {
        while pending.back().is_none_or(|p| p.0 + 1 < z0 + pd) {
            let z = pending.back().map_or(z0, |p| p.0 + 1);
            pending.push_back((z, vec![0.0; channels * plane], vec![0.0; plane]));
        }
        let slab = read(z0, pd)?;
        if slab.len() != pd * plane {
            return Err(Error::shape(
                "predict",
                format!("read {} values for {pd} sections of {ny}x{nx}", slab.len()),
            ));
        }
        for &y0 in &ys {
            for &x0 in &xs {
                for z in 0..pd {
                    for y in 0..ph {
                        let src = (z * ny + y0 + y) * nx + x0;
                        patch[(z * ph + y) * pw..][..pw].copy_from_slice(&slab[src..src + pw]);
                    }
                }
                let avg = predict_window(b, ex, &patch, n, channels, &transforms)?;
                let first = pending.front().unwrap().0;
                for z in 0..pd {
                    let (_, acc, wsum) = &mut pending[z0 + z - first];
                    for y in 0..ph {
                        for x in 0..pw {
                            let i = (z * ph + y) * pw + x;
                            let g = (y0 + y) * nx + x0 + x;
                            wsum[g] += weight[i];
                            for c in 0..channels {
                                acc[c * plane + g] += weight[i] * avg[c * psp + i];
                            }
                        }
                    }
                }
                done += 1;
                progress(done, total);
            }
        }
        // Sections below the next window's start receive no more patches: finish them.
        let next = zs.get(zi + 1).copied().unwrap_or(shape.0);
        while pending.front().is_some_and(|p| p.0 < next) {
            let (z, mut acc, wsum) = pending.pop_front().unwrap();
            for c in 0..channels {
                for (a, w) in acc[c * plane..(c + 1) * plane].iter_mut().zip(&wsum) {
                    *a /= w;
                }
            }
            write(z, &acc)?;
        }
    }
    Ok(())
}

//! conv3d forward in f32 as a direct convolution with AVX-512 register blocking.
//!
//! Why: the im2col path writes every input value `taps` times, then the GEMM packs it again, and
//! for the narrow convolutions of the reversible blocks (14 output channels at the first scale)
//! that traffic costs as much as the arithmetic. Here a block of up to 14 output channels times
//! 32 voxels of one output row stays in 28 zmm accumulators while the loop runs over input
//! channels and taps; each input vector loaded feeds 14 FMAs, each weight is an embedded
//! broadcast. Zero padding costs nothing: out-of-range rows are skipped and the row edges are
//! masked loads, which never touch the masked-off addresses.
//!
//! Each output is summed over (ci, kd, kh, kw) in that fixed order, so results are deterministic;
//! they differ from the im2col path only by rounding (tests hold both to a naive reference).

use super::mem::SendPtr;
use super::storage::{as_compute, Stored};
use crate::ops::conv3d::Conv3dGeom;
use rayon::prelude::*;
use std::arch::x86_64::*;

/// Output channels per register block: 14 x 2 vectors = 28 of the 32 zmm registers.
const MAX_CB: usize = 14;
/// Widest kernel along x: its half must fit in the left pad of a packed row.
const MAX_KW: usize = 7;
/// Vectors of 16 voxels per register block.
const VB: usize = 2;

/// Whether the direct kernel can run on this CPU for this geometry.
pub fn supported(g: &Conv3dGeom) -> bool {
    g.kw <= MAX_KW && std::is_x86_feature_detected!("avx512f")
}

/// Whether it should: a row is covered by whole 32-voxel blocks, so rows that leave more than a
/// fifth of the lanes idle (W = 40: 37%) run faster through im2col, which packs rows together.
/// Measured with `revseg bench ops` (docs/PERFORMANCE.md).
pub fn worthwhile(g: &Conv3dGeom) -> bool {
    supported(g) && g.w.next_multiple_of(16 * VB) * 4 <= g.w * 5
}

/// y = conv(x, w) (+ bias), or y += ... with `accumulate`; w is (Co, Ci, kd, kh, kw).
/// Panics if `supported(g)` is false (callers check it).
///
/// x and y may be stored as bf16 (conv3d_bf16.rs's `Path::Widened`): input rows are widened to
/// f32 as they are packed, and each output row is computed into an f32 row buffer, then rounded
/// into y. The sums are the f32 path's, in the same order.
pub fn forward<X: Stored<f32>, O: Stored<f32>>(
    g: &Conv3dGeom,
    x: &[X],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [O],
    accumulate: bool,
) {
    assert!(supported(g), "conv3d_avx512 called where it cannot run");
    let taps = g.taps();
    let sp = g.spatial();
    assert!(x.len() >= g.n * g.ci * sp && y.len() >= g.n * g.co * sp);
    assert!(w.len() >= g.co * g.ci * taps);
    // Weights as [ci][tap][co]: the broadcasts of one (ci, tap) step are adjacent.
    let mut wr = vec![0.0f32; g.co * g.ci * taps];
    for co in 0..g.co {
        for ci in 0..g.ci {
            for t in 0..taps {
                wr[(ci * taps + t) * g.co + co] = w[(co * g.ci + ci) * taps + t];
            }
        }
    }
    let blocks = co_blocks(g.co);
    let stride = pack_stride(g);
    let direct = std::any::TypeId::of::<O>() == std::any::TypeId::of::<f32>();
    let yp = SendPtr(y.as_mut_ptr());
    let rows = g.d * g.h;
    (0..g.n * rows)
        .into_par_iter()
        .with_min_len(2)
        .for_each_init(
            || {
                let buf = AlignedBuf::zeroed(g.ci * g.kd * g.kh * stride);
                let out = if direct {
                    Vec::new()
                } else {
                    vec![0f32; g.co * g.w]
                };
                (buf, Vec::with_capacity(g.ci * taps), out)
            },
            |(buf, steps, out), task| {
                let (n, row) = (task / rows, task % rows);
                let xn = &x[n * g.ci * sp..(n + 1) * g.ci * sp];
                pack_rows(g, xn, row, stride, buf.as_mut_slice(), steps);
                for &(co0, cb) in &blocks {
                    // SAFETY: avx512f was detected in `supported`; this task alone writes output
                    // row `row` of sample n; the packed rows have PAD_L + round_up(W, 32) + PAD_R
                    // readable elements, which covers every load below. With `direct`, O is f32.
                    unsafe {
                        let b = bias.map(|b| b.as_ptr().add(co0));
                        if direct {
                            let yrow =
                                (yp.get() as *mut f32).add((n * g.co + co0) * sp + row * g.w);
                            dispatch(
                                buf.as_slice(),
                                steps,
                                &wr,
                                co0,
                                cb,
                                yrow,
                                sp,
                                b,
                                accumulate,
                                g,
                            );
                        } else {
                            let orow = out.as_mut_ptr().add(co0 * g.w);
                            dispatch(buf.as_slice(), steps, &wr, co0, cb, orow, g.w, b, false, g);
                        }
                    }
                }
                if !direct {
                    for co in 0..g.co {
                        // SAFETY: as above, this task alone writes this row.
                        let yr = unsafe {
                            std::slice::from_raw_parts_mut(
                                yp.get().add((n * g.co + co) * sp + row * g.w),
                                g.w,
                            )
                        };
                        let src = &out[co * g.w..(co + 1) * g.w];
                        if accumulate {
                            yr.iter_mut()
                                .zip(src)
                                .for_each(|(o, &v)| *o = O::store(o.load() + v));
                        } else {
                            yr.iter_mut().zip(src).for_each(|(o, &v)| *o = O::store(v));
                        }
                    }
                }
            },
        );
}

/// Zeros left of each packed row: one full vector, so the row's data starts 64-byte aligned.
const PAD_L: usize = 16;

/// Elements per packed input row: left pad, the row rounded up to whole voxel blocks, right pad.
fn pack_stride(g: &Conv3dGeom) -> usize {
    PAD_L + g.w.next_multiple_of(16 * VB) + 16
}

/// A zeroed f32 buffer whose first element is 64-byte aligned.
struct AlignedBuf {
    data: Vec<f32>,
    start: usize,
}

impl AlignedBuf {
    fn zeroed(len: usize) -> Self {
        let data = vec![0.0f32; len + 16];
        let start = data.as_ptr().align_offset(64).min(16);
        Self { data, start }
    }
    fn as_slice(&self) -> &[f32] {
        &self.data[self.start..]
    }
    fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.data[self.start..]
    }
}

/// Start, within one input channel, of the input row that output row `row` reads at kernel
/// offset (a, b); None where that row lies outside the volume (zero padding).
fn input_row(g: &Conv3dGeom, row: usize, a: usize, b: usize) -> Option<usize> {
    let (zz, y2) = (row / g.h + a, row % g.h + b);
    let (pd, ph) = (g.kd / 2, g.kh / 2);
    (zz >= pd && zz - pd < g.d && y2 >= ph && y2 - ph < g.h)
        .then(|| ((zz - pd) * g.h + (y2 - ph)) * g.w)
}

/// Output rows ahead of the one being computed whose input rows are prefetched.
const PREFETCH_AHEAD: usize = 4;

/// Bring the input rows that output row `row` reads first (its last kh offset; the others were
/// read by the rows before it) into L2 ahead of time. The kd x ci rows lie in that many separate
/// streams, more than the hardware prefetchers follow. Measured at 14 channels, 18x160x160:
/// 158-160 GFLOP/s without, 169-173 with 4 rows ahead into L2 (four alternated runs); into L1 or
/// 16 rows ahead is slower.
fn prefetch_rows<X>(g: &Conv3dGeom, xn: &[X], row: usize) {
    if row >= g.d * g.h {
        return;
    }
    let sp = g.spatial();
    for ci in 0..g.ci {
        for a in 0..g.kd {
            let Some(start) = input_row(g, row, a, g.kh - 1) else {
                continue;
            };
            for i in (0..g.w).step_by(16) {
                // SAFETY: a prefetch of an address inside x; it has no other effect.
                unsafe { _mm_prefetch::<_MM_HINT_T1>(xn[ci * sp + start + i..].as_ptr().cast()) };
            }
        }
    }
}

/// Copy the input rows that output row `row` reads, for every (ci, kd, kh), into `buf` at
/// 64-byte aligned positions with zero margins, so the kernel's loads are unmasked and at most
/// one in three crosses a cache line (reading the arena directly, every load can). Fills `steps`
/// with the kernel's steps: for each (ci, kd, kh, kw) whose input row lies inside the volume, the offset
/// of its first input in `buf` (before the left margin shift) and of its weights in [ci][tap][co].
fn pack_rows<X: Stored<f32>>(
    g: &Conv3dGeom,
    xn: &[X],
    row: usize,
    stride: usize,
    buf: &mut [f32],
    steps: &mut Vec<(u32, u32)>,
) {
    let (w, sp, khw) = (g.w, g.spatial(), g.kd * g.kh);
    let rows: Vec<(usize, usize)> = (0..khw)
        .filter_map(|ab| input_row(g, row, ab / g.kh, ab % g.kh).map(|r| (ab, r)))
        .collect();
    for ci in 0..g.ci {
        for &(ab, start) in &rows {
            let dst = &mut buf[(ci * khw + ab) * stride..][..stride];
            // The margins stay zero from allocation: only [PAD_L, PAD_L + w) is ever written.
            let src = &xn[ci * sp + start..][..w];
            match as_compute::<f32, X>(src) {
                Some(src) => dst[PAD_L..PAD_L + w].copy_from_slice(src),
                None => dst[PAD_L..PAD_L + w]
                    .iter_mut()
                    .zip(src)
                    .for_each(|(d, &v)| *d = v.load()),
            }
        }
    }
    prefetch_rows(g, xn, row + PREFETCH_AHEAD);
    steps.clear();
    for ci in 0..g.ci {
        for &(ab, _) in &rows {
            for c in 0..g.kw {
                let xo = (ci * khw + ab) * stride + c;
                let wo = ((ci * khw + ab) * g.kw + c) * g.co;
                steps.push((xo as u32, wo as u32));
            }
        }
    }
}

/// Split `co` into near-equal blocks of at most MAX_CB channels: (first channel, count).
fn co_blocks(co: usize) -> Vec<(usize, usize)> {
    let nb = co.div_ceil(MAX_CB);
    let (base, rem) = (co / nb, co % nb);
    let mut out = Vec::with_capacity(nb);
    let mut c0 = 0;
    for i in 0..nb {
        let cb = base + usize::from(i < rem);
        out.push((c0, cb));
        c0 += cb;
    }
    out
}

#[allow(clippy::too_many_arguments)]
unsafe fn dispatch(
    buf: &[f32],
    steps: &[(u32, u32)],
    wr: &[f32],
    co0: usize,
    cb: usize,
    yrow: *mut f32,
    ystride: usize,
    bias: Option<*const f32>,
    accumulate: bool,
    g: &Conv3dGeom,
) {
    macro_rules! arms {
        ($($n:literal)*) => {
            match cb {
                $($n => row_block::<$n>(g, buf, steps, wr, co0, yrow, ystride, bias, accumulate),)*
                _ => unreachable!("channel block of {cb}"),
            }
        };
    }
    arms!(1 2 3 4 5 6 7 8 9 10 11 12 13 14)
}

/// Lanes `start..start+16` of a row of `w` voxels that exist, as a mask.
#[inline(always)]
fn lane_mask(start: isize, w: usize) -> u16 {
    let lo = (-start).clamp(0, 16) as u32;
    let hi = (w as isize - start).clamp(0, 16) as u32;
    if hi <= lo {
        return 0;
    }
    let upto = |n: u32| if n == 16 { u16::MAX } else { (1u16 << n) - 1 };
    upto(hi) & !upto(lo)
}

/// One output row of CB channels starting at `co0` from the packed input rows in `buf`;
/// `yrow` points at (co0, row, x = 0), the next channel's row `ystride` further.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn row_block<const CB: usize>(
    g: &Conv3dGeom,
    buf: &[f32],
    steps: &[(u32, u32)],
    wr: &[f32],
    co0: usize,
    yrow: *mut f32,
    ystride: usize,
    bias: Option<*const f32>,
    accumulate: bool,
) {
    let w = g.w;
    let bp = buf.as_ptr().add(PAD_L - g.kw / 2);
    let wp = wr.as_ptr().add(co0);
    for x0 in (0..w).step_by(16 * VB) {
        let mut acc = [[_mm512_setzero_ps(); VB]; CB];
        // One flat loop over (ci, kd, kh, kw): nested loops here made the compiler spill the
        // accumulators at every inner-loop exit.
        for &(xo, wo) in steps {
            let xr = bp.add(xo as usize + x0);
            let mut xv = [_mm512_setzero_ps(); VB];
            for (v, xvv) in xv.iter_mut().enumerate() {
                *xvv = _mm512_loadu_ps(xr.add(16 * v));
            }
            let wk = wp.add(wo as usize);
            for (k, acc_k) in acc.iter_mut().enumerate() {
                let wv = _mm512_set1_ps(*wk.add(k));
                for v in 0..VB {
                    acc_k[v] = _mm512_fmadd_ps(wv, xv[v], acc_k[v]);
                }
            }
        }
        for (k, acc_k) in acc.iter().enumerate() {
            let yk = yrow.add(k * ystride + x0);
            for (v, &a) in acc_k.iter().enumerate() {
                let m = lane_mask((x0 + 16 * v) as isize, w);
                if m == 0 {
                    continue;
                }
                let mut r = a;
                if let Some(b) = bias {
                    r = _mm512_add_ps(r, _mm512_set1_ps(*b.add(k)));
                }
                let yv = yk.wrapping_add(16 * v);
                if accumulate {
                    r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(m, yv));
                }
                _mm512_mask_storeu_ps(yv, m, r);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_blocks_cover_every_channel_once() {
        for co in 1..=200 {
            let b = co_blocks(co);
            assert_eq!(b.iter().map(|&(_, n)| n).sum::<usize>(), co);
            assert!(b.iter().all(|&(_, n)| (1..=MAX_CB).contains(&n)));
            assert!(b.windows(2).all(|p| p[0].0 + p[0].1 == p[1].0));
        }
    }

    #[test]
    fn lane_masks_at_row_edges() {
        assert_eq!(lane_mask(-1, 40), 0xFFFE);
        assert_eq!(lane_mask(0, 40), 0xFFFF);
        assert_eq!(lane_mask(32, 40), 0x00FF);
        assert_eq!(lane_mask(33, 40), 0x007F);
        assert_eq!(lane_mask(40, 40), 0);
        assert_eq!(lane_mask(-16, 40), 0);
    }
}

#[cfg(test)]
mod reference {
    use super::*;
    use crate::rng::Rng;

    /// Sum over (ci, taps) in f64, straight from the definition.
    fn naive(g: &Conv3dGeom, x: &[f32], w: &[f32], bias: Option<&[f32]>, y0: &[f32]) -> Vec<f64> {
        let (d, h, wd) = (g.d as isize, g.h as isize, g.w as isize);
        let mut out = vec![0.0f64; g.n * g.co * g.spatial()];
        for n in 0..g.n {
            for co in 0..g.co {
                for z in 0..d {
                    for yy in 0..h {
                        for xx in 0..wd {
                            let mut s = bias.map_or(0.0, |b| b[co] as f64);
                            for ci in 0..g.ci {
                                for a in 0..g.kd as isize {
                                    for b in 0..g.kh as isize {
                                        for c in 0..g.kw as isize {
                                            let (z2, y2, x2) = (
                                                z + a - (g.kd / 2) as isize,
                                                yy + b - (g.kh / 2) as isize,
                                                xx + c - (g.kw / 2) as isize,
                                            );
                                            if z2 < 0
                                                || z2 >= d
                                                || y2 < 0
                                                || y2 >= h
                                                || x2 < 0
                                                || x2 >= wd
                                            {
                                                continue;
                                            }
                                            let xi = (((n * g.ci + ci) as isize * d + z2) * h + y2)
                                                * wd
                                                + x2;
                                            let t = ((a * g.kh as isize + b) * g.kw as isize + c)
                                                as usize;
                                            s += x[xi as usize] as f64
                                                * w[(co * g.ci + ci) * g.taps() + t] as f64;
                                        }
                                    }
                                }
                            }
                            let i = (((n * g.co + co) as isize * d + z) * h + yy) * wd + xx;
                            out[i as usize] = s + y0[i as usize] as f64;
                        }
                    }
                }
            }
        }
        out
    }

    fn check(g: Conv3dGeom, with_bias: bool, accumulate: bool, seed: u64) {
        if !supported(&g) {
            eprintln!("skipped: this CPU has no AVX-512 (the im2col path runs instead)");
            return;
        }
        let mut rng = Rng::new(seed);
        let mut rand = |n: usize| {
            (0..n)
                .map(|_| rng.uniform() as f32 * 2.0 - 1.0)
                .collect::<Vec<_>>()
        };
        let x = rand(g.n * g.ci * g.spatial());
        let w = rand(g.co * g.ci * g.taps());
        let b = rand(g.co);
        let y0 = if accumulate {
            rand(g.n * g.co * g.spatial())
        } else {
            vec![0.0; g.n * g.co * g.spatial()]
        };
        let mut y = if accumulate {
            y0.clone()
        } else {
            vec![f32::NAN; y0.len()]
        };
        let bias = with_bias.then_some(&b[..]);
        forward(&g, &x, &w, bias, &mut y, accumulate);
        let r = naive(&g, &x, &w, bias, &y0);
        let scale = r.iter().map(|v| v.abs()).fold(0.0, f64::max);
        for (i, (&a, &e)) in y.iter().zip(&r).enumerate() {
            assert!(
                (a as f64 - e).abs() <= 1e-5 * scale,
                "{g:?} bias {with_bias} acc {accumulate}: y[{i}] = {a}, expected {e}"
            );
        }
    }

    fn geom(n: usize, ci: usize, co: usize, dhw: [usize; 3], k: [usize; 3]) -> Conv3dGeom {
        Conv3dGeom {
            n,
            ci,
            co,
            d: dhw[0],
            h: dhw[1],
            w: dhw[2],
            kd: k[0],
            kh: k[1],
            kw: k[2],
        }
    }

    #[test]
    fn matches_the_definition_on_odd_shapes() {
        // Rows of 32, 37 and 50 voxels: exact blocks, a short last vector, a half-empty block.
        check(geom(1, 3, 14, [3, 4, 37], [3, 3, 3]), true, false, 1);
        check(geom(2, 5, 17, [2, 3, 32], [3, 3, 3]), false, true, 2);
        check(geom(1, 2, 29, [1, 5, 50], [1, 5, 5]), true, true, 3);
        check(geom(1, 7, 3, [2, 2, 33], [1, 1, 1]), true, false, 4);
        check(geom(1, 1, 6, [4, 3, 40], [1, 3, 3]), false, false, 5);
    }
}

//! conv3d on bf16 operands with f32 accumulation: forward, input gradient, weight gradient.
//!
//! Every product of two bf16 values is exact in f32 (8 + 8 significand bits), so the only rounding
//! inside a convolution is that of the f32 sums (and of the result, when it is stored as bf16).
//! Where the CPU has AMX-BF16 and the OS grants the tile state, conv3d_amx.rs computes all three
//! passes (`Path::Amx`, the fastest by far). Otherwise, on a CPU with AVX512-BF16, the forward and
//! input gradient widen bf16 rows into conv3d_avx512.rs's direct f32 kernel and the weight
//! gradient widens its tiles into conv3d_backward_weight_avx512.rs's (`Path::Widened`); what the
//! direct kernel does not take runs on `vdpbf16ps`, 32 such
//! multiply-adds per instruction (two per f32 lane, the pair along the summed dimension), as laid
//! out below (`Path::Avx512Bf16` runs every pass that way); elsewhere a scalar loop computes the
//! same sums in the same pairs (`Path::Scalar`).
//!
//! Layouts, per tile of whole output rows of one sample (as conv3d.rs):
//! - forward and input gradient: the im2col tile interleaves pairs of the summed index k
//!   (ci, kd, kh, kw) with the positions, col[k / 2][p][k % 2], so that one 64-byte load holds 16
//!   positions x one k pair; the weights are packed as one 32-bit (w[co][2j], w[co][2j+1]) pair per
//!   co and j and broadcast. 8 output channels x 32 positions accumulate in 16 zmm registers.
//! - weight gradient: dY rows and plain im2col rows (col[k][p]) are both contiguous along the
//!   summed positions p, so 4 x 4 (co, k) dot products run on pairs of positions and are reduced
//!   once per tile. Tiles are summed into a fixed number of partials added in a fixed order, so
//!   results do not depend on thread timing.
//!
//! The input gradient is the forward convolution of dy with the flipped, transposed kernel.

use super::mem::SendPtr;
use super::storage::Stored;
use crate::ops::conv3d::Conv3dGeom;
use half::bf16;
use rayon::prelude::*;

/// Positions per tile (before padding to the 32 the kernels step by).
const TARGET_COLS: usize = 512;
/// bf16 elements of one im2col tile: 1 MiB, near the L2 cache of one core.
const MAX_COL_ELEMS: usize = 1 << 19;
const WEIGHT_GRAD_PARTS: usize = 8;
/// Output channels per forward micro-tile.
const MR: usize = 8;

/// Which kernel computes the sums.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// AMX tiles (`tdpbf16ps`, backend/cpu/conv3d_amx.rs), detected at run time: the fastest by
    /// far where it exists. Its sums are deterministic but not the bits of the two paths below.
    Amx,
    /// `vdpbf16ps` (AVX512-BF16), detected at run time.
    Avx512Bf16,
    /// Forward and input gradient by conv3d_avx512.rs's direct f32 kernel on bf16 operands
    /// widened to f32 as it packs its input rows (products of bf16 values are exact in f32, so
    /// only the f32 sums round, in (ci, tap) order), the shapes that kernel does not take
    /// (`conv3d_avx512::worthwhile`) on `vdpbf16ps`; the weight gradient on widened tiles by
    /// conv3d_backward_weight_avx512.rs's f32 dot products. Without AMX this is the
    /// faster one: `vdpbf16ps` issues at most as many multiply-adds per cycle as two FMA ports
    /// on the Intel cores measured, and its im2col tiles cost as much again (docs/PERFORMANCE.md,
    /// "bf16 without AMX").
    Widened,
    /// Plain f32 arithmetic on the same pairs.
    Scalar,
}

impl Path {
    /// The fastest path this CPU runs.
    pub fn best() -> Path {
        #[cfg(target_arch = "x86_64")]
        if super::conv3d_amx::available() {
            return Path::Amx;
        }
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bf16") {
            return Path::Widened;
        }
        Path::Scalar
    }

    /// Whether this path runs `g`'s forward (or input gradient, with `g` transposed) on the
    /// widened direct kernel.
    fn widened(self, g: &Conv3dGeom) -> bool {
        #[cfg(target_arch = "x86_64")]
        return self == Path::Widened && super::conv3d_avx512::worthwhile(g);
        #[cfg(not(target_arch = "x86_64"))]
        return false;
    }
}

/// Where a convolution's f32 results go: bf16 activations, or f32 (the loss's logits, checks).
pub trait Store: Stored<f32> {}

impl<S: Stored<f32>> Store for S {}

#[derive(Clone, Copy)]
struct Tiling {
    rows: usize,
    tiles_per_sample: usize,
}

fn tiling(g: &Conv3dGeom, k: usize) -> Tiling {
    let total_rows = g.d * g.h;
    let mut rows = (TARGET_COLS / g.w).max(1);
    while rows > 1 && pad32(rows * g.w) * k.next_multiple_of(4) > MAX_COL_ELEMS {
        rows -= 1;
    }
    let rows = rows.min(total_rows).max(1);
    Tiling {
        rows,
        tiles_per_sample: total_rows.div_ceil(rows),
    }
}

fn pad32(p: usize) -> usize {
    p.next_multiple_of(32)
}

/// For each summed index k = (ci, kd, kh, kw) and each row r of the tile starting at row `row0`:
/// `put_row(k, r * W, row)`, where row(i) is the input value that output position i of the row
/// reads (zero outside the volume).
#[inline(always)]
fn im2col(
    g: &Conv3dGeom,
    xn: &[bf16],
    row0: usize,
    rows: usize,
    mut put_row: impl FnMut(usize, usize, Row),
) {
    let (d, h) = (g.d as isize, g.h as isize);
    let (pd, ph, pw) = (
        (g.kd / 2) as isize,
        (g.kh / 2) as isize,
        (g.kw / 2) as isize,
    );
    let mut k = 0;
    for ci in 0..g.ci {
        let xc = &xn[ci * g.spatial()..(ci + 1) * g.spatial()];
        for a in 0..g.kd as isize {
            for b in 0..g.kh as isize {
                for c in 0..g.kw as isize {
                    for r in 0..rows {
                        let rr = (row0 + r) as isize;
                        let z = rr / h + a - pd;
                        let yy = rr % h + b - ph;
                        let src = (z >= 0 && z < d && yy >= 0 && yy < h)
                            .then(|| &xc[((z * h + yy) as usize) * g.w..][..g.w]);
                        put_row(k, r * g.w, Row { src, shift: c - pw });
                    }
                    k += 1;
                }
            }
        }
    }
}

/// One im2col row: out[i] = src[i + shift] where that exists, else 0.
#[derive(Clone, Copy)]
struct Row<'a> {
    src: Option<&'a [bf16]>,
    shift: isize,
}

impl Row<'_> {
    /// The outputs lo..hi whose input exists (lo == hi when none does).
    #[inline(always)]
    fn inside(self, w: usize) -> (usize, usize) {
        let wi = w as isize;
        let (lo, hi) = match self.src {
            Some(_) => (
                (-self.shift).clamp(0, wi) as usize,
                (wi - self.shift).clamp(0, wi) as usize,
            ),
            None => (0, 0),
        };
        (lo, hi.max(lo))
    }

    /// The row written as out[i * stride] for i in 0..W: zeros at the edges, one plain copy (or
    /// strided copy) of the part inside, no branch per element.
    #[inline(always)]
    fn write(self, out: &mut [bf16], w: usize, stride: usize) {
        let (lo, hi) = self.inside(w);
        for i in (0..lo).chain(hi..w) {
            out[i * stride] = bf16::ZERO;
        }
        let Some(src) = self.src.filter(|_| hi > lo) else {
            return;
        };
        let s = &src[(lo as isize + self.shift) as usize..][..hi - lo];
        if stride == 1 {
            out[lo..hi].copy_from_slice(s);
        } else {
            for (o, &v) in out[lo * stride..].iter_mut().step_by(stride).zip(s) {
                *o = v;
            }
        }
    }

    /// The row widened to f32 into out[0..W] (zeros at the edges), for `Path::Widened`.
    #[inline(always)]
    fn write_f32(self, out: &mut [f32], w: usize) {
        let (lo, hi) = self.inside(w);
        out[..lo].fill(0.0);
        out[hi..w].fill(0.0);
        if let Some(src) = self.src.filter(|_| hi > lo) {
            let s = &src[(lo as isize + self.shift) as usize..][..hi - lo];
            for (o, v) in out[lo..hi].iter_mut().zip(s) {
                *o = v.to_f32();
            }
        }
    }
}

/// The forward's packing: col[k / 2][p][k % 2], pairs of k beyond K and positions beyond the tile
/// zero. `cols` is the padded position count.
fn im2col_pairs(
    g: &Conv3dGeom,
    xn: &[bf16],
    row0: usize,
    rows: usize,
    cols: usize,
    col: &mut [bf16],
) {
    let k = g.ci * g.taps();
    let p = rows * g.w;
    // Padding: the odd k of the last pair, and positions p.. of every pair.
    if k % 2 == 1 {
        let last = &mut col[(k / 2) * cols * 2..(k / 2 + 1) * cols * 2];
        last.iter_mut()
            .skip(1)
            .step_by(2)
            .for_each(|v| *v = bf16::ZERO);
    }
    for j in 0..k.div_ceil(2) {
        col[j * cols * 2 + p * 2..(j + 1) * cols * 2].fill(bf16::ZERO);
    }
    let w = g.w;
    im2col(g, xn, row0, rows, |k, p0, row| {
        let base = (k / 2) * cols * 2 + (k % 2) + p0 * 2;
        row.write(&mut col[base..], w, 2);
    });
}

/// The weight gradient's packing: col[k][p], positions beyond the tile zero.
fn im2col_rows(
    g: &Conv3dGeom,
    xn: &[bf16],
    row0: usize,
    rows: usize,
    cols: usize,
    col: &mut [bf16],
) {
    let k = g.ci * g.taps();
    let p = rows * g.w;
    for j in 0..k {
        col[j * cols + p..(j + 1) * cols].fill(bf16::ZERO);
    }
    let w = g.w;
    im2col(g, xn, row0, rows, |k, p0, row| {
        row.write(&mut col[k * cols + p0..], w, 1);
    });
}

/// Weights (Co, K) as (Co rounded up to MR, K/2 pairs) of two bf16 in one u32, low half first.
fn pack_weights(co: usize, k: usize, w: impl Fn(usize, usize) -> bf16) -> (Vec<u32>, usize) {
    let kp = k.div_ceil(2);
    let rows = co.next_multiple_of(MR);
    let mut out = vec![0u32; rows * kp];
    for o in 0..co {
        for j in 0..kp {
            let lo = w(o, 2 * j).to_bits() as u32;
            let hi = if 2 * j + 1 < k {
                w(o, 2 * j + 1).to_bits() as u32
            } else {
                0
            };
            out[o * kp + j] = lo | (hi << 16);
        }
    }
    (out, kp)
}

#[inline(always)]
fn bf(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// acc[m][p] (8 x cols, f32) = sum over pairs j of the packed weights of rows co0..co0+8 times
/// col. The scalar path adds the high product first, as `vdpbf16ps` does.
fn forward_tile_scalar(
    wp: &[u32],
    kp: usize,
    co0: usize,
    col: &[bf16],
    cols: usize,
    acc: &mut [f32],
) {
    acc.fill(0.0);
    for j in 0..kp {
        let c = &col[j * cols * 2..(j + 1) * cols * 2];
        for m in 0..MR {
            let pair = wp[(co0 + m) * kp + j];
            let (wl, wh) = (bf(pair as u16), bf((pair >> 16) as u16));
            let a = &mut acc[m * cols..(m + 1) * cols];
            for (p, v) in a.iter_mut().enumerate() {
                let t = *v + wh * c[2 * p + 1].to_f32();
                *v = t + wl * c[2 * p].to_f32();
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn forward_tile_avx(
    wp: &[u32],
    kp: usize,
    co0: usize,
    col: &[bf16],
    cols: usize,
    acc: &mut [f32],
) {
    use std::arch::x86_64::*;
    debug_assert!(cols % 32 == 0 && col.len() >= kp * cols * 2 && acc.len() >= MR * cols);
    let cp = col.as_ptr() as *const u16;
    let wrow = wp.as_ptr().add(co0 * kp);
    for p0 in (0..cols).step_by(32) {
        let mut r = [_mm512_setzero_ps(); 2 * MR];
        for j in 0..kp {
            let src = cp.add(j * cols * 2 + p0 * 2);
            let c0: __m512bh = std::mem::transmute(_mm512_loadu_si512(src as *const _));
            let c1: __m512bh = std::mem::transmute(_mm512_loadu_si512(src.add(32) as *const _));
            for m in 0..MR {
                let wv: __m512bh =
                    std::mem::transmute(_mm512_set1_epi32(*wrow.add(m * kp + j) as i32));
                r[2 * m] = _mm512_dpbf16_ps(r[2 * m], wv, c0);
                r[2 * m + 1] = _mm512_dpbf16_ps(r[2 * m + 1], wv, c1);
            }
        }
        for m in 0..MR {
            let o = acc.as_mut_ptr().add(m * cols + p0);
            _mm512_storeu_ps(o, r[2 * m]);
            _mm512_storeu_ps(o.add(16), r[2 * m + 1]);
        }
    }
}

/// The convolution of `x` (N, ci, D, H, W) with packed weights into y (N, co, D, H, W).
#[allow(clippy::too_many_arguments)]
fn convolve<O: Store>(
    path: Path,
    g: &Conv3dGeom,
    x: &[bf16],
    wp: &[u32],
    kp: usize,
    bias: Option<&[f32]>,
    y: &mut [O],
    accumulate: bool,
) {
    let k = g.ci * g.taps();
    let t = tiling(g, k);
    let sp = g.spatial();
    let yp = SendPtr(y.as_mut_ptr());
    let tasks = g.n * t.tiles_per_sample;
    let cols_max = pad32(t.rows * g.w);
    (0..tasks).into_par_iter().for_each_init(
        || {
            (
                vec![bf16::ZERO; kp * cols_max * 2],
                vec![0f32; MR * cols_max],
            )
        },
        |(col, acc), task| {
            let (n, tile) = (task / t.tiles_per_sample, task % t.tiles_per_sample);
            let row0 = tile * t.rows;
            let rows = t.rows.min(g.d * g.h - row0);
            let p = rows * g.w;
            let cols = pad32(p);
            let xn = &x[n * g.ci * sp..(n + 1) * g.ci * sp];
            im2col_pairs(g, xn, row0, rows, cols, &mut col[..kp * cols * 2]);
            for co0 in (0..g.co).step_by(MR) {
                let a = &mut acc[..MR * cols];
                match path {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: this path is chosen only where the CPU has the features.
                    Path::Avx512Bf16 | Path::Widened => unsafe {
                        forward_tile_avx(wp, kp, co0, col, cols, a)
                    },
                    _ => forward_tile_scalar(wp, kp, co0, col, cols, a),
                }
                for m in 0..MR.min(g.co - co0) {
                    let co = co0 + m;
                    let b = bias.map_or(0.0, |b| b[co]);
                    // SAFETY: this task alone writes rows row0..row0+rows of every channel of
                    // sample n.
                    let out = unsafe {
                        std::slice::from_raw_parts_mut(
                            yp.get().add(n * g.co * sp + co * sp + row0 * g.w),
                            p,
                        )
                    };
                    let src = &a[m * cols..m * cols + p];
                    if accumulate {
                        for (o, &v) in out.iter_mut().zip(src) {
                            *o = O::store(o.load() + (v + b));
                        }
                    } else {
                        for (o, &v) in out.iter_mut().zip(src) {
                            *o = O::store(v + b);
                        }
                    }
                }
            }
        },
    );
}

/// y = conv(x, w) (+ bias), or y += ... with `accumulate`. w is (Co, Ci, kD, kH, kW).
#[allow(clippy::too_many_arguments)]
pub fn forward<O: Store>(
    path: Path,
    g: &Conv3dGeom,
    x: &[bf16],
    w: &[bf16],
    bias: Option<&[f32]>,
    y: &mut [O],
    accumulate: bool,
) {
    let k = g.ci * g.taps();
    #[cfg(target_arch = "x86_64")]
    if path == Path::Amx {
        let taps = g.taps();
        return super::conv3d_amx::convolve(
            g,
            x,
            |co, ci, t| w[(co * g.ci + ci) * taps + t],
            bias,
            y,
            accumulate,
        );
    }
    #[cfg(target_arch = "x86_64")]
    if path.widened(g) {
        let wf: Vec<f32> = w[..g.co * k].iter().map(|v| v.to_f32()).collect();
        return super::conv3d_avx512::forward(g, x, &wf, bias, y, accumulate);
    }
    let (wp, kp) = pack_weights(g.co, k, |o, j| w[o * k + j]);
    convolve(path, g, x, &wp, kp, bias, y, accumulate);
}

/// dx = conv(dy, flipped transposed w), or dx += ... with `accumulate`.
pub fn backward_input<O: Store>(
    path: Path,
    g: &Conv3dGeom,
    dy: &[bf16],
    w: &[bf16],
    dx: &mut [O],
    accumulate: bool,
) {
    let taps = g.taps();
    let gt = Conv3dGeom {
        ci: g.co,
        co: g.ci,
        ..*g
    };
    #[cfg(target_arch = "x86_64")]
    if path == Path::Amx {
        // w'[ci][co][tap] = w[co][ci][taps - 1 - tap], as below.
        return super::conv3d_amx::convolve(
            &gt,
            dy,
            |ci, co, t| w[(co * g.ci + ci) * taps + (taps - 1 - t)],
            None,
            dx,
            accumulate,
        );
    }
    #[cfg(target_arch = "x86_64")]
    if path.widened(&gt) {
        // w'[ci][co][tap] = w[co][ci][taps - 1 - tap], laid out (Ci, Co, taps) as w is.
        let mut wt = vec![0f32; g.ci * g.co * taps];
        for co in 0..g.co {
            for ci in 0..g.ci {
                for t in 0..taps {
                    wt[(ci * g.co + co) * taps + (taps - 1 - t)] =
                        w[(co * g.ci + ci) * taps + t].to_f32();
                }
            }
        }
        return super::conv3d_avx512::forward(&gt, dy, &wt, None, dx, accumulate);
    }
    // w'[ci][co][tap] = w[co][ci][taps - 1 - tap]: the kernel flipped in every dimension.
    let (wp, kp) = pack_weights(g.ci, g.co * taps, |ci, j| {
        let (co, tap) = (j / taps, j % taps);
        w[(co * g.ci + ci) * taps + (taps - 1 - tap)]
    });
    convolve(path, &gt, dy, &wp, kp, None, dx, accumulate);
}

/// 4 x 4 dot products of dY rows co0.. with im2col rows k0.. over `cols` positions, added to
/// part[(co0 + i) * K + k0 + j] for the rows that exist.
fn weight_tile_scalar(
    dyt: &[bf16],
    col: &[bf16],
    cols: usize,
    co0: usize,
    k0: usize,
    co: usize,
    k: usize,
    part: &mut [f32],
) {
    for i in 0..4.min(co - co0) {
        let a = &dyt[(co0 + i) * cols..(co0 + i + 1) * cols];
        for j in 0..4.min(k - k0) {
            let b = &col[(k0 + j) * cols..(k0 + j + 1) * cols];
            // 16 lanes of pairs, as the vector kernel, then the lanes summed in a fixed tree.
            let mut lanes = [0f32; 16];
            for q in (0..cols).step_by(32) {
                for (l, lane) in lanes.iter_mut().enumerate() {
                    let (p, r) = (q + 2 * l, q + 2 * l + 1);
                    let t = *lane + a[r].to_f32() * b[r].to_f32();
                    *lane = t + a[p].to_f32() * b[p].to_f32();
                }
            }
            part[(co0 + i) * k + k0 + j] += tree16(lanes);
        }
    }
}

fn tree16(mut v: [f32; 16]) -> f32 {
    let mut n = 16;
    while n > 1 {
        n /= 2;
        for i in 0..n {
            v[i] += v[i + n];
        }
    }
    v[0]
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn weight_tile_avx(
    dyt: &[bf16],
    col: &[bf16],
    cols: usize,
    co0: usize,
    k0: usize,
    co: usize,
    k: usize,
    part: &mut [f32],
) {
    use std::arch::x86_64::*;
    // Rows past co or k read row 0 (kept in bounds) and are not stored.
    let ni = 4.min(co - co0);
    let nj = 4.min(k - k0);
    let a: [*const u16; 4] =
        std::array::from_fn(|i| dyt.as_ptr().add((co0 + if i < ni { i } else { 0 }) * cols) as _);
    let b: [*const u16; 4] =
        std::array::from_fn(|j| col.as_ptr().add((k0 + if j < nj { j } else { 0 }) * cols) as _);
    let mut r = [_mm512_setzero_ps(); 16];
    for q in (0..cols).step_by(32) {
        let av: [__m512bh; 4] = std::array::from_fn(|i| {
            std::mem::transmute(_mm512_loadu_si512(a[i].add(q) as *const _))
        });
        let bv: [__m512bh; 4] = std::array::from_fn(|j| {
            std::mem::transmute(_mm512_loadu_si512(b[j].add(q) as *const _))
        });
        for i in 0..4 {
            for j in 0..4 {
                r[4 * i + j] = _mm512_dpbf16_ps(r[4 * i + j], av[i], bv[j]);
            }
        }
    }
    for i in 0..ni {
        for j in 0..nj {
            let mut lanes = [0f32; 16];
            _mm512_storeu_ps(lanes.as_mut_ptr(), r[4 * i + j]);
            part[(co0 + i) * k + k0 + j] += tree16(lanes);
        }
    }
}

/// dw = sum over positions of dy x im2col(x), or dw += ... with `accumulate`; dw stays f32.
pub fn backward_weight(
    path: Path,
    g: &Conv3dGeom,
    x: &[bf16],
    dy: &[bf16],
    dw: &mut [f32],
    accumulate: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if path == Path::Amx {
        return super::conv3d_amx::weight_gradient(g, x, dy, dw, accumulate);
    }
    #[cfg(target_arch = "x86_64")]
    if path == Path::Widened && super::conv3d_backward_weight_avx512::supported() {
        return backward_weight_widened(g, x, dy, dw, accumulate);
    }
    let k = g.ci * g.taps();
    let t = tiling(g, k);
    let sp = g.spatial();
    let tasks = g.n * t.tiles_per_sample;
    let cols_max = pad32(t.rows * g.w);
    let parts: Vec<Vec<f32>> = (0..WEIGHT_GRAD_PARTS)
        .into_par_iter()
        .map(|part_i| {
            let mut part = vec![0f32; g.co * k];
            let mut col = vec![bf16::ZERO; k * cols_max];
            let mut dyt = vec![bf16::ZERO; g.co * cols_max];
            let lo = tasks * part_i / WEIGHT_GRAD_PARTS;
            let hi = tasks * (part_i + 1) / WEIGHT_GRAD_PARTS;
            for task in lo..hi {
                let (n, tile) = (task / t.tiles_per_sample, task % t.tiles_per_sample);
                let row0 = tile * t.rows;
                let rows = t.rows.min(g.d * g.h - row0);
                let p = rows * g.w;
                let cols = pad32(p);
                let xn = &x[n * g.ci * sp..(n + 1) * g.ci * sp];
                im2col_rows(g, xn, row0, rows, cols, &mut col[..k * cols]);
                for o in 0..g.co {
                    let src = &dy[n * g.co * sp + o * sp + row0 * g.w..][..p];
                    let dst = &mut dyt[o * cols..(o + 1) * cols];
                    dst[..p].copy_from_slice(src);
                    dst[p..].fill(bf16::ZERO);
                }
                for co0 in (0..g.co).step_by(4) {
                    for k0 in (0..k).step_by(4) {
                        match path {
                            #[cfg(target_arch = "x86_64")]
                            // SAFETY: this path is chosen only where the CPU has the features.
                            Path::Avx512Bf16 | Path::Widened => unsafe {
                                weight_tile_avx(&dyt, &col, cols, co0, k0, g.co, k, &mut part)
                            },
                            _ => weight_tile_scalar(&dyt, &col, cols, co0, k0, g.co, k, &mut part),
                        }
                    }
                }
            }
            part
        })
        .collect();
    for (i, v) in dw.iter_mut().enumerate() {
        let mut s = 0f32;
        for p in &parts {
            s += p[i];
        }
        *v = if accumulate { *v + s } else { s };
    }
}

/// `Path::Widened`'s weight gradient: each tile's im2col rows and dY rows widened to f32 (exact),
/// then conv3d_backward_weight_avx512's f32 dot products, tiles summed into the same fixed
/// partials, added in a fixed order, as the other paths.
#[cfg(target_arch = "x86_64")]
fn backward_weight_widened(
    g: &Conv3dGeom,
    x: &[bf16],
    dy: &[bf16],
    dw: &mut [f32],
    accumulate: bool,
) {
    let k = g.ci * g.taps();
    let t = tiling(g, k);
    let sp = g.spatial();
    let tasks = g.n * t.tiles_per_sample;
    let p_max = t.rows * g.w;
    let parts: Vec<Vec<f32>> = (0..WEIGHT_GRAD_PARTS)
        .into_par_iter()
        .map(|part_i| {
            let mut part = vec![0f32; g.co * k];
            let mut col = vec![0f32; k * p_max];
            let mut dyt = vec![0f32; g.co * p_max];
            let lo = tasks * part_i / WEIGHT_GRAD_PARTS;
            let hi = tasks * (part_i + 1) / WEIGHT_GRAD_PARTS;
            for task in lo..hi {
                let (n, tile) = (task / t.tiles_per_sample, task % t.tiles_per_sample);
                let row0 = tile * t.rows;
                let rows = t.rows.min(g.d * g.h - row0);
                let p = rows * g.w;
                let xn = &x[n * g.ci * sp..(n + 1) * g.ci * sp];
                let w = g.w;
                im2col(g, xn, row0, rows, |kk, p0, row| {
                    row.write_f32(&mut col[kk * p + p0..], w);
                });
                for o in 0..g.co {
                    let src = &dy[n * g.co * sp + o * sp + row0 * g.w..][..p];
                    for (d, v) in dyt[o * p..(o + 1) * p].iter_mut().zip(src) {
                        *d = v.to_f32();
                    }
                }
                // SAFETY: the kernel's CPU check passed (caller); dyt holds co rows and col k
                // rows of p elements at stride p; part has co * k elements.
                unsafe {
                    super::conv3d_backward_weight_avx512::dot_tile(
                        g.co,
                        k,
                        p,
                        dyt.as_ptr(),
                        p,
                        col.as_ptr(),
                        p,
                        &mut part,
                    )
                };
            }
            part
        })
        .collect();
    for (i, v) in dw.iter_mut().enumerate() {
        let mut s = 0f32;
        for p in &parts {
            s += p[i];
        }
        *v = if accumulate { *v + s } else { s };
    }
}

//! conv3d on the CPU: im2col over tiles of whole output rows, then one GEMM per tile.
//!
//! A tile is `rows` consecutive (z, y) rows of one sample, so each im2col row is a shifted copy of
//! an input row with zero edges, and the tile's output is a plain strided block of y. Tiles are
//! spread over the threads; each thread keeps one im2col buffer. The input gradient is the forward
//! convolution of dy with the flipped, transposed kernel; the weight gradient sums per-tile GEMMs
//! into a fixed number of partial sums that are added in a fixed order, so results do not depend on
//! thread timing.

use super::gemm::matmul;
use super::mem::SendPtr;
use crate::ops::conv3d::Conv3dGeom;
use crate::tensor::Element;
use rayon::prelude::*;
use std::any::TypeId;

/// Columns per tile: the im2col buffer (K x P) then stays near the L2 cache.
const TARGET_COLS: usize = 512;
const MAX_COL_ELEMS: usize = 1 << 20;
/// Partial sums of the weight gradient: enough to keep both cores busy, fixed for determinism.
const WEIGHT_GRAD_PARTS: usize = 8;

#[derive(Clone, Copy)]
struct Tiling {
    rows: usize,
    tiles_per_sample: usize,
}

fn tiling(g: &Conv3dGeom) -> Tiling {
    let k = g.ci * g.taps();
    let total_rows = g.d * g.h;
    let mut rows = (TARGET_COLS / g.w).max(1);
    while rows > 1 && rows * g.w * k > MAX_COL_ELEMS {
        rows -= 1;
    }
    let rows = rows.min(total_rows).max(1);
    Tiling {
        rows,
        tiles_per_sample: total_rows.div_ceil(rows),
    }
}

/// Fill col (K x P, P = rows * W) for the tile starting at row `row0` of one sample `xn`.
fn im2col<T: Element>(g: &Conv3dGeom, xn: &[T], row0: usize, rows: usize, col: &mut [T]) {
    let (d, h, w) = (g.d as isize, g.h as isize, g.w);
    let (pd, ph, pw) = (
        (g.kd / 2) as isize,
        (g.kh / 2) as isize,
        (g.kw / 2) as isize,
    );
    let p = rows * w;
    let mut k = 0;
    for ci in 0..g.ci {
        let xc = &xn[ci * g.spatial()..(ci + 1) * g.spatial()];
        for a in 0..g.kd as isize {
            for b in 0..g.kh as isize {
                for c in 0..g.kw as isize {
                    let dst_k = &mut col[k * p..(k + 1) * p];
                    let shift = c - pw;
                    for r in 0..rows {
                        let rr = (row0 + r) as isize;
                        let z = rr / h + a - pd;
                        let yy = rr % h + b - ph;
                        let dst = &mut dst_k[r * w..(r + 1) * w];
                        if z < 0 || z >= d || yy < 0 || yy >= h {
                            dst.fill(T::ZERO);
                            continue;
                        }
                        let src = &xc[((z * h + yy) as usize) * w..][..w];
                        shifted_copy(dst, src, shift);
                    }
                    k += 1;
                }
            }
        }
    }
}

/// dst[i] = src[i + shift] where that index exists, else 0.
#[inline]
fn shifted_copy<T: Element>(dst: &mut [T], src: &[T], shift: isize) {
    let w = dst.len() as isize;
    let lo = (-shift).clamp(0, w) as usize;
    let hi = (w - shift).clamp(0, w) as usize;
    dst[..lo].fill(T::ZERO);
    if hi > lo {
        dst[lo..hi]
            .copy_from_slice(&src[(lo as isize + shift) as usize..(hi as isize + shift) as usize]);
    }
    dst[hi.max(lo)..].fill(T::ZERO);
}

/// y = conv(x, w) (+ bias), or y += ... with `accumulate`. `wmat` is w flattened to (Co, Ci*taps).
pub fn forward<T: Element>(
    g: &Conv3dGeom,
    x: &[T],
    wmat: &[T],
    bias: Option<&[T]>,
    y: &mut [T],
    accumulate: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if super::conv3d_avx512::worthwhile(g) {
        if let (Some(x), Some(w), Some(y)) = (as_f32(x), as_f32(wmat), as_f32_mut(y)) {
            super::conv3d_avx512::forward(g, x, w, bias.and_then(as_f32), y, accumulate);
            return;
        }
    }
    let t = tiling(g);
    let k = g.ci * g.taps();
    let sp = g.spatial();
    let pointwise = g.taps() == 1;
    let yp = SendPtr(y.as_mut_ptr());
    let tasks = g.n * t.tiles_per_sample;
    (0..tasks).into_par_iter().for_each_init(
        || {
            if pointwise {
                Vec::new()
            } else {
                vec![T::ZERO; k * t.rows * g.w]
            }
        },
        |col, task| {
            let (n, tile) = (task / t.tiles_per_sample, task % t.tiles_per_sample);
            let row0 = tile * t.rows;
            let rows = t.rows.min(g.d * g.h - row0);
            let p = rows * g.w;
            let xn = &x[n * g.ci * sp..(n + 1) * g.ci * sp];
            // SAFETY: this task alone writes rows row0..row0+rows of every channel of sample n.
            let c = unsafe { yp.get().add(n * g.co * sp + row0 * g.w) };
            let mut acc = accumulate;
            if let Some(b) = bias {
                for (co, &bv) in b.iter().enumerate() {
                    let row = unsafe { std::slice::from_raw_parts_mut(c.add(co * sp), p) };
                    if acc {
                        row.iter_mut().for_each(|v| *v += bv);
                    } else {
                        row.fill(bv);
                    }
                }
                acc = true;
            }
            unsafe {
                if pointwise {
                    let b = xn.as_ptr().add(row0 * g.w);
                    matmul(
                        g.co,
                        p,
                        k,
                        c,
                        sp as isize,
                        1,
                        acc,
                        wmat.as_ptr(),
                        k as isize,
                        1,
                        b,
                        sp as isize,
                        1,
                    );
                } else {
                    im2col(g, xn, row0, rows, col);
                    matmul(
                        g.co,
                        p,
                        k,
                        c,
                        sp as isize,
                        1,
                        acc,
                        wmat.as_ptr(),
                        k as isize,
                        1,
                        col.as_ptr(),
                        p as isize,
                        1,
                    );
                }
            }
        },
    );
}

/// The slice as f32 when T is f32: the SIMD kernels exist for the working precision only.
fn as_f32<T: Element>(s: &[T]) -> Option<&[f32]> {
    (TypeId::of::<T>() == TypeId::of::<f32>())
        // SAFETY: T is f32.
        .then(|| unsafe { std::slice::from_raw_parts(s.as_ptr().cast(), s.len()) })
}

fn as_f32_mut<T: Element>(s: &mut [T]) -> Option<&mut [f32]> {
    (TypeId::of::<T>() == TypeId::of::<f32>())
        // SAFETY: T is f32.
        .then(|| unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast(), s.len()) })
}

/// dx = conv(dy, w') with w'[ci][co] = w[co][ci] flipped in all three dimensions.
pub fn backward_input<T: Element>(
    g: &Conv3dGeom,
    dy: &[T],
    w: &[T],
    dx: &mut [T],
    accumulate: bool,
) {
    let taps = g.taps();
    let mut wt = vec![T::ZERO; w.len()];
    for co in 0..g.co {
        for ci in 0..g.ci {
            for t in 0..taps {
                wt[(ci * g.co + co) * taps + (taps - 1 - t)] = w[(co * g.ci + ci) * taps + t];
            }
        }
    }
    let gt = Conv3dGeom {
        ci: g.co,
        co: g.ci,
        ..*g
    };
    forward(&gt, dy, &wt, None, dx, accumulate);
}

/// dw (Co x Ci*taps) = sum over tiles of dy_tile (Co x P) times col_tile^T (P x K).
pub fn backward_weight<T: Element>(
    g: &Conv3dGeom,
    x: &[T],
    dy: &[T],
    dw: &mut [T],
    accumulate: bool,
) {
    let t = tiling(g);
    let k = g.ci * g.taps();
    let sp = g.spatial();
    let pointwise = g.taps() == 1;
    let tasks = g.n * t.tiles_per_sample;
    let parts = WEIGHT_GRAD_PARTS.min(tasks).max(1);
    let per_part = tasks.div_ceil(parts);
    let partials: Vec<Vec<T>> = (0..parts)
        .into_par_iter()
        .map(|part| {
            let mut acc_buf = vec![T::ZERO; g.co * k];
            let mut col = if pointwise {
                Vec::new()
            } else {
                vec![T::ZERO; k * t.rows * g.w]
            };
            for task in part * per_part..((part + 1) * per_part).min(tasks) {
                let (n, tile) = (task / t.tiles_per_sample, task % t.tiles_per_sample);
                let row0 = tile * t.rows;
                let rows = t.rows.min(g.d * g.h - row0);
                let p = rows * g.w;
                let xn = &x[n * g.ci * sp..(n + 1) * g.ci * sp];
                let a = dy[n * g.co * sp + row0 * g.w..].as_ptr();
                unsafe {
                    let (b, ldb) = if pointwise {
                        (xn.as_ptr().add(row0 * g.w), sp)
                    } else {
                        im2col(g, xn, row0, rows, &mut col);
                        (col.as_ptr(), p)
                    };
                    weight_tile(g.co, k, p, a, sp, b, ldb, &mut acc_buf);
                }
            }
            acc_buf
        })
        .collect();
    if !accumulate {
        dw.fill(T::ZERO);
    }
    for part in &partials {
        for (d, &p) in dw.iter_mut().zip(part) {
            *d += p;
        }
    }
}

/// acc (Co x K) += A (Co x P, row stride lda) B^T, B being K x P with row stride ldb.
///
/// # Safety
/// As `matmul`: every addressed element exists.
#[allow(clippy::too_many_arguments)]
unsafe fn weight_tile<T: Element>(
    co: usize,
    k: usize,
    p: usize,
    a: *const T,
    lda: usize,
    b: *const T,
    ldb: usize,
    acc: &mut [T],
) {
    #[cfg(target_arch = "x86_64")]
    if super::conv3d_backward_weight_avx512::supported() {
        if let Some(acc) = as_f32_mut(acc) {
            super::conv3d_backward_weight_avx512::dot_tile(
                co,
                k,
                p,
                a.cast(),
                lda,
                b.cast(),
                ldb,
                acc,
            );
            return;
        }
    }
    matmul(
        co,
        k,
        p,
        acc.as_mut_ptr(),
        k as isize,
        1,
        true,
        a,
        lda as isize,
        1,
        b,
        1,
        ldb as isize,
    );
}

/// db[c] (+)= sum of dy over N, D, H, W; summed in f64 in a fixed order.
pub fn backward_bias<T: Element, G: super::storage::Stored<T>>(
    n: usize,
    c: usize,
    spatial: usize,
    dy: &[G],
    db: &mut [T],
    accumulate: bool,
) {
    db.par_iter_mut().enumerate().for_each(|(ch, out)| {
        let mut s = 0.0f64;
        for ni in 0..n {
            s += dy[(ni * c + ch) * spatial..][..spatial]
                .iter()
                .map(|v| v.load().to_f64())
                .sum::<f64>();
        }
        let s = T::from_f64(s);
        if accumulate {
            *out += s;
        } else {
            *out = s;
        }
    });
}

//! conv_transpose (1x2x2, stride 1x2x2) on the CPU. Kernel equals stride, so the op is one GEMM
//! per tile of input voxels, Z (4 Co x P) = W^T (4 Co x Ci) X (Ci x P), and a scatter of Z's four
//! row groups (i, j) into the interleaved output; the backward passes gather dy the same way.

use super::gemm::matmul;
use super::mem::SendPtr;
use super::storage::{as_compute, Stored};
use crate::ops::conv_transpose::ConvTransposeGeom;
use crate::tensor::Element;
use rayon::prelude::*;

/// Input rows (z, y) per tile.
fn tile_rows(g: &ConvTransposeGeom) -> usize {
    (512 / g.w).clamp(1, g.d * g.h)
}

struct Tile {
    n: usize,
    row0: usize,
    rows: usize,
}

fn tiles(g: &ConvTransposeGeom) -> Vec<Tile> {
    let r = tile_rows(g);
    let total = g.d * g.h;
    (0..g.n)
        .flat_map(|n| {
            (0..total.div_ceil(r)).map(move |t| Tile {
                n,
                row0: t * r,
                rows: r.min(total - t * r),
            })
        })
        .collect()
}

/// Offset in one output channel plane of output (2h + i, 2w + j) for input row `row` = (d, h).
#[inline(always)]
fn out_index(g: &ConvTransposeGeom, row: usize, i: usize) -> usize {
    let (d, h) = (row / g.h, row % g.h);
    (d * 2 * g.h + 2 * h + i) * 2 * g.w
}

/// z (4 Co x P), row (co, i, j) <-> y[n, co, d, 2h + i, 2w + j]; `to_y` scatters, else gathers.
fn exchange<T: Element, Y: Stored<T>>(
    g: &ConvTransposeGeom,
    t: &Tile,
    z: &mut [T],
    y: *mut Y,
    to_y: bool,
    bias: Option<&[T]>,
) {
    let p = t.rows * g.w;
    let sy = 4 * g.d * g.h * g.w;
    for co in 0..g.co {
        let b = bias.map_or(T::ZERO, |b| b[co]);
        for ij in 0..4 {
            let (i, j) = (ij / 2, ij % 2);
            let zr = &mut z[(co * 4 + ij) * p..][..p];
            for r in 0..t.rows {
                let base = (t.n * g.co + co) * sy + out_index(g, t.row0 + r, i) + j;
                for w in 0..g.w {
                    // SAFETY: tiles cover disjoint input rows, hence disjoint output voxels.
                    unsafe {
                        let q = y.add(base + 2 * w);
                        if to_y {
                            *q = Y::store((*q).load() + (zr[r * g.w + w] + b));
                        } else {
                            zr[r * g.w + w] = (*q).load();
                        }
                    }
                }
            }
        }
    }
}

pub fn forward<T: Element, X: Stored<T>, Y: Stored<T>>(
    g: &ConvTransposeGeom,
    x: &[X],
    w: &[T],
    bias: Option<&[T]>,
    y: &mut [Y],
    accumulate: bool,
) {
    if !accumulate {
        y.fill(Y::store(T::ZERO));
    }
    let m = 4 * g.co;
    let yp = SendPtr(y.as_mut_ptr());
    let direct = as_compute::<T, X>(x);
    tiles(g).par_iter().for_each_init(
        || (vec![T::ZERO; m * tile_rows(g) * g.w], Vec::new()),
        |(z, xt), t| {
            let p = t.rows * g.w;
            let (b, ldb) = input_tile(g, t, x, direct, xt);
            unsafe {
                matmul(
                    m,
                    p,
                    g.ci,
                    z.as_mut_ptr(),
                    p as isize,
                    1,
                    false,
                    w.as_ptr(),
                    1,
                    m as isize,
                    b,
                    ldb,
                    1,
                )
            };
            exchange(g, t, z, yp.get(), true, bias);
        },
    );
}

pub fn backward_input<T: Element, G: Stored<T>, D: Stored<T>>(
    g: &ConvTransposeGeom,
    dy: &[G],
    w: &[T],
    dx: &mut [D],
    accumulate: bool,
) {
    let sx = g.d * g.h * g.w;
    let m = 4 * g.co;
    let direct = as_compute::<T, D>(dx).is_some();
    let dxp = SendPtr(dx.as_mut_ptr());
    let dyp = SendPtr(dy.as_ptr() as *mut G);
    tiles(g).par_iter().for_each_init(
        || (vec![T::ZERO; m * tile_rows(g) * g.w], Vec::new()),
        |(z, ct), t| {
            let (dxp, dyp) = (dxp, dyp);
            let p = t.rows * g.w;
            exchange(g, t, z, dyp.get(), false, None);
            let at = t.n * g.ci * sx + t.row0 * g.w;
            // dx in its own storage goes through a tile of T, stored row by row below.
            let (c, ldc) = if direct {
                (unsafe { dxp.get().add(at) as *mut T }, sx)
            } else {
                ct.resize(g.ci * p, T::ZERO);
                (ct.as_mut_ptr(), p)
            };
            unsafe {
                matmul(
                    g.ci,
                    p,
                    m,
                    c,
                    ldc as isize,
                    1,
                    accumulate && direct,
                    w.as_ptr(),
                    m as isize,
                    1,
                    z.as_ptr(),
                    p as isize,
                    1,
                )
            };
            if !direct {
                for ci in 0..g.ci {
                    for (k, &v) in ct[ci * p..][..p].iter().enumerate() {
                        // SAFETY: tiles cover disjoint input rows, hence disjoint dx voxels.
                        unsafe {
                            let q = dxp.get().add(at + ci * sx + k);
                            *q = D::store(if accumulate { (*q).load() + v } else { v });
                        }
                    }
                }
            }
        },
    );
}

/// The tile's input rows (ci x p, row stride returned) as T: the arena itself when x is stored
/// as T, else gathered into `buf`.
fn input_tile<T: Element, X: Stored<T>>(
    g: &ConvTransposeGeom,
    t: &Tile,
    x: &[X],
    direct: Option<&[T]>,
    buf: &mut Vec<T>,
) -> (*const T, isize) {
    let sx = g.d * g.h * g.w;
    let at = t.n * g.ci * sx + t.row0 * g.w;
    if let Some(x) = direct {
        return (x[at..].as_ptr(), sx as isize);
    }
    let p = t.rows * g.w;
    buf.clear();
    for ci in 0..g.ci {
        buf.extend(x[at + ci * sx..][..p].iter().map(|v| v.load()));
    }
    (buf.as_ptr(), p as isize)
}

pub fn backward_weight<T: Element, X: Stored<T>, G: Stored<T>>(
    g: &ConvTransposeGeom,
    x: &[X],
    dy: &[G],
    dw: &mut [T],
    accumulate: bool,
) {
    let m = 4 * g.co;
    let all = tiles(g);
    let parts = 8.min(all.len()).max(1);
    let per = all.len().div_ceil(parts);
    let dyp = SendPtr(dy.as_ptr() as *mut G);
    let direct = as_compute::<T, X>(x);
    // Fixed partial sums added in a fixed order: deterministic whatever the thread timing.
    let partials: Vec<Vec<T>> = all
        .par_chunks(per)
        .map(|chunk| {
            let mut acc = vec![T::ZERO; g.ci * m];
            let mut z = vec![T::ZERO; m * tile_rows(g) * g.w];
            let mut xt = Vec::new();
            for t in chunk {
                let p = t.rows * g.w;
                exchange(g, t, &mut z, dyp.get(), false, None);
                let (a, lda) = input_tile(g, t, x, direct, &mut xt);
                unsafe {
                    matmul(
                        g.ci,
                        m,
                        p,
                        acc.as_mut_ptr(),
                        m as isize,
                        1,
                        true,
                        a,
                        lda,
                        1,
                        z.as_ptr(),
                        1,
                        p as isize,
                    )
                };
            }
            acc
        })
        .collect();
    if !accumulate {
        dw.fill(T::ZERO);
    }
    for part in &partials {
        for (d, &v) in dw.iter_mut().zip(part) {
            *d += v;
        }
    }
}

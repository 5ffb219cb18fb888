//! conv_transpose (1x2x2, stride 1x2x2) on the CPU. Each output voxel has one input voxel, so these
//! are direct loops: their cost is a few percent of the network's 3x3x3 convolutions.

use crate::ops::conv_transpose::ConvTransposeGeom;
use crate::tensor::Element;
use rayon::prelude::*;

/// y[n, co, d, 2h+i, 2w+j] = bias[co] + sum_ci x[n, ci, d, h, w] * w[ci, co, 0, i, j].
pub fn forward<T: Element>(
    g: &ConvTransposeGeom,
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    y: &mut [T],
    accumulate: bool,
) {
    let sx = g.d * g.h * g.w;
    let sy = 4 * sx;
    let (h2, w2) = (2 * g.h, 2 * g.w);
    y.par_chunks_mut(sy).enumerate().for_each(|(nco, yp)| {
        let (n, co) = (nco / g.co, nco % g.co);
        let b = bias.map_or(T::ZERO, |b| b[co]);
        if accumulate {
            yp.iter_mut().for_each(|v| *v += b);
        } else {
            yp.fill(b);
        }
        for ci in 0..g.ci {
            let k = &w[(ci * g.co + co) * 4..][..4];
            let xp = &x[(n * g.ci + ci) * sx..][..sx];
            for dh in 0..g.d * g.h {
                let (d, h) = (dh / g.h, dh % g.h);
                let xr = &xp[dh * g.w..][..g.w];
                for i in 0..2 {
                    let yr = &mut yp[(d * h2 + 2 * h + i) * w2..][..w2];
                    let (k0, k1) = (k[2 * i], k[2 * i + 1]);
                    for (wi, &xv) in xr.iter().enumerate() {
                        yr[2 * wi] += k0 * xv;
                        yr[2 * wi + 1] += k1 * xv;
                    }
                }
            }
        }
    });
}

/// dx[n, ci, d, h, w] = sum_co sum_ij w[ci, co, 0, i, j] * dy[n, co, d, 2h+i, 2w+j].
pub fn backward_input<T: Element>(
    g: &ConvTransposeGeom,
    dy: &[T],
    w: &[T],
    dx: &mut [T],
    accumulate: bool,
) {
    let sx = g.d * g.h * g.w;
    let sy = 4 * sx;
    let (h2, w2) = (2 * g.h, 2 * g.w);
    dx.par_chunks_mut(sx).enumerate().for_each(|(nci, xp)| {
        let (n, ci) = (nci / g.ci, nci % g.ci);
        if !accumulate {
            xp.fill(T::ZERO);
        }
        for co in 0..g.co {
            let k = &w[(ci * g.co + co) * 4..][..4];
            let yp = &dy[(n * g.co + co) * sy..][..sy];
            for dh in 0..g.d * g.h {
                let (d, h) = (dh / g.h, dh % g.h);
                let xr = &mut xp[dh * g.w..][..g.w];
                for i in 0..2 {
                    let yr = &yp[(d * h2 + 2 * h + i) * w2..][..w2];
                    let (k0, k1) = (k[2 * i], k[2 * i + 1]);
                    for (wi, xv) in xr.iter_mut().enumerate() {
                        *xv += k0 * yr[2 * wi] + k1 * yr[2 * wi + 1];
                    }
                }
            }
        }
    });
}

/// dw[ci, co, 0, i, j] = sum over n, d, h, w of x[n, ci, d, h, w] * dy[n, co, d, 2h+i, 2w+j].
pub fn backward_weight<T: Element>(
    g: &ConvTransposeGeom,
    x: &[T],
    dy: &[T],
    dw: &mut [T],
    accumulate: bool,
) {
    let sx = g.d * g.h * g.w;
    let sy = 4 * sx;
    let (h2, w2) = (2 * g.h, 2 * g.w);
    dw.par_chunks_mut(4).enumerate().for_each(|(cico, out)| {
        let (ci, co) = (cico / g.co, cico % g.co);
        let mut s = [T::ZERO; 4];
        for n in 0..g.n {
            let xp = &x[(n * g.ci + ci) * sx..][..sx];
            let yp = &dy[(n * g.co + co) * sy..][..sy];
            for dh in 0..g.d * g.h {
                let (d, h) = (dh / g.h, dh % g.h);
                let xr = &xp[dh * g.w..][..g.w];
                for i in 0..2 {
                    let yr = &yp[(d * h2 + 2 * h + i) * w2..][..w2];
                    let (mut s0, mut s1) = (T::ZERO, T::ZERO);
                    for (wi, &xv) in xr.iter().enumerate() {
                        s0 += xv * yr[2 * wi];
                        s1 += xv * yr[2 * wi + 1];
                    }
                    s[2 * i] += s0;
                    s[2 * i + 1] += s1;
                }
            }
        }
        for (o, v) in out.iter_mut().zip(s) {
            if accumulate {
                *o += v;
            } else {
                *o = v;
            }
        }
    });
}

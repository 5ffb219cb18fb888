//! BatchNorm3d on the CPU: one task per channel, statistics accumulated in f64 in a fixed order.

use super::simd::wide;
use super::storage::Stored;
use crate::ops::batchnorm::BatchNormArgs;
use crate::ops::elementwise::elu;
use crate::tensor::{Element, Shape5};
use rayon::prelude::*;

/// Visit channel `c` of every sample as contiguous planes.
fn planes<'a, T>(s: Shape5, v: &'a [T], c: usize) -> impl Iterator<Item = &'a [T]> + 'a {
    let sp = s.spatial();
    (0..s.n).map(move |n| &v[(n * s.c + c) * sp..][..sp])
}

/// Mean and biased variance (two passes) of channel c.
fn moments<T: Element, X: Stored<T>>(s: Shape5, x: &[X], c: usize) -> (f64, f64) {
    let m = (s.n * s.spatial()) as f64;
    let mean = planes(s, x, c)
        .map(|p| p.iter().map(|v| v.load().to_f64()).sum::<f64>())
        .sum::<f64>()
        / m;
    let var = planes(s, x, c)
        .map(|p| {
            p.iter()
                .map(|v| (v.load().to_f64() - mean).powi(2))
                .sum::<f64>()
        })
        .sum::<f64>()
        / m;
    (mean, var)
}

/// Per-channel (scale, shift) applied as y = x * scale + shift.
fn apply<T: Element, X: Stored<T>, Y: Stored<T>>(
    s: Shape5,
    x: &[X],
    y: &mut [Y],
    coef: &[(f64, f64)],
    then_elu: bool,
) {
    let sp = s.spatial();
    y.par_chunks_mut(sp)
        .zip(x.par_chunks(sp))
        .enumerate()
        .for_each(|(nc, (yp, xp))| {
            let (a, b) = coef[nc % s.c];
            let (a, b) = (T::from_f64(a), T::from_f64(b));
            wide(|| {
                if then_elu {
                    // The same two roundings as the separate ops (the affine result stored and
                    // read back as y's storage, then ELU): bit-identical to apply + ELU.
                    for (o, &v) in yp.iter_mut().zip(xp) {
                        *o = Y::store(elu(Y::store(v.load() * a + b).load()));
                    }
                } else {
                    for (o, &v) in yp.iter_mut().zip(xp) {
                        *o = Y::store(v.load() * a + b);
                    }
                }
            })
        });
}

/// Returns per-channel (mean, invstd, unbiased var) and writes y.
#[allow(clippy::too_many_arguments)]
pub fn forward_train<T: Element, X: Stored<T>, Y: Stored<T>>(
    s: Shape5,
    x: &[X],
    gamma: &[T],
    beta: &[T],
    y: &mut [Y],
    mean_out: &mut [T],
    invstd_out: &mut [T],
    running: Option<(&mut [T], &mut [T])>,
    args: BatchNormArgs,
) {
    let m = (s.n * s.spatial()) as f64;
    let stats: Vec<(f64, f64)> = (0..s.c).into_par_iter().map(|c| moments(s, x, c)).collect();
    for (c, &(mean, var)) in stats.iter().enumerate() {
        mean_out[c] = T::from_f64(mean);
        invstd_out[c] = T::from_f64(1.0 / (var + args.eps).sqrt());
    }
    // From the saved (rounded) statistics, so that `apply_saved` reproduces y bit for bit.
    apply(
        s,
        x,
        y,
        &saved_coef(gamma, beta, mean_out, invstd_out),
        false,
    );
    if let Some((rm, rv)) = running {
        let unbiased = if m > 1.0 { m / (m - 1.0) } else { 1.0 };
        for (c, &(mean, var)) in stats.iter().enumerate() {
            let mo = args.momentum;
            rm[c] = T::from_f64((1.0 - mo) * rm[c].to_f64() + mo * mean);
            rv[c] = T::from_f64((1.0 - mo) * rv[c].to_f64() + mo * var * unbiased);
        }
    }
}

fn saved_coef<T: Element>(gamma: &[T], beta: &[T], mean: &[T], invstd: &[T]) -> Vec<(f64, f64)> {
    (0..gamma.len())
        .map(|c| {
            let a = gamma[c].to_f64() * invstd[c].to_f64();
            (a, beta[c].to_f64() - mean[c].to_f64() * a)
        })
        .collect()
}

/// y from saved batch statistics (a recomputation of `forward_train`'s output).
#[allow(clippy::too_many_arguments)]
pub fn apply_saved<T: Element, X: Stored<T>, Y: Stored<T>>(
    s: Shape5,
    x: &[X],
    gamma: &[T],
    beta: &[T],
    mean: &[T],
    invstd: &[T],
    y: &mut [Y],
    then_elu: bool,
) {
    apply(s, x, y, &saved_coef(gamma, beta, mean, invstd), then_elu);
}

#[allow(clippy::too_many_arguments)]
pub fn forward_infer<T: Element, X: Stored<T>, Y: Stored<T>>(
    s: Shape5,
    x: &[X],
    gamma: &[T],
    beta: &[T],
    rm: &[T],
    rv: &[T],
    y: &mut [Y],
    eps: f64,
) {
    let coef: Vec<(f64, f64)> = (0..s.c)
        .map(|c| {
            let a = gamma[c].to_f64() / (rv[c].to_f64() + eps).sqrt();
            (a, beta[c].to_f64() - rm[c].to_f64() * a)
        })
        .collect();
    apply(s, x, y, &coef, false);
}

/// xhat = (x - mean) * invstd; dbeta = sum dy; dgamma = sum dy * xhat;
/// dx = gamma * invstd / M * (M dy - dbeta - xhat dgamma).
#[allow(clippy::too_many_arguments)]
pub fn backward<T: Element, X: Stored<T>, G: Stored<T>, D: Stored<T>>(
    s: Shape5,
    x: &[X],
    dy: &[G],
    gamma: &[T],
    mean: &[T],
    invstd: &[T],
    dx: &mut [D],
    dgamma: &mut [T],
    dbeta: &mut [T],
    accumulate: bool,
) {
    let m = (s.n * s.spatial()) as f64;
    let sums: Vec<(f64, f64)> = (0..s.c)
        .into_par_iter()
        .map(|c| {
            let (mu, is) = (mean[c].to_f64(), invstd[c].to_f64());
            let mut sdy = 0.0;
            let mut sdyx = 0.0;
            for (xp, gp) in planes(s, x, c).zip(planes(s, dy, c)) {
                for (&xv, &g) in xp.iter().zip(gp) {
                    let g = g.load().to_f64();
                    sdy += g;
                    sdyx += g * (xv.load().to_f64() - mu) * is;
                }
            }
            (sdy, sdyx)
        })
        .collect();
    let sp = s.spatial();
    dx.par_chunks_mut(sp).enumerate().for_each(|(nc, dxp)| {
        let c = nc % s.c;
        let (sdy, sdyx) = sums[c];
        let (mu, is) = (mean[c].to_f64(), invstd[c].to_f64());
        let k = gamma[c].to_f64() * is / m;
        let xp = &x[nc * sp..][..sp];
        let gp = &dy[nc * sp..][..sp];
        // dx = k * (M dy - sdy - xhat * sdyx) = a * dy + b * x + c0
        let a = T::from_f64(k * m);
        let b = T::from_f64(-k * sdyx * is);
        let c0 = T::from_f64(-k * sdy + k * sdyx * is * mu);
        for ((o, &g), &xv) in dxp.iter_mut().zip(gp).zip(xp) {
            let v = a * g.load() + b * xv.load() + c0;
            *o = D::store(if accumulate { o.load() + v } else { v });
        }
    });
    for c in 0..s.c {
        dbeta[c] += T::from_f64(sums[c].0);
        dgamma[c] += T::from_f64(sums[c].1);
    }
}

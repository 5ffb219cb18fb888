//! maxpool (1x2x2, stride 1x2x2) on the CPU. The backward finds each window's arg-max again from x
//! (first maximum in window order), so no index tensor is kept between the passes.

use super::storage::Stored;
use crate::tensor::{Element, Shape5};
use rayon::prelude::*;

/// Index within the 2x2 window (0..4, row-major) of the first maximum.
#[inline(always)]
fn argmax4<T: Element>(v: [T; 4]) -> usize {
    let mut best = 0;
    for i in 1..4 {
        if v[i] > v[best] {
            best = i;
        }
    }
    best
}

pub fn forward<T: Element, X: Stored<T>, Y: Stored<T>>(xs: Shape5, x: &[X], y: &mut [Y]) {
    let (h, w) = (xs.h, xs.w);
    let (ho, wo) = (h / 2, w / 2);
    y.par_chunks_mut(ho * wo)
        .enumerate()
        .for_each(|(plane, yp)| {
            let xp = &x[plane * h * w..][..h * w];
            for i in 0..ho {
                let r0 = &xp[2 * i * w..][..w];
                let r1 = &xp[(2 * i + 1) * w..][..w];
                for j in 0..wo {
                    let v = [r0[2 * j], r0[2 * j + 1], r1[2 * j], r1[2 * j + 1]].map(|v| v.load());
                    yp[i * wo + j] = Y::store(v[argmax4(v)]);
                }
            }
        });
}

pub fn backward<T: Element, X: Stored<T>, G: Stored<T>, D: Stored<T>>(
    xs: Shape5,
    x: &[X],
    dy: &[G],
    dx: &mut [D],
    accumulate: bool,
) {
    let (h, w) = (xs.h, xs.w);
    let (ho, wo) = (h / 2, w / 2);
    dx.par_chunks_mut(h * w)
        .enumerate()
        .for_each(|(plane, dxp)| {
            let xp = &x[plane * h * w..][..h * w];
            let dyp = &dy[plane * ho * wo..][..ho * wo];
            if !accumulate {
                dxp.fill(D::store(T::ZERO));
            }
            for i in 0..ho {
                for j in 0..wo {
                    let idx = [
                        2 * i * w + 2 * j,
                        2 * i * w + 2 * j + 1,
                        (2 * i + 1) * w + 2 * j,
                        (2 * i + 1) * w + 2 * j + 1,
                    ];
                    let best = argmax4(idx.map(|k| xp[k].load()));
                    let d = &mut dxp[idx[best]];
                    *d = D::store(d.load() + dyp[i * wo + j].load());
                }
            }
        });
}

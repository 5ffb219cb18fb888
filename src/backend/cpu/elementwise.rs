//! Elementwise ops on the CPU, in chunks spread over the threads. Every operand may be stored in
//! its own format (storage.rs); arithmetic is in the compute type T.

use super::simd::wide;
use super::storage::Stored;
use crate::ops::elementwise::{elu, elu_grad_from_output};
use crate::tensor::Element;
use rayon::prelude::*;

const CHUNK: usize = 1 << 15;

pub fn elu_forward<T: Element, X: Stored<T>, Y: Stored<T>>(x: &[X], y: &mut [Y]) {
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(y, x)| {
            wide(|| {
                for (o, &i) in y.iter_mut().zip(x) {
                    *o = Y::store(elu(i.load()));
                }
            })
        });
}

pub fn elu_forward_inplace<T: Element, Y: Stored<T>>(y: &mut [Y]) {
    y.par_chunks_mut(CHUNK)
        .for_each(|y| wide(|| y.iter_mut().for_each(|v| *v = Y::store(elu(v.load())))));
}

pub fn elu_backward<T: Element, Y: Stored<T>, G: Stored<T>, D: Stored<T>>(
    y: &[Y],
    dy: &[G],
    dx: &mut [D],
    accumulate: bool,
) {
    dx.par_chunks_mut(CHUNK)
        .zip(y.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK)))
        .for_each(|(dx, (y, dy))| {
            wide(|| {
                for ((o, &yv), &g) in dx.iter_mut().zip(y).zip(dy) {
                    let v = g.load() * elu_grad_from_output(yv.load());
                    *o = D::store(if accumulate { o.load() + v } else { v });
                }
            })
        });
}

/// dx = dy * elu'(y), overwriting dy (the gradient buffer is reused in place).
pub fn elu_backward_inplace<T: Element, Y: Stored<T>, G: Stored<T>>(y: &[Y], g: &mut [G]) {
    g.par_chunks_mut(CHUNK)
        .zip(y.par_chunks(CHUNK))
        .for_each(|(g, y)| {
            wide(|| {
                for (gv, &yv) in g.iter_mut().zip(y) {
                    *gv = G::store(gv.load() * elu_grad_from_output(yv.load()));
                }
            })
        });
}

pub fn add<T: Element, P: Stored<T>, Q: Stored<T>, O: Stored<T>>(p: &[P], q: &[Q], out: &mut [O]) {
    out.par_chunks_mut(CHUNK)
        .zip(p.par_chunks(CHUNK).zip(q.par_chunks(CHUNK)))
        .for_each(|(o, (p, q))| {
            for ((o, &a), &b) in o.iter_mut().zip(p).zip(q) {
                *o = O::store(a.load() + b.load());
            }
        });
}

/// dst = dst + sign * src.
pub fn axpy_sign<T: Element, D: Stored<T>, S: Stored<T>>(dst: &mut [D], src: &[S], negative: bool) {
    dst.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(d, s)| {
            if negative {
                d.iter_mut()
                    .zip(s)
                    .for_each(|(d, &s)| *d = D::store(d.load() - s.load()));
            } else {
                d.iter_mut()
                    .zip(s)
                    .for_each(|(d, &s)| *d = D::store(d.load() + s.load()));
            }
        });
}

/// dst = src, converted between storages.
pub fn convert<T: Element, S: Stored<T>, D: Stored<T>>(src: &[S], dst: &mut [D]) {
    dst.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(d, s)| {
            for (o, &v) in d.iter_mut().zip(s) {
                *o = D::store(v.load());
            }
        });
}

pub fn scale_inplace<T: Element>(dst: &mut [T], s: T) {
    dst.par_chunks_mut(CHUNK)
        .for_each(|d| d.iter_mut().for_each(|v| *v *= s));
}

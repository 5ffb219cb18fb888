//! Elementwise ops on the CPU, in chunks spread over the threads.

use super::simd::wide;
use crate::ops::elementwise::{elu, elu_grad_from_output};
use crate::tensor::Element;
use rayon::prelude::*;

const CHUNK: usize = 1 << 15;

pub fn elu_forward<T: Element>(x: &[T], y: &mut [T]) {
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(y, x)| {
            wide(|| {
                for (o, &i) in y.iter_mut().zip(x) {
                    *o = elu(i);
                }
            })
        });
}

pub fn elu_forward_inplace<T: Element>(y: &mut [T]) {
    y.par_chunks_mut(CHUNK)
        .for_each(|y| wide(|| y.iter_mut().for_each(|v| *v = elu(*v))));
}

pub fn elu_backward<T: Element>(y: &[T], dy: &[T], dx: &mut [T], accumulate: bool) {
    dx.par_chunks_mut(CHUNK)
        .zip(y.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK)))
        .for_each(|(dx, (y, dy))| {
            wide(|| {
                for ((o, &yv), &g) in dx.iter_mut().zip(y).zip(dy) {
                    let v = g * elu_grad_from_output(yv);
                    if accumulate {
                        *o += v;
                    } else {
                        *o = v;
                    }
                }
            })
        });
}

/// dx = dy * elu'(y), overwriting dy (the gradient buffer is reused in place).
pub fn elu_backward_inplace<T: Element>(y: &[T], g: &mut [T]) {
    g.par_chunks_mut(CHUNK)
        .zip(y.par_chunks(CHUNK))
        .for_each(|(g, y)| {
            wide(|| {
                for (gv, &yv) in g.iter_mut().zip(y) {
                    *gv *= elu_grad_from_output(yv);
                }
            })
        });
}

pub fn add<T: Element>(p: &[T], q: &[T], out: &mut [T]) {
    out.par_chunks_mut(CHUNK)
        .zip(p.par_chunks(CHUNK).zip(q.par_chunks(CHUNK)))
        .for_each(|(o, (p, q))| {
            for ((o, &a), &b) in o.iter_mut().zip(p).zip(q) {
                *o = a + b;
            }
        });
}

/// dst = dst + sign * src.
pub fn axpy_sign<T: Element>(dst: &mut [T], src: &[T], negative: bool) {
    dst.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(d, s)| {
            if negative {
                d.iter_mut().zip(s).for_each(|(d, &s)| *d -= s);
            } else {
                d.iter_mut().zip(s).for_each(|(d, &s)| *d += s);
            }
        });
}

pub fn scale_inplace<T: Element>(dst: &mut [T], s: T) {
    dst.par_chunks_mut(CHUNK)
        .for_each(|d| d.iter_mut().for_each(|v| *v *= s));
}

//! Optimiser updates on the CPU.

use crate::ops::optim::{AdamParams, SgdParams};
use crate::tensor::Element;
use rayon::prelude::*;

const CHUNK: usize = 1 << 14;

pub fn adam<T: Element>(p: &mut [T], g: &[T], m: &mut [T], v: &mut [T], hp: AdamParams, step: u64) {
    let (lr_t, inv_bc2) = hp.corrections(step);
    let (b1, b2) = (T::from_f64(hp.beta1), T::from_f64(hp.beta2));
    let (c1, c2) = (T::from_f64(1.0 - hp.beta1), T::from_f64(1.0 - hp.beta2));
    let (lr_t, inv_bc2, eps) = (T::from_f64(lr_t), T::from_f64(inv_bc2), T::from_f64(hp.eps));
    p.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
        .for_each(|((p, g), (m, v))| {
            for i in 0..p.len() {
                m[i] = b1 * m[i] + c1 * g[i];
                v[i] = b2 * v[i] + c2 * g[i] * g[i];
                p[i] -= lr_t * m[i] / (v[i].sqrt() * inv_bc2 + eps);
            }
        });
}

pub fn sgd<T: Element>(p: &mut [T], g: &[T], vel: Option<&mut [T]>, hp: SgdParams) {
    let (lr, mu, wd) = (
        T::from_f64(hp.lr),
        T::from_f64(hp.momentum),
        T::from_f64(hp.weight_decay),
    );
    match vel {
        Some(vel) => {
            for i in 0..p.len() {
                let d = g[i] + wd * p[i];
                vel[i] = mu * vel[i] + d;
                p[i] -= lr * vel[i];
            }
        }
        None => {
            for i in 0..p.len() {
                let d = g[i] + wd * p[i];
                p[i] -= lr * d;
            }
        }
    }
}

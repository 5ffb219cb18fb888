//! The weighted, masked binary cross-entropy on the CPU.

use super::storage::Stored;
use crate::ops::loss::{bce_with_logits, class_weights, sigmoid};
use crate::tensor::{Element, Shape5};
use rayon::prelude::*;

pub fn weights<T: Element>(s: Shape5, target: &[T], mask: &[T], weight: &mut [T]) {
    let sp = s.spatial();
    let half = T::from_f64(0.5);
    for c in 0..s.c {
        let (mut pos, mut neg) = (0u64, 0u64);
        for n in 0..s.n {
            let o = (n * s.c + c) * sp;
            for (&t, &m) in target[o..o + sp].iter().zip(&mask[o..o + sp]) {
                if m > T::ZERO {
                    if t > half {
                        pos += 1;
                    } else {
                        neg += 1;
                    }
                }
            }
        }
        let (wp, wn) = class_weights(pos, neg);
        let (wp, wn) = (T::from_f64(wp), T::from_f64(wn));
        for n in 0..s.n {
            let o = (n * s.c + c) * sp;
            for i in o..o + sp {
                weight[i] = if mask[i] > T::ZERO {
                    if target[i] > half {
                        wp
                    } else {
                        wn
                    }
                } else {
                    T::ZERO
                };
            }
        }
    }
}

const CHUNK: usize = 1 << 14;

/// Returns the loss; writes the gradient into `dz` when given.
pub fn bce<T: Element, D: Stored<T>>(
    z: &[T],
    t: &[T],
    w: &[T],
    m: &[T],
    dz: Option<&mut [D]>,
) -> f64 {
    let count: f64 = m
        .par_chunks(CHUNK)
        .map(|c| c.iter().map(|v| v.to_f64()).sum::<f64>())
        .collect::<Vec<_>>()
        .iter()
        .sum();
    let norm = 1.0 / count.max(1.0);
    // Per-chunk sums collected in order, then added in order: deterministic.
    let partial: Vec<f64> = z
        .par_chunks(CHUNK)
        .zip(t.par_chunks(CHUNK))
        .zip(w.par_chunks(CHUNK).zip(m.par_chunks(CHUNK)))
        .map(|((z, t), (w, m))| {
            let mut s = 0.0;
            for i in 0..z.len() {
                if m[i] > T::ZERO {
                    s += (m[i] * w[i] * bce_with_logits(z[i], t[i])).to_f64();
                }
            }
            s
        })
        .collect();
    if let Some(dz) = dz {
        let nrm = T::from_f64(norm);
        dz.par_chunks_mut(CHUNK)
            .zip(z.par_chunks(CHUNK))
            .zip(
                t.par_chunks(CHUNK)
                    .zip(w.par_chunks(CHUNK).zip(m.par_chunks(CHUNK))),
            )
            .for_each(|((d, z), (t, (w, m)))| {
                for i in 0..d.len() {
                    d[i] = D::store(m[i] * w[i] * (sigmoid(z[i]) - t[i]) * nrm);
                }
            });
    }
    partial.iter().sum::<f64>() * norm
}

pub fn sigmoid_map<T: Element, X: Stored<T>, Y: Stored<T>>(x: &[X], y: &mut [Y]) {
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(y, x)| {
            for (o, &v) in y.iter_mut().zip(x) {
                *o = Y::store(sigmoid(v.load()));
            }
        });
}

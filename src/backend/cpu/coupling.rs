//! Exact reversible coupling on the CPU (ops/coupling.rs): the fixed-point step and its range
//! check in one pass, chunks over the threads.

use super::simd::wide;
use super::storage::Stored;
use crate::ops::coupling::{Direction, FixedPoint};
use crate::tensor::Element;
use rayon::prelude::*;

const CHUNK: usize = 1 << 15;

/// One chunk: y = x (+/-) q(f), or y = q(x) without f. Returns whether any result left the range;
/// the check is branch-free so the loop vectorises.
#[inline(always)]
fn chunk<T: Element, X: Stored<T>, F: Stored<T>, Y: Stored<T>>(
    fp: FixedPoint,
    x: Option<&[X]>,
    f: Option<&[F]>,
    y: &mut [Y],
    dir: Direction,
) -> bool {
    let (s, i, r) = (
        T::from_f64(fp.scale()),
        T::from_f64(fp.resolution()),
        T::from_f64(fp.range()),
    );
    let mut bad = false;
    wide(|| match (x, f) {
        (None, None) => {
            for v in y.iter_mut() {
                let q = fp.quantize(v.load(), s, i);
                *v = Y::store(q);
                bad |= !FixedPoint::in_range(q, r);
            }
        }
        (Some(x), None) => {
            for (v, &a) in y.iter_mut().zip(x) {
                let q = fp.quantize(a.load(), s, i);
                *v = Y::store(q);
                bad |= !FixedPoint::in_range(q, r);
            }
        }
        (x, Some(f)) => {
            let neg = dir == Direction::Inverse;
            let step = |a: T, b: F| {
                let q = fp.quantize(b.load(), s, i);
                if neg {
                    a - q
                } else {
                    a + q
                }
            };
            match x {
                None => {
                    for (v, &b) in y.iter_mut().zip(f) {
                        let n = step(v.load(), b);
                        *v = Y::store(n);
                        bad |= !FixedPoint::in_range(n, r);
                    }
                }
                Some(x) => {
                    for ((v, &a), &b) in y.iter_mut().zip(x).zip(f) {
                        let n = step(a.load(), b);
                        *v = Y::store(n);
                        bad |= !FixedPoint::in_range(n, r);
                    }
                }
            }
        }
    });
    bad
}

/// The coupling over a whole tensor; `x` None means in place (y holds x). Returns the first
/// element out of range and its value.
pub fn coupling<T: Element, X: Stored<T>, F: Stored<T>, Y: Stored<T>>(
    fp: FixedPoint,
    x: Option<&[X]>,
    f: Option<&[F]>,
    y: &mut [Y],
    dir: Direction,
) -> Option<(usize, f64)> {
    let bad_chunk = y
        .par_chunks_mut(CHUNK)
        .enumerate()
        .map(|(c, yc)| {
            let r = c * CHUNK..c * CHUNK + yc.len();
            let bad = chunk::<T, X, F, Y>(fp, x.map(|x| &x[r.clone()]), f.map(|f| &f[r]), yc, dir);
            bad.then_some(c)
        })
        .flatten()
        .min()?;
    let range = fp.range();
    let start = bad_chunk * CHUNK;
    let at = y[start..]
        .iter()
        .position(|v| !(v.load().to_f64().abs() <= range))
        .map(|k| start + k)
        .unwrap_or(start);
    Some((at, y[at].load().to_f64()))
}

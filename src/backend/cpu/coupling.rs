//! Exact reversible coupling on the CPU (ops/coupling.rs): the fixed-point step and its range
//! check in one pass, chunks over the threads.

use super::simd::wide;
use crate::ops::coupling::{Direction, FixedPoint};
use crate::tensor::Element;
use rayon::prelude::*;

const CHUNK: usize = 1 << 15;

/// One chunk: y = x (+/-) q(f), or y = q(x) without f. Returns whether any result left the range;
/// the check is branch-free so the loop vectorises.
#[inline(always)]
fn chunk<T: Element>(
    fp: FixedPoint,
    x: Option<&[T]>,
    f: Option<&[T]>,
    y: &mut [T],
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
                *v = fp.quantize(*v, s, i);
                bad |= !FixedPoint::in_range(*v, r);
            }
        }
        (Some(x), None) => {
            for (v, &a) in y.iter_mut().zip(x) {
                *v = fp.quantize(a, s, i);
                bad |= !FixedPoint::in_range(*v, r);
            }
        }
        (x, Some(f)) => {
            let neg = dir == Direction::Inverse;
            let step = |a: T, b: T| {
                let q = fp.quantize(b, s, i);
                if neg {
                    a - q
                } else {
                    a + q
                }
            };
            match x {
                None => {
                    for (v, &b) in y.iter_mut().zip(f) {
                        *v = step(*v, b);
                        bad |= !FixedPoint::in_range(*v, r);
                    }
                }
                Some(x) => {
                    for ((v, &a), &b) in y.iter_mut().zip(x).zip(f) {
                        *v = step(a, b);
                        bad |= !FixedPoint::in_range(*v, r);
                    }
                }
            }
        }
    });
    bad
}

/// The coupling over a whole tensor; `x` None means in place (y holds x). Returns the first
/// element out of range and its value.
pub fn coupling<T: Element>(
    fp: FixedPoint,
    x: Option<&[T]>,
    f: Option<&[T]>,
    y: &mut [T],
    dir: Direction,
) -> Option<(usize, f64)> {
    let bad_chunk = y
        .par_chunks_mut(CHUNK)
        .enumerate()
        .map(|(c, yc)| {
            let r = c * CHUNK..c * CHUNK + yc.len();
            let bad = chunk(fp, x.map(|x| &x[r.clone()]), f.map(|f| &f[r]), yc, dir);
            bad.then_some(c)
        })
        .flatten()
        .min()?;
    let range = fp.range();
    let start = bad_chunk * CHUNK;
    let at = y[start..]
        .iter()
        .position(|v| !(v.to_f64().abs() <= range))
        .map(|k| start + k)
        .unwrap_or(start);
    Some((at, y[at].to_f64()))
}

//! Exact reversible coupling on the CPU (ops/coupling.rs): the fixed-point step and its range
//! check in one pass, chunks over the threads.

use super::simd::wide;
use super::storage::Stored;
use crate::ops::coupling::{Direction, Fix16, FixedPoint, FIX16_FRAC_BITS};
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

/// Elements per pass of the 16-bit kernels: results go through an i32 block first (branch-free,
/// so the loop vectorises) and are stored once the block's range check has run.
const BLOCK: usize = 2048;

/// Stores a block of results: in range as i16, the others as `Fix16::NAN`, never wrapped (so
/// after an overflow every bad element of the tensor reads as NaN).
/// Returns the index of the first one out of range.
#[inline(always)]
fn store_block(n: &[i32], y: &mut [Fix16]) -> Option<usize> {
    let lim = Fix16::LIMIT;
    if n.iter().all(|&k| k.abs() <= lim) {
        for (v, &k) in y.iter_mut().zip(n) {
            *v = Fix16(k as i16);
        }
        return None;
    }
    for (v, &k) in y.iter_mut().zip(n) {
        *v = if k.abs() <= lim {
            Fix16(k as i16)
        } else {
            Fix16::NAN
        };
    }
    n.iter().position(|&k| k.abs() > lim)
}

/// Runs `run(start, chunk)` on the thread chunks of y; the first bad element over all of them.
fn over_chunks(
    y: &mut [Fix16],
    run: impl Fn(usize, &mut [Fix16]) -> Option<(usize, f64)> + Sync + Send,
) -> Option<(usize, f64)> {
    y.par_chunks_mut(CHUNK)
        .enumerate()
        .filter_map(|(c, yc)| run(c * CHUNK, yc))
        .min_by_key(|(at, _)| *at)
}

const FIX_SCALE: f32 = (1u32 << FIX16_FRAC_BITS) as f32;

/// round(v * 2^S) as an i32 that cannot saturate into range: clamped to +-2^16 (beyond any
/// |k| <= 2^15 - 1 plus another such), NaN to i32::MAX.
#[inline(always)]
fn grid_k(v: f32) -> i32 {
    let q = (v * FIX_SCALE).round_ties_even();
    if q.is_nan() {
        i32::MAX
    } else {
        q.clamp(-65536.0, 65536.0) as i32
    }
}

/// A chain's entry into the 16-bit state: y = q(x), x a float tensor. Returns the first element
/// out of range (or not finite) and its rounded value.
pub fn entry_fix16<X: Stored<f32>>(x: &[X], y: &mut [Fix16]) -> Option<(usize, f64)> {
    over_chunks(y, |start, yc| {
        let xc = &x[start..start + yc.len()];
        let mut n = [0i32; BLOCK];
        // Every block is written, so each bad element is marked whatever comes first.
        let mut first = None;
        for (b, (xb, yb)) in xc.chunks(BLOCK).zip(yc.chunks_mut(BLOCK)).enumerate() {
            let n = &mut n[..xb.len()];
            wide(|| {
                for (k, &v) in n.iter_mut().zip(xb) {
                    *k = grid_k(v.load());
                }
            });
            if let Some(j) = store_block(n, yb) {
                let s = FIX_SCALE as f64;
                let v = (xb[j].load() as f64 * s).round_ties_even() / s;
                first = first.or(Some((start + b * BLOCK + j, v)));
            }
        }
        first
    })
}

/// One coupling step on the 16-bit state: y = x + q(f) (forward) or x - q(f) (inverse) in
/// integer arithmetic on k (i16 widened to i32); `x` None: in place (y holds x). A NaN-marked
/// input element is out of range too. Returns the first element out of range and the value it
/// would have had.
pub fn step_fix16<F: Stored<f32>>(
    x: Option<&[Fix16]>,
    f: &[F],
    y: &mut [Fix16],
    dir: Direction,
) -> Option<(usize, f64)> {
    let neg = dir == Direction::Inverse;
    let one = |k: i16, b: F| -> i32 {
        let q = grid_k(b.load());
        if k == i16::MIN || q == i32::MAX {
            i32::MAX
        } else if neg {
            k as i32 - q
        } else {
            k as i32 + q
        }
    };
    let value = |k: i16, b: F| -> f64 {
        let s = FIX_SCALE as f64;
        let q = (b.load() as f64 * s).round_ties_even();
        let k = if k == i16::MIN { f64::NAN } else { k as f64 };
        (if neg { k - q } else { k + q }) / s
    };
    over_chunks(y, |start, yc| {
        let fc = &f[start..start + yc.len()];
        let xc = x.map(|x| &x[start..start + yc.len()]);
        let mut n = [0i32; BLOCK];
        let mut first = None;
        for (b, (fb, yb)) in fc.chunks(BLOCK).zip(yc.chunks_mut(BLOCK)).enumerate() {
            let n = &mut n[..fb.len()];
            let xb = xc.map(|xc| &xc[b * BLOCK..b * BLOCK + fb.len()]);
            {
                let xs: &[Fix16] = xb.unwrap_or(yb);
                wide(|| {
                    for ((k, &a), &v) in n.iter_mut().zip(xs).zip(fb) {
                        *k = one(a.0, v);
                    }
                });
            }
            // y is still unwritten here, so the failing element's old k is at hand.
            let bad = n.iter().position(|&k| k.abs() > Fix16::LIMIT);
            let reported = bad.map(|j| value(xb.unwrap_or(yb)[j].0, fb[j]));
            store_block(n, yb);
            if let (Some(j), Some(v)) = (bad, reported) {
                first = first.or(Some((start + b * BLOCK + j, v)));
            }
        }
        first
    })
}

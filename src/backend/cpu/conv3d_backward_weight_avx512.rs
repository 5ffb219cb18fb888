//! The weight gradient's per-tile product in f32 with AVX-512: dW (Co x K) += dY (Co x P) B^T,
//! with B the tile's im2col matrix (K x P). Both operands are contiguous along P, the summed
//! dimension, so a block of 7 output channels x 4 columns of dW keeps 28 zmm accumulators of
//! 16 partial sums each and reads dY and B as they lie. A general GEMM must first transpose B into
//! panels, which cost as much as the arithmetic for the narrow layers; the accumulators' lane sums
//! are folded four at a time (`sum4`), since a tile of 480 positions gives each only 30 FMAs.
//!
//! Each dW entry adds its tile's 16 lane sums in a fixed order, so results are deterministic.

use std::arch::x86_64::*;

const CB: usize = 7;
const KB: usize = 4;

/// Whether this CPU runs the kernel.
pub fn supported() -> bool {
    std::is_x86_feature_detected!("avx512f")
}

/// acc[i * k + j] += sum over q < p of a[i * lda + q] * b[j * ldb + q], for i < co, j < k.
///
/// # Safety
/// `supported()` holds; a has co rows of p readable elements at stride lda, b has k rows at
/// stride ldb; acc has co * k elements.
#[allow(clippy::too_many_arguments)]
pub unsafe fn dot_tile(
    co: usize,
    k: usize,
    p: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    acc: &mut [f32],
) {
    assert!(acc.len() >= co * k);
    for j0 in (0..k).step_by(KB) {
        let kb = KB.min(k - j0);
        for i0 in (0..co).step_by(CB) {
            let cb = CB.min(co - i0);
            let (a0, b0) = (a.add(i0 * lda), b.add(j0 * ldb));
            let out = acc.as_mut_ptr().add(i0 * k + j0);
            macro_rules! arms {
                ($($c:literal)*) => {
                    match (cb, kb) {
                        $(($c, 4) => block::<$c, 4>(p, a0, lda, b0, ldb, out, k),
                          ($c, 3) => block::<$c, 3>(p, a0, lda, b0, ldb, out, k),
                          ($c, 2) => block::<$c, 2>(p, a0, lda, b0, ldb, out, k),
                          ($c, 1) => block::<$c, 1>(p, a0, lda, b0, ldb, out, k),)*
                        _ => unreachable!("block {cb}x{kb}"),
                    }
                };
            }
            arms!(1 2 3 4 5 6 7);
        }
    }
}

#[target_feature(enable = "avx512f")]
unsafe fn block<const C: usize, const K: usize>(
    p: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    out: *mut f32,
    ldo: usize,
) {
    let mut acc = [[_mm512_setzero_ps(); K]; C];
    let full = p / 16 * 16;
    let mut q = 0;
    while q < full {
        let mut bv = [_mm512_setzero_ps(); K];
        for (j, v) in bv.iter_mut().enumerate() {
            *v = _mm512_loadu_ps(b.add(j * ldb + q));
        }
        for (i, acc_i) in acc.iter_mut().enumerate() {
            let av = _mm512_loadu_ps(a.add(i * lda + q));
            for j in 0..K {
                acc_i[j] = _mm512_fmadd_ps(av, bv[j], acc_i[j]);
            }
        }
        q += 16;
    }
    if q < p {
        let m: u16 = (1u16 << (p - q)) - 1;
        let mut bv = [_mm512_setzero_ps(); K];
        for (j, v) in bv.iter_mut().enumerate() {
            *v = _mm512_maskz_loadu_ps(m, b.add(j * ldb + q));
        }
        for (i, acc_i) in acc.iter_mut().enumerate() {
            let av = _mm512_maskz_loadu_ps(m, a.add(i * lda + q));
            for j in 0..K {
                acc_i[j] = _mm512_fmadd_ps(av, bv[j], acc_i[j]);
            }
        }
    }
    for (i, acc_i) in acc.iter().enumerate() {
        let o = out.add(i * ldo);
        if K == 4 {
            let s = sum4(acc_i[0], acc_i[1], acc_i[2], acc_i[3]);
            _mm_storeu_ps(o, _mm_add_ps(_mm_loadu_ps(o), s));
        } else {
            for (j, &v) in acc_i.iter().enumerate() {
                *o.add(j) += _mm512_reduce_add_ps(v);
            }
        }
    }
}

/// The 16-lane sums of four vectors as one 4-lane vector: half the shuffles of four separate
/// reductions, which matter when a tile is short (480 positions: 30 FMAs per accumulator).
#[target_feature(enable = "avx512f")]
unsafe fn sum4(a: __m512, b: __m512, c: __m512, d: __m512) -> __m128 {
    // Per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3] and the same for c, d.
    let ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    let cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
    // Per 128-bit lane: [sum a, sum b, sum c, sum d] over that lane.
    let t = _mm512_add_ps(
        _mm512_shuffle_ps::<0x44>(ab, cd),
        _mm512_shuffle_ps::<0xEE>(ab, cd),
    );
    // Add the four 128-bit lanes: swap halves, then neighbours.
    let x = _mm512_add_ps(t, _mm512_shuffle_f32x4::<0x4E>(t, t));
    let y = _mm512_add_ps(x, _mm512_shuffle_f32x4::<0xB1>(x, x));
    _mm512_castps512_ps128(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn matches_f64_dot_products_on_ragged_shapes() {
        if !supported() {
            eprintln!("skipped: this CPU has no AVX-512 (the GEMM path runs instead)");
            return;
        }
        let mut rng = Rng::new(11);
        // Channel and column counts off the 7 x 4 blocks, lengths off the 16 lanes, padded strides.
        for &(co, k, p) in &[
            (14, 378, 480),
            (3, 5, 17),
            (9, 13, 1),
            (1, 1, 16),
            (8, 27, 33),
        ] {
            let (lda, ldb) = (p + 3, p + 5);
            let a: Vec<f32> = (0..co * lda).map(|_| rng.uniform() as f32 - 0.5).collect();
            let b: Vec<f32> = (0..k * ldb).map(|_| rng.uniform() as f32 - 0.5).collect();
            let start: Vec<f32> = (0..co * k).map(|_| rng.uniform() as f32).collect();
            let mut acc = start.clone();
            unsafe { dot_tile(co, k, p, a.as_ptr(), lda, b.as_ptr(), ldb, &mut acc) };
            for i in 0..co {
                for j in 0..k {
                    let e: f64 = start[i * k + j] as f64
                        + (0..p)
                            .map(|q| a[i * lda + q] as f64 * b[j * ldb + q] as f64)
                            .sum::<f64>();
                    let got = acc[i * k + j] as f64;
                    assert!(
                        (got - e).abs() <= 1e-5 * (1.0 + e.abs()) * (p as f64).sqrt(),
                        "co {co} k {k} p {p}: [{i}][{j}] = {got}, expected {e}"
                    );
                }
            }
        }
    }
}

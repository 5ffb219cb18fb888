//! Exact reversible coupling: the state of a reversible chain held in fixed point, so that the
//! inverse x1 = y1 - F(x2), x2 = y2 - G(y1) gives back the forward's inputs bit for bit through
//! any number of blocks (MacKay et al. 2018, "Reversible recurrent neural networks").
//!
//! Representation: every value of the chain's two halves is an integer k times 2^-S (S =
//! `frac_bits`), with |k| <= 2^24, held in an f32 (or f64) container. Every such value is exactly
//! representable in f32 (24-bit significand), and so is the sum or difference of two of them
//! whenever the result is again within |k| <= 2^24: float addition of grid values in range is
//! exact integer addition on k. F and G read the state as ordinary floats (no conversion), and
//! their outputs are rounded to the grid (ties to even) before they are added:
//!
//!   forward  y1 = x1 + q(F(x2)),  y2 = x2 + q(G(y1))
//!   inverse  x2 = y2 - q(G(y1)),  x1 = y1 - q(F(x2))
//!
//! Every kernel of the engine is deterministic, so F(x2) recomputed from an exactly rebuilt x2 has
//! the forward's bits, q(F(x2)) too, and the subtraction undoes the addition exactly. The chain's
//! input is rounded to the grid once when it enters. The gradient treats q as the identity
//! (straight-through), as the rounding is below the resolution the network learns at.
//!
//! Range: |value| <= 2^(24 - S); with the default S = 16, resolution 2^-16 (1.5e-5) and range
//! +-256. A result outside it (or not finite) is an error naming the value and the block, never a
//! wrapped or rounded result.

use crate::error::{Error, Result};
use crate::tensor::Element;

/// The fixed-point format of a reversible chain's state: values k * 2^-frac_bits, |k| <= 2^24.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FixedPoint {
    pub frac_bits: u32,
}

/// Bits of the integer k that f32's significand holds exactly.
pub const SIGNIFICAND_BITS: u32 = 24;

impl Default for FixedPoint {
    fn default() -> Self {
        FixedPoint { frac_bits: 16 }
    }
}

impl FixedPoint {
    pub fn new(frac_bits: u32) -> Result<Self> {
        if frac_bits > 40 {
            return Err(Error::Invalid(format!(
                "exact coupling: {frac_bits} fraction bits leave no integer range; use at most 40 \
                 (16 is the default)"
            )));
        }
        Ok(FixedPoint { frac_bits })
    }
    /// 2^S: multiplying by it is exact (a power of two).
    pub fn scale(self) -> f64 {
        (2.0f64).powi(self.frac_bits as i32)
    }
    /// The largest magnitude a state value may take: 2^(24 - S).
    pub fn range(self) -> f64 {
        (2.0f64).powi(SIGNIFICAND_BITS as i32 - self.frac_bits as i32)
    }
    /// The grid spacing 2^-S.
    pub fn resolution(self) -> f64 {
        1.0 / self.scale()
    }

    /// v rounded to the grid: round(v * 2^S) * 2^-S, both products exact.
    #[inline(always)]
    pub fn quantize<T: Element>(self, v: T, scale: T, inv: T) -> T {
        (v * scale).round_ties_even() * inv
    }

    /// Whether a state value may be held exactly (NaN is not).
    #[inline(always)]
    pub fn in_range<T: Element>(v: T, range: T) -> bool {
        v.abs() <= range
    }

    /// The error for a state value outside the range: `at` is the element index in the tensor.
    pub fn overflow(self, what: &str, at: usize, value: f64) -> Error {
        Error::Value {
            what: what.into(),
            detail: format!(
                "exact coupling overflow: element {at} is {value:e}, outside the fixed-point \
                 range +-{} (scale 2^-{}); the chain's activations grew too large (lower the \
                 learning rate, or train without exact coupling)",
                self.range(),
                self.frac_bits
            ),
        }
    }
}

/// Which coupling a call computes: y = x + q(f) (forward) or x = y - q(f) (inverse).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Forward,
    Inverse,
}

/// Scalar reference of one coupling step on a whole tensor (tests and the f64 path use it): the
/// result and the first element out of range, if any.
pub fn reference<T: Element>(
    fp: FixedPoint,
    x: &[T],
    f: Option<&[T]>,
    dir: Direction,
) -> (Vec<T>, Option<usize>) {
    let (s, i, r) = (
        T::from_f64(fp.scale()),
        T::from_f64(fp.resolution()),
        T::from_f64(fp.range()),
    );
    let y: Vec<T> = match f {
        None => x.iter().map(|&v| fp.quantize(v, s, i)).collect(),
        Some(f) => x
            .iter()
            .zip(f)
            .map(|(&a, &b)| {
                let q = fp.quantize(b, s, i);
                match dir {
                    Direction::Forward => a + q,
                    Direction::Inverse => a - q,
                }
            })
            .collect(),
    };
    let bad = y.iter().position(|&v| !FixedPoint::in_range(v, r));
    (y, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_sums_in_range_are_exact_and_undone() {
        let fp = FixedPoint::default();
        // Values near the range's edge, where f32's last bit is the grid's spacing.
        let x = [255.999_98f32, -200.5, 1.0e-3, 0.0];
        let f = [-0.123_456_7f32, 55.25, 3.3e-5, -255.0];
        let (xq, bad) = reference(fp, &x, None, Direction::Forward);
        assert_eq!(bad, None);
        let (y, bad) = reference(fp, &xq, Some(&f), Direction::Forward);
        assert_eq!(bad, None, "{y:?}");
        let (back, _) = reference(fp, &y, Some(&f), Direction::Inverse);
        for (a, b) in back.iter().zip(&xq) {
            assert_eq!(a.to_bits(), b.to_bits());
        }
        // Every result is an integer multiple of 2^-16 (checked in f64, where it is exact).
        for v in &y {
            let k = *v as f64 * fp.scale();
            assert_eq!(k, k.round(), "{v} is off the grid");
        }
    }

    #[test]
    fn out_of_range_results_are_found() {
        let fp = FixedPoint::default();
        let (_, bad) = reference(fp, &[250.0f32, 1.0], Some(&[10.0, 0.0]), Direction::Forward);
        assert_eq!(bad, Some(0));
        let (_, bad) = reference(fp, &[0.0f32, f32::NAN], None, Direction::Forward);
        assert_eq!(bad, Some(1));
        assert!(FixedPoint::new(41).is_err());
        assert_eq!(FixedPoint::new(12).unwrap().range(), 4096.0);
    }
}

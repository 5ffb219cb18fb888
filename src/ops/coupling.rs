//! Exact reversible coupling: the state of a reversible chain held in fixed point, so that the
//! inverse x1 = y1 - F(x2), x2 = y2 - G(y1) gives back the forward's inputs bit for bit through
//! any number of blocks (MacKay et al. 2018, "Reversible recurrent neural networks").
//!
//! Representation: every value of the chain's two halves is an integer k times 2^-S (S =
//! `frac_bits`), with |k| at most the format's limit. Two formats, one arithmetic:
//! - f32 container (`Storage::F32`): |k| <= 2^24, held in an f32 (or f64). Every such value is
//!   exactly representable in f32 (24-bit significand), and so is the sum or difference of two of
//!   them whenever the result is again within the limit: float addition of grid values in range is
//!   exact integer addition on k. Default S = 16: resolution 2^-16, range +-256.
//! - 16-bit (`Storage::Fix16`, the state of bf16 plans): k an i16, |k| <= 2^15 - 1 (i16::MIN is
//!   never a value: it marks a freed or invalid element and reads as NaN), S = `FIX16_FRAC_BITS`.
//!   The coupling adds k in i32 and checks the limit before it stores.
//!
//! F and G read the state as ordinary floats, and their outputs are rounded to the grid (ties to
//! even) before they are added:
//!
//!   forward  y1 = x1 + q(F(x2)),  y2 = x2 + q(G(y1))
//!   inverse  x2 = y2 - q(G(y1)),  x1 = y1 - q(F(x2))
//!
//! Every kernel of the engine is deterministic, so F(x2) recomputed from an exactly rebuilt x2 has
//! the forward's bits, q(F(x2)) too, and the subtraction undoes the addition exactly. The chain's
//! input is rounded to the grid once when it enters. The gradient treats q as the identity
//! (straight-through), as the rounding is below the resolution the network learns at.
//!
//! Range: |value| <= limit * 2^-S. A result outside it (or not finite) is an error naming the
//! value and the block, never a wrapped or rounded result.

use crate::error::{Error, Result};
use crate::precision::{Precision, Storage};
use crate::tensor::Element;

/// The fixed-point format of a reversible chain's state: values k * 2^-frac_bits, |k| at most
/// the limit of `storage` (2^24 in an f32 container, 2^15 - 1 in 16 bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FixedPoint {
    pub frac_bits: u32,
    /// The state buffers' storage: `F32` or `Fix16`.
    pub storage: Storage,
}

/// Bits of the integer k that f32's significand holds exactly.
pub const SIGNIFICAND_BITS: u32 = 24;

/// S of the 16-bit state: resolution 2^-7 (7.8e-3), range +-255.99. Trained chains of 16 blocks
/// reach |state| 129 within 200 steps, past a 2^-8 grid's +-128 (docs/ARCHITECTURE.md,
/// "Storage per buffer", has the measurements).
pub const FIX16_FRAC_BITS: u32 = 7;

impl Default for FixedPoint {
    fn default() -> Self {
        FixedPoint {
            frac_bits: 16,
            storage: Storage::F32,
        }
    }
}

impl FixedPoint {
    /// The f32-container format with S fraction bits.
    pub fn new(frac_bits: u32) -> Result<Self> {
        if frac_bits > 40 {
            return Err(Error::Invalid(format!(
                "exact coupling: {frac_bits} fraction bits leave no integer range; use at most 40 \
                 (16 is the default)"
            )));
        }
        Ok(FixedPoint {
            frac_bits,
            storage: Storage::F32,
        })
    }
    /// The 16-bit format (i16 k, S = `FIX16_FRAC_BITS`).
    pub const fn fix16() -> Self {
        FixedPoint {
            frac_bits: FIX16_FRAC_BITS,
            storage: Storage::Fix16,
        }
    }
    /// The state format of a plan in `p`: 16 bits beside bf16 activations (a 4-byte state would
    /// double the bytes of every chain output kept for the backward), the f32 container otherwise.
    pub fn for_precision(p: Precision) -> Self {
        match p.activation_storage() {
            Storage::Bf16 => Self::fix16(),
            _ => Self::default(),
        }
    }
    /// The exact coupling of a training plan in `p`, if any: asked for, or always with bf16
    /// activations, where x1 = y1 - F(x2) in bf16 would lose the low bits of every rebuilt input
    /// and the error would grow with each block.
    pub fn for_plan(requested: bool, p: Precision) -> Option<Self> {
        (requested || p.activation_storage() == Storage::Bf16).then(|| Self::for_precision(p))
    }
    /// 2^S: multiplying by it is exact (a power of two).
    pub fn scale(self) -> f64 {
        (2.0f64).powi(self.frac_bits as i32)
    }
    /// The largest |k|.
    pub fn limit(self) -> f64 {
        match self.storage {
            Storage::Fix16 => i16::MAX as f64,
            _ => (2.0f64).powi(SIGNIFICAND_BITS as i32),
        }
    }
    /// The largest magnitude a state value may take: limit * 2^-S.
    pub fn range(self) -> f64 {
        self.limit() / self.scale()
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
                 range +-{} (scale 2^-{}, {} state); the chain's activations grew too large \
                 (lower the learning rate, or train in f32 without exact coupling)",
                self.range(),
                self.frac_bits,
                self.storage.name()
            ),
        }
    }
}

/// One element of a 16-bit chain state: the value k * 2^-FIX16_FRAC_BITS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[repr(transparent)]
pub struct Fix16(pub i16);

impl Fix16 {
    /// Outside the symmetric range +-(2^15 - 1), so no coupling ever stores it as a value: it
    /// marks a poisoned (freed) or invalid element and reads as NaN, so that a read after free
    /// shows up as it does in float buffers.
    pub const NAN: Fix16 = Fix16(i16::MIN);
    pub const LIMIT: i32 = i16::MAX as i32;
    const RES: f32 = 1.0 / (1u32 << FIX16_FRAC_BITS) as f32;
    const SCALE: f32 = (1u32 << FIX16_FRAC_BITS) as f32;

    /// The value, exact in f32 (15 bits times a power of two).
    #[inline(always)]
    pub fn to_f32(self) -> f32 {
        let v = self.0 as f32 * Self::RES;
        if self.0 == i16::MIN {
            f32::NAN
        } else {
            v
        }
    }
    /// v rounded to the grid (ties to even); `NAN` when the result is out of range or v is not
    /// finite: never a wrapped value.
    #[inline(always)]
    pub fn quantize(v: f32) -> Fix16 {
        let q = (v * Self::SCALE).round_ties_even();
        if q.abs() <= Self::LIMIT as f32 {
            Fix16(q as i16)
        } else {
            Self::NAN
        }
    }
    /// v when it lies on the grid and in range (NaN gives `NAN`); None otherwise.
    pub fn exact(v: f32) -> Option<Fix16> {
        if v.is_nan() {
            return Some(Self::NAN);
        }
        let q = Self::quantize(v);
        (q != Self::NAN && q.to_f32() == v).then_some(q)
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

    #[test]
    fn the_16_bit_format_by_hand() {
        let fp = FixedPoint::fix16();
        assert_eq!(fp.storage, Storage::Fix16);
        assert_eq!(fp.frac_bits, 7);
        // (2^15 - 1) / 2^7
        assert_eq!(fp.range(), 255.992_187_5);
        assert_eq!(fp.resolution(), 1.0 / 128.0);
        assert_eq!(FixedPoint::for_precision(Precision::Bf16), fp);
        assert_eq!(
            FixedPoint::for_precision(Precision::F32),
            FixedPoint::default()
        );
        // 1.5 = 192 / 128; 0.001 rounds to 0; 3/256 is a tie and goes to the even k = 2.
        assert_eq!(Fix16::quantize(1.5), Fix16(192));
        assert_eq!(Fix16::quantize(0.001), Fix16(0));
        assert_eq!(Fix16::quantize(3.0 / 256.0), Fix16(2));
        assert_eq!(Fix16::quantize(-255.992_187_5), Fix16(-32767));
        // Just past the range, and not finite: the NaN mark, never a wrapped k.
        assert_eq!(Fix16::quantize(256.0), Fix16::NAN);
        assert_eq!(Fix16::quantize(f32::INFINITY), Fix16::NAN);
        assert_eq!(Fix16::quantize(f32::NAN), Fix16::NAN);
        assert!(Fix16::NAN.to_f32().is_nan());
        assert_eq!(Fix16(-32767).to_f32(), -255.992_187_5);
        assert_eq!(Fix16::exact(0.25), Some(Fix16(32)));
        assert_eq!(Fix16::exact(0.001), None);
        assert_eq!(Fix16::exact(300.0), None);
        // The reference on the 16-bit grid in f32 containers: the same k arithmetic.
        // 27.99 * 128 = 3582.72 -> 3583; 0.0051 * 128 = 0.65 -> 1.
        let (y, bad) = reference(
            fp,
            &[100.0f32, -3.0],
            Some(&[27.99, 0.0051]),
            Direction::Forward,
        );
        assert_eq!(bad, None);
        assert_eq!(y, vec![127.992_187_5, -2.992_187_5]);
        let (_, bad) = reference(fp, &[250.0f32], Some(&[6.0]), Direction::Forward);
        assert_eq!(bad, Some(0));
    }
}

//! Shapes, element types and host tensors. Tensors are 5-D (N, C, D, H, W), contiguous, x fastest.

use crate::error::{Error, Result};
use std::fmt;

/// A 5-D shape. Convolution weights use the same type: (out, in, kD, kH, kW).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Shape5 {
    pub n: usize,
    pub c: usize,
    pub d: usize,
    pub h: usize,
    pub w: usize,
}

impl Shape5 {
    pub const fn new(n: usize, c: usize, d: usize, h: usize, w: usize) -> Self {
        Shape5 { n, c, d, h, w }
    }
    /// A vector of `len` values (bias, BN parameters), as (1, len, 1, 1, 1).
    pub const fn vector(len: usize) -> Self {
        Shape5::new(1, len, 1, 1, 1)
    }
    pub fn len(&self) -> usize {
        self.n * self.c * self.d * self.h * self.w
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Voxels of one channel of one sample.
    pub fn spatial(&self) -> usize {
        self.d * self.h * self.w
    }
    pub fn dims(&self) -> [usize; 5] {
        [self.n, self.c, self.d, self.h, self.w]
    }
    pub fn with_c(self, c: usize) -> Self {
        Shape5 { c, ..self }
    }
}

impl fmt::Display for Shape5 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}x{}x{}x{}", self.n, self.c, self.d, self.h, self.w)
    }
}

/// The float types the engine computes in: f32 for work, f64 for reference checks.
pub trait Element:
    Copy
    + Send
    + Sync
    + 'static
    + fmt::Debug
    + Default
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::Neg<Output = Self>
    + std::ops::AddAssign
    + std::ops::SubAssign
    + std::ops::MulAssign
{
    const ZERO: Self;
    const ONE: Self;
    const NAME: &'static str;
    const NAN: Self;
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    fn exp(self) -> Self;
    /// exp for x <= 0 in a form the compiler vectorises: f32 uses a polynomial (relative error
    /// about 1e-7, below f32 rounding of the results it feeds); f64 stays exact for reference checks.
    fn exp_nonpositive(self) -> Self;
    fn ln_1p(self) -> Self;
    fn sqrt(self) -> Self;
    fn abs(self) -> Self;
    /// Nearest integer, ties to even (IEEE roundTiesToEven; CUDA's and C's `rintf`).
    fn round_ties_even(self) -> Self;
    fn is_finite(self) -> bool;
    fn max(self, o: Self) -> Self {
        if o > self {
            o
        } else {
            self
        }
    }
}

/// e^x for x <= 0 without a libm call: x = n ln2 + r with |r| <= ln2/2, e^r by its degree-6
/// Taylor polynomial, 2^n assembled in the exponent bits. Rounding to n uses the 1.5 * 2^23 trick so
/// that the loop vectorises with plain SSE2.
#[inline(always)]
pub fn exp_nonpositive_f32(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    // Not f32::max, which drops a NaN: a NaN must stay NaN (poisoned buffers, diverged runs).
    #[allow(clippy::manual_clamp)]
    let x = if x < -87.0 { -87.0 } else { x };
    let n = (x * std::f32::consts::LOG2_E + MAGIC) - MAGIC;
    let r = (x - n * 0.693_145_75) - n * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

macro_rules! impl_element {
    ($t:ty, $name:expr, $expn:expr) => {
        impl Element for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const NAME: &'static str = $name;
            const NAN: Self = <$t>::NAN;
            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[inline(always)]
            fn exp_nonpositive(self) -> Self {
                $expn(self)
            }
            #[inline(always)]
            fn ln_1p(self) -> Self {
                <$t>::ln_1p(self)
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline(always)]
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            #[inline(always)]
            fn round_ties_even(self) -> Self {
                <$t>::round_ties_even(self)
            }
            #[inline(always)]
            fn is_finite(self) -> bool {
                <$t>::is_finite(self)
            }
        }
    };
}
impl_element!(f32, "f32", exp_nonpositive_f32);
impl_element!(f64, "f64", f64::exp);

/// A tensor in host memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor<T> {
    pub shape: Shape5,
    pub data: Vec<T>,
}

impl<T: Element> Tensor<T> {
    pub fn zeros(shape: Shape5) -> Self {
        Tensor {
            shape,
            data: vec![T::ZERO; shape.len()],
        }
    }
    pub fn from_vec(shape: Shape5, data: Vec<T>) -> Result<Self> {
        if data.len() != shape.len() {
            return Err(Error::shape(
                "tensor",
                format!(
                    "shape {shape} holds {} values, got {}",
                    shape.len(),
                    data.len()
                ),
            ));
        }
        Ok(Tensor { shape, data })
    }
    pub fn cast<U: Element>(&self) -> Tensor<U> {
        Tensor {
            shape: self.shape,
            data: self.data.iter().map(|v| U::from_f64(v.to_f64())).collect(),
        }
    }
}

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
    fn ln_1p(self) -> Self;
    fn sqrt(self) -> Self;
    fn abs(self) -> Self;
    fn is_finite(self) -> bool;
    fn max(self, o: Self) -> Self {
        if o > self {
            o
        } else {
            self
        }
    }
}

macro_rules! impl_element {
    ($t:ty, $name:expr) => {
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
            fn is_finite(self) -> bool {
                <$t>::is_finite(self)
            }
        }
    };
}
impl_element!(f32, "f32");
impl_element!(f64, "f64");

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

//! How a kernel reads and writes a buffer whatever its storage: f32 and f64 buffers hold the type
//! the kernel computes in; bf16 buffers are widened to f32 on load and rounded (to nearest even)
//! on store, one element at a time in registers, so no wider copy of a bf16 tensor ever exists.

use crate::ops::coupling::Fix16;
use crate::tensor::Element;
use half::bf16;

pub trait Stored<T>: Copy + Send + Sync + 'static {
    fn load(self) -> T;
    fn store(v: T) -> Self;
}

impl<T: Element> Stored<T> for T {
    #[inline(always)]
    fn load(self) -> T {
        self
    }
    #[inline(always)]
    fn store(v: T) -> Self {
        v
    }
}

impl Stored<f32> for bf16 {
    #[inline(always)]
    fn load(self) -> f32 {
        self.to_f32()
    }
    #[inline(always)]
    fn store(v: f32) -> Self {
        bf16::from_f32(v)
    }
}

/// A 16-bit chain state read by the ops that take one (BatchNorm's input, ELU's backward, copies):
/// exact on load. Only copies and fills store it (values already on the grid, or the NaN mark);
/// the coupling writes it with its own range check (coupling.rs).
impl Stored<f32> for Fix16 {
    #[inline(always)]
    fn load(self) -> f32 {
        self.to_f32()
    }
    #[inline(always)]
    fn store(v: f32) -> Self {
        Fix16::quantize(v)
    }
}

/// `x` as a slice of the compute type when it is stored as that type: kernels built on GEMMs
/// over raw pointers read it in place then, and gather a converted tile otherwise.
pub fn as_compute<T: 'static, X: 'static>(x: &[X]) -> Option<&[T]> {
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<X>() {
        // SAFETY: X and T are the same type.
        Some(unsafe { std::slice::from_raw_parts(x.as_ptr() as *const T, x.len()) })
    } else {
        None
    }
}

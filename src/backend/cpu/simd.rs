//! Wider vectors for the plain per-element loops.
//!
//! The crate is built for the baseline x86-64 (SSE2) so the binary runs anywhere; the elementwise
//! loops (ELU with its polynomial exp, BatchNorm's affine map) are written so that LLVM vectorises
//! them, and `wide` lets it use AVX-512 where the CPU has it. Lanes are independent and no
//! operation is contracted into an FMA, so every element comes out bit for bit as in the narrow
//! build: a recomputed activation equals the stored one exactly whichever path ran.

/// Run `f`, compiled with AVX-512 enabled when the CPU supports it.
#[inline(always)]
pub fn wide<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        #[target_feature(enable = "avx512f")]
        #[inline]
        unsafe fn run<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // SAFETY: the feature was detected just above.
        return unsafe { run(f) };
    }
    f()
}

//! The matrix product under the CPU convolutions. The `gemm` crate supplies the micro-kernels
//! (AVX2/AVX-512 with run-time dispatch); tiling over the problem and threads is ours.

use crate::tensor::Element;

/// C (m x n) = A (m x k) B (k x n), or C += A B with `accumulate`. Strides are (row, column) in
/// elements. Single-threaded: callers parallelise over tiles.
///
/// # Safety
/// Pointers must be valid for every element the shapes and strides address; C must not alias A or B.
#[allow(clippy::too_many_arguments)]
pub unsafe fn matmul<T: Element>(
    m: usize,
    n: usize,
    k: usize,
    c: *mut T,
    rsc: isize,
    csc: isize,
    accumulate: bool,
    a: *const T,
    rsa: isize,
    csa: isize,
    b: *const T,
    rsb: isize,
    csb: isize,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    *c.offset(i as isize * rsc + j as isize * csc) = T::ZERO;
                }
            }
        }
        return;
    }
    gemm::gemm(
        m,
        n,
        k,
        c,
        csc,
        rsc,
        accumulate,
        a,
        csa,
        rsa,
        b,
        csb,
        rsb,
        T::ONE,
        T::ONE,
        false,
        false,
        false,
        gemm::Parallelism::None,
    );
}

// Self-tests of the warp-level instructions (tests/warp_selftest.rs), run on the emulator and on a
// GPU alike: shuffles and votes against the programming guide's definitions, the tensor-core
// fragments of kernels/intrinsics.cuh against a plain matrix product, ldmatrix and cp.async. Each
// kernel loads its fragments with the manual's index formulas written out here, independently of
// the emulator's; `a.accumulate != 0` transposes one index on purpose, so that a test can show
// the comparison catches a wrong layout. a = inputs, b = accumulator C, out = results.
#include "intrinsics.cuh"

#define FULL_MASK 0xFFFFFFFFu

// 64 threads (two warps); out has 10 values per thread.
REVSEG_KERNEL_SYNC(selftest_warp_votes, EwArgs) {
    REVSEG_SHARED(float, sh, [64]);
    const int t = static_cast<int>(threadIdx.x);
    const int lane = t % 32;
    const float v = a.a[t];
    const unsigned half = lane < 16 ? 0x0000FFFFu : 0xFFFF0000u;
    float* o = a.out + 10 * t;
    o[0] = __shfl_sync(FULL_MASK, v, (lane * 7 + 3) % 32);
    o[1] = __shfl_up_sync(FULL_MASK, v, 3);
    o[2] = __shfl_down_sync(FULL_MASK, v, 5);
    o[3] = __shfl_xor_sync(FULL_MASK, v, 6);
    o[4] = __shfl_sync(FULL_MASK, v, 3, 8);
    o[5] = __uint_as_float(__ballot_sync(FULL_MASK, v > 0.0f) & 0x7FFFFFFFu);
    o[6] = static_cast<float>(__any_sync(half, v > 40.0f));
    o[7] = static_cast<float>(__all_sync(half, v > -10.0f));
    o[8] = __shfl_xor_sync(FULL_MASK, v, 12, 8);
    // Lanes exchange through shared memory with __syncwarp as the only barrier.
    sh[t] = v;
    __syncwarp();
    o[9] = sh[t ^ 1];
}

// One warp. A 16 x 8 row-major at a.a, B 8 x 8 (k x n) row-major at a.a + 128, C 16 x 8 at a.b.
REVSEG_KERNEL_SYNC(selftest_mma_tf32, EwArgs) {
    const int lane = static_cast<int>(threadIdx.x);
    const int g = lane >> 2, t = lane % 4;
    const float* A = a.a;
    const float* B = a.a + 128;
    unsigned af[4], bf[2];
    float c[4], d[4];
    af[0] = __float_as_uint(A[g * 8 + t]);
    af[1] = __float_as_uint(A[(g + 8) * 8 + t]);
    af[2] = __float_as_uint(a.accumulate ? A[(t + 4) * 8 + g] : A[g * 8 + t + 4]);
    af[3] = __float_as_uint(A[(g + 8) * 8 + t + 4]);
    bf[0] = __float_as_uint(B[t * 8 + g]);
    bf[1] = __float_as_uint(B[(t + 4) * 8 + g]);
    for (int i = 0; i < 4; ++i) {
        c[i] = a.b[(g + (i >= 2 ? 8 : 0)) * 8 + t * 2 + (i & 1)];
    }
    mma_tf32_m16n8k8(d, af, bf, c);
    for (int i = 0; i < 4; ++i) {
        a.out[(g + (i >= 2 ? 8 : 0)) * 8 + t * 2 + (i & 1)] = d[i];
    }
}

__device__ __forceinline__ unsigned bf16_pair(float lo, float hi) {
    return (__float_as_uint(lo) >> 16) | (__float_as_uint(hi) & 0xFFFF0000u);
}

// One warp. A 16 x 16 row-major at a.a, B 16 x 8 (k x n) row-major at a.a + 256, C 16 x 8 at a.b;
// inputs exact in BF16.
REVSEG_KERNEL_SYNC(selftest_mma_bf16, EwArgs) {
    const int lane = static_cast<int>(threadIdx.x);
    const int g = lane >> 2, t = lane % 4;
    const float* A = a.a;
    const float* B = a.a + 256;
    unsigned af[4], bf[2];
    float c[4], d[4];
    for (int r = 0; r < 4; ++r) {
        const int row = g + ((r & 1) ? 8 : 0);
        const int col = t * 2 + (r >= 2 ? 8 : 0);
        af[r] = bf16_pair(A[row * 16 + col], A[row * 16 + col + 1]);
    }
    const float b1 = a.accumulate ? B[g * 8 + t * 2 + 1] : B[(t * 2 + 1) * 8 + g];
    bf[0] = bf16_pair(B[(t * 2) * 8 + g], b1);
    bf[1] = bf16_pair(B[(t * 2 + 8) * 8 + g], B[(t * 2 + 9) * 8 + g]);
    for (int i = 0; i < 4; ++i) {
        c[i] = a.b[(g + (i >= 2 ? 8 : 0)) * 8 + t * 2 + (i & 1)];
    }
    mma_bf16_m16n8k16(d, af, bf, c);
    for (int i = 0; i < 4; ++i) {
        a.out[(g + (i >= 2 ? 8 : 0)) * 8 + t * 2 + (i & 1)] = d[i];
    }
}

// One warp. Four 8 x 8 matrices of b16 (values a.a[0..256) as integers) in shared memory;
// ldmatrix .x4 (.trans when a.alpha > 0); out[4 lane + j] = register j's bits.
REVSEG_KERNEL_SYNC(selftest_ldmatrix, EwArgs) {
    REVSEG_SHARED_ALIGN16(unsigned short, m, [4 * 8 * 8]);
    const int lane = static_cast<int>(threadIdx.x);
    for (int i = lane; i < 256; i += 32) {
        m[i] = static_cast<unsigned short>(a.a[i]);
    }
    __syncwarp();
    unsigned r[4];
    const void* row = &m[(lane / 8) * 64 + (lane % 8) * 8];
    if (a.alpha > 0.0f) {
        ldmatrix_x4<true>(r, row);
    } else {
        ldmatrix_x4<false>(r, row);
    }
    for (int j = 0; j < 4; ++j) {
        a.out[4 * lane + j] = __uint_as_float(r[j]);
    }
}

// 64 threads: each copies 4 floats into shared memory with cp.async, waits for its group, and after
// the barrier reads its neighbour's. a.accumulate != 0 leaves out the wait.
REVSEG_KERNEL_SYNC(selftest_cp_async, EwArgs) {
    REVSEG_SHARED_ALIGN16(float, sh, [256]);
    const int t = static_cast<int>(threadIdx.x);
    cp_async<16>(&sh[4 * t], a.a + 4 * t);
    cp_async_commit();
    if (!a.accumulate) {
        cp_async_wait<0>();
    }
    __syncthreads();
    const int nb = (t + 1) % 64;
    for (int j = 0; j < 4; ++j) {
        a.out[4 * t + j] = sh[4 * nb + j];
    }
}

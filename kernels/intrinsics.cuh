// Tensor-core and asynchronous-copy instructions for the kernels: inline PTX under nvcc (sm_80+),
// the emulator's warp collectives under g++ (kernels/emu/warp.cpp), one signature for both.
// Fragment layouts are the PTX ISA manual's ("Matrix Fragments for mma.m16n8k8 / m16n8k16");
// kernels/warp_selftest.cu checks them against a plain matrix product on every device.
#pragma once
#include "common.cuh"

// f32 rounded to the nearest TF32 (ties away from zero, as cvt.rna does), as f32 bits with the low
// 13 bits clear. mma.sync would otherwise truncate, a bias of half a TF32 unit per operand.
__device__ __forceinline__ unsigned tf32_round(float v) {
#ifdef REVSEG_EMU
    unsigned u = __float_as_uint(v);
    if ((u & 0x7F800000u) != 0x7F800000u) {
        u += 0x1000u;
    }
    return u & 0xFFFFE000u;
#else
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(v));
    return r;
#endif
}

#ifdef REVSEG_EMU
// Round to nearest even, as cvt.rn.bf16 does (NaN stays NaN).
__device__ __forceinline__ unsigned bf16_bits(float v) {
    const unsigned u = __float_as_uint(v);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) {
        return (u >> 16) | 0x40u;
    }
    return (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
}
#endif

// Two f32 rounded to bf16 and packed as mma.sync takes them: `lo` in the low half.
__device__ __forceinline__ unsigned bf16x2_round(float lo, float hi) {
#ifdef REVSEG_EMU
    return bf16_bits(lo) | (bf16_bits(hi) << 16);
#else
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
#endif
}

// f32 rounded to bf16 and widened back: what a bf16 operand holds.
__device__ __forceinline__ float bf16_round(float v) {
    return __uint_as_float(bf16x2_round(v, 0.0f) << 16);
}

// D = A B + C, A 16 x 8 (row), B 8 x 8 (col), TF32 inputs (the top 19 bits of each f32), f32
// accumulate. Per lane: a[4], b[2], c[4], d[4] as the manual's fragments.
__device__ __forceinline__ void mma_tf32_m16n8k8(float d[4], const unsigned a[4],
                                                 const unsigned b[2], const float c[4]) {
#ifdef REVSEG_EMU
    emu::WarpOp op{};
    op.kind = emu::kMmaTf32;
    op.mask = 0xFFFFFFFFu;
    for (int i = 0; i < 4; ++i) {
        op.a[i] = a[i];
        op.c[i] = c[i];
    }
    op.b[0] = b[0];
    op.b[1] = b[1];
    emu::warp_collective(op);
    for (int i = 0; i < 4; ++i) {
        d[i] = op.d[i];
    }
#else
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
          "f"(c[2]), "f"(c[3]));
#endif
}

// D = A B + C, A 16 x 16 (row), B 16 x 8 (col), BF16 pairs (lower index in the low half), f32
// accumulate.
__device__ __forceinline__ void mma_bf16_m16n8k16(float d[4], const unsigned a[4],
                                                  const unsigned b[2], const float c[4]) {
#ifdef REVSEG_EMU
    emu::WarpOp op{};
    op.kind = emu::kMmaBf16;
    op.mask = 0xFFFFFFFFu;
    for (int i = 0; i < 4; ++i) {
        op.a[i] = a[i];
        op.c[i] = c[i];
    }
    op.b[0] = b[0];
    op.b[1] = b[1];
    emu::warp_collective(op);
    for (int i = 0; i < 4; ++i) {
        d[i] = op.d[i];
    }
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
          "f"(c[2]), "f"(c[3]));
#endif
}

// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: lane 8j + r gives the address of row r of
// matrix j (16-byte aligned, shared memory); r[j] receives two b16 of matrix j.
template <bool TRANS>
__device__ __forceinline__ void ldmatrix_x4(unsigned r[4], const void* row) {
#ifdef REVSEG_EMU
    emu::WarpOp op{};
    op.kind = emu::kLdmatrix;
    op.mask = 0xFFFFFFFFu;
    op.count = 4;
    op.trans = TRANS;
    op.addr = row;
    emu::warp_collective(op);
    for (int i = 0; i < 4; ++i) {
        r[i] = op.r[i];
    }
#else
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(row));
    if (TRANS) {
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(s));
    } else {
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(s));
    }
#endif
}

// cp.async.ca.shared.global of BYTES (4, 8 or 16) from global to shared memory; visible to this
// thread after cp_async_commit and a cp_async_wait<N> that covers its group (to others after a
// barrier as well).
template <int BYTES>
__device__ __forceinline__ void cp_async(void* shared_dst, const void* global_src) {
    static_assert(BYTES == 4 || BYTES == 8 || BYTES == 16, "cp.async copies 4, 8 or 16 bytes");
#ifdef REVSEG_EMU
    emu::cp_async(shared_dst, global_src, BYTES);
#else
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(shared_dst));
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2;\n" ::"r"(s), "l"(global_src),
                 "n"(BYTES)
                 : "memory");
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#ifdef REVSEG_EMU
    emu::cp_async_commit();
#else
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// Waits until at most PENDING committed groups are still in flight.
template <int PENDING>
__device__ __forceinline__ void cp_async_wait() {
#ifdef REVSEG_EMU
    emu::cp_async_wait(PENDING);
#else
    asm volatile("cp.async.wait_group %0;\n" ::"n"(PENDING) : "memory");
#endif
}

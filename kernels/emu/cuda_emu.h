// The CUDA subset that kernels/*.cu may use, for compiling the same sources with g++ (the emulator).
// Included by common.cuh when REVSEG_EMU is defined; never by nvcc or NVRTC. kernels/README.md lists
// what is supported and what is not.
#pragma once

#include <math.h>

#include <cmath>
#include <cstddef>
#include <cstring>

struct uint3 {
    unsigned int x, y, z;
};
// CUDA's 16-byte vector type: a 16-byte load or store where the kernel casts an aligned float*.
struct alignas(16) float4 {
    float x, y, z, w;
};
struct dim3 {
    unsigned int x, y, z;
};

// Per OS thread: the runtime sets them before it runs (or resumes) each emulated thread. Blocks run
// one at a time per OS thread, so these are what the running CUDA thread would see.
extern thread_local uint3 threadIdx;
extern thread_local uint3 blockIdx;
extern thread_local dim3 blockDim;
extern thread_local dim3 gridDim;

#define __global__
// Internal linkage for every device function: build.rs compiles each kernel file twice (with the
// checks' instrumentation and without it, REVSEG_EMU_FAST), and two copies of one inline function
// must never be merged by the linker into one (a checked kernel would then run unchecked code, or
// the reverse). build.rs verifies with nm that the kernel entries are each object's only globals.
#define __device__ static
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
// Shared memory is per block and lives in one arena per OS thread (an OS thread runs one block at
// a time), so the emulator can poison it at each block start and watch every access to it. Kernels
// declare it with REVSEG_SHARED (common.cuh); a bare `__shared__` is deliberately left undefined here.
#define __align__(n) alignas(n)

namespace emu {
// One REVSEG_SHARED declaration: its place in the current block's arena, assigned by the first
// thread of the block that reaches it (all threads of a block then see the same words).
struct SharedSite {
    unsigned long long block_gen;
    void* ptr;
};
void syncthreads(const char* file, int line);
void* dynamic_shared();
void* static_shared(SharedSite& site, std::size_t bytes);

// Warp collectives: a lane deposits its operands and parks until every lane of the mask has
// arrived (kernels/emu/warp.cpp computes the results), as the *_sync intrinsics require.
enum WarpOpKind : int {
    kSyncwarp,
    kShflIdx,
    kShflUp,
    kShflDown,
    kShflXor,
    kBallot,
    kMmaTf32,
    kMmaBf16,
    kLdmatrix,
};
struct WarpOp {
    int kind;
    unsigned mask;
    unsigned value;
    int arg;
    int width;
    int count;
    int trans;
    const void* addr;
    unsigned a[4];
    unsigned b[2];
    float c[4];
    unsigned r[4];
    float d[4];
};
void warp_collective(WarpOp& op);
// cp.async: queued per thread, done (and seen by the checks as a write of shared memory) when a
// wait covers its group, so a read before the wait reads poison, as it may read stale data on a GPU.
void cp_async(void* dst, const void* src, int bytes);
void cp_async_commit();
void cp_async_wait(int pending);
}  // namespace emu

#define __syncthreads() ::emu::syncthreads(__FILE__, __LINE__)
// `extern __shared__ T name[]` in CUDA; a pointer to this block's dynamic shared memory here.
#define REVSEG_DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(::emu::dynamic_shared())
// `__shared__ T name dims;` in CUDA: here a reference to the same-shaped array in the block's arena.
#define REVSEG_SHARED(T, name, dims)                     \
    static thread_local ::emu::SharedSite name##__site;  \
    T(&name) dims = *static_cast<T(*) dims>(::emu::static_shared(name##__site, sizeof(T dims)))
#define REVSEG_SHARED_ALIGN16(T, name, dims) REVSEG_SHARED(T, name, dims)

// Math: the float functions of <math.h> (expf, log1pf, sqrtf, fabsf, fmaf, ...), plus CUDA's extras.
static inline float rsqrtf(float x) {
    return 1.0f / std::sqrt(x);
}
static inline int min(int a, int b) {
    return a < b ? a : b;
}
static inline int max(int a, int b) {
    return a > b ? a : b;
}

static inline unsigned __float_as_uint(float x) {
    unsigned u;
    std::memcpy(&u, &x, 4);
    return u;
}
static inline float __uint_as_float(unsigned u) {
    float x;
    std::memcpy(&x, &u, 4);
    return x;
}
#define warpSize 32

template <class T>
static inline T emu_shfl(int kind, unsigned mask, T var, int arg, int width) {
    static_assert(sizeof(T) == 4, "the emulator shuffles 32-bit values");
    emu::WarpOp op{};
    op.kind = kind;
    op.mask = mask;
    std::memcpy(&op.value, &var, 4);
    op.arg = arg;
    op.width = width;
    emu::warp_collective(op);
    T r;
    std::memcpy(&r, &op.r[0], 4);
    return r;
}
template <class T>
static inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32) {
    return emu_shfl(emu::kShflIdx, mask, var, src_lane, width);
}
template <class T>
static inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32) {
    return emu_shfl(emu::kShflUp, mask, var, static_cast<int>(delta), width);
}
template <class T>
static inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32) {
    return emu_shfl(emu::kShflDown, mask, var, static_cast<int>(delta), width);
}
template <class T>
static inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32) {
    return emu_shfl(emu::kShflXor, mask, var, lane_mask, width);
}
static inline unsigned __ballot_sync(unsigned mask, int pred) {
    return emu_shfl<unsigned>(emu::kBallot, mask, pred != 0, 0, 32);
}
static inline int __any_sync(unsigned mask, int pred) {
    return __ballot_sync(mask, pred) != 0;
}
static inline int __all_sync(unsigned mask, int pred) {
    return __ballot_sync(mask, pred) == mask;
}
static inline void __syncwarp(unsigned mask = 0xffffffffu) {
    emu::WarpOp op{};
    op.kind = emu::kSyncwarp;
    op.mask = mask;
    emu::warp_collective(op);
}

// Atomics: blocks run in parallel on several OS threads, so these are real atomics.
static inline int atomicAdd(int* p, int v) {
    return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}
static inline unsigned int atomicAdd(unsigned int* p, unsigned int v) {
    return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}
static inline float atomicAdd(float* p, float v) {
    float old, next;
    __atomic_load(p, &old, __ATOMIC_RELAXED);
    do {
        next = old + v;
    } while (!__atomic_compare_exchange(p, &old, &next, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    return old;
}
static inline int atomicMax(int* p, int v) {
    int old = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (old < v &&
           !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
    return old;
}

// A kernel: its body as a static function, and an extern "C" entry `<name>__emu(const void* args)`
// (`<name>__emu_fast` in the build without the checks' instrumentation) that the generated registry
// (build.rs) lists with the argument size and whether it synchronises.
#ifdef REVSEG_EMU_FAST
#define EMU_ENTRY(name) name##__emu_fast
#else
#define EMU_ENTRY(name) name##__emu
#endif
#define EMU_KERNEL(name, Args)                                \
    static void name##__body(const Args a);                   \
    extern "C" void EMU_ENTRY(name)(const void* p) {          \
        Args a;                                               \
        std::memcpy(static_cast<void*>(&a), p, sizeof(Args)); \
        name##__body(a);                                      \
    }                                                         \
    static void name##__body(const Args a)

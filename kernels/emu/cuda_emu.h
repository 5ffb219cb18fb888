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
#define __device__
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
}  // namespace emu

#define __syncthreads() ::emu::syncthreads(__FILE__, __LINE__)
// `extern __shared__ T name[]` in CUDA; a pointer to this block's dynamic shared memory here.
#define REVSEG_DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(::emu::dynamic_shared())
// `__shared__ T name dims;` in CUDA: here a reference to the same-shaped array in the block's arena.
#define REVSEG_SHARED(T, name, dims)                     \
    static thread_local ::emu::SharedSite name##__site;  \
    T(&name) dims = *static_cast<T(*) dims>(::emu::static_shared(name##__site, sizeof(T dims)))

// Math: the float functions of <math.h> (expf, log1pf, sqrtf, fabsf, fmaf, ...), plus CUDA's extras.
inline float rsqrtf(float x) {
    return 1.0f / std::sqrt(x);
}
inline int min(int a, int b) {
    return a < b ? a : b;
}
inline int max(int a, int b) {
    return a > b ? a : b;
}

// Atomics: blocks run in parallel on several OS threads, so these are real atomics.
inline int atomicAdd(int* p, int v) {
    return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}
inline unsigned int atomicAdd(unsigned int* p, unsigned int v) {
    return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}
inline float atomicAdd(float* p, float v) {
    float old, next;
    __atomic_load(p, &old, __ATOMIC_RELAXED);
    do {
        next = old + v;
    } while (!__atomic_compare_exchange(p, &old, &next, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    return old;
}
inline int atomicMax(int* p, int v) {
    int old = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (old < v &&
           !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
    return old;
}

// A kernel: its body as a static function, and an extern "C" entry `<name>__emu(const void* args)`
// that the generated registry (build.rs) lists with the argument size and whether it synchronises.
#define EMU_KERNEL(name, Args)                                \
    static void name##__body(const Args a);                   \
    extern "C" void name##__emu(const void* p) {              \
        Args a;                                               \
        std::memcpy(static_cast<void*>(&a), p, sizeof(Args)); \
        name##__body(a);                                      \
    }                                                         \
    static void name##__body(const Args a)

// Shared by every kernel file: the argument structs (mirrored field for field by #[repr(C)] structs
// in src/backend/gpu/args.rs; both sides assert the sizes), the kernel declaration macros and the
// deterministic block reduction.
//
// Every kernel takes ONE argument struct by value, so that a launch is uniform: CUDA gets
// kernelParams = {&args}, the emulator a pointer to the same bytes. Pointers come first, then 4-byte
// fields, so the layout has no padding that Rust and C could disagree on.
#pragma once

#ifdef REVSEG_EMU
#include "emu/cuda_emu.h"
#define REVSEG_KERNEL(name, Args) EMU_KERNEL(name, Args)
#define REVSEG_KERNEL_SYNC(name, Args) EMU_KERNEL(name, Args)
#define REVSEG_UNROLL
#else
// REVSEG_KERNEL_SYNC marks kernels that call __syncthreads: the emulator runs their threads as
// fibers (build.rs reads the macro name). To CUDA both are the same.
#define REVSEG_KERNEL(name, Args) extern "C" __global__ void name(const Args a)
#define REVSEG_KERNEL_SYNC(name, Args) extern "C" __global__ void name(const Args a)
#define REVSEG_DYNAMIC_SHARED(T, name) extern __shared__ __align__(16) T name[]
// Static shared memory: `REVSEG_SHARED(float, tile, [16][65]);` declares `__shared__ float tile[16][65]`.
// The emulator's version places it where it can be poisoned and checked (emu/cuda_emu.h).
#define REVSEG_SHARED(T, name, dims) __shared__ T name dims
// The same, 16-byte aligned (ldmatrix rows, 16-byte cp.async); the emulator aligns every one so.
#define REVSEG_SHARED_ALIGN16(T, name, dims) __shared__ __align__(16) T name dims
#define REVSEG_UNROLL _Pragma("unroll")
#endif

// Elementwise ops: out = f(a, b); `alpha` is a fill value or a sign, `accumulate` adds to out.
struct EwArgs {
    const float* a;
    const float* b;
    float* out;
    int n;
    int accumulate;
    float alpha;
    int pad;
};

// Exact reversible coupling: y = x +- q(f), or y = q(x) when f is null; x may be y. bad holds one
// count per block of results outside +-range.
struct CouplingArgs {
    const float* x;
    const float* f;
    float* y;
    unsigned int* bad;
    int n;
    int negative;
    float scale;
    float inv_scale;
    float range;
    int pad;
};

// conv3d (stride 1, same padding, odd kernel). Forward: x -> out. Input gradient: x holds dy, out
// dx, and ci/co are those of the forward. Weight gradient: x, dy -> out = partial sums, one
// (co, ci*taps) block per split of the positions, `chunk` positions each.
struct ConvArgs {
    const float* x;
    const float* w;
    const float* bias;
    const float* dy;
    float* out;
    int n, ci, co, d, h, wd, kd, kh, kw;
    int accumulate;
    int splits;
    int chunk;
};

// conv3d 1x1x1 with few output channels on CUDA cores (conv3d_pointwise.cu): x (n, ci, sp), w
// (co, ci), dy (n, co, sp); out y, dx, or the weight gradient's partial sums (`splits` slices of
// co x ci, position ranges of `chunk`). `vec`: 16-byte loads (bases aligned, sp % 4 == 0).
struct PointwiseArgs {
    const float* x;
    const float* w;
    const float* bias;
    const float* dy;
    float* out;
    int n, ci, co, sp;
    int accumulate;
    int vec;
    int splits, chunk;
};

// conv3d on tensor cores (conv3d_mma.cu). Data kernels (forward, input gradient): src is x or dy
// (cin channels), w the packed weights (kpad x npad, rows k = tap * cin + channel), out y or dx
// (cout channels); `flip` negates the tap offsets (input gradient). Weight kernels: src = x (cin
// channels), w = dy (cout channels), out = partial sums (slices (split, K group, parity), each
// cout x cin x taps), positions split into `chunk`-sized ranges; `ksplit` 2 gives an M tile of 32
// rows whose two warp pairs (K groups) take alternate K tiles, `fold` 2 pairs x-adjacent positions.
// `vec`: 16-byte copies allowed (bases aligned, sp % 4 == 0).
// `prec`: 0 TF32, 1 BF16 (what the weight packing rounds to).
struct MmaConvArgs {
    const float* src;
    const float* w;
    const float* bias;
    float* out;
    int n, cin, cout, d, h, wd, kd, kh, kw;
    int npad;
    int accumulate;
    int flip;
    int vec;
    int splits, chunk;
    int prec;
    // x-fold, output box, channel chunks and halo layout (conv3d_mma.rs DataPlan, WeightPlan).
    int fold, bz, by, bx;
    int cc, nchunk, ktc;
    int hs, hz, hy, hx;
    // Weight kernels: warp groups splitting each box's K tiles (1, or 2 for an M tile of 32).
    int ksplit;
};

// conv_transpose 1x2x2 stride 1x2x2; x (n, ci, d, h, wd), w (ci, co, 1, 2, 2), y (n, co, d, 2h, 2wd).
struct ConvTArgs {
    const float* x;
    const float* w;
    const float* bias;
    const float* dy;
    float* out;
    int n, ci, co, d, h, wd;
    int accumulate;
    int pad;
};

// maxpool 1x2x2 over `planes` planes of h x wd.
struct PoolArgs {
    const float* x;
    const float* dy;
    float* out;
    int planes, h, wd;
    int accumulate;
};

// Per-channel reductions and BatchNorm. Tensors are (n, c, sp); a channel's n * sp values are cut
// into `splits` ranges of `chunk`, reduced by one block each into `part`, then summed in order.
struct ChanArgs {
    const float* x;
    const float* dy;
    const float* gamma;
    const float* beta;
    float* y;
    float* mean;
    float* invstd;
    float* rmean;
    float* rvar;
    float* dgamma;
    float* dbeta;
    float* part;
    float* tot;
    int n, c, sp;
    int splits, chunk;
    int mode;
    int accumulate;
    int has_running;
    float eps, momentum, unbiased;
    int pad;
};

// Loss: logits z, binary targets t, class weights w, mask m, all (n, c, sp).
struct LossArgs {
    const float* z;
    const float* t;
    const float* w;
    const float* m;
    float* weight;
    float* dz;
    float* loss;
    float* part;
    float* tot;
    int n, c, sp;
    int total;
    int splits, chunk;
};

struct AdamArgs {
    float* p;
    const float* g;
    float* m;
    float* v;
    int n;
    float beta1, beta2, one_minus_beta1, one_minus_beta2, lr_t, inv_bc2, eps;
};

struct SgdArgs {
    float* p;
    const float* g;
    float* vel;
    int n;
    float lr, momentum, weight_decay;
};

static_assert(sizeof(EwArgs) == 40, "EwArgs layout");
static_assert(sizeof(ConvArgs) == 88, "ConvArgs layout");
static_assert(sizeof(PointwiseArgs) == 72, "PointwiseArgs layout");
static_assert(sizeof(ConvTArgs) == 72, "ConvTArgs layout");
static_assert(sizeof(PoolArgs) == 40, "PoolArgs layout");
static_assert(sizeof(ChanArgs) == 152, "ChanArgs layout");
static_assert(sizeof(LossArgs) == 96, "LossArgs layout");
static_assert(sizeof(AdamArgs) == 64, "AdamArgs layout");
static_assert(sizeof(SgdArgs) == 40, "SgdArgs layout");
static_assert(sizeof(CouplingArgs) == 56, "CouplingArgs layout");

// Block size of every kernel that reduces with block_sum.
#define RED_THREADS 256

// Grid-stride loops index in 64 bits: index + stride may pass 2^31 even when every tensor is
// smaller (the host keeps tensors below 2^31 elements so that kernels index them in int).
__device__ __forceinline__ long long global_index() {
    return static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ long long grid_stride() {
    return static_cast<long long>(gridDim.x) * blockDim.x;
}

// Compensated (Kahan) running sum: a thread's share of a large reduction stays accurate to a few
// ulps however many values it adds, so f32 sums track the CPU's f64 sums.
struct Kahan {
    float s, c;
};

__device__ __forceinline__ float kahan_value(const Kahan& k) {
    return k.s - k.c;
}

__device__ __forceinline__ void kahan_add(Kahan& k, float v) {
    float y = v - k.c;
    float t = k.s + y;
    k.c = (t - k.s) - y;
    k.s = t;
}

// Sum of v over the RED_THREADS threads of the block, returned to every thread. A fixed binary tree
// in shared memory: the same inputs give the same bits on every run and on every device.
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* sh) {
    const int t = static_cast<int>(threadIdx.x);
    sh[t] = v;
    __syncthreads();
    for (int s = RED_THREADS / 2; s > 0; s >>= 1) {
        if (t < s) {
            sh[t] += sh[t + s];
        }
        __syncthreads();
    }
    T r = sh[0];
    __syncthreads();
    return r;
}

// One block's share of a per-channel reduction over a (n, nc, sp) tensor: channel blockIdx.y,
// values blockIdx.x * chunk .. + chunk of its n * sp (sample-major). f(index, k1, k2) adds to two
// compensated sums; both block totals come back in out (to every thread).
template <class F>
__device__ __forceinline__ void channel_split_sums(int n, int nc, int sp, int chunk, F f, float* sh,
                                                   float out[2]) {
    const long long c = blockIdx.y;
    const long long m = static_cast<long long>(n) * sp;
    const long long j0 = static_cast<long long>(blockIdx.x) * chunk;
    const long long j1 = j0 + chunk < m ? j0 + chunk : m;
    Kahan k1 = {0.0f, 0.0f}, k2 = {0.0f, 0.0f};
    for (long long j = j0 + threadIdx.x; j < j1; j += RED_THREADS) {
        const long long nn = j / sp;
        f((nn * nc + c) * sp + (j - nn * sp), k1, k2);
    }
    out[0] = block_sum(kahan_value(k1), sh);
    out[1] = block_sum(kahan_value(k2), sh);
}

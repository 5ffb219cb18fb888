// Exact reversible coupling (src/ops/coupling.rs): y = x + q(f) or y = x - q(f), or y = q(x) with
// no f, q rounding to the fixed-point grid k * 2^-S (ties to even: rintf in the default rounding
// mode, as the CPU's round_ties_even). v * scale and r * inv_scale are exact (powers of two), so a
// contraction of r * inv_scale +- x into an FMA gives the same bits. Each block counts its results
// outside the range (or not finite) into bad[blockIdx.x]; the host reads the counts and names the
// first such element.
#include "common.cuh"

__device__ __forceinline__ float coupling_step(const CouplingArgs& a, long long i) {
    if (a.f == nullptr) {
        return rintf(a.x[i] * a.scale) * a.inv_scale;
    }
    const float q = rintf(a.f[i] * a.scale) * a.inv_scale;
    return a.negative ? a.x[i] - q : a.x[i] + q;
}

// x may be y (in place: each element is read before it is written, by the same thread).
REVSEG_KERNEL_SYNC(coupling, CouplingArgs) {
    REVSEG_SHARED(unsigned int, sh, [RED_THREADS]);
    unsigned int bad = 0;
    for (long long i = global_index(); i < a.n; i += grid_stride()) {
        const float v = coupling_step(a, i);
        a.y[i] = v;
        bad += !(fabsf(v) <= a.range);
    }
    bad = block_sum(bad, sh);
    if (threadIdx.x == 0) {
        a.bad[blockIdx.x] = bad;
    }
}

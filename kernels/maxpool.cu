// maxpool 1x2x2, stride 1x2x2. One thread per window; the backward finds the arg-max again from x
// with the CPU's rule (first maximum in row-major window order, strict >), and writes all four dx
// of its window, so no two threads touch the same element and no index tensor is kept.
#include "common.cuh"

__device__ __forceinline__ int argmax4(float v0, float v1, float v2, float v3) {
    int best = 0;
    float bv = v0;
    if (v1 > bv) {
        best = 1;
        bv = v1;
    }
    if (v2 > bv) {
        best = 2;
        bv = v2;
    }
    if (v3 > bv) {
        best = 3;
    }
    return best;
}

REVSEG_KERNEL(maxpool_forward, PoolArgs) {
    const int ho = a.h / 2, wo = a.wd / 2;
    const long long total = static_cast<long long>(a.planes) * ho * wo;
    for (long long o = global_index(); o < total; o += grid_stride()) {
        const int j = static_cast<int>(o % wo);
        const int i = static_cast<int>((o / wo) % ho);
        const long long plane = o / (static_cast<long long>(ho) * wo);
        const float* r0 = a.x + plane * a.h * a.wd + 2 * i * a.wd + 2 * j;
        const float* r1 = r0 + a.wd;
        const float v[4] = {r0[0], r0[1], r1[0], r1[1]};
        a.out[o] = v[argmax4(v[0], v[1], v[2], v[3])];
    }
}

REVSEG_KERNEL(maxpool_backward, PoolArgs) {
    const int ho = a.h / 2, wo = a.wd / 2;
    const long long total = static_cast<long long>(a.planes) * ho * wo;
    for (long long o = global_index(); o < total; o += grid_stride()) {
        const int j = static_cast<int>(o % wo);
        const int i = static_cast<int>((o / wo) % ho);
        const long long plane = o / (static_cast<long long>(ho) * wo);
        const long long base = plane * a.h * a.wd + 2 * i * a.wd + 2 * j;
        const long long idx[4] = {base, base + 1, base + a.wd, base + a.wd + 1};
        const int best = argmax4(a.x[idx[0]], a.x[idx[1]], a.x[idx[2]], a.x[idx[3]]);
        const float g = a.dy[o];
        for (int k = 0; k < 4; ++k) {
            // As the CPU: dx = (prior or 0) + dy at the arg-max, the prior (or 0) elsewhere.
            const float prior = a.accumulate ? a.out[idx[k]] : 0.0f;
            a.out[idx[k]] = k == best ? prior + g : prior;
        }
    }
}

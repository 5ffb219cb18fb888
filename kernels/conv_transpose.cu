// conv_transpose 1x2x2, stride 1x2x2: kernel equals stride, so every output voxel has exactly one
// input voxel and the three passes are short dot products (a few percent of the network's FLOPs).
// Forward and input gradient: one thread per output element, summing in the CPU's order. Weight
// gradient: one block per (ci, co) pair reduces over every voxel in a fixed tree.
#include "common.cuh"

// y[n, co, d, 2h+i, 2w+j] = bias[co] + sum_ci x[n, ci, d, h, w] * w[ci, co, 0, i, j].
REVSEG_KERNEL(conv_transpose_forward, ConvTArgs) {
    const int h2 = 2 * a.h, w2 = 2 * a.wd;
    const long long sx = static_cast<long long>(a.d) * a.h * a.wd;
    const long long sy = 4 * sx;
    const long long total = static_cast<long long>(a.n) * a.co * sy;
    for (long long o = global_index(); o < total; o += grid_stride()) {
        const long long nco = o / sy;
        const long long r = o % sy;
        const int co = static_cast<int>(nco % a.co);
        const long long n = nco / a.co;
        const int yw = static_cast<int>(r % w2);
        const int yh = static_cast<int>((r / w2) % h2);
        const long long d = r / (static_cast<long long>(w2) * h2);
        const int tap = 2 * (yh & 1) + (yw & 1);
        const long long xoff = (d * a.h + (yh >> 1)) * a.wd + (yw >> 1);
        float v = (a.accumulate ? a.out[o] : 0.0f) + (a.bias != nullptr ? a.bias[co] : 0.0f);
        for (int ci = 0; ci < a.ci; ++ci) {
            v += a.w[(ci * a.co + co) * 4 + tap] * a.x[(n * a.ci + ci) * sx + xoff];
        }
        a.out[o] = v;
    }
}

// dx[n, ci, d, h, w] = sum_co sum_ij w[ci, co, 0, i, j] * dy[n, co, d, 2h+i, 2w+j].
REVSEG_KERNEL(conv_transpose_backward_input, ConvTArgs) {
    const int w2 = 2 * a.wd;
    const long long sx = static_cast<long long>(a.d) * a.h * a.wd;
    const long long sy = 4 * sx;
    const long long total = static_cast<long long>(a.n) * a.ci * sx;
    for (long long o = global_index(); o < total; o += grid_stride()) {
        const long long nci = o / sx;
        const long long r = o % sx;
        const int ci = static_cast<int>(nci % a.ci);
        const long long n = nci / a.ci;
        const int xw = static_cast<int>(r % a.wd);
        const long long dh = r / a.wd;
        const int hh = static_cast<int>(dh % a.h);
        const long long d = dh / a.h;
        float v = a.accumulate ? a.out[o] : 0.0f;
        for (int co = 0; co < a.co; ++co) {
            const float* k = a.w + (ci * a.co + co) * 4;
            const float* g = a.dy + (n * a.co + co) * sy;
            for (int i = 0; i < 2; ++i) {
                const float* row = g + (d * 2 * a.h + 2 * hh + i) * w2 + 2 * xw;
                v += k[2 * i] * row[0] + k[2 * i + 1] * row[1];
            }
        }
        a.out[o] = v;
    }
}

// dw[ci, co, 0, i, j] = sum over n, d, h, w of x[n, ci, d, h, w] * dy[n, co, d, 2h+i, 2w+j].
// Grid: one block of RED_THREADS per (ci, co).
REVSEG_KERNEL_SYNC(conv_transpose_backward_weight, ConvTArgs) {
    REVSEG_SHARED(float, sh, [RED_THREADS]);
    const int ci = static_cast<int>(blockIdx.x) / a.co;
    const int co = static_cast<int>(blockIdx.x) % a.co;
    const int w2 = 2 * a.wd;
    const long long sx = static_cast<long long>(a.d) * a.h * a.wd;
    const long long sy = 4 * sx;
    const long long total = static_cast<long long>(a.n) * sx;
    Kahan s[4] = {{0.0f, 0.0f}, {0.0f, 0.0f}, {0.0f, 0.0f}, {0.0f, 0.0f}};
    for (long long q = threadIdx.x; q < total; q += RED_THREADS) {
        const long long n = q / sx;
        const long long r = q % sx;
        const int xw = static_cast<int>(r % a.wd);
        const long long dh = r / a.wd;
        const int hh = static_cast<int>(dh % a.h);
        const long long d = dh / a.h;
        const float xv = a.x[(n * a.ci + ci) * sx + r];
        const float* g = a.dy + (n * a.co + co) * sy;
        for (int i = 0; i < 2; ++i) {
            const float* row = g + (d * 2 * a.h + 2 * hh + i) * w2 + 2 * xw;
            kahan_add(s[2 * i], xv * row[0]);
            kahan_add(s[2 * i + 1], xv * row[1]);
        }
    }
    for (int k = 0; k < 4; ++k) {
        const float v = block_sum(kahan_value(s[k]), sh);
        if (threadIdx.x == 0) {
            float* o = a.out + (ci * a.co + co) * 4 + k;
            *o = a.accumulate ? *o + v : v;
        }
    }
}

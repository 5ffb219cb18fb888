// BatchNorm3d over (N, D, H, W) per channel, PyTorch's conventions (biased variance to normalise,
// unbiased in the running estimate). Statistics are two-pass like the CPU's (mean, then the sum of
// squared deviations), each pass a split reduction: bn_partial sums one range of one channel per
// block into part[c][split][2], bn_finalize adds a channel's partials in split order. Same bits on
// every run; no atomics.
#include "common.cuh"

// mode 0: sum x. mode 1: sum (x - mean)^2. mode 2: sum dy and sum dy * xhat, xhat = (x - mean) invstd.
// Grid (splits, c), RED_THREADS threads.
REVSEG_KERNEL_SYNC(bn_partial, ChanArgs) {
    REVSEG_SHARED(float, sh, [RED_THREADS]);
    const int c = static_cast<int>(blockIdx.y);
    float s[2];
    if (a.mode == 0) {
        channel_split_sums(
            a.n, a.c, a.sp, a.chunk, [&](long long i, Kahan& k1, Kahan&) { kahan_add(k1, a.x[i]); },
            sh, s);
    } else if (a.mode == 1) {
        const float mu = a.mean[c];
        channel_split_sums(
            a.n, a.c, a.sp, a.chunk,
            [&](long long i, Kahan& k1, Kahan&) {
                const float d = a.x[i] - mu;
                kahan_add(k1, d * d);
            },
            sh, s);
    } else {
        const float mu = a.mean[c], is = a.invstd[c];
        channel_split_sums(
            a.n, a.c, a.sp, a.chunk,
            [&](long long i, Kahan& k1, Kahan& k2) {
                const float g = a.dy[i];
                kahan_add(k1, g);
                kahan_add(k2, g * (a.x[i] - mu) * is);
            },
            sh, s);
    }
    if (threadIdx.x == 0) {
        float* p = a.part + (static_cast<long long>(c) * a.splits + blockIdx.x) * 2;
        p[0] = s[0];
        p[1] = s[1];
    }
}

// One thread per channel. mode 0: mean. mode 1: invstd, and the running statistics when given.
// mode 2 (backward): dbeta += sum dy, dgamma += sum dy xhat (always accumulated, as on the CPU),
// and both sums to tot[c][2] for bn_backward_apply.
REVSEG_KERNEL(bn_finalize, ChanArgs) {
    const long long c = global_index();
    if (c >= a.c) {
        return;
    }
    Kahan k1 = {0.0f, 0.0f}, k2 = {0.0f, 0.0f};
    for (int s = 0; s < a.splits; ++s) {
        const float* p = a.part + (c * a.splits + s) * 2;
        kahan_add(k1, p[0]);
        kahan_add(k2, p[1]);
    }
    const float m = static_cast<float>(static_cast<long long>(a.n) * a.sp);
    if (a.mode == 0) {
        a.mean[c] = kahan_value(k1) / m;
    } else if (a.mode == 1) {
        const float var = kahan_value(k1) / m;
        a.invstd[c] = 1.0f / sqrtf(var + a.eps);
        if (a.has_running) {
            const float mo = a.momentum;
            a.rmean[c] = (1.0f - mo) * a.rmean[c] + mo * a.mean[c];
            a.rvar[c] = (1.0f - mo) * a.rvar[c] + mo * var * a.unbiased;
        }
    } else {
        const float sdy = kahan_value(k1), sdyx = kahan_value(k2);
        a.dbeta[c] += sdy;
        a.dgamma[c] += sdyx;
        a.tot[2 * c] = sdy;
        a.tot[2 * c + 1] = sdyx;
    }
}

// y = x * scale + shift per channel. mode 0 (training): from the batch mean and invstd. mode 1
// (inference): from the running mean and variance.
REVSEG_KERNEL(bn_apply, ChanArgs) {
    const long long total = static_cast<long long>(a.n) * a.c * a.sp;
    for (long long i = global_index(); i < total; i += grid_stride()) {
        const int c = static_cast<int>((i / a.sp) % a.c);
        float scale, shift;
        if (a.mode == 0) {
            scale = a.gamma[c] * a.invstd[c];
            shift = a.beta[c] - a.mean[c] * scale;
        } else {
            scale = a.gamma[c] / sqrtf(a.rvar[c] + a.eps);
            shift = a.beta[c] - a.rmean[c] * scale;
        }
        a.y[i] = a.x[i] * scale + shift;
    }
}

// dx = gamma invstd (dy - sum dy / M - xhat sum(dy xhat) / M), the CPU's formula arranged so that
// no two large terms cancel in f32.
REVSEG_KERNEL(bn_backward_apply, ChanArgs) {
    const long long total = static_cast<long long>(a.n) * a.c * a.sp;
    const float m = static_cast<float>(static_cast<long long>(a.n) * a.sp);
    for (long long i = global_index(); i < total; i += grid_stride()) {
        const int c = static_cast<int>((i / a.sp) % a.c);
        const float is = a.invstd[c];
        const float xhat = (a.x[i] - a.mean[c]) * is;
        const float v = a.gamma[c] * is * (a.dy[i] - a.tot[2 * c] / m - xhat * (a.tot[2 * c + 1] / m));
        a.y[i] = a.accumulate ? a.y[i] + v : v;
    }
}

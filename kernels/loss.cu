// Weighted, masked binary cross-entropy on logits (src/ops/loss.rs): class-rebalancing weights per
// channel from integer counts, the loss as a two-pass split reduction (partials per block, then one
// block adds them in order), and the gradient, which needs the mask total first.
#include "common.cuh"

__device__ __forceinline__ float bce_with_logits(float z, float t) {
    const float relu = z > 0.0f ? z : 0.0f;
    return relu - z * t + log1pf(expf(-fabsf(z)));
}

__device__ __forceinline__ float sigmoid(float z) {
    if (z >= 0.0f) {
        return 1.0f / (1.0f + expf(-z));
    }
    const float e = expf(z);
    return e / (1.0f + e);
}

// Counts of masked positive and negative voxels of channel blockIdx.y in split blockIdx.x, as
// unsigned integers in part (exact at any size). Grid (splits, c).
REVSEG_KERNEL_SYNC(bce_count_partial, LossArgs) {
    REVSEG_SHARED(unsigned int, sh, [RED_THREADS]);
    const long long c = blockIdx.y;
    const long long m = static_cast<long long>(a.n) * a.sp;
    const long long j0 = static_cast<long long>(blockIdx.x) * a.chunk;
    const long long j1 = j0 + a.chunk < m ? j0 + a.chunk : m;
    unsigned int pos = 0, neg = 0;
    for (long long j = j0 + threadIdx.x; j < j1; j += RED_THREADS) {
        const long long nn = j / a.sp;
        const long long i = (nn * a.c + c) * a.sp + (j - nn * a.sp);
        if (a.m[i] > 0.0f) {
            if (a.t[i] > 0.5f) {
                ++pos;
            } else {
                ++neg;
            }
        }
    }
    pos = block_sum(pos, sh);
    neg = block_sum(neg, sh);
    if (threadIdx.x == 0) {
        unsigned int* p = reinterpret_cast<unsigned int*>(a.part) + (c * a.splits + blockIdx.x) * 2;
        p[0] = pos;
        p[1] = neg;
    }
}

// (w_pos, w_neg) = (n_neg / n, n_pos / n), or (1/2, 1/2) for a channel with one class only, into
// tot[c][2]. One thread per channel; the ratio in double, rounded once, as the CPU computes it.
REVSEG_KERNEL(bce_weights_finalize, LossArgs) {
    const long long c = global_index();
    if (c >= a.c) {
        return;
    }
    const unsigned int* p = reinterpret_cast<const unsigned int*>(a.part) + c * a.splits * 2;
    unsigned long long pos = 0, neg = 0;
    for (int s = 0; s < a.splits; ++s) {
        pos += p[2 * s];
        neg += p[2 * s + 1];
    }
    float wp = 0.5f, wn = 0.5f;
    if (pos != 0 && neg != 0) {
        const double n = static_cast<double>(pos + neg);
        wp = static_cast<float>(static_cast<double>(neg) / n);
        wn = static_cast<float>(static_cast<double>(pos) / n);
    }
    a.tot[2 * c] = wp;
    a.tot[2 * c + 1] = wn;
}

REVSEG_KERNEL(bce_weights_apply, LossArgs) {
    const long long total = static_cast<long long>(a.n) * a.c * a.sp;
    for (long long i = global_index(); i < total; i += grid_stride()) {
        const int c = static_cast<int>((i / a.sp) % a.c);
        a.weight[i] = a.m[i] > 0.0f ? (a.t[i] > 0.5f ? a.tot[2 * c] : a.tot[2 * c + 1]) : 0.0f;
    }
}

// Per split of the flat tensor: sum of the mask and of mask * weight * bce over masked voxels, into
// part[split][2]. Grid (splits).
REVSEG_KERNEL_SYNC(bce_loss_partial, LossArgs) {
    REVSEG_SHARED(float, sh, [RED_THREADS]);
    const long long j0 = static_cast<long long>(blockIdx.x) * a.chunk;
    const long long j1 = j0 + a.chunk < a.total ? j0 + a.chunk : a.total;
    Kahan count = {0.0f, 0.0f}, loss = {0.0f, 0.0f};
    for (long long i = j0 + threadIdx.x; i < j1; i += RED_THREADS) {
        const float m = a.m[i];
        kahan_add(count, m);
        if (m > 0.0f) {
            kahan_add(loss, m * a.w[i] * bce_with_logits(a.z[i], a.t[i]));
        }
    }
    const float cs = block_sum(kahan_value(count), sh);
    const float ls = block_sum(kahan_value(loss), sh);
    if (threadIdx.x == 0) {
        a.part[2 * blockIdx.x] = cs;
        a.part[2 * blockIdx.x + 1] = ls;
    }
}

// One block: adds the partials (thread t takes splits t, t + RED_THREADS, ... in order, then a fixed
// tree), writes loss[0] = sum / max(1, mask total) and the normaliser to tot[0].
REVSEG_KERNEL_SYNC(bce_loss_finalize, LossArgs) {
    REVSEG_SHARED(float, sh, [RED_THREADS]);
    Kahan count = {0.0f, 0.0f}, loss = {0.0f, 0.0f};
    for (int s = static_cast<int>(threadIdx.x); s < a.splits; s += RED_THREADS) {
        kahan_add(count, a.part[2 * s]);
        kahan_add(loss, a.part[2 * s + 1]);
    }
    const float cs = block_sum(kahan_value(count), sh);
    const float ls = block_sum(kahan_value(loss), sh);
    if (threadIdx.x == 0) {
        const float norm = 1.0f / (cs > 1.0f ? cs : 1.0f);
        a.loss[0] = ls * norm;
        a.tot[0] = norm;
    }
}

// d loss / d z = mask * w * (sigmoid(z) - t) / max(1, mask total).
REVSEG_KERNEL(bce_grad, LossArgs) {
    const float norm = a.tot[0];
    for (long long i = global_index(); i < a.total; i += grid_stride()) {
        a.dz[i] = a.m[i] * a.w[i] * (sigmoid(a.z[i]) - a.t[i]) * norm;
    }
}

// z -> sigmoid(z); z is a.z, the result goes to a.dz.
REVSEG_KERNEL(sigmoid_map, LossArgs) {
    for (long long i = global_index(); i < a.total; i += grid_stride()) {
        a.dz[i] = sigmoid(a.z[i]);
    }
}

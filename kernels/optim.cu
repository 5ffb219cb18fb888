// Optimiser updates, one thread per parameter. Bias corrections (lr_t, 1/sqrt(1 - beta2^t)) are
// computed once on the host in f64, as the CPU backend does.
#include "common.cuh"

REVSEG_KERNEL(adam_step, AdamArgs) {
    for (long long i = global_index(); i < a.n; i += grid_stride()) {
        const float g = a.g[i];
        const float m = a.beta1 * a.m[i] + a.one_minus_beta1 * g;
        const float v = a.beta2 * a.v[i] + a.one_minus_beta2 * g * g;
        a.m[i] = m;
        a.v[i] = v;
        a.p[i] -= a.lr_t * m / (sqrtf(v) * a.inv_bc2 + a.eps);
    }
}

// With momentum when vel is given: vel = mu vel + (g + wd p), p -= lr vel; else p -= lr (g + wd p).
REVSEG_KERNEL(sgd_step, SgdArgs) {
    for (long long i = global_index(); i < a.n; i += grid_stride()) {
        const float d = a.g[i] + a.weight_decay * a.p[i];
        if (a.vel != nullptr) {
            const float v = a.momentum * a.vel[i] + d;
            a.vel[i] = v;
            a.p[i] -= a.lr * v;
        } else {
            a.p[i] -= a.lr * d;
        }
    }
}

// Elementwise ops: fill, copy, ELU forward/backward, add, and the reversible coupling's in-place
// dst += src / dst -= src. Memory-bound one-pass loops; the formulas are those of
// src/ops/elementwise.rs, evaluated in the same order as the CPU backend.
#include "common.cuh"

__device__ __forceinline__ float elu(float x) {
    return x > 0.0f ? x : expf(x) - 1.0f;
}

// dELU/dx through y = elu(x): the backward needs only the output.
__device__ __forceinline__ float elu_grad_from_output(float y) {
    return y > 0.0f ? 1.0f : y + 1.0f;
}

REVSEG_KERNEL(fill_f32, EwArgs) {
    for (long long i = global_index(); i < a.n; i += grid_stride()) {
        a.out[i] = a.alpha;
    }
}

REVSEG_KERNEL(copy_f32, EwArgs) {
    for (long long i = global_index(); i < a.n; i += grid_stride()) {
        a.out[i] = a.a[i];
    }
}

// a = x, out = y; in place when they are the same buffer (each element is read before written).
REVSEG_KERNEL(elu_forward, EwArgs) {
    for (long long i = global_index(); i < a.n; i += grid_stride()) {
        a.out[i] = elu(a.a[i]);
    }
}

// a = y, b = dy, out = dx; dx may be dy itself (overwrite only).
REVSEG_KERNEL(elu_backward, EwArgs) {
    for (long long i = global_index(); i < a.n; i += grid_stride()) {
        float v = a.b[i] * elu_grad_from_output(a.a[i]);
        a.out[i] = a.accumulate ? a.out[i] + v : v;
    }
}

REVSEG_KERNEL(add_f32, EwArgs) {
    for (long long i = global_index(); i < a.n; i += grid_stride()) {
        a.out[i] = a.a[i] + a.b[i];
    }
}

// out += a (alpha > 0) or out -= a (alpha < 0): subtracting, not adding -a * 1, keeps the inverse
// coupling x = y - f bit-exact with the CPU's.
REVSEG_KERNEL(add_assign_f32, EwArgs) {
    const bool sub = a.alpha < 0.0f;
    for (long long i = global_index(); i < a.n; i += grid_stride()) {
        a.out[i] = sub ? a.out[i] - a.a[i] : a.out[i] + a.a[i];
    }
}

// conv3d with a 1x1x1 kernel and few output channels (co <= 5, ci * co <= 1280: the network's
// output layer, 28 -> 3) on CUDA cores, in every precision. Such a layer is memory-bound: per
// position it moves ci + co values for ci * co multiply-adds (84 FMAs for 31 values at 28 -> 3),
// and no tensor-core tile fits it (an mma multiplies each operand by at least 8 others, where
// each input value here meets only co <= 5 weights: at most 3/8 of issued MACs useful). So these
// kernels issue only useful FMAs and stream the tensors once, with 16-byte loads where every
// channel plane starts 16-byte aligned (`vec`: bases aligned, sp % 4 == 0).
//
// The TF32 / BF16 variants round both operands as the tensor-core kernels do (tf32_round,
// bf16_round; the bias and prior values are not rounded) and accumulate in f32: a product of two
// rounded operands is exact in f32, so each FMA rounds once, as an mma's accumulation does.
// Results are (prior + bias) + sum, the order of conv3d.cu and conv3d_mma.cu.
//
// Forward: Y[n, o, p] = b[o] + sum_c W[o, c] X[n, c, p]; input gradient: dX[n, c, p] =
// sum_o W[o, c] dY[n, o, p]. One thread per 4 positions (or 1 without `vec`) and every output
// channel, weights in shared memory (a warp reads one word at a time: a broadcast). Weight
// gradient: dW[o, c] = sum over (n, p) of dY[n, o, p] X[n, c, p], one warp per input channel (8
// per block) over one of `splits` position ranges of `chunk` (a multiple of 128: a warp's sweep
// of 16-byte loads), summed in a fixed butterfly across the warp into partial sums
// out[split][o][c] that conv3d_backward_weight_reduce (conv3d.cu) adds in split order:
// deterministic, no atomics. Lanes and warps with nothing to do issue no FMA, so every issued FMA
// is a useful MAC.
#include "intrinsics.cuh"

#define PW_THREADS 256
#define PW_MAX_CO 5
#define PW_MAX_W 1280
// Weight gradient: input channels (warps) per block.
#define PW_WARPS 8

enum PwPrec { kPwF32 = 0, kPwTf32 = 1, kPwBf16 = 2 };

template <int PREC>
__device__ __forceinline__ float pw_round(float v) {
    if (PREC == kPwTf32) {
        return __uint_as_float(tf32_round(v));
    }
    if (PREC == kPwBf16) {
        return bf16_round(v);
    }
    return v;
}

// Four consecutive floats in one 16-byte load; the launcher allows it only where every address is
// 16-byte aligned, which the emulator checks (a GPU would fault).
__device__ __forceinline__ float4 pw_load4(const float* p) {
#ifdef REVSEG_EMU
    if (reinterpret_cast<unsigned long long>(p) % 16 != 0) {
        __builtin_trap();
    }
#endif
    return *reinterpret_cast<const float4*>(p);
}

__device__ __forceinline__ void pw_store4(float* p, float4 v) {
#ifdef REVSEG_EMU
    if (reinterpret_cast<unsigned long long>(p) % 16 != 0) {
        __builtin_trap();
    }
#endif
    *reinterpret_cast<float4*>(p) = v;
}

template <int PREC>
__device__ __forceinline__ void pw_round4(float4 v, float r[4]) {
    r[0] = pw_round<PREC>(v.x);
    r[1] = pw_round<PREC>(v.y);
    r[2] = pw_round<PREC>(v.z);
    r[3] = pw_round<PREC>(v.w);
}

// Ws[c * co + o] = W[o, c], rounded to the precision: a thread's co weights of one input channel
// are adjacent.
template <int PREC>
__device__ __forceinline__ void pw_stage_weights(const PointwiseArgs& a, float* Ws) {
    const int count = a.ci * a.co;
    for (int i = static_cast<int>(threadIdx.x); i < count; i += PW_THREADS) {
        const int c = i / a.co, o = i % a.co;
        Ws[i] = pw_round<PREC>(a.w[o * a.ci + c]);
    }
    __syncthreads();
}

template <int PREC, int CO>
__device__ __forceinline__ void pw_forward(const PointwiseArgs& a, const float* Ws) {
    float b[CO];
    REVSEG_UNROLL
    for (int o = 0; o < CO; ++o) {
        b[o] = a.bias != nullptr ? a.bias[o] : 0.0f;
    }
    const int sp = a.sp;
    const long long total = static_cast<long long>(a.n) * sp;
    if (a.vec) {
        for (long long g = global_index(); g < total / 4; g += grid_stride()) {
            const int q = static_cast<int>(4 * g);
            const int n = q / sp, p = q - n * sp;
            const float* x = a.x + n * a.ci * sp + p;
            float acc[CO][4];
            REVSEG_UNROLL
            for (int o = 0; o < CO; ++o) {
                REVSEG_UNROLL
                for (int j = 0; j < 4; ++j) {
                    acc[o][j] = 0.0f;
                }
            }
            for (int c = 0; c < a.ci; ++c) {
                float xv[4];
                pw_round4<PREC>(pw_load4(x + c * sp), xv);
                REVSEG_UNROLL
                for (int o = 0; o < CO; ++o) {
                    const float w = Ws[c * CO + o];
                    REVSEG_UNROLL
                    for (int j = 0; j < 4; ++j) {
                        acc[o][j] += xv[j] * w;
                    }
                }
            }
            float* y = a.out + n * CO * sp + p;
            REVSEG_UNROLL
            for (int o = 0; o < CO; ++o) {
                float4 r = a.accumulate ? pw_load4(y + o * sp) : float4{0.0f, 0.0f, 0.0f, 0.0f};
                r.x = (r.x + b[o]) + acc[o][0];
                r.y = (r.y + b[o]) + acc[o][1];
                r.z = (r.z + b[o]) + acc[o][2];
                r.w = (r.w + b[o]) + acc[o][3];
                pw_store4(y + o * sp, r);
            }
        }
    } else {
        for (long long g = global_index(); g < total; g += grid_stride()) {
            const int q = static_cast<int>(g);
            const int n = q / sp, p = q - n * sp;
            const float* x = a.x + n * a.ci * sp + p;
            float acc[CO];
            REVSEG_UNROLL
            for (int o = 0; o < CO; ++o) {
                acc[o] = 0.0f;
            }
            for (int c = 0; c < a.ci; ++c) {
                const float xv = pw_round<PREC>(x[c * sp]);
                REVSEG_UNROLL
                for (int o = 0; o < CO; ++o) {
                    acc[o] += xv * Ws[c * CO + o];
                }
            }
            float* y = a.out + n * CO * sp + p;
            REVSEG_UNROLL
            for (int o = 0; o < CO; ++o) {
                y[o * sp] = ((a.accumulate ? y[o * sp] : 0.0f) + b[o]) + acc[o];
            }
        }
    }
}

template <int PREC, int CO>
__device__ __forceinline__ void pw_input(const PointwiseArgs& a, const float* Ws) {
    const int sp = a.sp;
    const long long total = static_cast<long long>(a.n) * sp;
    if (a.vec) {
        for (long long g = global_index(); g < total / 4; g += grid_stride()) {
            const int q = static_cast<int>(4 * g);
            const int n = q / sp, p = q - n * sp;
            const float* dy = a.dy + n * CO * sp + p;
            float d[CO][4];
            REVSEG_UNROLL
            for (int o = 0; o < CO; ++o) {
                pw_round4<PREC>(pw_load4(dy + o * sp), d[o]);
            }
            float* dx = a.out + n * a.ci * sp + p;
            for (int c = 0; c < a.ci; ++c) {
                float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                REVSEG_UNROLL
                for (int o = 0; o < CO; ++o) {
                    const float w = Ws[c * CO + o];
                    REVSEG_UNROLL
                    for (int j = 0; j < 4; ++j) {
                        acc[j] += d[o][j] * w;
                    }
                }
                float4 r = a.accumulate ? pw_load4(dx + c * sp) : float4{0.0f, 0.0f, 0.0f, 0.0f};
                r.x += acc[0];
                r.y += acc[1];
                r.z += acc[2];
                r.w += acc[3];
                pw_store4(dx + c * sp, r);
            }
        }
    } else {
        for (long long g = global_index(); g < total; g += grid_stride()) {
            const int q = static_cast<int>(g);
            const int n = q / sp, p = q - n * sp;
            const float* dy = a.dy + n * CO * sp + p;
            float d[CO];
            REVSEG_UNROLL
            for (int o = 0; o < CO; ++o) {
                d[o] = pw_round<PREC>(dy[o * sp]);
            }
            float* dx = a.out + n * a.ci * sp + p;
            for (int c = 0; c < a.ci; ++c) {
                float acc = 0.0f;
                REVSEG_UNROLL
                for (int o = 0; o < CO; ++o) {
                    acc += d[o] * Ws[c * CO + o];
                }
                dx[c * sp] = (a.accumulate ? dx[c * sp] : 0.0f) + acc;
            }
        }
    }
}

template <int PREC, int CO>
__device__ __forceinline__ void pw_weight(const PointwiseArgs& a) {
    const int lane = static_cast<int>(threadIdx.x) % 32;
    const int c = static_cast<int>(blockIdx.x) * PW_WARPS + static_cast<int>(threadIdx.x) / 32;
    if (c >= a.ci) {
        return;  // the whole warp: no lane of it takes part in a collective
    }
    const int sp = a.sp;
    const int split = static_cast<int>(blockIdx.y);
    const long long total = static_cast<long long>(a.n) * sp;
    const long long qb = static_cast<long long>(split) * a.chunk;
    const long long qe = qb + a.chunk < total ? qb + a.chunk : total;
    float acc[CO][4];
    REVSEG_UNROLL
    for (int o = 0; o < CO; ++o) {
        REVSEG_UNROLL
        for (int j = 0; j < 4; ++j) {
            acc[o][j] = 0.0f;
        }
    }
    for (int n = static_cast<int>(qb / sp); static_cast<long long>(n) * sp < qe; ++n) {
        const long long base = static_cast<long long>(n) * sp;
        const int p0 = qb > base ? static_cast<int>(qb - base) : 0;
        const int p1 = qe - base < sp ? static_cast<int>(qe - base) : sp;
        const float* x = a.x + (n * a.ci + c) * sp;
        const float* dy = a.dy + n * CO * sp;
        if (a.vec) {
            // p0 and p1 are multiples of 4 (chunk and sp are).
            for (int p = p0 + 4 * lane; p < p1; p += 128) {
                float xv[4];
                pw_round4<PREC>(pw_load4(x + p), xv);
                REVSEG_UNROLL
                for (int o = 0; o < CO; ++o) {
                    float d[4];
                    pw_round4<PREC>(pw_load4(dy + o * sp + p), d);
                    REVSEG_UNROLL
                    for (int j = 0; j < 4; ++j) {
                        acc[o][j] += xv[j] * d[j];
                    }
                }
            }
        } else {
            for (int p = p0 + lane; p < p1; p += 32) {
                const float xv = pw_round<PREC>(x[p]);
                REVSEG_UNROLL
                for (int o = 0; o < CO; ++o) {
                    acc[o][0] += xv * pw_round<PREC>(dy[o * sp + p]);
                }
            }
        }
    }
    REVSEG_UNROLL
    for (int o = 0; o < CO; ++o) {
        float s = (acc[o][0] + acc[o][1]) + (acc[o][2] + acc[o][3]);
        // A butterfly: every lane ends with the same sum (IEEE addition commutes), in a fixed order.
        for (int m = 16; m > 0; m >>= 1) {
            s += __shfl_xor_sync(0xFFFFFFFFu, s, m);
        }
        if (lane == 0) {
            a.out[(static_cast<long long>(split) * CO + o) * a.ci + c] = s;
        }
    }
}

// The output-channel count as a template argument, so that the accumulators are registers.
#define PW_DISPATCH_CO(F, PREC, ...) \
    switch (a.co) {                  \
        case 1:                      \
            F<PREC, 1>(__VA_ARGS__); \
            break;                   \
        case 2:                      \
            F<PREC, 2>(__VA_ARGS__); \
            break;                   \
        case 3:                      \
            F<PREC, 3>(__VA_ARGS__); \
            break;                   \
        case 4:                      \
            F<PREC, 4>(__VA_ARGS__); \
            break;                   \
        default:                     \
            F<PREC, 5>(__VA_ARGS__); \
            break;                   \
    }

template <int PREC>
__device__ __forceinline__ void pw_forward_any(const PointwiseArgs& a) {
    REVSEG_SHARED(float, Ws, [PW_MAX_W]);
    pw_stage_weights<PREC>(a, Ws);
    PW_DISPATCH_CO(pw_forward, PREC, a, Ws)
}

template <int PREC>
__device__ __forceinline__ void pw_input_any(const PointwiseArgs& a) {
    REVSEG_SHARED(float, Ws, [PW_MAX_W]);
    pw_stage_weights<PREC>(a, Ws);
    PW_DISPATCH_CO(pw_input, PREC, a, Ws)
}

template <int PREC>
__device__ __forceinline__ void pw_weight_any(const PointwiseArgs& a) {
    PW_DISPATCH_CO(pw_weight, PREC, a)
}

REVSEG_KERNEL_SYNC(conv3d_pointwise_narrow_forward_f32, PointwiseArgs) {
    pw_forward_any<kPwF32>(a);
}
REVSEG_KERNEL_SYNC(conv3d_pointwise_narrow_forward_tf32, PointwiseArgs) {
    pw_forward_any<kPwTf32>(a);
}
REVSEG_KERNEL_SYNC(conv3d_pointwise_narrow_forward_bf16, PointwiseArgs) {
    pw_forward_any<kPwBf16>(a);
}
REVSEG_KERNEL_SYNC(conv3d_pointwise_narrow_backward_input_f32, PointwiseArgs) {
    pw_input_any<kPwF32>(a);
}
REVSEG_KERNEL_SYNC(conv3d_pointwise_narrow_backward_input_tf32, PointwiseArgs) {
    pw_input_any<kPwTf32>(a);
}
REVSEG_KERNEL_SYNC(conv3d_pointwise_narrow_backward_input_bf16, PointwiseArgs) {
    pw_input_any<kPwBf16>(a);
}
REVSEG_KERNEL_SYNC(conv3d_pointwise_narrow_backward_weight_f32, PointwiseArgs) {
    pw_weight_any<kPwF32>(a);
}
REVSEG_KERNEL_SYNC(conv3d_pointwise_narrow_backward_weight_tf32, PointwiseArgs) {
    pw_weight_any<kPwTf32>(a);
}
REVSEG_KERNEL_SYNC(conv3d_pointwise_narrow_backward_weight_bf16, PointwiseArgs) {
    pw_weight_any<kPwBf16>(a);
}

// conv3d (stride 1, "same" zero padding, odd kernel) as implicit GEMMs on tensor cores: mma.sync
// m16n8k8 TF32 or m16n8k16 BF16, f32 accumulation. The f32 reference path is conv3d.cu.
//
// Data kernels (forward and input gradient): Y[p, co] = sum over k = (tap, ci) of
// X[ci, p + off(tap)] * Wp[k, co]. Output positions p are the GEMM's M (64 per block, 16 per
// warp), channels its N (a tile of BN from 8 to 80, chosen per layer so that few are padding), K
// ordered (tap, channel) so that a row's tap offset changes once every cin rows. Wp is the weight
// tensor packed by conv3d_mma_pack_weights into K x N rows, zero padded; the input gradient is the
// same GEMM over dy with the taps' offsets negated and Wp[(tap, co), ci] = W[co, ci, tap].
// Weight kernels: dW[co, (tap, ci)] = sum over positions q of X[ci, q + off(tap)] * dY[co, q]:
// (tap, ci) on M (64 per block), co on N, positions on K, split over position ranges into partial
// sums that conv3d_backward_weight_reduce adds in split order (deterministic, no atomics).
//
// Shared tiles are f32, k-major (As[k][m], Bs[k][n]), filled by cp.async (16 bytes where the
// source run is aligned and inside one row of the volume, else 4, zeros stored for padding) in a
// 3-stage pipeline. cp.async copies bytes unchanged, so operands are rounded to TF32 / BF16 as the
// fragments are read from shared memory; the packed weights are stored rounded already.
//
// Fragments: lanes g = lane / 4, t = lane % 4 read As[kk + t][row + g] (TF32 a0, a1 at rows g and
// g + 8, a2, a3 at kk + t + 4). Row strides are 8 mod 32 words, so those 32 reads hit 32 banks.
// BF16 takes the same reads: its k-pair (2t, 2t + 1) is taken from shared rows (t, t + 4) and
// (2t + 8, 2t + 9) from (t + 8, t + 12), for A and B alike, which is all a GEMM's K needs.
#include "intrinsics.cuh"

#define MMA_BM 64
#define MMA_BK 16
#define MMA_STAGES 3
#define MMA_THREADS 128

// Row stride for a tile row of `n` floats: 8 mod 32 words (bank-conflict-free fragment reads),
// a multiple of 4 (16-byte cp.async destinations).
__host__ __device__ constexpr int mma_stride(int n) {
    return n % 16 == 8 ? n : n + 8;
}

#define MMA_AS mma_stride(MMA_BM)

enum MmaPrec { kTf32 = 0, kBf16 = 1 };

struct MmaTap {
    int dz, dy, dx;
};

__device__ __forceinline__ MmaTap mma_tap(const MmaConvArgs& a, int t) {
    MmaTap o;
    o.dz = t / (a.kh * a.kw) - a.kd / 2;
    o.dy = (t / a.kw) % a.kh - a.kh / 2;
    o.dx = t % a.kw - a.kw / 2;
    if (a.flip) {
        o.dz = -o.dz;
        o.dy = -o.dy;
        o.dx = -o.dx;
    }
    return o;
}

// acc[f] += As(16 rows from `row`) x Bs(all BN columns), BK deep, in PREC.
template <int PREC, int BN>
__device__ __forceinline__ void mma_stage(const float* As, const float* Bs, int row, int lane,
                                          float acc[BN / 8][4]) {
    constexpr int BS = mma_stride(BN);
    const int g = lane >> 2, t = lane & 3;
    if (PREC == kTf32) {
        REVSEG_UNROLL
        for (int kk = 0; kk < MMA_BK; kk += 8) {
            const float* a0 = As + (kk + t) * MMA_AS + row + g;
            const float* a1 = a0 + 4 * MMA_AS;
            const unsigned af[4] = {tf32_round(a0[0]), tf32_round(a0[8]), tf32_round(a1[0]),
                                    tf32_round(a1[8])};
            REVSEG_UNROLL
            for (int f = 0; f < BN / 8; ++f) {
                const float* b0 = Bs + (kk + t) * BS + 8 * f + g;
                const unsigned bf[2] = {__float_as_uint(b0[0]), __float_as_uint(b0[4 * BS])};
                mma_tf32_m16n8k8(acc[f], af, bf, acc[f]);
            }
        }
    } else {
        const float* a0 = As + t * MMA_AS + row + g;
        const float* a4 = a0 + 4 * MMA_AS;
        const float* a8 = a0 + 8 * MMA_AS;
        const float* a12 = a0 + 12 * MMA_AS;
        const unsigned af[4] = {bf16x2_round(a0[0], a4[0]), bf16x2_round(a0[8], a4[8]),
                                bf16x2_round(a8[0], a12[0]), bf16x2_round(a8[8], a12[8])};
        REVSEG_UNROLL
        for (int f = 0; f < BN / 8; ++f) {
            const float* b0 = Bs + t * BS + 8 * f + g;
            const unsigned bf[2] = {bf16x2_round(b0[0], b0[4 * BS]),
                                    bf16x2_round(b0[8 * BS], b0[12 * BS])};
            mma_bf16_m16n8k16(acc[f], af, bf, acc[f]);
        }
    }
}

// The B-side copy of the data kernels: BK rows of the packed weights, columns n0 .. n0 + BN.
template <int BN>
__device__ __forceinline__ void load_packed_b(const MmaConvArgs& a, float* Bs, int k0, int n0,
                                              int tid) {
    constexpr int BS = mma_stride(BN);
    constexpr int GROUPS = BN / 4;
    constexpr int ITERS = (MMA_BK * GROUPS + MMA_THREADS - 1) / MMA_THREADS;
    REVSEG_UNROLL
    for (int it = 0; it < ITERS; ++it) {
        const int i = tid + it * MMA_THREADS;
        if (MMA_BK * GROUPS % MMA_THREADS != 0 && i >= MMA_BK * GROUPS) {
            break;
        }
        const int r = i / GROUPS, c = 4 * (i % GROUPS);
        float* dst = Bs + r * BS + c;
        const float* src = a.w + static_cast<long long>(k0 + r) * a.npad + n0 + c;
        if (a.vec) {
            cp_async<16>(dst, src);
        } else {
            REVSEG_UNROLL
            for (int j = 0; j < 4; ++j) {
                cp_async<4>(dst + j, src + j);
            }
        }
    }
}

// The K loop: tiles loaded by `load(stage, k tile)` MMA_STAGES - 1 ahead of the one multiplied.
template <int PREC, int BN, typename Load>
__device__ __forceinline__ void mma_pipeline(float (*As)[MMA_BK * MMA_AS],
                                             float (*Bs)[MMA_BK * mma_stride(BN)], int ktiles,
                                             int warp, int lane, Load& load, float acc[BN / 8][4]) {
    for (int f = 0; f < BN / 8; ++f) {
        for (int i = 0; i < 4; ++i) {
            acc[f][i] = 0.0f;
        }
    }
    for (int s = 0; s < MMA_STAGES - 1; ++s) {
        if (s < ktiles) {
            load(s, s);
        }
        cp_async_commit();
    }
    for (int kt = 0; kt < ktiles; ++kt) {
        cp_async_wait<MMA_STAGES - 2>();
        __syncthreads();
        // The stage refilled here was last read in iteration kt - 1, before the barrier above.
        const int next = kt + MMA_STAGES - 1;
        if (next < ktiles) {
            load(next % MMA_STAGES, next);
        }
        cp_async_commit();
        mma_stage<PREC, BN>(As[kt % MMA_STAGES], Bs[kt % MMA_STAGES], 16 * warp, lane, acc);
    }
    cp_async_wait<0>();
}

// Forward / input gradient. Grid: x = n * position tiles, y = channel tiles of BN.
template <int PREC, int BN>
__device__ __forceinline__ void mma_data(const MmaConvArgs& a) {
    constexpr int BS = mma_stride(BN);
    REVSEG_SHARED_ALIGN16(float, As, [MMA_STAGES][MMA_BK * MMA_AS]);
    REVSEG_SHARED_ALIGN16(float, Bs, [MMA_STAGES][MMA_BK * BS]);
    const int hw = a.h * a.wd, sp = a.d * hw;
    const int taps = a.kd * a.kh * a.kw;
    const int kdim = taps * a.cin;
    const int ktiles = (kdim + MMA_BK - 1) / MMA_BK;
    const int ptiles = (sp + MMA_BM - 1) / MMA_BM;
    const int n = static_cast<int>(blockIdx.x) / ptiles;
    const int p0 = (static_cast<int>(blockIdx.x) % ptiles) * MMA_BM;
    const int n0 = static_cast<int>(blockIdx.y) * BN;
    const int tid = static_cast<int>(threadIdx.x);
    const int warp = tid / 32, lane = tid % 32;
    const float* src_n = a.src + static_cast<long long>(n) * a.cin * sp;

    // A copies: this thread's 4 consecutive positions (fixed), rows kr and kr + 8 of each tile.
    const int mg = 4 * (tid % 16), kr = tid / 16;
    int pz[4], py[4], px[4];
    bool pin[4];
    for (int j = 0; j < 4; ++j) {
        const int p = p0 + mg + j;
        pin[j] = p < sp;
        pz[j] = p / hw;
        py[j] = (p / a.wd) % a.h;
        px[j] = p % a.wd;
    }
    const bool one_row = pin[3] && pz[0] == pz[3] && py[0] == py[3];
    // Per row: (tap, channel) of its current k, advanced by BK per tile without divisions; the
    // tap's offsets are recomputed only when the tap changes.
    int rt[2], rc[2];
    MmaTap ro[2];
    for (int r = 0; r < 2; ++r) {
        const int k = kr + 8 * r;
        rt[r] = k / a.cin;
        rc[r] = k % a.cin;
        ro[r] = mma_tap(a, rt[r] < taps ? rt[r] : 0);
    }

    auto load = [&](int stage, int kt) {
        float* as = As[stage];
        REVSEG_UNROLL
        for (int r = 0; r < 2; ++r) {
            float* dst = as + (kr + 8 * r) * MMA_AS + mg;
            if (rt[r] >= taps) {
                REVSEG_UNROLL
                for (int j = 0; j < 4; ++j) {
                    dst[j] = 0.0f;
                }
            } else {
                const MmaTap o = ro[r];
                const float* plane = src_n + static_cast<long long>(rc[r]) * sp;
                const int zz = pz[0] + o.dz, yy = py[0] + o.dy, x0 = px[0] + o.dx;
                const int off = (zz * a.h + yy) * a.wd + x0;
                if (a.vec && one_row && zz >= 0 && zz < a.d && yy >= 0 && yy < a.h && x0 >= 0 &&
                    x0 + 3 < a.wd && off % 4 == 0) {
                    cp_async<16>(dst, plane + off);
                } else {
                    REVSEG_UNROLL
                    for (int j = 0; j < 4; ++j) {
                        const int z = pz[j] + o.dz, y = py[j] + o.dy, x = px[j] + o.dx;
                        if (pin[j] && z >= 0 && z < a.d && y >= 0 && y < a.h && x >= 0 &&
                            x < a.wd) {
                            cp_async<4>(dst + j, plane + (z * a.h + y) * a.wd + x);
                        } else {
                            dst[j] = 0.0f;
                        }
                    }
                }
            }
            // Divisions only where the row crosses into another tap.
            rc[r] += MMA_BK;
            if (rc[r] >= a.cin) {
                rt[r] += rc[r] / a.cin;
                rc[r] %= a.cin;
                if (rt[r] < taps) {
                    ro[r] = mma_tap(a, rt[r]);
                }
            }
        }
        load_packed_b<BN>(a, Bs[stage], kt * MMA_BK, n0, tid);
    };

    float acc[BN / 8][4];
    mma_pipeline<PREC, BN>(As, Bs, ktiles, warp, lane, load, acc);

    const int g = lane >> 2, t = lane & 3;
    for (int f = 0; f < BN / 8; ++f) {
        for (int i = 0; i < 4; ++i) {
            const int p = p0 + 16 * warp + g + (i >= 2 ? 8 : 0);
            const int c = n0 + 8 * f + 2 * t + (i & 1);
            if (p < sp && c < a.cout) {
                const float b = a.bias != nullptr ? a.bias[c] : 0.0f;
                float* o = a.out + (static_cast<long long>(n) * a.cout + c) * sp + p;
                *o = ((a.accumulate ? *o : 0.0f) + b) + acc[f][i];
            }
        }
    }
}

// Weight-gradient partials: out[split][co][ci][tap]. Grid: x = (tap, ci) tiles of 64, y = co tiles
// of BN, z = splits of `chunk` positions (q = n * sp + p).
template <int PREC, int BN>
__device__ __forceinline__ void mma_weight(const MmaConvArgs& a) {
    constexpr int BS = mma_stride(BN);
    REVSEG_SHARED_ALIGN16(float, As, [MMA_STAGES][MMA_BK * MMA_AS]);
    REVSEG_SHARED_ALIGN16(float, Bs, [MMA_STAGES][MMA_BK * BS]);
    const int hw = a.h * a.wd, sp = a.d * hw;
    const int taps = a.kd * a.kh * a.kw;
    const int mdim = taps * a.cin;
    const int m0 = static_cast<int>(blockIdx.x) * MMA_BM;
    const int n0 = static_cast<int>(blockIdx.y) * BN;
    const int split = static_cast<int>(blockIdx.z);
    const long long qtotal = static_cast<long long>(a.n) * sp;
    const long long qbeg = static_cast<long long>(split) * a.chunk;
    const long long qend = qbeg + a.chunk < qtotal ? qbeg + a.chunk : qtotal;
    const int ktiles = static_cast<int>((qend - qbeg + MMA_BK - 1) / MMA_BK);
    const int tid = static_cast<int>(threadIdx.x);
    const int warp = tid / 32, lane = tid % 32;

    // Both copies: this thread's position row ql of each tile, columns mc + 8j.
    const int ql = tid % 16, mc = tid / 16;
    int cch[8];
    MmaTap co_[8];
    bool cin_[8];
    for (int j = 0; j < 8; ++j) {
        const int m = m0 + mc + 8 * j;
        cin_[j] = m < mdim;
        const int tap = cin_[j] ? m / a.cin : 0;
        cch[j] = cin_[j] ? m % a.cin : 0;
        co_[j] = mma_tap(a, tap);
    }
    // The row's position, advanced by BK per tile without divisions.
    long long q = qbeg + ql;
    int qn = static_cast<int>(q / sp);
    int rem = static_cast<int>(q % sp);
    int qz = rem / hw, qy = (rem / a.wd) % a.h, qx = rem % a.wd;

    auto load = [&](int stage, int) {
        float* as = As[stage] + ql * MMA_AS;
        float* bs = Bs[stage] + ql * BS;
        const bool q_in = q < qend;
        const float* x_n = a.src + static_cast<long long>(qn) * a.cin * sp;
        const float* dy_n = a.w + static_cast<long long>(qn) * a.cout * sp;
        REVSEG_UNROLL
        for (int j = 0; j < 8; ++j) {
            const MmaTap o = co_[j];
            const int z = qz + o.dz, y = qy + o.dy, x = qx + o.dx;
            if (q_in && cin_[j] && z >= 0 && z < a.d && y >= 0 && y < a.h && x >= 0 && x < a.wd) {
                cp_async<4>(as + mc + 8 * j,
                            x_n + static_cast<long long>(cch[j]) * sp + (z * a.h + y) * a.wd + x);
            } else {
                as[mc + 8 * j] = 0.0f;
            }
        }
        const int p = (qz * a.h + qy) * a.wd + qx;
        REVSEG_UNROLL
        for (int j = 0; j < BN / 8; ++j) {
            const int c = n0 + mc + 8 * j;
            if (q_in && c < a.cout) {
                cp_async<4>(bs + mc + 8 * j, dy_n + static_cast<long long>(c) * sp + p);
            } else {
                bs[mc + 8 * j] = 0.0f;
            }
        }
        // Divisions only where the row wraps into another row of the volume.
        q += MMA_BK;
        qx += MMA_BK;
        if (qx >= a.wd) {
            qy += qx / a.wd;
            qx %= a.wd;
            if (qy >= a.h) {
                qz += qy / a.h;
                qy %= a.h;
                if (qz >= a.d) {
                    qn += qz / a.d;
                    qz %= a.d;
                }
            }
        }
    };

    float acc[BN / 8][4];
    mma_pipeline<PREC, BN>(As, Bs, ktiles, warp, lane, load, acc);

    const int g = lane >> 2, t = lane & 3;
    float* part = a.out + static_cast<long long>(split) * a.cout * mdim;
    for (int f = 0; f < BN / 8; ++f) {
        for (int i = 0; i < 4; ++i) {
            const int m = m0 + 16 * warp + g + (i >= 2 ? 8 : 0);
            const int c = n0 + 8 * f + 2 * t + (i & 1);
            if (m < mdim && c < a.cout) {
                const int tap = m / a.cin, ch = m % a.cin;
                part[(static_cast<long long>(c) * a.cin + ch) * taps + tap] = acc[f][i];
            }
        }
    }
}

// Packs W (cout_w x cin_w x taps) into out (kpad x npad): row k = tap * cin + c, column j, with
// (cin, N) = (ci, co) for the forward, (co, ci) for the input gradient (`flip`); zeros past the
// ends; entries rounded to the precision `prec`.
// a.n = kpad, a.cin = channels summed over, a.cout = channels produced.
REVSEG_KERNEL(conv3d_mma_pack_weights, MmaConvArgs) {
    const int taps = a.kd * a.kh * a.kw;
    const long long count = static_cast<long long>(a.n) * a.npad;
    for (long long i = global_index(); i < count; i += grid_stride()) {
        const int k = static_cast<int>(i / a.npad), j = static_cast<int>(i % a.npad);
        const int tap = k / a.cin, c = k % a.cin;
        float v = 0.0f;
        if (tap < taps && j < a.cout) {
            // Forward: W[j][c][tap] (j = co); input gradient: W[c][j][tap] (c = co, j = ci).
            const long long wi = a.flip ? (static_cast<long long>(c) * a.cout + j) * taps + tap
                                        : (static_cast<long long>(j) * a.cin + c) * taps + tap;
            v = a.src[wi];
        }
        a.out[i] = a.prec == kBf16 ? bf16_round(v) : __uint_as_float(tf32_round(v));
    }
}

// One kernel per (precision, channel tile); src/backend/gpu/conv3d_mma.rs picks the tile.
REVSEG_KERNEL_SYNC(conv3d_mma_data_tf32_n8, MmaConvArgs) { mma_data<kTf32, 8>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_data_tf32_n16, MmaConvArgs) { mma_data<kTf32, 16>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_data_tf32_n24, MmaConvArgs) { mma_data<kTf32, 24>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_data_tf32_n32, MmaConvArgs) { mma_data<kTf32, 32>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_data_tf32_n40, MmaConvArgs) { mma_data<kTf32, 40>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_data_tf32_n48, MmaConvArgs) { mma_data<kTf32, 48>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_data_tf32_n64, MmaConvArgs) { mma_data<kTf32, 64>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_data_tf32_n80, MmaConvArgs) { mma_data<kTf32, 80>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_data_bf16_n8, MmaConvArgs) { mma_data<kBf16, 8>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_data_bf16_n16, MmaConvArgs) { mma_data<kBf16, 16>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_data_bf16_n24, MmaConvArgs) { mma_data<kBf16, 24>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_data_bf16_n32, MmaConvArgs) { mma_data<kBf16, 32>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_data_bf16_n40, MmaConvArgs) { mma_data<kBf16, 40>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_data_bf16_n48, MmaConvArgs) { mma_data<kBf16, 48>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_data_bf16_n64, MmaConvArgs) { mma_data<kBf16, 64>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_data_bf16_n80, MmaConvArgs) { mma_data<kBf16, 80>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_weight_tf32_n8, MmaConvArgs) { mma_weight<kTf32, 8>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_weight_tf32_n16, MmaConvArgs) { mma_weight<kTf32, 16>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_weight_tf32_n24, MmaConvArgs) { mma_weight<kTf32, 24>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_weight_tf32_n32, MmaConvArgs) { mma_weight<kTf32, 32>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_weight_tf32_n40, MmaConvArgs) { mma_weight<kTf32, 40>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_weight_tf32_n48, MmaConvArgs) { mma_weight<kTf32, 48>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_weight_tf32_n64, MmaConvArgs) { mma_weight<kTf32, 64>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_weight_tf32_n80, MmaConvArgs) { mma_weight<kTf32, 80>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_weight_bf16_n8, MmaConvArgs) { mma_weight<kBf16, 8>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_weight_bf16_n16, MmaConvArgs) { mma_weight<kBf16, 16>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_weight_bf16_n24, MmaConvArgs) { mma_weight<kBf16, 24>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_weight_bf16_n32, MmaConvArgs) { mma_weight<kBf16, 32>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_weight_bf16_n40, MmaConvArgs) { mma_weight<kBf16, 40>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_weight_bf16_n48, MmaConvArgs) { mma_weight<kBf16, 48>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_weight_bf16_n64, MmaConvArgs) { mma_weight<kBf16, 64>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_weight_bf16_n80, MmaConvArgs) { mma_weight<kBf16, 80>(a); }

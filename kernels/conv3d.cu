// conv3d (stride 1, "same" zero padding, odd kernel) as tiled implicit GEMMs through shared memory.
//
// Forward: Y (co x positions) = W (co x ci*taps) * X_col (ci*taps x positions), where X_col is the
// im2col matrix, never stored: each block gathers its BK x BN slice of it (zeros at the edges)
// straight into shared memory. Input gradient: the same GEMM over dy with the flipped, transposed
// kernel W'[ci][co, t] = W[co][ci, taps-1-t], read in place from W. Weight gradient:
// dW (co x ci*taps) = dY (co x positions) * X_col^T, split over position ranges into partial sums
// that a second kernel adds in split order: deterministic, no atomics.
//
// Tiles: BM x BN outputs per block of 256 threads, 4 x 4 per thread (rows ty + 16i, columns
// tx + 16j, so that a warp reads consecutive shared-memory words), BK deep.
#include "common.cuh"

#define BM 64
#define BN 64
#define BK 16
// Shared tiles are one word wider than their rows: the 16 threads that store one column of a tile
// (consecutive k or q, same m) would otherwise all hit one bank (row length 64 = 2 x 32 banks).
#define BMP (BM + 1)
#define BNP (BN + 1)
#define CONV_THREADS 256

struct Geom {
    int n, ci, co, d, h, wd, kd, kh, kw, taps, sp, hw;
};

__device__ __forceinline__ Geom geom(const ConvArgs& a) {
    Geom g;
    g.n = a.n;
    g.ci = a.ci;
    g.co = a.co;
    g.d = a.d;
    g.h = a.h;
    g.wd = a.wd;
    g.kd = a.kd;
    g.kh = a.kh;
    g.kw = a.kw;
    g.taps = a.kd * a.kh * a.kw;
    g.hw = a.h * a.wd;
    g.sp = a.d * g.hw;
    return g;
}

// Offsets of kernel tap t from the centre.
struct Tap {
    int dz, dy, dx;
};

__device__ __forceinline__ Tap tap_offset(const Geom& g, int t) {
    Tap o;
    o.dz = t / (g.kh * g.kw) - g.kd / 2;
    o.dy = (t / g.kw) % g.kh - g.kh / 2;
    o.dx = t % g.kw - g.kw / 2;
    return o;
}

// Element of channel `plane` (already offset to the channel's first voxel) at (z, y, x) shifted by
// the tap, or 0 outside the volume: one entry of the implicit im2col matrix.
__device__ __forceinline__ float gather(const float* plane, const Geom& g, Tap o, int z, int y,
                                        int x) {
    const int zz = z + o.dz, yy = y + o.dy, xx = x + o.dx;
    if (zz < 0 || zz >= g.d || yy < 0 || yy >= g.h || xx < 0 || xx >= g.wd) {
        return 0.0f;
    }
    return plane[(zz * g.h + yy) * g.wd + xx];
}

__device__ __forceinline__ void mma_tile(const float (*As)[BMP], const float (*Bs)[BNP],
                                         float acc[4][4], int ty, int tx) {
    REVSEG_UNROLL
    for (int kk = 0; kk < BK; ++kk) {
        float av[4], bv[4];
        REVSEG_UNROLL
        for (int i = 0; i < 4; ++i) {
            av[i] = As[kk][ty + 16 * i];
            bv[i] = Bs[kk][tx + 16 * i];
        }
        REVSEG_UNROLL
        for (int i = 0; i < 4; ++i) {
            REVSEG_UNROLL
            for (int j = 0; j < 4; ++j) {
                acc[i][j] += av[i] * bv[j];
            }
        }
    }
}

// Forward (INPUT_GRAD false): src = x (ci channels), M = co, K = ci * taps.
// Input gradient (true): src = dy (co channels), M = ci, K = co * taps, A read flipped from W.
// Grid: x = n * position tiles, y = M tiles.
template <bool INPUT_GRAD>
__device__ __forceinline__ void conv_gemm(const ConvArgs& a) {
    REVSEG_SHARED(float, As, [BK][BMP]);
    REVSEG_SHARED(float, Bs, [BK][BNP]);
    const Geom g = geom(a);
    const int cin = INPUT_GRAD ? g.co : g.ci;
    const int mdim = INPUT_GRAD ? g.ci : g.co;
    const int kdim = cin * g.taps;
    const float* src = INPUT_GRAD ? a.dy : a.x;
    const int tiles = (g.sp + BN - 1) / BN;
    const int n = static_cast<int>(blockIdx.x) / tiles;
    const int p0 = (static_cast<int>(blockIdx.x) % tiles) * BN;
    const int m0 = static_cast<int>(blockIdx.y) * BM;
    const int tid = static_cast<int>(threadIdx.x);
    const int tx = tid % 16, ty = tid / 16;
    // B loads: this thread's column (one output position) is fixed; rows bk0 + 4r.
    const int bcol = tid % BN, bk0 = tid / BN;
    const int p = p0 + bcol;
    const bool p_in = p < g.sp;
    const int pz = p / g.hw, py = (p / g.wd) % g.h, px = p % g.wd;
    const float* src_n = src + static_cast<long long>(n) * cin * g.sp;
    // A loads: column ak (consecutive k across threads: coalesced reads of W), rows am0 + 16r.
    const int ak = tid % BK, am0 = tid / BK;
    float acc[4][4];
    for (int i = 0; i < 4; ++i) {
        for (int j = 0; j < 4; ++j) {
            acc[i][j] = 0.0f;
        }
    }
    for (int k0 = 0; k0 < kdim; k0 += BK) {
        const int k = k0 + ak;
        for (int r = 0; r < 4; ++r) {
            const int m = m0 + am0 + 16 * r;
            float v = 0.0f;
            if (m < mdim && k < kdim) {
                if (INPUT_GRAD) {
                    const int co = k / g.taps, t = k % g.taps;
                    v = a.w[(co * g.ci + m) * g.taps + (g.taps - 1 - t)];
                } else {
                    v = a.w[m * kdim + k];
                }
            }
            As[ak][am0 + 16 * r] = v;
        }
        for (int r = 0; r < 4; ++r) {
            const int kl = bk0 + 4 * r;
            const int kb = k0 + kl;
            float v = 0.0f;
            if (p_in && kb < kdim) {
                const int ch = kb / g.taps;
                v = gather(src_n + ch * g.sp, g, tap_offset(g, kb % g.taps), pz, py, px);
            }
            Bs[kl][bcol] = v;
        }
        __syncthreads();
        mma_tile(As, Bs, acc, ty, tx);
        __syncthreads();
    }
    for (int i = 0; i < 4; ++i) {
        const int m = m0 + ty + 16 * i;
        if (m >= mdim) {
            continue;
        }
        const float b = (!INPUT_GRAD && a.bias != nullptr) ? a.bias[m] : 0.0f;
        for (int j = 0; j < 4; ++j) {
            const int pp = p0 + tx + 16 * j;
            if (pp < g.sp) {
                float* o = a.out + (static_cast<long long>(n) * mdim + m) * g.sp + pp;
                *o = ((a.accumulate ? *o : 0.0f) + b) + acc[i][j];
            }
        }
    }
}

REVSEG_KERNEL_SYNC(conv3d_forward, ConvArgs) {
    conv_gemm<false>(a);
}

REVSEG_KERNEL_SYNC(conv3d_backward_input, ConvArgs) {
    conv_gemm<true>(a);
}

// Partial weight gradients: out[s][co][k] = sum over positions q of split s of
// dy[n, co, p] * X_col[k][n, p] (q = n * sp + p). Grid: x = K tiles, y = co tiles, z = splits.
REVSEG_KERNEL_SYNC(conv3d_backward_weight_partial, ConvArgs) {
    REVSEG_SHARED(float, As, [BK][BMP]);
    REVSEG_SHARED(float, Bs, [BK][BNP]);
    const Geom g = geom(a);
    const int kdim = g.ci * g.taps;
    const int k0 = static_cast<int>(blockIdx.x) * BN;
    const int m0 = static_cast<int>(blockIdx.y) * BM;
    const int split = static_cast<int>(blockIdx.z);
    const long long qtotal = static_cast<long long>(g.n) * g.sp;
    const long long qbeg = static_cast<long long>(split) * a.chunk;
    const long long qend = qbeg + a.chunk < qtotal ? qbeg + a.chunk : qtotal;
    const int tid = static_cast<int>(threadIdx.x);
    const int tx = tid % 16, ty = tid / 16;
    // Both loads: row ql (consecutive positions across threads: coalesced), columns c0 + 16r.
    const int ql = tid % BK, c0 = tid / BK;
    // This thread's four B columns (weight entries k) never change: resolve channel and tap once.
    int bch[4];
    Tap btap[4];
    bool bk_in[4];
    for (int r = 0; r < 4; ++r) {
        const int k = k0 + c0 + 16 * r;
        bk_in[r] = k < kdim;
        bch[r] = bk_in[r] ? k / g.taps : 0;
        btap[r] = tap_offset(g, bk_in[r] ? k % g.taps : 0);
    }
    float acc[4][4];
    for (int i = 0; i < 4; ++i) {
        for (int j = 0; j < 4; ++j) {
            acc[i][j] = 0.0f;
        }
    }
    for (long long q0 = qbeg; q0 < qend; q0 += BK) {
        const long long q = q0 + ql;
        const bool q_in = q < qend;
        const int n = q_in ? static_cast<int>(q / g.sp) : 0;
        const int p = q_in ? static_cast<int>(q % g.sp) : 0;
        const int pz = p / g.hw, py = (p / g.wd) % g.h, px = p % g.wd;
        const float* dy_n = a.dy + static_cast<long long>(n) * g.co * g.sp;
        const float* x_n = a.x + static_cast<long long>(n) * g.ci * g.sp;
        for (int r = 0; r < 4; ++r) {
            const int m = m0 + c0 + 16 * r;
            As[ql][c0 + 16 * r] = (q_in && m < g.co) ? dy_n[m * g.sp + p] : 0.0f;
            Bs[ql][c0 + 16 * r] =
                (q_in && bk_in[r]) ? gather(x_n + bch[r] * g.sp, g, btap[r], pz, py, px) : 0.0f;
        }
        __syncthreads();
        mma_tile(As, Bs, acc, ty, tx);
        __syncthreads();
    }
    float* part = a.out + static_cast<long long>(split) * g.co * kdim;
    for (int i = 0; i < 4; ++i) {
        const int m = m0 + ty + 16 * i;
        for (int j = 0; j < 4; ++j) {
            const int k = k0 + tx + 16 * j;
            if (m < g.co && k < kdim) {
                part[m * kdim + k] = acc[i][j];
            }
        }
    }
}

// dW = (prior or 0) + the partial sums, added in split order.
REVSEG_KERNEL(conv3d_backward_weight_reduce, ConvArgs) {
    const long long count = static_cast<long long>(a.co) * a.ci * a.kd * a.kh * a.kw;
    for (long long i = global_index(); i < count; i += grid_stride()) {
        float s = 0.0f;
        for (int k = 0; k < a.splits; ++k) {
            s += a.dy[k * count + i];
        }
        a.out[i] = a.accumulate ? a.out[i] + s : s;
    }
}

// Bias gradient, pass 1: per (split, channel) sums of dy into part[c][split]. Grid (splits, co).
REVSEG_KERNEL_SYNC(conv3d_backward_bias_partial, ChanArgs) {
    REVSEG_SHARED(float, sh, [RED_THREADS]);
    float s[2];
    channel_split_sums(
        a.n, a.c, a.sp, a.chunk, [&](long long i, Kahan& k1, Kahan&) { kahan_add(k1, a.dy[i]); },
        sh, s);
    if (threadIdx.x == 0) {
        a.part[static_cast<long long>(blockIdx.y) * a.splits + blockIdx.x] = s[0];
    }
}

// Pass 2: db[c] = (prior or 0) + the channel's partials in split order. One thread per channel.
REVSEG_KERNEL(conv3d_backward_bias_finalize, ChanArgs) {
    const long long c = global_index();
    if (c >= a.c) {
        return;
    }
    Kahan k = {0.0f, 0.0f};
    for (int s = 0; s < a.splits; ++s) {
        kahan_add(k, a.part[c * a.splits + s]);
    }
    const float v = kahan_value(k);
    a.dbeta[c] = a.accumulate ? a.dbeta[c] + v : v;
}

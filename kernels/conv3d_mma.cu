// conv3d (stride 1, "same" zero padding, odd kernel) as implicit GEMMs on tensor cores: mma.sync
// m16n8k8 TF32 or m16n8k16 BF16, f32 accumulation. The f32 reference path is conv3d.cu.
//
// Data kernels (forward and input gradient): Y[p, co] = sum over k of X[ci, p + off(tap)] * Wp[k, co].
// The rows of a block (M, 64, 16 per warp) are an output box; channels are N (a tile of BN from 8
// to 80, chosen per layer so that few are padding); K is ordered (channel chunk, tap, channel in
// chunk). The box's input halo for one chunk of channels sits in shared memory (mma_data), so a
// K row is one shared load at a table offset. Wp is the weight tensor packed by
// conv3d_mma_pack_weights in that K order, zero padded; the input gradient is the same GEMM over
// dy with the taps mirrored and Wp[(tap, co), ci] = W[co, ci, tap].
// Weight kernels: dW[co, (ci, tap)] = sum over positions q of X[ci, q + off(tap)] * dY[co, q]:
// (ci, tap) on M (64 per block, or 32 with the block's two warp pairs on alternate K tiles), co on
// N, positions on K box by box (the box's input halo and dY staged in shared memory), split over
// box ranges into partial sums that conv3d_backward_weight_reduce adds in split order
// (deterministic, no atomics). With a pair fold (one input channel) a K element is a pair of
// x-adjacent positions: rows (ci, tap over kw + 1 columns), columns (parity, co), and
// dW[co, tap] = G[tap, (0, co)] + G[tap + 1 column, (1, co)], each parity its own partial slice.
//
// Shared tiles are f32, k-major (As[k][m], Bs[k][n], the halo), filled by cp.async (16 bytes where
// the source run is aligned and inside one row of the volume, else 4, zeros stored for padding),
// B in a 3-stage pipeline. cp.async copies bytes unchanged, so operands are rounded to TF32 / BF16
// in shared memory (TF32 halos once per chunk) or as the fragments are read; the packed weights
// are stored rounded already.
//
// Fragments: lanes g = lane / 4, t = lane % 4 read As[kk + t][row + g] (TF32 a0, a1 at rows g and
// g + 8, a2, a3 at kk + t + 4). Row strides are 8 mod 32 words (the halo's channel stride 8 mod
// 16), so those 32 reads hit 32 banks where the four k-rows are channels of one tap.
// BF16 takes the same reads: its k-pair (2t, 2t + 1) is taken from shared rows (t, t + 4) and
// (2t + 8, 2t + 9) from (t + 8, t + 12), for A and B alike, which is all a GEMM's K needs.
#include "intrinsics.cuh"

#define MMA_BM 64
#define MMA_BK 16
#define MMA_STAGES 3
#define MMA_THREADS 128
// The data kernels' halo buffers (floats, two) and K-offset table (ints); conv3d_mma.rs sizes the
// boxes and channel chunks to fit.
#define MMA_HALO 3584
#define MMA_KOFF 512
// The weight kernels' halo buffer (floats) and the row stride of their dY tile Bt[co][q] (4 mod 32
// words: a B fragment's 32 reads in 32 banks).
#define MMA_WHALO 2048
#define MMA_QS 68

// Row stride for a tile row of `n` floats: 8 mod 32 words (bank-conflict-free fragment reads),
// a multiple of 4 (16-byte cp.async destinations).
__host__ __device__ constexpr int mma_stride(int n) {
    return n % 16 == 8 ? n : n + 8;
}

enum MmaPrec { kTf32 = 0, kBf16 = 1 };

// The data kernels' A operand for one K tile: rows (kk + t, kk + t + 4, ...) of the tile are at
// byte offsets koff[...] (their (tap, channel) in the halo) from this lane's two position bases b0
// (row g) and b1 (row g + 8), both byte addresses in H. TF32 halos are rounded when staged, so
// the loop is shared loads and MMAs; BF16 packs pairs as it reads. B as mma_stage.
__device__ __forceinline__ float mma_halo_at(const char* H, int off) {
    return *reinterpret_cast<const float*>(H + off);
}

// The A fragment of GEMM rows at halo byte bases (b0, b1) (rows g, g + 8) and k-rows at byte
// offsets o[] (TF32: k-rows t, t + 4; BF16: t, t + 4, t + 8, t + 12, paired as in mma_stage_halo).
__device__ __forceinline__ void halo_a_tf32(const char* H, int b0, int b1, int o0, int o4,
                                            unsigned af[4]) {
    af[0] = __float_as_uint(mma_halo_at(H, b0 + o0));
    af[1] = __float_as_uint(mma_halo_at(H, b1 + o0));
    af[2] = __float_as_uint(mma_halo_at(H, b0 + o4));
    af[3] = __float_as_uint(mma_halo_at(H, b1 + o4));
}

__device__ __forceinline__ void halo_a_bf16(const char* H, int b0, int b1, const int o[4],
                                            unsigned af[4]) {
    af[0] = bf16x2_round(mma_halo_at(H, b0 + o[0]), mma_halo_at(H, b0 + o[1]));
    af[1] = bf16x2_round(mma_halo_at(H, b1 + o[0]), mma_halo_at(H, b1 + o[1]));
    af[2] = bf16x2_round(mma_halo_at(H, b0 + o[2]), mma_halo_at(H, b0 + o[3]));
    af[3] = bf16x2_round(mma_halo_at(H, b1 + o[2]), mma_halo_at(H, b1 + o[3]));
}

template <int PREC, int BN>
__device__ __forceinline__ void mma_stage_halo(const char* H, const int* koff, const float* Bs,
                                               int b0, int b1, int lane, float acc[BN / 8][4]) {
    constexpr int BS = mma_stride(BN);
    const int g = lane >> 2, t = lane & 3;
    if (PREC == kTf32) {
        REVSEG_UNROLL
        for (int kk = 0; kk < MMA_BK; kk += 8) {
            unsigned af[4];
            halo_a_tf32(H, b0, b1, koff[kk + t], koff[kk + t + 4], af);
            REVSEG_UNROLL
            for (int f = 0; f < BN / 8; ++f) {
                const float* bp = Bs + (kk + t) * BS + 8 * f + g;
                const unsigned bf[2] = {__float_as_uint(bp[0]), __float_as_uint(bp[4 * BS])};
                mma_tf32_m16n8k8(acc[f], af, bf, acc[f]);
            }
        }
    } else {
        const int o[4] = {koff[t], koff[t + 4], koff[t + 8], koff[t + 12]};
        unsigned af[4];
        halo_a_bf16(H, b0, b1, o, af);
        REVSEG_UNROLL
        for (int f = 0; f < BN / 8; ++f) {
            const float* bp = Bs + t * BS + 8 * f + g;
            const unsigned bf[2] = {bf16x2_round(bp[0], bp[4 * BS]),
                                    bf16x2_round(bp[8 * BS], bp[12 * BS])};
            mma_bf16_m16n8k16(acc[f], af, bf, acc[f]);
        }
    }
}

// TF32: a landed chunk's halo rounded in place (every thread's copies visible after the barrier
// before this), so the main loop reads operands ready for the MMA.
__device__ __forceinline__ void mma_round_rows(float* H, int rows, int len, int stride, int tid) {
    const int p4 = len / 4;
    for (int i = tid; i < rows * p4; i += MMA_THREADS) {
        float* v = H + (i / p4) * stride + 4 * (i % p4);
        REVSEG_UNROLL
        for (int j = 0; j < 4; ++j) {
            v[j] = __uint_as_float(tf32_round(v[j]));
        }
    }
}

// Block geometry of a data kernel: the output box (bz, by, bx) at (z0, y0, x0) of sample n, and the
// halo it reads, starting at (hz0, hy0, hx0) with hx0 a multiple of 4 (16-byte copies).
struct MmaBox {
    int n, z0, y0, x0, hz0, hy0, hx0;
};

__device__ __forceinline__ MmaBox mma_box(const MmaConvArgs& a, int b) {
    const int tx = (a.wd + a.fold * a.bx - 1) / (a.fold * a.bx);
    const int ty = (a.h + a.by - 1) / a.by, tz = (a.d + a.bz - 1) / a.bz;
    MmaBox o;
    o.x0 = (b % tx) * a.fold * a.bx;
    b /= tx;
    o.y0 = (b % ty) * a.by;
    b /= ty;
    o.z0 = (b % tz) * a.bz;
    o.n = b / tz;
    o.hz0 = o.z0 - a.kd / 2;
    o.hy0 = o.y0 - a.kh / 2;
    const int xs = o.x0 - a.kw / 2;
    o.hx0 = xs >= 0 ? xs & ~3 : -((3 - xs) & ~3);
    return o;
}

// One channel chunk's halo into H: cc channels of hz x hy x hx floats (channel stride hs), zeros
// outside the volume and past the last channel; 16-byte copies where a group of 4 lies inside a row.
__device__ __forceinline__ void mma_stage_chunk(const MmaConvArgs& a, const MmaBox& bx, float* H,
                                                int c0, int tid) {
    const int hw = a.h * a.wd, sp = a.d * hw;
    const int q4 = a.hx / 4, groups = a.cc * a.hz * a.hy * q4;
    for (int i = tid; i < groups; i += MMA_THREADS) {
        int r = i;
        const int q = r % q4;
        r /= q4;
        const int yy = r % a.hy;
        r /= a.hy;
        const int zz = r % a.hz, c = r / a.hz;
        float* dst = H + c * a.hs + (zz * a.hy + yy) * a.hx + 4 * q;
        const int ci = c0 + c;
        const int z = bx.hz0 + zz, y = bx.hy0 + yy, x = bx.hx0 + 4 * q;
        if (ci >= a.cin || z < 0 || z >= a.d || y < 0 || y >= a.h) {
            REVSEG_UNROLL
            for (int j = 0; j < 4; ++j) {
                dst[j] = 0.0f;
            }
            continue;
        }
        const float* row =
            a.src + (static_cast<long long>(bx.n) * a.cin + ci) * sp + z * hw + y * a.wd;
        if (a.vec && x >= 0 && x + 3 < a.wd) {
            cp_async<16>(dst, row + x);
        } else {
            REVSEG_UNROLL
            for (int j = 0; j < 4; ++j) {
                if (x + j >= 0 && x + j < a.wd) {
                    cp_async<4>(dst + j, row + x + j);
                } else {
                    dst[j] = 0.0f;
                }
            }
        }
    }
}

// Forward / input gradient. Grid: x = n * output boxes, y = channel tiles of BN. The box's input
// halo is staged in shared memory once per chunk of cc input channels (double-buffered: the next
// chunk's copy runs under this chunk's MMAs), so a K row's A values are one shared load at a fixed
// offset (koff, per chunk-local K row: channel * hs + tap offset in the halo) from the lane's
// position base. K is ordered (chunk, tap, channel in chunk), ktc tiles per chunk, zero weight rows
// in the padding. With `fold` = 2 (a forward over few input channels) a GEMM row is a pair of
// x-adjacent outputs: taps span kw + 1 columns and the columns are (parity, output channel), so
// the pair shares one input window and K is better filled.
template <int PREC, int BN>
__device__ __forceinline__ void mma_data(const MmaConvArgs& a) {
    constexpr int BS = mma_stride(BN);
    REVSEG_SHARED_ALIGN16(float, Hs, [2][MMA_HALO]);
    REVSEG_SHARED_ALIGN16(float, Bs, [MMA_STAGES][MMA_BK * BS]);
    REVSEG_SHARED(int, koff, [MMA_KOFF]);
    const int hw = a.h * a.wd, sp = a.d * hw;
    const int kwf = a.kw + a.fold - 1;
    const int taps = a.kd * a.kh * kwf;
    const int ktiles = a.nchunk * a.ktc;
    const MmaBox bx = mma_box(a, static_cast<int>(blockIdx.x));
    const int n0 = static_cast<int>(blockIdx.y) * BN;
    const int tid = static_cast<int>(threadIdx.x);
    const int warp = tid / 32, lane = tid % 32;

    // Chunk-local K rows -> halo offsets, once per block (the input gradient mirrors the taps).
    for (int k = tid; k < a.ktc * MMA_BK; k += MMA_THREADS) {
        const int tap = k / a.cc, c = k % a.cc;
        int o = 0;
        if (tap < taps) {
            int tz = tap / (a.kh * kwf), ty = (tap / kwf) % a.kh, tx = tap % kwf;
            if (a.flip) {
                tz = a.kd - 1 - tz;
                ty = a.kh - 1 - ty;
                tx = a.kw - 1 - tx;
            }
            o = c * a.hs + (tz * a.hy + ty) * a.hx + tx;
        }
        koff[k] = 4 * o;
    }
    // This lane's two GEMM rows (g, g + 8): their output position and halo base.
    const int g = lane >> 2, t = lane & 3;
    const int box = a.bz * a.by * a.bx;
    const int shift = bx.x0 - a.kw / 2 - bx.hx0;
    int base[2], pz[2], py[2], px[2];
    bool pin[2];
    for (int r = 0; r < 2; ++r) {
        const int m = 16 * warp + g + 8 * r;
        const int mz = m / (a.by * a.bx), my = (m / a.bx) % a.by, mx = m % a.bx;
        pin[r] = m < box;
        pz[r] = bx.z0 + mz;
        py[r] = bx.y0 + my;
        px[r] = bx.x0 + a.fold * mx;
        pin[r] = pin[r] && pz[r] < a.d && py[r] < a.h;
        base[r] = 4 * (pin[r] ? (mz * a.hy + my) * a.hx + a.fold * mx + shift : 0);
    }

    float acc[BN / 8][4];
    for (int f = 0; f < BN / 8; ++f) {
        for (int i = 0; i < 4; ++i) {
            acc[f][i] = 0.0f;
        }
    }
    // This thread's B copies: fixed columns, the source advanced one K tile per load.
    constexpr int GROUPS = BN / 4;
    constexpr int BITERS = (MMA_BK * GROUPS + MMA_THREADS - 1) / MMA_THREADS;
    const float* bsrc[BITERS];
    int bdst[BITERS];
    for (int it = 0; it < BITERS; ++it) {
        const int i = tid + it * MMA_THREADS;
        const int r = i / GROUPS, c = 4 * (i % GROUPS);
        bsrc[it] = a.w + static_cast<long long>(r) * a.npad + n0 + c;
        bdst[it] = i < MMA_BK * GROUPS ? r * BS + c : -1;
    }
    const long long bstep = static_cast<long long>(MMA_BK) * a.npad;
    auto load_b = [&](float* dst) {
        REVSEG_UNROLL
        for (int it = 0; it < BITERS; ++it) {
            if (bdst[it] >= 0) {
                if (a.vec) {
                    cp_async<16>(dst + bdst[it], bsrc[it]);
                } else {
                    REVSEG_UNROLL
                    for (int j = 0; j < 4; ++j) {
                        cp_async<4>(dst + bdst[it] + j, bsrc[it] + j);
                    }
                }
            }
            bsrc[it] += bstep;
        }
    };

    mma_stage_chunk(a, bx, Hs[0], 0, tid);
    for (int s = 0; s < MMA_STAGES - 1; ++s) {
        if (s < ktiles) {
            load_b(Bs[s]);
        }
        cp_async_commit();
    }
    int use = 0, fill = MMA_STAGES - 1;  // stages read and refilled this iteration
    for (int ch = 0; ch < a.nchunk; ++ch) {
        // This chunk's halo has landed, and every read of the buffer refilled below (chunk ch - 1)
        // is done.
        cp_async_wait<0>();
        __syncthreads();
        if (PREC == kTf32) {
            mma_round_rows(Hs[ch & 1], a.cc, a.hz * a.hy * a.hx, a.hs, tid);
            __syncthreads();
        }
        if (ch + 1 < a.nchunk) {
            mma_stage_chunk(a, bx, Hs[(ch + 1) & 1], (ch + 1) * a.cc, tid);
        }
        const char* H = reinterpret_cast<const char*>(Hs[ch & 1]);
        for (int lt = 0; lt < a.ktc; ++lt) {
            const int kt = ch * a.ktc + lt;
            cp_async_wait<MMA_STAGES - 2>();
            __syncthreads();
            // The stage refilled here was last read in iteration kt - 1, before the barrier above.
            if (kt + MMA_STAGES - 1 < ktiles) {
                load_b(Bs[fill]);
            }
            cp_async_commit();
            mma_stage_halo<PREC, BN>(H, koff + lt * MMA_BK, Bs[use], base[0], base[1], lane,
                                     acc);
            use = use + 1 == MMA_STAGES ? 0 : use + 1;
            fill = fill + 1 == MMA_STAGES ? 0 : fill + 1;
        }
    }
    cp_async_wait<0>();

    for (int f = 0; f < BN / 8; ++f) {
        for (int i = 0; i < 4; ++i) {
            const int r = i >> 1;
            const int cf = n0 + 8 * f + 2 * t + (i & 1);
            const int par = cf / a.cout, c = cf % a.cout;
            const int x = px[r] + par;
            if (pin[r] && par < a.fold && x < a.wd) {
                const float b = a.bias != nullptr ? a.bias[c] : 0.0f;
                float* o = a.out + (static_cast<long long>(bx.n) * a.cout + c) * sp +
                           (pz[r] * a.h + py[r]) * a.wd + x;
                *o = ((a.accumulate ? *o : 0.0f) + b) + acc[f][i];
            }
        }
    }
}

// Weight-gradient partials: out[slice][co][ci][tap], slice = (split, K group, parity). Grid: x =
// (ci, tap') tiles of 64 / ksplit rows (M), y = (parity, co) tiles of BN (N), z = splits of `chunk`
// output boxes (K = the boxes' positions, or position pairs, ktc tiles of 16 per box). Per box, the
// halo of the cc channels this M tile touches and the box's dY (n-major, Bt[col][q]) are staged in
// shared memory, so an A value is one shared load at (row's channel and tap offset) + (position's
// offset from a per-block table), and the MMA loop does no indexing.
template <int PREC, int BN>
__device__ __forceinline__ void mma_weight(const MmaConvArgs& a) {
    REVSEG_SHARED_ALIGN16(float, Hs, [MMA_WHALO]);
    REVSEG_SHARED_ALIGN16(float, Bt, [BN * MMA_QS]);
    REVSEG_SHARED(int, qoff, [MMA_BM]);
    const int hw = a.h * a.wd, sp = a.d * hw;
    const int kwf = a.kw + a.fold - 1;
    const int taps = a.kd * a.kh * a.kw, tapsf = a.kd * a.kh * kwf;
    const int mdim = tapsf * a.cin, ncol = a.fold * a.cout;
    const int mt = MMA_BM / a.ksplit;
    const int m0 = static_cast<int>(blockIdx.x) * mt;
    const int n0 = static_cast<int>(blockIdx.y) * BN;
    const int split = static_cast<int>(blockIdx.z);
    const int tx = (a.wd + a.fold * a.bx - 1) / (a.fold * a.bx), ty = (a.h + a.by - 1) / a.by;
    const int total = a.n * ((a.d + a.bz - 1) / a.bz) * ty * tx;
    const int bbeg = split * a.chunk;
    const int bend = bbeg + a.chunk < total ? bbeg + a.chunk : total;
    const int tid = static_cast<int>(threadIdx.x);
    const int warp = tid / 32, lane = tid % 32;
    // ksplit 2: warps (0, 1) and (2, 3) cover the same 32 rows, on even and odd K tiles.
    const int wm = warp % (4 / a.ksplit), kg = warp / (4 / a.ksplit);
    const int g = lane >> 2, t = lane & 3;
    const int c_lo = m0 / tapsf;
    const int box = a.bz * a.by * a.bx, kq = a.ktc * MMA_BK;

    // Box-local positions (pair bases with a fold) -> halo offsets (bytes, before the box's
    // alignment shift).
    for (int q = tid; q < MMA_BM; q += MMA_THREADS) {
        const int qz = q / (a.by * a.bx), qy = (q / a.bx) % a.by, qx = q % a.bx;
        qoff[q] = q < box ? 4 * ((qz * a.hy + qy) * a.hx + a.fold * qx) : 0;
    }
    // This lane's two M rows (g, g + 8): their channel in the staged halo and tap offset (bytes).
    int moff[2];
    for (int r = 0; r < 2; ++r) {
        const int m = m0 + 16 * wm + g + 8 * r;
        int o = 0;
        if (m < mdim) {
            const int tap = m % tapsf;
            const int tz = tap / (a.kh * kwf), tyy = (tap / kwf) % a.kh, txx = tap % kwf;
            o = (m / tapsf - c_lo) * a.hs + (tz * a.hy + tyy) * a.hx + txx;
        }
        moff[r] = 4 * o;
    }

    constexpr int F = BN / 8;
    float acc[F][4];
    for (int f = 0; f < F; ++f) {
        for (int i = 0; i < 4; ++i) {
            acc[f][i] = 0.0f;
        }
    }
    const char* H = reinterpret_cast<const char*>(Hs);
    for (int b = bbeg; b < bend; ++b) {
        const MmaBox bx = mma_box(a, b);
        // Every read of the previous box is done before the buffers are refilled.
        __syncthreads();
        mma_stage_chunk(a, bx, Hs, c_lo, tid);
        const float* dy_n = a.w + static_cast<long long>(bx.n) * a.cout * sp;
        const int g4 = (a.bx + 3) / 4, rows = a.bz * a.by;
        for (int i = tid; i < BN * rows * g4; i += MMA_THREADS) {
            const int j = i % g4, rr = (i / g4) % rows, c = i / (g4 * rows);
            const int col = n0 + c, par = col / a.cout, co = col % a.cout;
            const int z = bx.z0 + rr / a.by, y = bx.y0 + rr % a.by;
            const int x = bx.x0 + a.fold * 4 * j + par;
            float* dst = Bt + c * MMA_QS + rr * a.bx + 4 * j;
            const bool in = col < ncol && z < a.d && y < a.h;
            const float* src = dy_n + static_cast<long long>(co) * sp + z * hw + y * a.wd;
            if (in && a.vec && a.fold == 1 && a.bx % 4 == 0 && x + 3 < a.wd) {
                cp_async<16>(dst, src + x);
            } else {
                for (int e = 0; e < 4 && 4 * j + e < a.bx; ++e) {
                    if (in && x + a.fold * e < a.wd) {
                        cp_async<4>(dst + e, src + x + a.fold * e);
                    } else {
                        dst[e] = 0.0f;
                    }
                }
            }
        }
        // K rows past the box: zeros.
        for (int i = tid; i < BN * (kq - box); i += MMA_THREADS) {
            Bt[(i / (kq - box)) * MMA_QS + box + i % (kq - box)] = 0.0f;
        }
        cp_async_commit();
        cp_async_wait<0>();
        __syncthreads();
        if (PREC == kTf32) {
            mma_round_rows(Hs, a.cc, a.hz * a.hy * a.hx, a.hs, tid);
            mma_round_rows(Bt, BN, kq, MMA_QS, tid);
            __syncthreads();
        }
        const int shift = 4 * (bx.x0 - a.kw / 2 - bx.hx0);
        const int b0 = moff[0] + shift, b1 = moff[1] + shift;
        for (int kt = kg; kt < a.ktc; kt += a.ksplit) {
            const int* qo = qoff + kt * MMA_BK;
            const float* bq = Bt + kt * MMA_BK;
            if (PREC == kTf32) {
                REVSEG_UNROLL
                for (int kk = 0; kk < MMA_BK; kk += 8) {
                    unsigned af[4];
                    halo_a_tf32(H, b0, b1, qo[kk + t], qo[kk + t + 4], af);
                    REVSEG_UNROLL
                    for (int f = 0; f < F; ++f) {
                        const float* bp = bq + (8 * f + g) * MMA_QS + kk + t;
                        const unsigned bf[2] = {__float_as_uint(bp[0]), __float_as_uint(bp[4])};
                        mma_tf32_m16n8k8(acc[f], af, bf, acc[f]);
                    }
                }
            } else {
                const int o[4] = {qo[t], qo[t + 4], qo[t + 8], qo[t + 12]};
                unsigned af[4];
                halo_a_bf16(H, b0, b1, o, af);
                REVSEG_UNROLL
                for (int f = 0; f < F; ++f) {
                    const float* bp = bq + (8 * f + g) * MMA_QS + t;
                    const unsigned bf[2] = {bf16x2_round(bp[0], bp[4]),
                                            bf16x2_round(bp[8], bp[12])};
                    mma_bf16_m16n8k16(acc[f], af, bf, acc[f]);
                }
            }
        }
    }

    // Rows (ci, tap'), columns (parity, co) -> W's tap (tap' less the parity in x), in the slice of
    // this split, K group and parity; every slice gets every (co, ci, tap) from some block.
    const long long wsize = static_cast<long long>(a.cout) * a.cin * taps;
    const int slice0 = (split * a.ksplit + kg) * a.fold;
    for (int f = 0; f < F; ++f) {
        for (int i = 0; i < 4; ++i) {
            const int m = m0 + 16 * wm + g + (i >= 2 ? 8 : 0);
            const int col = n0 + 8 * f + 2 * t + (i & 1);
            if (m < mdim && col < ncol) {
                const int par = col / a.cout, c = col % a.cout;
                const int ci = m / tapsf, tap = m % tapsf;
                const int tz = tap / (a.kh * kwf), tyy = (tap / kwf) % a.kh, txx = tap % kwf - par;
                if (txx >= 0 && txx < a.kw) {
                    float* part = a.out + (slice0 + par) * wsize;
                    part[(static_cast<long long>(c) * a.cin + ci) * taps +
                         (tz * a.kh + tyy) * a.kw + txx] = acc[f][i];
                }
            }
        }
    }
}

// Packs W (cout_w x cin_w x taps) into out (kpad x npad) in the data kernels' K order: row
// k = (chunk, tap, channel in chunk) with ktc * BK rows per chunk, column j = (parity, channel) for
// a fold of 2, else the channel; (cin, N) = (ci, co) for the forward, (co, ci) for the input
// gradient (`flip`); zeros in every padding; entries rounded to the precision `prec`.
// a.n = kpad, a.cin = channels summed over, a.cout = channels produced.
REVSEG_KERNEL(conv3d_mma_pack_weights, MmaConvArgs) {
    const int taps = a.kd * a.kh * a.kw;
    const int kwf = a.kw + a.fold - 1;
    const int rows = a.ktc * MMA_BK;
    const long long count = static_cast<long long>(a.n) * a.npad;
    for (long long i = global_index(); i < count; i += grid_stride()) {
        const int k = static_cast<int>(i / a.npad), j = static_cast<int>(i % a.npad);
        const int chunk = k / rows, r = k % rows;
        const int tapf = r / a.cc, c = chunk * a.cc + r % a.cc;
        const int par = j / a.cout, co = j % a.cout;
        const int tz = tapf / (a.kh * kwf), ty = (tapf / kwf) % a.kh, tx = tapf % kwf - par;
        float v = 0.0f;
        if (tapf < a.kd * a.kh * kwf && c < a.cin && par < a.fold && tx >= 0 && tx < a.kw) {
            const int tap = (tz * a.kh + ty) * a.kw + tx;
            // Forward: W[co][c][tap]; input gradient: W[c][co][tap] (c = output channel, co = ci).
            const long long wi = a.flip ? (static_cast<long long>(c) * a.cout + co) * taps + tap
                                        : (static_cast<long long>(co) * a.cin + c) * taps + tap;
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
REVSEG_KERNEL_SYNC(conv3d_mma_data_tf32_n56, MmaConvArgs) { mma_data<kTf32, 56>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_data_tf32_n64, MmaConvArgs) { mma_data<kTf32, 64>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_data_tf32_n80, MmaConvArgs) { mma_data<kTf32, 80>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_data_bf16_n8, MmaConvArgs) { mma_data<kBf16, 8>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_data_bf16_n16, MmaConvArgs) { mma_data<kBf16, 16>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_data_bf16_n24, MmaConvArgs) { mma_data<kBf16, 24>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_data_bf16_n32, MmaConvArgs) { mma_data<kBf16, 32>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_data_bf16_n40, MmaConvArgs) { mma_data<kBf16, 40>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_data_bf16_n48, MmaConvArgs) { mma_data<kBf16, 48>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_data_bf16_n56, MmaConvArgs) { mma_data<kBf16, 56>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_data_bf16_n64, MmaConvArgs) { mma_data<kBf16, 64>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_data_bf16_n80, MmaConvArgs) { mma_data<kBf16, 80>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_weight_tf32_n8, MmaConvArgs) { mma_weight<kTf32, 8>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_weight_tf32_n16, MmaConvArgs) { mma_weight<kTf32, 16>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_weight_tf32_n24, MmaConvArgs) { mma_weight<kTf32, 24>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_weight_tf32_n32, MmaConvArgs) { mma_weight<kTf32, 32>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_weight_tf32_n40, MmaConvArgs) { mma_weight<kTf32, 40>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_weight_tf32_n48, MmaConvArgs) { mma_weight<kTf32, 48>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_weight_tf32_n56, MmaConvArgs) { mma_weight<kTf32, 56>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_weight_tf32_n64, MmaConvArgs) { mma_weight<kTf32, 64>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_weight_tf32_n80, MmaConvArgs) { mma_weight<kTf32, 80>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_weight_bf16_n8, MmaConvArgs) { mma_weight<kBf16, 8>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_weight_bf16_n16, MmaConvArgs) { mma_weight<kBf16, 16>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_weight_bf16_n24, MmaConvArgs) { mma_weight<kBf16, 24>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_weight_bf16_n32, MmaConvArgs) { mma_weight<kBf16, 32>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_weight_bf16_n40, MmaConvArgs) { mma_weight<kBf16, 40>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_weight_bf16_n48, MmaConvArgs) { mma_weight<kBf16, 48>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_weight_bf16_n56, MmaConvArgs) { mma_weight<kBf16, 56>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_weight_bf16_n64, MmaConvArgs) { mma_weight<kBf16, 64>(a); }
REVSEG_KERNEL_SYNC(conv3d_mma_weight_bf16_n80, MmaConvArgs) { mma_weight<kBf16, 80>(a); }

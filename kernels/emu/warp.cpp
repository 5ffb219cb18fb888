// Warp collectives of the emulator: what the lanes of one warp get back once every lane of the
// mask has arrived at the same collective (the scheduler in runtime.cpp parks them until then).
// Semantics as the CUDA programming guide (shuffles, votes, __syncwarp) and the PTX ISA manual
// (mma fragment layouts, ldmatrix) define them; the layouts are checked on a GPU by the same
// self-test kernels (kernels/warp_selftest.cu) that check them here.
#include <cstdio>
#include <cstring>

#include "warp.h"

namespace emu_rt {
namespace {

std::string lane_list_error(const char* what, unsigned warp, unsigned lane, unsigned other) {
    char buf[400];
    std::snprintf(buf, sizeof buf, "warp %u: lane %u %s lane %u", warp, lane, what, other);
    return buf;
}

float bf16(unsigned bits16) {
    return __uint_as_float((bits16 & 0xFFFFu) << 16);
}

// TF32 keeps the top 19 bits of an f32 (sign, exponent, 10 mantissa bits); the tensor core
// ignores the rest of an operand that was not rounded to TF32.
float tf32(unsigned bits) {
    return __uint_as_float(bits & 0xFFFFE000u);
}

// D = A B + C for one m16n8 tile, A and B given element-wise, in double then rounded once.
void mma_tile(const float* A, const float* B, const float C[16][8], int k, float D[16][8]) {
    for (int m = 0; m < 16; ++m) {
        for (int n = 0; n < 8; ++n) {
            double s = C[m][n];
            for (int kk = 0; kk < k; ++kk) {
                s += static_cast<double>(A[m * k + kk]) * B[kk * 8 + n];
            }
            D[m][n] = static_cast<float>(s);
        }
    }
}

// Accumulator layout (both shapes): c0, c1 in row groupID, c2, c3 in groupID + 8, columns
// threadID_in_group * 2 + (i & 1).
int acc_row(unsigned lane, int i) {
    return static_cast<int>(lane >> 2) + (i >= 2 ? 8 : 0);
}
int acc_col(unsigned lane, int i) {
    return static_cast<int>(lane % 4) * 2 + (i & 1);
}

void mma(emu::WarpOp* const ops[32], bool bf) {
    const int k = bf ? 16 : 8;
    float A[16 * 16], B[16 * 8], C[16][8], D[16][8];
    for (unsigned l = 0; l < 32; ++l) {
        const emu::WarpOp& o = *ops[l];
        const int g = static_cast<int>(l >> 2), t = static_cast<int>(l % 4);
        for (int i = 0; i < 4; ++i) {
            C[acc_row(l, i)][acc_col(l, i)] = o.c[i];
        }
        if (!bf) {
            // A (16 x 8, row): a0, a2 in row g, a1, a3 in g + 8; a0, a1 in column t, a2, a3 in t + 4.
            for (int i = 0; i < 4; ++i) {
                A[(g + (i & 1) * 8) * 8 + t + (i >= 2 ? 4 : 0)] = tf32(o.a[i]);
            }
            // B (8 x 8, col): b0 in row t, b1 in t + 4; column g.
            for (int i = 0; i < 2; ++i) {
                B[(t + 4 * i) * 8 + g] = tf32(o.b[i]);
            }
        } else {
            // A (16 x 16): element i (two per register, low half first) in row g for i in
            // {0,1,4,5}, g + 8 otherwise; column t * 2 + (i & 1), + 8 for i >= 4.
            for (int i = 0; i < 8; ++i) {
                const unsigned reg = o.a[i / 2] >> (16 * (i & 1));
                const int row = g + ((i & 2) ? 8 : 0);
                const int col = t * 2 + (i & 1) + (i >= 4 ? 8 : 0);
                A[row * 16 + col] = bf16(reg);
            }
            // B (16 x 8): element i in row t * 2 + (i & 1), + 8 for i >= 2; column g.
            for (int i = 0; i < 4; ++i) {
                const unsigned reg = o.b[i / 2] >> (16 * (i & 1));
                B[(t * 2 + (i & 1) + (i >= 2 ? 8 : 0)) * 8 + g] = bf16(reg);
            }
        }
    }
    mma_tile(A, B, C, k, D);
    for (unsigned l = 0; l < 32; ++l) {
        for (int i = 0; i < 4; ++i) {
            ops[l]->d[i] = D[acc_row(l, i)][acc_col(l, i)];
        }
    }
}

// ldmatrix .m8n8 .b16: lanes 8j .. 8j + 7 give the row addresses of matrix j; lane l receives,
// of each matrix, row l / 4, columns 2 (l % 4) and + 1 (transposed: column l / 4, rows 2 (l % 4)
// and + 1), the lower index in the low half.
void ldmatrix(emu::WarpOp* const ops[32], unsigned warp, const CheckRead& read) {
    const int count = ops[0]->count;
    const bool trans = ops[0]->trans != 0;
    for (unsigned l = 0; l < 32; ++l) {
        for (int j = 0; j < count; ++j) {
            unsigned short e[2];
            for (int h = 0; h < 2; ++h) {
                const int row = trans ? static_cast<int>(l % 4) * 2 + h : static_cast<int>(l / 4);
                const int col = trans ? static_cast<int>(l / 4) : static_cast<int>(l % 4) * 2 + h;
                const auto* p =
                    static_cast<const unsigned char*>(ops[8 * j + row]->addr) + 2 * col;
                read(warp * 32 + l, p, 2);
                std::memcpy(&e[h], p, 2);
            }
            ops[l]->r[j] = static_cast<unsigned>(e[0]) | (static_cast<unsigned>(e[1]) << 16);
        }
    }
}

}  // namespace

bool resolve_warp(unsigned warp, unsigned lanes, emu::WarpOp* const ops[32], unsigned& released,
                  unsigned& syncs, const CheckRead& read, std::string& err) {
    released = 0;
    for (unsigned l = 0; l < lanes; ++l) {
        if (ops[l] == nullptr || (released >> l & 1)) {
            continue;
        }
        const emu::WarpOp& o = *ops[l];
        const unsigned m = o.mask;
        if (!(m >> l & 1)) {
            err = lane_list_error("calls a warp collective whose mask leaves out its own", warp, l, l);
            return false;
        }
        for (unsigned j = 0; j < 32; ++j) {
            if (!(m >> j & 1)) {
                continue;
            }
            if (j >= lanes) {
                err = lane_list_error("names in its mask the missing (past the block's end)", warp,
                                      l, j);
                return false;
            }
            if (ops[j] == nullptr) {
                err = lane_list_error(
                    "waits at a warp collective, never reached (returned, or at __syncthreads) by",
                    warp, l, j);
                return false;
            }
            if (ops[j]->kind != o.kind || ops[j]->mask != m) {
                err = lane_list_error("and its mask's", warp, l,
                                      j) + " are at different warp collectives or masks";
                return false;
            }
        }
        const bool full = m == 0xFFFFFFFFu;
        if ((o.kind == emu::kMmaTf32 || o.kind == emu::kMmaBf16 || o.kind == emu::kLdmatrix) &&
            !full) {
            err = lane_list_error("calls mma/ldmatrix without all 32 lanes, as", warp, l, l);
            return false;
        }
        switch (o.kind) {
            case emu::kSyncwarp:
                ++syncs;
                break;
            case emu::kBallot: {
                unsigned bits = 0;
                for (unsigned j = 0; j < 32; ++j) {
                    if ((m >> j & 1) && ops[j]->value != 0) {
                        bits |= 1u << j;
                    }
                }
                for (unsigned j = 0; j < 32; ++j) {
                    if (m >> j & 1) {
                        ops[j]->r[0] = bits;
                    }
                }
                break;
            }
            case emu::kMmaTf32:
            case emu::kMmaBf16:
                mma(ops, o.kind == emu::kMmaBf16);
                break;
            case emu::kLdmatrix:
                ldmatrix(ops, warp, read);
                break;
            default: {
                const unsigned w = static_cast<unsigned>(o.width);
                if (w == 0 || w > 32 || (w & (w - 1)) != 0) {
                    err = lane_list_error("shuffles with a width that is not a power of 2 up to 32,",
                                          warp, l, l);
                    return false;
                }
                for (unsigned j = 0; j < 32; ++j) {
                    if (!(m >> j & 1)) {
                        continue;
                    }
                    const unsigned seg = j & ~(w - 1), a = static_cast<unsigned>(ops[j]->arg);
                    unsigned src = j;
                    if (o.kind == emu::kShflIdx) {
                        src = seg + (a & (w - 1));
                    } else if (o.kind == emu::kShflUp) {
                        src = j - seg >= a ? j - a : j;
                    } else if (o.kind == emu::kShflDown) {
                        src = j - seg + a < w ? j + a : j;
                    } else {
                        // Lanes of later groups are out of reach: the lane keeps its own value.
                        src = (j ^ a) < seg + w ? (j ^ a) : j;
                    }
                    if (!(m >> src & 1)) {
                        err = lane_list_error("shuffles from a lane outside its mask,", warp, j,
                                              src);
                        return false;
                    }
                    ops[j]->r[0] = ops[src]->value;
                }
            }
        }
        released |= m;
    }
    return true;
}

}  // namespace emu_rt

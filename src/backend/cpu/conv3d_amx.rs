//! conv3d on bf16 operands with f32 sums through AMX tiles (`tdpbf16ps`): forward (and so the
//! input gradient, the forward of the flipped, transposed kernel) and weight gradient.
//!
//! Why AMX and not `vdpbf16ps`: on this CPU one `vdpbf16ps` zmm issues a quarter as often as an
//! f32 FMA (measured: 1.6 against 6.5 G instructions/s on one core), so its 32 multiply-adds give
//! half the f32 rate, while one `tdpbf16ps` does 16 x 16 x 32 of them (measured: 3.1 TFLOP/s on one
//! core, about 15 times the f32 FMA peak). The arithmetic then costs little next to moving the
//! data, so the layouts aim at one pass over each operand:
//!
//! - every sample's input is copied once into zero-padded planes (Dp, Hp, Wt) = (D + kd - 1,
//!   H + kh - 1, W + kw - 1), flattened: the input of output position f (a padded-plane index) at
//!   tap (a, b, c) is f + a Hp Wt + b Wt + c, one constant offset per tap, with no edge case;
//!   outputs at padded positions (x >= W, y >= H) are computed and dropped.
//! - forward: B tiles are 16 consecutive positions x one ci pair per row (input planes with
//!   (ci, ci + 1) interleaved), A tiles the weights (co rows x ci pairs) of one tap, C holds 16
//!   output channels x 16 positions; 2 x 2 or 1 x 3 C tiles share their A and B loads.
//! - weight gradient: C[ci][co] of one tap sums A = 32 consecutive input positions of ci rows
//!   (plain padded planes) times B = dy with position pairs interleaved, [f / 2][co][f % 2]; dy
//!   is zero at padded positions, so whole planes are summed.
//!
//! Sums are deterministic: every result adds the same tiles in the same order whatever the thread
//! timing, and weight-gradient partials over fixed position ranges are added in a fixed order.
//! They are not the scalar path's bits: `tdpbf16ps` sums its 32 products in an order and with an
//! internal rounding that are not documented (not the pairwise f32 order of `vdpbf16ps`), so the
//! tests bound its error instead (docs/PERFORMANCE.md). It also reads denormal inputs as zero.

use super::conv3d_bf16::Store;
use super::mem::SendPtr;
use crate::ops::conv3d::Conv3dGeom;
use half::bf16;
use rayon::prelude::*;
use std::arch::asm;
use std::sync::OnceLock;

/// Whether this CPU has AMX-BF16 and the kernel lets this process use the tile registers.
pub fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
        let amx_bf16 = leaf7.edx & (1 << 22) != 0;
        let amx_tile = leaf7.edx & (1 << 24) != 0;
        // The stores and copies around the tiles are AVX-512 (F, BW, VL) code.
        let avx512 = std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vl");
        if !(avx512 && amx_bf16 && amx_tile) {
            return false;
        }
        // Linux hands out the 8 KiB tile state only on request: ARCH_REQ_XCOMP_PERM for
        // XFEATURE_XTILEDATA (18).
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: a plain system call with integer arguments.
        let r = unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            )
        };
        r == 0
    })
}

/// The 64-byte tile configuration of palette 1: bytes per row and rows of tmm0..tmm7.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

impl TileConfig {
    fn new(shapes: [(usize, usize); 8]) -> Self {
        let mut c = TileConfig {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            colsb: [0; 16],
            rows: [0; 16],
        };
        for (i, (rows, colsb)) in shapes.into_iter().enumerate() {
            debug_assert!(rows <= 16 && colsb <= 64);
            c.rows[i] = rows as u8;
            c.colsb[i] = colsb as u16;
        }
        c
    }

    /// Configure this thread's tiles; `Tiles` releases them when dropped.
    fn load(&self) -> Tiles {
        // SAFETY: `available()` was checked by the caller; the configuration is valid (rows <= 16,
        // bytes per row <= 64).
        unsafe { asm!("ldtilecfg [{}]", in(reg) self as *const TileConfig, options(nostack)) };
        Tiles
    }
}

struct Tiles;

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: releases the tile state configured by `TileConfig::load`.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}

macro_rules! tload {
    ($t:literal, $p:expr, $stride:expr) => {
        asm!(concat!("tileloadd tmm", $t, ", [{p} + {s} * 1]"), p = in(reg) $p, s = in(reg) $stride, options(nostack, readonly))
    };
}
macro_rules! tstore {
    ($t:literal, $p:expr, $stride:expr) => {
        asm!(concat!("tilestored [{p} + {s} * 1], tmm", $t), p = in(reg) $p, s = in(reg) $stride, options(nostack))
    };
}
macro_rules! tdp {
    ($c:literal, $a:literal, $b:literal) => {
        asm!(
            concat!("tdpbf16ps tmm", $c, ", tmm", $a, ", tmm", $b),
            options(nostack, nomem)
        )
    };
}
macro_rules! tzero {
    ($t:literal) => {
        asm!(concat!("tilezero tmm", $t), options(nostack, nomem))
    };
}

/// `n` items in near-equal blocks of at most 16: (blocks, items per block).
fn blocks16(n: usize) -> (usize, usize) {
    let nb = n.div_ceil(16);
    (nb, n.div_ceil(nb))
}

/// The zero-padded, flattened planes of one geometry.
#[derive(Clone, Copy)]
struct Planes {
    hp: usize,
    wt: usize,
    /// Elements per plane: the body and a zero tail that the last blocks' reads run into.
    len: usize,
    /// Output positions computed per sample: D Hp Wt (the padded rows and columns included).
    outputs: usize,
}

fn planes(g: &Conv3dGeom) -> Planes {
    let (hp, wt) = (g.h + g.kh - 1, g.w + g.kw - 1);
    let body = (g.d + g.kd - 1) * hp * wt;
    // Reads reach position outputs + 64 (a block past the end) plus the largest tap offset, which
    // is body - outputs + (kh - 1) Wt + kw - 1.
    let len = (body + (g.kh - 1) * wt + g.kw + 128).next_multiple_of(32);
    Planes {
        hp,
        wt,
        len,
        outputs: g.d * hp * wt,
    }
}

impl Planes {
    /// Offset of tap (a, b, c) in a flattened plane.
    fn tap_offsets(&self, g: &Conv3dGeom) -> Vec<usize> {
        let mut out = Vec::with_capacity(g.taps());
        for a in 0..g.kd {
            for b in 0..g.kh {
                for c in 0..g.kw {
                    out.push((a * self.hp + b) * self.wt + c);
                }
            }
        }
        out
    }

    /// Index in a padded plane of the first voxel of input row (z, y).
    fn row_start(&self, g: &Conv3dGeom, z: usize, y: usize) -> usize {
        ((z + g.kd / 2) * self.hp + y + g.kh / 2) * self.wt + g.kw / 2
    }

    /// The runs of lanes l of positions f0 + l (l < 16) that are output voxels, as
    /// (first lane, end lane, index of lane 0 in the unpadded output channel).
    fn runs(&self, g: &Conv3dGeom, f0: usize, out: &mut Vec<(usize, usize, isize)>) {
        out.clear();
        let mut l = 0;
        while l < 16 {
            let f = f0 + l;
            let (r, xo) = (f / self.wt, f % self.wt);
            let end = 16.min(l + self.wt - xo);
            let (z, y) = (r / self.hp, r % self.hp);
            if xo < g.w && y < g.h && z < g.d {
                let vend = end.min(l + g.w - xo);
                out.push((l, vend, ((z * g.h + y) * g.w + xo) as isize - l as isize));
            }
            l = end;
        }
    }
}

/// y = conv(x, w) (+ bias), or y += ... with `accumulate`, where `w(co, ci, tap)` gives the kernel.
/// Requires `available()`.
#[allow(clippy::too_many_arguments)]
pub fn convolve<O: Store>(
    g: &Conv3dGeom,
    x: &[bf16],
    w: impl Fn(usize, usize, usize) -> bf16,
    bias: Option<&[f32]>,
    y: &mut [O],
    accumulate: bool,
) {
    assert!(
        available(),
        "conv3d_amx called where the CPU or OS has no AMX"
    );
    let sp = g.spatial();
    let taps = g.taps();
    assert!(x.len() >= g.n * g.ci * sp && y.len() >= g.n * g.co * sp);
    let pl = planes(g);
    let pairs = g.ci.div_ceil(2);
    let (ng, gs) = blocks16(pairs);
    let (nb, cb) = blocks16(g.co);
    let co_pad = nb * cb;
    let pairs_pad = ng * gs;

    // Weights as [tap][group][co][pair]: one A tile per (tap, group, co block), rows of gs pairs.
    let mut wa = vec![0u32; taps * ng * co_pad * gs];
    for t in 0..taps {
        for gi in 0..ng {
            for co in 0..g.co {
                for j in 0..gs {
                    let ci = 2 * (gi * gs + j);
                    let lo = if ci < g.ci { w(co, ci, t).to_bits() } else { 0 };
                    let hi = if ci + 1 < g.ci {
                        w(co, ci + 1, t).to_bits()
                    } else {
                        0
                    };
                    wa[((t * ng + gi) * co_pad + co) * gs + j] = lo as u32 | (hi as u32) << 16;
                }
            }
        }
    }

    // The input as padded planes of (ci, ci + 1) pairs, one u32 per position.
    let mut xt = vec![0u32; g.n * pairs_pad * pl.len];
    xt.par_chunks_mut(pl.len)
        .enumerate()
        .for_each(|(i, plane)| {
            let (n, q) = (i / pairs_pad, i % pairs_pad);
            if q >= pairs {
                return;
            }
            let c0 = &x[(n * g.ci + 2 * q) * sp..][..sp];
            let c1 = (2 * q + 1 < g.ci).then(|| &x[(n * g.ci + 2 * q + 1) * sp..][..sp]);
            for z in 0..g.d {
                for yy in 0..g.h {
                    let dst = &mut plane[pl.row_start(g, z, yy)..][..g.w];
                    let s0 = &c0[(z * g.h + yy) * g.w..][..g.w];
                    let s1 = c1.map(|c1| &c1[(z * g.h + yy) * g.w..][..g.w]);
                    // SAFETY: AVX-512 comes with AMX (`available`).
                    unsafe { interleave(dst, s0, s1) };
                }
            }
        });

    // Two C tiles along co and two along positions where there are two co blocks, else 1 x 3.
    let (mc, mx) = if nb >= 2 { (2, 2) } else { (1, 3) };
    let (c, a, b) = ((cb, 64), (cb, 4 * gs), (gs, 64));
    // tmm5 is the second co block's A tile (2 x 2) or the third position block's B tile (1 x 3).
    let cfg = TileConfig::new([c, c, c, c, a, if mc == 2 { a } else { b }, b, b]);
    let offsets = pl.tap_offsets(g);
    let block = 16 * mx;
    let chunk = block * 8;
    let chunks = pl.outputs.div_ceil(chunk);
    let yp = SendPtr(y.as_mut_ptr());
    let (xt, wa) = (&xt[..], &wa[..]);
    (0..g.n * chunks).into_par_iter().for_each_init(
        || {
            (
                vec![0f32; 4 * 16 * 16],
                [Vec::new(), Vec::new(), Vec::new()],
            )
        },
        |(scratch, runs), task| {
            let (n, ch) = (task / chunks, task % chunks);
            let f_end = pl.outputs.min((ch + 1) * chunk);
            let xs = &xt[n * pairs_pad * pl.len..][..pairs_pad * pl.len];
            let _tiles = cfg.load();
            for cob in (0..nb).step_by(mc) {
                let mcv = mc.min(nb - cob);
                for f0 in (ch * chunk..f_end).step_by(block) {
                    let mxv = mx.min((f_end - f0).div_ceil(16));
                    // SAFETY: the tiles are configured above; every A read lies in `wa` (whole
                    // co_pad rows of gs pairs) and every B read in this sample's planes (rows
                    // q < pairs_pad, positions below outputs + 64 + the largest tap offset, which
                    // `planes` sized the planes for).
                    unsafe {
                        block_tiles(
                            xs,
                            wa,
                            &offsets,
                            pl.len,
                            ng,
                            gs,
                            co_pad,
                            cob * cb,
                            cb,
                            mc,
                            mcv,
                            mxv,
                            f0,
                            scratch,
                        )
                    };
                    for (j, r) in runs.iter_mut().enumerate().take(mxv) {
                        pl.runs(g, f0 + 16 * j, r);
                    }
                    for i in 0..mcv {
                        for (j, r) in runs.iter().enumerate().take(mxv) {
                            let tile = &scratch[(i * 2 + j) * 256..][..256];
                            for m in 0..cb.min(g.co.saturating_sub((cob + i) * cb)) {
                                let co = (cob + i) * cb + m;
                                let b = bias.map_or(0.0, |b| b[co]);
                                let lanes = &tile[m * 16..][..16];
                                let base = yp.get().wrapping_add((n * g.co + co) * sp);
                                for &(l0, l1, off) in r {
                                    // SAFETY: lanes l0..l1 at base + off are output voxels of
                                    // channel co of sample n, written by this task alone (its
                                    // positions); AVX-512 comes with AMX (`available`).
                                    unsafe {
                                        store_lanes(
                                            lanes,
                                            b,
                                            base.wrapping_offset(off),
                                            l0,
                                            l1,
                                            accumulate,
                                        )
                                    };
                                }
                            }
                        }
                    }
                }
            }
        },
    );
}

/// dst[i] = (s0[i], s1[i]) as one u32, low half first; s1 zero where absent.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn interleave(dst: &mut [u32], s0: &[bf16], s1: Option<&[bf16]>) {
    match s1 {
        Some(s1) => {
            for ((d, a), b) in dst.iter_mut().zip(s0).zip(s1) {
                *d = a.to_bits() as u32 | (b.to_bits() as u32) << 16;
            }
        }
        None => {
            for (d, a) in dst.iter_mut().zip(s0) {
                *d = a.to_bits() as u32;
            }
        }
    }
}

/// The C tiles of co blocks co0.. (mcv of them) and positions f0.. (mxv blocks of 16), summed over
/// taps and ci-pair groups, stored to `scratch` as [co block][position block][row][16].
#[allow(clippy::too_many_arguments)]
#[inline(never)]
unsafe fn block_tiles(
    xs: &[u32],
    wa: &[u32],
    offsets: &[usize],
    len: usize,
    ng: usize,
    gs: usize,
    co_pad: usize,
    co0: usize,
    cb: usize,
    mc: usize,
    mcv: usize,
    mxv: usize,
    f0: usize,
    scratch: &mut [f32],
) {
    let bstride = len * 4;
    let astride = gs * 4;
    let xp = xs.as_ptr();
    tzero!(0);
    tzero!(1);
    tzero!(2);
    tzero!(3);
    for (t, &off) in offsets.iter().enumerate() {
        for gi in 0..ng {
            let a = wa.as_ptr().add(((t * ng + gi) * co_pad + co0) * gs);
            let b = xp.add(gi * gs * len + f0 + off);
            tload!(4, a, astride);
            tload!(6, b, bstride);
            tdp!(0, 4, 6);
            if mxv > 1 {
                tload!(7, b.add(16), bstride);
                tdp!(1, 4, 7);
            }
            if mc == 2 {
                if mcv > 1 {
                    // The second co block's rows follow the first's.
                    tload!(5, a.add(cb * gs), astride);
                    tdp!(2, 5, 6);
                    if mxv > 1 {
                        tdp!(3, 5, 7);
                    }
                }
            } else if mxv > 2 {
                tload!(5, b.add(32), bstride);
                tdp!(2, 4, 5);
            }
        }
    }
    // Tile k goes to scratch[256 k..]: (co block i, position block j) at 2 i + j, both layouts.
    let s = scratch.as_mut_ptr();
    tstore!(0, s, 64usize);
    tstore!(1, s.add(256), 64usize);
    tstore!(2, s.add(512), 64usize);
    tstore!(3, s.add(768), 64usize);
}

/// Lanes l0..l1 of `v` + bias to dst[l0..l1] (added to what is there with `accumulate`), as
/// `O::store(dst.load() + (v + bias))` computes them, in one masked vector.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn store_lanes<O: Store>(
    v: &[f32],
    bias: f32,
    dst: *mut O,
    l0: usize,
    l1: usize,
    accumulate: bool,
) {
    use std::any::TypeId;
    use std::arch::x86_64::*;
    let mask = (((1u32 << l1) - 1) & !((1u32 << l0) - 1)) as u16;
    let r = _mm512_add_ps(_mm512_loadu_ps(v.as_ptr()), _mm512_set1_ps(bias));
    if TypeId::of::<O>() == TypeId::of::<f32>() {
        let p = dst as *mut f32;
        let r = if accumulate {
            _mm512_add_ps(_mm512_maskz_loadu_ps(mask, p), r)
        } else {
            r
        };
        _mm512_mask_storeu_ps(p, mask, r);
    } else if TypeId::of::<O>() == TypeId::of::<half::bf16>() {
        let p = dst as *mut i16;
        let r = if accumulate {
            let old = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, p));
            _mm512_add_ps(_mm512_castsi512_ps(_mm512_slli_epi32(old, 16)), r)
        } else {
            r
        };
        // Round to nearest even as `bf16::from_f32`: NaN stays a quiet NaN of the same sign.
        let bits = _mm512_castps_si512(r);
        let hi = _mm512_srli_epi32(bits, 16);
        let lsb = _mm512_and_si512(hi, _mm512_set1_epi32(1));
        let bias_rne = _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff));
        let rounded = _mm512_srli_epi32(_mm512_add_epi32(bits, bias_rne), 16);
        let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(r, r);
        let quiet = _mm512_or_si512(hi, _mm512_set1_epi32(0x40));
        let out = _mm512_mask_mov_epi32(rounded, nan, quiet);
        _mm256_mask_storeu_epi16(p, mask, _mm512_cvtepi32_epi16(out));
    } else {
        for (l, &x) in v.iter().enumerate().take(l1).skip(l0) {
            let o = dst.add(l);
            *o = if accumulate {
                O::store((*o).load() + (x + bias))
            } else {
                O::store(x + bias)
            };
        }
    }
}

/// Weight-gradient partials over fixed ranges of position chunks, added in this order.
const WEIGHT_GRAD_PARTS: usize = 8;
/// Taps whose C tiles stay in registers together, sharing each B (dy) tile load.
const WG_TAPS: usize = 3;

/// dw = sum over positions of dy x the input at each tap, or dw += ... with `accumulate`; dw is
/// (Co, Ci, kd, kh, kw) in f32. Requires `available()`.
pub fn weight_gradient(g: &Conv3dGeom, x: &[bf16], dy: &[bf16], dw: &mut [f32], accumulate: bool) {
    assert!(
        available(),
        "conv3d_amx called where the CPU or OS has no AMX"
    );
    let sp = g.spatial();
    let taps = g.taps();
    assert!(x.len() >= g.n * g.ci * sp && dy.len() >= g.n * g.co * sp);
    assert!(dw.len() >= g.co * g.ci * taps);
    let pl = planes(g);
    let (nbi, cbi) = blocks16(g.ci);
    let (nbo, cbo) = blocks16(g.co);
    let (ci_pad, co_pad) = (nbi * cbi, nbo * cbo);

    // The input as plain padded planes, one per channel (rows past ci zero).
    let mut xf = vec![0u16; g.n * ci_pad * pl.len];
    xf.par_chunks_mut(pl.len)
        .enumerate()
        .for_each(|(i, plane)| {
            let (n, c) = (i / ci_pad, i % ci_pad);
            if c >= g.ci {
                return;
            }
            let src = &x[(n * g.ci + c) * sp..][..sp];
            for z in 0..g.d {
                for yy in 0..g.h {
                    let dst = &mut plane[pl.row_start(g, z, yy)..][..g.w];
                    for (d, s) in dst.iter_mut().zip(&src[(z * g.h + yy) * g.w..][..g.w]) {
                        *d = s.to_bits();
                    }
                }
            }
        });

    // dy at the output positions of the padded planes, pairs of positions interleaved per co:
    // [f / 2][co][f % 2], zero at padded positions and past the last step.
    let steps = pl.outputs.div_ceil(32);
    let dlen = steps * 16 * co_pad * 2;
    let mut dyp = vec![0u16; g.n * dlen];
    const PAIR_ROWS: usize = 1024;
    let row_elems = co_pad * 2;
    for (n, sample) in dyp.chunks_mut(dlen).enumerate() {
        let dyn_ = &dy[n * g.co * sp..][..g.co * sp];
        sample
            .par_chunks_mut(PAIR_ROWS * row_elems)
            .enumerate()
            .for_each(|(i, out)| {
                let f_lo = i * PAIR_ROWS * 2;
                let f_hi = (f_lo + out.len() / row_elems * 2).min(pl.outputs);
                let mut f = f_lo;
                // Row by row of the padded planes: the runs of output voxels.
                while f < f_hi {
                    let (r, xo) = (f / pl.wt, f % pl.wt);
                    let row0 = f - xo;
                    let end = f_hi.min(row0 + pl.wt);
                    let (z, yy) = (r / pl.hp, r % pl.hp);
                    if yy < g.h && xo < g.w {
                        let vend = end.min(row0 + g.w);
                        let src0 = (z * g.h + yy) * g.w;
                        // Channels inner: each output row of co_pad pairs is written at
                        // once, while the reads run along co channels' rows.
                        for ff in f..vend {
                            let dst = &mut out[(ff - f_lo) / 2 * row_elems + (ff & 1)..];
                            let src = &dyn_[src0 + ff - row0..];
                            for co in 0..g.co {
                                dst[co * 2] = src[co * sp].to_bits();
                            }
                        }
                    }
                    f = end;
                }
            });
    }

    let cfg = TileConfig::new([
        (cbi, 4 * cbo),
        (cbi, 4 * cbo),
        (cbi, 4 * cbo),
        (cbi, 64),
        (cbi, 64),
        (cbi, 64),
        (16, 4 * cbo),
        (0, 0),
    ]);
    let offsets = pl.tap_offsets(g);
    // Steps of 32 positions per chunk: long enough to pay for each C tile's load and store,
    // short enough that every part gets several chunks.
    let per_chunk = (steps * g.n / (4 * WEIGHT_GRAD_PARTS)).clamp(4, 64);
    let chunks_per_sample = steps.div_ceil(per_chunk);
    let tasks = g.n * chunks_per_sample;
    let acc_len = nbi * nbo * taps * 256;
    let (xf, dyp) = (&xf[..], &dyp[..]);
    let parts: Vec<Vec<f32>> = (0..WEIGHT_GRAD_PARTS)
        .into_par_iter()
        .map(|part| {
            let mut acc = vec![0f32; acc_len];
            let lo = tasks * part / WEIGHT_GRAD_PARTS;
            let hi = tasks * (part + 1) / WEIGHT_GRAD_PARTS;
            if lo == hi {
                return acc;
            }
            let _tiles = cfg.load();
            for task in lo..hi {
                let (n, ch) = (task / chunks_per_sample, task % chunks_per_sample);
                let s0 = ch * per_chunk;
                let s1 = steps.min(s0 + per_chunk);
                for ib in 0..nbi {
                    let xa = &xf[(n * ci_pad + ib * cbi) * pl.len..];
                    for ob in 0..nbo {
                        let db = &dyp[n * dlen + ob * cbo * 2..];
                        for t0 in (0..taps).step_by(WG_TAPS) {
                            let nt = WG_TAPS.min(taps - t0);
                            let c = &mut acc[((ib * nbo + ob) * taps + t0) * 256..][..nt * 256];
                            // SAFETY: tiles configured above; A reads rows ib*cbi.. of this
                            // sample's planes at positions below steps * 32 + the largest tap
                            // offset (inside `len`), B reads pair rows below steps * 16 of
                            // this sample's dy, C is `c`.
                            unsafe {
                                weight_tiles(
                                    xa,
                                    db,
                                    &offsets[t0..t0 + nt],
                                    pl.len,
                                    co_pad,
                                    s0,
                                    s1,
                                    c,
                                )
                            };
                        }
                    }
                }
            }
            acc
        })
        .collect();
    for co in 0..g.co {
        let (ob, ol) = (co / cbo, co % cbo);
        for c in 0..g.ci {
            let (ib, il) = (c / cbi, c % cbi);
            for t in 0..taps {
                let i = ((ib * nbo + ob) * taps + t) * 256 + il * 16 + ol;
                let mut s = 0f32;
                for p in &parts {
                    s += p[i];
                }
                let o = &mut dw[(co * g.ci + c) * taps + t];
                *o = if accumulate { *o + s } else { s };
            }
        }
    }
}

/// Up to WG_TAPS C tiles (one per tap offset) += the input at that offset x dy, over steps
/// s0..s1 of 32 positions.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
unsafe fn weight_tiles(
    xa: &[u16],
    db: &[u16],
    offsets: &[usize],
    len: usize,
    co_pad: usize,
    s0: usize,
    s1: usize,
    c: &mut [f32],
) {
    let (astride, bstride) = (len * 2, co_pad * 4);
    let cp = c.as_mut_ptr();
    let nt = offsets.len();
    tload!(0, cp, 64usize);
    if nt > 1 {
        tload!(1, cp.add(256), 64usize);
    }
    if nt > 2 {
        tload!(2, cp.add(512), 64usize);
    }
    let (xp, dp) = (xa.as_ptr(), db.as_ptr());
    for s in s0..s1 {
        let f = s * 32;
        tload!(6, dp.add(f * co_pad), bstride);
        tload!(3, xp.add(f + offsets[0]), astride);
        tdp!(0, 3, 6);
        if nt > 1 {
            tload!(4, xp.add(f + offsets[1]), astride);
            tdp!(1, 4, 6);
        }
        if nt > 2 {
            tload!(5, xp.add(f + offsets[2]), astride);
            tdp!(2, 5, 6);
        }
    }
    tstore!(0, cp, 64usize);
    if nt > 1 {
        tstore!(1, cp.add(256), 64usize);
    }
    if nt > 2 {
        tstore!(2, cp.add(512), 64usize);
    }
}

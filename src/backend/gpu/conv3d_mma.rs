//! conv3d on tensor cores (kernels/conv3d_mma.cu): TF32 or BF16 operands, f32 accumulation, for
//! the `tf32` and `bf16` precisions; `f32` runs kernels/conv3d.cu. Shape checks and regions are
//! the caller's (mod.rs); this file picks the tiles and splits and launches.

use super::args::{ConvArgs, KernelArgs};
use super::{grid_1d, int, GpuArena, GpuBackend, Launcher, THREADS};
use crate::error::Result;
use crate::ops::conv3d::Conv3dGeom;
use crate::precision::Precision;

/// kernels/common.cuh's MmaConvArgs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MmaConvArgs {
    pub src: u64,
    pub w: u64,
    pub bias: u64,
    pub out: u64,
    pub n: i32,
    pub cin: i32,
    pub cout: i32,
    pub d: i32,
    pub h: i32,
    pub wd: i32,
    pub kd: i32,
    pub kh: i32,
    pub kw: i32,
    pub npad: i32,
    pub accumulate: i32,
    pub flip: i32,
    pub vec: i32,
    pub splits: i32,
    pub chunk: i32,
    pub prec: i32,
    pub fold: i32,
    pub bz: i32,
    pub by: i32,
    pub bx: i32,
    pub cc: i32,
    pub nchunk: i32,
    pub ktc: i32,
    pub hs: i32,
    pub hz: i32,
    pub hy: i32,
    pub hx: i32,
    pub pad_: i32,
}

// SAFETY: #[repr(C)], u64 then i32 fields, 144 bytes without padding (asserted).
unsafe impl KernelArgs for MmaConvArgs {}
const _: () = assert!(std::mem::size_of::<MmaConvArgs>() == 144);

/// MMA_BM, MMA_BK and MMA_THREADS of kernels/conv3d_mma.cu.
pub const TILE_M: usize = 64;
pub const TILE_K: usize = 16;
const MMA_THREADS: u32 = 128;
/// The channel tiles the kernels are built for (multiples of the mma's n = 8).
pub const CHANNEL_TILES: [usize; 9] = [8, 16, 24, 32, 40, 48, 56, 64, 80];
/// MMA_HALO and MMA_KOFF of kernels/conv3d_mma.cu: one halo buffer (floats), the K-offset table.
const HALO: usize = 3584;
const KOFF: usize = 512;

/// How a data kernel (forward, input gradient) covers one layer: `fold` x-adjacent outputs per GEMM
/// row, an output box of bz x by x bx rows (at most TILE_M), input channels in `nchunk` chunks of
/// `cc` staged with their halo (hz x hy x hx floats, channel stride hs), `ktc` K tiles per chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataPlan {
    pub fold: usize,
    pub box_: [usize; 3],
    pub cc: usize,
    pub nchunk: usize,
    pub ktc: usize,
    pub halo: [usize; 3],
    pub hs: usize,
    /// The channel tile and the number of tiles over fold * cout columns.
    pub bn: usize,
    pub ntiles: usize,
    /// Output boxes per sample.
    pub boxes: usize,
}

impl DataPlan {
    /// MACs the tiles issue for `n` samples.
    pub fn issued_macs(&self, n: usize) -> usize {
        n * self.boxes * TILE_M * self.ntiles * self.bn * self.nchunk * self.ktc * TILE_K
    }

    pub fn kpad(&self) -> usize {
        self.nchunk * self.ktc * TILE_K
    }
}

/// The data plan of least issued MACs (then the least halo traffic) for `cin -> cout` channels
/// over a d x h x w volume with kernel k: every output box of at most TILE_M rows whose halo fits
/// a buffer, and an x-fold of 2 for the forward (`flip` false). None if no box fits.
pub fn data_plan(
    cin: usize,
    cout: usize,
    [d, h, w]: [usize; 3],
    [kd, kh, kw]: [usize; 3],
    flip: bool,
) -> Option<DataPlan> {
    let mut best: Option<(DataPlan, usize, usize)> = None;
    for fold in [1, 2] {
        if fold == 2 && flip {
            continue;
        }
        let taps = kd * kh * (kw + fold - 1);
        let bn = channel_tile(fold * cout);
        let ntiles = (fold * cout).div_ceil(bn);
        for bx in 1..=TILE_M {
            for by in 1..=TILE_M / bx {
                let bz = TILE_M / (bx * by);
                let halo = [
                    bz + kd - 1,
                    by + kh - 1,
                    (fold * bx + kw - 1 + 3).div_ceil(4) * 4,
                ];
                let plane = halo[0] * halo[1] * halo[2];
                // Channel stride 8 mod 16 words: the four k-rows of a fragment in four bank groups.
                let hs = plane + (24 - plane % 16) % 16;
                let ccmax = (HALO / hs).min(KOFF / taps).min(cin);
                if ccmax == 0 {
                    continue;
                }
                let nchunk = cin.div_ceil(ccmax);
                let cc = cin.div_ceil(nchunk);
                let ktc = (taps * cc).div_ceil(TILE_K);
                let boxes = d.div_ceil(bz) * h.div_ceil(by) * w.div_ceil(fold * bx);
                let plan = DataPlan {
                    fold,
                    box_: [bz, by, bx],
                    cc,
                    nchunk,
                    ktc,
                    halo,
                    hs,
                    bn,
                    ntiles,
                    boxes,
                };
                let key = (plan.issued_macs(1), boxes * nchunk * cc * plane);
                if best.is_none_or(|(_, i, t)| key < (i, t)) {
                    best = Some((plan, key.0, key.1));
                }
            }
        }
    }
    best.map(|(p, _, _)| p)
}
const MAX_WEIGHT_SPLITS: usize = 128;

/// The channel tile for `c` channels: the least padding (ceil(c / n) * n), the larger tile on a
/// tie (fewer tiles, so each gathered input tile is reused by more channels).
pub fn channel_tile(c: usize) -> usize {
    let mut best = CHANNEL_TILES[0];
    for &n in &CHANNEL_TILES {
        if c.div_ceil(n) * n <= c.div_ceil(best) * best {
            best = n;
        }
    }
    best
}

/// (splits, chunk) of the weight gradient's positions: enough blocks for two per SM, chunks a
/// multiple of the K tile and at least 8 tiles deep; fixed by the shape and SM count alone, so the
/// sum order (and the bits) are the same run after run on one device.
pub fn weight_splits(sm_count: usize, tiles: usize, positions: usize) -> (usize, usize) {
    let want = (2 * sm_count)
        .div_ceil(tiles.max(1))
        .clamp(1, MAX_WEIGHT_SPLITS);
    let chunk = positions
        .div_ceil(want)
        .div_ceil(TILE_K)
        .max(8)
        .saturating_mul(TILE_K);
    (positions.div_ceil(chunk).max(1), chunk)
}

fn prec_code(p: Precision) -> i32 {
    (p == Precision::Bf16) as i32
}

impl<L: Launcher> GpuBackend<L> {
    /// The shape fields, from conv3d.cu's argument struct (its checks included).
    fn mma_args(g: &Conv3dGeom, cin: usize, cout: usize) -> Result<MmaConvArgs> {
        let c = super::conv3d::conv_args(g, 0, 0, 0, 0, 0, 0)?;
        Ok(MmaConvArgs {
            n: c.n,
            cin: int("conv3d", cin)?,
            cout: int("conv3d", cout)?,
            d: c.d,
            h: c.h,
            wd: c.wd,
            kd: c.kd,
            kh: c.kh,
            kw: c.kw,
            ..Default::default()
        })
    }

    /// Forward (`flip` false: src = x, cin = ci, cout = co, bias) or input gradient (true: src = dy,
    /// cin = co, cout = ci). Packs the weights into the workspace first.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn conv3d_mma_data(
        &self,
        a: &mut GpuArena<L::Buf>,
        g: &Conv3dGeom,
        prec: Precision,
        flip: bool,
        src: u64,
        w: u64,
        bias: u64,
        out: u64,
        accumulate: i32,
    ) -> Result<()> {
        let (cin, cout) = if flip { (g.co, g.ci) } else { (g.ci, g.co) };
        let p =
            data_plan(cin, cout, [g.d, g.h, g.w], [g.kd, g.kh, g.kw], flip).ok_or_else(|| {
                crate::error::Error::Invalid(format!(
                    "conv3d: a {}x{}x{} kernel's input halo does not fit the tensor-core kernels' \
                 shared buffer; use --precision fp32 for this network",
                    g.kd, g.kh, g.kw
                ))
            })?;
        let npad = p.ntiles * p.bn;
        let kpad = p.kpad();
        int("conv3d", kpad * npad)?;
        let packed = self.scratch(a, kpad * npad)?;
        let mut args = Self::mma_args(g, cin, cout)?;
        args.npad = npad as i32;
        args.flip = flip as i32;
        args.prec = prec_code(prec);
        args.fold = p.fold as i32;
        [args.bz, args.by, args.bx] = p.box_.map(|v| v as i32);
        args.cc = p.cc as i32;
        args.nchunk = p.nchunk as i32;
        args.ktc = p.ktc as i32;
        args.hs = p.hs as i32;
        [args.hz, args.hy, args.hx] = p.halo.map(|v| v as i32);
        let pack = MmaConvArgs {
            src: w,
            out: packed,
            n: kpad as i32,
            ..args
        };
        self.launch(
            "conv3d_mma_pack_weights",
            grid_1d(kpad * npad),
            THREADS,
            &pack,
        )?;
        args.src = src;
        args.w = packed;
        args.bias = bias;
        args.out = out;
        args.accumulate = accumulate;
        // 16-byte halo copies: every row of the volume starts 16-byte aligned.
        args.vec = (g.w % 4 == 0 && src % 16 == 0 && packed % 16 == 0) as i32;
        self.launch(
            &format!("conv3d_mma_data_{}_n{}", prec.name(), p.bn),
            [int("conv3d", g.n * p.boxes)? as u32, p.ntiles as u32, 1],
            MMA_THREADS,
            &args,
        )
    }

    /// Weight gradient: partial sums per position split into the workspace, then added in split
    /// order by conv3d.cu's reduction.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn conv3d_mma_weight(
        &self,
        a: &mut GpuArena<L::Buf>,
        g: &Conv3dGeom,
        prec: Precision,
        x: u64,
        dy: u64,
        dw: u64,
        accumulate: i32,
    ) -> Result<()> {
        const OP: &str = "conv3d_backward_weight";
        let m = g.taps() * g.ci;
        let bn = channel_tile(g.co);
        let (mt, nt) = (m.div_ceil(TILE_M), g.co.div_ceil(bn));
        let q = g.n * g.spatial();
        let (ns, chunk) = weight_splits(self.launcher.limits().sm_count as usize, mt * nt, q);
        int(OP, ns * g.co * m)?;
        let part = self.scratch(a, ns * g.co * m)?;
        let mut args = Self::mma_args(g, g.ci, g.co)?;
        args.src = x;
        args.w = dy;
        args.out = part;
        args.splits = ns as i32;
        args.chunk = int(OP, chunk)?;
        args.prec = prec_code(prec);
        self.launch(
            &format!("conv3d_mma_weight_{}_n{bn}", prec.name()),
            [mt as u32, nt as u32, ns as u32],
            MMA_THREADS,
            &args,
        )?;
        let mut red: ConvArgs = super::conv3d::conv_args(g, 0, 0, 0, part, dw, accumulate)?;
        red.splits = ns as i32;
        self.launch_1d("conv3d_backward_weight_reduce", g.co * m, &red)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_tiles_waste_little_on_the_network_widths() {
        // (channels, tile): exact where a tile fits, else the least padding.
        for (c, n) in [
            (3, 8),
            (14, 16),
            (18, 24),
            (28, 32),
            (36, 40),
            (48, 48),
            (64, 64),
            (80, 80),
            (96, 48),
            (1, 8),
        ] {
            assert_eq!(channel_tile(c), n, "{c} channels");
        }
    }

    #[test]
    fn data_plans_fit_the_buffers_and_fill_the_tiles() {
        // (cin, cout, volume, kernel, flip, least useful fraction): the preset's shapes.
        for (cin, cout, vol, k, flip, least) in [
            (1, 28, [18, 160, 160], [1, 5, 5], false, 0.70),
            (28, 28, [18, 160, 160], [3, 3, 3], false, 0.85),
            (14, 14, [18, 160, 160], [3, 3, 3], true, 0.80),
            (18, 18, [18, 80, 80], [3, 3, 3], false, 0.70),
            (80, 80, [18, 10, 10], [3, 3, 3], true, 0.85),
            (28, 28, [18, 160, 160], [1, 5, 5], true, 0.80),
        ] {
            let plan = data_plan(cin, cout, vol, k, flip).unwrap();
            let taps = k[0] * k[1] * (k[2] + plan.fold - 1);
            assert!(plan.halo[0] * plan.halo[1] * plan.halo[2] <= plan.hs);
            assert!(plan.cc * plan.hs <= HALO && plan.ktc * TILE_K <= KOFF);
            assert!(plan.box_.iter().product::<usize>() <= TILE_M);
            assert!(plan.nchunk * plan.cc >= cin && plan.ktc * TILE_K >= taps * plan.cc);
            assert_eq!(plan.hs % 16, 8);
            let useful = (cin * cout * k.iter().product::<usize>() * vol.iter().product::<usize>())
                as f64
                / plan.issued_macs(1) as f64;
            assert!(
                useful >= least,
                "{cin}->{cout} {k:?}: {useful:.3} ({plan:?})"
            );
        }
        // The single input channel's forward takes the pair fold (K 30 of 32, N 56 of 56).
        let e = data_plan(1, 28, [18, 160, 160], [1, 5, 5], false).unwrap();
        assert_eq!((e.fold, e.bn, e.ktc), (2, 56, 2));
    }

    #[test]
    fn weight_splits_cover_every_position_once() {
        for (sms, tiles, q) in [
            (132, 1, 7200),
            (132, 40, 460_800),
            (1, 1, 5),
            (132, 264, 100),
        ] {
            let (ns, chunk) = weight_splits(sms, tiles, q);
            assert_eq!(chunk % TILE_K, 0);
            assert!((ns - 1) * chunk < q && ns * chunk >= q, "{sms} {tiles} {q}");
            assert!(ns <= MAX_WEIGHT_SPLITS);
        }
        // More SMs, more splits when the tiles alone do not fill them.
        assert!(weight_splits(132, 2, 460_800).0 > weight_splits(16, 2, 460_800).0);
    }
}

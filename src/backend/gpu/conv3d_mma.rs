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
    pub ksplit: i32,
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
                let (halo, hs) = halo_of(bz, by, fold * bx, [kd, kh, kw]);
                let plane = halo[0] * halo[1] * halo[2];
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

/// MMA_WHALO of kernels/conv3d_mma.cu: the weight kernels' halo buffer (floats).
const WHALO: usize = 2048;
/// Weight-gradient blocks aimed for per SM: 5-9 fit one (kernel-report), so 4 keeps more than
/// half of them busy where the tiles alone are few, at a few MiB of partial sums.
const BLOCKS_PER_SM: usize = 4;

/// How a weight kernel covers one layer: K runs over output boxes of bz x by x bx positions (or
/// pairs of x-adjacent positions with `fold` 2; `ktc` K tiles each), the halo of the `cc` channels
/// an M tile of (ci, tap) rows touches staged per box (hz x hy x hx floats, channel stride hs); the
/// boxes split `splits` ways, `chunk` each. An M tile is TILE_M / ksplit rows: with ksplit 2 the
/// block's two warp pairs take alternate K tiles of a box, each into its own partial slice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WeightPlan {
    pub fold: usize,
    pub ksplit: usize,
    pub box_: [usize; 3],
    pub cc: usize,
    pub ktc: usize,
    pub halo: [usize; 3],
    pub hs: usize,
    /// The channel tile over fold * co columns (parity, co).
    pub bn: usize,
    /// M and N tiles.
    pub tiles: [usize; 2],
    /// Output boxes over all samples, splits, boxes per split.
    pub boxes: usize,
    pub splits: usize,
    pub chunk: usize,
}

impl WeightPlan {
    /// Rows of an M tile.
    pub fn tile_m(&self) -> usize {
        TILE_M / self.ksplit
    }

    pub fn issued_macs(&self) -> usize {
        self.tiles[0] * self.tile_m() * self.tiles[1] * self.bn * self.boxes * self.ktc * TILE_K
    }

    /// Partial-sum slices the reduction adds: one per (split, K group, parity).
    pub fn slices(&self) -> usize {
        self.splits * self.ksplit * self.fold
    }
}

/// The halo's dimensions and channel stride for a box (bz, by, bx) of x-width `span` outputs.
fn halo_of(bz: usize, by: usize, span: usize, [kd, kh, kw]: [usize; 3]) -> ([usize; 3], usize) {
    let halo = [
        bz + kd - 1,
        by + kh - 1,
        (span + kw - 1 + 3).div_ceil(4) * 4,
    ];
    let plane = halo[0] * halo[1] * halo[2];
    // Channel stride 8 mod 16 words: the four k-rows of a fragment in four bank groups.
    (halo, plane + (24 - plane % 16) % 16)
}

/// The weight plan of least issued MACs (then least staged halo) for `n` samples of `ci -> co`
/// over d x h x w with kernel k: M tiles of 64 or 32 rows, and for one input channel the pair fold
/// (rows (tap over kw + 1 columns), columns (parity, co), as the forward's); split for
/// BLOCKS_PER_SM per SM where the tiles alone are fewer. Fixed by the shape and SM count alone, so
/// the sum order (and the bits) are the same run after run on one device. None if no box's halo
/// fits the buffer.
pub fn weight_plan(
    sm_count: usize,
    n: usize,
    ci: usize,
    co: usize,
    [d, h, w]: [usize; 3],
    [kd, kh, kw]: [usize; 3],
) -> Option<WeightPlan> {
    let mut best: Option<(WeightPlan, usize, usize)> = None;
    // Boxes of any size up to TILE_M: a wide channel range may need a small one.
    let boxes_up_to = |m: usize| {
        (1..=m).flat_map(move |bx| {
            (1..=m / bx).flat_map(move |by| (1..=m / (bx * by)).map(move |bz| (bz, by, bx)))
        })
    };
    // The fold pays for its (kw + 1)-column taps only where a channel's taps fill few rows.
    let folds: &[usize] = if ci == 1 { &[1, 2] } else { &[1] };
    for &fold in folds {
        for ksplit in [1, 2] {
            let taps = kd * kh * (kw + fold - 1);
            let mt = TILE_M / ksplit;
            let bn = channel_tile(fold * co);
            let tiles = [(taps * ci).div_ceil(mt), (fold * co).div_ceil(bn)];
            // Channels one M tile of mt (ci, tap) rows can touch.
            let cc = ci.min((mt + 2 * taps - 2) / taps);
            for (bz, by, bx) in boxes_up_to(TILE_M) {
                let (halo, hs) = halo_of(bz, by, fold * bx, [kd, kh, kw]);
                if cc * hs > WHALO {
                    continue;
                }
                let ktc = (bz * by * bx).div_ceil(TILE_K);
                let boxes = n * d.div_ceil(bz) * h.div_ceil(by) * w.div_ceil(fold * bx);
                let want = (BLOCKS_PER_SM * sm_count)
                    .div_ceil(tiles[0] * tiles[1])
                    .clamp(1, MAX_WEIGHT_SPLITS);
                let chunk = boxes.div_ceil(want);
                let plan = WeightPlan {
                    fold,
                    ksplit,
                    box_: [bz, by, bx],
                    cc,
                    ktc,
                    halo,
                    hs,
                    bn,
                    tiles,
                    boxes,
                    splits: boxes.div_ceil(chunk),
                    chunk,
                };
                let key = (plan.issued_macs(), tiles[0] * boxes * cc * hs);
                if best.is_none_or(|(_, i, t)| key < (i, t)) {
                    best = Some((plan, key.0, key.1));
                }
            }
        }
    }
    best.map(|(p, _, _)| p)
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
        args.vec =
            (g.w.is_multiple_of(4) && src.is_multiple_of(16) && packed.is_multiple_of(16)) as i32;
        self.launch(
            &format!("conv3d_mma_data_{}_n{}", prec.name(), p.bn),
            [int("conv3d", g.n * p.boxes)? as u32, p.ntiles as u32, 1],
            MMA_THREADS,
            &args,
        )
    }

    /// Weight gradient: partial sums per (position split, K group, parity) into the workspace,
    /// then added in slice order by conv3d.cu's reduction.
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
        let sms = self.launcher.limits().sm_count as usize;
        let p = weight_plan(sms, g.n, g.ci, g.co, [g.d, g.h, g.w], [g.kd, g.kh, g.kw]).ok_or_else(
            || {
                crate::error::Error::Invalid(format!(
                    "conv3d: a {}x{}x{} kernel's input halo does not fit the tensor-core \
                     kernels' shared buffer; use --precision fp32 for this network",
                    g.kd, g.kh, g.kw
                ))
            },
        )?;
        int(OP, p.slices() * g.co * m)?;
        let part = self.scratch(a, p.slices() * g.co * m)?;
        let mut args = Self::mma_args(g, g.ci, g.co)?;
        args.src = x;
        args.w = dy;
        args.out = part;
        args.splits = p.splits as i32;
        args.chunk = int(OP, p.chunk)?;
        args.prec = prec_code(prec);
        args.fold = p.fold as i32;
        args.ksplit = p.ksplit as i32;
        [args.bz, args.by, args.bx] = p.box_.map(|v| v as i32);
        args.cc = p.cc as i32;
        args.ktc = p.ktc as i32;
        args.hs = p.hs as i32;
        [args.hz, args.hy, args.hx] = p.halo.map(|v| v as i32);
        // 16-byte copies: every row of the volume starts 16-byte aligned.
        args.vec = (g.w.is_multiple_of(4) && x.is_multiple_of(16) && dy.is_multiple_of(16)) as i32;
        int(OP, p.boxes)?;
        self.launch(
            &format!("conv3d_mma_weight_{}_n{}", prec.name(), p.bn),
            [p.tiles[0] as u32, p.tiles[1] as u32, p.splits as u32],
            MMA_THREADS,
            &args,
        )?;
        let mut red: ConvArgs = super::conv3d::conv_args(g, 0, 0, 0, part, dw, accumulate)?;
        red.splits = int(OP, p.slices())?;
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
        // A kernel whose taps overflow the offset table has no plan (the launcher's error says to
        // use fp32), and no weight plan fits its halo either.
        assert_eq!(data_plan(4, 4, [11; 3], [11; 3], false), None);
        assert_eq!(weight_plan(132, 1, 4, 4, [11; 3], [11; 3]), None);
    }

    #[test]
    fn weight_plans_cover_every_box_once_and_fit() {
        for (sms, n, ci, co, vol, k) in [
            (132, 1, 28, 28, [18, 160, 160], [3, 3, 3]),
            (132, 1, 80, 80, [18, 10, 10], [3, 3, 3]),
            (132, 1, 28, 3, [18, 160, 160], [1, 1, 1]),
            (132, 1, 1, 28, [18, 160, 160], [1, 5, 5]),
            (1, 2, 3, 5, [3, 5, 7], [3, 3, 3]),
            (132, 1, 64, 64, [1, 1, 1], [1, 1, 1]),
        ] {
            let p = weight_plan(sms, n, ci, co, vol, k).unwrap();
            let taps: usize = k.iter().product();
            assert!((p.splits - 1) * p.chunk < p.boxes && p.splits * p.chunk >= p.boxes);
            assert!(p.splits <= MAX_WEIGHT_SPLITS);
            assert!(p.cc * p.hs <= WHALO && p.hs % 16 == 8);
            assert!(p.box_.iter().product::<usize>() <= p.ktc * TILE_K && p.ktc * TILE_K <= 64);
            // Every M tile's rows lie in cc consecutive channels.
            let taps = taps / k[2] * (k[2] + p.fold - 1);
            assert!(p.tiles[0] * p.tile_m() >= taps * ci);
            assert!(p.tiles[1] * p.bn >= p.fold * co && p.fold * co > (p.tiles[1] - 1) * p.bn);
            for m0 in (0..taps * ci).step_by(p.tile_m()) {
                let last = (m0 + p.tile_m()).min(taps * ci) - 1;
                assert!(last / taps - m0 / taps < p.cc, "{ci} {taps}: {p:?}");
            }
        }
        // embed_in (1 -> 28, 1x5x5): the pair fold on an M tile of 32, (ky, kx') = 30 rows of 32,
        // (parity, co) = 56 columns, 50 of 60 (kx', parity) useful: 78% of issued MACs.
        let e = weight_plan(132, 1, 1, 28, [18, 160, 160], [1, 5, 5]).unwrap();
        assert_eq!((e.fold, e.ksplit, e.bn, e.tiles), (2, 2, 56, [1, 1]));
        let useful = (28 * 25 * 18 * 160 * 160) as f64 / e.issued_macs() as f64;
        assert!(useful >= 0.70, "{useful:.3} {e:?}");
        // More SMs, more splits when the tiles alone do not fill them.
        let k = [1, 3, 3];
        assert!(
            weight_plan(132, 1, 8, 8, [18, 80, 80], k).unwrap().splits
                > weight_plan(16, 1, 8, 8, [18, 80, 80], k).unwrap().splits
        );
    }
}

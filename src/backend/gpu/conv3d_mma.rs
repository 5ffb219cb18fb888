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
}

// SAFETY: #[repr(C)], u64 then i32 fields, 96 bytes without padding (asserted).
unsafe impl KernelArgs for MmaConvArgs {}
const _: () = assert!(std::mem::size_of::<MmaConvArgs>() == 96);

/// MMA_BM, MMA_BK and MMA_THREADS of kernels/conv3d_mma.cu.
pub const TILE_M: usize = 64;
pub const TILE_K: usize = 16;
const MMA_THREADS: u32 = 128;
/// The channel tiles the kernels are built for (multiples of the mma's n = 8).
pub const CHANNEL_TILES: [usize; 8] = [8, 16, 24, 32, 40, 48, 64, 80];
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
        let bn = channel_tile(cout);
        let ntiles = cout.div_ceil(bn);
        let npad = ntiles * bn;
        let kpad = (g.taps() * cin).div_ceil(TILE_K) * TILE_K;
        int("conv3d", kpad * npad)?;
        let packed = self.scratch(a, kpad * npad)?;
        let mut args = Self::mma_args(g, cin, cout)?;
        args.npad = npad as i32;
        args.flip = flip as i32;
        args.prec = prec_code(prec);
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
        args.vec = (g.spatial() % 4 == 0 && src % 16 == 0 && packed % 16 == 0) as i32;
        let ptiles = g.spatial().div_ceil(TILE_M);
        self.launch(
            &format!("conv3d_mma_data_{}_n{bn}", prec.name()),
            [(g.n * ptiles) as u32, ntiles as u32, 1],
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

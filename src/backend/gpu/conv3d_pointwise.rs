//! Launchers of kernels/conv3d_pointwise.cu: conv3d with a 1x1x1 kernel and few output channels
//! (the network's output layer, 28 -> 3) on CUDA cores in every precision, ahead of the f32
//! (conv3d.cu) and tensor-core (conv3d_mma.cu) kernels. Such a layer is memory-bound (ci + co
//! values moved per position for ci * co multiply-adds), and no tensor-core tile reaches 70%
//! useful MACs on it (docs/PERFORMANCE.md, "Shapes below 70% useful MACs"), so these kernels issue
//! only useful FMAs and stream each tensor once. Shape checks and regions are the caller's
//! (conv3d.rs).

use super::args::PointwiseArgs;
use super::{grid_1d, int, GpuArena, GpuBackend, Launcher, THREADS};
use crate::error::Result;
use crate::ops::conv3d::Conv3dGeom;
use crate::precision::Precision;

/// PW_MAX_CO and PW_MAX_W of kernels/conv3d_pointwise.cu: the most output channels (the
/// accumulators are registers, one kernel body per count) and weights (staged in shared memory).
pub const MAX_CO: usize = 5;
pub const MAX_WEIGHTS: usize = 1280;
/// PW_WARPS: the weight kernel's input channels (one warp each) per block of 256 threads.
pub const CHANNELS_PER_BLOCK: usize = 8;
/// Positions a warp of the weight kernel covers per step (32 lanes x 4): split ranges are
/// multiples of it, so 16-byte loads never straddle a range and the lanes stay balanced.
pub const WARP_SWEEP: usize = 128;
/// Weight-gradient blocks aimed for per SM: 8 of 256 threads fill an SM's 2,048 threads, which a
/// streaming kernel needs to keep enough loads in flight.
const BLOCKS_PER_SM: usize = 8;
const MAX_SPLITS: usize = 512;

/// Whether a convolution takes these kernels: 1x1x1, at most MAX_CO output channels and
/// MAX_WEIGHTS weights. (conv3d is stride 1 with "same" padding, which a 1x1x1 kernel has none
/// of: each output position reads the input at the same position only.)
pub fn is_narrow(g: &Conv3dGeom) -> bool {
    g.taps() == 1 && (1..=MAX_CO).contains(&g.co) && g.ci * g.co <= MAX_WEIGHTS
}

/// (splits, chunk) of the weight gradient's n * sp positions: enough splits that the grid of
/// ceil(ci / 8) x splits blocks reaches BLOCKS_PER_SM per SM, in WARP_SWEEP-aligned chunks. Fixed
/// by the shape and the SM count alone, so the sum order (and the bits) never change from one
/// call to the next on one kind of device.
pub fn weight_splits(sm_count: usize, g: &Conv3dGeom) -> (usize, usize) {
    let q = g.n * g.spatial();
    let groups = g.ci.div_ceil(CHANNELS_PER_BLOCK);
    let want = (BLOCKS_PER_SM * sm_count.max(1))
        .div_ceil(groups)
        .clamp(1, MAX_SPLITS);
    let chunk = q.div_ceil(want).div_ceil(WARP_SWEEP).max(1) * WARP_SWEEP;
    (q.div_ceil(chunk).max(1), chunk)
}

fn suffix(p: Precision) -> &'static str {
    match p {
        Precision::F32 => "f32",
        Precision::Tf32 => "tf32",
        Precision::Bf16 => "bf16",
    }
}

fn args(g: &Conv3dGeom) -> Result<PointwiseArgs> {
    const OP: &str = "conv3d";
    int(OP, g.n * g.ci.max(g.co) * g.spatial())?;
    Ok(PointwiseArgs {
        n: int(OP, g.n)?,
        ci: int(OP, g.ci)?,
        co: int(OP, g.co)?,
        sp: int(OP, g.spatial())?,
        ..Default::default()
    })
}

/// 16-byte loads and stores: every channel plane of every tensor starts 16-byte aligned.
fn vec(g: &Conv3dGeom, ptrs: &[u64]) -> i32 {
    (g.spatial().is_multiple_of(4) && ptrs.iter().all(|p| p.is_multiple_of(16))) as i32
}

/// Thread count of the data kernels: one per 4 positions with 16-byte loads, else one per position.
fn data_grid(g: &Conv3dGeom, vec: i32) -> [u32; 3] {
    let q = g.n * g.spatial();
    grid_1d(if vec != 0 { q / 4 } else { q })
}

impl<L: Launcher> GpuBackend<L> {
    /// y = conv(x, w) + bias (`bias` 0 for none); `accumulate` adds to y.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn conv3d_pointwise_forward(
        &self,
        g: &Conv3dGeom,
        x: u64,
        w: u64,
        bias: u64,
        y: u64,
        accumulate: i32,
    ) -> Result<()> {
        let mut a = args(g)?;
        (a.x, a.w, a.bias, a.out, a.accumulate) = (x, w, bias, y, accumulate);
        a.vec = vec(g, &[x, y]);
        self.launch(
            &format!("conv3d_pointwise_narrow_forward_{}", suffix(self.precision)),
            data_grid(g, a.vec),
            THREADS,
            &a,
        )
    }

    /// dx (+)= conv^T(dy, w).
    pub(super) fn conv3d_pointwise_backward_input(
        &self,
        g: &Conv3dGeom,
        dy: u64,
        w: u64,
        dx: u64,
        accumulate: i32,
    ) -> Result<()> {
        let mut a = args(g)?;
        (a.dy, a.w, a.out, a.accumulate) = (dy, w, dx, accumulate);
        a.vec = vec(g, &[dy, dx]);
        self.launch(
            &format!(
                "conv3d_pointwise_narrow_backward_input_{}",
                suffix(self.precision)
            ),
            data_grid(g, a.vec),
            THREADS,
            &a,
        )
    }

    /// dw (+)= sum over positions of dy x^T: partial sums per position split into the workspace,
    /// then added in split order by conv3d.cu's reduction.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn conv3d_pointwise_backward_weight(
        &self,
        ar: &mut GpuArena<L::Buf>,
        g: &Conv3dGeom,
        x: u64,
        dy: u64,
        dw: u64,
        accumulate: i32,
    ) -> Result<()> {
        const OP: &str = "conv3d_backward_weight";
        let (ns, chunk) = weight_splits(self.launcher.limits().sm_count as usize, g);
        let count = g.co * g.ci;
        int(OP, ns * count)?;
        let part = self.scratch(ar, ns * count)?;
        let mut a = args(g)?;
        (a.x, a.dy, a.out) = (x, dy, part);
        a.vec = vec(g, &[x, dy]);
        a.splits = int(OP, ns)?;
        a.chunk = int(OP, chunk)?;
        self.launch(
            &format!(
                "conv3d_pointwise_narrow_backward_weight_{}",
                suffix(self.precision)
            ),
            [g.ci.div_ceil(CHANNELS_PER_BLOCK) as u32, ns as u32, 1],
            THREADS,
            &a,
        )?;
        let mut red = super::conv3d::conv_args(g, 0, 0, 0, part, dw, accumulate)?;
        red.splits = a.splits;
        self.launch_1d("conv3d_backward_weight_reduce", count, &red)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geom(n: usize, ci: usize, co: usize, [d, h, w]: [usize; 3], k: usize) -> Conv3dGeom {
        Conv3dGeom {
            n,
            ci,
            co,
            d,
            h,
            w,
            kd: 1,
            kh: k,
            kw: k,
        }
    }

    #[test]
    fn the_rule_takes_the_output_layer_and_nothing_wide() {
        assert!(is_narrow(&geom(1, 28, 3, [18, 160, 160], 1)));
        assert!(is_narrow(&geom(1, 256, 5, [2, 3, 4], 1)));
        assert!(is_narrow(&geom(1, 1280, 1, [2, 3, 4], 1)));
        assert!(!is_narrow(&geom(1, 257, 5, [2, 3, 4], 1)), "1285 weights");
        assert!(
            !is_narrow(&geom(1, 28, 6, [2, 3, 4], 1)),
            "6 output channels"
        );
        assert!(!is_narrow(&geom(1, 28, 3, [2, 3, 4], 3)), "a 1x3x3 kernel");
    }

    #[test]
    fn weight_splits_cover_every_position_once() {
        for (sms, g) in [
            (132, geom(1, 28, 3, [18, 160, 160], 1)),
            (132, geom(2, 33, 3, [1, 4, 5], 1)),
            (16, geom(3, 256, 5, [3, 7, 9], 1)),
            (1, geom(1, 1, 1, [1, 1, 1], 1)),
        ] {
            let (ns, chunk) = weight_splits(sms, &g);
            let q = g.n * g.spatial();
            assert!(chunk.is_multiple_of(WARP_SWEEP));
            assert!(
                (ns - 1) * chunk < q && ns * chunk >= q,
                "{g:?}: {ns} x {chunk}"
            );
            assert!(ns <= MAX_SPLITS);
        }
        // The output layer on an H200: 4 channel groups x 258 splits, about 8 blocks per SM.
        let (ns, chunk) = weight_splits(132, &geom(1, 28, 3, [18, 160, 160], 1));
        assert_eq!((ns, chunk), (258, 1792));
        assert!(
            weight_splits(16, &geom(1, 28, 3, [18, 160, 160], 1)).0 < ns,
            "fewer SMs, fewer splits"
        );
    }
}

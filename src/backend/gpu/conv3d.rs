//! Launchers of kernels/conv3d.cu: the forward and input gradient as implicit GEMMs over 64x64
//! tiles (positions x output channels), the weight gradient as split partial GEMMs over positions
//! plus a fixed-order reduction, and the bias gradient as a split per-channel sum. Narrow 1x1x1
//! layers go to conv3d_pointwise.rs and the `tf32` / `bf16` precisions to conv3d_mma.rs first.

use super::args::{ChanArgs, ConvArgs};
use super::conv3d_pointwise;
use super::{acc, int, splits, GpuArena, GpuBackend, Launcher, MAX_CHANNEL_SPLITS, THREADS};
use crate::backend::{Region, View, Write};
use crate::error::Result;
use crate::ops::{self, conv3d::Conv3dGeom};
use crate::precision::Precision;

/// conv3d weight-gradient tiles (BM, BN, BK of kernels/conv3d.cu).
const CONV_TILE: usize = 64;
const CONV_BK: usize = 16;
/// The weight gradient splits positions until its grid has the device's `target_blocks` (two per
/// SM), at most this many ways.
const MAX_WGRAD_SPLITS: usize = 64;

pub(super) fn conv_args(
    g: &Conv3dGeom,
    x: u64,
    w: u64,
    bias: u64,
    dy: u64,
    out: u64,
    accumulate: i32,
) -> Result<ConvArgs> {
    const OP: &str = "conv3d";
    int(OP, g.n * g.ci.max(g.co) * g.spatial())?;
    Ok(ConvArgs {
        x,
        w,
        bias,
        dy,
        out,
        n: int(OP, g.n)?,
        ci: int(OP, g.ci)?,
        co: int(OP, g.co)?,
        d: int(OP, g.d)?,
        h: int(OP, g.h)?,
        wd: int(OP, g.w)?,
        kd: int(OP, g.kd)?,
        kh: int(OP, g.kh)?,
        kw: int(OP, g.kw)?,
        accumulate,
        splits: 1,
        chunk: 1,
    })
}

pub(super) fn forward<L: Launcher>(
    b: &GpuBackend<L>,
    a: &mut GpuArena<L::Buf>,
    x: View,
    w: View,
    bias: Option<Region>,
    y: View,
) -> Result<()> {
    let _r = b.range("conv3d_forward");
    let (g, operands) = ops::conv3d::check_forward(x, w, bias, y)?;
    operands.check(a.len)?;
    if y.region.len == 0 {
        return Ok(());
    }
    let [xp, wp, bp, yp] = b.ptrs(a, [x.region, w.region, operands.ins[2], y.region]);
    let bp = if bias.is_some() { bp } else { 0 };
    // Before the precision's choice: no tensor-core tile suits these layers (conv3d_pointwise.rs).
    if conv3d_pointwise::is_narrow(&g) {
        return b.conv3d_pointwise_forward(&g, xp, wp, bp, yp, 0);
    }
    if b.precision != Precision::F32 {
        return b.conv3d_mma_data(a, &g, b.precision, false, xp, wp, bp, yp, 0);
    }
    let args = conv_args(&g, xp, wp, bp, 0, yp, 0)?;
    let tiles = g.spatial().div_ceil(CONV_TILE);
    b.launch(
        "conv3d_forward",
        [(g.n * tiles) as u32, g.co.div_ceil(CONV_TILE) as u32, 1],
        THREADS,
        &args,
    )
}

pub(super) fn backward_input<L: Launcher>(
    b: &GpuBackend<L>,
    a: &mut GpuArena<L::Buf>,
    dy: View,
    w: View,
    dx: View,
    mode: Write,
) -> Result<()> {
    let _r = b.range("conv3d_backward_input");
    let (g, operands) = ops::conv3d::check_backward_input(dy, w, dx)?;
    operands.check(a.len)?;
    if dx.region.len == 0 {
        return Ok(());
    }
    let [gy, wp, gx] = b.ptrs(a, [dy.region, w.region, dx.region]);
    if conv3d_pointwise::is_narrow(&g) {
        return b.conv3d_pointwise_backward_input(&g, gy, wp, gx, acc(mode));
    }
    if b.precision != Precision::F32 {
        return b.conv3d_mma_data(a, &g, b.precision, true, gy, wp, 0, gx, acc(mode));
    }
    let args = conv_args(&g, 0, wp, 0, gy, gx, acc(mode))?;
    let tiles = g.spatial().div_ceil(CONV_TILE);
    b.launch(
        "conv3d_backward_input",
        [(g.n * tiles) as u32, g.ci.div_ceil(CONV_TILE) as u32, 1],
        THREADS,
        &args,
    )
}

/// (splits, chunk) of the weight gradient's positions: enough splits that the grid of
/// `tiles` x splits blocks reaches `target_blocks`, in BK-aligned chunks. Fixed by the shape and
/// the device alone, so the sum order (and the bits) never change from one call to the next.
pub fn wgrad_splits(g: &Conv3dGeom, target_blocks: usize) -> (usize, usize) {
    let k = g.ci * g.taps();
    let tiles = k.div_ceil(CONV_TILE) * g.co.div_ceil(CONV_TILE);
    let q = g.n * g.spatial();
    let want = target_blocks.div_ceil(tiles).clamp(1, MAX_WGRAD_SPLITS);
    let chunk = q.div_ceil(want).div_ceil(CONV_BK).max(1) * CONV_BK;
    (q.div_ceil(chunk).max(1), chunk)
}

pub(super) fn backward_weight<L: Launcher>(
    b: &GpuBackend<L>,
    a: &mut GpuArena<L::Buf>,
    x: View,
    dy: View,
    dw: View,
    mode: Write,
) -> Result<()> {
    let _r = b.range("conv3d_backward_weight");
    let (g, operands) = ops::conv3d::check_backward_weight(x, dy, dw)?;
    operands.check(a.len)?;
    if dw.region.len == 0 {
        return Ok(());
    }
    if conv3d_pointwise::is_narrow(&g) {
        let [xp, gy, gw] = b.ptrs(a, [x.region, dy.region, dw.region]);
        return b.conv3d_pointwise_backward_weight(a, &g, xp, gy, gw, acc(mode));
    }
    if b.precision != Precision::F32 {
        let [xp, gy, gw] = b.ptrs(a, [x.region, dy.region, dw.region]);
        return b.conv3d_mma_weight(a, &g, b.precision, xp, gy, gw, acc(mode));
    }
    let k = g.ci * g.taps();
    let (ns, chunk) = wgrad_splits(&g, b.launcher.limits().target_blocks());
    int("conv3d_backward_weight", ns * g.co * k)?;
    let part = b.scratch(a, ns * g.co * k)?;
    let [xp, gy, gw] = b.ptrs(a, [x.region, dy.region, dw.region]);
    let mut args = conv_args(&g, xp, 0, 0, gy, part, 0)?;
    args.splits = ns as i32;
    args.chunk = int("conv3d_backward_weight", chunk)?;
    b.launch(
        "conv3d_backward_weight_partial",
        [
            k.div_ceil(CONV_TILE) as u32,
            g.co.div_ceil(CONV_TILE) as u32,
            ns as u32,
        ],
        THREADS,
        &args,
    )?;
    args.dy = part;
    args.out = gw;
    args.accumulate = acc(mode);
    b.launch_1d("conv3d_backward_weight_reduce", g.co * k, &args)
}

/// Per-channel sums of dy into `db` (the conv bias gradient; conv_transpose's too).
pub(super) fn backward_bias<L: Launcher>(
    b: &GpuBackend<L>,
    a: &mut GpuArena<L::Buf>,
    dy: View,
    db: Region,
    mode: Write,
) -> Result<()> {
    const OP: &str = "conv3d_backward_bias";
    let _r = b.range(OP);
    ops::conv3d::check_backward_bias(dy, db)?.check(a.len)?;
    let s = dy.shape;
    let (sp_, ch) = (s.spatial(), s.c);
    int(OP, dy.region.len)?;
    let (ns, chunk) = splits(s.n * sp_, MAX_CHANNEL_SPLITS);
    if ch == 0 {
        return Ok(());
    }
    let part = b.scratch(a, ch * ns)?;
    let [gy, gb] = b.ptrs(a, [dy.region, db]);
    let args = ChanArgs {
        dy: gy,
        dbeta: gb,
        part,
        n: s.n as i32,
        c: s.c as i32,
        sp: sp_ as i32,
        splits: ns as i32,
        chunk: chunk as i32,
        accumulate: acc(mode),
        ..Default::default()
    };
    b.launch(
        "conv3d_backward_bias_partial",
        [ns as u32, ch as u32, 1],
        THREADS,
        &args,
    )?;
    b.launch_1d("conv3d_backward_bias_finalize", ch, &args)
}

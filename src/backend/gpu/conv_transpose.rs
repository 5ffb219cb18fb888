//! Launchers of kernels/conv_transpose.cu: the decoder's 1x2x2 upsampling. Forward and input
//! gradient one thread per output element; the weight gradient one block per (ci, co) pair.

use super::args::ConvTArgs;
use super::{acc, int, GpuArena, GpuBackend, Launcher, THREADS};
use crate::backend::{Region, View, Write};
use crate::error::Result;
use crate::ops::{self, conv_transpose::ConvTransposeGeom};

fn convt_args(
    g: &ConvTransposeGeom,
    x: u64,
    w: u64,
    bias: u64,
    dy: u64,
    out: u64,
    accumulate: i32,
) -> Result<ConvTArgs> {
    const OP: &str = "conv_transpose";
    int(OP, 4 * g.n * g.ci.max(g.co) * g.d * g.h * g.w)?;
    Ok(ConvTArgs {
        x,
        w,
        bias,
        dy,
        out,
        n: g.n as i32,
        ci: g.ci as i32,
        co: g.co as i32,
        d: g.d as i32,
        h: g.h as i32,
        wd: g.w as i32,
        accumulate,
        pad: 0,
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
    let _r = b.range("conv_transpose_forward");
    let (g, operands) = ops::conv_transpose::check_forward(x, w, bias, y)?;
    operands.check(a.len)?;
    let [xp, wp, bp, yp] = b.ptrs(a, [x.region, w.region, operands.ins[2], y.region]);
    let args = convt_args(&g, xp, wp, if bias.is_some() { bp } else { 0 }, 0, yp, 0)?;
    b.launch_1d("conv_transpose_forward", y.region.len, &args)
}

pub(super) fn backward_input<L: Launcher>(
    b: &GpuBackend<L>,
    a: &mut GpuArena<L::Buf>,
    dy: View,
    w: View,
    dx: View,
    mode: Write,
) -> Result<()> {
    let _r = b.range("conv_transpose_backward_input");
    let (g, operands) = ops::conv_transpose::check_backward_input(dy, w, dx)?;
    operands.check(a.len)?;
    let [gy, wp, gx] = b.ptrs(a, [dy.region, w.region, dx.region]);
    let args = convt_args(&g, 0, wp, 0, gy, gx, acc(mode))?;
    b.launch_1d("conv_transpose_backward_input", dx.region.len, &args)
}

pub(super) fn backward_weight<L: Launcher>(
    b: &GpuBackend<L>,
    a: &mut GpuArena<L::Buf>,
    x: View,
    dy: View,
    dw: View,
    mode: Write,
) -> Result<()> {
    let _r = b.range("conv_transpose_backward_weight");
    let (g, operands) = ops::conv_transpose::check_backward_weight(x, dy, dw)?;
    operands.check(a.len)?;
    if dw.region.len == 0 {
        return Ok(());
    }
    let [xp, gy, gw] = b.ptrs(a, [x.region, dy.region, dw.region]);
    let args = convt_args(&g, xp, 0, 0, gy, gw, acc(mode))?;
    b.launch(
        "conv_transpose_backward_weight",
        [(g.ci * g.co) as u32, 1, 1],
        THREADS,
        &args,
    )
}

//! Launchers of kernels/maxpool.cu: 1x2x2 pooling, one thread per output (forward) or per pooled
//! gradient (backward, which finds the arg-max again from x).

use super::args::PoolArgs;
use super::{acc, int, GpuArena, GpuBackend, Launcher};
use crate::backend::{View, Write};
use crate::error::Result;
use crate::ops;

fn pool_args(x: View, xp: u64, dy: u64, out: u64, accumulate: i32) -> Result<PoolArgs> {
    let s = x.shape;
    int("maxpool", x.region.len)?;
    Ok(PoolArgs {
        x: xp,
        dy,
        out,
        planes: (s.n * s.c * s.d) as i32,
        h: s.h as i32,
        wd: s.w as i32,
        accumulate,
    })
}

pub(super) fn forward<L: Launcher>(
    b: &GpuBackend<L>,
    a: &mut GpuArena<L::Buf>,
    x: View,
    y: View,
) -> Result<()> {
    let _r = b.range("maxpool_forward");
    ops::maxpool::check_forward(x, y)?.check(a.len)?;
    let [xp, yp] = b.ptrs(a, [x.region, y.region]);
    let args = pool_args(x, xp, 0, yp, 0)?;
    b.launch_1d("maxpool_forward", y.region.len, &args)
}

pub(super) fn backward<L: Launcher>(
    b: &GpuBackend<L>,
    a: &mut GpuArena<L::Buf>,
    x: View,
    dy: View,
    dx: View,
    mode: Write,
) -> Result<()> {
    let _r = b.range("maxpool_backward");
    ops::maxpool::check_backward(x, dy, dx)?.check(a.len)?;
    let [xp, gy, gx] = b.ptrs(a, [x.region, dy.region, dx.region]);
    let args = pool_args(x, xp, gy, gx, acc(mode))?;
    b.launch_1d("maxpool_backward", dy.region.len, &args)
}

//! Launchers of kernels/batchnorm.cu: per-channel statistics as split partial sums (blocks of
//! splits x channels) and a fixed-order finalize, then one thread per element to normalise.

use super::args::ChanArgs;
use super::{acc, int, splits, GpuArena, GpuBackend, Launcher, MAX_CHANNEL_SPLITS, THREADS};
use crate::backend::{BnRunning, BnStats, Region, View, Write};
use crate::error::Result;
use crate::ops::{self, batchnorm::BatchNormArgs};

/// The shape fields and split of a per-channel reduction over x, with the workspace for its
/// partials (c x splits x 2) and totals (c x 2).
fn chan_args<L: Launcher>(
    b: &GpuBackend<L>,
    a: &mut GpuArena<L::Buf>,
    x: View,
    op: &'static str,
) -> Result<ChanArgs> {
    let s = x.shape;
    int(op, x.region.len)?;
    let (ns, chunk) = splits(s.n * s.spatial(), MAX_CHANNEL_SPLITS);
    let part = b.scratch(a, s.c * ns * 2 + 2 * s.c)?;
    Ok(ChanArgs {
        part,
        tot: part + 4 * (s.c * ns * 2) as u64,
        n: s.n as i32,
        c: s.c as i32,
        sp: s.spatial() as i32,
        splits: ns as i32,
        chunk: chunk as i32,
        ..Default::default()
    })
}

#[allow(clippy::too_many_arguments)]
pub(super) fn forward_train<L: Launcher>(
    b: &GpuBackend<L>,
    a: &mut GpuArena<L::Buf>,
    x: View,
    gamma: Region,
    beta: Region,
    y: View,
    stats: BnStats,
    running: Option<BnRunning>,
    args: BatchNormArgs,
) -> Result<()> {
    const OP: &str = "batchnorm";
    let _r = b.range(OP);
    let operands = ops::batchnorm::check_train(x, gamma, beta, y, stats, running)?;
    operands.check(a.len)?;
    let [_, _, _, rm, rv] = operands.outs;
    let c = x.shape.c;
    let mut ca = chan_args(b, a, x, OP)?;
    if c == 0 {
        return Ok(());
    }
    let [xp, gp, bp, yp, mp, ip, rmp, rvp] = b.ptrs(
        a,
        [
            x.region,
            gamma,
            beta,
            y.region,
            stats.mean,
            stats.invstd,
            rm,
            rv,
        ],
    );
    let m = (x.shape.n * x.shape.spatial()) as f64;
    ca.x = xp;
    ca.gamma = gp;
    ca.beta = bp;
    ca.y = yp;
    ca.mean = mp;
    ca.invstd = ip;
    if running.is_some() {
        ca.rmean = rmp;
        ca.rvar = rvp;
        ca.has_running = 1;
    }
    ca.eps = args.eps as f32;
    ca.momentum = args.momentum as f32;
    ca.unbiased = if m > 1.0 { (m / (m - 1.0)) as f32 } else { 1.0 };
    let grid = [ca.splits as u32, c as u32, 1];
    for mode in [0, 1] {
        ca.mode = mode;
        b.launch("bn_partial", grid, THREADS, &ca)?;
        b.launch_1d("bn_finalize", c, &ca)?;
    }
    ca.mode = 0;
    b.launch_1d("bn_apply", x.region.len, &ca)
}

pub(super) fn apply<L: Launcher>(
    b: &GpuBackend<L>,
    a: &mut GpuArena<L::Buf>,
    x: View,
    gamma: Region,
    beta: Region,
    stats: BnStats,
    y: View,
) -> Result<()> {
    const OP: &str = "batchnorm_apply";
    let _r = b.range(OP);
    ops::batchnorm::check_apply(OP, x, gamma, beta, stats, y)?.check(a.len)?;
    int(OP, x.region.len)?;
    let [xp, gp, bp, mp, ip, yp] = b.ptrs(
        a,
        [x.region, gamma, beta, stats.mean, stats.invstd, y.region],
    );
    let s = x.shape;
    // mode 0 of bn_apply: the same kernel and formula as the training forward's last pass.
    let ca = ChanArgs {
        x: xp,
        gamma: gp,
        beta: bp,
        mean: mp,
        invstd: ip,
        y: yp,
        n: s.n as i32,
        c: s.c as i32,
        sp: s.spatial() as i32,
        mode: 0,
        ..Default::default()
    };
    b.launch_1d("bn_apply", x.region.len, &ca)
}

#[allow(clippy::too_many_arguments)]
pub(super) fn forward_infer<L: Launcher>(
    b: &GpuBackend<L>,
    a: &mut GpuArena<L::Buf>,
    x: View,
    gamma: Region,
    beta: Region,
    running: BnRunning,
    y: View,
    eps: f64,
) -> Result<()> {
    const OP: &str = "batchnorm_infer";
    let _r = b.range(OP);
    ops::batchnorm::check_infer(x, gamma, beta, running, y)?.check(a.len)?;
    int(OP, x.region.len)?;
    let [xp, gp, bp, rmp, rvp, yp] = b.ptrs(
        a,
        [x.region, gamma, beta, running.mean, running.var, y.region],
    );
    let s = x.shape;
    let ca = ChanArgs {
        x: xp,
        gamma: gp,
        beta: bp,
        rmean: rmp,
        rvar: rvp,
        y: yp,
        n: s.n as i32,
        c: s.c as i32,
        sp: s.spatial() as i32,
        mode: 1,
        eps: eps as f32,
        ..Default::default()
    };
    b.launch_1d("bn_apply", x.region.len, &ca)
}

#[allow(clippy::too_many_arguments)]
pub(super) fn backward<L: Launcher>(
    b: &GpuBackend<L>,
    a: &mut GpuArena<L::Buf>,
    x: View,
    dy: View,
    gamma: Region,
    stats: BnStats,
    dx: View,
    dgamma: Region,
    dbeta: Region,
    mode: Write,
) -> Result<()> {
    const OP: &str = "batchnorm_backward";
    let _r = b.range(OP);
    ops::batchnorm::check_backward(x, dy, gamma, stats, dx, dgamma, dbeta)?.check(a.len)?;
    let c = x.shape.c;
    let mut ca = chan_args(b, a, x, OP)?;
    if c == 0 {
        return Ok(());
    }
    let [xp, gy, gp, mp, ip, gx, dgp, dbp] = b.ptrs(
        a,
        [
            x.region,
            dy.region,
            gamma,
            stats.mean,
            stats.invstd,
            dx.region,
            dgamma,
            dbeta,
        ],
    );
    ca.x = xp;
    ca.dy = gy;
    ca.gamma = gp;
    ca.mean = mp;
    ca.invstd = ip;
    ca.y = gx;
    ca.dgamma = dgp;
    ca.dbeta = dbp;
    ca.mode = 2;
    ca.accumulate = acc(mode);
    b.launch("bn_partial", [ca.splits as u32, c as u32, 1], THREADS, &ca)?;
    b.launch_1d("bn_finalize", c, &ca)?;
    b.launch_1d("bn_backward_apply", x.region.len, &ca)
}

//! Launchers of kernels/loss.cu: class weights (split per-channel counts, finalize, apply), the
//! weighted masked BCE (split partial sums, one finalize block, then the gradient) and sigmoid.

use super::args::LossArgs;
use super::{int, splits, GpuArena, GpuBackend, Launcher, MAX_CHANNEL_SPLITS, THREADS};
use crate::backend::{Region, View};
use crate::error::Result;
use crate::ops;

const MAX_LOSS_SPLITS: usize = 1024;

pub(super) fn weights<L: Launcher>(
    b: &GpuBackend<L>,
    a: &mut GpuArena<L::Buf>,
    target: View,
    mask: View,
    weight: View,
) -> Result<()> {
    const OP: &str = "bce_weights";
    let _r = b.range(OP);
    ops::loss::check_weights(target, mask, weight)?.check(a.len)?;
    let s = target.shape;
    int(OP, target.region.len)?;
    if s.c == 0 {
        return Ok(());
    }
    let (ns, chunk) = splits(s.n * s.spatial(), MAX_CHANNEL_SPLITS);
    let ws = b.scratch(a, s.c * ns * 2 + 2 * s.c)?;
    let [tp, mp, wp] = b.ptrs(a, [target.region, mask.region, weight.region]);
    let la = LossArgs {
        t: tp,
        m: mp,
        weight: wp,
        part: ws,
        tot: ws + 4 * (s.c * ns * 2) as u64,
        n: s.n as i32,
        c: s.c as i32,
        sp: s.spatial() as i32,
        total: target.region.len as i32,
        splits: ns as i32,
        chunk: chunk as i32,
        ..Default::default()
    };
    b.launch(
        "bce_count_partial",
        [ns as u32, s.c as u32, 1],
        THREADS,
        &la,
    )?;
    b.launch_1d("bce_weights_finalize", s.c, &la)?;
    b.launch_1d("bce_weights_apply", target.region.len, &la)
}

#[allow(clippy::too_many_arguments)]
pub(super) fn bce<L: Launcher>(
    b: &GpuBackend<L>,
    a: &mut GpuArena<L::Buf>,
    logits: View,
    target: View,
    weight: View,
    mask: View,
    loss: Region,
    dlogits: Option<View>,
) -> Result<()> {
    const OP: &str = "bce_loss";
    let _r = b.range(OP);
    let operands = ops::loss::check_bce(logits, target, weight, mask, loss, dlogits)?;
    operands.check(a.len)?;
    let dz = operands.outs[1];
    let total = logits.region.len;
    int(OP, total)?;
    let (ns, chunk) = splits(total, MAX_LOSS_SPLITS);
    let ws = b.scratch(a, 2 * ns + 1)?;
    let [zp, tp, wp, mp, lp, dzp] = b.ptrs(
        a,
        [
            logits.region,
            target.region,
            weight.region,
            mask.region,
            loss,
            dz,
        ],
    );
    let la = LossArgs {
        z: zp,
        t: tp,
        w: wp,
        m: mp,
        dz: dzp,
        loss: lp,
        part: ws,
        tot: ws + 4 * (2 * ns) as u64,
        total: total as i32,
        splits: ns as i32,
        chunk: chunk as i32,
        ..Default::default()
    };
    b.launch("bce_loss_partial", [ns as u32, 1, 1], THREADS, &la)?;
    b.launch("bce_loss_finalize", [1, 1, 1], THREADS, &la)?;
    if dlogits.is_some() {
        b.launch_1d("bce_grad", total, &la)?;
    }
    Ok(())
}

pub(super) fn sigmoid<L: Launcher>(
    b: &GpuBackend<L>,
    a: &mut GpuArena<L::Buf>,
    x: View,
    y: View,
) -> Result<()> {
    let _r = b.range("sigmoid");
    ops::loss::check_sigmoid(x, y)?.check(a.len)?;
    let [xp, yp] = b.ptrs(a, [x.region, y.region]);
    let la = LossArgs {
        z: xp,
        dz: yp,
        total: int("sigmoid", x.region.len)?,
        ..Default::default()
    };
    b.launch_1d("sigmoid_map", x.region.len, &la)
}

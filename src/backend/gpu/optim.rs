//! Launchers of kernels/optim.cu: Adam and SGD, one thread per parameter.

use super::args::{AdamArgs, SgdArgs};
use super::{int, GpuArena, GpuBackend, Launcher};
use crate::backend::Region;
use crate::error::Result;
use crate::ops::{self, optim::AdamParams, optim::SgdParams};

#[allow(clippy::too_many_arguments)]
pub(super) fn adam<L: Launcher>(
    b: &GpuBackend<L>,
    a: &mut GpuArena<L::Buf>,
    param: Region,
    grad: Region,
    m: Region,
    v: Region,
    hp: AdamParams,
    step: u64,
) -> Result<()> {
    let _r = b.range("adam_step");
    ops::optim::check_adam(param, grad, m, v, step)?.check(a.len)?;
    let (lr_t, inv_bc2) = hp.corrections(step);
    let [pp, gp, mp, vp] = b.ptrs(a, [param, grad, m, v]);
    let args = AdamArgs {
        p: pp,
        g: gp,
        m: mp,
        v: vp,
        n: int("adam_step", param.len)?,
        beta1: hp.beta1 as f32,
        beta2: hp.beta2 as f32,
        one_minus_beta1: (1.0 - hp.beta1) as f32,
        one_minus_beta2: (1.0 - hp.beta2) as f32,
        lr_t: lr_t as f32,
        inv_bc2: inv_bc2 as f32,
        eps: hp.eps as f32,
    };
    b.launch_1d("adam_step", param.len, &args)
}

pub(super) fn sgd<L: Launcher>(
    b: &GpuBackend<L>,
    a: &mut GpuArena<L::Buf>,
    param: Region,
    grad: Region,
    velocity: Option<Region>,
    hp: SgdParams,
) -> Result<()> {
    let _r = b.range("sgd_step");
    let operands = ops::optim::check_sgd(param, grad, velocity)?;
    operands.check(a.len)?;
    let [pp, gp, vp] = b.ptrs(a, [param, grad, operands.outs[1]]);
    let args = SgdArgs {
        p: pp,
        g: gp,
        vel: if velocity.is_some() { vp } else { 0 },
        n: int("sgd_step", param.len)?,
        lr: hp.lr as f32,
        momentum: hp.momentum as f32,
        weight_decay: hp.weight_decay as f32,
    };
    b.launch_1d("sgd_step", param.len, &args)
}

//! The CPU backend: every op of `Backend`, generic over f32 and f64, multi-threaded with rayon.

pub mod batchnorm;
pub mod conv3d;
#[cfg(target_arch = "x86_64")]
pub mod conv3d_amx;
#[cfg(target_arch = "x86_64")]
pub mod conv3d_avx512;
#[cfg(target_arch = "x86_64")]
pub mod conv3d_backward_weight_avx512;
pub mod conv3d_bf16;
pub mod conv_transpose;
pub mod coupling;
pub mod elementwise;
pub(crate) mod gemm;
pub mod loss;
pub mod maxpool;
pub(crate) mod mem;
pub mod mixed;
pub mod optim;
pub(crate) mod simd;
pub mod storage;

use super::{Backend, BnRunning, BnStats, Region, View, Write};
use crate::error::{Error, Result};
use crate::ops::coupling::{Direction, FixedPoint};
use crate::ops::elementwise::AddForm;
use crate::ops::{self, batchnorm::BatchNormArgs};
use crate::ops::{optim::AdamParams, optim::SgdParams};
use crate::tensor::Element;
use mem::split;
use std::marker::PhantomData;

#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBackend<T> {
    _t: PhantomData<T>,
}

impl<T> CpuBackend<T> {
    pub fn new() -> Self {
        CpuBackend { _t: PhantomData }
    }
}

/// Host memory of one arena.
pub struct CpuArena<T> {
    pub data: Vec<T>,
}

fn acc(mode: Write) -> bool {
    mode == Write::Accumulate
}

impl<T: Element> Backend for CpuBackend<T> {
    type Elem = T;
    type Arena = CpuArena<T>;

    fn name(&self) -> String {
        format!(
            "cpu ({} threads, {})",
            rayon::current_num_threads(),
            T::NAME
        )
    }

    fn alloc_arena(&self, len: usize) -> Result<CpuArena<T>> {
        let mut data = Vec::new();
        data.try_reserve_exact(len).map_err(|_| {
            Error::Device(format!(
                "out of host memory: the plan needs an arena of {} MiB; use a smaller patch or more reversible blocks",
                (len * std::mem::size_of::<T>()) >> 20
            ))
        })?;
        // Fresh arenas read as NaN, so that a read of a never-written buffer shows up in results.
        data.resize(len, T::NAN);
        Ok(CpuArena { data })
    }

    fn arena_len(&self, a: &CpuArena<T>) -> usize {
        a.data.len()
    }

    fn upload(&self, a: &mut CpuArena<T>, dst: Region, src: &[T]) -> Result<()> {
        ops::check_transfer("upload", a.data.len(), dst, src.len())?;
        a.data[dst.offset..dst.end()].copy_from_slice(src);
        Ok(())
    }

    fn download(&self, a: &CpuArena<T>, src: Region, dst: &mut [T]) -> Result<()> {
        ops::check_transfer("download", a.data.len(), src, dst.len())?;
        dst.copy_from_slice(&a.data[src.offset..src.end()]);
        Ok(())
    }

    fn fill(&self, a: &mut CpuArena<T>, dst: Region, value: T) -> Result<()> {
        let ([], [d]) = split(&mut a.data, ops::elementwise::check_fill(dst)?)?;
        d.fill(value);
        Ok(())
    }

    fn copy(&self, a: &mut CpuArena<T>, src: Region, dst: Region) -> Result<()> {
        let ([s], [d]) = split(&mut a.data, ops::elementwise::check_copy(src, dst)?)?;
        d.copy_from_slice(s);
        Ok(())
    }

    fn conv3d_forward(
        &self,
        a: &mut CpuArena<T>,
        x: View,
        w: View,
        bias: Option<Region>,
        y: View,
    ) -> Result<()> {
        let (g, operands) = ops::conv3d::check_forward(x, w, bias, y)?;
        let ([xs, ws, bs], [ys]) = split(&mut a.data, operands)?;
        conv3d::forward(&g, xs, ws, bias.map(|_| bs), ys, false);
        Ok(())
    }

    fn conv3d_backward_input(
        &self,
        a: &mut CpuArena<T>,
        dy: View,
        w: View,
        dx: View,
        mode: Write,
    ) -> Result<()> {
        let (g, operands) = ops::conv3d::check_backward_input(dy, w, dx)?;
        let ([gy, ws], [gx]) = split(&mut a.data, operands)?;
        conv3d::backward_input(&g, gy, ws, gx, acc(mode));
        Ok(())
    }

    fn conv3d_backward_weight(
        &self,
        a: &mut CpuArena<T>,
        x: View,
        dy: View,
        dw: View,
        mode: Write,
    ) -> Result<()> {
        let (g, operands) = ops::conv3d::check_backward_weight(x, dy, dw)?;
        let ([xs, gy], [gw]) = split(&mut a.data, operands)?;
        conv3d::backward_weight(&g, xs, gy, gw, acc(mode));
        Ok(())
    }

    fn conv3d_backward_bias(
        &self,
        a: &mut CpuArena<T>,
        dy: View,
        db: Region,
        mode: Write,
    ) -> Result<()> {
        let ([gy], [gb]) = split(&mut a.data, ops::conv3d::check_backward_bias(dy, db)?)?;
        conv3d::backward_bias(
            dy.shape.n,
            dy.shape.c,
            dy.shape.spatial(),
            gy,
            gb,
            acc(mode),
        );
        Ok(())
    }

    fn conv_transpose_forward(
        &self,
        a: &mut CpuArena<T>,
        x: View,
        w: View,
        bias: Option<Region>,
        y: View,
    ) -> Result<()> {
        let (g, operands) = ops::conv_transpose::check_forward(x, w, bias, y)?;
        let ([xs, ws, bs], [ys]) = split(&mut a.data, operands)?;
        conv_transpose::forward(&g, xs, ws, bias.map(|_| bs), ys, false);
        Ok(())
    }

    fn conv_transpose_backward_input(
        &self,
        a: &mut CpuArena<T>,
        dy: View,
        w: View,
        dx: View,
        mode: Write,
    ) -> Result<()> {
        let (g, operands) = ops::conv_transpose::check_backward_input(dy, w, dx)?;
        let ([gy, ws], [gx]) = split(&mut a.data, operands)?;
        conv_transpose::backward_input(&g, gy, ws, gx, acc(mode));
        Ok(())
    }

    fn conv_transpose_backward_weight(
        &self,
        a: &mut CpuArena<T>,
        x: View,
        dy: View,
        dw: View,
        mode: Write,
    ) -> Result<()> {
        let (g, operands) = ops::conv_transpose::check_backward_weight(x, dy, dw)?;
        let ([xs, gy], [gw]) = split(&mut a.data, operands)?;
        conv_transpose::backward_weight(&g, xs, gy, gw, acc(mode));
        Ok(())
    }

    fn maxpool_forward(&self, a: &mut CpuArena<T>, x: View, y: View) -> Result<()> {
        let ([xs], [ys]) = split(&mut a.data, ops::maxpool::check_forward(x, y)?)?;
        maxpool::forward(x.shape, xs, ys);
        Ok(())
    }

    fn maxpool_backward(
        &self,
        a: &mut CpuArena<T>,
        x: View,
        dy: View,
        dx: View,
        mode: Write,
    ) -> Result<()> {
        let ([xs, gy], [gx]) = split(&mut a.data, ops::maxpool::check_backward(x, dy, dx)?)?;
        maxpool::backward(x.shape, xs, gy, gx, acc(mode));
        Ok(())
    }

    fn elu_forward(&self, a: &mut CpuArena<T>, x: View, y: View) -> Result<()> {
        let ([xs], [ys]) = split(&mut a.data, ops::elementwise::check_elu(x, y)?)?;
        if ops::elementwise::elu_in_place(x, y) {
            elementwise::elu_forward_inplace(ys);
        } else {
            elementwise::elu_forward(xs, ys);
        }
        Ok(())
    }

    fn elu_backward(
        &self,
        a: &mut CpuArena<T>,
        y: View,
        dy: View,
        dx: View,
        mode: Write,
    ) -> Result<()> {
        let operands = ops::elementwise::check_elu_backward(y, dy, dx, mode)?;
        let ([ys, gy], [gx]) = split(&mut a.data, operands)?;
        if ops::elementwise::elu_backward_in_place(dy, dx, mode) {
            elementwise::elu_backward_inplace(ys, gx);
        } else {
            elementwise::elu_backward(ys, gy, gx, acc(mode));
        }
        Ok(())
    }

    fn add(&self, a: &mut CpuArena<T>, p: View, q: View, out: View) -> Result<()> {
        match ops::elementwise::check_add(p, q, out)? {
            AddForm::Assign { dst, src } => self.add_assign(a, dst, src),
            AddForm::Out(operands) => {
                let ([ps, qs], [os]) = split(&mut a.data, operands)?;
                elementwise::add(ps, qs, os);
                Ok(())
            }
        }
    }

    fn add_assign(&self, a: &mut CpuArena<T>, dst: View, src: View) -> Result<()> {
        let operands = ops::elementwise::check_accumulate("add_assign", dst, src)?;
        let ([s], [d]) = split(&mut a.data, operands)?;
        elementwise::axpy_sign(d, s, false);
        Ok(())
    }

    fn sub_assign(&self, a: &mut CpuArena<T>, dst: View, src: View) -> Result<()> {
        let operands = ops::elementwise::check_accumulate("sub_assign", dst, src)?;
        let ([s], [d]) = split(&mut a.data, operands)?;
        elementwise::axpy_sign(d, s, true);
        Ok(())
    }

    fn coupling(
        &self,
        a: &mut CpuArena<T>,
        x: View,
        f: Option<View>,
        y: View,
        dir: Direction,
        fp: FixedPoint,
    ) -> Result<()> {
        const OP: &str = "coupling";
        ops::same_shape(OP, "y vs x", y.shape, x.shape)?;
        if let Some(f) = f {
            ops::same_shape(OP, "f vs x", f.shape, x.shape)?;
        }
        let fr = f.map(|f| f.region).unwrap_or_default();
        let bad = if x.region == y.region {
            let ([fs], [ys]) = split(&mut a.data, ops::Operands::new(OP, [fr], [y.region]))?;
            coupling::coupling::<T, T, T, T>(fp, None, f.map(|_| &*fs), ys, dir)
        } else {
            let ([xs, fs], [ys]) = split(
                &mut a.data,
                ops::Operands::new(OP, [x.region, fr], [y.region]),
            )?;
            coupling::coupling(fp, Some(xs), f.map(|_| &*fs), ys, dir)
        };
        match bad {
            None => Ok(()),
            Some((at, v)) => Err(fp.overflow(OP, at, v)),
        }
    }

    fn batchnorm_forward_train(
        &self,
        a: &mut CpuArena<T>,
        x: View,
        gamma: Region,
        beta: Region,
        y: View,
        stats: BnStats,
        running: Option<BnRunning>,
        args: BatchNormArgs,
    ) -> Result<()> {
        let operands = ops::batchnorm::check_train(x, gamma, beta, y, stats, running)?;
        let ([xs, g, b], [ys, mo, io, rm, rv]) = split(&mut a.data, operands)?;
        let run = running.map(|_| (rm, rv));
        batchnorm::forward_train(x.shape, xs, g, b, ys, mo, io, run, args);
        Ok(())
    }

    fn batchnorm_apply(
        &self,
        a: &mut CpuArena<T>,
        x: View,
        gamma: Region,
        beta: Region,
        stats: BnStats,
        y: View,
    ) -> Result<()> {
        bn_apply(a, x, gamma, beta, stats, y, false)
    }

    fn batchnorm_apply_elu(
        &self,
        a: &mut CpuArena<T>,
        x: View,
        gamma: Region,
        beta: Region,
        stats: BnStats,
        y: View,
    ) -> Result<()> {
        bn_apply(a, x, gamma, beta, stats, y, true)
    }

    fn batchnorm_forward_infer(
        &self,
        a: &mut CpuArena<T>,
        x: View,
        gamma: Region,
        beta: Region,
        running: BnRunning,
        y: View,
        eps: f64,
    ) -> Result<()> {
        let operands = ops::batchnorm::check_infer(x, gamma, beta, running, y)?;
        let ([xs, g, b, rm, rv], [ys]) = split(&mut a.data, operands)?;
        batchnorm::forward_infer(x.shape, xs, g, b, rm, rv, ys, eps);
        Ok(())
    }

    fn batchnorm_backward(
        &self,
        a: &mut CpuArena<T>,
        x: View,
        dy: View,
        gamma: Region,
        stats: BnStats,
        dx: View,
        dgamma: Region,
        dbeta: Region,
        mode: Write,
    ) -> Result<()> {
        let operands = ops::batchnorm::check_backward(x, dy, gamma, stats, dx, dgamma, dbeta)?;
        let ([xs, gy, g, mu, is], [gx, dg, db]) = split(&mut a.data, operands)?;
        batchnorm::backward(x.shape, xs, gy, g, mu, is, gx, dg, db, acc(mode));
        Ok(())
    }

    fn bce_weights(
        &self,
        a: &mut CpuArena<T>,
        target: View,
        mask: View,
        weight: View,
    ) -> Result<()> {
        let operands = ops::loss::check_weights(target, mask, weight)?;
        let ([t, m], [w]) = split(&mut a.data, operands)?;
        loss::weights(target.shape, t, m, w);
        Ok(())
    }

    fn bce_loss(
        &self,
        a: &mut CpuArena<T>,
        logits: View,
        target: View,
        weight: View,
        mask: View,
        loss_out: Region,
        dlogits: Option<View>,
    ) -> Result<()> {
        let operands = ops::loss::check_bce(logits, target, weight, mask, loss_out, dlogits)?;
        let ([z, t, w, m], [l, d]) = split(&mut a.data, operands)?;
        let d = dlogits.map(|_| d);
        l[0] = T::from_f64(loss::bce(z, t, w, m, d));
        Ok(())
    }

    fn sigmoid(&self, a: &mut CpuArena<T>, x: View, y: View) -> Result<()> {
        let ([xs], [ys]) = split(&mut a.data, ops::loss::check_sigmoid(x, y)?)?;
        loss::sigmoid_map(xs, ys);
        Ok(())
    }

    fn adam_step(
        &self,
        a: &mut CpuArena<T>,
        param: Region,
        grad: Region,
        m: Region,
        v: Region,
        hp: AdamParams,
        step: u64,
    ) -> Result<()> {
        let operands = ops::optim::check_adam(param, grad, m, v, step)?;
        let ([g], [p, ms, vs]) = split(&mut a.data, operands)?;
        optim::adam(p, g, ms, vs, hp, step);
        Ok(())
    }

    fn sgd_step(
        &self,
        a: &mut CpuArena<T>,
        param: Region,
        grad: Region,
        velocity: Option<Region>,
        hp: SgdParams,
    ) -> Result<()> {
        let operands = ops::optim::check_sgd(param, grad, velocity)?;
        let ([g], [p, vel]) = split(&mut a.data, operands)?;
        optim::sgd(p, g, velocity.map(|_| vel), hp);
        Ok(())
    }
}

/// batchnorm_apply, with ELU fused into the same pass when `then_elu`.
fn bn_apply<T: Element>(
    a: &mut CpuArena<T>,
    x: View,
    gamma: Region,
    beta: Region,
    stats: BnStats,
    y: View,
    then_elu: bool,
) -> Result<()> {
    let op = if then_elu {
        "batchnorm_apply_elu"
    } else {
        "batchnorm_apply"
    };
    let operands = ops::batchnorm::check_apply(op, x, gamma, beta, stats, y)?;
    let ([xs, g, b, m, i], [ys]) = split(&mut a.data, operands)?;
    batchnorm::apply_saved(x.shape, xs, g, b, m, i, ys, then_elu);
    Ok(())
}

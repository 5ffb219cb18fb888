//! The CPU backend: every op of `Backend`, generic over f32 and f64, multi-threaded with rayon.

pub mod batchnorm;
pub mod conv3d;
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
pub mod optim;
pub(crate) mod simd;

use super::{Backend, BnRunning, BnStats, Region, View, Write};
use crate::error::{Error, Result};
use crate::ops::coupling::{Direction, FixedPoint};
use crate::ops::{
    self, batchnorm::BatchNormArgs, conv3d::Conv3dGeom, conv_transpose::ConvTransposeGeom,
};
use crate::ops::{optim::AdamParams, optim::SgdParams};
use crate::tensor::Element;
use mem::{check_bounds, split};
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
        check_bounds("upload", a.data.len(), dst)?;
        if src.len() != dst.len {
            return Err(Error::region(
                "upload",
                format!("{} values for a region of {}", src.len(), dst.len),
            ));
        }
        a.data[dst.offset..dst.end()].copy_from_slice(src);
        Ok(())
    }

    fn download(&self, a: &CpuArena<T>, src: Region, dst: &mut [T]) -> Result<()> {
        check_bounds("download", a.data.len(), src)?;
        if dst.len() != src.len {
            return Err(Error::region(
                "download",
                format!("{} values for a region of {}", dst.len(), src.len),
            ));
        }
        dst.copy_from_slice(&a.data[src.offset..src.end()]);
        Ok(())
    }

    fn fill(&self, a: &mut CpuArena<T>, dst: Region, value: T) -> Result<()> {
        let ([], [d]) = split("fill", &mut a.data, [], [dst])?;
        d.fill(value);
        Ok(())
    }

    fn copy(&self, a: &mut CpuArena<T>, src: Region, dst: Region) -> Result<()> {
        if src.len != dst.len {
            return Err(Error::region(
                "copy",
                format!("source has {} elements, destination {}", src.len, dst.len),
            ));
        }
        let ([s], [d]) = split("copy", &mut a.data, [src], [dst])?;
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
        let g = Conv3dGeom::check(x.shape, w.shape, y.shape)?;
        if let Some(b) = bias {
            ops::vector_len("conv3d", "bias", b.len, g.co)?;
        }
        let b = bias.unwrap_or_default();
        let ([xs, ws, bs], [ys]) =
            split("conv3d", &mut a.data, [x.region, w.region, b], [y.region])?;
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
        let g = Conv3dGeom::check(dx.shape, w.shape, dy.shape)?;
        let ([gy, ws], [gx]) = split(
            "conv3d_backward_input",
            &mut a.data,
            [dy.region, w.region],
            [dx.region],
        )?;
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
        let g = Conv3dGeom::check(x.shape, dw.shape, dy.shape)?;
        let ([xs, gy], [gw]) = split(
            "conv3d_backward_weight",
            &mut a.data,
            [x.region, dy.region],
            [dw.region],
        )?;
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
        ops::vector_len("conv3d_backward_bias", "bias gradient", db.len, dy.shape.c)?;
        let ([gy], [gb]) = split("conv3d_backward_bias", &mut a.data, [dy.region], [db])?;
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
        let g = ConvTransposeGeom::check(x.shape, w.shape, y.shape)?;
        if let Some(b) = bias {
            ops::vector_len("conv_transpose", "bias", b.len, g.co)?;
        }
        let b = bias.unwrap_or_default();
        let ([xs, ws, bs], [ys]) = split(
            "conv_transpose",
            &mut a.data,
            [x.region, w.region, b],
            [y.region],
        )?;
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
        let g = ConvTransposeGeom::check(dx.shape, w.shape, dy.shape)?;
        let ([gy, ws], [gx]) = split(
            "conv_transpose_backward_input",
            &mut a.data,
            [dy.region, w.region],
            [dx.region],
        )?;
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
        let g = ConvTransposeGeom::check(x.shape, dw.shape, dy.shape)?;
        let ([xs, gy], [gw]) = split(
            "conv_transpose_backward_weight",
            &mut a.data,
            [x.region, dy.region],
            [dw.region],
        )?;
        conv_transpose::backward_weight(&g, xs, gy, gw, acc(mode));
        Ok(())
    }

    fn maxpool_forward(&self, a: &mut CpuArena<T>, x: View, y: View) -> Result<()> {
        ops::maxpool::check(x.shape, y.shape)?;
        let ([xs], [ys]) = split("maxpool", &mut a.data, [x.region], [y.region])?;
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
        ops::maxpool::check(x.shape, dy.shape)?;
        ops::same_shape("maxpool_backward", "dx vs x", dx.shape, x.shape)?;
        let ([xs, gy], [gx]) = split(
            "maxpool_backward",
            &mut a.data,
            [x.region, dy.region],
            [dx.region],
        )?;
        maxpool::backward(x.shape, xs, gy, gx, acc(mode));
        Ok(())
    }

    fn elu_forward(&self, a: &mut CpuArena<T>, x: View, y: View) -> Result<()> {
        ops::same_shape("elu", "y vs x", y.shape, x.shape)?;
        if x.region == y.region {
            let ([], [ys]) = split("elu", &mut a.data, [], [y.region])?;
            elementwise::elu_forward_inplace(ys);
        } else {
            let ([xs], [ys]) = split("elu", &mut a.data, [x.region], [y.region])?;
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
        ops::same_shape("elu_backward", "dy vs y", dy.shape, y.shape)?;
        ops::same_shape("elu_backward", "dx vs y", dx.shape, y.shape)?;
        if dx.region == dy.region && mode == Write::Overwrite {
            let ([ys], [g]) = split("elu_backward", &mut a.data, [y.region], [dx.region])?;
            elementwise::elu_backward_inplace(ys, g);
        } else {
            let ([ys, gy], [gx]) = split(
                "elu_backward",
                &mut a.data,
                [y.region, dy.region],
                [dx.region],
            )?;
            elementwise::elu_backward(ys, gy, gx, acc(mode));
        }
        Ok(())
    }

    fn add(&self, a: &mut CpuArena<T>, p: View, q: View, out: View) -> Result<()> {
        ops::same_shape("add", "p vs q", p.shape, q.shape)?;
        ops::same_shape("add", "out vs p", out.shape, p.shape)?;
        if out.region == p.region {
            self.add_assign(a, out, q)
        } else if out.region == q.region {
            self.add_assign(a, out, p)
        } else {
            let ([ps, qs], [os]) = split("add", &mut a.data, [p.region, q.region], [out.region])?;
            elementwise::add(ps, qs, os);
            Ok(())
        }
    }

    fn add_assign(&self, a: &mut CpuArena<T>, dst: View, src: View) -> Result<()> {
        ops::same_shape("add_assign", "dst vs src", dst.shape, src.shape)?;
        let ([s], [d]) = split("add_assign", &mut a.data, [src.region], [dst.region])?;
        elementwise::axpy_sign(d, s, false);
        Ok(())
    }

    fn sub_assign(&self, a: &mut CpuArena<T>, dst: View, src: View) -> Result<()> {
        ops::same_shape("sub_assign", "dst vs src", dst.shape, src.shape)?;
        let ([s], [d]) = split("sub_assign", &mut a.data, [src.region], [dst.region])?;
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
            let ([fs], [ys]) = split(OP, &mut a.data, [fr], [y.region])?;
            coupling::coupling(fp, None, f.map(|_| &*fs), ys, dir)
        } else {
            let ([xs, fs], [ys]) = split(OP, &mut a.data, [x.region, fr], [y.region])?;
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
        const OP: &str = "batchnorm";
        ops::same_shape(OP, "y vs x", y.shape, x.shape)?;
        let c = x.shape.c;
        super::per_channel(
            OP,
            &[
                ("gamma", gamma),
                ("beta", beta),
                ("saved mean", stats.mean),
                ("saved invstd", stats.invstd),
            ],
            c,
        )?;
        match running {
            Some(run) => {
                ops::vector_len(OP, "running mean", run.mean.len, c)?;
                ops::vector_len(OP, "running var", run.var.len, c)?;
                let ([xs, g, b], [ys, mo, io, rm, rv]) = split(
                    OP,
                    &mut a.data,
                    [x.region, gamma, beta],
                    [y.region, stats.mean, stats.invstd, run.mean, run.var],
                )?;
                batchnorm::forward_train(x.shape, xs, g, b, ys, mo, io, Some((rm, rv)), args);
            }
            None => {
                let ([xs, g, b], [ys, mo, io]) = split(
                    OP,
                    &mut a.data,
                    [x.region, gamma, beta],
                    [y.region, stats.mean, stats.invstd],
                )?;
                batchnorm::forward_train(x.shape, xs, g, b, ys, mo, io, None, args);
            }
        }
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
        const OP: &str = "batchnorm_infer";
        ops::same_shape(OP, "y vs x", y.shape, x.shape)?;
        super::per_channel(
            OP,
            &[
                ("gamma", gamma),
                ("beta", beta),
                ("running mean", running.mean),
                ("running var", running.var),
            ],
            x.shape.c,
        )?;
        let ([xs, g, b, rm, rv], [ys]) = split(
            OP,
            &mut a.data,
            [x.region, gamma, beta, running.mean, running.var],
            [y.region],
        )?;
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
        const OP: &str = "batchnorm_backward";
        ops::same_shape(OP, "dy vs x", dy.shape, x.shape)?;
        ops::same_shape(OP, "dx vs x", dx.shape, x.shape)?;
        let c = x.shape.c;
        super::per_channel(
            OP,
            &[
                ("gamma", gamma),
                ("mean", stats.mean),
                ("invstd", stats.invstd),
                ("dgamma", dgamma),
                ("dbeta", dbeta),
            ],
            c,
        )?;
        let ([xs, gy, g, mu, is], [gx, dg, db]) = split(
            OP,
            &mut a.data,
            [x.region, dy.region, gamma, stats.mean, stats.invstd],
            [dx.region, dgamma, dbeta],
        )?;
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
        ops::same_shape("bce_weights", "mask vs target", mask.shape, target.shape)?;
        ops::same_shape(
            "bce_weights",
            "weight vs target",
            weight.shape,
            target.shape,
        )?;
        let ([t, m], [w]) = split(
            "bce_weights",
            &mut a.data,
            [target.region, mask.region],
            [weight.region],
        )?;
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
        const OP: &str = "bce_loss";
        for (what, v) in [("target", target), ("weight", weight), ("mask", mask)] {
            ops::same_shape(OP, &format!("{what} vs logits"), v.shape, logits.shape)?;
        }
        ops::vector_len(OP, "loss output", loss_out.len, 1)?;
        let ins = [logits.region, target.region, weight.region, mask.region];
        match dlogits {
            Some(dz) => {
                ops::same_shape(OP, "dlogits vs logits", dz.shape, logits.shape)?;
                let ([z, t, w, m], [l, d]) = split(OP, &mut a.data, ins, [loss_out, dz.region])?;
                l[0] = T::from_f64(loss::bce(z, t, w, m, Some(d)));
            }
            None => {
                let ([z, t, w, m], [l]) = split(OP, &mut a.data, ins, [loss_out])?;
                l[0] = T::from_f64(loss::bce(z, t, w, m, None));
            }
        }
        Ok(())
    }

    fn sigmoid(&self, a: &mut CpuArena<T>, x: View, y: View) -> Result<()> {
        ops::same_shape("sigmoid", "y vs x", y.shape, x.shape)?;
        let ([xs], [ys]) = split("sigmoid", &mut a.data, [x.region], [y.region])?;
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
        if step == 0 {
            return Err(Error::Invalid("adam_step: steps count from 1".into()));
        }
        for r in [grad, m, v] {
            ops::vector_len("adam_step", "gradient/moment buffer", r.len, param.len)?;
        }
        let ([g], [p, ms, vs]) = split("adam_step", &mut a.data, [grad], [param, m, v])?;
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
        ops::vector_len("sgd_step", "gradient", grad.len, param.len)?;
        match velocity {
            Some(vr) => {
                ops::vector_len("sgd_step", "velocity", vr.len, param.len)?;
                let ([g], [p, vel]) = split("sgd_step", &mut a.data, [grad], [param, vr])?;
                optim::sgd(p, g, Some(vel), hp);
            }
            None => {
                let ([g], [p]) = split("sgd_step", &mut a.data, [grad], [param])?;
                optim::sgd(p, g, None, hp);
            }
        }
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
    ops::same_shape(op, "y vs x", y.shape, x.shape)?;
    super::per_channel(
        op,
        &[
            ("gamma", gamma),
            ("beta", beta),
            ("saved mean", stats.mean),
            ("saved invstd", stats.invstd),
        ],
        x.shape.c,
    )?;
    let ([xs, g, b, m, i], [ys]) = split(
        op,
        &mut a.data,
        [x.region, gamma, beta, stats.mean, stats.invstd],
        [y.region],
    )?;
    batchnorm::apply_saved(x.shape, xs, g, b, m, i, ys, then_elu);
    Ok(())
}

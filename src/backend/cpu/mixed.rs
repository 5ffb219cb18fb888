//! The CPU backend for plans with per-buffer storage (bf16 activations and workspace, f32 master
//! weights, gradients, moments, statistics and loss): one byte arena, every region seen as f32 or
//! bf16 by its `storage`. Arithmetic is f32; bf16 operands are widened on load and rounded on
//! store, element by element (storage.rs). Convolutions multiply bf16 operands with f32 sums
//! (conv3d_bf16.rs: AMX tiles where the CPU has them, else `vdpbf16ps`, else scalar).

use super::storage::Stored;
use super::{batchnorm, conv3d, conv3d_bf16, conv_transpose, coupling, elementwise};
use super::{loss, maxpool, optim};
use crate::backend::{Backend, BnRunning, BnStats, Region, View, Write};
use crate::error::{Error, Result};
use crate::ops::coupling::{Direction, Fix16, FixedPoint};
use crate::ops::elementwise::AddForm;
use crate::ops::{self, batchnorm::BatchNormArgs, Operands};
use crate::ops::{optim::AdamParams, optim::SgdParams};
use crate::precision::Storage;
use half::bf16;

#[derive(Clone, Copy, Debug, Default)]
pub struct CpuMixedBackend;

/// Host memory of one byte arena, 8-byte aligned (so every f32 and bf16 offset the planner gives,
/// multiples of 256 bytes plus whole elements, is aligned for its type).
pub struct MixedArena {
    words: Vec<u64>,
    bytes: usize,
}

impl MixedArena {
    fn base(&mut self) -> *mut u8 {
        self.words.as_mut_ptr() as *mut u8
    }
}

/// A region's elements, typed by its storage.
pub enum Typed<A, B, C> {
    F32(A),
    Bf16(B),
    Fix16(C),
}

type In<'a> = Typed<&'a [f32], &'a [bf16], &'a [Fix16]>;
type Out<'a> = Typed<&'a mut [f32], &'a mut [bf16], &'a mut [Fix16]>;

/// Expands `body` once per float storage combination of the named typed slices, each name
/// rebound to its plain slice. A 16-bit chain state among them returns an error: only the
/// operands named in `typed_fix!` read one.
macro_rules! typed {
    (=> $body:block) => { $body };
    ($v:ident $(, $rest:ident)* => $body:block) => {
        match $v {
            Typed::F32($v) => typed!($($rest),* => $body),
            Typed::Bf16($v) => typed!($($rest),* => $body),
            Typed::Fix16(_) => return Err(fix16_refused(stringify!($v))),
        }
    };
}

/// `typed!` that also expands a 16-bit chain state (read through `Stored`, exact).
macro_rules! typed_fix {
    ($v:ident => $body:block) => {
        match $v {
            Typed::F32($v) => $body,
            Typed::Bf16($v) => $body,
            Typed::Fix16($v) => $body,
        }
    };
}

fn fix16_refused(what: &str) -> Error {
    Error::Invalid(format!(
        "operand {what} is a reversible chain's 16-bit fixed-point state (fix16), which only the \
         coupling writes and only copies, downloads, BatchNorm's input and ELU's backward read"
    ))
}

fn acc(mode: Write) -> bool {
    mode == Write::Accumulate
}

fn check_region(op: &'static str, bytes: usize, r: Region) -> Result<()> {
    if r.len > 0 && (r.byte_end() > bytes || r.offset % r.storage.bytes() != 0) {
        return Err(Error::region(
            op,
            format!(
                "{} elements of {} at byte {} do not lie aligned inside the arena of {bytes} bytes",
                r.len,
                r.storage.name(),
                r.offset
            ),
        ));
    }
    Ok(())
}

fn overlap(a: &Region, b: &Region) -> bool {
    a.len > 0 && b.len > 0 && a.offset < b.byte_end() && b.offset < a.byte_end()
}

/// `mem::split` over byte regions: bounds and alignment of every region, outputs disjoint from
/// each other and from the inputs, then each region as a slice of its storage. A 16-bit chain
/// state is refused by name (see `split_fix`).
fn split<const I: usize, const O: usize>(
    a: &mut MixedArena,
    operands: Operands<I, O>,
) -> Result<([In<'_>; I], [Out<'_>; O])> {
    let op = operands.op;
    if let Some(r) = operands
        .ins
        .iter()
        .chain(&operands.outs)
        .find(|r| r.len > 0 && r.storage == Storage::Fix16)
    {
        return Err(Error::Invalid(format!(
            "{op}: the region of {} elements at byte {} is a reversible chain's 16-bit \
             fixed-point state (fix16); only the coupling writes it, and only copies, downloads, \
             BatchNorm's input and ELU's backward read it",
            r.len, r.offset
        )));
    }
    split_fix(a, operands)
}

/// `split` for the ops that take a 16-bit chain state in some operand (`typed_fix!` there,
/// `typed!`'s error on the others).
fn split_fix<const I: usize, const O: usize>(
    a: &mut MixedArena,
    operands: Operands<I, O>,
) -> Result<([In<'_>; I], [Out<'_>; O])> {
    let op = operands.op;
    for r in operands.ins.iter().chain(&operands.outs) {
        check_region(op, a.bytes, *r)?;
    }
    for (i, o) in operands.outs.iter().enumerate() {
        for o2 in operands.outs[i + 1..].iter().chain(&operands.ins) {
            if overlap(o, o2) {
                return Err(Error::region(
                    op,
                    format!("output {o:?} overlaps operand {o2:?}"),
                ));
            }
        }
    }
    let base = a.base();
    // SAFETY: every region is in bounds and aligned for its type (checked above); outputs are
    // disjoint from each other and from the inputs, so no mutable slice aliases another slice, and
    // all borrow `a` for the same lifetime. Empty regions become empty slices.
    let ins = operands.ins.map(|r| unsafe {
        let p = base.add(r.offset);
        match r.storage {
            Storage::F32 => Typed::F32(std::slice::from_raw_parts(p as *const f32, r.len)),
            Storage::Bf16 => Typed::Bf16(std::slice::from_raw_parts(p as *const bf16, r.len)),
            Storage::Fix16 => Typed::Fix16(std::slice::from_raw_parts(p as *const Fix16, r.len)),
        }
    });
    let outs = operands.outs.map(|r| unsafe {
        let p = base.add(r.offset);
        match r.storage {
            Storage::F32 => Typed::F32(std::slice::from_raw_parts_mut(p as *mut f32, r.len)),
            Storage::Bf16 => Typed::Bf16(std::slice::from_raw_parts_mut(p as *mut bf16, r.len)),
            Storage::Fix16 => Typed::Fix16(std::slice::from_raw_parts_mut(p as *mut Fix16, r.len)),
        }
    });
    Ok((ins, outs))
}

/// An operand that is f32 in every precision (weights, their gradients and moments, statistics,
/// the loss and its inputs).
fn f32_in<'a>(op: &str, what: &str, s: In<'a>) -> Result<&'a [f32]> {
    match s {
        Typed::F32(s) => Ok(s),
        Typed::Bf16(_) | Typed::Fix16(_) => Err(Error::Invalid(format!(
            "{op}: {what} is stored in 16 bits; it stays f32 in every precision"
        ))),
    }
}

fn f32_out<'a>(op: &str, what: &str, s: Out<'a>) -> Result<&'a mut [f32]> {
    match s {
        Typed::F32(s) => Ok(s),
        Typed::Bf16(_) | Typed::Fix16(_) => Err(Error::Invalid(format!(
            "{op}: {what} is stored in 16 bits; it stays f32 in every precision"
        ))),
    }
}

/// A convolution operand, which the bf16 kernels read as bf16.
fn bf16_in<'a>(op: &str, what: &str, s: In<'a>) -> Result<&'a [bf16]> {
    match s {
        Typed::Bf16(s) => Ok(s),
        Typed::F32(_) | Typed::Fix16(_) => Err(Error::Invalid(format!(
            "{op}: {what} is not stored bf16; convolutions of a bf16 plan read bf16 operands"
        ))),
    }
}

fn bf16_weights(w: &[f32]) -> Vec<bf16> {
    w.iter().map(|&v| bf16::from_f32(v)).collect()
}

impl Backend for CpuMixedBackend {
    type Elem = f32;
    type Arena = MixedArena;

    fn name(&self) -> String {
        format!(
            "cpu ({} threads, bf16 storage, {:?} convolutions)",
            rayon::current_num_threads(),
            conv3d_bf16::Path::best()
        )
    }

    fn byte_regions(&self) -> bool {
        true
    }

    fn alloc_arena(&self, bytes: usize) -> Result<MixedArena> {
        let n = bytes.div_ceil(8);
        let mut words = Vec::new();
        words.try_reserve_exact(n).map_err(|_| {
            Error::Device(format!(
                "out of host memory: the plan needs an arena of {} MiB; use a smaller patch or more reversible blocks",
                bytes >> 20
            ))
        })?;
        // Fresh arenas read as NaN in both storages: 0x7fc0 is a bf16 NaN, 0x7fc07fc0 an f32 one.
        words.resize(n, 0x7fc0_7fc0_7fc0_7fc0);
        Ok(MixedArena { words, bytes })
    }

    fn arena_len(&self, a: &MixedArena) -> usize {
        a.bytes
    }

    fn upload(&self, a: &mut MixedArena, dst: Region, src: &[f32]) -> Result<()> {
        transfer_len("upload", dst, src.len())?;
        let ([], [d]) = split_fix(a, Operands::new("upload", [], [dst]))?;
        if let Typed::Fix16(d) = d {
            // Only values the state can hold exactly: anything else would be rounded or lost.
            return fill_fix16("upload", d, src);
        }
        typed!(d => { elementwise::convert::<f32, _, _>(src, d) });
        Ok(())
    }

    fn download(&self, a: &MixedArena, src: Region, dst: &mut [f32]) -> Result<()> {
        transfer_len("download", src, dst.len())?;
        check_region("download", a.bytes, src)?;
        let base = a.words.as_ptr() as *const u8;
        // SAFETY: in bounds and aligned (checked above); shared access only.
        unsafe {
            let p = base.add(src.offset);
            match src.storage {
                Storage::F32 => {
                    dst.copy_from_slice(std::slice::from_raw_parts(p as *const f32, src.len))
                }
                Storage::Bf16 => elementwise::convert::<f32, _, _>(
                    std::slice::from_raw_parts(p as *const bf16, src.len),
                    dst,
                ),
                Storage::Fix16 => elementwise::convert::<f32, _, _>(
                    std::slice::from_raw_parts(p as *const Fix16, src.len),
                    dst,
                ),
            }
        }
        Ok(())
    }

    fn fill(&self, a: &mut MixedArena, dst: Region, value: f32) -> Result<()> {
        let ([], [d]) = split_fix(a, ops::elementwise::check_fill(dst)?)?;
        if let Typed::Fix16(d) = d {
            // NaN (the poison of freed buffers) becomes the state's NaN mark.
            return fill_fix16("fill", d, &[value]);
        }
        typed!(d => { d.fill(Stored::store(value)) });
        Ok(())
    }

    fn copy(&self, a: &mut MixedArena, src: Region, dst: Region) -> Result<()> {
        let ([s], [d]) = split_fix(a, ops::elementwise::check_copy(src, dst)?)?;
        match (s, d) {
            // The state into bf16 (what F and G read) or into another state buffer (exact).
            (Typed::Fix16(s), d) => {
                typed_fix!(d => { elementwise::convert::<f32, _, _>(s, d) });
                Ok(())
            }
            (_, Typed::Fix16(_)) => Err(Error::Invalid(
                "copy: only a 16-bit chain state copies into a 16-bit chain state; floats enter \
                 it through the coupling, which rounds them and checks the range"
                    .into(),
            )),
            (s, d) => {
                typed!(s, d => { elementwise::convert::<f32, _, _>(s, d) });
                Ok(())
            }
        }
    }

    fn conv3d_forward(
        &self,
        a: &mut MixedArena,
        x: View,
        w: View,
        bias: Option<Region>,
        y: View,
    ) -> Result<()> {
        const OP: &str = "conv3d_forward";
        let (g, operands) = ops::conv3d::check_forward(x, w, bias, y)?;
        let ([xs, ws, bs], [ys]) = split(a, operands)?;
        let (xs, ws) = (bf16_in(OP, "x", xs)?, f32_in(OP, "w", ws)?);
        let bs = bias.map(|_| f32_in(OP, "bias", bs)).transpose()?;
        let wb = bf16_weights(ws);
        let path = conv3d_bf16::Path::best();
        typed!(ys => { conv3d_bf16::forward(path, &g, xs, &wb, bs, ys, false) });
        Ok(())
    }

    fn conv3d_backward_input(
        &self,
        a: &mut MixedArena,
        dy: View,
        w: View,
        dx: View,
        mode: Write,
    ) -> Result<()> {
        const OP: &str = "conv3d_backward_input";
        let (g, operands) = ops::conv3d::check_backward_input(dy, w, dx)?;
        let ([gy, ws], [gx]) = split(a, operands)?;
        let (gy, wb) = (bf16_in(OP, "dy", gy)?, bf16_weights(f32_in(OP, "w", ws)?));
        let path = conv3d_bf16::Path::best();
        typed!(gx => { conv3d_bf16::backward_input(path, &g, gy, &wb, gx, acc(mode)) });
        Ok(())
    }

    fn conv3d_backward_weight(
        &self,
        a: &mut MixedArena,
        x: View,
        dy: View,
        dw: View,
        mode: Write,
    ) -> Result<()> {
        const OP: &str = "conv3d_backward_weight";
        let (g, operands) = ops::conv3d::check_backward_weight(x, dy, dw)?;
        let ([xs, gy], [gw]) = split(a, operands)?;
        let (xs, gy) = (bf16_in(OP, "x", xs)?, bf16_in(OP, "dy", gy)?);
        let gw = f32_out(OP, "dw", gw)?;
        conv3d_bf16::backward_weight(conv3d_bf16::Path::best(), &g, xs, gy, gw, acc(mode));
        Ok(())
    }

    fn conv3d_backward_bias(
        &self,
        a: &mut MixedArena,
        dy: View,
        db: Region,
        mode: Write,
    ) -> Result<()> {
        let ([gy], [gb]) = split(a, ops::conv3d::check_backward_bias(dy, db)?)?;
        let gb = f32_out("conv3d_backward_bias", "db", gb)?;
        let s = dy.shape;
        typed!(gy => { conv3d::backward_bias::<f32, _>(s.n, s.c, s.spatial(), gy, gb, acc(mode)) });
        Ok(())
    }

    fn conv_transpose_forward(
        &self,
        a: &mut MixedArena,
        x: View,
        w: View,
        bias: Option<Region>,
        y: View,
    ) -> Result<()> {
        const OP: &str = "conv_transpose_forward";
        let (g, operands) = ops::conv_transpose::check_forward(x, w, bias, y)?;
        let ([xs, ws, bs], [ys]) = split(a, operands)?;
        let ws = f32_in(OP, "w", ws)?;
        let bs = bias.map(|_| f32_in(OP, "bias", bs)).transpose()?;
        typed!(xs, ys => { conv_transpose::forward::<f32, _, _>(&g, xs, ws, bs, ys, false) });
        Ok(())
    }

    fn conv_transpose_backward_input(
        &self,
        a: &mut MixedArena,
        dy: View,
        w: View,
        dx: View,
        mode: Write,
    ) -> Result<()> {
        const OP: &str = "conv_transpose_backward_input";
        let (g, operands) = ops::conv_transpose::check_backward_input(dy, w, dx)?;
        let ([gy, ws], [gx]) = split(a, operands)?;
        let ws = f32_in(OP, "w", ws)?;
        typed!(gy, gx => { conv_transpose::backward_input::<f32, _, _>(&g, gy, ws, gx, acc(mode)) });
        Ok(())
    }

    fn conv_transpose_backward_weight(
        &self,
        a: &mut MixedArena,
        x: View,
        dy: View,
        dw: View,
        mode: Write,
    ) -> Result<()> {
        const OP: &str = "conv_transpose_backward_weight";
        let (g, operands) = ops::conv_transpose::check_backward_weight(x, dy, dw)?;
        let ([xs, gy], [gw]) = split(a, operands)?;
        let gw = f32_out(OP, "dw", gw)?;
        typed!(xs, gy => { conv_transpose::backward_weight::<f32, _, _>(&g, xs, gy, gw, acc(mode)) });
        Ok(())
    }

    fn maxpool_forward(&self, a: &mut MixedArena, x: View, y: View) -> Result<()> {
        let ([xs], [ys]) = split(a, ops::maxpool::check_forward(x, y)?)?;
        typed!(xs, ys => { maxpool::forward::<f32, _, _>(x.shape, xs, ys) });
        Ok(())
    }

    fn maxpool_backward(
        &self,
        a: &mut MixedArena,
        x: View,
        dy: View,
        dx: View,
        mode: Write,
    ) -> Result<()> {
        let ([xs, gy], [gx]) = split(a, ops::maxpool::check_backward(x, dy, dx)?)?;
        typed!(xs, gy, gx => { maxpool::backward::<f32, _, _, _>(x.shape, xs, gy, gx, acc(mode)) });
        Ok(())
    }

    fn elu_forward(&self, a: &mut MixedArena, x: View, y: View) -> Result<()> {
        let ([xs], [ys]) = split(a, ops::elementwise::check_elu(x, y)?)?;
        if ops::elementwise::elu_in_place(x, y) {
            typed!(ys => { elementwise::elu_forward_inplace::<f32, _>(ys) });
        } else {
            typed!(xs, ys => { elementwise::elu_forward::<f32, _, _>(xs, ys) });
        }
        Ok(())
    }

    fn elu_backward(
        &self,
        a: &mut MixedArena,
        y: View,
        dy: View,
        dx: View,
        mode: Write,
    ) -> Result<()> {
        let operands = ops::elementwise::check_elu_backward(y, dy, dx, mode)?;
        // y may be a chain's 16-bit state: the input of a chain is ELU's output.
        let ([ys, gy], [gx]) = split_fix(a, operands)?;
        if ops::elementwise::elu_backward_in_place(dy, dx, mode) {
            typed_fix!(ys => {
                typed!(gx => { elementwise::elu_backward_inplace::<f32, _, _>(ys, gx) })
            });
        } else {
            typed_fix!(ys => {
                typed!(gy, gx => {
                    elementwise::elu_backward::<f32, _, _, _>(ys, gy, gx, acc(mode))
                })
            });
        }
        Ok(())
    }

    fn add(&self, a: &mut MixedArena, p: View, q: View, out: View) -> Result<()> {
        match ops::elementwise::check_add(p, q, out)? {
            AddForm::Assign { dst, src } => self.add_assign(a, dst, src),
            AddForm::Out(operands) => {
                let ([ps, qs], [os]) = split(a, operands)?;
                typed!(ps, qs, os => { elementwise::add::<f32, _, _, _>(ps, qs, os) });
                Ok(())
            }
        }
    }

    fn add_assign(&self, a: &mut MixedArena, dst: View, src: View) -> Result<()> {
        let operands = ops::elementwise::check_accumulate("add_assign", dst, src)?;
        let ([s], [d]) = split(a, operands)?;
        typed!(s, d => { elementwise::axpy_sign::<f32, _, _>(d, s, false) });
        Ok(())
    }

    fn sub_assign(&self, a: &mut MixedArena, dst: View, src: View) -> Result<()> {
        let operands = ops::elementwise::check_accumulate("sub_assign", dst, src)?;
        let ([s], [d]) = split(a, operands)?;
        typed!(s, d => { elementwise::axpy_sign::<f32, _, _>(d, s, true) });
        Ok(())
    }

    fn coupling(
        &self,
        a: &mut MixedArena,
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
        if fp.storage == Storage::Fix16 || y.region.storage == Storage::Fix16 {
            return coupling_fix16(a, x, f, y, dir, fp);
        }
        let fr = f.map(|f| f.region).unwrap_or_default();
        let in_place = x.region == y.region;
        let xr = if in_place {
            Region::default()
        } else {
            x.region
        };
        let ([xs, fs], [ys]) = split(a, Operands::new(OP, [xr, fr], [y.region]))?;
        let has_f = f.is_some();
        let bad = typed!(xs, fs, ys => {
            coupling::coupling::<f32, _, _, _>(
                fp,
                (!in_place).then_some(xs),
                has_f.then_some(fs),
                ys,
                dir,
            )
        });
        match bad {
            None => Ok(()),
            Some((at, v)) => Err(fp.overflow(OP, at, v)),
        }
    }

    fn batchnorm_forward_train(
        &self,
        a: &mut MixedArena,
        x: View,
        gamma: Region,
        beta: Region,
        y: View,
        stats: BnStats,
        running: Option<BnRunning>,
        args: BatchNormArgs,
    ) -> Result<()> {
        const OP: &str = "batchnorm_forward_train";
        let operands = ops::batchnorm::check_train(x, gamma, beta, y, stats, running)?;
        let ([xs, g, b], [ys, mo, io, rm, rv]) = split_fix(a, operands)?;
        let (g, b) = (f32_in(OP, "gamma", g)?, f32_in(OP, "beta", b)?);
        let (mo, io) = (f32_out(OP, "mean", mo)?, f32_out(OP, "invstd", io)?);
        let run = match running {
            Some(_) => Some((
                f32_out(OP, "running mean", rm)?,
                f32_out(OP, "running var", rv)?,
            )),
            None => None,
        };
        typed_fix!(xs => {
            typed!(ys => {
                batchnorm::forward_train::<f32, _, _>(x.shape, xs, g, b, ys, mo, io, run, args)
            })
        });
        Ok(())
    }

    fn batchnorm_apply(
        &self,
        a: &mut MixedArena,
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
        a: &mut MixedArena,
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
        a: &mut MixedArena,
        x: View,
        gamma: Region,
        beta: Region,
        running: BnRunning,
        y: View,
        eps: f64,
    ) -> Result<()> {
        const OP: &str = "batchnorm_forward_infer";
        let operands = ops::batchnorm::check_infer(x, gamma, beta, running, y)?;
        let ([xs, g, b, rm, rv], [ys]) = split_fix(a, operands)?;
        let (g, b) = (f32_in(OP, "gamma", g)?, f32_in(OP, "beta", b)?);
        let (rm, rv) = (
            f32_in(OP, "running mean", rm)?,
            f32_in(OP, "running var", rv)?,
        );
        typed_fix!(xs => {
            typed!(ys => { batchnorm::forward_infer::<f32, _, _>(x.shape, xs, g, b, rm, rv, ys, eps) })
        });
        Ok(())
    }

    fn batchnorm_backward(
        &self,
        a: &mut MixedArena,
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
        let operands = ops::batchnorm::check_backward(x, dy, gamma, stats, dx, dgamma, dbeta)?;
        let ([xs, gy, g, mu, is], [gx, dg, db]) = split_fix(a, operands)?;
        let g = f32_in(OP, "gamma", g)?;
        let (mu, is) = (f32_in(OP, "mean", mu)?, f32_in(OP, "invstd", is)?);
        let (dg, db) = (f32_out(OP, "dgamma", dg)?, f32_out(OP, "dbeta", db)?);
        typed_fix!(xs => {
            typed!(gy, gx => {
                batchnorm::backward::<f32, _, _, _>(x.shape, xs, gy, g, mu, is, gx, dg, db, acc(mode))
            })
        });
        Ok(())
    }

    fn bce_weights(
        &self,
        a: &mut MixedArena,
        target: View,
        mask: View,
        weight: View,
    ) -> Result<()> {
        const OP: &str = "bce_weights";
        let operands = ops::loss::check_weights(target, mask, weight)?;
        let ([t, m], [w]) = split(a, operands)?;
        let (t, m) = (f32_in(OP, "target", t)?, f32_in(OP, "mask", m)?);
        loss::weights(target.shape, t, m, f32_out(OP, "weight", w)?);
        Ok(())
    }

    fn bce_loss(
        &self,
        a: &mut MixedArena,
        logits: View,
        target: View,
        weight: View,
        mask: View,
        loss_out: Region,
        dlogits: Option<View>,
    ) -> Result<()> {
        const OP: &str = "bce_loss";
        let operands = ops::loss::check_bce(logits, target, weight, mask, loss_out, dlogits)?;
        let ([z, t, w, m], [l, d]) = split(a, operands)?;
        let (z, t) = (f32_in(OP, "logits", z)?, f32_in(OP, "target", t)?);
        let (w, m) = (f32_in(OP, "weight", w)?, f32_in(OP, "mask", m)?);
        let l = f32_out(OP, "loss", l)?;
        let has_d = dlogits.is_some();
        l[0] = typed!(d => { loss::bce::<f32, _>(z, t, w, m, has_d.then_some(d)) }) as f32;
        Ok(())
    }

    fn sigmoid(&self, a: &mut MixedArena, x: View, y: View) -> Result<()> {
        let ([xs], [ys]) = split(a, ops::loss::check_sigmoid(x, y)?)?;
        typed!(xs, ys => { loss::sigmoid_map::<f32, _, _>(xs, ys) });
        Ok(())
    }

    fn adam_step(
        &self,
        a: &mut MixedArena,
        param: Region,
        grad: Region,
        m: Region,
        v: Region,
        hp: AdamParams,
        step: u64,
    ) -> Result<()> {
        const OP: &str = "adam";
        let operands = ops::optim::check_adam(param, grad, m, v, step)?;
        let ([g], [p, ms, vs]) = split(a, operands)?;
        let g = f32_in(OP, "gradient", g)?;
        let (p, ms, vs) = (
            f32_out(OP, "parameter", p)?,
            f32_out(OP, "first moment", ms)?,
            f32_out(OP, "second moment", vs)?,
        );
        optim::adam(p, g, ms, vs, hp, step);
        Ok(())
    }

    fn sgd_step(
        &self,
        a: &mut MixedArena,
        param: Region,
        grad: Region,
        velocity: Option<Region>,
        hp: SgdParams,
    ) -> Result<()> {
        const OP: &str = "sgd";
        let operands = ops::optim::check_sgd(param, grad, velocity)?;
        let ([g], [p, vel]) = split(a, operands)?;
        let (g, p) = (f32_in(OP, "gradient", g)?, f32_out(OP, "parameter", p)?);
        let vel = match velocity {
            Some(_) => Some(f32_out(OP, "velocity", vel)?),
            None => None,
        };
        optim::sgd(p, g, vel, hp);
        Ok(())
    }
}

fn transfer_len(op: &'static str, r: Region, n: usize) -> Result<()> {
    if n != r.len {
        return Err(Error::region(
            op,
            format!("{n} values for a region of {}", r.len),
        ));
    }
    Ok(())
}

/// batchnorm_apply, with ELU fused into the same pass when `then_elu`.
fn bn_apply(
    a: &mut MixedArena,
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
    let ([xs, g, b, m, i], [ys]) = split_fix(a, operands)?;
    let (g, b) = (f32_in(op, "gamma", g)?, f32_in(op, "beta", b)?);
    let (m, i) = (f32_in(op, "mean", m)?, f32_in(op, "invstd", i)?);
    typed_fix!(xs => {
        typed!(ys => { batchnorm::apply_saved::<f32, _, _>(x.shape, xs, g, b, m, i, ys, then_elu) })
    });
    Ok(())
}

/// Values into a 16-bit state buffer (`src` of one value: a fill): each must lie on the grid and
/// in range, or be NaN (the mark of a freed element).
fn fill_fix16(op: &str, d: &mut [Fix16], src: &[f32]) -> Result<()> {
    let conv = |i: usize, v: f32| {
        Fix16::exact(v).ok_or_else(|| {
            Error::Invalid(format!(
                "{op}: value {v:e} (element {i}) is not on the 16-bit chain state's grid \
                 (k x 2^-{}, |k| <= {})",
                crate::ops::coupling::FIX16_FRAC_BITS,
                Fix16::LIMIT
            ))
        })
    };
    if let [v] = src {
        let k = conv(0, *v)?;
        d.fill(k);
        return Ok(());
    }
    for (i, (o, &v)) in d.iter_mut().zip(src).enumerate() {
        *o = conv(i, v)?;
    }
    Ok(())
}

/// The coupling on a 16-bit state (ops/coupling.rs): the entry y = q(x) from a float tensor into
/// a new state buffer, or a step on the state (in place or not) with F's or G's float output.
fn coupling_fix16(
    a: &mut MixedArena,
    x: View,
    f: Option<View>,
    y: View,
    dir: Direction,
    fp: FixedPoint,
) -> Result<()> {
    const OP: &str = "coupling";
    if fp != FixedPoint::fix16() || y.region.storage != Storage::Fix16 {
        return Err(Error::Invalid(format!(
            "{OP}: a 16-bit state is written in the 16-bit format (2^-{} grid) into a fix16 \
             buffer; got the format {fp:?} and a {} output",
            crate::ops::coupling::FIX16_FRAC_BITS,
            y.region.storage.name()
        )));
    }
    let bad = match f {
        None => {
            if x.region.storage == Storage::Fix16 {
                return Err(Error::Invalid(format!(
                    "{OP}: a chain's entry rounds a float tensor onto the 16-bit grid; its input \
                     is already a 16-bit state"
                )));
            }
            let ([xs], [ys]) = split_fix(a, Operands::new(OP, [x.region], [y.region]))?;
            let Typed::Fix16(ys) = ys else { unreachable!() };
            typed!(xs => { coupling::entry_fix16(xs, ys) })
        }
        Some(f) => {
            if x.region.storage != Storage::Fix16 {
                return Err(Error::Invalid(format!(
                    "{OP}: a step on a 16-bit state adds to a fix16 buffer; x is {}",
                    x.region.storage.name()
                )));
            }
            let in_place = x.region == y.region;
            let xr = if in_place {
                Region::default()
            } else {
                x.region
            };
            let ([xs, fs], [ys]) = split_fix(a, Operands::new(OP, [xr, f.region], [y.region]))?;
            let Typed::Fix16(ys) = ys else { unreachable!() };
            let xs = match xs {
                Typed::Fix16(xs) => Some(xs),
                _ if in_place => None,
                _ => unreachable!(),
            };
            typed!(fs => { coupling::step_fix16(xs, fs, ys, dir) })
        }
    };
    match bad {
        None => Ok(()),
        Some((at, v)) => Err(fp.overflow(OP, at, v)),
    }
}

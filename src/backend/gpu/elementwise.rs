//! Launchers of kernels/elementwise.cu: fill, copy, ELU forward and backward, add and the
//! coupling's in-place add/subtract. One thread per element, grid-stride beyond MAX_BLOCKS_1D.

use super::args::EwArgs;
use super::{acc, int, GpuArena, GpuBackend, Launcher};
use crate::backend::{Region, View, Write};
use crate::error::Result;
use crate::ops::{self, elementwise::AddForm};

const OP: &str = "elementwise";

#[allow(clippy::too_many_arguments)]
fn ew<L: Launcher>(
    b: &GpuBackend<L>,
    kernel: &str,
    n: usize,
    x: u64,
    y: u64,
    out: u64,
    accumulate: i32,
    alpha: f32,
) -> Result<()> {
    let args = EwArgs {
        a: x,
        b: y,
        out,
        n: int(OP, n)?,
        accumulate,
        alpha,
        pad: 0,
    };
    b.launch_1d(kernel, n, &args)
}

pub(super) fn fill<L: Launcher>(
    b: &GpuBackend<L>,
    a: &mut GpuArena<L::Buf>,
    dst: Region,
    value: f32,
) -> Result<()> {
    let _r = b.range("fill");
    ops::elementwise::check_fill(dst)?.check(a.len)?;
    let [d] = b.ptrs(a, [dst]);
    // In pieces: a whole arena can hold more elements than a kernel indexes (2^31).
    const PIECE: usize = 1 << 30;
    for start in (0..dst.len).step_by(PIECE) {
        let n = PIECE.min(dst.len - start);
        ew(b, "fill_f32", n, 0, 0, d + 4 * start as u64, 0, value)?;
    }
    Ok(())
}

pub(super) fn copy<L: Launcher>(
    b: &GpuBackend<L>,
    a: &mut GpuArena<L::Buf>,
    src: Region,
    dst: Region,
) -> Result<()> {
    let _r = b.range("copy");
    ops::elementwise::check_copy(src, dst)?.check(a.len)?;
    let [s, d] = b.ptrs(a, [src, dst]);
    ew(b, "copy_f32", dst.len, s, 0, d, 0, 0.0)
}

pub(super) fn elu_forward<L: Launcher>(
    b: &GpuBackend<L>,
    a: &mut GpuArena<L::Buf>,
    x: View,
    y: View,
) -> Result<()> {
    let _r = b.range("elu_forward");
    ops::elementwise::check_elu(x, y)?.check(a.len)?;
    let [xp, yp] = b.ptrs(a, [x.region, y.region]);
    ew(b, "elu_forward", y.region.len, xp, 0, yp, 0, 0.0)
}

pub(super) fn elu_backward<L: Launcher>(
    b: &GpuBackend<L>,
    a: &mut GpuArena<L::Buf>,
    y: View,
    dy: View,
    dx: View,
    mode: Write,
) -> Result<()> {
    let _r = b.range("elu_backward");
    ops::elementwise::check_elu_backward(y, dy, dx, mode)?.check(a.len)?;
    let [yp, gy, gx] = b.ptrs(a, [y.region, dy.region, dx.region]);
    ew(b, "elu_backward", dx.region.len, yp, gy, gx, acc(mode), 0.0)
}

pub(super) fn add<L: Launcher>(
    b: &GpuBackend<L>,
    a: &mut GpuArena<L::Buf>,
    p: View,
    q: View,
    out: View,
) -> Result<()> {
    let _r = b.range("add");
    match ops::elementwise::check_add(p, q, out)? {
        AddForm::Assign { dst, src } => accumulate(b, a, "add_assign", dst, src, 1.0),
        AddForm::Out(operands) => {
            operands.check(a.len)?;
            let [pp, qp, op] = b.ptrs(a, [p.region, q.region, out.region]);
            ew(b, "add_f32", out.region.len, pp, qp, op, 0, 0.0)
        }
    }
}

/// dst += sign * src (`op`: add_assign for +1, sub_assign for -1).
pub(super) fn accumulate<L: Launcher>(
    b: &GpuBackend<L>,
    a: &mut GpuArena<L::Buf>,
    op: &'static str,
    dst: View,
    src: View,
    sign: f32,
) -> Result<()> {
    let _r = b.range(op);
    ops::elementwise::check_accumulate(op, dst, src)?.check(a.len)?;
    let [s, d] = b.ptrs(a, [src.region, dst.region]);
    ew(b, "add_assign_f32", dst.region.len, s, 0, d, 0, sign)
}

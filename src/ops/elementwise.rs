//! Elementwise ops: ELU (alpha 1), add, and the reversible coupling's y = x + f / x = y - f.
//! ELU's derivative is a function of its output (1 where y > 0, y + 1 elsewhere), so the backward
//! needs only y and the input can be freed (or overwritten in place).

use super::Operands;
use crate::backend::{Region, View, Write};
use crate::error::{Error, Result};
use crate::tensor::Element;

/// Branch-free so that loops over it vectorise: both sides are computed, one is selected.
#[inline(always)]
pub fn elu<T: Element>(x: T) -> T {
    let neg = if x > T::ZERO { T::ZERO } else { x };
    let e = neg.exp_nonpositive() - T::ONE;
    if x > T::ZERO {
        x
    } else {
        e
    }
}

/// dELU/dx expressed through y = elu(x).
#[inline(always)]
pub fn elu_grad_from_output<T: Element>(y: T) -> T {
    if y > T::ZERO {
        T::ONE
    } else {
        y + T::ONE
    }
}

pub fn check_fill(dst: Region) -> Result<Operands<0, 1>> {
    Ok(Operands::new("fill", [], [dst]))
}

pub fn check_copy(src: Region, dst: Region) -> Result<Operands<1, 1>> {
    if src.len != dst.len {
        return Err(Error::region(
            "copy",
            format!("source has {} elements, destination {}", src.len, dst.len),
        ));
    }
    Ok(Operands::new("copy", [src], [dst]))
}

/// ELU may run in place (y == x): then x is not an input of its own (the empty region) and the
/// op reads and writes y.
pub fn check_elu(x: View, y: View) -> Result<Operands<1, 1>> {
    super::same_shape("elu", "y vs x", y.shape, x.shape)?;
    let x_in = if x.region == y.region {
        Region::default()
    } else {
        x.region
    };
    Ok(Operands::new("elu", [x_in], [y.region]))
}

/// Whether an ELU forward with these operands runs in place.
pub fn elu_in_place(x: View, y: View) -> bool {
    x.region == y.region
}

/// The ELU backward reads y and dy and writes dx; dx may be dy when it is overwritten (then dy is
/// the empty region here and the op works in place on dx).
pub fn check_elu_backward(y: View, dy: View, dx: View, mode: Write) -> Result<Operands<2, 1>> {
    const OP: &str = "elu_backward";
    super::same_shape(OP, "dy vs y", dy.shape, y.shape)?;
    super::same_shape(OP, "dx vs y", dx.shape, y.shape)?;
    let dy_in = if elu_backward_in_place(dy, dx, mode) {
        Region::default()
    } else {
        dy.region
    };
    Ok(Operands::new(OP, [y.region, dy_in], [dx.region]))
}

pub fn elu_backward_in_place(dy: View, dx: View, mode: Write) -> bool {
    dx.region == dy.region && mode == Write::Overwrite
}

/// How `add` runs: into one of its operands (`dst += src`) or into a third region.
#[derive(Clone, Copy, Debug)]
pub enum AddForm {
    Assign { dst: View, src: View },
    Out(Operands<2, 1>),
}

/// out = p + q, where out may be p or q.
pub fn check_add(p: View, q: View, out: View) -> Result<AddForm> {
    super::same_shape("add", "p vs q", p.shape, q.shape)?;
    super::same_shape("add", "out vs p", out.shape, p.shape)?;
    Ok(if out.region == p.region {
        AddForm::Assign { dst: out, src: q }
    } else if out.region == q.region {
        AddForm::Assign { dst: out, src: p }
    } else {
        AddForm::Out(Operands::new("add", [p.region, q.region], [out.region]))
    })
}

/// dst += src or dst -= src (`op` names which): src in, dst read and written.
pub fn check_accumulate(op: &'static str, dst: View, src: View) -> Result<Operands<1, 1>> {
    super::same_shape(op, "dst vs src", dst.shape, src.shape)?;
    Ok(Operands::new(op, [src.region], [dst.region]))
}

//! maxpool: 1x2x2 windows, stride 1x2x2 (z is never pooled). An odd H or W is an error, not a crop.

use super::Operands;
use crate::backend::View;
use crate::error::{Error, Result};
use crate::tensor::Shape5;

pub fn check(x: Shape5, y: Shape5) -> Result<()> {
    if !x.h.is_multiple_of(2) || !x.w.is_multiple_of(2) {
        return Err(Error::shape(
            "maxpool",
            format!("input {x} has an odd H or W; 1x2x2 pooling needs both even (choose a patch divisible by 2^(scales-1))"),
        ));
    }
    let want = Shape5::new(x.n, x.c, x.d, x.h / 2, x.w / 2);
    if y != want {
        return Err(Error::shape(
            "maxpool",
            format!("output is {y}, expected {want}"),
        ));
    }
    Ok(())
}

pub fn check_forward(x: View, y: View) -> Result<Operands<1, 1>> {
    check(x.shape, y.shape)?;
    Ok(Operands::new("maxpool", [x.region], [y.region]))
}

/// x is read again to find each window's arg-max; dy has the pooled shape, dx the shape of x.
pub fn check_backward(x: View, dy: View, dx: View) -> Result<Operands<2, 1>> {
    const OP: &str = "maxpool_backward";
    check(x.shape, dy.shape)?;
    super::same_shape(OP, "dx vs x", dx.shape, x.shape)?;
    Ok(Operands::new(OP, [x.region, dy.region], [dx.region]))
}

//! maxpool: 1x2x2 windows, stride 1x2x2 (z is never pooled). An odd H or W is an error, not a crop.

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

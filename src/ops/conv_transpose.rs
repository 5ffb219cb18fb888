//! conv_transpose: the decoder's upsampling, kernel 1x2x2 with stride 1x2x2 and bias.
//! x (N, Ci, D, H, W), w (Ci, Co, 1, 2, 2) as PyTorch stores it, y (N, Co, D, 2H, 2W).
//! Kernel equals stride, so every output voxel has exactly one input voxel.

use super::Operands;
use crate::backend::{Region, View};
use crate::error::{Error, Result};
use crate::tensor::Shape5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvTransposeGeom {
    pub n: usize,
    pub ci: usize,
    pub co: usize,
    pub d: usize,
    pub h: usize,
    pub w: usize,
}

impl ConvTransposeGeom {
    pub fn check(x: Shape5, w: Shape5, y: Shape5) -> Result<Self> {
        const OP: &str = "conv_transpose";
        if (w.d, w.h, w.w) != (1, 2, 2) {
            return Err(Error::shape(
                OP,
                format!("kernel {}x{}x{} must be 1x2x2", w.d, w.h, w.w),
            ));
        }
        if w.n != x.c {
            return Err(Error::shape(
                OP,
                format!("input has {} channels, weight expects {}", x.c, w.n),
            ));
        }
        let want = Shape5::new(x.n, w.c, x.d, 2 * x.h, 2 * x.w);
        if y != want {
            return Err(Error::shape(OP, format!("output is {y}, expected {want}")));
        }
        Ok(ConvTransposeGeom {
            n: x.n,
            ci: x.c,
            co: w.c,
            d: x.d,
            h: x.h,
            w: x.w,
        })
    }
    pub fn flops(&self) -> f64 {
        2.0 * (self.n * self.ci * self.co * 4) as f64 * (self.d * self.h * self.w) as f64
    }
}

/// conv_transpose_forward's operands: x, w and the bias (empty when absent) in, y out.
pub fn check_forward(
    x: View,
    w: View,
    bias: Option<Region>,
    y: View,
) -> Result<(ConvTransposeGeom, Operands<3, 1>)> {
    let g = ConvTransposeGeom::check(x.shape, w.shape, y.shape)?;
    if let Some(b) = bias {
        super::vector_len("conv_transpose", "bias", b.len, g.co)?;
    }
    let b = bias.unwrap_or_default();
    Ok((
        g,
        Operands::new("conv_transpose", [x.region, w.region, b], [y.region]),
    ))
}

pub fn check_backward_input(
    dy: View,
    w: View,
    dx: View,
) -> Result<(ConvTransposeGeom, Operands<2, 1>)> {
    let g = ConvTransposeGeom::check(dx.shape, w.shape, dy.shape)?;
    Ok((
        g,
        Operands::new(
            "conv_transpose_backward_input",
            [dy.region, w.region],
            [dx.region],
        ),
    ))
}

pub fn check_backward_weight(
    x: View,
    dy: View,
    dw: View,
) -> Result<(ConvTransposeGeom, Operands<2, 1>)> {
    let g = ConvTransposeGeom::check(x.shape, dw.shape, dy.shape)?;
    Ok((
        g,
        Operands::new(
            "conv_transpose_backward_weight",
            [x.region, dy.region],
            [dw.region],
        ),
    ))
}

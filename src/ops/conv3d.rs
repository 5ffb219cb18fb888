//! conv3d: stride 1, "same" zero padding, odd kernel in every dimension, optional bias.
//! x (N, Ci, D, H, W), w (Co, Ci, kD, kH, kW), y (N, Co, D, H, W).

use super::Operands;
use crate::backend::{Region, View};
use crate::error::{Error, Result};
use crate::tensor::Shape5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv3dGeom {
    pub n: usize,
    pub ci: usize,
    pub co: usize,
    pub d: usize,
    pub h: usize,
    pub w: usize,
    pub kd: usize,
    pub kh: usize,
    pub kw: usize,
}

impl Conv3dGeom {
    pub fn check(x: Shape5, w: Shape5, y: Shape5) -> Result<Self> {
        const OP: &str = "conv3d";
        if w.d.is_multiple_of(2) || w.h.is_multiple_of(2) || w.w.is_multiple_of(2) {
            return Err(Error::shape(
                OP,
                format!(
                    "kernel {}x{}x{} must be odd in every dimension",
                    w.d, w.h, w.w
                ),
            ));
        }
        if w.c != x.c {
            return Err(Error::shape(
                OP,
                format!("input has {} channels, weight expects {}", x.c, w.c),
            ));
        }
        let want = Shape5::new(x.n, w.n, x.d, x.h, x.w);
        if y != want {
            return Err(Error::shape(OP, format!("output is {y}, expected {want}")));
        }
        Ok(Conv3dGeom {
            n: x.n,
            ci: x.c,
            co: w.n,
            d: x.d,
            h: x.h,
            w: x.w,
            kd: w.d,
            kh: w.h,
            kw: w.w,
        })
    }
    pub fn taps(&self) -> usize {
        self.kd * self.kh * self.kw
    }
    pub fn spatial(&self) -> usize {
        self.d * self.h * self.w
    }
    /// Multiply-adds times two, for one pass (forward, input gradient and weight gradient cost the same).
    pub fn flops(&self) -> f64 {
        2.0 * (self.n * self.co * self.ci * self.taps()) as f64 * self.spatial() as f64
    }
    pub fn weight_shape(&self) -> Shape5 {
        Shape5::new(self.co, self.ci, self.kd, self.kh, self.kw)
    }
    pub fn input_shape(&self) -> Shape5 {
        Shape5::new(self.n, self.ci, self.d, self.h, self.w)
    }
    pub fn output_shape(&self) -> Shape5 {
        Shape5::new(self.n, self.co, self.d, self.h, self.w)
    }
}

/// conv3d_forward's operands: x, w and the bias (empty when absent) in, y out.
pub fn check_forward(
    x: View,
    w: View,
    bias: Option<Region>,
    y: View,
) -> Result<(Conv3dGeom, Operands<3, 1>)> {
    let g = Conv3dGeom::check(x.shape, w.shape, y.shape)?;
    if let Some(b) = bias {
        super::vector_len("conv3d", "bias", b.len, g.co)?;
    }
    let b = bias.unwrap_or_default();
    Ok((
        g,
        Operands::new("conv3d", [x.region, w.region, b], [y.region]),
    ))
}

pub fn check_backward_input(dy: View, w: View, dx: View) -> Result<(Conv3dGeom, Operands<2, 1>)> {
    let g = Conv3dGeom::check(dx.shape, w.shape, dy.shape)?;
    Ok((
        g,
        Operands::new("conv3d_backward_input", [dy.region, w.region], [dx.region]),
    ))
}

pub fn check_backward_weight(x: View, dy: View, dw: View) -> Result<(Conv3dGeom, Operands<2, 1>)> {
    let g = Conv3dGeom::check(x.shape, dw.shape, dy.shape)?;
    Ok((
        g,
        Operands::new("conv3d_backward_weight", [x.region, dy.region], [dw.region]),
    ))
}

/// The bias gradient: per-channel sums of dy into db (also conv_transpose's).
pub fn check_backward_bias(dy: View, db: Region) -> Result<Operands<1, 1>> {
    const OP: &str = "conv3d_backward_bias";
    super::vector_len(OP, "bias gradient", db.len, dy.shape.c)?;
    Ok(Operands::new(OP, [dy.region], [db]))
}

//! Binary cross-entropy on logits with per-voxel class-rebalancing weights and a mask.
//!
//! For each channel, among masked voxels, w_pos ∝ 1/n_pos and w_neg ∝ 1/n_neg with
//! w_pos + w_neg = 1, i.e. w_pos = n_neg / n and w_neg = n_pos / n. A channel whose masked voxels
//! are all of one class gets weight 1/2 there (as if balanced), so that it still teaches.
//! loss = sum(mask * w * bce(z, t)) / max(1, sum(mask)), bce(z, t) = max(z, 0) - z t + ln(1 + e^-|z|),
//! and d loss / d z = mask * w * (sigmoid(z) - t) / max(1, sum(mask)).

use super::{same_shape, vector_len, Operands};
use crate::backend::{Region, View};
use crate::error::Result;
use crate::tensor::Element;

#[inline(always)]
pub fn bce_with_logits<T: Element>(z: T, t: T) -> T {
    let zero = T::ZERO;
    let relu = if z > zero { z } else { zero };
    relu - z * t + (-(z.abs())).exp().ln_1p()
}

#[inline(always)]
pub fn sigmoid<T: Element>(z: T) -> T {
    if z >= T::ZERO {
        T::ONE / (T::ONE + (-z).exp())
    } else {
        let e = z.exp();
        e / (T::ONE + e)
    }
}

/// (w_pos, w_neg) for a channel with these counts among masked voxels.
pub fn class_weights(n_pos: u64, n_neg: u64) -> (f64, f64) {
    let n = n_pos + n_neg;
    if n_pos == 0 || n_neg == 0 {
        (0.5, 0.5)
    } else {
        (n_neg as f64 / n as f64, n_pos as f64 / n as f64)
    }
}

/// Class weights: target and mask in, weight out, all of one shape.
pub fn check_weights(target: View, mask: View, weight: View) -> Result<Operands<2, 1>> {
    const OP: &str = "bce_weights";
    same_shape(OP, "mask vs target", mask.shape, target.shape)?;
    same_shape(OP, "weight vs target", weight.shape, target.shape)?;
    Ok(Operands::new(
        OP,
        [target.region, mask.region],
        [weight.region],
    ))
}

/// The loss: logits, target, weight and mask in; the one-element loss and (when asked, else the
/// empty region) the gradient of the logits out.
pub fn check_bce(
    logits: View,
    target: View,
    weight: View,
    mask: View,
    loss: Region,
    dlogits: Option<View>,
) -> Result<Operands<4, 2>> {
    const OP: &str = "bce_loss";
    for (what, v) in [("target", target), ("weight", weight), ("mask", mask)] {
        same_shape(OP, &format!("{what} vs logits"), v.shape, logits.shape)?;
    }
    vector_len(OP, "loss output", loss.len, 1)?;
    let dz = match dlogits {
        Some(dz) => {
            same_shape(OP, "dlogits vs logits", dz.shape, logits.shape)?;
            dz.region
        }
        None => Region::default(),
    };
    Ok(Operands::new(
        OP,
        [logits.region, target.region, weight.region, mask.region],
        [loss, dz],
    ))
}

pub fn check_sigmoid(x: View, y: View) -> Result<Operands<1, 1>> {
    same_shape("sigmoid", "y vs x", y.shape, x.shape)?;
    Ok(Operands::new("sigmoid", [x.region], [y.region]))
}

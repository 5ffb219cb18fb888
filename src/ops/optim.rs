//! Optimisers: Adam (bias-corrected, as PyTorch) and SGD with optional momentum and weight decay.

use super::{vector_len, Operands};
use crate::backend::Region;
use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamParams {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    /// Superhuman uses 0.01, far above the usual 1e-8.
    pub eps: f64,
}

impl Default for AdamParams {
    fn default() -> Self {
        AdamParams {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 0.01,
        }
    }
}

impl AdamParams {
    /// Step size and bias correction of the second moment for step `t` (from 1):
    /// p -= lr_t * m / (sqrt(v) / sqrt(1 - beta2^t) + eps), lr_t = lr / (1 - beta1^t).
    pub fn corrections(&self, t: u64) -> (f64, f64) {
        let bc1 = 1.0 - self.beta1.powi(t as i32);
        let bc2 = 1.0 - self.beta2.powi(t as i32);
        (self.lr / bc1, 1.0 / bc2.sqrt())
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdParams {
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
}

/// Adam: the gradient in; the parameters and both moments updated in place.
pub fn check_adam(
    param: Region,
    grad: Region,
    m: Region,
    v: Region,
    step: u64,
) -> Result<Operands<1, 3>> {
    const OP: &str = "adam_step";
    if step == 0 {
        return Err(Error::Invalid("adam_step: steps count from 1".into()));
    }
    for r in [grad, m, v] {
        vector_len(OP, "gradient/moment buffer", r.len, param.len)?;
    }
    Ok(Operands::new(OP, [grad], [param, m, v]))
}

/// SGD: the gradient in; the parameters and (with momentum; else the empty region) the velocity
/// updated in place.
pub fn check_sgd(param: Region, grad: Region, velocity: Option<Region>) -> Result<Operands<1, 2>> {
    const OP: &str = "sgd_step";
    vector_len(OP, "gradient", grad.len, param.len)?;
    let vel = match velocity {
        Some(vr) => {
            vector_len(OP, "velocity", vr.len, param.len)?;
            vr
        }
        None => Region::default(),
    };
    Ok(Operands::new(OP, [grad], [param, vel]))
}

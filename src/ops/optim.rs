//! Optimisers: Adam (bias-corrected, as PyTorch) and SGD with optional momentum and weight decay.

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

//! BatchNorm3d over (N, D, H, W) per channel, PyTorch's conventions: biased variance to normalise,
//! unbiased variance in the running estimate, running = (1 - momentum) * running + momentum * batch.

/// Superhuman's settings: momentum 0.001, eps 1e-5.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNormArgs {
    pub eps: f64,
    pub momentum: f64,
}

impl Default for BatchNormArgs {
    fn default() -> Self {
        BatchNormArgs {
            eps: 1e-5,
            momentum: 0.001,
        }
    }
}

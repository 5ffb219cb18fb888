//! BatchNorm3d over (N, D, H, W) per channel, PyTorch's conventions: biased variance to normalise,
//! unbiased variance in the running estimate, running = (1 - momentum) * running + momentum * batch.

use super::{per_channel, same_shape, vector_len, Operands};
use crate::backend::{BnRunning, BnStats, Region, View};
use crate::error::Result;

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

/// The training forward: x, gamma, beta in; y, the saved statistics and (when given) the running
/// statistics out (empty regions when not given: a recomputation must not update them twice).
pub fn check_train(
    x: View,
    gamma: Region,
    beta: Region,
    y: View,
    stats: BnStats,
    running: Option<BnRunning>,
) -> Result<Operands<3, 5>> {
    const OP: &str = "batchnorm";
    same_shape(OP, "y vs x", y.shape, x.shape)?;
    let c = x.shape.c;
    per_channel(
        OP,
        &[
            ("gamma", gamma),
            ("beta", beta),
            ("saved mean", stats.mean),
            ("saved invstd", stats.invstd),
        ],
        c,
    )?;
    let (rm, rv) = match running {
        Some(run) => {
            vector_len(OP, "running mean", run.mean.len, c)?;
            vector_len(OP, "running var", run.var.len, c)?;
            (run.mean, run.var)
        }
        None => (Region::default(), Region::default()),
    };
    Ok(Operands::new(
        OP,
        [x.region, gamma, beta],
        [y.region, stats.mean, stats.invstd, rm, rv],
    ))
}

/// Normalisation with saved statistics (`op`: batchnorm_apply or batchnorm_apply_elu).
pub fn check_apply(
    op: &'static str,
    x: View,
    gamma: Region,
    beta: Region,
    stats: BnStats,
    y: View,
) -> Result<Operands<5, 1>> {
    same_shape(op, "y vs x", y.shape, x.shape)?;
    per_channel(
        op,
        &[
            ("gamma", gamma),
            ("beta", beta),
            ("saved mean", stats.mean),
            ("saved invstd", stats.invstd),
        ],
        x.shape.c,
    )?;
    Ok(Operands::new(
        op,
        [x.region, gamma, beta, stats.mean, stats.invstd],
        [y.region],
    ))
}

/// Inference: normalisation with the running statistics.
pub fn check_infer(
    x: View,
    gamma: Region,
    beta: Region,
    running: BnRunning,
    y: View,
) -> Result<Operands<5, 1>> {
    const OP: &str = "batchnorm_infer";
    same_shape(OP, "y vs x", y.shape, x.shape)?;
    per_channel(
        OP,
        &[
            ("gamma", gamma),
            ("beta", beta),
            ("running mean", running.mean),
            ("running var", running.var),
        ],
        x.shape.c,
    )?;
    Ok(Operands::new(
        OP,
        [x.region, gamma, beta, running.mean, running.var],
        [y.region],
    ))
}

/// The backward: x, dy, gamma and the saved statistics in; dx, dgamma and dbeta out.
#[allow(clippy::too_many_arguments)]
pub fn check_backward(
    x: View,
    dy: View,
    gamma: Region,
    stats: BnStats,
    dx: View,
    dgamma: Region,
    dbeta: Region,
) -> Result<Operands<5, 3>> {
    const OP: &str = "batchnorm_backward";
    same_shape(OP, "dy vs x", dy.shape, x.shape)?;
    same_shape(OP, "dx vs x", dx.shape, x.shape)?;
    per_channel(
        OP,
        &[
            ("gamma", gamma),
            ("mean", stats.mean),
            ("invstd", stats.invstd),
            ("dgamma", dgamma),
            ("dbeta", dbeta),
        ],
        x.shape.c,
    )?;
    Ok(Operands::new(
        OP,
        [x.region, dy.region, gamma, stats.mean, stats.invstd],
        [dx.region, dgamma, dbeta],
    ))
}

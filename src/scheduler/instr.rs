//! The instructions of a plan: backend calls over buffers, before offsets are known.

use crate::backend::Write;
use crate::ops::coupling::{Direction, FixedPoint};
use crate::tensor::Shape5;

pub type BufId = usize;

/// A tensor-shaped span of a buffer: `at` elements into it (channel halves of reversible chains).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opd {
    pub buf: BufId,
    pub at: usize,
    pub shape: Shape5,
}

impl Opd {
    pub fn whole(buf: BufId, shape: Shape5) -> Self {
        Opd { buf, at: 0, shape }
    }
    /// Channel half 0 or 1 (contiguous because the batch is 1).
    pub fn half(&self, i: usize) -> Self {
        debug_assert_eq!(self.shape.n, 1);
        let s = self.shape.with_c(self.shape.c / 2);
        Opd {
            buf: self.buf,
            at: self.at + i * s.len(),
            shape: s,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Forward,
    Loss,
    Backward,
    Update,
}

#[derive(Clone, Debug)]
pub enum Instr {
    Zero {
        dst: Opd,
    },
    Copy {
        src: Opd,
        dst: Opd,
    },
    Conv {
        x: Opd,
        w: Opd,
        b: Option<Opd>,
        y: Opd,
    },
    ConvBwdInput {
        dy: Opd,
        w: Opd,
        dx: Opd,
        mode: Write,
    },
    ConvBwdWeight {
        x: Opd,
        dy: Opd,
        dw: Opd,
        mode: Write,
    },
    BiasBwd {
        dy: Opd,
        db: Opd,
        mode: Write,
    },
    ConvT {
        x: Opd,
        w: Opd,
        b: Opd,
        y: Opd,
    },
    ConvTBwdInput {
        dy: Opd,
        w: Opd,
        dx: Opd,
        mode: Write,
    },
    ConvTBwdWeight {
        x: Opd,
        dy: Opd,
        dw: Opd,
        mode: Write,
    },
    Pool {
        x: Opd,
        y: Opd,
    },
    PoolBwd {
        x: Opd,
        dy: Opd,
        dx: Opd,
        mode: Write,
    },
    Elu {
        x: Opd,
        y: Opd,
    },
    EluBwd {
        y: Opd,
        dy: Opd,
        dx: Opd,
        mode: Write,
    },
    Add {
        p: Opd,
        q: Opd,
        out: Opd,
    },
    AddAssign {
        dst: Opd,
        src: Opd,
    },
    SubAssign {
        dst: Opd,
        src: Opd,
    },
    /// Exact reversible coupling (ops/coupling.rs): y = x +- q(f), or y = q(x) without f; y may
    /// be x.
    Coupling {
        x: Opd,
        f: Option<Opd>,
        y: Opd,
        dir: Direction,
        fp: FixedPoint,
    },
    /// `running` is None when recomputing: running statistics move once per step.
    BnTrain {
        x: Opd,
        gamma: Opd,
        beta: Opd,
        y: Opd,
        mean: Opd,
        invstd: Opd,
        running: Option<(Opd, Opd)>,
    },
    /// Inference: running statistics instead of batch statistics.
    /// Recomputation: batch statistics saved by the forward; with `elu`, ELU in the same pass
    /// (the planner folds an in-place ELU on y into the BnApply before it).
    BnApply {
        x: Opd,
        gamma: Opd,
        beta: Opd,
        mean: Opd,
        invstd: Opd,
        y: Opd,
        elu: bool,
    },
    BnInfer {
        x: Opd,
        gamma: Opd,
        beta: Opd,
        mean: Opd,
        var: Opd,
        y: Opd,
    },
    Sigmoid {
        x: Opd,
        y: Opd,
    },
    BnBwd {
        x: Opd,
        dy: Opd,
        gamma: Opd,
        mean: Opd,
        invstd: Opd,
        dx: Opd,
        dgamma: Opd,
        dbeta: Opd,
        mode: Write,
    },
    BceWeights {
        target: Opd,
        mask: Opd,
        weight: Opd,
    },
    Bce {
        z: Opd,
        target: Opd,
        weight: Opd,
        mask: Opd,
        loss: Opd,
        dz: Option<Opd>,
    },
    Adam {
        p: Opd,
        g: Opd,
        m: Opd,
        v: Opd,
    },
}

impl Instr {
    /// Every operand, read or written: the planner derives buffer lifetimes from these.
    pub fn operands(&self) -> Vec<Opd> {
        use Instr::*;
        match self {
            Zero { dst } => vec![*dst],
            Copy { src, dst } => vec![*src, *dst],
            Conv { x, w, b, y } => [Some(*x), Some(*w), *b, Some(*y)]
                .into_iter()
                .flatten()
                .collect(),
            ConvBwdInput { dy, w, dx, .. } | ConvTBwdInput { dy, w, dx, .. } => vec![*dy, *w, *dx],
            ConvBwdWeight { x, dy, dw, .. } | ConvTBwdWeight { x, dy, dw, .. } => {
                vec![*x, *dy, *dw]
            }
            BiasBwd { dy, db, .. } => vec![*dy, *db],
            ConvT { x, w, b, y } => vec![*x, *w, *b, *y],
            Pool { x, y } | Elu { x, y } => vec![*x, *y],
            PoolBwd { x, dy, dx, .. } => vec![*x, *dy, *dx],
            EluBwd { y, dy, dx, .. } => vec![*y, *dy, *dx],
            Add { p, q, out } => vec![*p, *q, *out],
            AddAssign { dst, src } | SubAssign { dst, src } => vec![*dst, *src],
            Coupling { x, f, y, .. } => [Some(*x), *f, Some(*y)].into_iter().flatten().collect(),
            BnTrain {
                x,
                gamma,
                beta,
                y,
                mean,
                invstd,
                running,
            } => {
                let mut v = vec![*x, *gamma, *beta, *y, *mean, *invstd];
                if let Some((m, r)) = running {
                    v.extend([*m, *r]);
                }
                v
            }
            BnBwd {
                x,
                dy,
                gamma,
                mean,
                invstd,
                dx,
                dgamma,
                dbeta,
                ..
            } => vec![*x, *dy, *gamma, *mean, *invstd, *dx, *dgamma, *dbeta],
            BnInfer {
                x,
                gamma,
                beta,
                mean,
                var,
                y,
            } => vec![*x, *gamma, *beta, *mean, *var, *y],
            BnApply {
                x,
                gamma,
                beta,
                mean,
                invstd,
                y,
                ..
            } => vec![*x, *gamma, *beta, *mean, *invstd, *y],
            Sigmoid { x, y } => vec![*x, *y],
            BceWeights {
                target,
                mask,
                weight,
            } => vec![*target, *mask, *weight],
            Bce {
                z,
                target,
                weight,
                mask,
                loss,
                dz,
            } => {
                let mut v = vec![*z, *target, *weight, *mask, *loss];
                v.extend(dz.iter().copied());
                v
            }
            Adam { p, g, m, v } => vec![*p, *g, *m, *v],
        }
    }

    /// Buffers a forward instruction writes (empty for backward and optimiser instructions).
    pub fn written(&self) -> Vec<Opd> {
        use Instr::*;
        match self {
            Zero { dst } | Copy { dst, .. } | AddAssign { dst, .. } | SubAssign { dst, .. } => {
                vec![*dst]
            }
            Conv { y, .. } | ConvT { y, .. } | Pool { y, .. } | Elu { y, .. } => vec![*y],
            BnTrain { y, .. } | BnInfer { y, .. } | BnApply { y, .. } | Sigmoid { y, .. } => {
                vec![*y]
            }
            Add { out, .. } => vec![*out],
            Coupling { y, .. } => vec![*y],
            _ => vec![],
        }
    }

    /// The op family name, as used in `ops::` and `kernels/` (for profiles and reports).
    pub fn op_name(&self) -> &'static str {
        use Instr::*;
        match self {
            Zero { .. } | Copy { .. } => "copy",
            Conv { .. } => "conv3d_forward",
            ConvBwdInput { .. } => "conv3d_backward_input",
            ConvBwdWeight { .. } => "conv3d_backward_weight",
            BiasBwd { .. } => "conv3d_backward_bias",
            ConvT { .. } => "conv_transpose_forward",
            ConvTBwdInput { .. } => "conv_transpose_backward_input",
            ConvTBwdWeight { .. } => "conv_transpose_backward_weight",
            Pool { .. } => "maxpool_forward",
            PoolBwd { .. } => "maxpool_backward",
            Elu { .. } => "elu_forward",
            EluBwd { .. } => "elu_backward",
            Add { .. } => "add",
            AddAssign { .. } => "add_assign",
            SubAssign { .. } => "sub_assign",
            Coupling { .. } => "coupling",
            BnTrain { .. } => "batchnorm_forward_train",
            BnBwd { .. } => "batchnorm_backward",
            BnInfer { .. } => "batchnorm_forward_infer",
            BnApply { elu: false, .. } => "batchnorm_apply",
            BnApply { elu: true, .. } => "batchnorm_apply_elu",
            Sigmoid { .. } => "sigmoid",
            BceWeights { .. } => "bce_weights",
            Bce { .. } => "bce_loss",
            Adam { .. } => "adam_step",
        }
    }
}

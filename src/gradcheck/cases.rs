//! The op cases of the gradient checker: each lays its operands in an arena, runs the op's forward
//! and backward on any backend, and reads back the output and the input gradients.

use crate::backend::{Backend, BnStats, Bump, View, Write};
use crate::error::Result;
use crate::ops::batchnorm::BatchNormArgs;
use crate::rng::Rng;
use crate::tensor::{Element, Shape5};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    Conv3d { bias: bool },
    ConvTranspose,
    Maxpool,
    Elu { inplace: bool },
    Add,
    CouplingForward,
    CouplingInverse,
    BatchNorm,
    Bce,
}

#[derive(Clone, Debug)]
pub struct Input {
    pub name: &'static str,
    pub shape: Shape5,
    pub data: Vec<f64>,
    /// Whether the checker differentiates with respect to this input.
    pub diff: bool,
}

#[derive(Clone, Debug)]
pub struct Case {
    /// Op family, as named in `ops::` and on the command line.
    pub op: &'static str,
    pub variant: String,
    pub kind: OpKind,
    pub inputs: Vec<Input>,
    pub out_shape: Shape5,
    /// Run the backward with `Write::Accumulate` on gradient buffers that already hold values.
    pub accumulate: bool,
}

/// What `Case::eval` returns: the op's output and the gradient of sum(dy * output) per input
/// (empty for inputs that are not differentiated).
pub struct Evaluation {
    pub output: Vec<f64>,
    pub grads: Vec<Vec<f64>>,
}

fn up<B: Backend>(b: &B, a: &mut B::Arena, v: View, data: &[f64]) -> Result<()> {
    let d: Vec<B::Elem> = data.iter().map(|&x| B::Elem::from_f64(x)).collect();
    b.upload(a, v.region, &d)
}

fn down<B: Backend>(b: &B, a: &B::Arena, v: View) -> Result<Vec<f64>> {
    let mut d = vec![B::Elem::ZERO; v.region.len];
    b.download(a, v.region, &mut d)?;
    Ok(d.iter().map(|x| x.to_f64()).collect())
}

impl Case {
    pub fn shape_desc(&self) -> String {
        self.inputs
            .iter()
            .map(|i| format!("{}={}", i.name, i.shape))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Runs the forward; with `dy`, also the backward. `prior` holds the values the gradient buffers
    /// start from when the case accumulates (they are subtracted again before returning).
    pub fn eval<B: Backend>(
        &self,
        b: &B,
        vals: &[Vec<f64>],
        dy: Option<&[f64]>,
        prior: &[Vec<f64>],
    ) -> Result<Evaluation> {
        let mut bump = Bump::default();
        let ins: Vec<View> = self.inputs.iter().map(|i| bump.view(i.shape)).collect();
        let mut out = bump.view(self.out_shape);
        let dyv = bump.view(self.out_shape);
        let gs: Vec<View> = self.inputs.iter().map(|i| bump.view(i.shape)).collect();
        let c = self.inputs[0].shape.c;
        let stats = BnStats {
            mean: bump.take(c),
            invstd: bump.take(c),
        };
        let weight = bump.view(self.inputs[0].shape);
        let loss = bump.take(1);
        let mut a = b.alloc_arena(bump.len())?;
        for (v, d) in ins.iter().zip(vals) {
            up(b, &mut a, *v, d)?;
        }
        let bn = BatchNormArgs::default();
        match self.kind {
            OpKind::Conv3d { bias } => {
                b.conv3d_forward(&mut a, ins[0], ins[1], bias.then(|| ins[2].region), out)?
            }
            OpKind::ConvTranspose => {
                b.conv_transpose_forward(&mut a, ins[0], ins[1], Some(ins[2].region), out)?
            }
            OpKind::Maxpool => b.maxpool_forward(&mut a, ins[0], out)?,
            OpKind::Elu { inplace } => {
                if inplace {
                    out = ins[0];
                }
                b.elu_forward(&mut a, ins[0], out)?
            }
            OpKind::Add => b.add(&mut a, ins[0], ins[1], out)?,
            // The coupling works in place: the output is the first operand's buffer.
            OpKind::CouplingForward => {
                out = ins[0];
                b.add_assign(&mut a, ins[0], ins[1])?
            }
            OpKind::CouplingInverse => {
                out = ins[0];
                b.sub_assign(&mut a, ins[0], ins[1])?
            }
            OpKind::BatchNorm => b.batchnorm_forward_train(
                &mut a,
                ins[0],
                ins[1].region,
                ins[2].region,
                out,
                stats,
                None,
                bn,
            )?,
            OpKind::Bce => {
                b.bce_weights(&mut a, ins[1], ins[2], weight)?;
                b.bce_loss(&mut a, ins[0], ins[1], weight, ins[2], loss, None)?;
                out = View {
                    region: loss,
                    shape: self.out_shape,
                };
            }
        }
        let output = down(b, &a, out)?;
        let Some(dy) = dy else {
            return Ok(Evaluation {
                output,
                grads: vec![],
            });
        };
        up(b, &mut a, dyv, dy)?;
        let mode = if self.accumulate {
            Write::Accumulate
        } else {
            Write::Overwrite
        };
        for (i, g) in gs.iter().enumerate() {
            if self.accumulate && self.inputs[i].diff {
                up(b, &mut a, *g, &prior[i])?;
            }
        }
        let mut post_scale = 1.0;
        match self.kind {
            OpKind::Conv3d { bias } => {
                b.conv3d_backward_input(&mut a, dyv, ins[1], gs[0], mode)?;
                b.conv3d_backward_weight(&mut a, ins[0], dyv, gs[1], mode)?;
                if bias {
                    b.conv3d_backward_bias(&mut a, dyv, gs[2].region, mode)?;
                }
            }
            OpKind::ConvTranspose => {
                b.conv_transpose_backward_input(&mut a, dyv, ins[1], gs[0], mode)?;
                b.conv_transpose_backward_weight(&mut a, ins[0], dyv, gs[1], mode)?;
                b.conv3d_backward_bias(&mut a, dyv, gs[2].region, mode)?;
            }
            OpKind::Maxpool => b.maxpool_backward(&mut a, ins[0], dyv, gs[0], mode)?,
            OpKind::Elu { inplace } => {
                if inplace {
                    // The gradient buffer takes dy and is overwritten by dx.
                    b.copy(&mut a, dyv.region, gs[0].region)?;
                    b.elu_backward(&mut a, out, gs[0], gs[0], Write::Overwrite)?
                } else {
                    b.elu_backward(&mut a, out, dyv, gs[0], mode)?
                }
            }
            OpKind::Add | OpKind::CouplingForward => {
                for g in &gs[..2] {
                    pass_through(b, &mut a, dyv, *g, mode, false)?;
                }
            }
            OpKind::CouplingInverse => {
                pass_through(b, &mut a, dyv, gs[0], mode, false)?;
                pass_through(b, &mut a, dyv, gs[1], mode, true)?;
            }
            OpKind::BatchNorm => {
                for g in &gs[1..3] {
                    if !self.accumulate {
                        b.fill(&mut a, g.region, B::Elem::ZERO)?;
                    }
                }
                b.batchnorm_backward(
                    &mut a,
                    ins[0],
                    dyv,
                    ins[1].region,
                    stats,
                    gs[0],
                    gs[1].region,
                    gs[2].region,
                    mode,
                )?
            }
            OpKind::Bce => {
                b.bce_loss(&mut a, ins[0], ins[1], weight, ins[2], loss, Some(gs[0]))?;
                post_scale = dy[0];
            }
        }
        let mut grads = Vec::new();
        for (i, g) in gs.iter().enumerate() {
            if !self.inputs[i].diff {
                grads.push(vec![]);
                continue;
            }
            let mut v = down(b, &a, *g)?;
            for (k, x) in v.iter_mut().enumerate() {
                *x *= post_scale;
                if self.accumulate {
                    *x -= prior[i][k];
                }
            }
            grads.push(v);
        }
        Ok(Evaluation { output, grads })
    }
}

/// Gradient of an add: dy itself (negated for the subtracted operand).
fn pass_through<B: Backend>(
    b: &B,
    a: &mut B::Arena,
    dy: View,
    g: View,
    mode: Write,
    negate: bool,
) -> Result<()> {
    if mode == Write::Overwrite {
        b.fill(a, g.region, B::Elem::ZERO)?;
    }
    if negate {
        b.sub_assign(a, g, dy)
    } else {
        b.add_assign(a, g, dy)
    }
}

fn normal_input(rng: &mut Rng, name: &'static str, shape: Shape5, scale: f64) -> Input {
    Input {
        name,
        shape,
        data: rng.normals(shape.len()).iter().map(|v| v * scale).collect(),
        diff: true,
    }
}

/// Distinct values in a random order, at least 5e-3 apart (more than the finite-difference step),
/// so that no max-pool window has a tie within reach of the perturbation.
fn distinct_input(rng: &mut Rng, name: &'static str, shape: Shape5) -> Input {
    let n = shape.len();
    let mut data: Vec<f64> = (0..n)
        .map(|i| (i as f64 - n as f64 / 2.0) * 1e-2 + rng.uniform() * 5e-3)
        .collect();
    rng.shuffle(&mut data);
    Input {
        name,
        shape,
        data,
        diff: true,
    }
}

/// Normal values kept at least 0.05 from 0, where ELU's second derivative jumps.
fn off_kink_input(rng: &mut Rng, name: &'static str, shape: Shape5, scale: f64) -> Input {
    let mut i = normal_input(rng, name, shape, scale);
    i.data.iter_mut().for_each(|v| *v += 0.05f64.copysign(*v));
    i
}

fn binary_input(rng: &mut Rng, name: &'static str, shape: Shape5, p_one: f64) -> Input {
    let data = (0..shape.len())
        .map(|_| if rng.uniform() < p_one { 1.0 } else { 0.0 })
        .collect();
    Input {
        name,
        shape,
        data,
        diff: false,
    }
}

/// Random spatial size with odd values and non-cubic volumes.
fn vol(rng: &mut Rng, n: usize, c: usize) -> Shape5 {
    Shape5::new(n, c, rng.range(1, 5), rng.range(3, 8), rng.range(3, 9))
}

/// Every case for every op, with shapes drawn from `seed`.
pub fn all_cases(seed: u64) -> Vec<Case> {
    let mut rng = Rng::new(seed);
    let mut cases = Vec::new();
    let conv_kernels: [(usize, usize, usize, bool, bool, &str); 6] = [
        (3, 3, 3, true, false, "3x3x3 bias"),
        (3, 3, 3, false, true, "3x3x3 accumulate"),
        (1, 3, 3, false, false, "1x3x3"),
        (1, 5, 5, true, false, "1x5x5 bias one-channel"),
        (1, 1, 1, true, true, "1x1x1 bias accumulate"),
        (3, 1, 5, false, false, "3x1x5"),
    ];
    for (kd, kh, kw, bias, accumulate, name) in conv_kernels {
        let ci = if name.contains("one-channel") {
            1
        } else {
            rng.range(1, 4)
        };
        let co = rng.range(1, 4);
        let (n, c) = (rng.range(1, 2), ci);
        let x = vol(&mut rng, n, c);
        let w = Shape5::new(co, ci, kd, kh, kw);
        let mut inputs = vec![
            normal_input(&mut rng, "x", x, 1.0),
            normal_input(&mut rng, "w", w, 0.5),
        ];
        if bias {
            inputs.push(normal_input(&mut rng, "b", Shape5::vector(co), 0.5));
        }
        cases.push(Case {
            op: "conv3d",
            variant: name.into(),
            kind: OpKind::Conv3d { bias },
            inputs,
            out_shape: x.with_c(co),
            accumulate,
        });
    }
    for accumulate in [false, true] {
        let (ci, co) = (rng.range(1, 4), rng.range(1, 4));
        let (n, c) = (rng.range(1, 2), ci);
        let x = vol(&mut rng, n, c);
        let w = Shape5::new(ci, co, 1, 2, 2);
        cases.push(Case {
            op: "conv_transpose",
            variant: if accumulate {
                "1x2x2 accumulate"
            } else {
                "1x2x2"
            }
            .into(),
            kind: OpKind::ConvTranspose,
            inputs: vec![
                normal_input(&mut rng, "x", x, 1.0),
                normal_input(&mut rng, "w", w, 0.5),
                normal_input(&mut rng, "b", Shape5::vector(co), 0.5),
            ],
            out_shape: Shape5::new(x.n, co, x.d, 2 * x.h, 2 * x.w),
            accumulate,
        });
    }
    for accumulate in [false, true] {
        let x = Shape5::new(
            rng.range(1, 2),
            rng.range(1, 3),
            rng.range(1, 3),
            2 * rng.range(1, 4),
            2 * rng.range(1, 4),
        );
        cases.push(Case {
            op: "maxpool",
            variant: if accumulate {
                "1x2x2 accumulate"
            } else {
                "1x2x2"
            }
            .into(),
            kind: OpKind::Maxpool,
            inputs: vec![distinct_input(&mut rng, "x", x)],
            out_shape: Shape5::new(x.n, x.c, x.d, x.h / 2, x.w / 2),
            accumulate,
        });
    }
    for (inplace, accumulate, name) in [
        (false, false, "out of place"),
        (true, false, "in place"),
        (false, true, "accumulate"),
    ] {
        let (n, c) = (1, rng.range(1, 3));
        let x = vol(&mut rng, n, c);
        cases.push(Case {
            op: "elu",
            variant: name.into(),
            kind: OpKind::Elu { inplace },
            inputs: vec![off_kink_input(&mut rng, "x", x, 1.5)],
            out_shape: x,
            accumulate,
        });
    }
    let (n, c) = (2, rng.range(1, 3));
    let x = vol(&mut rng, n, c);
    cases.push(Case {
        op: "add",
        variant: "out of place".into(),
        kind: OpKind::Add,
        inputs: vec![
            normal_input(&mut rng, "p", x, 1.0),
            normal_input(&mut rng, "q", x, 1.0),
        ],
        out_shape: x,
        accumulate: false,
    });
    for (kind, name) in [
        (OpKind::CouplingForward, "y = x + f in place"),
        (OpKind::CouplingInverse, "x = y - f in place"),
    ] {
        let (n, c) = (1, rng.range(1, 3));
        let x = vol(&mut rng, n, c);
        let names = if kind == OpKind::CouplingForward {
            ("x", "f")
        } else {
            ("y", "f")
        };
        cases.push(Case {
            op: "coupling",
            variant: name.into(),
            kind,
            inputs: vec![
                normal_input(&mut rng, names.0, x, 1.0),
                normal_input(&mut rng, names.1, x, 1.0),
            ],
            out_shape: x,
            accumulate: false,
        });
    }
    for (accumulate, c) in [(false, 1), (true, rng.range(2, 4))] {
        let x = vol(&mut rng, 2, c);
        let mut xin = normal_input(&mut rng, "x", x, 2.0);
        xin.data.iter_mut().for_each(|v| *v += 0.7);
        let gamma = Input {
            name: "gamma",
            shape: Shape5::vector(c),
            data: (0..c).map(|_| 0.5 + rng.uniform()).collect(),
            diff: true,
        };
        cases.push(Case {
            op: "batchnorm",
            variant: if accumulate {
                "train accumulate"
            } else {
                "train one-channel"
            }
            .into(),
            kind: OpKind::BatchNorm,
            inputs: vec![
                xin,
                gamma,
                normal_input(&mut rng, "beta", Shape5::vector(c), 0.5),
            ],
            out_shape: x,
            accumulate,
        });
    }
    for c in [3, 12] {
        // Small volumes: the loss is a mean, so its rounding noise relative to one voxel's gradient
        // grows with the voxel count.
        let x = Shape5::new(1, c, rng.range(1, 3), rng.range(2, 6), rng.range(2, 6));
        let mut mask = binary_input(&mut rng, "mask", x, 0.8);
        mask.data[0] = 1.0;
        cases.push(Case {
            op: "bce_loss",
            variant: format!("{c} channels masked"),
            kind: OpKind::Bce,
            inputs: vec![
                normal_input(&mut rng, "logits", x, 2.0),
                binary_input(&mut rng, "target", x, 0.6),
                mask,
            ],
            out_shape: Shape5::vector(1),
            accumulate: false,
        });
    }
    cases
}

/// The op families the checker covers, in the order it reports them.
pub const OPS: &[&str] = &[
    "conv3d",
    "conv_transpose",
    "maxpool",
    "elu",
    "add",
    "coupling",
    "batchnorm",
    "bce_loss",
];

/// Convert host values for a backend of element type T and back, rounding as T does.
pub fn round_to<T: Element>(v: &[f64]) -> Vec<f64> {
    v.iter().map(|&x| T::from_f64(x).to_f64()).collect()
}

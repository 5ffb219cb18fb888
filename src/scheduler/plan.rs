//! From a program to a training plan: forward steps, loss, backward steps (with the reconstruction
//! of reversible chains and the recomputation of cheap tensors), optimiser steps. Buffers get their
//! offsets afterwards (memory.rs), so the peak is known before anything is allocated.
//!
//! Two strategies:
//! - `StoreAll`: the classic backward. Every tensor an op's backward reads is kept from the forward
//!   until that backward; nothing is recomputed, nothing runs in place.
//! - `Recompute`: reversible chains run in place and keep only their output; the backward rebuilds
//!   each block's inputs (Gomez et al., Alg. 1). Outputs of BN -> ELU are not kept but rebuilt from
//!   the BN input and batch statistics (one elementwise pass); ELU runs in place on BN's output and
//!   its backward in place on the gradient.

use super::instr::{BufId, Instr, Opd, Phase};
use crate::backend::Write;
use crate::error::Result;
use crate::model::{BnId, Node, ParamId, Program, Residual, TensorId};
use crate::ops::coupling::{Direction, FixedPoint};
use crate::precision::{Precision, Storage};
use crate::tensor::Shape5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    StoreAll,
    Recompute,
}

/// What a buffer holds, for the peak's breakdown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    /// Parameters and running statistics.
    Weights,
    Gradients,
    /// Adam's moments.
    Optimizer,
    /// Forward tensors (inputs included), kept, recomputed or reconstructed.
    Activations,
    /// Gradients of activations, temporaries, batch statistics, the loss.
    Workspace,
}

pub const CLASSES: [Class; 5] = [
    Class::Weights,
    Class::Gradients,
    Class::Optimizer,
    Class::Activations,
    Class::Workspace,
];

impl Class {
    pub fn name(&self) -> &'static str {
        match self {
            Class::Weights => "weights",
            Class::Gradients => "gradients",
            Class::Optimizer => "optimizer",
            Class::Activations => "activations",
            Class::Workspace => "workspace",
        }
    }
}

#[derive(Clone, Debug)]
pub struct BufInfo {
    pub name: String,
    /// Elements.
    pub len: usize,
    pub storage: Storage,
    pub class: Class,
    /// Lives for the whole step (and across steps).
    pub persistent: bool,
    /// Byte offset in the arena, set by the memory planner.
    pub offset: usize,
}

impl BufInfo {
    pub fn bytes(&self) -> usize {
        self.len * self.storage.bytes()
    }
}

/// Buffers of one parameter.
#[derive(Clone, Copy, Debug)]
pub struct ParamBufs {
    pub value: Opd,
    /// Gradient and Adam moments: training plans only.
    pub grad: Option<Opd>,
    pub m: Option<Opd>,
    pub v: Option<Opd>,
}

/// A check that a reversible chain's rebuilt input equals the input seen in the forward.
#[derive(Clone, Copy, Debug)]
pub struct ReconCheck {
    pub saved: Opd,
    pub rebuilt: Opd,
    /// Index of the instruction after which `rebuilt` holds the reconstruction.
    pub after: usize,
}

#[derive(Clone, Debug)]
pub struct Plan {
    pub strategy: Strategy,
    pub precision: Precision,
    pub bufs: Vec<BufInfo>,
    pub instrs: Vec<(Phase, Instr)>,
    pub params: Vec<ParamBufs>,
    pub running: Vec<(Opd, Opd)>,
    pub input: Opd,
    pub target: Opd,
    pub mask: Opd,
    pub loss: Opd,
    pub logits: Opd,
    pub recon_checks: Vec<ReconCheck>,
    /// Buffers uploaded before the first instruction.
    pub uploaded: Vec<BufId>,
    /// Filled by the memory planner: bytes.
    pub arena_bytes: usize,
    pub free_after: Vec<Vec<BufId>>,
    /// Live bytes after each instruction (persistent buffers included).
    pub live: Vec<usize>,
    pub peak_index: usize,
}

pub struct PlanOptions {
    pub strategy: Strategy,
    /// Forward only, BatchNorm with running statistics, sigmoid on the output; no loss, no
    /// backward, no optimiser state.
    pub inference: bool,
    /// Keep a copy of every reversible chain's input to measure the reconstruction (costs memory).
    pub check_reconstruction: bool,
    /// Hold reversible chains' state in this fixed-point format (ops/coupling.rs), so that the
    /// backward rebuilds their inputs bit for bit; None: plain float additions.
    pub exact_coupling: Option<FixedPoint>,
    /// Storage of activations and workspace (see `Builder::buf`).
    pub precision: Precision,
}

struct Builder<'a> {
    prog: &'a Program,
    opt: &'a PlanOptions,
    bufs: Vec<BufInfo>,
    instrs: Vec<(Phase, Instr)>,
    phase: Phase,
    /// Forward value of each tensor.
    fwd: Vec<Option<Opd>>,
    /// Value of a tensor rebuilt during the backward (recomputed or reconstructed).
    bwd: Vec<Option<Opd>>,
    grad: Vec<Option<Opd>>,
    /// Whether a gradient buffer has been written (then later writes accumulate).
    written: Vec<bool>,
    params: Vec<ParamBufs>,
    stats: Vec<(Opd, Opd)>,
    running: Vec<(Opd, Opd)>,
    recon_checks: Vec<ReconCheck>,
    /// Per chain (by its output tensor) the saved copy of its input.
    recon_saved: Vec<Option<Opd>>,
    /// Store-all chains: per block, (F's input, its conv1 output, its ELU output, G's input, G's
    /// conv1, G's ELU).
    store_all_saved: Vec<(TensorId, Vec<[Opd; 6]>)>,
}

impl<'a> Builder<'a> {
    /// A buffer in its class's storage: parameters, their gradients and moments, and everything
    /// persistent (BatchNorm statistics, the loss) in f32; activations and workspace in the
    /// plan's activation storage.
    fn buf(&mut self, name: String, shape: Shape5, class: Class, persistent: bool) -> Opd {
        let storage = match class {
            Class::Activations | Class::Workspace if !persistent => {
                self.opt.precision.activation_storage()
            }
            _ => Storage::F32,
        };
        self.buf_in(name, shape, class, persistent, storage)
    }
    fn buf_in(
        &mut self,
        name: String,
        shape: Shape5,
        class: Class,
        persistent: bool,
        storage: Storage,
    ) -> Opd {
        self.bufs.push(BufInfo {
            name,
            len: shape.len(),
            storage,
            class,
            persistent,
            offset: 0,
        });
        self.written.push(false);
        Opd::whole(self.bufs.len() - 1, shape)
    }
    fn emit(&mut self, i: Instr) {
        // ELU in place on the output of the BnApply just emitted: one pass instead of two.
        if let Instr::Elu { x, y } = i {
            if let Some((phase, Instr::BnApply { y: out, elu, .. })) = self.instrs.last_mut() {
                if *phase == self.phase && !*elu && x == y && *out == x {
                    *elu = true;
                    return;
                }
            }
        }
        self.instrs.push((self.phase, i));
    }
    fn shape(&self, t: TensorId) -> Shape5 {
        self.prog.tensors[t].shape
    }
    fn act(&mut self, t: TensorId) -> Opd {
        let name = self.prog.tensors[t].name.clone();
        let o = if t == self.prog.output {
            // The logits feed the loss, which is computed and kept in f32.
            self.buf_in(name, self.shape(t), Class::Activations, false, Storage::F32)
        } else {
            self.buf(name, self.shape(t), Class::Activations, false)
        };
        self.fwd[t] = Some(o);
        o
    }
    /// Marks a reversible chain's state buffer: with exact coupling it holds the format's
    /// storage (ops/coupling.rs): the f32 container, or 16 bits beside bf16 activations.
    fn chain_state(&mut self, o: Opd) {
        if let Some(fp) = self.opt.exact_coupling {
            self.bufs[o.buf].storage = fp.storage;
        }
    }
    /// Whether the chains' state is an f32 container the chain's input is rounded into in place
    /// (a 16-bit state is a buffer of its own, written from the float input).
    fn state_in_place(&self) -> bool {
        self.opt
            .exact_coupling
            .is_some_and(|fp| fp.storage == Storage::F32)
    }
    /// The input of a convolution in the activation storage: `x` itself, or a copy converted
    /// into it (an exact chain's fixed-point state, read by F and G in bf16).
    fn conv_operand(&mut self, x: Opd, name: &str, class: Class) -> Opd {
        let storage = self.opt.precision.activation_storage();
        if self.bufs[x.buf].storage == storage {
            return x;
        }
        let c = self.tmp(format!("{name}.input"), x.shape, class);
        self.emit(Instr::Copy { src: x, dst: c });
        c
    }
    fn tmp(&mut self, name: String, shape: Shape5, class: Class) -> Opd {
        self.buf(name, shape, class, false)
    }
    fn recompute(&self) -> bool {
        self.opt.strategy == Strategy::Recompute
    }
    fn pv(&self, p: ParamId) -> Opd {
        self.params[p].value
    }

    /// Write mode for a gradient buffer, marking it written.
    fn mode(&mut self, o: Opd) -> Write {
        if std::mem::replace(&mut self.written[o.buf], true) {
            Write::Accumulate
        } else {
            Write::Overwrite
        }
    }

    /// The gradient buffer of tensor t, created on first use.
    fn grad_of(&mut self, t: TensorId) -> Opd {
        if let Some(g) = self.grad[t] {
            return g;
        }
        let g = self.tmp(
            format!("grad:{}", self.prog.tensors[t].name),
            self.shape(t),
            Class::Workspace,
        );
        self.grad[t] = Some(g);
        g
    }

    /// Parameter gradient: overwritten on its first write in the step, accumulated afterwards.
    fn pgrad(&mut self, p: ParamId) -> (Opd, Write) {
        let g = self.params[p].grad.expect("training plan");
        let m = self.mode(g);
        (g, m)
    }

    /// Accumulate-only gradients (BN's) are zeroed before their first write.
    fn pgrad_acc(&mut self, p: ParamId) -> Opd {
        let g = self.params[p].grad.expect("training plan");
        if !std::mem::replace(&mut self.written[g.buf], true) {
            self.emit(Instr::Zero { dst: g });
        }
        g
    }

    /// The value of t for a backward step: rebuilt if the strategy rebuilds it (and kept for the
    /// rest of the backward), else the forward's.
    fn need(&mut self, t: TensorId) -> Opd {
        self.value(t, true)
    }

    /// Inputs of a rebuild are not cached: they die right after it, however late their own next
    /// backward use comes.
    fn value(&mut self, t: TensorId, cache: bool) -> Opd {
        if let Some(o) = self.bwd[t] {
            return o;
        }
        if self.recompute() {
            if let Some(o) = self.rebuild(t) {
                if cache {
                    self.bwd[t] = Some(o);
                }
                return o;
            }
        }
        self.fwd[t].expect("forward value of a tensor the plan did not keep")
    }

    /// Recompute t from kept tensors where that is cheap (see docs/ARCHITECTURE.md):
    /// ELU(BN(a)) from a and the batch statistics; ELU(conv(image)) of a one-channel input conv;
    /// the decoder's join convT(x) + skip from x and the skip, themselves rebuilt.
    fn rebuild(&mut self, t: TensorId) -> Option<Opd> {
        let name = format!("recompute:{}", self.prog.tensors[t].name);
        match self.producer(t)? {
            Node::Elu { x, .. } => match self.producer(*x)? {
                Node::BatchNorm { x: a, bn, .. } => {
                    let (a, bn) = (*a, *bn);
                    let src = self.value(a, false);
                    let o = self.tmp(name, self.shape(t), Class::Activations);
                    self.bn_forward(bn, src, o, false);
                    self.emit(Instr::Elu { x: o, y: o });
                    Some(o)
                }
                Node::Conv { x: img, w, b, .. } if self.shape(*img).c == 1 => {
                    let (img, w, b) = (*img, *w, *b);
                    let src = self.value(img, false);
                    let o = self.tmp(name, self.shape(t), Class::Activations);
                    let bo = b.map(|b| self.pv(b));
                    self.emit(Instr::Conv {
                        x: src,
                        w: self.pv(w),
                        b: bo,
                        y: o,
                    });
                    self.emit(Instr::Elu { x: o, y: o });
                    Some(o)
                }
                _ => None,
            },
            Node::Add { a, b: skip, .. } => match self.producer(*a)? {
                Node::ConvTranspose { x, w, b, .. } => {
                    let (x, w, b, skip) = (*x, *w, *b, *skip);
                    let o = self.tmp(name, self.shape(t), Class::Activations);
                    let src = self.value(x, false);
                    self.emit(Instr::ConvT {
                        x: src,
                        w: self.pv(w),
                        b: self.pv(b),
                        y: o,
                    });
                    let sk = self.value(skip, false);
                    self.emit(Instr::AddAssign { dst: o, src: sk });
                    Some(o)
                }
                _ => None,
            },
            _ => None,
        }
    }

    fn producer(&self, t: TensorId) -> Option<&'a Node> {
        self.prog.nodes.iter().find(|n| match n {
            Node::Conv { y, .. }
            | Node::ConvTranspose { y, .. }
            | Node::MaxPool { y, .. }
            | Node::BatchNorm { y, .. }
            | Node::Elu { y, .. }
            | Node::Add { y, .. }
            | Node::Rev { y, .. } => *y == t,
        })
    }

    fn bn_forward(&mut self, bn: BnId, x: Opd, y: Opd, update_running: bool) {
        let b = &self.prog.bns[bn];
        let (gamma, beta) = (self.pv(b.gamma), self.pv(b.beta));
        let (mean, invstd) = self.stats[bn];
        if self.opt.inference {
            let (mean, var) = self.running[bn];
            self.emit(Instr::BnInfer {
                x,
                gamma,
                beta,
                mean,
                var,
                y,
            });
            return;
        }
        if self.phase == Phase::Backward {
            // A recomputation: the forward saved this BN's statistics of the same input.
            self.emit(Instr::BnApply {
                x,
                gamma,
                beta,
                mean,
                invstd,
                y,
                elu: false,
            });
            return;
        }
        let running = update_running.then(|| self.running[bn]);
        self.emit(Instr::BnTrain {
            x,
            gamma,
            beta,
            y,
            mean,
            invstd,
            running,
        });
    }

    fn forward_node(&mut self, n: &Node) {
        match n {
            Node::Conv { x, w, b, y } => {
                let xo = self.fwd[*x].unwrap();
                let yo = self.act(*y);
                let bo = b.map(|b| self.pv(b));
                self.emit(Instr::Conv {
                    x: xo,
                    w: self.pv(*w),
                    b: bo,
                    y: yo,
                });
            }
            Node::ConvTranspose { x, w, b, y } => {
                let xo = self.fwd[*x].unwrap();
                let yo = self.act(*y);
                self.emit(Instr::ConvT {
                    x: xo,
                    w: self.pv(*w),
                    b: self.pv(*b),
                    y: yo,
                });
            }
            Node::MaxPool { x, y } => {
                let xo = self.fwd[*x].unwrap();
                let yo = self.act(*y);
                self.emit(Instr::Pool { x: xo, y: yo });
            }
            Node::BatchNorm { x, bn, y } => {
                let xo = self.fwd[*x].unwrap();
                let yo = self.act(*y);
                self.bn_forward(*bn, xo, yo, true);
            }
            Node::Elu { x, y } => {
                let xo = self.fwd[*x].unwrap();
                // In place on a BN output, which nothing else reads.
                let yo = if self.recompute() && self.bn_output(*x) {
                    self.fwd[*y] = Some(xo);
                    xo
                } else {
                    // An exact chain's f32-container state is its input itself, which a Recompute
                    // plan computes in place on the BN output: the BN output is f32 here too, so
                    // that both plans round the same values (their gradients are equal bit for
                    // bit). A 16-bit state is rounded from the ELU output in both plans alike.
                    if self.state_in_place() && self.chain_input(*y) {
                        self.bufs[xo.buf].storage = Storage::F32;
                    }
                    self.act(*y)
                };
                self.emit(Instr::Elu { x: xo, y: yo });
            }
            Node::Add { a, b, y } => {
                let (ao, bo) = (self.fwd[*a].unwrap(), self.fwd[*b].unwrap());
                let yo = self.act(*y);
                self.emit(Instr::Add {
                    p: ao,
                    q: bo,
                    out: yo,
                });
            }
            Node::Rev { x, blocks, y } => self.rev_forward(*x, blocks, *y),
        }
    }

    fn chain_input(&self, t: TensorId) -> bool {
        self.prog
            .nodes
            .iter()
            .any(|n| matches!(n, Node::Rev { x, .. } if *x == t))
    }

    fn bn_output(&self, t: TensorId) -> bool {
        self.prog
            .nodes
            .iter()
            .any(|n| matches!(n, Node::BatchNorm { y, .. } if *y == t))
    }

    /// conv_a -> [BN -> ELU] -> conv_b on `x`, into `out`. Returns (conv_a input, conv_a output,
    /// ELU output), the tensors its backward reads (the input is `x` or its converted copy). `keep` marks them as activations kept for a backward; in the
    /// recomputing strategy's forward nothing is kept and they die at once.
    fn residual_forward(
        &mut self,
        r: &Residual,
        name: &str,
        x: Opd,
        out: Opd,
        keep: bool,
    ) -> (Opd, Opd, Opd) {
        let class = if keep {
            Class::Activations
        } else {
            Class::Workspace
        };
        let x = self.conv_operand(x, name, class);
        let za = self.tmp(format!("{name}.conv1"), x.shape, class);
        self.emit(Instr::Conv {
            x,
            w: self.pv(r.wa),
            b: None,
            y: za,
        });
        let pre = match r.bn {
            Some(bn) => {
                let h = self.tmp(format!("{name}.bn"), x.shape, class);
                // Running statistics move in the forward only, never in a recomputation.
                let update = self.phase == Phase::Forward;
                self.bn_forward(bn, za, h, update);
                h
            }
            None => za,
        };
        let he = if self.recompute() && pre != za {
            pre
        } else {
            self.tmp(format!("{name}.elu"), x.shape, class)
        };
        self.emit(Instr::Elu { x: pre, y: he });
        self.emit(Instr::Conv {
            x: he,
            w: self.pv(r.wb),
            b: None,
            y: out,
        });
        (x, za, he)
    }

    /// Back-propagate dy through a residual F or G whose input is x and internals (za, he);
    /// accumulates the input gradient into dx.
    fn residual_backward(
        &mut self,
        r: &Residual,
        name: &str,
        x: Opd,
        za: Opd,
        he: Opd,
        dy: Opd,
        dx: Opd,
    ) {
        let dhe = self.tmp(format!("{name}.grad_elu"), x.shape, Class::Workspace);
        self.emit(Instr::ConvBwdInput {
            dy,
            w: self.pv(r.wb),
            dx: dhe,
            mode: Write::Overwrite,
        });
        let (gwb, m) = self.pgrad(r.wb);
        self.emit(Instr::ConvBwdWeight {
            x: he,
            dy,
            dw: gwb,
            mode: m,
        });
        self.emit(Instr::EluBwd {
            y: he,
            dy: dhe,
            dx: dhe,
            mode: Write::Overwrite,
        });
        let dza = match r.bn {
            Some(bn) => {
                let b = &self.prog.bns[bn];
                let (gamma, gb, bb) = (self.pv(b.gamma), b.gamma, b.beta);
                let (mean, invstd) = self.stats[bn];
                let dgamma = self.pgrad_acc(gb);
                let dbeta = self.pgrad_acc(bb);
                let dza = self.tmp(format!("{name}.grad_conv1"), x.shape, Class::Workspace);
                self.emit(Instr::BnBwd {
                    x: za,
                    dy: dhe,
                    gamma,
                    mean,
                    invstd,
                    dx: dza,
                    dgamma,
                    dbeta,
                    mode: Write::Overwrite,
                });
                dza
            }
            None => dhe,
        };
        let (gwa, m) = self.pgrad(r.wa);
        self.emit(Instr::ConvBwdWeight {
            x,
            dy: dza,
            dw: gwa,
            mode: m,
        });
        self.emit(Instr::ConvBwdInput {
            dy: dza,
            w: self.pv(r.wa),
            dx,
            mode: Write::Accumulate,
        });
    }

    fn rev_forward(&mut self, x: TensorId, blocks: &[crate::model::RevBlock], y: TensorId) {
        let name = self.prog.tensors[y].name.clone();
        let mut xo = self.fwd[x].unwrap();
        if let Some(fp) = self.opt.exact_coupling {
            // The chain's input onto the grid: every later use reads the rounded value (the
            // backward's rebuilt input is rounded too), whichever the strategy. The f32 container
            // rounds in place; a 16-bit state is a new buffer, and the float input dies here.
            let state = if self.state_in_place() {
                self.chain_state(xo);
                xo
            } else {
                let s = self.tmp(format!("{name}.state"), xo.shape, Class::Activations);
                self.chain_state(s);
                s
            };
            self.emit(Instr::Coupling {
                x: xo,
                f: None,
                y: state,
                dir: Direction::Forward,
                fp,
            });
            xo = state;
            self.fwd[x] = Some(state);
        }
        if self.recompute() {
            if self.opt.check_reconstruction {
                let storage = self.bufs[xo.buf].storage;
                let saved = self.buf_in(
                    format!("{name}.saved_input"),
                    xo.shape,
                    Class::Workspace,
                    true,
                    storage,
                );
                self.emit(Instr::Copy {
                    src: xo,
                    dst: saved,
                });
                self.recon_saved[y] = Some(saved);
            }
            // In place: the input buffer becomes the output; only the output survives.
            for (i, b) in blocks.iter().enumerate() {
                let (x1, x2) = (xo.half(0), xo.half(1));
                let f = self.tmp(format!("{name}{i}.f"), x1.shape, Class::Workspace);
                self.residual_forward(&b.f, &format!("{name}{i}.f"), x2, f, false);
                self.couple(x1, f, x1, Direction::Forward);
                let g = self.tmp(format!("{name}{i}.g"), x1.shape, Class::Workspace);
                self.residual_forward(&b.g, &format!("{name}{i}.g"), x1, g, false);
                self.couple(x2, g, x2, Direction::Forward);
            }
            self.fwd[y] = Some(xo);
        } else {
            // Out of place, every internal tensor kept; the last block writes the chain's output.
            let out = self.act(y);
            self.chain_state(out);
            let (mut x1, mut x2) = (xo.half(0), xo.half(1));
            let mut saved = Vec::new();
            for (i, b) in blocks.iter().enumerate() {
                let last = i + 1 == blocks.len();
                let f = self.tmp(format!("{name}{i}.f"), x1.shape, Class::Workspace);
                let (fx, fa, fe) =
                    self.residual_forward(&b.f, &format!("{name}{i}.f"), x2, f, true);
                let y1 = if last {
                    out.half(0)
                } else {
                    let y1 = self.tmp(format!("{name}{i}.y1"), x1.shape, Class::Activations);
                    self.chain_state(y1);
                    y1
                };
                self.couple(x1, f, y1, Direction::Forward);
                let g = self.tmp(format!("{name}{i}.g"), x1.shape, Class::Workspace);
                let (gx, ga, ge) =
                    self.residual_forward(&b.g, &format!("{name}{i}.g"), y1, g, true);
                let y2 = if last {
                    out.half(1)
                } else {
                    let y2 = self.tmp(format!("{name}{i}.y2"), x1.shape, Class::Activations);
                    self.chain_state(y2);
                    y2
                };
                self.couple(x2, g, y2, Direction::Forward);
                saved.push([fx, fa, fe, gx, ga, ge]);
                (x1, x2) = (y1, y2);
            }
            self.store_all_saved.push((y, saved));
        }
    }

    /// y = x + f (forward) or y = x - f (inverse) of a reversible block; y may be x. Exact
    /// (fixed point) when the plan asks for it.
    fn couple(&mut self, x: Opd, f: Opd, y: Opd, dir: Direction) {
        let ins = match (self.opt.exact_coupling, dir) {
            (Some(fp), _) => Instr::Coupling {
                x,
                f: Some(f),
                y,
                dir,
                fp,
            },
            (None, Direction::Forward) if x == y => Instr::AddAssign { dst: y, src: f },
            (None, Direction::Forward) => Instr::Add { p: x, q: f, out: y },
            (None, Direction::Inverse) => {
                debug_assert_eq!(x, y, "the inverse runs in place");
                Instr::SubAssign { dst: y, src: f }
            }
        };
        self.emit(ins);
    }

    fn rev_backward(&mut self, x: TensorId, blocks: &[crate::model::RevBlock], y: TensorId) {
        let name = self.prog.tensors[y].name.clone();
        let dy = self.grad[y].expect("gradient of a reversible chain's output");
        let (d1, d2) = (dy.half(0), dy.half(1));
        if self.recompute() {
            let yo = self.need(y);
            let (y1, y2) = (yo.half(0), yo.half(1));
            for (i, b) in blocks.iter().enumerate().rev() {
                let nm = format!("{name}{i}");
                // G(y1) again, then x2 = y2 - G(y1), then dy2 through G into dx1 = dy1 + ...
                let g = self.tmp(format!("{nm}.g"), y1.shape, Class::Workspace);
                let (gx, ga, ge) = self.residual_forward(&b.g, &format!("{nm}.g"), y1, g, true);
                self.couple(y2, g, y2, Direction::Inverse);
                self.residual_backward(&b.g, &format!("{nm}.g"), gx, ga, ge, d2, d1);
                // F(x2) again, then x1 = y1 - F(x2), then dx1 through F into dx2 = dy2 + ...
                let f = self.tmp(format!("{nm}.f"), y1.shape, Class::Workspace);
                let (fx, fa, fe) = self.residual_forward(&b.f, &format!("{nm}.f"), y2, f, true);
                self.couple(y1, f, y1, Direction::Inverse);
                self.residual_backward(&b.f, &format!("{nm}.f"), fx, fa, fe, d1, d2);
            }
            self.bwd[x] = Some(yo);
            if let Some(saved) = self.recon_saved[y] {
                self.recon_checks.push(ReconCheck {
                    saved,
                    rebuilt: yo,
                    after: self.instrs.len() - 1,
                });
            }
        } else {
            let saved = self
                .store_all_saved
                .iter()
                .find(|(t, _)| *t == y)
                .unwrap()
                .1
                .clone();
            for (i, b) in blocks.iter().enumerate().rev() {
                let nm = format!("{name}{i}");
                let [fx, fa, fe, gx, ga, ge] = saved[i];
                self.residual_backward(&b.g, &format!("{nm}.g"), gx, ga, ge, d2, d1);
                self.residual_backward(&b.f, &format!("{nm}.f"), fx, fa, fe, d1, d2);
            }
        }
        self.grad[y] = None;
        self.set_grad(x, dy);
    }

    /// Hand a finished gradient buffer to tensor t: becomes t's gradient, or is added to it.
    fn set_grad(&mut self, t: TensorId, g: Opd) {
        match self.grad[t] {
            None => self.grad[t] = Some(g),
            Some(existing) => self.emit(Instr::AddAssign {
                dst: existing,
                src: g,
            }),
        }
    }

    fn backward_node(&mut self, n: &Node) {
        match n {
            Node::Conv { x, w, b, y } => {
                let Some(dy) = self.grad[*y] else { return };
                let xv = self.need(*x);
                let (gw, m) = self.pgrad(*w);
                self.emit(Instr::ConvBwdWeight {
                    x: xv,
                    dy,
                    dw: gw,
                    mode: m,
                });
                if let Some(b) = b {
                    let (gb, m) = self.pgrad(*b);
                    self.emit(Instr::BiasBwd {
                        dy,
                        db: gb,
                        mode: m,
                    });
                }
                if *x != self.prog.input {
                    let dx = self.grad_of(*x);
                    let m = self.mode(dx);
                    self.emit(Instr::ConvBwdInput {
                        dy,
                        w: self.pv(*w),
                        dx,
                        mode: m,
                    });
                }
            }
            Node::ConvTranspose { x, w, b, y } => {
                let dy = self.grad[*y].unwrap();
                let xv = self.need(*x);
                let (gw, m) = self.pgrad(*w);
                self.emit(Instr::ConvTBwdWeight {
                    x: xv,
                    dy,
                    dw: gw,
                    mode: m,
                });
                let (gb, m) = self.pgrad(*b);
                self.emit(Instr::BiasBwd {
                    dy,
                    db: gb,
                    mode: m,
                });
                let dx = self.grad_of(*x);
                let m = self.mode(dx);
                self.emit(Instr::ConvTBwdInput {
                    dy,
                    w: self.pv(*w),
                    dx,
                    mode: m,
                });
            }
            Node::MaxPool { x, y } => {
                let dy = self.grad[*y].unwrap();
                let xv = self.need(*x);
                let dx = self.grad_of(*x);
                let m = self.mode(dx);
                self.emit(Instr::PoolBwd {
                    x: xv,
                    dy,
                    dx,
                    mode: m,
                });
            }
            Node::BatchNorm { x, bn, y } => {
                let dy = self.grad[*y].unwrap();
                let xv = self.need(*x);
                let b = &self.prog.bns[*bn];
                let (gamma, gb, bb) = (self.pv(b.gamma), b.gamma, b.beta);
                let (mean, invstd) = self.stats[*bn];
                let dgamma = self.pgrad_acc(gb);
                let dbeta = self.pgrad_acc(bb);
                let dx = self.grad_of(*x);
                let m = self.mode(dx);
                self.emit(Instr::BnBwd {
                    x: xv,
                    dy,
                    gamma,
                    mean,
                    invstd,
                    dx,
                    dgamma,
                    dbeta,
                    mode: m,
                });
            }
            Node::Elu { x, y } => {
                let dy = self.grad[*y].unwrap();
                let yv = self.need(*y);
                if self.recompute() && self.grad[*x].is_none() {
                    // In place on the gradient, which nothing else reads.
                    self.emit(Instr::EluBwd {
                        y: yv,
                        dy,
                        dx: dy,
                        mode: Write::Overwrite,
                    });
                    self.grad[*y] = None;
                    self.grad[*x] = Some(dy);
                } else {
                    let dx = self.grad_of(*x);
                    let m = self.mode(dx);
                    self.emit(Instr::EluBwd {
                        y: yv,
                        dy,
                        dx,
                        mode: m,
                    });
                }
            }
            Node::Add { a, b, y } => {
                let dy = self.grad[*y].unwrap();
                self.grad[*y] = None;
                // One operand takes the gradient buffer itself; the other gets a copy or a sum.
                match self.grad[*b] {
                    Some(gb) => self.emit(Instr::AddAssign { dst: gb, src: dy }),
                    None => {
                        let gb = self.grad_of(*b);
                        self.written[gb.buf] = true;
                        self.emit(Instr::Copy { src: dy, dst: gb });
                    }
                }
                self.set_grad(*a, dy);
            }
            Node::Rev { x, blocks, y } => self.rev_backward(*x, blocks, *y),
        }
    }
}

/// Build the training plan of a program (offsets are not assigned yet: see `memory::assign`).
pub fn build_training(prog: &Program, opt: &PlanOptions) -> Result<Plan> {
    let nt = prog.tensors.len();
    let mut b = Builder {
        prog,
        opt,
        bufs: vec![],
        instrs: vec![],
        phase: Phase::Forward,
        fwd: vec![None; nt],
        bwd: vec![None; nt],
        grad: vec![None; nt],
        written: vec![],
        params: vec![],
        stats: vec![],
        running: vec![],
        recon_checks: vec![],
        recon_saved: vec![None; nt],
        store_all_saved: vec![],
    };
    for p in &prog.params {
        let value = b.buf(p.name.clone(), p.shape, Class::Weights, true);
        let mut train = |kind: &str, class| {
            (!opt.inference).then(|| b.buf(format!("{kind}:{}", p.name), p.shape, class, true))
        };
        let grad = train("grad", Class::Gradients);
        let m = train("adam_m", Class::Optimizer);
        let v = train("adam_v", Class::Optimizer);
        b.params.push(ParamBufs { value, grad, m, v });
    }
    for bn in &prog.bns {
        let s = Shape5::vector(bn.channels);
        let rm = b.buf(format!("{}.running_mean", bn.name), s, Class::Weights, true);
        let rv = b.buf(format!("{}.running_var", bn.name), s, Class::Weights, true);
        b.running.push((rm, rv));
        let stats_len = if opt.inference { Shape5::vector(0) } else { s };
        let mean = b.buf(
            format!("{}.batch_mean", bn.name),
            stats_len,
            Class::Workspace,
            true,
        );
        let invstd = b.buf(
            format!("{}.batch_invstd", bn.name),
            stats_len,
            Class::Workspace,
            true,
        );
        b.stats.push((mean, invstd));
    }
    let out_shape = prog.tensors[prog.output].shape;
    let input = b.act(prog.input);
    // The loss's inputs stay f32: targets, masks (which carry z_weight) and class weights.
    let f32_tmp = |b: &mut Builder, name: &str, class| {
        b.buf_in(name.into(), out_shape, class, false, Storage::F32)
    };
    let target = f32_tmp(&mut b, "target", Class::Activations);
    let mask = f32_tmp(&mut b, "mask", Class::Activations);
    let loss = b.buf("loss".into(), Shape5::vector(1), Class::Workspace, true);
    for n in &prog.nodes {
        b.forward_node(n);
    }
    if opt.inference {
        let logits = b.fwd[prog.output].unwrap();
        let probs = f32_tmp(&mut b, "affinities", Class::Activations);
        b.emit(Instr::Sigmoid {
            x: logits,
            y: probs,
        });
        return Ok(Plan {
            strategy: opt.strategy,
            precision: opt.precision,
            bufs: b.bufs,
            instrs: b.instrs,
            params: b.params,
            running: b.running,
            input,
            target,
            mask,
            loss,
            logits: probs,
            recon_checks: vec![],
            uploaded: vec![input.buf],
            arena_bytes: 0,
            free_after: vec![],
            live: vec![],
            peak_index: 0,
        });
    }
    b.phase = Phase::Loss;
    let logits = b.fwd[prog.output].unwrap();
    let weight = f32_tmp(&mut b, "class_weights", Class::Workspace);
    b.emit(Instr::BceWeights {
        target,
        mask,
        weight,
    });
    let dz = b.grad_of(prog.output);
    b.written[dz.buf] = true;
    b.emit(Instr::Bce {
        z: logits,
        target,
        weight,
        mask,
        loss,
        dz: Some(dz),
    });
    b.phase = Phase::Backward;
    for n in prog.nodes.iter().rev() {
        b.backward_node(n);
    }
    b.phase = Phase::Update;
    for p in 0..prog.params.len() {
        let pb = b.params[p];
        let (g, m, v) = (pb.grad.unwrap(), pb.m.unwrap(), pb.v.unwrap());
        b.emit(Instr::Adam {
            p: pb.value,
            g,
            m,
            v,
        });
    }
    Ok(Plan {
        strategy: opt.strategy,
        precision: opt.precision,
        bufs: b.bufs,
        instrs: b.instrs,
        params: b.params,
        running: b.running,
        input,
        target,
        mask,
        loss,
        logits,
        recon_checks: b.recon_checks,
        uploaded: vec![input.buf, target.buf, mask.buf],
        arena_bytes: 0,
        free_after: vec![],
        live: vec![],
        peak_index: 0,
    })
}

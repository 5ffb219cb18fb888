//! The network as an explicit program: a list of nodes over numbered tensors, built from a config.
//! The scheduler reads this list to plan every buffer; nothing here runs anything.
//!
//! Superhuman's residual symmetric U-Net (ENGINEERING.md section 1), with each ResMod's residual
//! part optionally replaced by a chain of RevNet blocks (section 2).

use crate::error::{Error, Result};
use crate::tensor::Shape5;

pub type TensorId = usize;
pub type ParamId = usize;
pub type BnId = usize;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Norm {
    Batch,
    None,
}

/// Limits of [`NetConfig::validate`] and [`NetConfig::check_patch`].
pub const MAX_REV_BLOCKS: usize = 1000;
pub const MAX_SCALES: usize = 16;
pub const MAX_WIDTH: usize = 1 << 14;
pub const MAX_TENSOR_BYTES: usize = 1 << 40;

#[derive(Clone, Debug, PartialEq)]
pub struct NetConfig {
    pub widths: Vec<usize>,
    /// 0: the original residual modules; n >= 1: n RevNet blocks per ResMod.
    pub rev_blocks: usize,
    pub norm: Norm,
    /// 3 nearest-neighbour affinities, or 12 with the long-range ones.
    pub outputs: usize,
}

impl NetConfig {
    pub fn superhuman(rev_blocks: usize) -> Self {
        NetConfig {
            widths: vec![28, 36, 48, 64, 80],
            rev_blocks,
            norm: Norm::Batch,
            outputs: 3,
        }
    }

    pub fn validate(&self) -> Result<()> {
        // Bounds far above any real network keep every count of parameters, buffers and FLOPs
        // derived from them well inside u64, and refuse a program too large to build.
        let over = |what: &str, v: usize, max: usize| {
            Error::Invalid(format!(
                "{what} {v} is over the limit of {max} (the published networks use at most a few)"
            ))
        };
        if self.rev_blocks > MAX_REV_BLOCKS {
            return Err(over("rev_blocks", self.rev_blocks, MAX_REV_BLOCKS));
        }
        if self.widths.len() > MAX_SCALES {
            return Err(over("the number of scales", self.widths.len(), MAX_SCALES));
        }
        if let Some(&w) = self.widths.iter().find(|&&w| w > MAX_WIDTH) {
            return Err(over("width", w, MAX_WIDTH));
        }
        if self.outputs > MAX_WIDTH {
            return Err(over("outputs", self.outputs, MAX_WIDTH));
        }
        if self.widths.is_empty() {
            return Err(Error::Invalid(
                "the network needs at least one width".into(),
            ));
        }
        if self.widths.contains(&0) {
            return Err(Error::Invalid("widths must be positive".into()));
        }
        if self.rev_blocks > 0 {
            if let Some(w) = self.widths.iter().find(|w| **w % 2 != 0) {
                return Err(Error::Invalid(format!(
                    "width {w} is odd: reversible blocks split channels in halves"
                )));
            }
        }
        if self.outputs == 0 {
            return Err(Error::Invalid(
                "the network needs at least one output channel".into(),
            ));
        }
        Ok(())
    }

    /// Patch sizes must survive scales-1 poolings by 2 in y and x, and the largest feature map
    /// must fit in [`MAX_TENSOR_BYTES`].
    pub fn check_patch(&self, d: usize, h: usize, w: usize) -> Result<()> {
        let f = 1usize << (self.widths.len().clamp(1, MAX_SCALES) - 1);
        if d == 0 || !h.is_multiple_of(f) || !w.is_multiple_of(f) || h == 0 || w == 0 {
            return Err(Error::Invalid(format!(
                "patch {d}x{h}x{w}: with {} scales, H and W must be positive multiples of {f} (1x2x2 pooling between scales)",
                self.widths.len()
            )));
        }
        let channels = self.widths.iter().copied().chain([self.outputs]).max();
        let bytes = crate::alloc::bytes_of(&[channels.unwrap_or(1), d, h, w], 4);
        if bytes.is_none_or(|b| b > MAX_TENSOR_BYTES) {
            let need = bytes.map_or("more than 2^64".to_string(), |b| b.to_string());
            return Err(Error::Invalid(format!(
                "patch {d}x{h}x{w}: its largest feature map needs {need} bytes, over the {MAX_TENSOR_BYTES} bytes (1 TiB) any device holds; use a smaller patch"
            )));
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    /// Kaiming-normal with this fan-in.
    ConvWeight {
        fan_in: usize,
    },
    Bias,
    BnGamma,
    BnBeta,
}

#[derive(Clone, Debug)]
pub struct Param {
    /// PyTorch-style dotted name, e.g. `enc0.conv1.weight`.
    pub name: String,
    pub shape: Shape5,
    pub kind: ParamKind,
}

#[derive(Clone, Debug)]
pub struct BatchNorm {
    pub name: String,
    pub channels: usize,
    pub gamma: ParamId,
    pub beta: ParamId,
}

/// conv 3x3x3 -> BN -> ELU -> conv 3x3x3 (no biases), one of F or G.
#[derive(Clone, Debug)]
pub struct Residual {
    pub wa: ParamId,
    pub bn: Option<BnId>,
    pub wb: ParamId,
}

#[derive(Clone, Debug)]
pub struct RevBlock {
    pub f: Residual,
    pub g: Residual,
}

#[derive(Clone, Debug)]
pub enum Node {
    Conv {
        x: TensorId,
        w: ParamId,
        b: Option<ParamId>,
        y: TensorId,
    },
    ConvTranspose {
        x: TensorId,
        w: ParamId,
        b: ParamId,
        y: TensorId,
    },
    MaxPool {
        x: TensorId,
        y: TensorId,
    },
    BatchNorm {
        x: TensorId,
        bn: BnId,
        y: TensorId,
    },
    Elu {
        x: TensorId,
        y: TensorId,
    },
    Add {
        a: TensorId,
        b: TensorId,
        y: TensorId,
    },
    /// A chain of RevNet blocks on the channel halves of x.
    Rev {
        x: TensorId,
        blocks: Vec<RevBlock>,
        y: TensorId,
    },
}

#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    pub shape: Shape5,
}

#[derive(Clone, Debug)]
pub struct Program {
    pub config: NetConfig,
    pub patch: (usize, usize, usize),
    pub tensors: Vec<TensorInfo>,
    pub params: Vec<Param>,
    pub bns: Vec<BatchNorm>,
    pub nodes: Vec<Node>,
    pub input: TensorId,
    /// Logits, (1, outputs, D, H, W).
    pub output: TensorId,
}

impl Program {
    pub fn param_count(&self) -> usize {
        self.params.iter().map(|p| p.shape.len()).sum()
    }

    /// Multiply-add FLOPs of one forward pass (convolutions only; the rest is below 1%).
    pub fn forward_flops(&self) -> f64 {
        let conv = |x: TensorId, w: ParamId| {
            let s = self.tensors[x].shape;
            2.0 * (self.params[w].shape.len() * s.spatial() * s.n) as f64
        };
        self.nodes
            .iter()
            .map(|n| match n {
                Node::Conv { x, w, .. } | Node::ConvTranspose { x, w, .. } => conv(*x, *w),
                Node::Rev { x, blocks, .. } => {
                    let s = self.tensors[*x].shape.with_c(self.tensors[*x].shape.c / 2);
                    blocks
                        .iter()
                        .map(|b| {
                            [b.f.wa, b.f.wb, b.g.wa, b.g.wb]
                                .iter()
                                .map(|w| 2.0 * (self.params[*w].shape.len() * s.spatial()) as f64)
                                .sum::<f64>()
                        })
                        .sum()
                }
                _ => 0.0,
            })
            .sum()
    }
}

struct Builder {
    p: Program,
}

impl Builder {
    fn tensor(&mut self, name: String, shape: Shape5) -> TensorId {
        self.p.tensors.push(TensorInfo { name, shape });
        self.p.tensors.len() - 1
    }
    fn param(&mut self, name: String, shape: Shape5, kind: ParamKind) -> ParamId {
        self.p.params.push(Param { name, shape, kind });
        self.p.params.len() - 1
    }
    fn shape(&self, t: TensorId) -> Shape5 {
        self.p.tensors[t].shape
    }
    fn conv(
        &mut self,
        name: &str,
        x: TensorId,
        co: usize,
        k: (usize, usize, usize),
        bias: bool,
    ) -> TensorId {
        let ci = self.shape(x).c;
        let w = self.param(
            format!("{name}.weight"),
            Shape5::new(co, ci, k.0, k.1, k.2),
            ParamKind::ConvWeight {
                fan_in: ci * k.0 * k.1 * k.2,
            },
        );
        let b =
            bias.then(|| self.param(format!("{name}.bias"), Shape5::vector(co), ParamKind::Bias));
        let y = self.tensor(name.to_string(), self.shape(x).with_c(co));
        self.p.nodes.push(Node::Conv { x, w, b, y });
        y
    }
    fn bn_params(&mut self, name: &str, c: usize) -> BnId {
        let gamma = self.param(
            format!("{name}.weight"),
            Shape5::vector(c),
            ParamKind::BnGamma,
        );
        let beta = self.param(format!("{name}.bias"), Shape5::vector(c), ParamKind::BnBeta);
        self.p.bns.push(BatchNorm {
            name: name.to_string(),
            channels: c,
            gamma,
            beta,
        });
        self.p.bns.len() - 1
    }
    /// BN (when enabled) then ELU.
    fn norm_elu(&mut self, name: &str, x: TensorId) -> TensorId {
        let s = self.shape(x);
        let x = if self.p.config.norm == Norm::Batch {
            let bn = self.bn_params(name, s.c);
            let y = self.tensor(name.to_string(), s);
            self.p.nodes.push(Node::BatchNorm { x, bn, y });
            y
        } else {
            x
        };
        let y = self.tensor(format!("{name}.elu"), s);
        self.p.nodes.push(Node::Elu { x, y });
        y
    }
    fn elu(&mut self, name: &str, x: TensorId) -> TensorId {
        let y = self.tensor(name.to_string(), self.shape(x));
        self.p.nodes.push(Node::Elu { x, y });
        y
    }
    fn residual(&mut self, name: &str, c: usize) -> Residual {
        let k = 27 * c;
        let wa = self.param(
            format!("{name}.conv1.weight"),
            Shape5::new(c, c, 3, 3, 3),
            ParamKind::ConvWeight { fan_in: k },
        );
        let bn =
            (self.p.config.norm == Norm::Batch).then(|| self.bn_params(&format!("{name}.bn"), c));
        let wb = self.param(
            format!("{name}.conv2.weight"),
            Shape5::new(c, c, 3, 3, 3),
            ParamKind::ConvWeight { fan_in: k },
        );
        Residual { wa, bn, wb }
    }
    /// ResMod(cin -> c): conv1 1x3x3 -> BN -> ELU = s; residual part (conv2, conv3 + skip, or a
    /// reversible chain); BN -> ELU.
    fn resmod(&mut self, name: &str, x: TensorId, c: usize) -> TensorId {
        let bias = self.p.config.norm == Norm::None;
        let a = self.conv(&format!("{name}.conv1"), x, c, (1, 3, 3), bias);
        let s = self.norm_elu(&format!("{name}.bn1"), a);
        let shape = self.shape(s);
        let r = if self.p.config.rev_blocks == 0 {
            let b = self.conv(&format!("{name}.conv2"), s, c, (3, 3, 3), bias);
            let e = self.norm_elu(&format!("{name}.bn2"), b);
            let d = self.conv(&format!("{name}.conv3"), e, c, (3, 3, 3), bias);
            let y = self.tensor(format!("{name}.sum"), shape);
            self.p.nodes.push(Node::Add { a: d, b: s, y });
            y
        } else {
            let blocks = (0..self.p.config.rev_blocks)
                .map(|i| RevBlock {
                    f: self.residual(&format!("{name}.rev{i}.f"), c / 2),
                    g: self.residual(&format!("{name}.rev{i}.g"), c / 2),
                })
                .collect();
            let y = self.tensor(format!("{name}.rev"), shape);
            self.p.nodes.push(Node::Rev { x: s, blocks, y });
            y
        };
        self.norm_elu(&format!("{name}.bn3"), r)
    }
}

/// Build the program of the network for a training patch (d, h, w), batch 1.
pub fn build(config: &NetConfig, patch: (usize, usize, usize)) -> Result<Program> {
    config.validate()?;
    config.check_patch(patch.0, patch.1, patch.2)?;
    let mut b = Builder {
        p: Program {
            config: config.clone(),
            patch,
            tensors: vec![],
            params: vec![],
            bns: vec![],
            nodes: vec![],
            input: 0,
            output: 0,
        },
    };
    let input = b.tensor("input".into(), Shape5::new(1, 1, patch.0, patch.1, patch.2));
    b.p.input = input;
    let w = config.widths.clone();
    let e = b.conv("embed_in", input, w[0], (1, 5, 5), true);
    let mut x = b.elu("embed_in.elu", e);
    let mut skips = Vec::new();
    for (s, &c) in w.iter().enumerate() {
        if s > 0 {
            let sh = b.shape(x);
            let y = b.tensor(
                format!("pool{s}"),
                Shape5::new(1, sh.c, sh.d, sh.h / 2, sh.w / 2),
            );
            b.p.nodes.push(Node::MaxPool { x, y });
            x = y;
        }
        x = b.resmod(&format!("enc{s}"), x, c);
        skips.push(x);
    }
    for d in (0..w.len() - 1).rev() {
        let sh = b.shape(x);
        let name = format!("dec{d}.up");
        let wt = b.param(
            format!("{name}.weight"),
            Shape5::new(sh.c, w[d], 1, 2, 2),
            ParamKind::ConvWeight { fan_in: sh.c },
        );
        let bias = b.param(
            format!("{name}.bias"),
            Shape5::vector(w[d]),
            ParamKind::Bias,
        );
        let u = b.tensor(name, Shape5::new(1, w[d], sh.d, sh.h * 2, sh.w * 2));
        b.p.nodes.push(Node::ConvTranspose {
            x,
            w: wt,
            b: bias,
            y: u,
        });
        let v = b.tensor(format!("dec{d}.join"), b.shape(u));
        b.p.nodes.push(Node::Add {
            a: u,
            b: skips[d],
            y: v,
        });
        let j = b.norm_elu(&format!("dec{d}.bn"), v);
        x = b.resmod(&format!("dec{d}"), j, w[d]);
    }
    let e = b.conv("embed_out", x, w[0], (1, 5, 5), true);
    let x = b.elu("embed_out.elu", e);
    let out = b.conv("output", x, config.outputs, (1, 1, 1), true);
    b.p.output = out;
    Ok(b.p)
}

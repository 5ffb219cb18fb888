//! The `Backend` trait: what the scheduler needs from a device. The CPU backend, the CUDA backend and
//! the kernel emulator implement it; the model and scheduler never ask which one they run on.
//!
//! Memory model: a backend allocates one arena; every buffer is a `Region` of it chosen by the caller
//! (the scheduler plans all offsets before a step runs). Ops name their operands by region, the way a
//! CUDA kernel names them by pointer, so the same call works for host memory and device memory.

pub mod cpu;
pub mod device;
pub mod gpu;

use crate::error::{Error, Result};
use crate::ops::coupling::{Direction, FixedPoint};
use crate::ops::{batchnorm::BatchNormArgs, optim::AdamParams, optim::SgdParams};
use crate::precision::Storage;
use crate::tensor::{Element, Shape5};

/// A span of an arena: `len` elements stored as `storage`. `offset` counts elements in arenas of
/// one element type (every buffer f32, or f64 for reference checks) and bytes in byte-addressed
/// arenas (`Backend::byte_regions`), where each buffer has its own storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Region {
    pub offset: usize,
    pub len: usize,
    pub storage: Storage,
}

impl Region {
    pub const fn new(offset: usize, len: usize) -> Self {
        Region {
            offset,
            len,
            storage: Storage::F32,
        }
    }
    /// A region of a byte-addressed arena.
    pub const fn bytes_at(offset: usize, len: usize, storage: Storage) -> Self {
        Region {
            offset,
            len,
            storage,
        }
    }
    /// One past the last byte, in a byte-addressed arena.
    pub fn byte_end(&self) -> usize {
        self.offset + self.len * self.storage.bytes()
    }
    pub fn end(&self) -> usize {
        self.offset + self.len
    }
    pub fn overlaps(&self, o: &Region) -> bool {
        self.len > 0 && o.len > 0 && self.offset < o.end() && o.offset < self.end()
    }
    /// The sub-region of `len` elements that starts `at` elements in.
    pub fn slice(&self, at: usize, len: usize) -> Region {
        debug_assert!(at + len <= self.len);
        Region::new(self.offset + at, len)
    }
}

/// A region holding a tensor of a given shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct View {
    pub region: Region,
    pub shape: Shape5,
}

impl View {
    pub fn new(region: Region, shape: Shape5) -> Result<Self> {
        if region.len != shape.len() {
            return Err(Error::region(
                "view",
                format!(
                    "region of {} elements cannot hold shape {shape} ({} elements)",
                    region.len,
                    shape.len()
                ),
            ));
        }
        Ok(View { region, shape })
    }
    /// The same memory seen as another shape with as many elements.
    pub fn reshape(&self, shape: Shape5) -> Result<Self> {
        View::new(self.region, shape)
    }
}

/// Whether an op's output overwrites its destination or adds to it (gradients of a tensor read by
/// several ops are summed in place this way).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    Overwrite,
    Accumulate,
}

/// Saved per-channel batch statistics of a BatchNorm training forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BnStats {
    pub mean: Region,
    pub invstd: Region,
}

/// Running statistics, updated with momentum by a training forward that is given them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BnRunning {
    pub mean: Region,
    pub var: Region,
}

/// Every op of the engine, forward and backward, over regions of one arena.
///
/// Aliasing: an output region must not overlap an input region, except where an op says it may be
/// the very same region (in place). Violations are `Error::Region`, never undefined behaviour.
pub trait Backend {
    type Elem: Element;
    type Arena;

    fn name(&self) -> String;
    /// Whether regions of this backend's arena are in bytes, each with its own storage (the plan's
    /// per-buffer f32 or bf16); otherwise in elements of `Elem`, every buffer f32 in the plan.
    fn byte_regions(&self) -> bool {
        false
    }
    /// Open and close a named profiler range (NVTX on CUDA); no-ops elsewhere.
    fn range_push(&self, _name: &str) {}
    fn range_pop(&self) {}
    /// Wait until every op issued so far has finished (a GPU queues them); benchmarks time with it.
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
    fn alloc_arena(&self, len: usize) -> Result<Self::Arena>;
    fn arena_len(&self, arena: &Self::Arena) -> usize;
    fn upload(&self, a: &mut Self::Arena, dst: Region, src: &[Self::Elem]) -> Result<()>;
    fn download(&self, a: &Self::Arena, src: Region, dst: &mut [Self::Elem]) -> Result<()>;
    fn fill(&self, a: &mut Self::Arena, dst: Region, value: Self::Elem) -> Result<()>;
    fn copy(&self, a: &mut Self::Arena, src: Region, dst: Region) -> Result<()>;

    // conv3d: stride 1, "same" zero padding, odd kernel. w is (Co, Ci, kD, kH, kW).
    fn conv3d_forward(
        &self,
        a: &mut Self::Arena,
        x: View,
        w: View,
        bias: Option<Region>,
        y: View,
    ) -> Result<()>;
    fn conv3d_backward_input(
        &self,
        a: &mut Self::Arena,
        dy: View,
        w: View,
        dx: View,
        mode: Write,
    ) -> Result<()>;
    fn conv3d_backward_weight(
        &self,
        a: &mut Self::Arena,
        x: View,
        dy: View,
        dw: View,
        mode: Write,
    ) -> Result<()>;
    /// Bias gradient: the sum of dy over N, D, H, W for each channel (also used by conv_transpose).
    fn conv3d_backward_bias(
        &self,
        a: &mut Self::Arena,
        dy: View,
        db: Region,
        mode: Write,
    ) -> Result<()>;

    // conv_transpose: kernel 1x2x2, stride 1x2x2. w is (Ci, Co, 1, 2, 2) as in PyTorch.
    fn conv_transpose_forward(
        &self,
        a: &mut Self::Arena,
        x: View,
        w: View,
        bias: Option<Region>,
        y: View,
    ) -> Result<()>;
    fn conv_transpose_backward_input(
        &self,
        a: &mut Self::Arena,
        dy: View,
        w: View,
        dx: View,
        mode: Write,
    ) -> Result<()>;
    fn conv_transpose_backward_weight(
        &self,
        a: &mut Self::Arena,
        x: View,
        dy: View,
        dw: View,
        mode: Write,
    ) -> Result<()>;

    // maxpool: 1x2x2, stride 1x2x2. The backward finds the arg-max again from x instead of storing it.
    fn maxpool_forward(&self, a: &mut Self::Arena, x: View, y: View) -> Result<()>;
    fn maxpool_backward(
        &self,
        a: &mut Self::Arena,
        x: View,
        dy: View,
        dx: View,
        mode: Write,
    ) -> Result<()>;

    // elementwise. elu_forward may run in place (y == x); elu_backward reads only the output y.
    fn elu_forward(&self, a: &mut Self::Arena, x: View, y: View) -> Result<()>;
    fn elu_backward(
        &self,
        a: &mut Self::Arena,
        y: View,
        dy: View,
        dx: View,
        mode: Write,
    ) -> Result<()>;
    /// out = p + q; out may be p or q.
    fn add(&self, a: &mut Self::Arena, p: View, q: View, out: View) -> Result<()>;
    /// dst += src: the reversible coupling forward (y = x + f, in place) and gradient sums.
    fn add_assign(&self, a: &mut Self::Arena, dst: View, src: View) -> Result<()>;
    /// dst -= src: the reversible coupling inverse (x = y - f, in place).
    fn sub_assign(&self, a: &mut Self::Arena, dst: View, src: View) -> Result<()>;
    /// Exact reversible coupling (ops/coupling.rs): y = x + q(f) (`Forward`) or y = x - q(f)
    /// (`Inverse`), q rounding to the fixed-point grid; with no f, y = q(x) (a chain's entry).
    /// y may be x (in place). A result outside the fixed-point range is an `Error::Value` naming
    /// the first such element and its value; y then holds unspecified values.
    fn coupling(
        &self,
        a: &mut Self::Arena,
        x: View,
        f: Option<View>,
        y: View,
        dir: Direction,
        fp: FixedPoint,
    ) -> Result<()>;

    // batchnorm over N, D, H, W per channel.
    /// Training forward with batch statistics, saved to `stats`; `running` is updated with momentum
    /// when given and left untouched when `None` (recomputation must not update it twice).
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_forward_train(
        &self,
        a: &mut Self::Arena,
        x: View,
        gamma: Region,
        beta: Region,
        y: View,
        stats: BnStats,
        running: Option<BnRunning>,
        args: BatchNormArgs,
    ) -> Result<()>;
    /// Training-mode normalisation with statistics saved by an earlier training forward on the
    /// same input: what a recomputation needs (one pass, no reduction, bit-identical output).
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_apply(
        &self,
        a: &mut Self::Arena,
        x: View,
        gamma: Region,
        beta: Region,
        stats: BnStats,
        y: View,
    ) -> Result<()>;
    /// `batchnorm_apply`, then ELU in place on its output: how the backward rebuilds ELU(BN(a)).
    /// Backends that can fuse the two into one pass over y override it; the result is the same
    /// bit for bit.
    fn batchnorm_apply_elu(
        &self,
        a: &mut Self::Arena,
        x: View,
        gamma: Region,
        beta: Region,
        stats: BnStats,
        y: View,
    ) -> Result<()> {
        self.batchnorm_apply(a, x, gamma, beta, stats, y)?;
        self.elu_forward(a, y, y)
    }
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_forward_infer(
        &self,
        a: &mut Self::Arena,
        x: View,
        gamma: Region,
        beta: Region,
        running: BnRunning,
        y: View,
        eps: f64,
    ) -> Result<()>;
    /// dx (written or accumulated per `mode`); dgamma and dbeta are always accumulated into.
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_backward(
        &self,
        a: &mut Self::Arena,
        x: View,
        dy: View,
        gamma: Region,
        stats: BnStats,
        dx: View,
        dgamma: Region,
        dbeta: Region,
        mode: Write,
    ) -> Result<()>;

    // loss
    /// Class-rebalancing weights (ENGINEERING.md section 3) from binary targets and a 0/1 mask.
    fn bce_weights(
        &self,
        a: &mut Self::Arena,
        target: View,
        mask: View,
        weight: View,
    ) -> Result<()>;
    /// Weighted, masked binary cross-entropy on logits: writes the loss to `loss` (one element) and,
    /// when asked, its gradient with respect to the logits.
    #[allow(clippy::too_many_arguments)]
    fn bce_loss(
        &self,
        a: &mut Self::Arena,
        logits: View,
        target: View,
        weight: View,
        mask: View,
        loss: Region,
        dlogits: Option<View>,
    ) -> Result<()>;
    fn sigmoid(&self, a: &mut Self::Arena, x: View, y: View) -> Result<()>;

    // optim. `step` counts from 1.
    #[allow(clippy::too_many_arguments)]
    fn adam_step(
        &self,
        a: &mut Self::Arena,
        param: Region,
        grad: Region,
        m: Region,
        v: Region,
        hp: AdamParams,
        step: u64,
    ) -> Result<()>;
    fn sgd_step(
        &self,
        a: &mut Self::Arena,
        param: Region,
        grad: Region,
        velocity: Option<Region>,
        hp: SgdParams,
    ) -> Result<()>;
}

/// Hands out consecutive regions of an arena: for checks and tests that lay buffers by hand. The
/// scheduler's planner reuses memory; this does not.
#[derive(Clone, Debug, Default)]
pub struct Bump {
    next: usize,
}

impl Bump {
    pub fn take(&mut self, len: usize) -> Region {
        let r = Region::new(self.next, len);
        self.next += len;
        r
    }
    pub fn view(&mut self, shape: Shape5) -> View {
        View {
            region: self.take(shape.len()),
            shape,
        }
    }
    /// Elements handed out so far: the arena size needed.
    pub fn len(&self) -> usize {
        self.next
    }
    pub fn is_empty(&self) -> bool {
        self.next == 0
    }
}

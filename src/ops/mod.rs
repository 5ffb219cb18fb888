//! One module per op family: shapes, validation of every operand (shapes, per-channel lengths, and
//! which regions an op reads and writes, checked by `Operands::check`), FLOP counts and
//! hyper-parameters. The same names are used by the CPU code (`backend/cpu/<op>.rs`) and, for the
//! CUDA backend, by `backend/gpu/<op>.rs` and `kernels/<op>.cu`: a backend checks its operands by
//! calling `ops::<op>::check_*` and does nothing else before its arithmetic.

pub mod batchnorm;
pub mod conv3d;
pub mod conv_transpose;
pub mod coupling;
pub mod elementwise;
pub mod loss;
pub mod maxpool;
pub mod optim;

use crate::backend::Region;
use crate::error::{Error, Result};
use crate::tensor::Shape5;

pub(crate) fn same_shape(op: &'static str, what: &str, a: Shape5, b: Shape5) -> Result<()> {
    if a != b {
        return Err(Error::shape(op, format!("{what}: {a} vs {b}")));
    }
    Ok(())
}

pub(crate) fn vector_len(op: &'static str, what: &str, len: usize, want: usize) -> Result<()> {
    if len != want {
        return Err(Error::shape(
            op,
            format!("{what} has {len} values, expected {want} (one per channel)"),
        ));
    }
    Ok(())
}

/// Per-channel operands (BN parameters and statistics, bias gradients) hold one value per channel.
pub(crate) fn per_channel(
    op: &'static str,
    items: &[(&str, Region)],
    channels: usize,
) -> Result<()> {
    for (what, r) in items {
        vector_len(op, what, r.len, channels)?;
    }
    Ok(())
}

/// An op's operands as the region rules see them: what it reads and what it writes. Every backend
/// checks them the same way (`check`) before it touches memory; an optional operand that is absent
/// is the empty region, which is in bounds of every arena and overlaps nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Operands<const I: usize, const O: usize> {
    pub op: &'static str,
    pub ins: [Region; I],
    pub outs: [Region; O],
}

impl<const I: usize, const O: usize> Operands<I, O> {
    pub fn new(op: &'static str, ins: [Region; I], outs: [Region; O]) -> Self {
        Operands { op, ins, outs }
    }
    /// The rules of every backend: each region inside the arena of `len` elements; outputs
    /// pairwise disjoint and disjoint from every input (an in-place op names its operand as an
    /// output only).
    pub fn check(&self, len: usize) -> Result<()> {
        check_regions(self.op, len, &self.ins, &self.outs)
    }
}

/// `Operands::check` over slices.
pub fn check_regions(op: &'static str, len: usize, ins: &[Region], outs: &[Region]) -> Result<()> {
    for r in ins.iter().chain(outs) {
        check_bounds(op, len, *r)?;
    }
    for (i, o) in outs.iter().enumerate() {
        for o2 in &outs[i + 1..] {
            if o.overlaps(o2) {
                return Err(Error::region(
                    op,
                    format!("two outputs overlap ({o:?}, {o2:?})"),
                ));
            }
        }
        for r in ins {
            if o.overlaps(r) {
                return Err(Error::region(
                    op,
                    format!("output {o:?} overlaps input {r:?}"),
                ));
            }
        }
    }
    Ok(())
}

pub fn check_bounds(op: &'static str, len: usize, r: Region) -> Result<()> {
    if r.end() > len {
        return Err(Error::region(
            op,
            format!(
                "region {}..{} lies outside the arena of {len} elements",
                r.offset,
                r.end()
            ),
        ));
    }
    Ok(())
}

/// upload / download: `n` host values to or from region `r` of an arena of `len` elements.
pub fn check_transfer(op: &'static str, len: usize, r: Region, n: usize) -> Result<()> {
    check_bounds(op, len, r)?;
    if n != r.len {
        return Err(Error::region(
            op,
            format!("{n} values for a region of {}", r.len),
        ));
    }
    Ok(())
}

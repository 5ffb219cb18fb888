//! Safe access to regions of a host arena: bounds and aliasing are checked once per op, then the op
//! works on plain slices.

use crate::error::Result;
use crate::ops::Operands;

/// An op's inputs as shared slices and its outputs as mutable ones.
pub(crate) type Split<'a, T, const I: usize, const O: usize> = ([&'a [T]; I], [&'a mut [T]; O]);

/// Borrow an op's inputs shared and its outputs mutable from one arena, once `Operands::check`
/// (bounds; outputs pairwise disjoint and disjoint from every input) has passed.
pub(crate) fn split<T, const I: usize, const O: usize>(
    data: &mut [T],
    operands: Operands<I, O>,
) -> Result<Split<'_, T, I, O>> {
    operands.check(data.len())?;
    let base = data.as_mut_ptr();
    // SAFETY: every region is in bounds; outputs are disjoint from each other and from inputs, so
    // the mutable slices never alias anything else handed out here, and all borrow `data`.
    let ins = operands
        .ins
        .map(|r| unsafe { std::slice::from_raw_parts(base.add(r.offset) as *const T, r.len) });
    let outs = operands
        .outs
        .map(|r| unsafe { std::slice::from_raw_parts_mut(base.add(r.offset), r.len) });
    Ok((ins, outs))
}

/// A raw pointer that may cross threads; used where parallel tasks write disjoint strided tiles of
/// one output (a GEMM's C with a row stride), which slices cannot express.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr<T>(pub *mut T);
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// The pointer. A method rather than `.0` inside closures, so that they capture the whole
    /// (Send) wrapper and not the bare pointer field.
    #[inline(always)]
    pub fn get(self) -> *mut T {
        self.0
    }
}

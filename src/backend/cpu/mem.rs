//! Safe access to regions of a host arena: bounds and aliasing are checked once per op, then the op
//! works on plain slices.

use crate::backend::Region;
use crate::error::{Error, Result};

pub(crate) fn check_bounds(op: &'static str, len: usize, r: Region) -> Result<()> {
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

/// Borrow `ins` shared and `outs` mutable from one arena. Outputs must be pairwise disjoint and
/// disjoint from every input (in-place ops take their operand as an output only).
pub(crate) fn split<'a, T, const I: usize, const O: usize>(
    op: &'static str,
    data: &'a mut [T],
    ins: [Region; I],
    outs: [Region; O],
) -> Result<([&'a [T]; I], [&'a mut [T]; O])> {
    let len = data.len();
    for r in ins.iter().chain(outs.iter()) {
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
        for r in &ins {
            if o.overlaps(r) {
                return Err(Error::region(
                    op,
                    format!("output {o:?} overlaps input {r:?}"),
                ));
            }
        }
    }
    let base = data.as_mut_ptr();
    // SAFETY: every region is in bounds; outputs are disjoint from each other and from inputs, so
    // the mutable slices never alias anything else handed out here, and all borrow `data` for 'a.
    let ins =
        ins.map(|r| unsafe { std::slice::from_raw_parts(base.add(r.offset) as *const T, r.len) });
    let outs = outs.map(|r| unsafe { std::slice::from_raw_parts_mut(base.add(r.offset), r.len) });
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

//! NVTX ranges, so that `nsys profile revseg train ...` shows a step's structure: the step, its
//! phases (forward, loss, backward, update) and every instruction of the plan with the buffer it
//! writes; the CUDA backend adds a range per op around its kernel launches.
//!
//! NVTX 3 is header-only: a range is a call through a function table that stays a no-op unless a
//! tool (nsys, or any library named by `NVTX_INJECTION64_PATH`) is injected at the first call.
//! Without that variable nothing is formatted or called at all, so ranges cost nothing in normal
//! runs.

use std::sync::OnceLock;

/// Whether a profiler can receive ranges: NVTX loads its tool from this variable only.
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("NVTX_INJECTION64_PATH").is_some_and(|v| !v.is_empty()))
}

pub fn push(name: &str) {
    if enabled() {
        nvtx::range_push!("{name}");
    }
}

pub fn pop() {
    if enabled() {
        nvtx::range_pop!();
    }
}

/// A range closed when dropped, so an early return (`?`) cannot leave it open.
#[must_use]
pub struct Range(bool);

impl Drop for Range {
    fn drop(&mut self) {
        if self.0 {
            nvtx::range_pop!();
        }
    }
}

/// Open a range named by `name()`, which runs only when a profiler is attached.
pub fn range(name: impl FnOnce() -> String) -> Range {
    if enabled() {
        nvtx::range_push!("{}", name());
        Range(true)
    } else {
        Range(false)
    }
}

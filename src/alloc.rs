//! Refusing buffers that cannot be had. A failed allocation aborts a Rust process (exit 134, no
//! message), so every size that comes from a file or the command line is checked here first,
//! with overflow-safe arithmetic, and refused as an error that names the bytes needed.

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A process-wide ceiling below the machine's own (harnesses feeding mutated files lower it so
/// that a declared size the machine could hold still cannot slow every iteration to a crawl).
static CAP: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Below this a buffer is taken without reading /proc/meminfo: small buffers are the hot path and
/// cannot exhaust a machine that runs revseg at all.
const UNCHECKED: usize = 64 << 20;

/// Lowers (or raises) the process-wide ceiling on one buffer, in bytes.
pub fn set_cap(bytes: usize) {
    CAP.store(bytes, Ordering::Relaxed);
}

/// MemAvailable from /proc/meminfo, where the system reports one.
fn mem_available() -> Option<usize> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

/// The most bytes one buffer may take now, and where that limit comes from.
pub fn limit() -> (usize, &'static str) {
    // Rust refuses any single allocation above isize::MAX bytes whatever the memory.
    let mut best = (isize::MAX as usize, "the addressable size");
    if let Some(m) = mem_available() {
        if m < best.0 {
            best = (m, "MemAvailable in /proc/meminfo");
        }
    }
    let cap = CAP.load(Ordering::Relaxed);
    if cap < best.0 {
        best = (cap, "the ceiling set for this process");
    }
    best
}

/// Bytes of `counts` multiplied together with `elem_bytes`, or None on overflow.
pub fn bytes_of(counts: &[usize], elem_bytes: usize) -> Option<usize> {
    counts.iter().try_fold(elem_bytes, |a, &c| a.checked_mul(c))
}

/// Checks that `counts` elements of `elem_bytes` each (their product) can be allocated; returns
/// the bytes. `what` names the buffer in the error.
pub fn check(what: &str, counts: &[usize], elem_bytes: usize) -> Result<usize> {
    let Some(bytes) = bytes_of(counts, elem_bytes) else {
        return Err(Error::Value {
            what: what.to_string(),
            detail: format!(
                "{counts:?} x {elem_bytes} bytes needs more than {} bytes (the size overflows); use a smaller size or read by region",
                usize::MAX
            ),
        });
    };
    let cap = CAP.load(Ordering::Relaxed);
    if bytes <= UNCHECKED && bytes <= cap {
        return Ok(bytes);
    }
    let (lim, from) = limit();
    if bytes > lim {
        return Err(Error::Value {
            what: what.to_string(),
            detail: format!(
                "needs {bytes} bytes but only {lim} can be allocated ({from}); use a smaller size or read by region"
            ),
        });
    }
    Ok(bytes)
}

/// [`check`] for a buffer of `n` elements of type `T`.
pub fn check_elems<T>(what: &str, n: usize) -> Result<usize> {
    check(what, &[n], std::mem::size_of::<T>())
}

/// Hands the whole pages inside `[ptr, ptr + len)` back to the operating system
/// (`madvise(MADV_DONTNEED)`): resident memory falls at once, while the allocation stays valid
/// and is freed as usual. Reading those pages again would give zeros, so callers release only
/// what they will never read (a scan's consumed input, before the buffer is dropped). Elsewhere
/// than Linux this does nothing.
///
/// # Safety
/// `ptr..ptr + len` lies inside one live allocation of plain data that nothing reads again.
pub unsafe fn release_pages(ptr: *const u8, len: usize) {
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 4096;
        let start = (ptr as usize).div_ceil(PAGE) * PAGE;
        let end = (ptr as usize + len) / PAGE * PAGE;
        if end > start {
            // A failure (EINVAL on an odd mapping) only means the memory stays resident.
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (ptr, len);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflowing_and_huge_sizes_are_refused_with_bytes() {
        let e = check("v", &[100_000, 100_000, 100_000], 8).unwrap_err();
        assert!(e.to_string().contains("8000000000000000 bytes"), "{e}");
        let e = check("v", &[1 << 32, 1 << 32], 2).unwrap_err();
        assert!(e.to_string().contains("overflows"), "{e}");
        assert_eq!(check("v", &[3, 5, 7], 4).unwrap(), 420);
        assert_eq!(bytes_of(&[usize::MAX, 2], 1), None);
        assert_eq!(bytes_of(&[], 8), Some(8));
    }

    #[test]
    fn meminfo_limit_is_below_the_addressable_size() {
        let (l, _) = limit();
        assert!(l > 0 && l <= isize::MAX as usize);
        assert!(check("v", &[l / 8 + 1], 8).is_err());
    }
}

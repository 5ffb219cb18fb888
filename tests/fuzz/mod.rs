//! An in-repo mutation fuzzer (cargo-fuzz needs a nightly compiler): seeds are mutated with a
//! seeded generator for `REVSEG_FUZZ_SECS` seconds (default 30) per target, every call runs under
//! `catch_unwind`, and an input that panics is saved to `tests/fixtures/fuzz-crashes/` so that the
//! replay test keeps it fixed.

pub mod mutate;

use revseg::rng::Rng;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What one buffer may take while fuzzing: declared sizes a machine could hold are still refused
/// early, so that no iteration spends seconds zero-filling a buffer.
pub const FUZZ_ALLOC_CAP: usize = 16 << 20;

pub fn crash_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz-crashes")
}

fn budget() -> Duration {
    let secs = std::env::var("REVSEG_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .unwrap_or(30.0);
    Duration::from_secs_f64(secs)
}

/// FNV-1a: a stable name for a crashing input.
fn hash(v: &[u8]) -> u64 {
    v.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A scratch directory of its own for each use of a target: the replay test and the target's
/// own test run in parallel, and a file rewritten under an open reader is a different test.
pub fn scratch(target: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("revseg-fuzz-{target}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs `run` on one input; a panic becomes the path of the saved input.
pub fn run_one(target: &str, input: &[u8], run: &dyn Fn(&[u8])) -> Result<(), String> {
    match catch_unwind(AssertUnwindSafe(|| run(input))) {
        Ok(()) => Ok(()),
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            let dir = crash_dir();
            std::fs::create_dir_all(&dir).unwrap();
            let f = dir.join(format!("{target}-{:016x}", hash(input)));
            std::fs::write(&f, input).unwrap();
            Err(format!(
                "{target} panicked ({msg}); input saved to {}",
                f.display()
            ))
        }
    }
}

/// Mutates `seeds` and feeds `run` until the time budget is spent; panics with the saved input's
/// path on the first crash. The seeds themselves run first.
pub fn fuzz(target: &str, seeds: &[Vec<u8>], text: bool, run: impl Fn(&[u8])) {
    assert!(!seeds.is_empty(), "{target}: no seeds");
    revseg::alloc::set_cap(FUZZ_ALLOC_CAP);
    let mut rng = Rng::new(hash(target.as_bytes()));
    let end = Instant::now() + budget();
    let mut n = 0u64;
    for s in seeds {
        run_one(target, s, &run).unwrap_or_else(|e| panic!("{e}"));
    }
    // REVSEG_FUZZ_TRACE=FILE keeps the input being run there, to recover one that kills the
    // process (an abort or the OOM killer leaves no panic to catch).
    let trace = std::env::var_os("REVSEG_FUZZ_TRACE").map(PathBuf::from);
    while Instant::now() < end {
        let input = mutate::mutant(&mut rng, seeds, text);
        if let Some(t) = &trace {
            std::fs::write(t, &input).unwrap();
        }
        run_one(target, &input, &run).unwrap_or_else(|e| panic!("{e} after {n} inputs"));
        n += 1;
    }
    eprintln!("fuzz {target}: {n} inputs, no panic");
}

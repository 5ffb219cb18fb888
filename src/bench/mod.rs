//! Benchmarks behind `revseg bench ...` and `cargo bench`. Speed is measured here, never in tests.

pub mod ops;
pub mod quality;
pub mod segment;
pub mod step;

use std::time::Instant;

/// Median wall time in seconds of `f` after one warm-up run; repeats until `min_secs` have passed
/// (at least `min_reps` runs).
pub fn time_median(min_reps: usize, min_secs: f64, mut f: impl FnMut()) -> f64 {
    f();
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < min_reps || start.elapsed().as_secs_f64() < min_secs {
        let t = Instant::now();
        f();
        times.push(t.elapsed().as_secs_f64());
        if times.len() >= 50 {
            break;
        }
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    times[times.len() / 2]
}

//! The benchmark's ceiling: affinities computed from the synthetic test volume's own labels,
//! segmented by the demo's pipeline, must give back the labels (adapted Rand error <= 0.005).
//! If the generator left one id in pieces that touch nowhere (a shifted section, the slip, the
//! crop), no affinity could join them and this ceiling would be broken before any network runs.

use revseg::cli::demo::{best_row, segment_and_score};
use revseg::segment::{affinities_from_labels, Dims};
use revseg::synth::{synthesize, SynthConfig};

fn ceiling(size: (usize, usize, usize), seed: u64) -> f64 {
    let v = synthesize(&SynthConfig {
        size,
        seed,
        ..SynthConfig::default()
    })
    .unwrap();
    assert!(
        !v.artefacts.is_empty(),
        "the ceiling must hold with artefacts"
    );
    let dims = Dims::new(size.0, size.1, size.2);
    let aff = affinities_from_labels(&v.labels, dims);
    let rows = segment_and_score(&aff, &v.labels, dims).unwrap();
    let m = &rows[best_row(&rows)].metrics;
    eprintln!(
        "{size:?} seed {seed}: {} objects, adapted Rand {:.5}, VOI split {:.4} merge {:.4}",
        v.n_objects, m.adapted_rand_error, m.voi_split, m.voi_merge
    );
    m.adapted_rand_error
}

#[test]
fn perfect_affinities_segment_the_demo_test_volume() {
    // The demo's unseen test volume: 24x160x160, seed 1 + 1000.
    let e = ceiling((24, 160, 160), 1001);
    assert!(e <= 0.005, "adapted Rand {e}");
}

#[test]
fn perfect_affinities_segment_the_default_volume() {
    let e = ceiling((64, 256, 256), 1);
    assert!(e <= 0.005, "adapted Rand {e}");
}

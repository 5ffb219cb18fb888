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

/// The mutex watershed's ceiling: the 12 channels of nearest and long-range affinities computed
/// from the labels (`train::targets`, exact borders), with every edge signed by its affinity.
/// With the paper's signs (only long-range edges repel) two touching objects that no long-range
/// edge of the list separates would be joined, so its figure is printed beside, not asserted.
#[test]
fn perfect_long_range_affinities_through_the_mutex_watershed() {
    use revseg::metrics::evaluate;
    use revseg::segment::mutex::{mutex_watershed, Signs};
    use revseg::train::targets::{affinity_targets, TargetOptions, LONG_RANGE};
    use revseg::volume::array::Array;
    let size = (24, 160, 160);
    let v = synthesize(&SynthConfig {
        size,
        seed: 1001,
        ..SynthConfig::default()
    })
    .unwrap();
    let dims = Dims::new(size.0, size.1, size.2);
    let lbl = Array::new(vec![size.0, size.1, size.2], v.labels.clone()).unwrap();
    let (t, _) = affinity_targets(
        &lbl,
        &LONG_RANGE,
        TargetOptions {
            widen_borders: false,
        },
    )
    .unwrap();
    let signed: Vec<u32> = mutex_watershed(&t.data, dims, &LONG_RANGE, Signs::Signed).unwrap();
    let m = evaluate(&signed, &v.labels, dims, None).unwrap();
    let wolf: Vec<u32> =
        mutex_watershed(&t.data, dims, &LONG_RANGE, Signs::Wolf { attractive: 3 }).unwrap();
    let w = evaluate(&wolf, &v.labels, dims, None).unwrap();
    eprintln!(
        "mutex watershed on perfect affinities: signed adapted Rand {:.5} (VOI split {:.4} merge {:.4}); paper's signs {:.5} (split {:.4} merge {:.4})",
        m.adapted_rand_error, m.voi_split, m.voi_merge, w.adapted_rand_error, w.voi_split, w.voi_merge
    );
    assert!(
        m.adapted_rand_error <= 0.005,
        "adapted Rand {}",
        m.adapted_rand_error
    );
}

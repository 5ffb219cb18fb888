//! The piriform fixture (shared/fixtures/piriform/README.md): real affinities and the segmentation
//! Watershed.jl made of them. Our watershed must give the same partition, label values included.

use revseg::segment::watershed::{watershed, Params};
use revseg::segment::{canonical, Dims};
use revseg::volume::hdf5::read_volume;
use std::path::PathBuf;

/// shared/fixtures, found by walking up from the crate (the real crate and scratch copies sit at
/// different depths below the directory that holds shared/).
fn fixtures() -> PathBuf {
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    loop {
        let cand = dir.join("shared/fixtures");
        if cand.is_dir() {
            return cand;
        }
        assert!(
            dir.pop(),
            "no shared/fixtures above {}",
            env!("CARGO_MANIFEST_DIR")
        );
    }
}

/// Reads piriform.aff.h5 (channel order x, y, z) and reverses the channels to ours (z, y, x).
fn piriform_affinities() -> (Vec<f32>, Dims) {
    let path = fixtures().join("piriform/piriform.aff.h5");
    let (shape, raw) = read_volume::<f32>(&path, "main", 4, "affinities").unwrap();
    assert_eq!(shape, vec![3, 5, 200, 200]);
    let dims = Dims::from_affinity_shape(&shape).unwrap();
    let n = dims.voxels();
    let mut aff = Vec::with_capacity(3 * n);
    for c in (0..3).rev() {
        aff.extend_from_slice(&raw[c * n..(c + 1) * n]);
    }
    (aff, dims)
}

#[test]
fn piriform_segmentation_is_reproduced_exactly() {
    let (aff, dims) = piriform_affinities();
    let seg_path = fixtures().join("piriform/piriform.seg.h5");
    let (shape, expected) = read_volume::<u32>(&seg_path, "seg", 3, "segmentation").unwrap();
    assert_eq!(shape, vec![5, 200, 200]);

    let (seg, stats) = watershed::<u32>(&aff, dims, &Params::watershed_jl()).unwrap();

    eprintln!("{stats:?}");
    // Intermediate figures the fixture README lists.
    assert_eq!(stats.basins, 13_107);
    assert_eq!(stats.background_before_merge, 5_127);
    assert_eq!(stats.region_graph_edges, Some(54_519));
    assert_eq!(stats.segments, 31);
    assert_eq!(stats.background, 10_025);
    // Relative thresholds as the README gives them (float32, printed to 6 decimals).
    assert!((stats.low - 0.020829).abs() < 5e-7, "low {}", stats.low);
    assert!((stats.high - 0.999297).abs() < 5e-7, "high {}", stats.high);
    assert!(
        (stats.merge[0].1 as f32 - 0.096884).abs() < 5e-7,
        "merge {:?}",
        stats.merge
    );
    assert_eq!(stats.merge[0].0, 800);

    assert_eq!(canonical(&seg), canonical(&expected), "partition differs");
    let mismatched = seg.iter().zip(&expected).filter(|(a, b)| a != b).count();
    assert_eq!(
        mismatched, 0,
        "same partition, but {mismatched} voxels carry other ids"
    );
}

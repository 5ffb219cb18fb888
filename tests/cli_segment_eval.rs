//! `revseg segment` and `revseg eval` end to end through their `run` functions, on files written
//! with our HDF5 writer.

use revseg::cli::eval::{self, EvalArgs};
use revseg::cli::segment::{self, SegmentArgs};
use revseg::error::Error;
use revseg::segment::{affinities_from_labels, canonical, Dims};
use revseg::volume::hdf5::{read_dataset, write_dataset};
use std::path::PathBuf;

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("revseg-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// 3 x 12 x 12 in four quadrant objects of 3 x 6 x 6 = 108 voxels.
fn quadrants() -> (Vec<u32>, Dims) {
    let d = Dims::new(3, 12, 12);
    let gt = (0..d.voxels())
        .map(|i| 1 + ((i / 12 % 12) / 6 * 2 + (i % 12) / 6) as u32)
        .collect();
    (gt, d)
}

fn seg_args(aff: &str, out: &str) -> SegmentArgs {
    SegmentArgs {
        affinities: aff.into(),
        output: out.into(),
        thresholds: "0.3,0.5".into(),
        score: "mean".into(),
        channel_order: "zyx".into(),
        ws_low: 0.5,
        ws_high: 0.9,
        ws_merge: "".into(),
        ws_dust: 0,
        ws_absolute: true,
        no_gzip: false,
        json: false,
        stage: "all".into(),
        halo: "4,32,32".into(),
        blocks: Default::default(),
    }
}

fn eval_args(seg: &str, gt: &str) -> EvalArgs {
    EvalArgs {
        segmentation: seg.into(),
        groundtruth: gt.into(),
        crop: None,
        json: true,
    }
}

#[test]
fn perfect_affinities_segment_back_to_the_labels() {
    let dir = tmpdir("ok");
    let (gt, d) = quadrants();
    let aff = affinities_from_labels(&gt, d);
    let (a, g, o) = (dir.join("aff.h5"), dir.join("gt.h5"), dir.join("out.h5"));
    write_dataset(&a, "/main", &[3, d.z, d.y, d.x], &aff, true).unwrap();
    write_dataset(&g, "/gt", &[d.z, d.y, d.x], &gt, true).unwrap();
    let spec = |p: &PathBuf, ds: &str| format!("{}:{ds}", p.display());
    segment::run(&seg_args(&spec(&a, "/main"), &spec(&o, "/seg"))).unwrap();
    for ds in ["/seg/fragments", "/seg/threshold_0.3", "/seg/threshold_0.5"] {
        let (shape, seg) = read_dataset::<u32>(&o, ds).unwrap();
        assert_eq!(shape, vec![3, 12, 12]);
        assert_eq!(canonical(&seg), canonical(&gt), "{ds}");
    }
    eval::run(&eval_args(
        &spec(&o, "/seg/threshold_0.5"),
        &spec(&g, "/gt"),
    ))
    .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_inputs_give_errors_and_leave_no_output() {
    let dir = tmpdir("bad");
    let (gt, d) = quadrants();
    let mut aff = affinities_from_labels(&gt, d);
    aff[5] = f32::NAN;
    let (a, g, o) = (dir.join("aff.h5"), dir.join("gt.h5"), dir.join("out.h5"));
    write_dataset(&a, "/main", &[3, d.z, d.y, d.x], &aff, false).unwrap();
    write_dataset(&g, "/gt", &[d.z, d.y, d.x], &gt, false).unwrap();
    write_dataset(&g, "/small", &[1, 2, 2], &[1u32, 1, 2, 2], false).unwrap();
    let spec = |p: &PathBuf, ds: &str| format!("{}:{ds}", p.display());

    let e = segment::run(&seg_args(&spec(&a, "/main"), &spec(&o, "/seg"))).unwrap_err();
    assert!(e.to_string().contains("not in [0, 1]"), "{e}");
    aff[5] = 1.5;
    write_dataset(&a, "/main", &[3, d.z, d.y, d.x], &aff, false).unwrap();
    let e = segment::run(&seg_args(&spec(&a, "/main"), &spec(&o, "/seg"))).unwrap_err();
    assert!(e.to_string().contains("1.5"), "{e}");
    let e = segment::run(&seg_args(&spec(&a, "/mian"), &spec(&o, "/seg"))).unwrap_err();
    assert!(
        e.to_string().contains("/main"),
        "the existing dataset is listed: {e}"
    );
    assert!(!o.exists());

    let e = eval::run(&eval_args(&spec(&g, "/gt"), &spec(&g, "/small"))).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    assert!(
        e.to_string().contains("3x12x12") && e.to_string().contains("1x2x2"),
        "{e}"
    );
    // Only the two input files remain: no temporary output was left behind.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

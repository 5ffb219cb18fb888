//! Sizes that cannot be had are refused as errors (exit 2, one line naming the bytes), never as
//! an allocation abort (exit 134) or a panic; numbers that overflow are refused, not printed.

use revseg::volume::array::Dtype;
use revseg::volume::io::{create_volume_with, open_volume, WriteOptions};
use std::path::PathBuf;
use std::process::{Command, Output};

const HUGE: [usize; 3] = [100_000, 100_000, 100_000];

fn revseg(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_revseg"))
        .args(args)
        .output()
        .unwrap()
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("revseg-limits-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Exit 2 with one error line that contains every one of `words`.
fn refused(out: &Output, words: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    for w in words {
        assert!(err.contains(w), "'{w}' missing from: {err}");
    }
}

/// A zarr v2 array declaring 10^15 voxels: a metadata file and nothing else.
fn huge_zarr(dir: &std::path::Path, name: &str) -> String {
    let p = dir.join(name);
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(
        p.join(".zarray"),
        r#"{"zarr_format": 2, "shape": [100000, 100000, 100000], "chunks": [64, 64, 64], "dtype": "|u1", "compressor": null, "fill_value": 0, "order": "C", "filters": null}"#,
    )
    .unwrap();
    p.display().to_string()
}

/// A chunked HDF5 dataset declaring 10^15 voxels, none of them written (a few KB on disk).
fn huge_h5(dir: &std::path::Path, dtype: Dtype) -> String {
    let spec = format!(
        "{}:/main",
        dir.join(format!("{}.h5", dtype.name())).display()
    );
    let opt = WriteOptions {
        chunks: Some(vec![1, 64, 64]),
        ..WriteOptions::default()
    };
    create_volume_with(&spec, &HUGE, dtype, &opt)
        .unwrap()
        .finish()
        .unwrap();
    spec
}

#[test]
fn a_small_file_declaring_a_huge_shape_is_refused_before_allocating() {
    let d = tmpdir("read");
    for spec in [huge_zarr(&d, "a.zarr"), huge_h5(&d, Dtype::U8)] {
        let meta = std::fs::metadata(spec.trim_end_matches(":/main")).unwrap();
        assert!(
            meta.is_dir() || meta.len() < 64 << 10,
            "{spec} is not small"
        );
        let r = open_volume(&spec).unwrap();
        assert_eq!(r.shape(), HUGE);
        let e = r.read_all::<u8>().unwrap_err().to_string();
        // u8 stored and u8 read: 2 bytes a voxel.
        assert!(e.contains("2000000000000000 bytes"), "{e}");
        // A region that fits still reads (the fill value, 0, of unwritten chunks).
        let a = r.read_region::<u8>(&[5, 6, 7], &[2, 3, 4]).unwrap();
        assert_eq!(a.data, vec![0; 24]);
    }
}

#[test]
fn train_predict_eval_refuse_huge_volumes_with_the_bytes_needed() {
    let d = tmpdir("cli");
    let img = huge_zarr(&d, "img.zarr");
    let lbl = huge_h5(&d, Dtype::U32);
    let out = d.join("out");
    let out = out.to_str().unwrap();
    refused(
        &revseg(&["train", "--input", &img, "--labels", &lbl, "--out", out]),
        &["bytes", "img.zarr"],
    );
    refused(
        &revseg(&["eval", "--segmentation", &lbl, "--groundtruth", &lbl]),
        &["bytes", "uint32.h5"],
    );
}

/// predict streams by sections; one window depth of sections of 10^10 voxels is refused before
/// its buffers are taken (and before any read).
#[test]
fn streamed_prediction_refuses_sections_that_cannot_be_held() {
    use revseg::model::{build, NetConfig, Norm};
    use revseg::predict::{predict_stream, PredictOptions};
    use revseg::scheduler::{inference_plan, Executor};
    use revseg::CpuBackend;
    let c = NetConfig {
        widths: vec![4, 6],
        rev_blocks: 1,
        norm: Norm::None,
        outputs: 3,
    };
    let patch = (3, 8, 8);
    let prog = build(&c, patch).unwrap();
    let b = CpuBackend::<f32>::new();
    let mut ex = Executor::new(&b, &prog, inference_plan(&prog).unwrap(), 2).unwrap();
    let opt = PredictOptions { patch, tta: false };
    let e = predict_stream(
        &b,
        &mut ex,
        (HUGE[0], HUGE[1], HUGE[2]),
        3,
        &opt,
        |_, _| panic!("nothing may be read"),
        |_, _| panic!("nothing may be written"),
        |_, _| {},
    )
    .unwrap_err()
    .to_string();
    // 3 sections x 10^10 voxels x (3 channels + 4) x 4 bytes.
    assert!(e.contains("840000000000 bytes"), "{e}");
}

#[test]
fn plan_refuses_absurd_depths_and_overflowing_patches() {
    refused(
        &revseg(&["plan", "--rev-blocks", "1000000000"]),
        &["rev_blocks 1000000000", "limit of 1000"],
    );
    refused(
        &revseg(&["plan", "--patch", "4294967296,4294967296,4294967296"]),
        &["bytes", "smaller patch"],
    );
    // 2^32 x 16 x 16 x 80 channels x 4 bytes = 2^32 x 81920 bytes: over 1 TiB, refused too.
    refused(
        &revseg(&["plan", "--patch", "4294967296,16,16"]),
        &["351843720888320 bytes"],
    );
    let ok = revseg(&["plan", "--rev-blocks", "1000", "--patch", "2,16,16"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

#[test]
fn bench_ops_refuses_unpoolable_patches_and_bad_durations() {
    refused(
        &revseg(&["bench", "ops", "--patch", "1,8,8"]),
        &["multiples of 16"],
    );
    for bad in ["-1", "NaN", "0", "inf"] {
        refused(
            &revseg(&[
                "bench",
                "ops",
                "--patch",
                "1,16,16",
                &format!("--min-secs={bad}"),
            ]),
            &["--min-secs", "finite"],
        );
    }
}

#[test]
fn sampling_window_error_suggests_only_what_applies() {
    let shape = (6, 8, 8);
    let n = shape.0 * shape.1 * shape.2;
    let image: Vec<f32> = (0..n).map(|i| (i % 7) as f32 / 7.0).collect();
    let labels: Vec<u32> = (0..n as u32).map(|i| 1 + i % 3).collect();
    for augment in [false, true] {
        let mut c = revseg::train::TrainConfig::default();
        c.patch = (2, 16, 16);
        c.augment = augment;
        let e = revseg::train::Dataset::new(image.clone(), labels.clone(), shape, &c, "v")
            .err()
            .expect("a 16x16 patch cannot fit an 8x8 volume")
            .to_string();
        assert_eq!(e.contains("--no-augment"), augment, "{e}");
        assert!(e.contains("18x18") == !augment, "{e}");
    }
}

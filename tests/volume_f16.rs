//! float16 volumes: zarr-python's half arrays read as the values numpy rounded to, revseg's
//! float16 writes round like `half::f16::from_f32`, and formats without float16 refuse it by name.

use half::f16;
use revseg::volume::array::{Array, Dtype};
use revseg::volume::io::{create_volume_with, open_volume, WriteOptions};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("revseg-f16-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The float32 values `make_zarr_fixtures.py` rounded to half: special cases, then a ramp.
fn fixture_f32() -> Vec<f32> {
    let special: [f32; 18] = [
        0.1,
        1.0 / 3.0,
        65504.0,
        65519.99,
        65520.0,
        -70000.0,
        1e5,
        1e-7,
        6e-8,
        2.98e-8,
        -1e-5,
        3.14159,
        2049.0,
        2051.0,
        1.0009765625,
        -0.0,
        6.1e-5,
        5.9e-5,
    ];
    let mut v: Vec<f32> = (0..210).map(|i| i as f32 * 0.37f32 - 20.0).collect();
    v[..special.len()].copy_from_slice(&special);
    v
}

fn halved(v: &[f32]) -> Vec<u32> {
    v.iter()
        .map(|&x| f16::from_f32(x).to_f32().to_bits())
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn zarr_python_float16_reads_as_numpy_rounded_it() {
    let want = fixture_f32();
    let r = open_volume(&fixture("v2_blosc_f2.zarr")).unwrap();
    assert_eq!(r.dtype(), Dtype::F16);
    assert_eq!(r.shape(), &[5, 7, 6]);
    let got = r.read_all::<f32>().unwrap().data;
    assert_eq!(bits(&got), halved(&want));
    // Hand-worked roundings: nearest half, ties to even, overflow to infinity, subnormals.
    let hand: [(usize, f32); 14] = [
        (0, 0.099975586),       // 0.1 -> 1638 / 2^14
        (2, 65504.0),           // largest half
        (3, 65504.0),           // below the 65520 midpoint
        (4, f32::INFINITY),     // the midpoint rounds to even: infinity
        (5, f32::NEG_INFINITY), // beyond the range
        (6, f32::INFINITY),
        (7, 1.1920929e-7),  // 2 * 2^-24 (subnormal)
        (8, 5.9604645e-8),  // 2^-24, the smallest subnormal
        (9, 0.0),           // under half of 2^-24
        (12, 2048.0),       // tie at spacing 2: to even
        (13, 2052.0),       // tie: to even
        (14, 1.0009765625), // exactly representable
        (16, 6.0975552e-5), // 1023 * 2^-24, the largest subnormal (just under 2^-14)
        (17, 5.900860e-5),  // subnormal 990 * 2^-24
    ];
    for (i, v) in hand {
        assert_eq!(got[i], v, "value {i}: {} read as {}", want[i], got[i]);
    }
    assert!(got[15] == 0.0 && got[15].is_sign_negative());
    // The ramp: 0.37 steps that half cannot hold, so some do round.
    assert!(want.iter().zip(&got).skip(18).any(|(a, b)| a != b));

    // v3 with gzip; sections 4.. were never written and read as the fill value, rounded to half.
    let r = open_volume(&fixture("v3_gzip_f2_fill.zarr")).unwrap();
    assert_eq!(r.dtype(), Dtype::F16);
    let got = r.read_all::<f32>().unwrap().data;
    let sec = 7 * 6;
    assert_eq!(bits(&got[..4 * sec]), halved(&want[..4 * sec]));
    let fill = f16::from_f32(-0.3).to_f32();
    assert_eq!(fill, -0.300048828125);
    assert!(got[4 * sec..].iter().all(|&v| v == fill));
    // Exact conversion still applies: half values are not integers.
    assert!(r.read_all::<u8>().is_err());
}

#[test]
fn float16_write_rounds_and_reads_back_in_zarr_v2_v3_and_raw() {
    let d = tmpdir("roundtrip");
    let shape = [2usize, 9, 11];
    // Values across the half range, most not representable, some beyond it.
    let v: Vec<f32> = (0..198)
        .map(|i| ((i as f32) * 0.731 - 40.0) * if i % 17 == 0 { 3000.0 } else { 1.0 })
        .collect();
    let data = Array::new(shape.to_vec(), v.clone()).unwrap();
    for (spec, v3) in [
        (d.join("a.zarr").display().to_string(), false),
        (d.join("b.zarr").display().to_string(), true),
        (d.join("c.raw").display().to_string(), false),
    ] {
        let opt = WriteOptions {
            zarr_v3: v3,
            chunks: Some(vec![1, 4, 8]),
            ..WriteOptions::default()
        };
        let mut w = create_volume_with(&spec, &shape, Dtype::F16, &opt).unwrap();
        // Two halves, so partly covered chunks are read, updated and rewritten in half.
        w.write_region(&[0, 0, 0], &data.slice(&[0, 0, 0], &[2, 5, 11]).unwrap())
            .unwrap();
        w.write_region(&[0, 5, 0], &data.slice(&[0, 5, 0], &[2, 4, 11]).unwrap())
            .unwrap();
        w.finish().unwrap();
        let r = open_volume(&spec).unwrap();
        assert_eq!(r.dtype(), Dtype::F16, "{spec}");
        let got = r.read_all::<f32>().unwrap().data;
        assert_eq!(bits(&got), halved(&v), "{spec}");
        assert!(got.iter().any(|x| x.is_infinite()), "{spec}");
        assert!(v.iter().zip(&got).any(|(a, b)| a != b), "{spec}");
    }
    // Two bytes a value on disk: the raw file, and an uncompressed zarr v2 chunk.
    assert_eq!(std::fs::metadata(d.join("c.raw")).unwrap().len(), 198 * 2);
    assert_eq!(
        std::fs::metadata(d.join("a.zarr/0.0.0")).unwrap().len(),
        4 * 8 * 2
    );
    let meta = std::fs::read_to_string(d.join("a.zarr/.zarray")).unwrap();
    assert!(meta.contains("\"<f2\""), "{meta}");
    let meta = std::fs::read_to_string(d.join("b.zarr/zarr.json")).unwrap();
    assert!(meta.contains("\"float16\""), "{meta}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn formats_without_float16_refuse_it_by_name() {
    let d = tmpdir("refuse");
    for (spec, name) in [
        (format!("{}:/aff", d.join("a.h5").display()), "HDF5"),
        (d.join("a.tif").display().to_string(), "TIFF"),
    ] {
        let e = create_volume_with(&spec, &[2, 3, 4], Dtype::F16, &WriteOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(name) && e.contains("float16") && e.contains("float32"),
            "{e}"
        );
        assert!(!Path::new(&spec.split(':').next().unwrap()).exists());
    }
    let _ = std::fs::remove_dir_all(&d);
}

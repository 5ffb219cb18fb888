//! Helpers for tests that run the binary.

use std::path::PathBuf;
use std::process::Command;

/// Exit code, stdout and stderr of `revseg ARGS`.
pub fn revseg(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_revseg"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A small synthetic volume (16 x 80 x 80) and a one-step checkpoint in a fresh temporary
/// directory: (directory, image spec, checkpoint path).
#[allow(dead_code)]
pub fn data_and_checkpoint(tag: &str) -> (PathBuf, String, String) {
    let d = std::env::temp_dir().join(format!("revseg-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    let s = |n: &str| d.join(n).display().to_string();
    let (c, o, e) = revseg(&[
        "synth",
        "--out",
        &s("data"),
        "--size",
        "16,80,80",
        "--seed",
        "3",
    ]);
    assert_eq!(c, Some(0), "{o}{e}");
    let (c, o, e) = revseg(
        &[
            "train",
            "--input",
            &s("data/image.zarr"),
            "--labels",
            &s("data/labels.zarr"),
            "--out",
            &s("run"),
            "--steps",
            "1",
        ]
        .into_iter()
        .chain(TINY_NET)
        .collect::<Vec<_>>(),
    );
    assert_eq!(c, Some(0), "{o}{e}");
    (d.clone(), s("data/image.zarr"), s("run/model.safetensors"))
}

/// The network and device of every small CLI training run in these tests.
#[allow(dead_code)]
pub const TINY_NET: [&str; 8] = [
    "--widths",
    "8,12",
    "--rev-blocks",
    "1",
    "--patch",
    "4,32,32",
    "--device",
    "cpu",
];

/// `revseg predict` of a checkpoint over an image on the CPU, before --output and the rest.
#[allow(dead_code)]
pub fn predict_cpu<'a>(checkpoint: &'a str, image: &'a str) -> [&'a str; 7] {
    [
        "predict",
        "--checkpoint",
        checkpoint,
        "--input",
        image,
        "--device",
        "cpu",
    ]
}

/// Shape and f32 bit patterns of a volume, for bit-exact comparisons.
#[allow(dead_code)]
pub fn read_bits(spec: &str) -> (Vec<usize>, Vec<u32>) {
    let r = revseg::volume::io::open_volume(spec).unwrap();
    let a = r.read_all::<f32>().unwrap();
    (
        a.shape.clone(),
        a.data.iter().map(|v| v.to_bits()).collect(),
    )
}

#[allow(dead_code)]
/// Decodes an 8-bit RGB PNG written by `volume::png` (stored or deflated IDAT, filter 0 rows).
pub fn decode_png(bytes: &[u8]) -> (usize, usize, Vec<u8>) {
    let mut pos = 8;
    let (mut w, mut h, mut idat) = (0, 0, Vec::new());
    while pos < bytes.len() {
        let len = u32::from_be_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        let kind = &bytes[pos + 4..pos + 8];
        let data = &bytes[pos + 8..pos + 8 + len];
        if kind == b"IHDR" {
            w = u32::from_be_bytes(data[0..4].try_into().unwrap()) as usize;
            h = u32::from_be_bytes(data[4..8].try_into().unwrap()) as usize;
        } else if kind == b"IDAT" {
            idat.extend_from_slice(data);
        }
        pos += 12 + len;
    }
    let mut raw = Vec::new();
    use std::io::Read;
    flate2::read::ZlibDecoder::new(&idat[..])
        .read_to_end(&mut raw)
        .unwrap();
    let mut px = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        let row = &raw[y * (3 * w + 1)..(y + 1) * (3 * w + 1)];
        assert_eq!(row[0], 0, "filter type");
        px.extend_from_slice(&row[1..]);
    }
    (w, h, px)
}

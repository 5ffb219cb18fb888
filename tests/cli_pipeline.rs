//! The user's pipeline through the binary: synth -> train -> train --resume -> predict -> segment
//! -> eval, on a small volume, with the files each command writes.

use std::path::Path;
use std::process::Command;

fn revseg(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_revseg"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "revseg {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn synth_train_resume_predict_segment_eval() {
    let dir = std::env::temp_dir().join(format!("revseg-pipeline-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = |name: &str| dir.join(name).display().to_string();
    revseg(&[
        "synth",
        "--out",
        &d("data"),
        "--size",
        "16,80,80",
        "--seed",
        "3",
    ]);
    let net = [
        "--widths",
        "8,12",
        "--rev-blocks",
        "1",
        "--patch",
        "4,32,32",
        "--device",
        "cpu",
        "--set",
        "bn_momentum=0.1",
    ];
    let train = |steps: &str, resume: bool| {
        let (img, lbl, run) = (d("data/image.zarr"), d("data/labels.zarr"), d("run"));
        let mut a = vec![
            "train", "--input", &img, "--labels", &lbl, "--out", &run, "--steps", steps,
        ];
        a.extend(["--val-every", "2", "--json"]);
        a.extend(net);
        if resume {
            a.push("--resume");
        }
        revseg(&a)
    };
    let first = train("2", false);
    assert!(first.contains("\"steps\":2"), "{first}");
    let second = train("4", true);
    assert!(second.contains("\"steps\":4"), "{second}");
    assert!(Path::new(&d("run/loss.png")).exists());
    let csv = std::fs::read_to_string(d("run/metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 5, "{csv}");
    let aff = format!("{}:/affinities", d("aff.h5"));
    let p = revseg(&[
        "predict",
        "--checkpoint",
        &d("run/model.safetensors"),
        "--input",
        &d("data/image.zarr"),
        "--output",
        &aff,
        "--device",
        "cpu",
        "--json",
    ]);
    assert!(p.contains("[3,16,80,80]"), "{p}");
    // The voxel size recorded by synth travels through training into the affinities' file.
    let vin = revseg::volume::io::open_volume(&d("data/image.zarr"))
        .unwrap()
        .voxel_size()
        .unwrap();
    let vout = revseg::volume::io::open_volume(&aff)
        .unwrap()
        .voxel_size()
        .unwrap();
    assert_eq!((vin.z, vin.y, vin.x), (vout.z, vout.y, vout.x));
    // uint8 output: the same affinities times 255, rounded.
    let aff8 = format!("{}:/affinities", d("aff8.h5"));
    revseg(&[
        "predict",
        "--checkpoint",
        &d("run/model.safetensors"),
        "--input",
        &d("data/image.zarr"),
        "--output",
        &aff8,
        "--dtype",
        "uint8",
    ]);
    let f = revseg::volume::io::open_volume(&aff)
        .unwrap()
        .read_all::<f32>()
        .unwrap()
        .data;
    let q = revseg::volume::io::open_volume(&aff8)
        .unwrap()
        .read_all::<u8>()
        .unwrap()
        .data;
    assert!(f
        .iter()
        .zip(&q)
        .all(|(a, b)| (a * 255.0).round() as u8 == *b));
    assert!(q.iter().any(|v| *v > 128) && q.iter().any(|v| *v < 128));
    // float16 output: the float32 affinities rounded to the nearest half, two bytes a value.
    let aff16 = d("aff16.zarr");
    revseg(&[
        "predict",
        "--checkpoint",
        &d("run/model.safetensors"),
        "--input",
        &d("data/image.zarr"),
        "--output",
        &aff16,
        "--dtype",
        "float16",
    ]);
    let r16 = revseg::volume::io::open_volume(&aff16).unwrap();
    assert_eq!(r16.dtype(), revseg::volume::array::Dtype::F16);
    let h = r16.read_all::<f32>().unwrap().data;
    assert_eq!(h.len(), f.len());
    assert!(f
        .iter()
        .zip(&h)
        .all(|(a, b)| half::f16::from_f32(*a).to_f32().to_bits() == b.to_bits()));
    assert!(f.iter().zip(&h).any(|(a, b)| a != b));
    let seg = format!("{}:/seg", d("seg.h5"));
    revseg(&[
        "segment",
        "--affinities",
        &aff,
        "--output",
        &seg,
        "--thresholds",
        "0.3,0.5",
    ]);
    let e = revseg(&[
        "eval",
        "--segmentation",
        &format!("{}:/seg/threshold_0.3", d("seg.h5")),
        "--groundtruth",
        &d("data/labels.zarr"),
        "--json",
    ]);
    assert!(e.contains("adapted_rand_error"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

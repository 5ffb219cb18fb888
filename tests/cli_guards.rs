//! Requests that would silently give wrong results are refused: an output that is one of the
//! inputs, a float image outside [0, 1].

use revseg::volume::array::{Array, Dtype};
use revseg::volume::io::{create_volume, open_volume};
use std::path::Path;

mod common;
use common::{data_and_checkpoint, revseg, TINY_NET};

/// The synthetic image as float32 in [0, 1], written at `spec`.
fn float_image(image: &str, spec: &str, edit: impl FnOnce(&mut Array<f32>)) {
    let mut a = open_volume(image).unwrap().read_all::<f32>().unwrap();
    a.data.iter_mut().for_each(|v| *v /= 255.0);
    edit(&mut a);
    let mut w = create_volume(spec, &a.shape, Dtype::F32, None).unwrap();
    w.write_region(&[0, 0, 0], &a).unwrap();
    w.finish().unwrap();
}

fn assert_refused(r: &(Option<i32>, String, String), words: &[&str]) {
    let (code, out, err) = r;
    assert_eq!(*code, Some(2), "{out}\n{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    for w in words {
        assert!(errors[0].contains(w), "{w:?} not in: {}", errors[0]);
    }
}

#[test]
fn an_output_that_is_an_input_is_refused_and_the_input_kept() {
    let (d, image, ck) = data_and_checkpoint("guards-same");
    let s = |n: &str| d.join(n).display().to_string();
    let predict = |input: &str, output: &str, ck: &str| {
        revseg(&[
            "predict",
            "--checkpoint",
            ck,
            "--input",
            input,
            "--output",
            output,
            "--device",
            "cpu",
        ])
    };
    let raw = s("img.raw");
    float_image(&image, &raw, |_| {});
    let before = std::fs::read(&raw).unwrap();
    // The same file, also spelled another way.
    let other = format!("{}/../img.raw", s("data"));
    for out in [raw.clone(), other] {
        let r = predict(&raw, &out, &ck);
        assert_refused(&r, &["--output", "--input", "img.raw"]);
    }
    assert_eq!(std::fs::read(&raw).unwrap(), before);
    // Another dataset of the input's HDF5 file: the file would be replaced while read.
    float_image(&image, &format!("{}:/raw", s("in.h5")), |_| {});
    let r = predict(
        &format!("{}:/raw", s("in.h5")),
        &format!("{}:/aff", s("in.h5")),
        &ck,
    );
    assert_refused(&r, &["--output", "in.h5"]);
    // Inside the input zarr array.
    let r = predict(&image, &format!("{image}/aff"), &ck);
    assert_refused(&r, &["--output", "image.zarr"]);
    assert!(!Path::new(&format!("{image}/aff")).exists());
    // The checkpoint is an input too.
    std::fs::copy(&ck, s("ck.h5")).unwrap();
    let r = predict(&raw, &format!("{}:/aff", s("ck.h5")), &s("ck.h5"));
    assert_refused(&r, &["--output", "--checkpoint"]);
    assert_eq!(
        std::fs::read(s("ck.h5")).unwrap(),
        std::fs::read(&ck).unwrap()
    );

    // segment: affinities and output in one HDF5 file.
    let aff = format!("{}:/aff", s("aff.h5"));
    let (c, o, e) = predict(&raw, &aff, &ck);
    assert_eq!(c, Some(0), "{o}{e}");
    let r = revseg(&[
        "segment",
        "--affinities",
        &aff,
        "--output",
        &format!("{}:/seg", s("aff.h5")),
    ]);
    assert_refused(&r, &["--output", "--affinities", "aff.h5"]);
    assert!(open_volume(&format!("{}:/seg/fragments", s("aff.h5"))).is_err());

    // train: an output folder inside the image array.
    let labels = s("data/labels.zarr");
    let r = revseg(&[
        "train", "--input", &image, "--labels", &labels, "--out", &image, "--steps", "1",
        "--device", "cpu",
    ]);
    assert_refused(&r, &["--out", "--input", "image.zarr"]);
    assert!(!Path::new(&image).join("model.safetensors").exists());
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn float_images_outside_0_1_are_refused_by_predict_and_train_alike() {
    let (d, image, ck) = data_and_checkpoint("guards-range");
    let s = |n: &str| d.join(n).display().to_string();
    let bad = s("bad.raw");
    float_image(&image, &bad, |a| {
        let i = (3 * 80 + 4) * 80 + 5;
        a.data[i] = 1.5;
    });
    let out = format!("{}:/aff", s("out.h5"));
    let predict = |input: &str| {
        revseg(&[
            "predict",
            "--checkpoint",
            &ck,
            "--input",
            input,
            "--output",
            &out,
            "--device",
            "cpu",
        ])
    };
    let words = ["bad.raw", "1.5", "z 3, y 4, x 5", "not in [0, 1]"];
    assert_refused(&predict(&bad), &words);
    assert!(!Path::new(&s("out.h5")).exists());
    let r = revseg(
        &[
            "train",
            "--input",
            &bad,
            "--labels",
            &s("data/labels.zarr"),
            "--out",
            &s("run2"),
            "--steps",
            "1",
        ]
        .into_iter()
        .chain(TINY_NET)
        .collect::<Vec<_>>(),
    );
    assert_refused(&r, &words);
    // The same volume in range predicts.
    let good = s("good.raw");
    float_image(&image, &good, |_| {});
    let (c, o, e) = predict(&good);
    assert_eq!(c, Some(0), "{o}{e}");
    let aff = open_volume(&out).unwrap().read_all::<f32>().unwrap();
    assert_eq!(aff.shape, vec![3, 16, 80, 80]);
    assert!(aff.data.iter().all(|v| (0.0..=1.0).contains(v)));
    assert!(aff.data.iter().any(|v| (v - aff.data[0]).abs() > 1e-4));
    std::fs::remove_dir_all(&d).unwrap();
}

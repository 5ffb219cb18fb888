//! `--precision bf16` on the CPU: training and prediction run on the bf16 backend, the
//! checkpoint stays f32 (it loads in an f32 prediction), and bf16 predictions stay near f32's.

mod common;
use common::{data_and_checkpoint, predict_cpu, read_bits, revseg, TINY_NET};

fn bf16_runs_here() -> bool {
    revseg::precision::Precision::for_device(
        Some(revseg::precision::Precision::Bf16),
        revseg::backend::device::Device::Cpu,
    )
    .is_ok()
}

#[test]
fn bf16_training_and_prediction_run_on_the_cpu_and_agree_with_f32() {
    let (d, image, ck) = data_and_checkpoint("cli-bf16");
    let s = |n: &str| d.join(n).display().to_string();
    let mut train: Vec<&str> = vec![
        "train",
        "--input",
        &image,
        "--labels",
        "",
        "--out",
        "",
        "--steps",
        "2",
        "--precision",
        "bf16",
    ];
    let (labels, run) = (s("data/labels.zarr"), s("run-bf16"));
    train[4] = &labels;
    train[6] = &run;
    train.extend(TINY_NET);
    let (c, o, e) = revseg(&train);
    if !bf16_runs_here() {
        assert_ne!(c, Some(0));
        assert!(e.contains("AVX512-BF16"), "{e}");
        return;
    }
    assert_eq!(c, Some(0), "{o}{e}");
    assert!(format!("{o}{e}").contains("in bf16"), "{o}{e}");
    // The bf16 run's checkpoint predicts in f32, and an f32 checkpoint in bf16.
    let bf16_ck = s("run-bf16/model.safetensors");
    let (f32_out, bf16_out, cross) = (s("p32.zarr"), s("p16.zarr"), s("pcross.zarr"));
    for (ckpt, out, prec) in [
        (&ck, &f32_out, "f32"),
        (&ck, &bf16_out, "bf16"),
        (&bf16_ck, &cross, "f32"),
    ] {
        let mut a: Vec<&str> = predict_cpu(ckpt, &image).to_vec();
        a.extend(["--output", out, "--precision", prec]);
        let (c, o, e) = revseg(&a);
        assert_eq!(c, Some(0), "{o}{e}");
    }
    let (sa, a) = read_bits(&f32_out);
    let (sb, b) = read_bits(&bf16_out);
    assert_eq!(sa, sb);
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (f32::from_bits(*x) - f32::from_bits(*y)).abs())
        .fold(0f32, f32::max);
    // Affinities are sigmoids (slope <= 1/4) of logits whose bf16 error is a few u = 2^-8
    // relative (tests/bf16_step.rs); logits of this one-step network are O(1).
    assert!(diff > 0.0 && diff < 0.05, "max |bf16 - f32| = {diff}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn demo_set_precision_bf16_trains_on_the_bf16_backend() {
    if !bf16_runs_here() {
        eprintln!("skipped: this CPU has no bf16 convolution path");
        return;
    }
    let d = std::env::temp_dir().join(format!("revseg_demo_bf16_{}", std::process::id()));
    let run = |name: &str, extra: &[&str]| {
        let out = d.join(name).display().to_string();
        let mut args = vec!["demo", "--steps", "2", "--device", "cpu", "--out", &out];
        args.extend_from_slice(extra);
        let (code, _, err) = revseg(&args);
        assert_eq!(code, Some(0), "{err}");
        let ck = revseg::checkpoint::load(d.join(name).join("model.safetensors")).unwrap();
        (err, ck.tensors)
    };
    let (err32, m32) = run("f32", &[]);
    let (err16, m16) = run("bf16", &["--set", "precision=bf16"]);
    assert!(err32.contains("in f32"), "{err32}");
    assert!(err16.contains("in bf16"), "{err16}");
    // Same seed and steps: only bf16 rounding can make the trained tensors differ (the
    // checkpoint's metadata names the precision either way, so tensors are compared, not bytes).
    assert_eq!(m32.len(), m16.len());
    let differ = m32.iter().zip(&m16).filter(|(a, b)| a.2 != b.2).count();
    assert!(differ > 0, "bf16 demo trained the same bits as f32");
    let _ = std::fs::remove_dir_all(&d);
}

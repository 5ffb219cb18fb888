//! The `revseg` binary as a user runs it.

use std::process::Command;

fn revseg(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_revseg"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn gradcheck_json_reports_every_op_passing() {
    let out = revseg(&["gradcheck", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8(out.stdout).unwrap();
    assert!(s.contains("\"passed\":true"));
    assert!(!s.contains("\"passed\":false"));
    for op in revseg::gradcheck::OPS {
        assert!(
            s.contains(&format!("\"op\":\"{op}\"")),
            "{op} missing from {s}"
        );
    }
}

#[test]
fn gradcheck_table_for_one_op() {
    let out = revseg(&["gradcheck", "--op", "maxpool"]);
    assert!(out.status.success());
    let s = String::from_utf8(out.stdout).unwrap();
    assert!(s.contains("maxpool") && s.contains("pass") && !s.contains("conv3d"));
}

#[test]
fn unknown_op_and_missing_device_are_clear_errors() {
    let out = revseg(&["gradcheck", "--op", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown op 'nope'"));
    let out = revseg(&["gradcheck", "--device", "tpu"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown device"));
}

/// `bench ratio` on a network small enough for a test.
const RATIO_NET: [&str; 8] = [
    "bench",
    "ratio",
    "--widths",
    "4,6",
    "--patch",
    "2,8,32",
    "--rev-blocks",
    "2",
];

#[test]
fn bench_ratio_reports_alternated_pairs_and_their_summary() {
    let out = revseg(&[RATIO_NET.as_slice(), &["--pairs", "3", "--json"]].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let num = |k: &str| j[k].as_f64().unwrap();
    let pairs: Vec<(f64, f64)> = serde_json::from_value(j["pairs_seconds"].clone()).unwrap();
    assert_eq!(pairs.len(), 3);
    assert!(pairs.iter().all(|&(r, s)| r > 0.0 && s > 0.0));
    // The summaries, recomputed from the pairs (medians of three: the middle values).
    let mid = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[1]
    };
    let of_medians =
        mid(pairs.iter().map(|p| p.0).collect()) / mid(pairs.iter().map(|p| p.1).collect());
    let min = |f: fn(&(f64, f64)) -> f64| pairs.iter().map(f).fold(f64::MAX, f64::min);
    assert!((num("ratio_of_medians") - of_medians).abs() < 1e-12);
    assert!((num("ratio_of_minima") - min(|p| p.0) / min(|p| p.1)).abs() < 1e-12);
    // Reversible blocks: the Recompute plan runs F and G again and keeps far less.
    assert!(num("gflop_recompute") > num("gflop_store_all"));
    assert!(num("arena_bytes_recompute") < num("arena_bytes_store_all"));
}

/// `bench ratio --against-f32`: the bf16 step beside the f32 step of the same plan, each
/// executor's measured high-water mark equal to its plan; other precisions are refused by name.
#[test]
fn bench_ratio_against_f32_times_bf16_beside_f32() {
    let args = |p: &str| {
        let extra = ["--against-f32", "--precision", p, "--pairs", "2", "--json"];
        revseg(&[RATIO_NET.as_slice(), &extra].concat())
    };
    let out = args("f32");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--precision bf16"));
    let bf16_here = revseg::precision::Precision::for_device(
        Some(revseg::precision::Precision::Bf16),
        revseg::backend::device::Device::Cpu,
    )
    .is_ok();
    if !bf16_here {
        return;
    }
    let out = args("bf16");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["compared"], serde_json::json!(["bf16", "f32"]));
    // Pairs hold (bf16, f32); the byte figures follow the same order.
    let (bf, f) = (
        j["arena_bytes_bf16"].as_u64().unwrap(),
        j["arena_bytes_f32"].as_u64().unwrap(),
    );
    assert!(bf < f, "{bf} vs {f}");
    assert_eq!(j["measured_bytes"], serde_json::json!([bf, f]));
}

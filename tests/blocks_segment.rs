//! Blockwise segmentation through the binary: its result agrees with the one-process
//! segmentation of the same affinities (adapted Rand error) and with the ground truth as well as
//! that one does; 2 workers give the identical volumes to 1; a killed worker loses only its
//! unfinished blocks and the rerun gives the identical result.

mod common;
use common::revseg;
use revseg::metrics::evaluate;
use revseg::segment::agglomerate::{agglomerate, Score};
use revseg::segment::watershed::{watershed, Params};
use revseg::segment::Dims;
use revseg::volume::zarr::ZarrArray;
use std::path::{Path, PathBuf};

const THRESHOLDS: [f64; 3] = [0.3, 0.5, 0.7];

fn fresh_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("revseg-bseg-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The segment bench's synthetic volume written as `dir/affinities.zarr`, `dir/labels.zarr`.
fn volume(dir: &Path, d: Dims, seed: u64) -> (Vec<u32>, Vec<f32>) {
    revseg::bench::segment::write_volumes(d, seed, dir).unwrap();
    let (labels, aff, _) = revseg::bench::segment::volume(d, seed);
    (labels, aff)
}

/// The one-process segmentation, as `revseg segment --ws-absolute` computes it.
fn one_process(aff: &[f32], d: Dims) -> Vec<Vec<u32>> {
    let params = Params {
        relative: false,
        ..Params::watershed_jl()
    };
    let (frag, _) = watershed::<u32>(aff, d, &params).unwrap();
    let agg = agglomerate(aff, &frag, d, &THRESHOLDS, Score::OneMinusMean).unwrap();
    (0..THRESHOLDS.len()).map(|t| agg.apply(t, &frag)).collect()
}

fn read_u64(path: &Path) -> Vec<u64> {
    ZarrArray::open(path)
        .unwrap()
        .read_all::<u64>()
        .unwrap()
        .data
}

/// Every array a blockwise run wrote: fragments, then one segmentation per threshold.
fn outputs(out: &Path) -> Vec<Vec<u64>> {
    let mut v = vec![read_u64(&out.join("fragments"))];
    for t in THRESHOLDS {
        v.push(read_u64(&out.join(format!("threshold_{t}"))));
    }
    v
}

fn segment_args(dir: &Path, out: &Path, block: &str, chunks: &str) -> Vec<String> {
    [
        "segment",
        "--affinities",
        &dir.join("affinities.zarr").display().to_string(),
        "--output",
        &out.display().to_string(),
        "--ws-absolute",
        "--thresholds",
        "0.3,0.5,0.7",
        "--block",
        block,
        "--block-chunks",
        chunks,
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn run_ok(args: &[String], extra: &[&str]) -> Vec<serde_json::Value> {
    let all: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .chain(extra.iter().copied())
        .collect();
    let (c, o, e) = revseg(&all);
    assert_eq!(c, Some(0), "{all:?}\n{o}{e}");
    o.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn sum_field(lines: &[serde_json::Value], stage: &str, field: &str) -> u64 {
    lines
        .iter()
        .filter(|j| j["stage"] == stage)
        .filter_map(|j| j[field].as_u64())
        .sum()
}

fn done_count(marks: &Path) -> usize {
    std::fs::read_dir(marks)
        .map(|d| {
            d.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".done"))
            })
            .count()
        })
        .unwrap_or(0)
}

/// Adapted Rand error of `seg` (u64 ids) against `truth`.
fn are(seg: &[u64], truth: &[u32], d: Dims) -> f64 {
    evaluate(seg, truth, d, None).unwrap().adapted_rand_error
}

fn agreement(size: [usize; 3], block: &str, chunks: &str, seed: u64) {
    let d = Dims::new(size[0], size[1], size[2]);
    let dir = fresh_dir(&format!("agree-{}", size[1]));
    let (labels, aff) = volume(&dir, d, seed);
    let single = one_process(&aff, d);
    drop(aff);
    let out2 = dir.join("two.zarr");
    let lines = run_ok(
        &segment_args(&dir, &out2, block, chunks),
        &["--workers", "2"],
    );
    let blocks = lines.iter().find_map(|j| j["blocks"].as_u64()).unwrap();
    assert!(blocks >= 8, "{blocks} blocks");
    let two = outputs(&out2);
    let distinct = |v: &[u64]| v.iter().collect::<std::collections::HashSet<_>>().len();
    assert!(
        distinct(&two[0]) > distinct(&two[1]),
        "agglomeration merged nothing"
    );
    for (t, th) in THRESHOLDS.iter().enumerate() {
        let s = &single[t];
        assert!(
            distinct(&two[t + 1]) > 8,
            "threshold {th}: a trivial segmentation"
        );
        let vs_single = are(&two[t + 1], s, d);
        let vs_truth = are(&two[t + 1], &labels, d);
        let single_truth = evaluate(s, &labels, d, None).unwrap().adapted_rand_error;
        eprintln!(
            "{size:?} threshold {th}: blockwise vs one process {vs_single:.5}, vs truth {vs_truth:.5} (one process {single_truth:.5})"
        );
        assert!(vs_single <= 0.01, "threshold {th}: {vs_single}");
        assert!(
            (vs_truth - single_truth).abs() <= 0.01,
            "threshold {th}: {vs_truth} against {single_truth}"
        );
    }
    // One process, stage by stage, gives the identical volumes.
    let out1 = dir.join("one.zarr");
    let args = segment_args(&dir, &out1, block, chunks);
    for stage in ["fragments", "graph", "agglomerate", "relabel"] {
        run_ok(&args, &["--stage", stage]);
    }
    assert!(outputs(&out1) == two, "1 worker and 2 workers differ");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The size, 64 x 512 x 512, in 8 blocks of 32 x 256 x 256 (2 x 2 x 2 chunks each);
/// about 20 s in release.
#[test]
fn blockwise_agrees_with_one_process_and_two_workers_with_one() {
    agreement([64, 512, 512], "32,256,256", "16,128,128", 7);
}

/// Starts worker 0 of 2 on `stage` and kills it (SIGKILL) once it has marked a block done in
/// `marks`; returns how many were done then.
fn kill_after_first_block(args: &[String], stage: &str, marks: &Path, owned: usize) -> usize {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_revseg"))
        .args(args)
        .args(["--stage", stage, "--worker", "0/2"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while done_count(marks) == 0 {
        assert!(t0.elapsed().as_secs() < 300, "no block finished");
        assert!(child.try_wait().unwrap().is_none(), "worker ended early");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let n = done_count(marks);
    assert!(
        (1..owned).contains(&n),
        "worker 0 owns {owned} blocks; {n} were done when it was killed"
    );
    n
}

#[test]
fn killed_workers_lose_only_unfinished_blocks_and_reruns_skip_done_ones() {
    let d = Dims::new(16, 128, 128);
    let dir = fresh_dir("kill");
    volume(&dir, d, 9);
    // 4 x 4 x 4 = 64 blocks of one chunk each; worker 0 of 2 owns 32.
    let (block, chunks) = ("4,32,32", "4,32,32");
    let reference = dir.join("ref.zarr");
    run_ok(&segment_args(&dir, &reference, block, chunks), &[]);
    let want = outputs(&reference);

    let out = dir.join("killed.zarr");
    let args = segment_args(&dir, &out, block, chunks);
    let marks = out.join("fragments/.revseg-blocks");
    let n = kill_after_first_block(&args, "fragments", &marks, 32);
    // Whatever the killed worker left in its next block (2n, worker 0 takes the even ones) is
    // rewritten: garbage in that block's chunk must not survive.
    let b = 2 * n;
    std::fs::write(
        out.join("fragments")
            .join(format!("{}.{}.{}", b / 16, b / 4 % 4, b % 4)),
        b"not a chunk",
    )
    .unwrap();
    let lines = run_ok(&args, &["--stage", "fragments", "--workers", "2"]);
    assert_eq!(
        sum_field(&lines, "fragments", "blocks_skipped"),
        n as u64,
        "{lines:?}"
    );
    assert_eq!(sum_field(&lines, "fragments", "blocks_now"), 64 - n as u64);
    run_ok(&args, &["--stage", "graph", "--workers", "2"]);
    // The agglomeration is one process; rerun, it has nothing left to do.
    run_ok(&args, &["--stage", "agglomerate"]);
    let again = run_ok(&args, &["--stage", "agglomerate"]);
    assert_eq!(again[0]["thresholds_skipped"], 3, "{again:?}");
    let n = kill_after_first_block(
        &args,
        "relabel",
        &out.join("threshold_0.5/.revseg-blocks"),
        32,
    );
    let lines = run_ok(&args, &["--stage", "relabel", "--workers", "2"]);
    assert!(
        sum_field(&lines, "relabel", "blocks_skipped") >= n as u64 - 1,
        "{lines:?}"
    );
    assert!(outputs(&out) == want, "after the kills and reruns");
    // A finished stage reruns as a no-op; other settings in the same output are refused.
    let lines = run_ok(&args, &["--stage", "graph", "--worker", "1/2"]);
    assert_eq!(sum_field(&lines, "graph", "blocks_now"), 0, "{lines:?}");
    let all: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .chain(["--stage", "fragments", "--ws-dust", "10"])
        .collect();
    let (c, _, e) = revseg(&all);
    assert_ne!(c, Some(0));
    assert!(e.contains("another job"), "{e}");
    // Stages out of order name what is missing.
    let early = dir.join("early.zarr");
    let eargs = segment_args(&dir, &early, block, chunks);
    let all: Vec<&str> = eargs
        .iter()
        .map(String::as_str)
        .chain(["--stage", "graph"])
        .collect();
    let (c, _, e) = revseg(&all);
    assert_ne!(c, Some(0));
    assert!(e.contains("run --stage fragments first"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn blockwise_refuses_what_blocks_cannot_compute() {
    let dir = fresh_dir("refuse");
    volume(&dir, Dims::new(4, 32, 32), 1);
    let out = dir.join("o.zarr");
    let base = segment_args(&dir, &out, "4,16,16", "4,16,16");
    let with = |drop: &str, extra: &[&str]| -> String {
        let all: Vec<&str> = base
            .iter()
            .map(String::as_str)
            .filter(|a| *a != drop)
            .chain(extra.iter().copied())
            .collect();
        let (c, _, e) = revseg(&all);
        assert_eq!(c, Some(2), "{all:?}: {e}");
        e
    };
    assert!(with("--ws-absolute", &[]).contains("--ws-absolute"));
    assert!(with("", &["--score", "quantile:0.5"]).contains("--score mean"));
    assert!(with("", &["--stage", "merge"]).contains("choose fragments"));
    assert!(with("", &["--halo", "1,2"]).contains("--halo"));
    assert!(with("", &["--worker", "0/2"]).contains("one stage"));
    let _ = std::fs::remove_dir_all(&dir);
}

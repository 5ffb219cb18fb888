//! scripts/gpu-check itself, on the emulator (`--dry-run`): the steps run in order within the
//! deadline, a summary table comes last, at most 4 files are written, and a short deadline skips
//! steps with a line saying so instead of running past it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn gpu_check(out: &Path, deadline: u32) -> (bool, String) {
    let root = env!("CARGO_MANIFEST_DIR");
    let o = Command::new(format!("{root}/scripts/gpu-check"))
        .args(["--dry-run", "--deadline-s", &deadline.to_string()])
        .env("OUT", out)
        .env("REVSEG_BIN", env!("CARGO_BIN_EXE_revseg"))
        .output()
        .expect("scripts/gpu-check runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), text)
}

/// A fresh folder for one test's output.
fn out_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("revseg-gpu-check-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn dry_run_runs_every_step_within_its_deadline() {
    let dir = out_dir("dry");
    let t = Instant::now();
    let (ok, text) = gpu_check(&dir, 170);
    let secs = t.elapsed().as_secs();
    assert!(ok, "gpu-check --dry-run failed:\n{text}");
    assert!(secs < 180, "took {secs} s");
    let summary = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    // The table is the last thing printed, and names every step in the order.
    assert!(text.trim_end().ends_with(summary.trim_end()), "{text}");
    let order = [
        "| info ",
        "| parity ",
        "| tensor_cores ",
        "| full_step ",
        "| bench_table ",
        "| pytorch",
        "| compute-sanitizer ",
        "| bench_ops ",
    ];
    let at: Vec<usize> = order
        .iter()
        .map(|s| {
            summary
                .find(s)
                .unwrap_or_else(|| panic!("no row {s}: {summary}"))
        })
        .collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "{summary}");
    for s in [
        "info",
        "parity",
        "tensor_cores",
        "full_step",
        "bench_table",
        "bench_ops",
    ] {
        assert!(
            summary.contains(&format!("| {s} | passed |")),
            "{s} did not pass:\n{summary}\n{text}"
        );
    }
    let f = files(&dir);
    assert!(f.len() <= 4, "{f:?}");
}

#[test]
fn short_deadline_skips_steps_and_says_so() {
    let dir = out_dir("short");
    let t = Instant::now();
    let (_, text) = gpu_check(&dir, 3);
    assert!(
        t.elapsed().as_secs() < 30,
        "ran past a 3 s deadline:\n{text}"
    );
    assert!(
        text.contains("bench_ops: skipped") && text.contains("of the 3s deadline"),
        "{text}"
    );
    let summary = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    assert!(summary.contains("| bench_table | skipped |"), "{summary}");
}

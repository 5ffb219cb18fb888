//! `revseg train` through the binary: resume takes the saved settings and refuses changes that
//! would make it another run, steps = 0 is refused, and a signal stops with a checkpoint.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn revseg(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_revseg"))
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A small synthetic volume (made once per test) and a folder for runs.
fn setup(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("revseg-clitrain-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.join("data").display().to_string();
    let o = revseg(&["synth", "--out", &d, "--size", "16,80,80", "--seed", "5"]);
    assert!(o.status.success(), "{}", text(&o));
    dir
}

fn train(dir: &Path, extra: &[&str]) -> Output {
    let s = |p: &str| dir.join(p).display().to_string();
    let (img, lbl, run) = (s("data/image.zarr"), s("data/labels.zarr"), s("run"));
    let mut a = vec!["train", "--input", &img, "--labels", &lbl, "--out", &run];
    a.extend(["--device", "cpu"]);
    a.extend(extra);
    revseg(&a)
}

const NET: [&str; 8] = [
    "--widths",
    "8,12",
    "--rev-blocks",
    "1",
    "--patch",
    "4,32,32",
    "--set",
    "bn_momentum=0.1",
];

fn checkpoint_step(dir: &Path) -> usize {
    let ck = revseg::checkpoint::load(dir.join("run/model.safetensors")).unwrap();
    ck.meta("step").unwrap().parse().unwrap()
}

#[test]
fn resume_takes_the_saved_settings_and_refuses_other_changes() {
    let dir = setup("resume");
    let mut first = NET.to_vec();
    first.extend(["--steps", "2", "--seed", "1000000000000000123"]);
    let o = train(&dir, &first);
    assert!(o.status.success(), "{}", text(&o));
    // Nothing but --resume: the saved network, patch and seed (another network would not load).
    let o = train(&dir, &["--resume", "--steps", "3", "--lr", "0.002"]);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("resume: steps 2 -> 3"), "{t}");
    assert!(
        t.contains("resume: lr 0.005") || t.contains("resume: lr 0.01 -> 0.002"),
        "{t}"
    );
    assert_eq!(checkpoint_step(&dir), 3);
    let ck = revseg::checkpoint::load(dir.join("run/model.safetensors")).unwrap();
    assert_eq!(ck.meta("lr"), Some("2e-3"));
    assert!(ck
        .meta("config")
        .unwrap()
        .contains("\"seed\":1000000000000000123"));
    // Settings that would make it another run are refused, each by name.
    for (flag, value, key) in [
        ("--seed", "7", "seed"),
        ("--rev-blocks", "2", "rev_blocks"),
        ("--patch", "4,64,64", "patch"),
    ] {
        let o = train(&dir, &["--resume", "--steps", "4", flag, value]);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(
            text(&o).contains(&format!("--resume: {key} is")),
            "{}",
            text(&o)
        );
    }
    // The same value again is no change.
    let o = train(&dir, &["--resume", "--steps", "4", "--rev-blocks", "1"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(checkpoint_step(&dir), 4);
    // A fresh run into the folder is refused; --overwrite replaces it.
    let o = train(&dir, &first);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).contains("already holds a training run"),
        "{}",
        text(&o)
    );
    let mut again = first.clone();
    again.push("--overwrite");
    let o = train(&dir, &again);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(checkpoint_step(&dir), 2);
}

#[test]
fn zero_steps_is_refused_and_writes_nothing() {
    let dir = setup("zero");
    let mut a = NET.to_vec();
    a.extend(["--steps", "0"]);
    let o = train(&dir, &a);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("nothing to train"), "{}", text(&o));
    assert!(!text(&o).contains("wrote"));
    assert!(!dir.join("run/model.safetensors").exists());
}

/// SIGINT mid-run: the step finishes, a checkpoint of it is saved, the exit code is 130, and
/// --resume carries on from it to the end.
#[test]
fn a_signal_saves_a_checkpoint_and_stops() {
    let dir = setup("signal");
    let s = |p: &str| dir.join(p).display().to_string();
    let (img, lbl, run) = (s("data/image.zarr"), s("data/labels.zarr"), s("run"));
    let mut a = vec!["train", "--input", &img, "--labels", &lbl, "--out", &run];
    a.extend([
        "--device",
        "cpu",
        "--steps",
        "100000",
        "--set",
        "checkpoint_every=1000",
    ]);
    a.extend(NET);
    let child = Command::new(env!("CARGO_BIN_EXE_revseg"))
        .args(&a)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let csv = dir.join("run/metrics.csv");
    let t0 = Instant::now();
    while std::fs::read_to_string(&csv).map_or(0, |c| c.lines().count()) < 3 {
        assert!(t0.elapsed() < Duration::from_secs(120), "no steps logged");
        std::thread::sleep(Duration::from_millis(20));
    }
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(130), "{t}");
    assert!(t.contains("interrupted") && t.contains("--resume"), "{t}");
    let rows = std::fs::read_to_string(&csv).unwrap().lines().count() - 1;
    let step = checkpoint_step(&dir);
    assert!((2..100000).contains(&step), "{step}");
    assert_eq!(rows, step, "every logged step is in the checkpoint");
    let o = train(&dir, &["--resume", "--steps", &(step + 1).to_string()]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(checkpoint_step(&dir), step + 1);
}

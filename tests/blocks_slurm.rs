//! Blockwise jobs as Slurm array jobs on a real single-node cluster (scripts/slurm-local):
//! - prediction: two array tasks split the blocks, a second stage chained with --after runs only
//!   once the first succeeded, and the result equals the one-process prediction bit for bit;
//! - segmentation: its four stages (fragments, region graph, agglomeration, relabel) as four
//!   array jobs of two tasks chained with --after, equal bit for bit to the local `--workers 2`
//!   run of the same job.
//!
//! Where Slurm cannot start here (no apt-get, not root, daemons failing; or REVSEG_SLURM=off), each
//! test says so on stderr and checks the same job through the local worker path instead.

mod common;
use common::{data_and_checkpoint, predict_cpu, read_bits, revseg};
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A line in the test's output whatever the harness captures: CI logs must show which path ran.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "blocks_slurm: {line}");
}

fn slurm_local() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/slurm-local")
}

/// The local cluster while this test uses it; stopped at the end if this test started it. The
/// lock keeps a second test process from stopping the cluster under this one.
struct Cluster {
    conf: String,
    started: bool,
    _lock: std::fs::File,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.started {
            let out = Command::new(slurm_local()).arg("stop").output();
            if let Ok(o) = out {
                say(String::from_utf8_lossy(&o.stderr).trim());
            }
        }
    }
}

fn start_cluster() -> Result<Cluster, String> {
    if std::env::var("REVSEG_SLURM").as_deref() == Ok("off") {
        return Err("REVSEG_SLURM=off".into());
    }
    let dir = std::env::var("REVSEG_SLURM_DIR").unwrap_or("/var/tmp/revseg-slurm".into());
    let lock_path = format!("{dir}.test.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("cannot open the lock {lock_path}: {e}"))?;
    // SAFETY: flock on a descriptor this function owns; it is released when the file closes.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(format!(
            "cannot lock {lock_path}: {}",
            std::io::Error::last_os_error()
        ));
    }
    let was_running = Command::new(slurm_local())
        .arg("status")
        .output()
        .is_ok_and(|o| o.status.success());
    let t0 = Instant::now();
    let out = Command::new(slurm_local())
        .arg("start")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", slurm_local().display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let why: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        return Err(why[why.len().saturating_sub(4)..].join(" | "));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let conf = stdout
        .lines()
        .find_map(|l| l.strip_prefix("export SLURM_CONF="))
        .ok_or_else(|| format!("slurm-local printed no SLURM_CONF: {stdout}"))?
        .to_string();
    say(&format!(
        "{} ({:.1} s)",
        stderr.trim(),
        t0.elapsed().as_secs_f64()
    ));
    Ok(Cluster {
        conf,
        started: !was_running,
        _lock: lock,
    })
}

fn slurm_cmd(c: &Cluster, prog: &str, args: &[&str]) -> String {
    let out = Command::new(prog)
        .args(args)
        .env("SLURM_CONF", &c.conf)
        .output()
        .unwrap_or_else(|e| panic!("{prog}: {e}"));
    assert!(out.status.success(), "{prog} {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until none of `jobs` is queued or running, then returns every array task's
/// (job id, task id, state, exit code) from scontrol.
fn wait_jobs(c: &Cluster, jobs: &[&str], logs: &Path) -> Vec<(String, String, String, String)> {
    let t0 = Instant::now();
    let list = jobs.join(",");
    loop {
        let out = Command::new("squeue")
            .args(["-h", "-j", &list, "-o", "%i %T %r"])
            .env("SLURM_CONF", &c.conf)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && text.trim().is_empty() {
            break;
        }
        if t0.elapsed() > Duration::from_secs(600) {
            let logs: Vec<String> = std::fs::read_dir(logs)
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
                .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                .collect();
            panic!("jobs {list} still queued after 600 s: {text}\nlogs: {logs:?}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let mut tasks = Vec::new();
    for j in jobs {
        for line in slurm_cmd(c, "scontrol", &["-o", "show", "job", j]).lines() {
            let field = |k: &str| {
                line.split_whitespace()
                    .find_map(|f| f.strip_prefix(&format!("{k}=")))
                    .unwrap_or("")
                    .to_string()
            };
            tasks.push((
                field("ArrayJobId"),
                field("ArrayTaskId"),
                field("JobState"),
                field("ExitCode"),
            ));
        }
    }
    tasks.sort();
    tasks
}

/// The `revseg predict --json` reports in a task log.
fn reports(log: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|j| j.get("blocks_done").is_some())
        .collect()
}

#[test]
fn array_tasks_under_slurm_equal_one_process() {
    let (d, image, ck) = data_and_checkpoint("slurm");
    let single = d.join("single.zarr").display().to_string();
    let base = predict_cpu(&ck, &image);
    let (c, o, e) = revseg(&[&base[..], &["--output", &single]].concat());
    assert_eq!(c, Some(0), "{o}{e}");
    let want = read_bits(&single);
    assert_eq!(want.0, vec![3, 16, 80, 80]);

    // Quotes, spaces and '#' in the working directory, the output and the job name go through
    // sbatch's own parsing of #SBATCH lines and through the shell.
    let work = d.join("work dir \"q\" #1");
    std::fs::create_dir_all(&work).unwrap();
    let output = "it's out.zarr/aff";
    let job_name = "revseg \"test\" #predict";
    // 16 x 80 x 80 in blocks of 8 x 40 x 40: 8 blocks, 4 per task.
    let stage: Vec<&str> = [
        &base[..],
        &[
            "--output",
            output,
            "--block",
            "8,40,40",
            "--block-chunks",
            "4,20,20",
            "--json",
        ],
    ]
    .concat();
    let work_s = work.display().to_string();
    let generate = |name: &str, after: Option<&str>| -> PathBuf {
        let path = work.join(format!("{name}.sbatch"));
        let path_s = path.display().to_string();
        let log = format!("{name}-%A_%a.log");
        let mut args = vec![
            "blocks",
            "slurm",
            "--tasks",
            "2",
            "--job-name",
            job_name,
            "--chdir",
            &work_s,
            "--log",
            &log,
            "--cpus-per-task",
            "1",
            "--out",
            &path_s,
        ];
        if let Some(a) = after {
            args.extend(["--after", a]);
        }
        args.push("--");
        args.extend(&stage);
        let (c, o, e) = revseg(&args);
        assert_eq!(c, Some(0), "{o}{e}");
        path
    };

    // What cannot run as array tasks is refused before anything is submitted.
    let ok = "predict --checkpoint x --input y --output z";
    for (extra, why) in [
        (format!("--tasks 0 -- {ok}"), "at least one task"),
        (
            "--tasks 2 -- train --steps 1".into(),
            "does not run blockwise",
        ),
        (
            "--tasks 2 -- predict --input y".into(),
            "would fail in every array task",
        ),
        (format!("--tasks 2 -- {ok} --workers 2"), "remove --workers"),
    ] {
        let args: Vec<&str> = ["blocks", "slurm"]
            .into_iter()
            .chain(extra.split(' '))
            .collect();
        let (c, o, e) = revseg(&args);
        assert_eq!(c, Some(2), "{extra}: {o}{e}");
        assert!(e.contains(why), "{extra}: {e}");
    }

    let got = work.join(output).display().to_string();
    match start_cluster() {
        Ok(cluster) => {
            let first = generate("stage1", None);
            let submit = |script: &Path| -> String {
                let out = slurm_cmd(
                    &cluster,
                    "sbatch",
                    &["--parsable", &script.display().to_string()],
                );
                out.trim().split(';').next().unwrap().to_string()
            };
            let j1 = submit(&first);
            // Submitted while the first runs: afterok holds it until the first succeeded, so
            // its tasks find every block done.
            let second = generate("stage2", Some(&j1));
            let j2 = submit(&second);
            let t0 = Instant::now();
            let tasks = wait_jobs(&cluster, &[&j1, &j2], &work);
            say(&format!(
                "Slurm ran array jobs {j1} and {j2} (2 tasks each) in {:.1} s",
                t0.elapsed().as_secs_f64()
            ));
            let mut want_tasks = Vec::new();
            for j in [&j1, &j2] {
                for t in ["0", "1"] {
                    want_tasks.push((
                        j.to_string(),
                        t.to_string(),
                        "COMPLETED".into(),
                        "0:0".into(),
                    ));
                }
            }
            // Both sides sorted the same way: job ids are strings, and "10" sorts before "9".
            want_tasks.sort();
            assert_eq!(tasks, want_tasks);
            let name = slurm_cmd(&cluster, "scontrol", &["show", "job", &j1]);
            assert!(name.contains(&format!("JobName={job_name}\n")), "{name}");
            for (stage, j, predicted, skipped) in [("stage1", &j1, 4, 0), ("stage2", &j2, 0, 4)] {
                for t in 0..2 {
                    let r = reports(&work.join(format!("{stage}-{j}_{t}.log")));
                    assert_eq!(r.len(), 1, "{stage} task {t}: {r:?}");
                    assert_eq!(r[0]["blocks"], 8);
                    assert_eq!(
                        r[0]["blocks_predicted"], predicted,
                        "{stage} task {t}: {r:?}"
                    );
                    assert_eq!(r[0]["blocks_skipped"], skipped, "{stage} task {t}: {r:?}");
                }
            }
        }
        Err(why) => {
            say(&format!(
                "Slurm could not start ({why}); testing the local --workers 2 path instead"
            ));
            // The script is still generated and checked as far as it can be without Slurm.
            let script = std::fs::read_to_string(generate("stage1", None)).unwrap();
            assert!(script.contains("#SBATCH --array=0-1\n"), "{script}");
            let out = Command::new(env!("CARGO_BIN_EXE_revseg"))
                .args(&stage)
                .args(["--workers", "2"])
                .current_dir(&work)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            let text = String::from_utf8_lossy(&out.stdout);
            let done: Vec<serde_json::Value> = text
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            let predicted: u64 = done
                .iter()
                .filter_map(|j| j["blocks_predicted"].as_u64())
                .sum();
            assert_eq!(predicted, 8, "{text}");
        }
    }
    assert_eq!(read_bits(&got), want, "array tasks against one process");
    let _ = std::fs::remove_dir_all(&d);
}

const SEG_STAGES: [&str; 4] = ["fragments", "graph", "agglomerate", "relabel"];

/// Every array the blockwise segmentation wrote: fragments, then one volume per threshold.
fn segmentation_arrays(out: &Path) -> Vec<Vec<u64>> {
    ["fragments", "threshold_0.5", "threshold_0.7"]
        .iter()
        .map(|a| {
            revseg::volume::zarr::ZarrArray::open(&out.join(a))
                .unwrap_or_else(|e| panic!("{}/{a}: {e}", out.display()))
                .read_all::<u64>()
                .unwrap()
                .data
        })
        .collect()
}

#[test]
fn segmentation_stages_under_slurm_equal_local_workers() {
    let d = std::env::temp_dir().join(format!("revseg-slurm-seg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    // 16 x 128 x 128 in blocks of 8 x 64 x 64: 8 blocks, 4 per task.
    revseg::bench::segment::write_volumes(revseg::segment::Dims::new(16, 128, 128), 5, &d).unwrap();
    let aff = d.join("affinities.zarr").display().to_string();
    let job = |out: &Path| -> Vec<String> {
        [
            "segment",
            "--affinities",
            &aff,
            "--output",
            &out.display().to_string(),
            "--ws-absolute",
            "--thresholds",
            "0.5,0.7",
            "--block",
            "8,64,64",
            "--block-chunks",
            "8,32,32",
            "--json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let run = |args: &[String]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (c, o, e) = revseg(&args);
        assert_eq!(c, Some(0), "{args:?}\n{o}{e}");
    };
    let local = d.join("local.zarr");
    run(&[job(&local), vec!["--workers".into(), "2".into()]].concat());
    let want = segmentation_arrays(&local);
    assert!(want[1].iter().any(|&v| v != want[1][0]), "one segment only");

    let out = d.join("slurm.zarr");
    let work_s = d.display().to_string();
    match start_cluster() {
        Ok(cluster) => {
            let mut jobs: Vec<String> = Vec::new();
            for stage in SEG_STAGES {
                let script = d.join(format!("{stage}.sbatch")).display().to_string();
                let log = format!("{stage}-%A_%a.log");
                let mut args: Vec<String> = [
                    "blocks",
                    "slurm",
                    "--tasks",
                    "2",
                    "--job-name",
                    stage,
                    "--chdir",
                    &work_s,
                    "--log",
                    &log,
                    "--cpus-per-task",
                    "1",
                    "--out",
                    &script,
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                if let Some(prev) = jobs.last() {
                    args.extend(["--after".to_string(), prev.clone()]);
                }
                args.push("--".into());
                args.extend(job(&out));
                args.extend(["--stage".to_string(), stage.to_string()]);
                run(&args);
                let id = slurm_cmd(&cluster, "sbatch", &["--parsable", &script]);
                jobs.push(id.trim().split(';').next().unwrap().to_string());
            }
            let t0 = Instant::now();
            let ids: Vec<&str> = jobs.iter().map(String::as_str).collect();
            let tasks = wait_jobs(&cluster, &ids, &d);
            say(&format!(
                "Slurm ran the four segmentation stages as array jobs {} (2 tasks each) in {:.1} s",
                jobs.join(", "),
                t0.elapsed().as_secs_f64()
            ));
            let want_tasks: Vec<_> = jobs
                .iter()
                .flat_map(|j| {
                    ["0", "1"].map(|t| (j.clone(), t.to_string(), "COMPLETED".into(), "0:0".into()))
                })
                .collect();
            let mut want_tasks = want_tasks;
            want_tasks.sort();
            assert_eq!(tasks, want_tasks);
        }
        Err(why) => {
            say(&format!(
                "Slurm could not start ({why}); running each stage's array-task command lines \
                 (--worker 0/2, then 1/2) here instead"
            ));
            for stage in SEG_STAGES {
                for w in ["0/2", "1/2"] {
                    run(&[
                        job(&out),
                        ["--stage", stage, "--worker", w].map(String::from).to_vec(),
                    ]
                    .concat());
                }
            }
        }
    }
    assert_eq!(
        segmentation_arrays(&out),
        want,
        "array tasks against the local workers"
    );
    let _ = std::fs::remove_dir_all(&d);
}

//! Blockwise prediction through the binary: workers split the blocks, a killed worker loses only
//! its unfinished blocks, and the finished volume equals the one-process prediction bit for bit.

mod common;
use common::{data_and_checkpoint, predict_cpu, read_bits, revseg};
use std::path::Path;

fn done_count(array: &Path) -> usize {
    std::fs::read_dir(array.join(".revseg-blocks"))
        .map(|d| {
            d.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".done"))
            })
            .count()
        })
        .unwrap_or(0)
}

#[test]
fn two_workers_equal_one_process_also_after_a_kill() {
    let (d, image, ck) = data_and_checkpoint("blocks");
    let s = |n: &str| d.join(n).display().to_string();
    let base = predict_cpu(&ck, &image);
    let single = s("single.zarr");
    let (c, o, e) = revseg(&[&base[..], &["--output", &single]].concat());
    assert_eq!(c, Some(0), "{o}{e}");
    let (shape, want) = read_bits(&single);
    assert_eq!(shape, vec![3, 16, 80, 80]);
    assert!(
        want.iter().any(|&b| b != want[0]),
        "a constant prediction tests nothing"
    );

    // 16 x 80 x 80 in blocks of 8 x 40 x 40: 8 blocks of 2 x 2 x 2 chunks each.
    let blockwise = |out: &str, extra: &[&str]| -> Vec<String> {
        let args = [
            &base[..],
            &[
                "--output",
                out,
                "--block",
                "8,40,40",
                "--block-chunks",
                "4,20,20",
                "--json",
            ],
            extra,
        ]
        .concat();
        let (c, o, e) = revseg(&args);
        assert_eq!(c, Some(0), "{o}{e}");
        o.lines().map(str::to_string).collect()
    };
    let two = s("two.zarr/aff");
    let lines = blockwise(&two, &["--workers", "2"]);
    assert!(
        lines.iter().any(|l| l.contains("\"blocks_done\":8")),
        "{lines:?}"
    );
    assert_eq!(read_bits(&two), (shape.clone(), want.clone()), "2 workers");

    // Worker 0 of 2 killed right after its first block is marked done: it is inside its second.
    let killed = s("killed.zarr");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_revseg"))
        .args(&base)
        .args([
            "--output",
            &killed,
            "--block",
            "8,40,40",
            "--block-chunks",
            "4,20,20",
        ])
        .args(["--worker", "0/2"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while done_count(Path::new(&killed)) == 0 {
        assert!(t0.elapsed().as_secs() < 300, "no block finished");
        assert!(child.try_wait().unwrap().is_none(), "worker ended early");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let after_kill = done_count(Path::new(&killed));
    assert!(
        (1..4).contains(&after_kill),
        "worker 0 owns 4 blocks; {after_kill} were done when it was killed"
    );
    // Whatever a killed worker left in an unfinished block is rewritten: garbage in the first
    // chunk of worker 0's first unfinished block (blocks 0, 2, 4, 6 in order; block b is at
    // (b / 4, b / 2 % 2, b % 2) in the 2 x 2 x 2 grid, 2 chunks per block and axis) must not
    // survive.
    let b = 2 * after_kill;
    let key = format!("0.{}.{}.{}", b / 4 * 2, b / 2 % 2 * 2, b % 2 * 2);
    std::fs::write(Path::new(&killed).join(key), b"not a chunk").unwrap();
    let lines = blockwise(&killed, &["--workers", "2"]);
    let skipped: usize = lines
        .iter()
        .filter_map(|l| {
            let j: serde_json::Value = serde_json::from_str(l).ok()?;
            j["blocks_skipped"].as_u64()
        })
        .sum::<u64>() as usize;
    assert_eq!(skipped, after_kill, "{lines:?}");
    assert_eq!(
        read_bits(&killed),
        (shape, want),
        "after the kill and rerun"
    );
    // A finished job reruns as a no-op, and another job's output is refused.
    let again = blockwise(&killed, &["--worker", "1/2"]);
    assert!(
        again.iter().any(|l| l.contains("\"blocks_predicted\":0")),
        "{again:?}"
    );
    let (c, _, e) = revseg(
        &[
            &base[..],
            &[
                "--output",
                &killed,
                "--block",
                "8,40,40",
                "--block-chunks",
                "4,20,20",
            ],
            &["--tta"],
        ]
        .concat(),
    );
    assert_ne!(c, Some(0));
    assert!(e.contains("another job"), "{e}");
    let _ = std::fs::remove_dir_all(&d);
}

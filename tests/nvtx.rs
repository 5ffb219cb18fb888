//! NVTX ranges as a profiler receives them: a small NVTX tool (tests/fixtures/nvtx_inject.c) is
//! injected the way nsys injects its own, through NVTX_INJECTION64_PATH, and logs every range.

use std::path::{Path, PathBuf};
use std::process::Command;

fn tmp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("revseg-nvtx-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn build_tool(dir: &Path) -> PathBuf {
    let lib = dir.join("libnvtx_log.so");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nvtx_inject.c");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .args([
            "-shared", "-fPIC", "-O1", "-Wall", "-Werror", "-pthread", "-o",
        ])
        .arg(&lib)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C compiler `{cc}`: {e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    lib
}

/// Two training steps of a small reversible network (one warm-up, one timed).
fn bench_step(envs: &[(&str, &Path)]) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_revseg"));
    cmd.args(["bench", "step", "--widths", "4,6", "--patch", "2,8,32"])
        .args(["--rev-blocks", "2", "--steps", "1"]);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A range and what was opened inside it.
#[derive(Debug)]
struct Node {
    name: String,
    children: Vec<Node>,
}

/// Rebuild the tree of ranges of one thread; panics on a pop without a push or an unclosed range.
fn parse(log: &str) -> Vec<Node> {
    let mut stack: Vec<Node> = vec![Node {
        name: "root".into(),
        children: vec![],
    }];
    let mut thread = None;
    for line in log.lines() {
        let mut parts = line.splitn(3, ' ');
        let (kind, tid) = (parts.next().unwrap(), parts.next().unwrap());
        assert_eq!(
            *thread.get_or_insert(tid.to_string()),
            tid,
            "ranges from a second thread"
        );
        match kind {
            "push" => stack.push(Node {
                name: parts.next().unwrap_or("").to_string(),
                children: vec![],
            }),
            "pop" => {
                let n = stack.pop().unwrap();
                assert!(!stack.is_empty(), "pop without a matching push");
                stack.last_mut().unwrap().children.push(n);
            }
            other => panic!("unexpected log line {other}"),
        }
    }
    assert_eq!(stack.len(), 1, "ranges left open: {:?}", &stack[1..]);
    stack.pop().unwrap().children
}

#[test]
fn a_profiler_sees_steps_phases_and_ops() {
    let dir = tmp_dir("ranges");
    let lib = build_tool(&dir);
    let log_path = dir.join("ranges.log");
    bench_step(&[
        ("NVTX_INJECTION64_PATH", &lib),
        ("REVSEG_NVTX_LOG", &log_path),
    ]);
    let log = std::fs::read_to_string(&log_path).expect("the tool was never loaded");
    let steps = parse(&log);
    assert_eq!(
        steps.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["step 1", "step 2"]
    );
    for step in &steps {
        let phases: Vec<&str> = step.children.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(phases, ["forward", "loss", "backward", "update"]);
        for phase in &step.children {
            assert!(!phase.children.is_empty(), "{} has no ops", phase.name);
            assert!(phase.children.iter().all(|op| op.children.is_empty()));
        }
        let ops = |i: usize| -> Vec<&str> {
            step.children[i]
                .children
                .iter()
                .map(|o| o.name.as_str())
                .collect()
        };
        assert!(ops(0).contains(&"conv3d_forward embed_in"), "{:?}", ops(0));
        assert!(ops(1).iter().any(|o| o.starts_with("bce_loss")));
        // The backward rebuilds reversible inputs (x2 = y2 - G(y1)) and recomputes F and G.
        assert!(ops(2).iter().any(|o| o.starts_with("sub_assign")));
        assert!(ops(2).iter().any(|o| o.starts_with("conv3d_forward")));
        assert!(ops(2)
            .iter()
            .any(|o| o.starts_with("conv3d_backward_weight")));
        assert!(ops(3).iter().all(|o| o.starts_with("adam_step")));
    }
    std::fs::remove_dir_all(&dir).ok();
}

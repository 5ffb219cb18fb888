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

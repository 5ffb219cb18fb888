//! scripts/kernel-report reads every kernel off its sm_90 build: each kernel of kernels/*.cu is
//! there with the resources ptxas gave it and an inner loop that does arithmetic.

use std::process::Command;

#[test]
fn kernel_report_covers_every_kernel() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(format!("{root}/scripts/kernel-report"))
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = j["kernels"].as_array().unwrap();
    // The kernels, independently of the report: their REVSEG_KERNEL lines.
    let mut declared = Vec::new();
    for e in std::fs::read_dir(format!("{root}/kernels")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "cu") {
            for line in std::fs::read_to_string(&p).unwrap().lines() {
                let l = line.trim_start();
                if let Some(rest) = l
                    .strip_prefix("REVSEG_KERNEL(")
                    .or_else(|| l.strip_prefix("REVSEG_KERNEL_SYNC("))
                {
                    declared.push(rest.split(',').next().unwrap().trim().to_string());
                }
            }
        }
    }
    assert!(declared.len() > 20, "{declared:?}");
    for k in &declared {
        let r = rows
            .iter()
            .find(|r| r["kernel"] == k.as_str())
            .unwrap_or_else(|| panic!("{k} missing from the report"));
        assert!(r["regs"].as_u64().unwrap() > 0, "{k}: {r}");
        let occ = r["occupancy"].as_f64().unwrap();
        assert!(occ > 0.0 && occ <= 1.0, "{k}: {r}");
    }
    let fwd = rows
        .iter()
        .find(|r| r["kernel"] == "conv3d_forward")
        .unwrap();
    let m = &fwd["inner_loop_mix"];
    assert!(
        m["fp32"].as_u64().unwrap() + m["mma"].as_u64().unwrap() > 0,
        "{fwd}"
    );
}

//! scripts/kernel-report reads every kernel off its sm_90 build: each kernel of kernels/*.cu is
//! there with the resources ptxas gave it and an inner loop that does arithmetic; the tensor-core
//! convolutions have HMMA in their main loops and no spills; the per-layer useful-MAC fractions
//! agree with the tile table, and the FLOP-weighted fraction is at least 85%.

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
    // The tensor-core convolutions: HMMA in the main loop, no spills.
    let mma: Vec<_> = rows
        .iter()
        .filter(|r| {
            let k = r["kernel"].as_str().unwrap();
            k.starts_with("conv3d_mma_data_") || k.starts_with("conv3d_mma_weight_")
        })
        .collect();
    assert_eq!(mma.len(), 32);
    for r in &mma {
        assert!(r["inner_loop_mix"]["mma"].as_u64().unwrap() > 0, "{r}");
        assert_eq!(
            r["spill_st"].as_u64().unwrap() + r["spill_ld"].as_u64().unwrap(),
            0,
            "{r}"
        );
    }
    // Per layer shape: the useful fraction recomputed here from the shape and the tile table.
    let layers = j["layers"].as_array().unwrap();
    let tile = |c: u64| {
        [8u64, 16, 24, 32, 40, 48, 64, 80]
            .into_iter()
            .rev()
            .min_by_key(|&n| c.div_ceil(n) * n)
            .unwrap()
    };
    for l in layers
        .iter()
        .filter(|l| l["precision"] == "tf32" && l["pass_"] == "forward")
    {
        let (ci, co, taps, q) = (
            l["ci"].as_u64().unwrap(),
            l["co"].as_u64().unwrap(),
            l["taps"].as_u64().unwrap(),
            l["positions"].as_u64().unwrap(),
        );
        let n = tile(co);
        let issued = q.div_ceil(64) * 64 * co.div_ceil(n) * n * (ci * taps).div_ceil(16) * 16;
        let want = (ci * co * taps * q) as f64 / issued as f64;
        let got = l["useful_mac_fraction"].as_f64().unwrap();
        assert!((got - want).abs() < 1e-3, "{l}: {want}");
        assert!(l["hmma_in_inner_loop"].as_bool().unwrap(), "{l}");
    }
    for key in ["tf32/base", "tf32/revnet_n2", "bf16/base", "bf16/revnet_n2"] {
        let u = j["estimate"][key]["flop_weighted_useful"].as_f64().unwrap();
        assert!(u >= 0.85, "{key}: {u}");
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

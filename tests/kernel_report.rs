//! scripts/kernel-report reads every kernel off its sm_90 build: each kernel of kernels/*.cu is
//! there with the resources ptxas gave it and an inner loop that does arithmetic; the tensor-core
//! convolutions have HMMA in their main loops and no spills; the per-layer useful-MAC fractions
//! agree with the library's tile choices (conv3d_mma::data_plan, weight_plan), and the
//! FLOP-weighted fraction is at least 85%. The narrow 1x1x1 layers (the output layer) take
//! conv3d_pointwise.cu's CUDA-core kernels, the one documented exception to HMMA in the main loop:
//! no HMMA anywhere in them, FFMAs in their loops, no spills, every issued FMA useful, and a
//! memory-bound time estimate of the bytes they move.

use revseg::backend::gpu::conv3d_mma::{data_plan, weight_plan};
use revseg::backend::gpu::conv3d_pointwise::{is_narrow, weight_splits, CHANNELS_PER_BLOCK};
use revseg::ops::conv3d::Conv3dGeom;

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
    assert_eq!(mma.len(), 36);
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
    let kernel = |taps: u64| match taps {
        27 => [3, 3, 3],
        9 => [1, 3, 3],
        25 => [1, 5, 5],
        1 => [1, 1, 1],
        _ => panic!("no preset kernel with {taps} taps"),
    };
    let mut narrow_rows = 0;
    for l in layers.iter() {
        let u = |k: &str| l[k].as_u64().unwrap() as usize;
        let (ci, co, taps, q) = (u("ci"), u("co"), u("taps"), u("positions"));
        // The scale's volume: 18 x s x s positions (1x2x2 pooling between scales).
        let s = ((q / 18) as f64).sqrt() as usize;
        let [kd, kh, kw] = kernel(taps as u64);
        let g = Conv3dGeom {
            n: 1,
            ci,
            co,
            d: 18,
            h: s,
            w: s,
            kd,
            kh,
            kw,
        };
        let prec = l["precision"].as_str().unwrap();
        if is_narrow(&g) {
            narrow_rows += 1;
            let k = l["kernel"].as_str().unwrap();
            let pass = match l["pass_"].as_str().unwrap() {
                "forward" => "forward",
                "input" => "backward_input",
                _ => "backward_weight",
            };
            assert_eq!(k, format!("conv3d_pointwise_narrow_{pass}_{prec}"), "{l}");
            let r = rows.iter().find(|r| r["kernel"] == k).unwrap();
            // CUDA cores, by the documented exception: no HMMA in the whole kernel, FFMAs in its
            // hottest loop, no spills.
            assert_eq!(r["mix"]["mma"].as_u64().unwrap(), 0, "{r}");
            assert!(r["inner_loop_mix"]["fp32"].as_u64().unwrap() > 0, "{r}");
            assert_eq!(
                r["spill_st"].as_u64().unwrap() + r["spill_ld"].as_u64().unwrap(),
                0,
                "{r}"
            );
            assert!(!l["hmma_in_inner_loop"].as_bool().unwrap(), "{l}");
            assert!(
                l["hmma_rule"].as_str().unwrap().contains("exception"),
                "{l}"
            );
            assert!(
                (l["useful_mac_fraction"].as_f64().unwrap() - 1.0).abs() < 1e-9,
                "{l}"
            );
            // Bytes: each tensor once, and the weight pass's partial sums written and read back,
            // in as many splits as the launcher takes on 132 SMs.
            let (splits, _) = weight_splits(132, &g);
            let (bytes, ctas) = if pass == "backward_weight" {
                (
                    4 * ((ci + co) * q + 2 * splits * ci * co),
                    ci.div_ceil(CHANNELS_PER_BLOCK) * splits,
                )
            } else {
                (4 * (ci + co) * q, (q / 4).div_ceil(256))
            };
            assert_eq!(u("bytes_moved"), bytes, "{l}");
            assert_eq!(u("ctas"), ctas, "{l}");
            let ms = l["est_mem_ms"].as_f64().unwrap();
            assert!((ms - 1e3 * bytes as f64 / 4.8e12).abs() < 1e-4, "{l}");
            continue;
        }
        assert!(l["est_mem_ms"].is_null(), "{l}");
        if prec != "tf32" {
            continue;
        }
        let (issued, bn) = match l["pass_"].as_str().unwrap() {
            "forward" | "input" => {
                let flip = l["pass_"] == "input";
                let (cin, cout) = if flip { (co, ci) } else { (ci, co) };
                let p = data_plan(cin, cout, [18, s, s], kernel(taps as u64), flip).unwrap();
                (p.issued_macs(1), p.bn)
            }
            // Weight gradient: on 132 SMs, one sample, as the report assumes.
            _ => {
                let p = weight_plan(132, 1, ci, co, [18, s, s], kernel(taps as u64)).unwrap();
                (p.issued_macs(), p.bn)
            }
        };
        let want = (ci * co * taps * q) as f64 / issued as f64;
        let got = l["useful_mac_fraction"].as_f64().unwrap();
        assert!((got - want).abs() < 1e-3, "{l}: {want}");
        assert!(l["hmma_in_inner_loop"].as_bool().unwrap(), "{l}");
        assert!(
            l["kernel"].as_str().unwrap().ends_with(&format!("_n{bn}")),
            "{l}"
        );
    }
    // The output layer, three passes in each of three precisions.
    assert_eq!(narrow_rows, 9);
    // Every layer shape of the preset reaches 70% useful MACs in the tensor-core precisions.
    for l in layers.iter().filter(|l| l["precision"] != "f32") {
        assert!(l["useful_mac_fraction"].as_f64().unwrap() >= 0.70, "{l}");
    }
    // embed_in's weight gradient on the pair fold and an M tile of 32.
    let e = layers
        .iter()
        .find(|l| l["precision"] == "tf32" && l["layer"] == "embed_in" && l["pass_"] == "weight")
        .unwrap();
    assert!(e["useful_mac_fraction"].as_f64().unwrap() >= 0.70, "{e}");
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

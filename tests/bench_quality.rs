//! `revseg bench quality` at a tiny size: every figure of its JSON against an independent
//! recomputation (`revseg eval` on the segmentation it wrote, `revseg plan` for parameters and
//! memory, means and spreads from the per-run values), and its markdown and plot written.

mod common;
use common::revseg;
use serde_json::Value;

fn num(v: &Value, k: &str) -> f64 {
    v[k].as_f64()
        .unwrap_or_else(|| panic!("{k} missing in {v}"))
}

#[test]
fn table_matches_independent_recomputation() {
    let d = std::env::temp_dir().join(format!("revseg-bench-quality-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    let out = d.display().to_string();
    let args = [
        "bench",
        "quality",
        "--steps",
        "3",
        "--seeds",
        "2",
        "--variants",
        "0,2",
        "--train-size",
        "12,80,80",
        "--test-size",
        "8,64,64",
        "--set",
        "widths=8,12",
        "--set",
        "patch=4,32,32",
        "--set",
        "outputs=12",
        "--device",
        "cpu",
        "--out",
        &out,
    ];
    let (c, o, e) = revseg(&[&args[..], &["--json"]].concat());
    assert_eq!(
        o,
        std::fs::read_to_string(d.join("quality.json")).unwrap() + "\n"
    );
    assert_eq!(c, Some(0), "{o}{e}");
    let j: Value = serde_json::from_str(&o).expect("one JSON object");
    let labels = j["test_labels"].as_str().unwrap().to_string();
    let variants = j["variants"].as_array().unwrap();
    assert_eq!(variants.len(), 2);
    for v in variants {
        let n = v["rev_blocks"].as_u64().unwrap();
        let mut plan_args = vec![
            "plan".to_string(),
            "--widths".into(),
            "8,12".into(),
            "--rev-blocks".into(),
            n.to_string(),
            "--patch".into(),
            "4,32,32".into(),
            "--outputs".into(),
            "12".into(),
            "--json".into(),
        ];
        if n == 0 {
            plan_args.push("--store-all".into());
        }
        let refs: Vec<&str> = plan_args.iter().map(|s| s.as_str()).collect();
        let (c, po, pe) = revseg(&refs);
        assert_eq!(c, Some(0), "{po}{pe}");
        let plan: Value = serde_json::from_str(&po).unwrap();
        let runs = v["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 2);
        let mut rands = vec![];
        for r in runs {
            assert_eq!(r["params"], plan["params"], "{n} rev blocks");
            assert_eq!(r["peak_bytes"], plan["arena_bytes"], "{n} rev blocks");
            let (c, eo, ee) = revseg(&[
                "eval",
                "--segmentation",
                r["segmentation"].as_str().unwrap(),
                "--groundtruth",
                &labels,
                "--json",
            ]);
            assert_eq!(c, Some(0), "{eo}{ee}");
            let ev: Value = serde_json::from_str(&eo).unwrap();
            for k in ["adapted_rand_error", "voi_split", "voi_merge"] {
                assert!(
                    (num(r, k) - num(&ev, k)).abs() < 1e-9,
                    "{k}: table {} but eval {}",
                    r[k],
                    ev[k]
                );
            }
            let a = num(r, "adapted_rand_error");
            assert!(a > 0.0 && a <= 1.0, "{a}");
            let acc = num(r, "boundary_accuracy");
            assert!(acc > 0.0 && acc <= 1.0, "{acc}");
            assert!(num(r, "step_seconds") > 0.0);
            rands.push(a);
        }
        // Mean and sample standard deviation of two values, by hand.
        let m = (rands[0] + rands[1]) / 2.0;
        let sd = (rands[0] - rands[1]).abs() / 2f64.sqrt();
        assert!((num(&v["mean"], "adapted_rand_error") - m).abs() < 1e-12);
        assert!((num(&v["spread"], "adapted_rand_error") - sd).abs() < 1e-12);
    }
    let (base, rev) = (&variants[0], &variants[1]);
    let cmp = &j["comparisons"][0];
    let diff = num(&rev["mean"], "adapted_rand_error") - num(&base["mean"], "adapted_rand_error");
    assert!((num(cmp, "adapted_rand_difference") - diff).abs() < 1e-12);
    let spread =
        num(&rev["spread"], "adapted_rand_error").max(num(&base["spread"], "adapted_rand_error"));
    assert_eq!(
        cmp["adapted_rand_within_spread"].as_bool(),
        Some(diff.abs() <= spread)
    );
    // The reversible network needs less memory than storing every activation.
    assert!(num(&rev["mean"], "peak_mib") < num(&base["mean"], "peak_mib"));
    let png = std::fs::read(d.join("quality.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");

    // The markdown table of the same runs: one row per variant with the same adapted Rand mean.
    let o = std::fs::read_to_string(d.join("quality.md")).unwrap();
    for v in variants {
        let label = v["label"].as_str().unwrap();
        let row = o
            .lines()
            .find(|l| l.starts_with(&format!("| {label} |")))
            .unwrap_or_else(|| panic!("no row for {label} in\n{o}"));
        let m = format!("{:.4}", num(&v["mean"], "adapted_rand_error"));
        assert!(row.contains(&m), "{row} lacks {m}");
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn bad_variants_are_refused_with_the_fix() {
    let (c, _, e) = revseg(&["bench", "quality", "--variants", "0,x"]);
    assert_ne!(c, Some(0), "{e}");
    assert!(e.contains("--variants '0,x'"), "{e}");
    let (c, _, e) = revseg(&["bench", "quality", "--seeds", "0"]);
    assert_ne!(c, Some(0));
    assert!(e.contains("--seeds 0"), "{e}");
}

//! `revseg curves`: runs' metrics.csv read back and drawn; bad input named.

mod common;

use common::{decode_png, revseg};
use revseg::curves::{parse_metrics, trailing_mean, RUN_COLORS};

const HEADER: &str = "step,loss,lr,val_loss,val_boundary_accuracy,all_ones_accuracy,seconds";

/// A hand-made metrics.csv: training loss every step, validation at steps 2 and 4.
fn csv(loss: [f64; 4], val: [(f64, f64); 2]) -> String {
    let mut s = format!("{HEADER}\n");
    for (i, l) in loss.iter().enumerate() {
        let step = i + 1;
        match step {
            2 | 4 => {
                let (vl, va) = val[step / 2 - 1];
                s += &format!("{step},{l},5e-3,{vl},{va},0.8,{step}.0\n");
            }
            _ => s += &format!("{step},{l},5e-3,,,,{step}.0\n"),
        }
    }
    s
}

fn tmp(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("revseg_curves_{tag}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn parses_columns_by_name_and_skips_unmeasured_fields() {
    let c = parse_metrics(&csv([0.9, 0.7, 0.6, 0.5], [(0.8, 0.71), (0.55, 0.83)]), "m").unwrap();
    assert_eq!(c.loss, vec![(1.0, 0.9), (2.0, 0.7), (3.0, 0.6), (4.0, 0.5)]);
    assert_eq!(c.val_loss, vec![(2.0, 0.8), (4.0, 0.55)]);
    assert_eq!(c.val_boundary_accuracy, vec![(2.0, 0.71), (4.0, 0.83)]);
}

#[test]
fn trailing_mean_by_hand() {
    let p = [(1.0, 1.0), (2.0, 3.0), (3.0, 5.0), (4.0, 10.0)];
    // Window 2: 1, (1+3)/2, (3+5)/2, (5+10)/2.
    assert_eq!(
        trailing_mean(&p, 2),
        vec![(1.0, 1.0), (2.0, 2.0), (3.0, 4.0), (4.0, 7.5)]
    );
    assert_eq!(trailing_mean(&p, 1), p.to_vec());
}

#[test]
fn two_runs_drawn_in_their_colours() {
    let d = tmp("ok");
    for (run, loss) in [("a", [0.9, 0.7, 0.6, 0.5]), ("b", [0.95, 0.8, 0.62, 0.52])] {
        std::fs::create_dir_all(d.join(run)).unwrap();
        std::fs::write(
            d.join(run).join("metrics.csv"),
            csv(loss, [(0.8, 0.7), (0.6, 0.8)]),
        )
        .unwrap();
    }
    let out = d.join("c.png");
    let (a, b) = (d.join("a/metrics.csv"), d.join("b/metrics.csv"));
    let (code, stdout, stderr) = revseg(&[
        "curves",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--labels",
        "f32,bf16",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("1800x400"), "{stdout}");
    let (w, h, px) = decode_png(&std::fs::read(&out).unwrap());
    assert_eq!((w, h), (1800, 400));
    // Each run's colour appears in each of the three 600-pixel panels (legend and line).
    for colour in &RUN_COLORS[..2] {
        for panel in 0..3 {
            let n = (0..h)
                .flat_map(|y| (panel * 600..(panel + 1) * 600).map(move |x| (y, x)))
                .filter(|&(y, x)| &px[(y * w + x) * 3..(y * w + x) * 3 + 3] == colour)
                .count();
            assert!(n > 40, "colour {colour:?} in panel {panel}: {n} pixels");
        }
    }
    // A third run's colour is not drawn.
    assert!(!px.chunks(3).any(|p| p == RUN_COLORS[2]));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn bad_input_is_named() {
    let d = tmp("bad");
    let out = d.join("c.png");
    let o = out.to_str().unwrap();
    let missing = d.join("none/metrics.csv");
    let (code, _, err) = revseg(&["curves", missing.to_str().unwrap(), "--out", o]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("cannot read") && err.contains("none/metrics.csv"),
        "{err}"
    );

    let bad_header = d.join("h.csv");
    std::fs::write(&bad_header, "step,loss\n1,0.5\n").unwrap();
    let (code, _, err) = revseg(&["curves", bad_header.to_str().unwrap(), "--out", o]);
    assert_eq!(code, Some(2));
    assert!(err.contains("no 'val_loss' column"), "{err}");

    let bad_num = d.join("n.csv");
    std::fs::write(
        &bad_num,
        format!("{HEADER}\n1,0.5,5e-3,,,,1\n2,abc,5e-3,,,,2\n"),
    )
    .unwrap();
    let (code, _, err) = revseg(&["curves", bad_num.to_str().unwrap(), "--out", o]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("line 3") && err.contains("'abc'") && err.contains("'loss'"),
        "{err}"
    );

    let good = d.join("g.csv");
    std::fs::write(&good, csv([0.9, 0.7, 0.6, 0.5], [(0.8, 0.7), (0.6, 0.8)])).unwrap();
    let (code, _, err) = revseg(&[
        "curves",
        good.to_str().unwrap(),
        "--labels",
        "a,b",
        "--out",
        o,
    ]);
    assert_eq!(code, Some(2));
    assert!(err.contains("2 names for 1 metrics files"), "{err}");
    assert!(!out.exists());
    let _ = std::fs::remove_dir_all(&d);
}

//! Training curves of several runs on one picture: each run's metrics.csv (the columns
//! `revseg train` writes) read back and drawn as training loss, validation loss and validation
//! boundary accuracy, one panel each, one colour per run.

use crate::error::{Error, Result};
use crate::plot::{side_by_side, LinePlot, Series, BLUE, GREEN, ORANGE, PURPLE, RED};
use std::path::Path;

/// One run's curves, by step.
#[derive(Debug, Clone, PartialEq)]
pub struct Curves {
    pub loss: Vec<(f64, f64)>,
    pub val_loss: Vec<(f64, f64)>,
    pub val_boundary_accuracy: Vec<(f64, f64)>,
}

const COLUMNS: [&str; 4] = ["step", "loss", "val_loss", "val_boundary_accuracy"];

/// Parses a metrics.csv; `what` names it in errors. Columns are found by name, empty fields are
/// rows where that quantity was not measured (validation runs every `val_every` steps).
pub fn parse_metrics(text: &str, what: &str) -> Result<Curves> {
    let mut lines = text.lines().enumerate();
    let header: Vec<&str> = match lines.next() {
        Some((_, h)) => h.split(',').map(str::trim).collect(),
        None => {
            return Err(Error::Invalid(format!(
                "{what}: empty file; expected a metrics.csv written by revseg train"
            )))
        }
    };
    let mut idx = [0usize; 4];
    for (k, name) in COLUMNS.iter().enumerate() {
        idx[k] = header.iter().position(|h| h == name).ok_or_else(|| {
            Error::Invalid(format!(
                "{what}: no '{name}' column in the header '{}'; expected a metrics.csv written by revseg train (columns {})",
                header.join(","),
                COLUMNS.join(", ")
            ))
        })?;
    }
    let mut c = Curves {
        loss: vec![],
        val_loss: vec![],
        val_boundary_accuracy: vec![],
    };
    for (n, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        if f.len() != header.len() {
            return Err(Error::Invalid(format!(
                "{what}: line {}: {} fields where the header has {}",
                n + 1,
                f.len(),
                header.len()
            )));
        }
        let num = |k: usize| -> Result<Option<f64>> {
            let s = f[idx[k]];
            if s.is_empty() {
                return Ok(None);
            }
            s.parse::<f64>().map(Some).map_err(|_| {
                Error::Invalid(format!(
                    "{what}: line {}: '{s}' in column '{}' is not a number",
                    n + 1,
                    COLUMNS[k]
                ))
            })
        };
        let step =
            num(0)?.ok_or_else(|| Error::Invalid(format!("{what}: line {}: no step", n + 1)))?;
        for (k, dst) in [
            (1, &mut c.loss),
            (2, &mut c.val_loss),
            (3, &mut c.val_boundary_accuracy),
        ] {
            if let Some(v) = num(k)? {
                dst.push((step, v));
            }
        }
    }
    if c.loss.is_empty() {
        return Err(Error::Invalid(format!(
            "{what}: no rows with a training loss"
        )));
    }
    Ok(c)
}

/// Reads and parses a metrics.csv file.
pub fn read_metrics(path: &Path) -> Result<Curves> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Io(format!("cannot read {}: {e}", path.display())))?;
    parse_metrics(&text, &path.display().to_string())
}

/// Trailing mean over `window` points (1: unchanged): per-step losses of different runs
/// overlap as noise bands otherwise.
pub fn trailing_mean(points: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    let w = window.max(1);
    let mut sum = 0.0;
    points
        .iter()
        .enumerate()
        .map(|(i, &(x, y))| {
            sum += y;
            if i >= w {
                sum -= points[i - w].1;
            }
            (x, sum / (i + 1).min(w) as f64)
        })
        .collect()
}

/// One colour per run, in order.
pub const RUN_COLORS: [crate::plot::Rgb; 5] = [BLUE, ORANGE, GREEN, RED, PURPLE];

/// The three panels, each `w` x `h` pixels: (width, height, RGB pixels).
pub fn render(
    runs: &[(String, Curves)],
    smooth: usize,
    w: usize,
    h: usize,
) -> Result<(usize, usize, Vec<u8>)> {
    if runs.is_empty() || runs.len() > RUN_COLORS.len() {
        return Err(Error::Invalid(format!(
            "{} runs: curves draws 1 to {} runs on one picture",
            runs.len(),
            RUN_COLORS.len()
        )));
    }
    let panel =
        |title: String, y_label: &str, pick: &dyn Fn(&Curves) -> Vec<(f64, f64)>| LinePlot {
            title,
            x_label: "step".into(),
            y_label: y_label.into(),
            series: runs
                .iter()
                .zip(RUN_COLORS)
                .map(|((name, c), color)| Series {
                    name: name.clone(),
                    color,
                    points: pick(c),
                })
                .collect(),
            ..LinePlot::default()
        };
    let train_title = if smooth > 1 {
        format!("training loss (mean of {smooth} steps)")
    } else {
        "training loss".to_string()
    };
    let plots = [
        panel(train_title, "loss", &|c| trailing_mean(&c.loss, smooth)),
        panel("validation loss".into(), "loss", &|c| c.val_loss.clone()),
        panel("validation boundary accuracy".into(), "accuracy", &|c| {
            c.val_boundary_accuracy.clone()
        }),
    ];
    Ok(side_by_side(&plots, w, h))
}

/// Reads each run's metrics.csv and writes the panels as a PNG (temporary file, then rename).
pub fn write(files: &[(String, &Path)], smooth: usize, out: &Path) -> Result<(usize, usize)> {
    let runs = files
        .iter()
        .map(|(name, p)| Ok((name.clone(), read_metrics(p)?)))
        .collect::<Result<Vec<_>>>()?;
    let (w, h, px) = render(&runs, smooth, 600, 400)?;
    crate::volume::png::write(out, w, h, 3, &px)?;
    Ok((w, h))
}

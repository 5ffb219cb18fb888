//! `revseg curves`: the training curves of several runs (their metrics.csv) on one PNG.

use crate::error::{Error, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct CurvesArgs {
    /// metrics.csv files, one per run (as `revseg train` and `revseg demo` write them).
    #[arg(required = true)]
    pub metrics: Vec<PathBuf>,
    /// A name per run, comma-separated, in the order of the files (default: each file's folder).
    #[arg(long)]
    pub labels: Option<String>,
    /// Training loss as a trailing mean over this many steps (1: every step as logged).
    #[arg(long, default_value_t = 1)]
    pub smooth: usize,
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: &CurvesArgs) -> Result<()> {
    let labels: Vec<String> = match &a.labels {
        Some(l) => l.split(',').map(|s| s.trim().to_string()).collect(),
        None => a
            .metrics
            .iter()
            .map(|p| {
                p.parent()
                    .and_then(|d| d.file_name())
                    .map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into())
            })
            .collect(),
    };
    if labels.len() != a.metrics.len() {
        return Err(Error::Invalid(format!(
            "--labels '{}': {} names for {} metrics files; give one name per file",
            a.labels.as_deref().unwrap_or(""),
            labels.len(),
            a.metrics.len()
        )));
    }
    if a.smooth == 0 {
        return Err(Error::Invalid(
            "--smooth 0: the window is at least 1 step (1: no smoothing)".into(),
        ));
    }
    let files: Vec<(String, &std::path::Path)> = labels
        .into_iter()
        .zip(a.metrics.iter().map(|p| p.as_path()))
        .collect();
    let (w, h) = crate::curves::write(&files, a.smooth, &a.out)?;
    println!("curves: {} ({w}x{h})", a.out.display());
    Ok(())
}

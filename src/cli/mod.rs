//! Command-line front end: one module per subcommand.

pub mod bench;
pub mod eval;
pub mod gradcheck;
pub mod net;
pub mod plan;
pub mod segment;
pub mod synth;

use crate::error::{Error, Result};

/// Parse "D,H,W".
pub fn parse_patch(s: &str) -> Result<(usize, usize, usize)> {
    let v: Vec<usize> = s
        .split(',')
        .map(|p| p.trim().parse::<usize>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| {
            Error::Invalid(format!(
                "patch '{s}': expected three positive integers D,H,W, e.g. 18,160,160"
            ))
        })?;
    match v[..] {
        [d, h, w] if d > 0 && h > 0 && w > 0 => Ok((d, h, w)),
        _ => Err(Error::Invalid(format!(
            "patch '{s}': expected three positive integers D,H,W, e.g. 18,160,160"
        ))),
    }
}

/// The devices this build can run on. `emu` and `cuda` arrive with the CUDA backend.
pub fn check_device(name: &str) -> Result<()> {
    match name {
        "cpu" | "auto" => Ok(()),
        "emu" | "cuda" => Err(Error::Device(format!(
            "device '{name}' is not available in this build: the CUDA backend and its emulator are not built yet; use --device cpu"
        ))),
        d if d.starts_with("cuda:") => Err(Error::Device(format!(
            "device '{d}' is not available in this build: the CUDA backend is not built yet; use --device cpu"
        ))),
        d => Err(Error::Device(format!("unknown device '{d}'; choose cpu (or auto)"))),
    }
}

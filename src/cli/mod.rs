//! Command-line front end: one module per subcommand.

pub mod bench;
pub mod eval;
pub mod gradcheck;
pub mod net;
pub mod plan;
pub mod segment;
pub mod synth;

use crate::backend::device::{Device, DeviceSpec};
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

/// For commands that run on the CPU only (for now): accepts cpu and auto, and says so for the others.
pub fn check_device(name: &str) -> Result<()> {
    match crate::backend::device::parse(name)? {
        DeviceSpec::Cpu | DeviceSpec::Auto => Ok(()),
        _ => Err(Error::Device(format!(
            "device '{name}': this command runs on the CPU only so far; use --device cpu (gradcheck takes emu and cuda)"
        ))),
    }
}

/// For commands that run on any device: cpu, emu, cuda, cuda:N, or auto (the GPU when one opens).
pub fn select_device(name: &str) -> Result<Device> {
    crate::backend::device::select(name)
}

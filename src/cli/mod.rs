//! Command-line front end: one module per subcommand.

pub mod bench;
pub mod demo;
pub mod eval;
pub mod gradcheck;
pub mod net;
pub mod plan;
pub mod predict;
pub mod segment;
pub mod synth;
pub mod train;

use crate::backend::device::Device;
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

/// For commands that run on any device: cpu, emu, cuda, cuda:N, or auto (the GPU when one opens).
pub fn select_device(name: &str) -> Result<Device> {
    crate::backend::device::select(name)
}

/// Run `$body` with `$b` bound to the backend of a resolved device (f32 everywhere).
#[macro_export]
macro_rules! on_device {
    ($dev:expr, |$b:ident| $body:expr) => {
        match $dev {
            $crate::backend::device::Device::Cpu => {
                let $b = &$crate::backend::cpu::CpuBackend::<f32>::new();
                $body
            }
            $crate::backend::device::Device::Emu => {
                let $b = &$crate::backend::device::emu_backend();
                $body
            }
            $crate::backend::device::Device::Cuda(n) => {
                let $b = &$crate::backend::device::cuda_backend(n)?;
                $body
            }
        }
    };
}

/// Read an image volume and scale it to [0, 1] (u8 / 255, u16 / 65535, floats as they are).
pub fn read_image(spec: &str) -> Result<(Vec<f32>, (usize, usize, usize))> {
    use crate::volume::array::Dtype;
    let r = crate::volume::io::open_volume(spec)?;
    let shape = match r.shape() {
        [z, y, x] => (*z, *y, *x),
        s => {
            return Err(Error::shape(
                "image",
                format!("{spec}: expected a 3-D (z, y, x) volume, got shape {s:?}"),
            ))
        }
    };
    let data: Vec<f32> = match r.dtype() {
        Dtype::U8 => r
            .read_all::<u8>()?
            .data
            .iter()
            .map(|&v| v as f32 / 255.0)
            .collect(),
        Dtype::U16 => r
            .read_all::<u16>()?
            .data
            .iter()
            .map(|&v| v as f32 / 65535.0)
            .collect(),
        Dtype::F32 => r.read_all::<f32>()?.data,
        Dtype::F64 => r
            .read_all::<f64>()?
            .data
            .iter()
            .map(|&v| v as f32)
            .collect(),
        d => {
            return Err(Error::Value {
                what: spec.into(),
                detail: format!(
                    "image dtype {} is not supported: use uint8, uint16 or float",
                    d.name()
                ),
            })
        }
    };
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        return Err(Error::Value {
            what: spec.into(),
            detail: format!("image value at index {i} is not finite"),
        });
    }
    Ok((data, shape))
}

/// Read a label volume as u32 (u64 labels must fit).
pub fn read_labels(spec: &str) -> Result<(Vec<u32>, (usize, usize, usize))> {
    let r = crate::volume::io::open_volume(spec)?;
    let shape = match r.shape() {
        [z, y, x] => (*z, *y, *x),
        s => {
            return Err(Error::shape(
                "labels",
                format!("{spec}: expected a 3-D (z, y, x) volume, got shape {s:?}"),
            ))
        }
    };
    Ok((r.read_all::<u32>()?.data, shape))
}

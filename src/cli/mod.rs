//! Command-line front end: one module per subcommand.

pub mod bench;
pub mod blocks;
pub mod curves;
pub mod demo;
pub mod eval;
pub mod gradcheck;
pub mod net;
pub mod plan;
pub mod predict;
pub mod render;
pub mod segment;
pub mod segment_blocks;
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

/// Run `$body` with `$b` bound to the backend of a resolved device, in f32 or in a precision
/// already resolved for that device (`Precision::for_device`; the CPU runs f32).
#[macro_export]
macro_rules! on_device {
    ($dev:expr, $prec:expr, |$b:ident| $body:expr) => {
        match $dev {
            // bf16 storage runs on the byte-arena backend; f32 on the element arena.
            $crate::backend::device::Device::Cpu if $prec == $crate::precision::Precision::Bf16 => {
                let $b = &$crate::backend::cpu::mixed::CpuMixedBackend;
                $body
            }
            $crate::backend::device::Device::Cpu => {
                let $b = &$crate::backend::cpu::CpuBackend::<f32>::new();
                $body
            }
            $crate::backend::device::Device::Emu => {
                let $b = &$crate::backend::device::emu_backend_in($prec);
                $body
            }
            $crate::backend::device::Device::Cuda(n) => {
                let $b = &$crate::backend::device::cuda_backend_in(n, $prec)?;
                $body
            }
        }
    };
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

/// Shape (z, y, x) of a 3-D volume.
pub fn shape3(r: &crate::volume::io::VolumeReader, what: &str) -> Result<(usize, usize, usize)> {
    match r.shape() {
        [z, y, x] => Ok((*z, *y, *x)),
        s => Err(Error::shape(
            "volume",
            format!(
                "{} ({what}): expected a 3-D (z, y, x) volume, got shape {s:?}",
                r.spec()
            ),
        )),
    }
}

/// Sections z0..z0+d of an image volume scaled to [0, 1] (u8 / 255, u16 / 65535, floats as they
/// are); non-finite values are an error.
pub fn read_image_sections(
    r: &crate::volume::io::VolumeReader,
    z0: usize,
    d: usize,
) -> Result<Vec<f32>> {
    let (_, y, x) = shape3(r, "image")?;
    read_image_region(r, [z0, 0, 0], [d, y, x])
}

/// The box `off .. off + shape` of an image volume scaled as [`read_image_sections`] does.
pub fn read_image_region(
    r: &crate::volume::io::VolumeReader,
    off: [usize; 3],
    shape: [usize; 3],
) -> Result<Vec<f32>> {
    use crate::volume::array::Dtype;
    let (y, x) = (shape[1], shape[2]);
    let data: Vec<f32> = match r.dtype() {
        Dtype::U8 => r
            .read_region::<u8>(&off, &shape)?
            .data
            .iter()
            .map(|&v| v as f32 / 255.0)
            .collect(),
        Dtype::U16 => r
            .read_region::<u16>(&off, &shape)?
            .data
            .iter()
            .map(|&v| v as f32 / 65535.0)
            .collect(),
        Dtype::F16 | Dtype::F32 => r.read_region::<f32>(&off, &shape)?.data,
        Dtype::F64 => r
            .read_region::<f64>(&off, &shape)?
            .data
            .iter()
            .map(|&v| v as f32)
            .collect(),
        dt => {
            return Err(Error::Value {
                what: r.spec().into(),
                detail: format!(
                    "image dtype {} is not supported: use uint8, uint16 or float",
                    dt.name()
                ),
            })
        }
    };
    crate::train::augment::check_image_range(r.spec(), &data, |i| {
        let (zz, yy, xx) = (off[0] + i / (y * x), off[1] + i / x % y, off[2] + i % x);
        format!("at z {zz}, y {yy}, x {xx}")
    })?;
    Ok(data)
}

/// Read a whole image volume scaled to [0, 1].
pub fn read_image(spec: &str) -> Result<(Vec<f32>, (usize, usize, usize))> {
    let r = crate::volume::io::open_volume(spec)?;
    let shape = shape3(&r, "image")?;
    Ok((read_image_sections(&r, 0, shape.0)?, shape))
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

/// The file of a volume spec, for comparing with outputs.
pub fn spec_file(spec: &str) -> Result<std::path::PathBuf> {
    Ok(crate::volume::io::VolumeSpec::parse(spec)?
        .file()
        .to_path_buf())
}

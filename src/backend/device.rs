//! Device selection: `cpu | emu | cuda | cuda:N | auto`, and a description of what this machine has
//! (for `revseg info`).

use super::gpu::{cuda, table, CudaLauncher, EmuLauncher, GpuBackend, Launcher};
use crate::error::{Error, Result};
use crate::precision::Precision;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    /// The CUDA kernels compiled for the CPU.
    Emu,
    Cuda(usize),
    /// The first GPU where a driver is present and a context opens, else the CPU.
    Auto,
}

/// A device ready to run on, `Auto` resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Emu,
    Cuda(usize),
}

pub fn parse(s: &str) -> Result<DeviceSpec> {
    match s.trim() {
        "cpu" => Ok(DeviceSpec::Cpu),
        "emu" => Ok(DeviceSpec::Emu),
        "cuda" => Ok(DeviceSpec::Cuda(0)),
        "auto" => Ok(DeviceSpec::Auto),
        d => match d.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => Ok(DeviceSpec::Cuda(n)),
            _ => Err(Error::Device(format!(
                "unknown device '{d}'; choose cpu, emu, cuda, cuda:N or auto"
            ))),
        },
    }
}

/// Resolves `auto` (printing a one-line notice when it falls back to the CPU) and checks that a
/// named GPU can be opened (a context only: the kernels load once, with the backend).
pub fn resolve(spec: DeviceSpec) -> Result<Device> {
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Emu => Ok(Device::Emu),
        DeviceSpec::Cuda(n) => {
            cuda::check_device(n)?;
            Ok(Device::Cuda(n))
        }
        DeviceSpec::Auto => {
            if !cuda::driver_present() {
                eprintln!("note: no CUDA driver found; running on the CPU");
                return Ok(Device::Cpu);
            }
            match cuda::check_device(0) {
                Ok(()) => Ok(Device::Cuda(0)),
                Err(e) => {
                    eprintln!("note: no usable GPU ({e}); running on the CPU");
                    Ok(Device::Cpu)
                }
            }
        }
    }
}

/// Parse and resolve in one step.
pub fn select(s: &str) -> Result<Device> {
    resolve(parse(s)?)
}

pub fn emu_backend() -> GpuBackend<EmuLauncher> {
    emu_backend_in(Precision::F32)
}

pub fn cuda_backend(ordinal: usize) -> Result<GpuBackend<CudaLauncher>> {
    cuda_backend_in(ordinal, Precision::F32)
}

/// The emulator running convolutions in `precision` (checked by `Precision::for_device`).
pub fn emu_backend_in(precision: Precision) -> GpuBackend<EmuLauncher> {
    GpuBackend::with_precision(EmuLauncher::new(), precision)
}

pub fn cuda_backend_in(ordinal: usize, precision: Precision) -> Result<GpuBackend<CudaLauncher>> {
    Ok(GpuBackend::with_precision(
        CudaLauncher::new(ordinal)?,
        precision,
    ))
}

/// Devices, memory, compute capability, driver version and where the kernels' PTX comes from.
pub fn device_info() -> String {
    let mut s = format!(
        "cpu: {} threads\nemu: {}\n",
        rayon::current_num_threads(),
        EmuLauncher::new().name()
    );
    s += &format!(
        "kernels: {} in {} files; {}\n",
        table::KERNELS.len(),
        table::SOURCES.len(),
        table::PTX_COMPILER
            .map(|c| format!(
                "cubins for sm_80 and sm_90 and PTX for compute_80 and compute_90 embedded ({} cubins), built by {c}",
                table::CUBIN.len()
            ))
            .unwrap_or_else(|| "no cubin or PTX embedded (no nvcc at build time): NVRTC at first use".into())
    );
    if !cuda::driver_present() {
        s += "cuda: no driver (libcuda not found)\n";
        return s;
    }
    match cuda::driver_version() {
        Ok((ma, mi)) => s += &format!("cuda: driver supports CUDA {ma}.{mi}\n"),
        Err(e) => s += &format!("cuda: driver present but not usable: {e}\n"),
    }
    for i in 0..cuda::device_count() {
        match CudaLauncher::new(i) {
            Ok(l) => {
                let ctx = l.context();
                let (ma, mi) = ctx.compute_capability().unwrap_or((0, 0));
                let (free, total) = ctx.mem_get_info().unwrap_or((0, 0));
                let lim = l.device_limits();
                s += &format!(
                    "cuda:{i}: {}, compute capability {ma}.{mi}, {} SMs, shared memory {} KiB per block (opt-in) and {} KiB per SM, {} MiB free of {} MiB, kernels: {}\n",
                    ctx.name().unwrap_or_else(|_| "?".into()),
                    lim.sm_count,
                    lim.max_shared_per_block / 1024,
                    lim.shared_per_sm / 1024,
                    free >> 20,
                    total >> 20,
                    l.ptx_source()
                );
            }
            Err(e) => s += &format!("cuda:{i}: {e}\n"),
        }
    }
    s
}

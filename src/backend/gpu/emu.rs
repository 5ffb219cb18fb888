//! The emulator launcher: kernels/*.cu compiled for the CPU (build.rs), run by
//! kernels/emu/runtime.cpp. Device memory is host memory; a launch returns when the grid has run.

use super::Launcher;
use crate::error::{Error, Result};
use std::ffi::{c_char, c_int, c_void, CString};

extern "C" {
    fn emu_launch(
        name: *const c_char,
        grid: *const u32,
        block: *const u32,
        shared_bytes: u32,
        args: *const c_void,
        args_size: usize,
    ) -> c_int;
    fn emu_kernel_args_size(name: *const c_char) -> usize;
    fn emu_threads() -> u32;
}

#[derive(Clone, Copy, Debug, Default)]
pub struct EmuLauncher;

pub struct EmuBuf {
    data: Vec<f32>,
}

impl EmuLauncher {
    pub fn new() -> Self {
        EmuLauncher
    }

    /// The argument-struct size the emulator's registry has for a kernel (None: no such kernel).
    pub fn args_size(name: &str) -> Option<usize> {
        let c = CString::new(name).ok()?;
        // SAFETY: a NUL-terminated string; the function only reads it.
        let n = unsafe { emu_kernel_args_size(c.as_ptr()) };
        (n > 0).then_some(n)
    }
}

fn range_check(op: &'static str, len: usize, offset: usize, n: usize) -> Result<()> {
    if offset.checked_add(n).is_none_or(|end| end > len) {
        return Err(Error::region(
            op,
            format!("{n} values at {offset} lie outside the buffer of {len} elements"),
        ));
    }
    Ok(())
}

impl Launcher for EmuLauncher {
    type Buf = EmuBuf;

    fn name(&self) -> String {
        // SAFETY: no arguments; reads an environment variable and the core count.
        format!("emu (CUDA kernels on {} CPU threads)", unsafe {
            emu_threads()
        })
    }

    fn alloc(&self, len: usize) -> Result<EmuBuf> {
        let mut data = Vec::new();
        data.try_reserve_exact(len).map_err(|_| {
            Error::Device(format!(
                "out of host memory for the emulator's arena of {} MiB",
                (len * 4) >> 20
            ))
        })?;
        data.resize(len, 0.0);
        Ok(EmuBuf { data })
    }

    fn upload(&self, buf: &mut EmuBuf, offset: usize, src: &[f32]) -> Result<()> {
        range_check("upload", buf.data.len(), offset, src.len())?;
        buf.data[offset..offset + src.len()].copy_from_slice(src);
        Ok(())
    }

    fn download(&self, buf: &EmuBuf, offset: usize, dst: &mut [f32]) -> Result<()> {
        range_check("download", buf.data.len(), offset, dst.len())?;
        dst.copy_from_slice(&buf.data[offset..offset + dst.len()]);
        Ok(())
    }

    fn device_ptr(&self, buf: &mut EmuBuf) -> u64 {
        buf.data.as_mut_ptr() as u64
    }

    fn launch(
        &self,
        kernel: &str,
        grid: [u32; 3],
        block: [u32; 3],
        shared_bytes: u32,
        args: &[u8],
    ) -> Result<()> {
        let name = CString::new(kernel)
            .map_err(|_| Error::Device(format!("bad kernel name {kernel:?}")))?;
        // SAFETY: name is NUL-terminated; grid and block are 3 u32 each; args points to args.len()
        // bytes. The addresses inside args were made by GpuBackend from buffers that the caller
        // borrows mutably for this call, with every region checked against the arena's bounds.
        let status = unsafe {
            emu_launch(
                name.as_ptr(),
                grid.as_ptr(),
                block.as_ptr(),
                shared_bytes,
                args.as_ptr() as *const c_void,
                args.len(),
            )
        };
        let why = match status {
            0 => return Ok(()),
            1 => "no such kernel".to_string(),
            2 => format!(
                "argument struct of {} bytes, the kernel expects {:?}",
                args.len(),
                Self::args_size(kernel)
            ),
            3 => "the kernel calls __syncthreads but is declared with REVSEG_KERNEL (use REVSEG_KERNEL_SYNC)".into(),
            4 => format!("bad launch configuration grid {grid:?} block {block:?}"),
            5 => format!("{shared_bytes} bytes of dynamic shared memory is over the 48 KiB limit"),
            s => format!("status {s}"),
        };
        Err(Error::Device(format!("emulator: kernel {kernel}: {why}")))
    }
}

//! The emulator launcher: kernels/*.cu compiled for the CPU (build.rs), run by
//! kernels/emu/runtime.cpp. Device memory is host memory; a launch returns when the grid has run.

use super::{DeviceLimits, Launcher};
use crate::error::{Error, Result};
use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::Mutex;

/// kernels/emu/runtime.cpp's EmuOptions.
#[repr(C)]
struct EmuOptions {
    schedule: c_int,
    check: c_int,
    seed: u64,
    regions: *const u64,
    region_count: usize,
    max_shared: u32,
}

extern "C" {
    #[allow(clippy::too_many_arguments)]
    fn emu_launch(
        name: *const c_char,
        grid: *const u32,
        block: *const u32,
        shared_bytes: u32,
        args: *const c_void,
        args_size: usize,
        opt: *const EmuOptions,
        msg: *mut c_char,
        msg_cap: usize,
    ) -> c_int;
    fn emu_kernel_args_size(name: *const c_char) -> usize;
    fn emu_threads() -> u32;
    fn emu_register_buffer(p: *const c_void, bytes: usize);
    fn emu_unregister_buffer(p: *const c_void);
}

/// The order in which the threads of a block run between two barriers (and blocks are handed
/// out). Kernels are deterministic by design, so two schedules giving different bits is a race.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schedule {
    Ascending,
    Descending,
    /// A fresh seeded permutation per barrier interval and block.
    Random(u64),
}

impl Schedule {
    /// `ascending`, `descending` or `random:SEED`, as REVSEG_EMU_SCHEDULE takes it.
    pub fn parse(s: &str) -> Result<Schedule> {
        match s {
            "ascending" => Ok(Schedule::Ascending),
            "descending" => Ok(Schedule::Descending),
            _ => s
                .strip_prefix("random:")
                .and_then(|n| n.parse().ok())
                .map(Schedule::Random)
                .ok_or_else(|| {
                    Error::Device(format!(
                        "REVSEG_EMU_SCHEDULE={s:?}: choose ascending, descending or random:SEED (an integer)"
                    ))
                }),
        }
    }
}

/// How the emulator runs kernels: the schedule, and whether every launch is checked for races,
/// out-of-bounds accesses and uninitialised shared memory (slower: every access is looked at).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmuConfig {
    pub schedule: Schedule,
    pub check: bool,
}

impl EmuConfig {
    /// From REVSEG_EMU_SCHEDULE (default ascending) and REVSEG_EMU_RACECHECK=1.
    pub fn from_env() -> Result<EmuConfig> {
        let schedule = match std::env::var("REVSEG_EMU_SCHEDULE") {
            Ok(s) => Schedule::parse(&s)?,
            Err(_) => Schedule::Ascending,
        };
        let check = std::env::var("REVSEG_EMU_RACECHECK").is_ok_and(|v| v == "1");
        Ok(EmuConfig { schedule, check })
    }
}

#[derive(Debug)]
pub struct EmuLauncher {
    config: std::result::Result<EmuConfig, String>,
    /// (address, bytes) of every region the current op handed to its kernels.
    regions: Mutex<Vec<(u64, u64)>>,
    /// The device emulated: an H200's unless a test sets others.
    limits: DeviceLimits,
}

/// f32 words of NaN before and after every buffer: an access that runs off a buffer lands in them
/// (reported by the checks, never outside the allocation).
const GUARD: usize = 16 * 1024;

pub struct EmuBuf {
    data: Vec<f32>,
}

impl Drop for EmuBuf {
    fn drop(&mut self) {
        // SAFETY: the address registered in alloc; the runtime only compares addresses.
        unsafe { emu_unregister_buffer(self.data.as_ptr() as *const c_void) };
    }
}

impl Default for EmuLauncher {
    fn default() -> Self {
        Self::new()
    }
}

impl EmuLauncher {
    /// Configured from the environment; a bad REVSEG_EMU_SCHEDULE fails the first launch.
    pub fn new() -> Self {
        let config = EmuConfig::from_env().map_err(|e| e.to_string());
        EmuLauncher {
            config,
            regions: Mutex::new(Vec::new()),
            limits: DeviceLimits::H200,
        }
    }

    pub fn with_config(config: EmuConfig) -> Self {
        EmuLauncher {
            config: Ok(config),
            regions: Mutex::new(Vec::new()),
            limits: DeviceLimits::H200,
        }
    }

    /// The same emulator reporting another device's SM count and shared-memory limits (at most
    /// an H200's 227 KiB per block: what the emulator's shared-memory arena holds).
    pub fn with_limits(mut self, limits: DeviceLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The argument-struct size the emulator's registry has for a kernel (None: no such kernel).
    pub fn args_size(name: &str) -> Option<usize> {
        let c = CString::new(name).ok()?;
        // SAFETY: a NUL-terminated string; the function only reads it.
        let n = unsafe { emu_kernel_args_size(c.as_ptr()) };
        (n > 0).then_some(n)
    }

    fn regions(&self) -> std::sync::MutexGuard<'_, Vec<(u64, u64)>> {
        self.regions.lock().unwrap_or_else(|e| e.into_inner())
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
        let threads = unsafe { emu_threads() };
        let checks = match &self.config {
            Ok(c) if c.check => "checked",
            _ => "unchecked",
        };
        format!(
            "emu (CUDA kernels on {threads} CPU threads, {checks}, as a device of {} SMs and {} KiB shared memory per block)",
            self.limits.sm_count,
            self.limits.max_shared_per_block / 1024
        )
    }

    fn alloc(&self, len: usize) -> Result<EmuBuf> {
        let mut data = Vec::new();
        data.try_reserve_exact(len).map_err(|_| {
            Error::Device(format!(
                "out of host memory for the emulator's arena of {} MiB",
                (len * 4) >> 20
            ))
        })?;
        data.resize(len + 2 * GUARD, f32::NAN);
        // SAFETY: the runtime keeps the address range only to classify accesses.
        unsafe { emu_register_buffer(data.as_ptr() as *const c_void, 4 * data.len()) };
        Ok(EmuBuf { data })
    }

    fn upload(&self, buf: &mut EmuBuf, offset: usize, src: &[f32]) -> Result<()> {
        range_check("upload", buf.data.len() - 2 * GUARD, offset, src.len())?;
        let at = GUARD + offset;
        buf.data[at..at + src.len()].copy_from_slice(src);
        Ok(())
    }

    fn download(&self, buf: &EmuBuf, offset: usize, dst: &mut [f32]) -> Result<()> {
        range_check("download", buf.data.len() - 2 * GUARD, offset, dst.len())?;
        let at = GUARD + offset;
        dst.copy_from_slice(&buf.data[at..at + dst.len()]);
        Ok(())
    }

    fn device_ptr(&self, buf: &mut EmuBuf) -> u64 {
        buf.data[GUARD..].as_mut_ptr() as u64
    }

    fn limits(&self) -> DeviceLimits {
        self.limits
    }

    fn clear_regions(&self) {
        self.regions().clear();
    }

    fn note_region(&self, ptr: u64, len: usize) {
        let mut r = self.regions();
        let bytes = 4 * len as u64;
        if !r.contains(&(ptr, bytes)) {
            r.push((ptr, bytes));
        }
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
        let config = self.config.clone().map_err(Error::Device)?;
        let regions: Vec<u64> = self.regions().iter().flat_map(|&(p, b)| [p, b]).collect();
        let (schedule, seed) = match config.schedule {
            Schedule::Ascending => (0, 0),
            Schedule::Descending => (1, 0),
            Schedule::Random(s) => (2, s),
        };
        let opt = EmuOptions {
            schedule,
            check: config.check as c_int,
            seed,
            regions: regions.as_ptr(),
            region_count: regions.len() / 2,
            max_shared: self.limits.max_shared_per_block,
        };
        let mut msg = vec![0u8; 2048];
        // SAFETY: name is NUL-terminated; grid and block are 3 u32 each; args points to args.len()
        // bytes; msg has msg.len() bytes. The addresses inside args were made by GpuBackend from
        // buffers that the caller borrows mutably for this call, with every region checked against
        // the arena's bounds (and an access that runs past them lands in a guard zone).
        let status = unsafe {
            emu_launch(
                name.as_ptr(),
                grid.as_ptr(),
                block.as_ptr(),
                shared_bytes,
                args.as_ptr() as *const c_void,
                args.len(),
                &opt,
                msg.as_mut_ptr() as *mut c_char,
                msg.len(),
            )
        };
        let report = String::from_utf8_lossy(&msg[..msg.iter().position(|&b| b == 0).unwrap_or(0)])
            .into_owned();
        let why = match status {
            0 => return Ok(()),
            1 => "no such kernel".to_string(),
            2 => format!(
                "argument struct of {} bytes, the kernel expects {:?}",
                args.len(),
                Self::args_size(kernel)
            ),
            3 => "the kernel calls __syncthreads or a warp collective but is declared with REVSEG_KERNEL (use REVSEG_KERNEL_SYNC)".into(),
            4 => format!("bad launch configuration grid {grid:?} block {block:?}"),
            5 if !report.is_empty() => report,
            5 => format!(
                "{shared_bytes} bytes of dynamic shared memory is over the device's {} bytes per block",
                self.limits.max_shared_per_block
            ),
            6 => format!("check failed: {report}"),
            s => format!("status {s}"),
        };
        Err(Error::Device(format!("emulator: kernel {kernel}: {why}")))
    }
}

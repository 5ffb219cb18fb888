//! The CUDA launcher: one context and one stream on one GPU, the arena as one device allocation,
//! every kernel module loaded at creation: the embedded cubin of the device's architecture (sm_90
//! for 9.x, sm_80 for 8.x: the machine code ptxas made at build time, the code kernel-report and
//! the emulator's parity tests speak of), else the embedded PTX JIT-compiled by the driver (compute_90
//! for 10.x and newer; also where REVSEG_CUDA_IMAGE=ptx, or a cubin fails to load), or PTX compiled
//! by NVRTC from the embedded sources where the build had no nvcc. A module that fails to load is
//! reported with the driver's JIT error and info logs. The SM count and shared-memory limits come
//! from the device's attributes. libcuda is loaded at run time: a machine without it gets an error,
//! never a panic (cudarc panics on first use of a missing library, so `is_culib_present` comes
//! first).

use super::table;
use super::{DeviceLimits, Launcher};
use crate::error::{Error, Result};
use cudarc::driver::{result, sys, CudaContext};
use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::{Arc, Mutex};

pub struct CudaLauncher {
    ctx: Arc<CudaContext>,
    stream: Arc<cudarc::driver::CudaStream>,
    funcs: HashMap<&'static str, sys::CUfunction>,
    modules: Vec<sys::CUmodule>,
    ordinal: usize,
    arch: u32,
    ptx_source: String,
    limits: DeviceLimits,
    /// Dynamic shared memory each kernel has been opted in to beyond the default 48 KiB.
    opted_in: Mutex<HashMap<&'static str, u32>>,
}

/// Dynamic shared memory a kernel may use without opting in (CUDA's default per block).
const DEFAULT_DYNAMIC_SHARED: u32 = 48 * 1024;

pub struct CudaBuf {
    ptr: sys::CUdeviceptr,
    len: usize,
    ctx: Arc<CudaContext>,
}

impl Drop for CudaBuf {
    fn drop(&mut self) {
        if self.ptr != 0 && self.ctx.bind_to_thread().is_ok() {
            // SAFETY: allocated by malloc_sync in this context; GpuBackend synchronises before it
            // drops a buffer that queued kernels may still use.
            unsafe {
                let _ = result::free_sync(self.ptr);
            }
        }
    }
}

fn dev_err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Device(format!("CUDA: {what}: {e:?}"))
}

/// Whether the CUDA driver library can be loaded (no GPU is touched).
pub fn driver_present() -> bool {
    // SAFETY: only tries to open the library.
    unsafe { sys::is_culib_present() }
}

/// Whether device `ordinal` exists and a context opens on it, without loading any kernel (the
/// launcher built afterwards loads them once).
pub fn check_device(ordinal: usize) -> Result<()> {
    if !driver_present() {
        return Err(no_driver());
    }
    let count = CudaContext::device_count()
        .map_err(|e| dev_err("initialising the driver", e))?
        .max(0) as usize;
    if ordinal >= count {
        return Err(Error::Device(format!(
            "CUDA device {ordinal} does not exist ({count} device(s) found)"
        )));
    }
    CudaContext::new(ordinal).map_err(|e| dev_err("opening the device", e))?;
    Ok(())
}

/// The driver's CUDA version as (major, minor).
pub fn driver_version() -> Result<(i32, i32)> {
    if !driver_present() {
        return Err(no_driver());
    }
    let mut v = 0;
    // SAFETY: the library is present; the call writes one int.
    unsafe { sys::cuInit(0) }
        .result()
        .map_err(|e| dev_err("cuInit", e))?;
    unsafe { sys::cuDriverGetVersion(&mut v) }
        .result()
        .map_err(|e| dev_err("driver version", e))?;
    Ok((v / 1000, (v % 1000) / 10))
}

/// Number of CUDA devices (0 where there is no driver).
pub fn device_count() -> usize {
    if !driver_present() {
        return 0;
    }
    CudaContext::device_count().map_or(0, |n| n.max(0) as usize)
}

fn no_driver() -> Error {
    Error::Device(
        "no CUDA driver (libcuda) on this machine; use --device cpu or --device emu".into(),
    )
}

/// The PTX of one kernel file: embedded from nvcc, else compiled now by NVRTC.
fn ptx_for(file: &str, arch: u32) -> Result<String> {
    if let Some((_, _, ptx)) = table::PTX.iter().find(|(f, a, _)| *f == file && *a == arch) {
        return Ok(ptx.to_string());
    }
    // SAFETY: only tries to open the library.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(Error::Device(format!(
            "this build has no PTX (no nvcc when it was built) and no NVRTC library was found to compile kernels/{file}.cu; rebuild with nvcc (scripts/test installs it) or install libnvrtc"
        )));
    }
    let (_, src) = table::SOURCES
        .iter()
        .find(|(f, _)| *f == file)
        .ok_or_else(|| Error::Device(format!("no embedded source for kernels/{file}.cu")))?;
    // NVRTC gets one translation unit: the shared headers pasted in place of their includes
    // (without their include guards, which a main file must not have); intrinsics.cuh first, as it
    // includes common.cuh itself.
    let unit = src
        .replace(
            "#include \"intrinsics.cuh\"",
            &table::INTRINSICS.replace("#pragma once", ""),
        )
        .replace(
            "#include \"common.cuh\"",
            &table::COMMON.replace("#pragma once", ""),
        );
    let arch_opt: &'static str = if arch >= 90 {
        "compute_90"
    } else {
        "compute_80"
    };
    let opts = cudarc::nvrtc::CompileOptions {
        arch: Some(arch_opt),
        options: vec!["--std=c++17".into()],
        ..Default::default()
    };
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(unit, opts)
        .map_err(|e| Error::Device(format!("NVRTC failed on kernels/{file}.cu: {e:?}")))?;
    Ok(ptx.to_src())
}

/// The embedded cubin of one kernel file for the device's architecture: sm_90 runs on 9.x and
/// sm_80 on 8.x (a cubin runs on its major version, same or newer minor); none for other devices.
fn cubin_for(file: &str, cc: (i32, i32)) -> Option<&'static [u8]> {
    let arch = match cc.0 {
        9 => 90,
        8 => 80,
        _ => return None,
    };
    table::CUBIN
        .iter()
        .find(|(f, a, _)| *f == file && *a == arch)
        .map(|(_, _, b)| *b)
}

/// Which images to load: REVSEG_CUDA_IMAGE=ptx forces the PTX (the driver's JIT) where a cubin
/// would be used; `cubin` (or unset) prefers the cubin.
fn prefer_cubin() -> Result<bool> {
    match std::env::var("REVSEG_CUDA_IMAGE").as_deref() {
        Err(_) | Ok("") | Ok("cubin") => Ok(true),
        Ok("ptx") => Ok(false),
        Ok(v) => Err(Error::Device(format!(
            "REVSEG_CUDA_IMAGE={v:?}: choose cubin (the default) or ptx"
        ))),
    }
}

/// cuModuleLoadDataEx with the JIT's error and info logs: a cubin or a NUL-terminated PTX image.
/// On failure the error carries both logs (what ptxas inside the driver said).
fn load_module(image: &[u8], what: &str) -> Result<sys::CUmodule> {
    const LOG: usize = 16 * 1024;
    let mut error_log = vec![0u8; LOG];
    let mut info_log = vec![0u8; LOG];
    let mut options = [
        sys::CUjit_option::CU_JIT_ERROR_LOG_BUFFER,
        sys::CUjit_option::CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES,
        sys::CUjit_option::CU_JIT_INFO_LOG_BUFFER,
        sys::CUjit_option::CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES,
        sys::CUjit_option::CU_JIT_LOG_VERBOSE,
    ];
    // The driver reads scalar option values from the pointer-sized slot itself.
    let scalar = std::ptr::without_provenance_mut::<c_void>;
    let mut values: [*mut c_void; 5] = [
        error_log.as_mut_ptr() as *mut c_void,
        scalar(LOG),
        info_log.as_mut_ptr() as *mut c_void,
        scalar(LOG),
        scalar(1),
    ];
    let mut module: sys::CUmodule = std::ptr::null_mut();
    // SAFETY: the image outlives the call (PTX NUL-terminated by the caller); the log buffers have
    // the sizes given; the context is current.
    let r = unsafe {
        sys::cuModuleLoadDataEx(
            &mut module,
            image.as_ptr() as *const c_void,
            options.len() as u32,
            options.as_mut_ptr(),
            values.as_mut_ptr(),
        )
    };
    if r == sys::CUresult::CUDA_SUCCESS {
        return Ok(module);
    }
    let text = |b: &[u8]| {
        String::from_utf8_lossy(&b[..b.iter().position(|&c| c == 0).unwrap_or(b.len())])
            .trim()
            .to_string()
    };
    let (err, info) = (text(&error_log), text(&info_log));
    Err(Error::Device(format!(
        "CUDA: loading {what}: {r:?}; JIT error log: {}; JIT info log: {}",
        if err.is_empty() { "(empty)" } else { &err },
        if info.is_empty() { "(empty)" } else { &info }
    )))
}

/// The device's SM count and shared-memory limits.
fn query_limits(ctx: &CudaContext) -> Result<DeviceLimits> {
    use sys::CUdevice_attribute as A;
    let get = |a: A| -> Result<u32> {
        ctx.attribute(a)
            .map(|v| v.max(0) as u32)
            .map_err(|e| dev_err(&format!("device attribute {a:?}"), e))
    };
    Ok(DeviceLimits {
        sm_count: get(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
        max_shared_per_block: get(A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?,
        shared_per_sm: get(A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR)?,
    })
}

impl CudaLauncher {
    /// Opens device `ordinal` and loads every kernel.
    pub fn new(ordinal: usize) -> Result<Self> {
        // The driver's own error, not "0 devices": a driver/library mismatch must say so.
        check_device(ordinal)?;
        let ctx = CudaContext::new(ordinal).map_err(|e| dev_err("opening the device", e))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| dev_err("compute capability", e))?;
        let cc = (major * 10 + minor) as u32;
        let arch = if cc >= 90 {
            90
        } else if cc >= 80 {
            80
        } else {
            return Err(Error::Device(format!(
                "CUDA device {ordinal} has compute capability {major}.{minor}; the kernels need 8.0 or newer"
            )));
        };
        let stream = ctx
            .new_stream()
            .map_err(|e| dev_err("creating a stream", e))?;
        let limits = query_limits(&ctx)?;
        let use_cubin = prefer_cubin()?;
        let mut me = CudaLauncher {
            ctx,
            stream,
            funcs: HashMap::new(),
            modules: Vec::new(),
            ordinal,
            arch,
            ptx_source: String::new(),
            limits,
            opted_in: Mutex::new(HashMap::new()),
        };
        let mut files: Vec<&str> = table::KERNELS.iter().map(|k| k.1).collect();
        files.dedup();
        // What was loaded, file by file: "sm_90 cubin", "compute_90 PTX (JIT)", ...
        let mut loaded: Vec<String> = Vec::new();
        for file in files {
            let mut cubin_error = None;
            let mut module = None;
            if let Some(cubin) = cubin_for(file, (major, minor)).filter(|_| use_cubin) {
                match load_module(cubin, &format!("the sm_{arch} cubin of kernels/{file}.cu")) {
                    Ok(m) => {
                        module = Some(m);
                        loaded.push(format!("sm_{arch} cubin"));
                    }
                    // The PTX may still load (a driver that refuses the cubin's ELF version):
                    // say so, and try it.
                    Err(e) => cubin_error = Some(e.to_string()),
                }
            }
            let module = match module {
                Some(m) => m,
                None => {
                    let ptx = ptx_for(file, arch)?;
                    let image = CString::new(ptx)
                        .map_err(|_| Error::Device(format!("PTX of {file} contains a NUL byte")))?;
                    let m = load_module(
                        image.as_bytes_with_nul(),
                        &format!("the compute_{arch} PTX of kernels/{file}.cu"),
                    )
                    .map_err(|e| match &cubin_error {
                        Some(c) => Error::Device(format!("{c}; then {e}")),
                        None => e,
                    })?;
                    loaded.push(match (&cubin_error, table::PTX_COMPILER) {
                        (Some(c), _) => {
                            format!("compute_{arch} PTX (JIT) after the cubin failed: {c}")
                        }
                        (None, Some(_)) => format!("compute_{arch} PTX (JIT)"),
                        (None, None) => format!("compute_{arch} PTX from NVRTC (JIT)"),
                    });
                    m
                }
            };
            me.modules.push(module);
            for (name, _, _, _) in table::KERNELS.iter().filter(|k| k.1 == file) {
                let cname = CString::new(*name).unwrap();
                // SAFETY: the module was just loaded and stays loaded while `me` lives.
                let func = unsafe { result::module::get_function(module, cname) }
                    .map_err(|e| dev_err(&format!("kernel {name}"), e))?;
                me.funcs.insert(name, func);
            }
        }
        loaded.dedup();
        let compiler = table::PTX_COMPILER.unwrap_or("NVRTC at run time");
        me.ptx_source = format!("{}, built by {compiler}", loaded.join("; "));
        Ok(me)
    }

    /// The device's SM count and shared-memory limits, as queried.
    pub fn device_limits(&self) -> DeviceLimits {
        self.limits
    }

    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// 80 or 90: which embedded cubin or PTX was loaded.
    pub fn arch(&self) -> u32 {
        self.arch
    }

    /// What was loaded (cubin or PTX JIT, and why) and which compiler built it.
    pub fn ptx_source(&self) -> &str {
        &self.ptx_source
    }

    /// Opts `kernel` in to `bytes` of dynamic shared memory where that is beyond the default.
    fn opt_in_shared(&self, kernel: &'static str, f: sys::CUfunction, bytes: u32) -> Result<()> {
        if bytes <= DEFAULT_DYNAMIC_SHARED {
            return Ok(());
        }
        if bytes > self.limits.max_shared_per_block {
            return Err(Error::Device(format!(
                "CUDA: kernel {kernel}: {bytes} bytes of dynamic shared memory, over the device's {} bytes per block",
                self.limits.max_shared_per_block
            )));
        }
        let mut done = self.opted_in.lock().unwrap_or_else(|e| e.into_inner());
        if done.get(kernel).is_some_and(|&b| b >= bytes) {
            return Ok(());
        }
        // SAFETY: f belongs to a loaded module; the value is within the device's limit.
        unsafe {
            sys::cuFuncSetAttribute(
                f,
                sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                bytes as i32,
            )
        }
        .result()
        .map_err(|e| {
            dev_err(
                &format!("opting {kernel} in to {bytes} bytes of shared memory"),
                e,
            )
        })?;
        done.insert(kernel, bytes);
        Ok(())
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    fn bind(&self) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| dev_err("binding the context", e))
    }
}

impl Drop for CudaLauncher {
    fn drop(&mut self) {
        if self.bind().is_ok() {
            // SAFETY: modules loaded by new(); nothing runs after the stream is synchronised.
            unsafe {
                let _ = result::stream::synchronize(self.stream.cu_stream());
                for m in self.modules.drain(..) {
                    let _ = result::module::unload(m);
                }
            }
        }
    }
}

impl Launcher for CudaLauncher {
    type Buf = CudaBuf;

    fn name(&self) -> String {
        let name = self.ctx.name().unwrap_or_else(|_| "?".into());
        format!(
            "cuda:{} ({name}, sm_{} {})",
            self.ordinal, self.arch, self.ptx_source
        )
    }

    fn alloc(&self, len: usize) -> Result<CudaBuf> {
        self.bind()?;
        let bytes = len.max(1) * 4;
        // SAFETY: the context is current; the allocation is freed by CudaBuf's Drop.
        match unsafe { result::malloc_sync(bytes) } {
            Ok(ptr) => Ok(CudaBuf {
                ptr,
                len,
                ctx: self.ctx.clone(),
            }),
            Err(e) if e.0 != cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY => {
                // After a kernel fault every call returns the fault: report it as it is.
                Err(dev_err("allocating device memory", e))
            }
            Err(e) => {
                let (free, total) = result::mem_get_info().unwrap_or((0, 0));
                Err(Error::Device(format!(
                    "out of GPU memory on cuda:{}: {} MiB needed, {} MiB free of {} MiB ({e:?}); use a smaller patch or more reversible blocks",
                    self.ordinal,
                    bytes >> 20,
                    free >> 20,
                    total >> 20
                )))
            }
        }
    }

    fn upload(&self, buf: &mut CudaBuf, offset: usize, src: &[f32]) -> Result<()> {
        if offset + src.len() > buf.len {
            return Err(Error::region("upload", "outside the device buffer"));
        }
        if src.is_empty() {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: in bounds of the allocation; the stream is synchronised before src goes away.
        unsafe {
            result::memcpy_htod_async(buf.ptr + 4 * offset as u64, src, self.stream.cu_stream())
                .map_err(|e| dev_err("upload", e))?;
            result::stream::synchronize(self.stream.cu_stream())
                .map_err(|e| dev_err("a kernel or the upload failed", e))
        }
    }

    fn download(&self, buf: &CudaBuf, offset: usize, dst: &mut [f32]) -> Result<()> {
        if offset + dst.len() > buf.len {
            return Err(Error::region("download", "outside the device buffer"));
        }
        if dst.is_empty() {
            return self.synchronize();
        }
        self.bind()?;
        // SAFETY: in bounds; ordered after every launch on the stream, then waited for.
        unsafe {
            result::memcpy_dtoh_async(dst, buf.ptr + 4 * offset as u64, self.stream.cu_stream())
                .map_err(|e| dev_err("download", e))?;
            result::stream::synchronize(self.stream.cu_stream())
                .map_err(|e| dev_err("a kernel or the download failed", e))
        }
    }

    fn device_ptr(&self, buf: &mut CudaBuf) -> u64 {
        buf.ptr
    }

    fn launch(
        &self,
        kernel: &str,
        grid: [u32; 3],
        block: [u32; 3],
        shared_bytes: u32,
        args: &[u8],
    ) -> Result<()> {
        let (&name, &f) = self
            .funcs
            .get_key_value(kernel)
            .ok_or_else(|| Error::Device(format!("CUDA: no kernel named {kernel}")))?;
        self.bind()?;
        self.opt_in_shared(name, f, shared_bytes)?;
        // The kernel's one parameter is the argument struct: kernelParams[0] points at its bytes,
        // which the driver copies before cuLaunchKernel returns. Copied to u64 words for alignment.
        let mut words = vec![0u64; args.len().div_ceil(8)];
        // SAFETY: words has at least args.len() bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(args.as_ptr(), words.as_mut_ptr() as *mut u8, args.len());
        }
        let mut params = [words.as_mut_ptr() as *mut c_void];
        // SAFETY: f belongs to a loaded module; the struct matches the kernel's (asserted sizes);
        // the addresses in it are in bounds of live allocations (GpuBackend checks regions).
        unsafe {
            result::launch_kernel(
                f,
                (grid[0], grid[1], grid[2]),
                (block[0], block[1], block[2]),
                shared_bytes,
                self.stream.cu_stream(),
                &mut params,
            )
        }
        .map_err(|e| dev_err(&format!("launching {kernel}"), e))
    }

    fn limits(&self) -> DeviceLimits {
        self.limits
    }

    fn synchronize(&self) -> Result<()> {
        self.bind()?;
        // SAFETY: the stream belongs to this context.
        unsafe { result::stream::synchronize(self.stream.cu_stream()) }
            .map_err(|e| dev_err("synchronize", e))
    }

    fn range_push(&self, name: &str) {
        crate::nvtx::push(name);
    }

    fn range_pop(&self) {
        crate::nvtx::pop();
    }
}

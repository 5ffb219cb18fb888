//! The CUDA backend and its CPU emulator: one `Backend` implementation, `GpuBackend<L>`, over a
//! `Launcher` that owns device memory and runs kernels of kernels/*.cu by name. `CudaLauncher` runs
//! them on a GPU (PTX from nvcc, or NVRTC); `EmuLauncher` runs the same sources compiled for the CPU.
//! Operand checks (`ops::<op>::check_*`, the same as the CPU backend's), launch configurations and
//! argument structs are shared, so what the emulator tests is what the GPU runs; only the kernel
//! executor differs.
//!
//! One module per op family, as in backend/cpu/ and kernels/: `gpu/<op>.rs` sizes the grids and
//! fills the argument structs of `kernels/<op>.cu`. This file holds the `Launcher` trait, the arena,
//! the helpers every family uses, and the `Backend` impl that hands each op to its family.

pub mod args;
mod batchnorm;
mod conv3d;
pub mod conv3d_mma;
pub mod conv3d_pointwise;
mod conv_transpose;
pub mod cuda;
mod elementwise;
pub mod emu;
mod loss;
mod maxpool;
mod optim;
pub mod recorder;

pub use conv3d::wgrad_splits;
pub use cuda::CudaLauncher;
pub use emu::EmuLauncher;

use super::{Backend, BnRunning, BnStats, Region, View, Write};
use crate::error::{Error, Result};
use crate::ops::coupling::{Direction, FixedPoint};
use crate::ops::{self, batchnorm::BatchNormArgs, optim::AdamParams, optim::SgdParams};
use crate::precision::Precision;
use args::*;

/// The generated kernel table (names, files, argument structs, embedded PTX and sources).
pub mod table {
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

/// What a device must provide: one arena of f32, copies to and from it, and kernel launches by name
/// with one argument struct passed as bytes. Launches are ordered; `download` waits for them.
pub trait Launcher {
    type Buf;
    fn name(&self) -> String;
    /// A buffer of `len` f32 (contents unspecified).
    fn alloc(&self, len: usize) -> Result<Self::Buf>;
    fn upload(&self, buf: &mut Self::Buf, offset: usize, src: &[f32]) -> Result<()>;
    fn download(&self, buf: &Self::Buf, offset: usize, dst: &mut [f32]) -> Result<()>;
    /// Address of element 0 as the kernels see it.
    fn device_ptr(&self, buf: &mut Self::Buf) -> u64;
    fn launch(
        &self,
        kernel: &str,
        grid: [u32; 3],
        block: [u32; 3],
        shared_bytes: u32,
        args: &[u8],
    ) -> Result<()>;
    /// Waits for every launch so far (before a buffer in use is freed).
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
    /// The regions an op's kernels may touch (the emulator's bounds and race checks): an op
    /// clears them when it starts and notes each one as it makes its device address.
    fn clear_regions(&self) {}
    fn note_region(&self, _ptr: u64, _len: usize) {}
    /// Profiler ranges (NVTX on CUDA).
    fn range_push(&self, _name: &str) {}
    fn range_pop(&self) {}
    /// The device's SM count and shared-memory limits, which launch configurations depend on.
    fn limits(&self) -> DeviceLimits;
}

/// What launch configurations depend on: queried from the device on CUDA, an H200's on the emulator
/// (so that the emulator's grids, and the split counts of the reductions, are the H200's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceLimits {
    /// Streaming multiprocessors (CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT).
    pub sm_count: u32,
    /// Shared memory, static and dynamic, one block may opt in to, bytes
    /// (CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN); beyond 48 KiB of dynamic shared
    /// memory the CUDA launcher opts the kernel in.
    pub max_shared_per_block: u32,
    /// Shared memory per SM, bytes (CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR).
    pub shared_per_sm: u32,
}

impl DeviceLimits {
    /// An H200 (and H100 SXM): 132 SMs, 227 KiB per block, 228 KiB per SM.
    pub const H200: DeviceLimits = DeviceLimits {
        sm_count: 132,
        max_shared_per_block: 227 * 1024,
        shared_per_sm: 228 * 1024,
    };

    /// Blocks a split reduction aims for: two waves' worth, two per SM.
    pub fn target_blocks(&self) -> usize {
        2 * self.sm_count.max(1) as usize
    }
}

/// One arena, plus the backend's own workspace for two-pass reductions (grown on demand, never
/// visible to the caller's regions).
pub struct GpuArena<B> {
    buf: B,
    len: usize,
    scratch: Option<B>,
    scratch_len: usize,
}

pub struct GpuBackend<L: Launcher> {
    pub launcher: L,
    /// What conv3d multiplies in: f32 on CUDA cores (conv3d.cu), TF32 or BF16 on tensor cores.
    pub precision: Precision,
}

/// Threads per block of every kernel (the reductions' RED_THREADS and the conv tiles' 256).
const THREADS: u32 = 256;
/// Elementwise grids stop growing here; the kernels loop with a grid stride beyond it.
const MAX_BLOCKS_1D: usize = 1 << 20;
/// Values per block in the split reductions: enough work per block to hide the final tree.
const VALUES_PER_SPLIT: usize = 8192;
const MAX_CHANNEL_SPLITS: usize = 64;
/// Grid of the coupling kernel: its per-block overflow counts are read back after every call.
const COUPLING_BLOCKS: usize = 1024;

fn acc(mode: Write) -> i32 {
    (mode == Write::Accumulate) as i32
}

/// Kernels index tensors with 32-bit ints.
fn int(op: &'static str, n: usize) -> Result<i32> {
    i32::try_from(n).map_err(|_| {
        Error::Invalid(format!(
            "{op}: {n} elements is more than the GPU kernels index (2^31 - 1); use a smaller patch"
        ))
    })
}

fn grid_1d(n: usize) -> [u32; 3] {
    [
        n.div_ceil(THREADS as usize).clamp(1, MAX_BLOCKS_1D) as u32,
        1,
        1,
    ]
}

/// (splits, chunk) for reducing `m` values per channel (or in all).
fn splits(m: usize, max: usize) -> (usize, usize) {
    let s = m.div_ceil(VALUES_PER_SPLIT).clamp(1, max);
    let chunk = m.div_ceil(s).max(1);
    (m.div_ceil(chunk).max(1), chunk)
}

struct Range<'a, L: Launcher>(&'a L);
impl<L: Launcher> Drop for Range<'_, L> {
    fn drop(&mut self) {
        self.0.range_pop();
    }
}

impl<L: Launcher> GpuBackend<L> {
    pub fn new(launcher: L) -> Self {
        Self::with_precision(launcher, Precision::F32)
    }

    pub fn with_precision(launcher: L, precision: Precision) -> Self {
        GpuBackend {
            launcher,
            precision,
        }
    }

    /// Every op starts here: a new op, so a new set of regions.
    fn range(&self, name: &str) -> Range<'_, L> {
        self.launcher.clear_regions();
        self.launcher.range_push(name);
        Range(&self.launcher)
    }

    fn launch<A: KernelArgs>(
        &self,
        kernel: &str,
        grid: [u32; 3],
        block: u32,
        args: &A,
    ) -> Result<()> {
        self.launcher
            .launch(kernel, grid, [block, 1, 1], 0, args.bytes())
    }

    fn launch_1d<A: KernelArgs>(&self, kernel: &str, n: usize, args: &A) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        self.launch(kernel, grid_1d(n), THREADS, args)
    }

    /// Device addresses of the arena's regions.
    fn ptrs<const K: usize>(&self, a: &mut GpuArena<L::Buf>, rs: [Region; K]) -> [u64; K] {
        let base = self.launcher.device_ptr(&mut a.buf);
        rs.map(|r| {
            let p = base + 4 * r.offset as u64;
            self.launcher.note_region(p, r.len);
            p
        })
    }

    /// The workspace, at least `len` floats.
    fn scratch(&self, a: &mut GpuArena<L::Buf>, len: usize) -> Result<u64> {
        if a.scratch.is_none() || a.scratch_len < len {
            let n = len.max(2 * a.scratch_len).max(1024);
            // The old workspace may still be read by queued kernels.
            self.launcher.synchronize()?;
            a.scratch = None;
            a.scratch = Some(self.launcher.alloc(n)?);
            a.scratch_len = n;
        }
        let p = self.launcher.device_ptr(a.scratch.as_mut().unwrap());
        self.launcher.note_region(p, a.scratch_len);
        Ok(p)
    }
}

impl<L: Launcher> Backend for GpuBackend<L> {
    type Elem = f32;
    type Arena = GpuArena<L::Buf>;

    fn name(&self) -> String {
        format!("{} ({})", self.launcher.name(), self.precision)
    }

    fn range_push(&self, name: &str) {
        self.launcher.range_push(name);
    }

    fn synchronize(&self) -> Result<()> {
        self.launcher.synchronize()
    }

    fn range_pop(&self) {
        self.launcher.range_pop();
    }

    fn alloc_arena(&self, len: usize) -> Result<Self::Arena> {
        let mut a = GpuArena {
            buf: self.launcher.alloc(len)?,
            len,
            scratch: None,
            scratch_len: 0,
        };
        // As on the CPU: fresh arenas read as NaN, so a read of a never-written buffer shows.
        self.fill(&mut a, Region::new(0, len), f32::NAN)?;
        Ok(a)
    }

    fn arena_len(&self, a: &Self::Arena) -> usize {
        a.len
    }

    fn upload(&self, a: &mut Self::Arena, dst: Region, src: &[f32]) -> Result<()> {
        crate::ops::check_transfer("upload", a.len, dst, src.len())?;
        self.launcher.upload(&mut a.buf, dst.offset, src)
    }

    fn download(&self, a: &Self::Arena, src: Region, dst: &mut [f32]) -> Result<()> {
        crate::ops::check_transfer("download", a.len, src, dst.len())?;
        self.launcher.download(&a.buf, src.offset, dst)
    }

    fn fill(&self, a: &mut Self::Arena, dst: Region, value: f32) -> Result<()> {
        elementwise::fill(self, a, dst, value)
    }

    fn copy(&self, a: &mut Self::Arena, src: Region, dst: Region) -> Result<()> {
        elementwise::copy(self, a, src, dst)
    }

    fn conv3d_forward(
        &self,
        a: &mut Self::Arena,
        x: View,
        w: View,
        bias: Option<Region>,
        y: View,
    ) -> Result<()> {
        conv3d::forward(self, a, x, w, bias, y)
    }

    fn conv3d_backward_input(
        &self,
        a: &mut Self::Arena,
        dy: View,
        w: View,
        dx: View,
        mode: Write,
    ) -> Result<()> {
        conv3d::backward_input(self, a, dy, w, dx, mode)
    }

    fn conv3d_backward_weight(
        &self,
        a: &mut Self::Arena,
        x: View,
        dy: View,
        dw: View,
        mode: Write,
    ) -> Result<()> {
        conv3d::backward_weight(self, a, x, dy, dw, mode)
    }

    fn conv3d_backward_bias(
        &self,
        a: &mut Self::Arena,
        dy: View,
        db: Region,
        mode: Write,
    ) -> Result<()> {
        conv3d::backward_bias(self, a, dy, db, mode)
    }

    fn conv_transpose_forward(
        &self,
        a: &mut Self::Arena,
        x: View,
        w: View,
        bias: Option<Region>,
        y: View,
    ) -> Result<()> {
        conv_transpose::forward(self, a, x, w, bias, y)
    }

    fn conv_transpose_backward_input(
        &self,
        a: &mut Self::Arena,
        dy: View,
        w: View,
        dx: View,
        mode: Write,
    ) -> Result<()> {
        conv_transpose::backward_input(self, a, dy, w, dx, mode)
    }

    fn conv_transpose_backward_weight(
        &self,
        a: &mut Self::Arena,
        x: View,
        dy: View,
        dw: View,
        mode: Write,
    ) -> Result<()> {
        conv_transpose::backward_weight(self, a, x, dy, dw, mode)
    }

    fn maxpool_forward(&self, a: &mut Self::Arena, x: View, y: View) -> Result<()> {
        maxpool::forward(self, a, x, y)
    }

    fn maxpool_backward(
        &self,
        a: &mut Self::Arena,
        x: View,
        dy: View,
        dx: View,
        mode: Write,
    ) -> Result<()> {
        maxpool::backward(self, a, x, dy, dx, mode)
    }

    fn elu_forward(&self, a: &mut Self::Arena, x: View, y: View) -> Result<()> {
        elementwise::elu_forward(self, a, x, y)
    }

    fn elu_backward(
        &self,
        a: &mut Self::Arena,
        y: View,
        dy: View,
        dx: View,
        mode: Write,
    ) -> Result<()> {
        elementwise::elu_backward(self, a, y, dy, dx, mode)
    }

    fn add(&self, a: &mut Self::Arena, p: View, q: View, out: View) -> Result<()> {
        elementwise::add(self, a, p, q, out)
    }

    fn add_assign(&self, a: &mut Self::Arena, dst: View, src: View) -> Result<()> {
        elementwise::accumulate(self, a, "add_assign", dst, src, 1.0)
    }

    fn sub_assign(&self, a: &mut Self::Arena, dst: View, src: View) -> Result<()> {
        elementwise::accumulate(self, a, "sub_assign", dst, src, -1.0)
    }

    /// One kernel, then a read-back of its per-block overflow counts: the error must name the
    /// block of the chain that overflowed before anything else runs on a wrong state.
    fn coupling(
        &self,
        a: &mut Self::Arena,
        x: View,
        f: Option<View>,
        y: View,
        dir: Direction,
        fp: FixedPoint,
    ) -> Result<()> {
        const OP: &str = "coupling";
        let _r = self.range(OP);
        ops::same_shape(OP, "y vs x", y.shape, x.shape)?;
        if let Some(f) = f {
            ops::same_shape(OP, "f vs x", f.shape, x.shape)?;
        }
        let fr: Vec<Region> = f.iter().map(|f| f.region).collect();
        if x.region == y.region {
            ops::check_regions(OP, a.len, &fr, &[y.region])?;
        } else {
            let ins: Vec<Region> = fr.iter().copied().chain([x.region]).collect();
            ops::check_regions(OP, a.len, &ins, &[y.region])?;
        }
        let n = y.region.len;
        if n == 0 {
            return Ok(());
        }
        let blocks = n.div_ceil(THREADS as usize).clamp(1, COUPLING_BLOCKS);
        let bad = self.scratch(a, blocks)?;
        let [xp, yp] = self.ptrs(a, [x.region, y.region]);
        let fp_ptr = match f {
            Some(f) => self.ptrs(a, [f.region])[0],
            None => 0,
        };
        let args = CouplingArgs {
            x: xp,
            f: fp_ptr,
            y: yp,
            bad,
            n: int(OP, n)?,
            negative: (dir == Direction::Inverse) as i32,
            scale: fp.scale() as f32,
            inv_scale: fp.resolution() as f32,
            range: fp.range() as f32,
            pad: 0,
        };
        self.launch(OP, [blocks as u32, 1, 1], THREADS, &args)?;
        let mut counts = vec![0f32; blocks];
        self.launcher
            .download(a.scratch.as_ref().unwrap(), 0, &mut counts)?;
        if counts.iter().all(|c| c.to_bits() == 0) {
            return Ok(());
        }
        let mut vals = vec![0f32; n];
        self.launcher.download(&a.buf, y.region.offset, &mut vals)?;
        let range = fp.range() as f32;
        let at = vals.iter().position(|v| !(v.abs() <= range)).unwrap_or(0);
        Err(fp.overflow(OP, at, vals[at] as f64))
    }

    fn batchnorm_forward_train(
        &self,
        a: &mut Self::Arena,
        x: View,
        gamma: Region,
        beta: Region,
        y: View,
        stats: BnStats,
        running: Option<BnRunning>,
        args: BatchNormArgs,
    ) -> Result<()> {
        batchnorm::forward_train(self, a, x, gamma, beta, y, stats, running, args)
    }

    fn batchnorm_apply(
        &self,
        a: &mut Self::Arena,
        x: View,
        gamma: Region,
        beta: Region,
        stats: BnStats,
        y: View,
    ) -> Result<()> {
        batchnorm::apply(self, a, x, gamma, beta, stats, y)
    }

    fn batchnorm_forward_infer(
        &self,
        a: &mut Self::Arena,
        x: View,
        gamma: Region,
        beta: Region,
        running: BnRunning,
        y: View,
        eps: f64,
    ) -> Result<()> {
        batchnorm::forward_infer(self, a, x, gamma, beta, running, y, eps)
    }

    fn batchnorm_backward(
        &self,
        a: &mut Self::Arena,
        x: View,
        dy: View,
        gamma: Region,
        stats: BnStats,
        dx: View,
        dgamma: Region,
        dbeta: Region,
        mode: Write,
    ) -> Result<()> {
        batchnorm::backward(self, a, x, dy, gamma, stats, dx, dgamma, dbeta, mode)
    }

    fn bce_weights(
        &self,
        a: &mut Self::Arena,
        target: View,
        mask: View,
        weight: View,
    ) -> Result<()> {
        loss::weights(self, a, target, mask, weight)
    }

    fn bce_loss(
        &self,
        a: &mut Self::Arena,
        logits: View,
        target: View,
        weight: View,
        mask: View,
        loss: Region,
        dlogits: Option<View>,
    ) -> Result<()> {
        loss::bce(self, a, logits, target, weight, mask, loss, dlogits)
    }

    fn sigmoid(&self, a: &mut Self::Arena, x: View, y: View) -> Result<()> {
        loss::sigmoid(self, a, x, y)
    }

    fn adam_step(
        &self,
        a: &mut Self::Arena,
        param: Region,
        grad: Region,
        m: Region,
        v: Region,
        hp: AdamParams,
        step: u64,
    ) -> Result<()> {
        optim::adam(self, a, param, grad, m, v, hp, step)
    }

    fn sgd_step(
        &self,
        a: &mut Self::Arena,
        param: Region,
        grad: Region,
        velocity: Option<Region>,
        hp: SgdParams,
    ) -> Result<()> {
        optim::sgd(self, a, param, grad, velocity, hp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::backend::Bump;
    use crate::ops::conv3d::Conv3dGeom;
    use crate::tensor::Shape5;

    /// The embedded machine code: one cubin per kernel file for sm_80 and for sm_90, each a CUDA
    /// ELF for its architecture that holds every kernel the file declares.
    #[test]
    fn cubins_are_embedded_for_sm80_and_sm90() {
        if table::PTX_COMPILER.is_none() {
            eprintln!("skipped: built without nvcc (no PTX or cubin embedded; NVRTC at run time)");
            assert!(table::CUBIN.is_empty());
            return;
        }
        assert_eq!(table::CUBIN.len(), 2 * table::SOURCES.len());
        for (file, _) in table::SOURCES {
            for arch in [80u32, 90] {
                let (_, _, elf) = table::CUBIN
                    .iter()
                    .find(|(f, a, _)| f == file && *a == arch)
                    .unwrap_or_else(|| panic!("no sm_{arch} cubin for kernels/{file}.cu"));
                assert_eq!(&elf[..4], b"\x7fELF", "{file} sm_{arch}");
                // e_machine EM_CUDA (190); the architecture in bits 8..16 of e_flags.
                assert_eq!(u16::from_le_bytes([elf[18], elf[19]]), 190, "{file}");
                let flags = u32::from_le_bytes([elf[48], elf[49], elf[50], elf[51]]);
                assert_eq!((flags >> 8) & 0xff, arch, "{file}: e_flags {flags:#x}");
                for (name, ..) in table::KERNELS.iter().filter(|k| k.1 == *file) {
                    assert!(
                        elf.windows(name.len() + 1)
                            .any(|w| &w[..name.len()] == name.as_bytes() && w[name.len()] == 0),
                        "kernel {name} is not in the sm_{arch} cubin of {file}"
                    );
                }
            }
        }
    }

    /// The weight gradient's split count comes from the device's SM count (two blocks per SM),
    /// not a constant: the emulator as an H200 and as smaller devices launches the grids
    /// `wgrad_splits` predicts, and every split gives the CPU's result.
    #[test]
    fn weight_gradient_splits_follow_the_devices_sm_count() {
        // 4 -> 8 channels, 3x3x3: one 64x64 tile, so the split alone fills the device.
        let x_s = Shape5::new(1, 4, 4, 24, 24);
        let w_s = Shape5::new(8, 4, 3, 3, 3);
        let g = Conv3dGeom::check(x_s, w_s, Shape5::new(1, 8, 4, 24, 24)).unwrap();
        let mut bump = Bump::default();
        let (x, dy, dw) = (bump.view(x_s), bump.view(g.output_shape()), bump.view(w_s));
        let mut rng = crate::rng::Rng::new(7);
        let xv: Vec<f32> = (0..x_s.len()).map(|_| rng.normal() as f32).collect();
        let dyv: Vec<f32> = (0..dy.shape.len()).map(|_| rng.normal() as f32).collect();

        let cpu = CpuBackend::<f32>::new();
        let mut ca = cpu.alloc_arena(bump.len()).unwrap();
        cpu.upload(&mut ca, x.region, &xv).unwrap();
        cpu.upload(&mut ca, dy.region, &dyv).unwrap();
        cpu.conv3d_backward_weight(&mut ca, x, dy, dw, Write::Overwrite)
            .unwrap();
        let mut want = vec![0f32; w_s.len()];
        cpu.download(&ca, dw.region, &mut want).unwrap();

        let mut seen = Vec::new();
        for sm_count in [132, 16, 4] {
            let limits = DeviceLimits {
                sm_count,
                ..DeviceLimits::H200
            };
            let gpu = GpuBackend::new(super::recorder::Recorder::new(
                EmuLauncher::with_config(emu::EmuConfig {
                    schedule: emu::Schedule::Ascending,
                    check: false,
                })
                .with_limits(limits),
            ));
            let mut ga = gpu.alloc_arena(bump.len()).unwrap();
            gpu.upload(&mut ga, x.region, &xv).unwrap();
            gpu.upload(&mut ga, dy.region, &dyv).unwrap();
            gpu.conv3d_backward_weight(&mut ga, x, dy, dw, Write::Overwrite)
                .unwrap();
            let mut got = vec![0f32; w_s.len()];
            gpu.download(&ga, dw.region, &mut got).unwrap();

            let (splits, _) = wgrad_splits(&g, 2 * sm_count as usize);
            let grids = gpu.launcher.grids.borrow();
            let (_, grid) = grids
                .iter()
                .find(|(k, _)| k == "conv3d_backward_weight_partial")
                .expect("the partial kernel ran");
            assert_eq!(grid[2] as usize, splits, "{sm_count} SMs");
            seen.push(splits);
            let err = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs() as f64)
                .fold(0.0, f64::max);
            let scale = want.iter().map(|v| v.abs() as f64).fold(0.0, f64::max);
            assert!(
                err <= 1e-5 * scale,
                "{sm_count} SMs: max error {err} of {scale}"
            );
        }
        // 2304 positions in chunks of 16: 64 splits at most, and fewer for fewer SMs.
        assert_eq!(seen, [48, 16, 4], "splits for 132, 16 and 4 SMs");
    }
}

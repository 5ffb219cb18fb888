//! The CUDA backend and its CPU emulator: one `Backend` implementation, `GpuBackend<L>`, over a
//! `Launcher` that owns device memory and runs kernels of kernels/*.cu by name. `CudaLauncher` runs
//! them on a GPU (PTX from nvcc, or NVRTC); `EmuLauncher` runs the same sources compiled for the CPU.
//! Shape checks, aliasing rules, launch configurations and argument structs are shared, so what the
//! emulator tests is what the GPU runs; only the kernel executor differs.

pub mod args;
pub mod conv3d_mma;
pub mod cuda;
pub mod emu;

pub use cuda::CudaLauncher;
pub use emu::EmuLauncher;

use super::{Backend, BnRunning, BnStats, Region, View, Write};
use crate::error::{Error, Result};
use crate::ops::coupling::{Direction, FixedPoint};
use crate::ops::{
    self, batchnorm::BatchNormArgs, conv3d::Conv3dGeom, conv_transpose::ConvTransposeGeom,
    optim::AdamParams, optim::SgdParams,
};
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
    /// Streaming multiprocessors (the weight gradient's split count follows it).
    fn sm_count(&self) -> usize {
        conv3d_mma::EMU_SM_COUNT
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
const MAX_LOSS_SPLITS: usize = 1024;
/// conv3d weight-gradient tiles (BM, BN, BK of kernels/conv3d.cu).
const CONV_TILE: usize = 64;
const CONV_BK: usize = 16;
/// Enough blocks to fill a large GPU twice over; the weight gradient splits positions to get there.
const TARGET_BLOCKS: usize = 264;
const MAX_WGRAD_SPLITS: usize = 64;
/// Grid of the coupling kernel: its per-block overflow counts are read back after every call.
const COUPLING_BLOCKS: usize = 1024;

fn acc(mode: Write) -> i32 {
    (mode == Write::Accumulate) as i32
}

/// The CPU backend's rules (backend/cpu/mem.rs): every region in bounds; outputs disjoint from each
/// other and from every input.
fn check_regions(op: &'static str, len: usize, ins: &[Region], outs: &[Region]) -> Result<()> {
    for r in ins.iter().chain(outs) {
        if r.end() > len {
            return Err(Error::region(
                op,
                format!(
                    "region {}..{} lies outside the arena of {len} elements",
                    r.offset,
                    r.end()
                ),
            ));
        }
    }
    for (i, o) in outs.iter().enumerate() {
        for o2 in &outs[i + 1..] {
            if o.overlaps(o2) {
                return Err(Error::region(
                    op,
                    format!("two outputs overlap ({o:?}, {o2:?})"),
                ));
            }
        }
        for r in ins {
            if o.overlaps(r) {
                return Err(Error::region(
                    op,
                    format!("output {o:?} overlaps input {r:?}"),
                ));
            }
        }
    }
    Ok(())
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

    #[allow(clippy::too_many_arguments)]
    fn ew(
        &self,
        kernel: &str,
        n: usize,
        a: u64,
        b: u64,
        out: u64,
        accumulate: i32,
        alpha: f32,
    ) -> Result<()> {
        let args = EwArgs {
            a,
            b,
            out,
            n: int(OP_EW, n)?,
            accumulate,
            alpha,
            pad: 0,
        };
        self.launch_1d(kernel, n, &args)
    }

    #[allow(clippy::too_many_arguments)]
    fn conv_args(
        g: &Conv3dGeom,
        x: u64,
        w: u64,
        bias: u64,
        dy: u64,
        out: u64,
        accumulate: i32,
    ) -> Result<ConvArgs> {
        const OP: &str = "conv3d";
        int(OP, g.n * g.ci.max(g.co) * g.spatial())?;
        Ok(ConvArgs {
            x,
            w,
            bias,
            dy,
            out,
            n: int(OP, g.n)?,
            ci: int(OP, g.ci)?,
            co: int(OP, g.co)?,
            d: int(OP, g.d)?,
            h: int(OP, g.h)?,
            wd: int(OP, g.w)?,
            kd: int(OP, g.kd)?,
            kh: int(OP, g.kh)?,
            kw: int(OP, g.kw)?,
            accumulate,
            splits: 1,
            chunk: 1,
        })
    }

    /// Per-channel sums of dy into `db` (the conv bias gradient).
    fn bias_grad(&self, a: &mut GpuArena<L::Buf>, dy: View, db: Region, mode: Write) -> Result<()> {
        const OP: &str = "conv3d_backward_bias";
        let s = dy.shape;
        let (sp_, ch) = (s.spatial(), s.c);
        int(OP, dy.region.len)?;
        let (ns, chunk) = splits(s.n * sp_, MAX_CHANNEL_SPLITS);
        if ch == 0 {
            return Ok(());
        }
        let part = self.scratch(a, ch * ns)?;
        let [gy, gb] = self.ptrs(a, [dy.region, db]);
        let args = ChanArgs {
            dy: gy,
            dbeta: gb,
            part,
            n: s.n as i32,
            c: ch as i32,
            sp: sp_ as i32,
            splits: ns as i32,
            chunk: chunk as i32,
            accumulate: acc(mode),
            ..Default::default()
        };
        self.launch(
            "conv3d_backward_bias_partial",
            [ns as u32, ch as u32, 1],
            THREADS,
            &args,
        )?;
        self.launch_1d("conv3d_backward_bias_finalize", ch, &args)
    }
}

const OP_EW: &str = "elementwise";

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
        check_regions("upload", a.len, &[], &[dst])?;
        if src.len() != dst.len {
            return Err(Error::region(
                "upload",
                format!("{} values for a region of {}", src.len(), dst.len),
            ));
        }
        self.launcher.upload(&mut a.buf, dst.offset, src)
    }

    fn download(&self, a: &Self::Arena, src: Region, dst: &mut [f32]) -> Result<()> {
        check_regions("download", a.len, &[src], &[])?;
        if dst.len() != src.len {
            return Err(Error::region(
                "download",
                format!("{} values for a region of {}", dst.len(), src.len),
            ));
        }
        self.launcher.download(&a.buf, src.offset, dst)
    }

    fn fill(&self, a: &mut Self::Arena, dst: Region, value: f32) -> Result<()> {
        let _r = self.range("fill");
        check_regions("fill", a.len, &[], &[dst])?;
        let [d] = self.ptrs(a, [dst]);
        // In pieces: a whole arena can hold more elements than a kernel indexes (2^31).
        const PIECE: usize = 1 << 30;
        for start in (0..dst.len).step_by(PIECE) {
            let n = PIECE.min(dst.len - start);
            self.ew("fill_f32", n, 0, 0, d + 4 * start as u64, 0, value)?;
        }
        Ok(())
    }

    fn copy(&self, a: &mut Self::Arena, src: Region, dst: Region) -> Result<()> {
        let _r = self.range("copy");
        if src.len != dst.len {
            return Err(Error::region(
                "copy",
                format!("source has {} elements, destination {}", src.len, dst.len),
            ));
        }
        check_regions("copy", a.len, &[src], &[dst])?;
        let [s, d] = self.ptrs(a, [src, dst]);
        self.ew("copy_f32", dst.len, s, 0, d, 0, 0.0)
    }

    fn conv3d_forward(
        &self,
        a: &mut Self::Arena,
        x: View,
        w: View,
        bias: Option<Region>,
        y: View,
    ) -> Result<()> {
        let _r = self.range("conv3d_forward");
        let g = Conv3dGeom::check(x.shape, w.shape, y.shape)?;
        if let Some(b) = bias {
            ops::vector_len("conv3d", "bias", b.len, g.co)?;
        }
        let b = bias.unwrap_or_default();
        check_regions("conv3d", a.len, &[x.region, w.region, b], &[y.region])?;
        if y.region.len == 0 {
            return Ok(());
        }
        let [xp, wp, bp, yp] = self.ptrs(a, [x.region, w.region, b, y.region]);
        let bp = if bias.is_some() { bp } else { 0 };
        if self.precision != Precision::F32 {
            return self.conv3d_mma_data(a, &g, self.precision, false, xp, wp, bp, yp, 0);
        }
        let args = Self::conv_args(&g, xp, wp, bp, 0, yp, 0)?;
        let tiles = g.spatial().div_ceil(CONV_TILE);
        self.launch(
            "conv3d_forward",
            [(g.n * tiles) as u32, g.co.div_ceil(CONV_TILE) as u32, 1],
            THREADS,
            &args,
        )
    }

    fn conv3d_backward_input(
        &self,
        a: &mut Self::Arena,
        dy: View,
        w: View,
        dx: View,
        mode: Write,
    ) -> Result<()> {
        let _r = self.range("conv3d_backward_input");
        let g = Conv3dGeom::check(dx.shape, w.shape, dy.shape)?;
        check_regions(
            "conv3d_backward_input",
            a.len,
            &[dy.region, w.region],
            &[dx.region],
        )?;
        if dx.region.len == 0 {
            return Ok(());
        }
        let [gy, wp, gx] = self.ptrs(a, [dy.region, w.region, dx.region]);
        if self.precision != Precision::F32 {
            return self.conv3d_mma_data(a, &g, self.precision, true, gy, wp, 0, gx, acc(mode));
        }
        let args = Self::conv_args(&g, 0, wp, 0, gy, gx, acc(mode))?;
        let tiles = g.spatial().div_ceil(CONV_TILE);
        self.launch(
            "conv3d_backward_input",
            [(g.n * tiles) as u32, g.ci.div_ceil(CONV_TILE) as u32, 1],
            THREADS,
            &args,
        )
    }

    fn conv3d_backward_weight(
        &self,
        a: &mut Self::Arena,
        x: View,
        dy: View,
        dw: View,
        mode: Write,
    ) -> Result<()> {
        let _r = self.range("conv3d_backward_weight");
        let g = Conv3dGeom::check(x.shape, dw.shape, dy.shape)?;
        check_regions(
            "conv3d_backward_weight",
            a.len,
            &[x.region, dy.region],
            &[dw.region],
        )?;
        if dw.region.len == 0 {
            return Ok(());
        }
        if self.precision != Precision::F32 {
            let [xp, gy, gw] = self.ptrs(a, [x.region, dy.region, dw.region]);
            return self.conv3d_mma_weight(a, &g, self.precision, xp, gy, gw, acc(mode));
        }
        let k = g.ci * g.taps();
        let tiles = k.div_ceil(CONV_TILE) * g.co.div_ceil(CONV_TILE);
        let q = g.n * g.spatial();
        // Positions split so that the grid fills the GPU, in BK-aligned chunks; fixed by the shape
        // alone, so the sum order (and the bits) never change.
        let want = TARGET_BLOCKS.div_ceil(tiles).clamp(1, MAX_WGRAD_SPLITS);
        let chunk = q.div_ceil(want).div_ceil(CONV_BK).max(1) * CONV_BK;
        let ns = q.div_ceil(chunk).max(1);
        int("conv3d_backward_weight", ns * g.co * k)?;
        let part = self.scratch(a, ns * g.co * k)?;
        let [xp, gy, gw] = self.ptrs(a, [x.region, dy.region, dw.region]);
        let mut args = Self::conv_args(&g, xp, 0, 0, gy, part, 0)?;
        args.splits = ns as i32;
        args.chunk = int("conv3d_backward_weight", chunk)?;
        self.launch(
            "conv3d_backward_weight_partial",
            [
                k.div_ceil(CONV_TILE) as u32,
                g.co.div_ceil(CONV_TILE) as u32,
                ns as u32,
            ],
            THREADS,
            &args,
        )?;
        args.dy = part;
        args.out = gw;
        args.accumulate = acc(mode);
        self.launch_1d("conv3d_backward_weight_reduce", g.co * k, &args)
    }

    fn conv3d_backward_bias(
        &self,
        a: &mut Self::Arena,
        dy: View,
        db: Region,
        mode: Write,
    ) -> Result<()> {
        let _r = self.range("conv3d_backward_bias");
        ops::vector_len("conv3d_backward_bias", "bias gradient", db.len, dy.shape.c)?;
        check_regions("conv3d_backward_bias", a.len, &[dy.region], &[db])?;
        self.bias_grad(a, dy, db, mode)
    }

    fn conv_transpose_forward(
        &self,
        a: &mut Self::Arena,
        x: View,
        w: View,
        bias: Option<Region>,
        y: View,
    ) -> Result<()> {
        let _r = self.range("conv_transpose_forward");
        let g = ConvTransposeGeom::check(x.shape, w.shape, y.shape)?;
        if let Some(b) = bias {
            ops::vector_len("conv_transpose", "bias", b.len, g.co)?;
        }
        let b = bias.unwrap_or_default();
        check_regions(
            "conv_transpose",
            a.len,
            &[x.region, w.region, b],
            &[y.region],
        )?;
        let [xp, wp, bp, yp] = self.ptrs(a, [x.region, w.region, b, y.region]);
        let args = convt_args(&g, xp, wp, if bias.is_some() { bp } else { 0 }, 0, yp, 0)?;
        self.launch_1d("conv_transpose_forward", y.region.len, &args)
    }

    fn conv_transpose_backward_input(
        &self,
        a: &mut Self::Arena,
        dy: View,
        w: View,
        dx: View,
        mode: Write,
    ) -> Result<()> {
        let _r = self.range("conv_transpose_backward_input");
        let g = ConvTransposeGeom::check(dx.shape, w.shape, dy.shape)?;
        check_regions(
            "conv_transpose_backward_input",
            a.len,
            &[dy.region, w.region],
            &[dx.region],
        )?;
        let [gy, wp, gx] = self.ptrs(a, [dy.region, w.region, dx.region]);
        let args = convt_args(&g, 0, wp, 0, gy, gx, acc(mode))?;
        self.launch_1d("conv_transpose_backward_input", dx.region.len, &args)
    }

    fn conv_transpose_backward_weight(
        &self,
        a: &mut Self::Arena,
        x: View,
        dy: View,
        dw: View,
        mode: Write,
    ) -> Result<()> {
        let _r = self.range("conv_transpose_backward_weight");
        let g = ConvTransposeGeom::check(x.shape, dw.shape, dy.shape)?;
        check_regions(
            "conv_transpose_backward_weight",
            a.len,
            &[x.region, dy.region],
            &[dw.region],
        )?;
        if dw.region.len == 0 {
            return Ok(());
        }
        let [xp, gy, gw] = self.ptrs(a, [x.region, dy.region, dw.region]);
        let args = convt_args(&g, xp, 0, 0, gy, gw, acc(mode))?;
        self.launch(
            "conv_transpose_backward_weight",
            [(g.ci * g.co) as u32, 1, 1],
            THREADS,
            &args,
        )
    }

    fn maxpool_forward(&self, a: &mut Self::Arena, x: View, y: View) -> Result<()> {
        let _r = self.range("maxpool_forward");
        ops::maxpool::check(x.shape, y.shape)?;
        check_regions("maxpool", a.len, &[x.region], &[y.region])?;
        let [xp, yp] = self.ptrs(a, [x.region, y.region]);
        let args = pool_args(x, xp, 0, yp, 0)?;
        self.launch_1d("maxpool_forward", y.region.len, &args)
    }

    fn maxpool_backward(
        &self,
        a: &mut Self::Arena,
        x: View,
        dy: View,
        dx: View,
        mode: Write,
    ) -> Result<()> {
        let _r = self.range("maxpool_backward");
        ops::maxpool::check(x.shape, dy.shape)?;
        ops::same_shape("maxpool_backward", "dx vs x", dx.shape, x.shape)?;
        check_regions(
            "maxpool_backward",
            a.len,
            &[x.region, dy.region],
            &[dx.region],
        )?;
        let [xp, gy, gx] = self.ptrs(a, [x.region, dy.region, dx.region]);
        let args = pool_args(x, xp, gy, gx, acc(mode))?;
        self.launch_1d("maxpool_backward", dy.region.len, &args)
    }

    fn elu_forward(&self, a: &mut Self::Arena, x: View, y: View) -> Result<()> {
        let _r = self.range("elu_forward");
        ops::same_shape("elu", "y vs x", y.shape, x.shape)?;
        if x.region == y.region {
            check_regions("elu", a.len, &[], &[y.region])?;
        } else {
            check_regions("elu", a.len, &[x.region], &[y.region])?;
        }
        let [xp, yp] = self.ptrs(a, [x.region, y.region]);
        self.ew("elu_forward", y.region.len, xp, 0, yp, 0, 0.0)
    }

    fn elu_backward(
        &self,
        a: &mut Self::Arena,
        y: View,
        dy: View,
        dx: View,
        mode: Write,
    ) -> Result<()> {
        let _r = self.range("elu_backward");
        ops::same_shape("elu_backward", "dy vs y", dy.shape, y.shape)?;
        ops::same_shape("elu_backward", "dx vs y", dx.shape, y.shape)?;
        if dx.region == dy.region && mode == Write::Overwrite {
            check_regions("elu_backward", a.len, &[y.region], &[dx.region])?;
        } else {
            check_regions("elu_backward", a.len, &[y.region, dy.region], &[dx.region])?;
        }
        let [yp, gy, gx] = self.ptrs(a, [y.region, dy.region, dx.region]);
        self.ew("elu_backward", dx.region.len, yp, gy, gx, acc(mode), 0.0)
    }

    fn add(&self, a: &mut Self::Arena, p: View, q: View, out: View) -> Result<()> {
        let _r = self.range("add");
        ops::same_shape("add", "p vs q", p.shape, q.shape)?;
        ops::same_shape("add", "out vs p", out.shape, p.shape)?;
        if out.region == p.region {
            self.add_assign(a, out, q)
        } else if out.region == q.region {
            self.add_assign(a, out, p)
        } else {
            check_regions("add", a.len, &[p.region, q.region], &[out.region])?;
            let [pp, qp, op] = self.ptrs(a, [p.region, q.region, out.region]);
            self.ew("add_f32", out.region.len, pp, qp, op, 0, 0.0)
        }
    }

    fn add_assign(&self, a: &mut Self::Arena, dst: View, src: View) -> Result<()> {
        let _r = self.range("add_assign");
        ops::same_shape("add_assign", "dst vs src", dst.shape, src.shape)?;
        check_regions("add_assign", a.len, &[src.region], &[dst.region])?;
        let [s, d] = self.ptrs(a, [src.region, dst.region]);
        self.ew("add_assign_f32", dst.region.len, s, 0, d, 0, 1.0)
    }

    fn sub_assign(&self, a: &mut Self::Arena, dst: View, src: View) -> Result<()> {
        let _r = self.range("sub_assign");
        ops::same_shape("sub_assign", "dst vs src", dst.shape, src.shape)?;
        check_regions("sub_assign", a.len, &[src.region], &[dst.region])?;
        let [s, d] = self.ptrs(a, [src.region, dst.region]);
        self.ew("add_assign_f32", dst.region.len, s, 0, d, 0, -1.0)
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
            check_regions(OP, a.len, &fr, &[y.region])?;
        } else {
            let ins: Vec<Region> = fr.iter().copied().chain([x.region]).collect();
            check_regions(OP, a.len, &ins, &[y.region])?;
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
        const OP: &str = "batchnorm";
        let _r = self.range(OP);
        ops::same_shape(OP, "y vs x", y.shape, x.shape)?;
        let c = x.shape.c;
        super::per_channel(
            OP,
            &[
                ("gamma", gamma),
                ("beta", beta),
                ("saved mean", stats.mean),
                ("saved invstd", stats.invstd),
            ],
            c,
        )?;
        let (rm, rv) = match running {
            Some(run) => {
                ops::vector_len(OP, "running mean", run.mean.len, c)?;
                ops::vector_len(OP, "running var", run.var.len, c)?;
                check_regions(
                    OP,
                    a.len,
                    &[x.region, gamma, beta],
                    &[y.region, stats.mean, stats.invstd, run.mean, run.var],
                )?;
                (run.mean, run.var)
            }
            None => {
                check_regions(
                    OP,
                    a.len,
                    &[x.region, gamma, beta],
                    &[y.region, stats.mean, stats.invstd],
                )?;
                (Region::default(), Region::default())
            }
        };
        let mut ca = self.chan_args(a, x, OP)?;
        if c == 0 {
            return Ok(());
        }
        let [xp, gp, bp, yp, mp, ip, rmp, rvp] = self.ptrs(
            a,
            [
                x.region,
                gamma,
                beta,
                y.region,
                stats.mean,
                stats.invstd,
                rm,
                rv,
            ],
        );
        let m = (x.shape.n * x.shape.spatial()) as f64;
        ca.x = xp;
        ca.gamma = gp;
        ca.beta = bp;
        ca.y = yp;
        ca.mean = mp;
        ca.invstd = ip;
        if running.is_some() {
            ca.rmean = rmp;
            ca.rvar = rvp;
            ca.has_running = 1;
        }
        ca.eps = args.eps as f32;
        ca.momentum = args.momentum as f32;
        ca.unbiased = if m > 1.0 { (m / (m - 1.0)) as f32 } else { 1.0 };
        let grid = [ca.splits as u32, c as u32, 1];
        for mode in [0, 1] {
            ca.mode = mode;
            self.launch("bn_partial", grid, THREADS, &ca)?;
            self.launch_1d("bn_finalize", c, &ca)?;
        }
        ca.mode = 0;
        self.launch_1d("bn_apply", x.region.len, &ca)
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
        const OP: &str = "batchnorm_apply";
        let _r = self.range(OP);
        ops::same_shape(OP, "y vs x", y.shape, x.shape)?;
        super::per_channel(
            OP,
            &[
                ("gamma", gamma),
                ("beta", beta),
                ("saved mean", stats.mean),
                ("saved invstd", stats.invstd),
            ],
            x.shape.c,
        )?;
        check_regions(
            OP,
            a.len,
            &[x.region, gamma, beta, stats.mean, stats.invstd],
            &[y.region],
        )?;
        int(OP, x.region.len)?;
        let [xp, gp, bp, mp, ip, yp] = self.ptrs(
            a,
            [x.region, gamma, beta, stats.mean, stats.invstd, y.region],
        );
        let s = x.shape;
        // mode 0 of bn_apply: the same kernel and formula as the training forward's last pass.
        let ca = ChanArgs {
            x: xp,
            gamma: gp,
            beta: bp,
            mean: mp,
            invstd: ip,
            y: yp,
            n: s.n as i32,
            c: s.c as i32,
            sp: s.spatial() as i32,
            mode: 0,
            ..Default::default()
        };
        self.launch_1d("bn_apply", x.region.len, &ca)
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
        const OP: &str = "batchnorm_infer";
        let _r = self.range(OP);
        ops::same_shape(OP, "y vs x", y.shape, x.shape)?;
        super::per_channel(
            OP,
            &[
                ("gamma", gamma),
                ("beta", beta),
                ("running mean", running.mean),
                ("running var", running.var),
            ],
            x.shape.c,
        )?;
        check_regions(
            OP,
            a.len,
            &[x.region, gamma, beta, running.mean, running.var],
            &[y.region],
        )?;
        int(OP, x.region.len)?;
        let [xp, gp, bp, rmp, rvp, yp] = self.ptrs(
            a,
            [x.region, gamma, beta, running.mean, running.var, y.region],
        );
        let s = x.shape;
        let ca = ChanArgs {
            x: xp,
            gamma: gp,
            beta: bp,
            rmean: rmp,
            rvar: rvp,
            y: yp,
            n: s.n as i32,
            c: s.c as i32,
            sp: s.spatial() as i32,
            mode: 1,
            eps: eps as f32,
            ..Default::default()
        };
        self.launch_1d("bn_apply", x.region.len, &ca)
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
        const OP: &str = "batchnorm_backward";
        let _r = self.range(OP);
        ops::same_shape(OP, "dy vs x", dy.shape, x.shape)?;
        ops::same_shape(OP, "dx vs x", dx.shape, x.shape)?;
        let c = x.shape.c;
        super::per_channel(
            OP,
            &[
                ("gamma", gamma),
                ("mean", stats.mean),
                ("invstd", stats.invstd),
                ("dgamma", dgamma),
                ("dbeta", dbeta),
            ],
            c,
        )?;
        check_regions(
            OP,
            a.len,
            &[x.region, dy.region, gamma, stats.mean, stats.invstd],
            &[dx.region, dgamma, dbeta],
        )?;
        let mut ca = self.chan_args(a, x, OP)?;
        if c == 0 {
            return Ok(());
        }
        let [xp, gy, gp, mp, ip, gx, dgp, dbp] = self.ptrs(
            a,
            [
                x.region,
                dy.region,
                gamma,
                stats.mean,
                stats.invstd,
                dx.region,
                dgamma,
                dbeta,
            ],
        );
        ca.x = xp;
        ca.dy = gy;
        ca.gamma = gp;
        ca.mean = mp;
        ca.invstd = ip;
        ca.y = gx;
        ca.dgamma = dgp;
        ca.dbeta = dbp;
        ca.mode = 2;
        ca.accumulate = acc(mode);
        self.launch("bn_partial", [ca.splits as u32, c as u32, 1], THREADS, &ca)?;
        self.launch_1d("bn_finalize", c, &ca)?;
        self.launch_1d("bn_backward_apply", x.region.len, &ca)
    }

    fn bce_weights(
        &self,
        a: &mut Self::Arena,
        target: View,
        mask: View,
        weight: View,
    ) -> Result<()> {
        const OP: &str = "bce_weights";
        let _r = self.range(OP);
        ops::same_shape(OP, "mask vs target", mask.shape, target.shape)?;
        ops::same_shape(OP, "weight vs target", weight.shape, target.shape)?;
        check_regions(OP, a.len, &[target.region, mask.region], &[weight.region])?;
        let s = target.shape;
        int(OP, target.region.len)?;
        if s.c == 0 {
            return Ok(());
        }
        let (ns, chunk) = splits(s.n * s.spatial(), MAX_CHANNEL_SPLITS);
        let ws = self.scratch(a, s.c * ns * 2 + 2 * s.c)?;
        let [tp, mp, wp] = self.ptrs(a, [target.region, mask.region, weight.region]);
        let la = LossArgs {
            t: tp,
            m: mp,
            weight: wp,
            part: ws,
            tot: ws + 4 * (s.c * ns * 2) as u64,
            n: s.n as i32,
            c: s.c as i32,
            sp: s.spatial() as i32,
            total: target.region.len as i32,
            splits: ns as i32,
            chunk: chunk as i32,
            ..Default::default()
        };
        self.launch(
            "bce_count_partial",
            [ns as u32, s.c as u32, 1],
            THREADS,
            &la,
        )?;
        self.launch_1d("bce_weights_finalize", s.c, &la)?;
        self.launch_1d("bce_weights_apply", target.region.len, &la)
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
        const OP: &str = "bce_loss";
        let _r = self.range(OP);
        for (what, v) in [("target", target), ("weight", weight), ("mask", mask)] {
            ops::same_shape(OP, &format!("{what} vs logits"), v.shape, logits.shape)?;
        }
        ops::vector_len(OP, "loss output", loss.len, 1)?;
        let ins = [logits.region, target.region, weight.region, mask.region];
        let dz = match dlogits {
            Some(dz) => {
                ops::same_shape(OP, "dlogits vs logits", dz.shape, logits.shape)?;
                check_regions(OP, a.len, &ins, &[loss, dz.region])?;
                dz.region
            }
            None => {
                check_regions(OP, a.len, &ins, &[loss])?;
                Region::default()
            }
        };
        let total = logits.region.len;
        int(OP, total)?;
        let (ns, chunk) = splits(total, MAX_LOSS_SPLITS);
        let ws = self.scratch(a, 2 * ns + 1)?;
        let [zp, tp, wp, mp, lp, dzp] = self.ptrs(
            a,
            [
                logits.region,
                target.region,
                weight.region,
                mask.region,
                loss,
                dz,
            ],
        );
        let la = LossArgs {
            z: zp,
            t: tp,
            w: wp,
            m: mp,
            dz: dzp,
            loss: lp,
            part: ws,
            tot: ws + 4 * (2 * ns) as u64,
            total: total as i32,
            splits: ns as i32,
            chunk: chunk as i32,
            ..Default::default()
        };
        self.launch("bce_loss_partial", [ns as u32, 1, 1], THREADS, &la)?;
        self.launch("bce_loss_finalize", [1, 1, 1], THREADS, &la)?;
        if dlogits.is_some() {
            self.launch_1d("bce_grad", total, &la)?;
        }
        Ok(())
    }

    fn sigmoid(&self, a: &mut Self::Arena, x: View, y: View) -> Result<()> {
        let _r = self.range("sigmoid");
        ops::same_shape("sigmoid", "y vs x", y.shape, x.shape)?;
        check_regions("sigmoid", a.len, &[x.region], &[y.region])?;
        let [xp, yp] = self.ptrs(a, [x.region, y.region]);
        let la = LossArgs {
            z: xp,
            dz: yp,
            total: int("sigmoid", x.region.len)?,
            ..Default::default()
        };
        self.launch_1d("sigmoid_map", x.region.len, &la)
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
        let _r = self.range("adam_step");
        if step == 0 {
            return Err(Error::Invalid("adam_step: steps count from 1".into()));
        }
        for r in [grad, m, v] {
            ops::vector_len("adam_step", "gradient/moment buffer", r.len, param.len)?;
        }
        check_regions("adam_step", a.len, &[grad], &[param, m, v])?;
        let (lr_t, inv_bc2) = hp.corrections(step);
        let [pp, gp, mp, vp] = self.ptrs(a, [param, grad, m, v]);
        let args = AdamArgs {
            p: pp,
            g: gp,
            m: mp,
            v: vp,
            n: int("adam_step", param.len)?,
            beta1: hp.beta1 as f32,
            beta2: hp.beta2 as f32,
            one_minus_beta1: (1.0 - hp.beta1) as f32,
            one_minus_beta2: (1.0 - hp.beta2) as f32,
            lr_t: lr_t as f32,
            inv_bc2: inv_bc2 as f32,
            eps: hp.eps as f32,
        };
        self.launch_1d("adam_step", param.len, &args)
    }

    fn sgd_step(
        &self,
        a: &mut Self::Arena,
        param: Region,
        grad: Region,
        velocity: Option<Region>,
        hp: SgdParams,
    ) -> Result<()> {
        let _r = self.range("sgd_step");
        ops::vector_len("sgd_step", "gradient", grad.len, param.len)?;
        let vel = match velocity {
            Some(vr) => {
                ops::vector_len("sgd_step", "velocity", vr.len, param.len)?;
                check_regions("sgd_step", a.len, &[grad], &[param, vr])?;
                vr
            }
            None => {
                check_regions("sgd_step", a.len, &[grad], &[param])?;
                Region::default()
            }
        };
        let [pp, gp, vp] = self.ptrs(a, [param, grad, vel]);
        let args = SgdArgs {
            p: pp,
            g: gp,
            vel: if velocity.is_some() { vp } else { 0 },
            n: int("sgd_step", param.len)?,
            lr: hp.lr as f32,
            momentum: hp.momentum as f32,
            weight_decay: hp.weight_decay as f32,
        };
        self.launch_1d("sgd_step", param.len, &args)
    }
}

impl<L: Launcher> GpuBackend<L> {
    /// The shape fields and split of a per-channel reduction over x, with the workspace for its
    /// partials (c x splits x 2) and totals (c x 2).
    fn chan_args(&self, a: &mut GpuArena<L::Buf>, x: View, op: &'static str) -> Result<ChanArgs> {
        let s = x.shape;
        int(op, x.region.len)?;
        let (ns, chunk) = splits(s.n * s.spatial(), MAX_CHANNEL_SPLITS);
        let part = self.scratch(a, s.c * ns * 2 + 2 * s.c)?;
        Ok(ChanArgs {
            part,
            tot: part + 4 * (s.c * ns * 2) as u64,
            n: s.n as i32,
            c: s.c as i32,
            sp: s.spatial() as i32,
            splits: ns as i32,
            chunk: chunk as i32,
            ..Default::default()
        })
    }
}

fn convt_args(
    g: &ConvTransposeGeom,
    x: u64,
    w: u64,
    bias: u64,
    dy: u64,
    out: u64,
    accumulate: i32,
) -> Result<ConvTArgs> {
    const OP: &str = "conv_transpose";
    int(OP, 4 * g.n * g.ci.max(g.co) * g.d * g.h * g.w)?;
    Ok(ConvTArgs {
        x,
        w,
        bias,
        dy,
        out,
        n: g.n as i32,
        ci: g.ci as i32,
        co: g.co as i32,
        d: g.d as i32,
        h: g.h as i32,
        wd: g.w as i32,
        accumulate,
        pad: 0,
    })
}

fn pool_args(x: View, xp: u64, dy: u64, out: u64, accumulate: i32) -> Result<PoolArgs> {
    let s = x.shape;
    int("maxpool", x.region.len)?;
    Ok(PoolArgs {
        x: xp,
        dy,
        out,
        planes: (s.n * s.c * s.d) as i32,
        h: s.h as i32,
        wd: s.w as i32,
        accumulate,
    })
}

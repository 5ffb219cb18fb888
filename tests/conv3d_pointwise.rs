//! The narrow pointwise convolutions (kernels/conv3d_pointwise.cu: 1x1x1, at most 5 output
//! channels and 1,280 weights, in f32, TF32 and BF16) on the emulator (and a GPU where one is
//! found) against the CPU in f64: forward with and without bias, input gradient and weight
//! gradient, overwrite and accumulate, on ragged position counts (not multiples of 4 or of a
//! block), aligned tensors that take the 16-byte loads and misaligned ones that do not, sample
//! boundaries inside a weight-gradient split, and ci * co at the rule's limits (256 x 5, 1280 x 1).
//! Each case runs twice, under the schedule of the environment (REVSEG_EMU_SCHEDULE, and the
//! checks where REVSEG_EMU_RACECHECK=1) and under a seeded random schedule with every check on;
//! the two must give the same bits.
//!
//! Bound, as tests/conv3d_mma.rs (kernels/README.md, "Tolerances of the tensor-core
//! convolutions"): each output is a sum of K products of operands rounded to the precision (unit
//! roundoff u: 2^-24 for f32, whose operands are the f64 data rounded once, 2^-11 TF32, 2^-8
//! BF16), added in f32, so |got - exact| <= (2u + u^2 + (K + 2) u32) (|prior| + |bias| + sum |x||w|)
//! elementwise, K = ci (forward), co (input gradient) or n * d * h * w (weight gradient).

use revseg::backend::cpu::CpuBackend;
use revseg::backend::device;
use revseg::backend::gpu::conv3d_pointwise::{is_narrow, weight_splits};
use revseg::backend::gpu::emu::{EmuConfig, Schedule};
use revseg::backend::gpu::recorder::Recorder;
use revseg::backend::gpu::{cuda, EmuLauncher, GpuBackend, Launcher};
use revseg::backend::{Backend, Bump, Region, View, Write};
use revseg::ops::conv3d::Conv3dGeom;
use revseg::precision::Precision;
use revseg::rng::Rng;
use revseg::tensor::{Element, Shape5};

const U32: f64 = 1.0 / 16_777_216.0;

fn unit_roundoff(p: Precision) -> f64 {
    match p {
        Precision::Tf32 => 2f64.powi(-11),
        Precision::Bf16 => 2f64.powi(-8),
        Precision::F32 => U32,
    }
}

/// (n, ci, co, d, h, w, skew): `skew` 1 shifts every tensor by one element (no 16-byte loads).
const SHAPES: [([usize; 6], usize); 7] = [
    // The output layer's channels; 2 x 105 positions (not a multiple of 4), misaligned.
    ([2, 28, 3, 3, 5, 7], 1),
    // The same channels, 144 positions (a multiple of 4, not of a block's 1,024), aligned: 16-byte
    // loads; the weight gradient's second split holds 16 positions (4 lanes of a warp).
    ([1, 28, 3, 2, 6, 12], 0),
    // 2 x 1,280 positions, aligned: 20 weight splits of 128, three blocks of 16-byte forwards.
    ([2, 28, 3, 4, 16, 20], 0),
    // ci * co = 1280 at co = 5: 32 channel groups, three samples of 36 positions, aligned.
    ([3, 256, 5, 1, 3, 12], 0),
    // ci * co = 1280 at co = 1: 160 channel groups, 10 positions, misaligned.
    ([1, 1280, 1, 1, 2, 5], 1),
    // co 4, a multiple of 4 positions but misaligned (no 16-byte loads), two samples.
    ([2, 7, 4, 1, 4, 8], 1),
    // co 2 and one input channel, 45 positions: a warp's lanes past the sample's end.
    ([3, 1, 2, 1, 5, 9], 0),
];

struct Case {
    dims: [usize; 6],
    bump: Bump,
    init: Vec<(Region, Vec<f64>)>,
    x: View,
    w: View,
    b: Region,
    dy: View,
    y: View,
    y_nb: View,
    dx: View,
    dx_acc: View,
    dw: View,
    dw_acc: View,
}

impl Case {
    fn new((dims, skew): ([usize; 6], usize), rng: &mut Rng) -> Case {
        let [n, ci, co, d, h, w] = dims;
        let mut bump = Bump::default();
        let mut init = Vec::new();
        let mut view = |shape: Shape5, data: bool, rng: &mut Rng| {
            let pad = (4 - bump.len() % 4) % 4 + skew;
            bump.take(pad);
            let v = bump.view(shape);
            if data {
                init.push((v.region, rng.normals(shape.len())));
            }
            v
        };
        let x = view(Shape5::new(n, ci, d, h, w), true, rng);
        let wt = view(Shape5::new(co, ci, 1, 1, 1), true, rng);
        let b = view(Shape5::vector(co), true, rng).region;
        let dy = view(Shape5::new(n, co, d, h, w), true, rng);
        let y = view(dy.shape, false, rng);
        let y_nb = view(dy.shape, false, rng);
        let dx = view(x.shape, false, rng);
        let dx_acc = view(x.shape, true, rng);
        let dw = view(wt.shape, false, rng);
        let dw_acc = view(wt.shape, true, rng);
        Case {
            dims,
            bump,
            init,
            x,
            w: wt,
            b,
            dy,
            y,
            y_nb,
            dx,
            dx_acc,
            dw,
            dw_acc,
        }
    }

    fn geom(&self) -> Conv3dGeom {
        Conv3dGeom::check(self.x.shape, self.w.shape, self.dy.shape).unwrap()
    }

    /// (name, region, K) of each output.
    fn outputs(&self) -> Vec<(&'static str, Region, usize)> {
        let [n, ci, co, d, h, w] = self.dims;
        vec![
            ("y bias", self.y.region, ci),
            ("y", self.y_nb.region, ci),
            ("dx", self.dx.region, co),
            ("dx accumulate", self.dx_acc.region, co),
            ("dw", self.dw.region, n * d * h * w),
            ("dw accumulate", self.dw_acc.region, n * d * h * w),
        ]
    }

    /// Every call; `abs` takes the absolute value of every input first (the bound's scale).
    fn run<B: Backend>(&self, dev: &B, abs: bool) -> Vec<Vec<f64>> {
        let mut a = dev.alloc_arena(self.bump.len()).unwrap();
        for (r, v) in &self.init {
            let v: Vec<B::Elem> = v
                .iter()
                .map(|&x| B::Elem::from_f64(if abs { x.abs() } else { x }))
                .collect();
            dev.upload(&mut a, *r, &v).unwrap();
        }
        let ctx = |e: revseg::error::Error| panic!("{} failed: {e}", dev.name());
        dev.conv3d_forward(&mut a, self.x, self.w, Some(self.b), self.y)
            .unwrap_or_else(ctx);
        dev.conv3d_forward(&mut a, self.x, self.w, None, self.y_nb)
            .unwrap_or_else(ctx);
        dev.conv3d_backward_input(&mut a, self.dy, self.w, self.dx, Write::Overwrite)
            .unwrap_or_else(ctx);
        dev.conv3d_backward_input(&mut a, self.dy, self.w, self.dx_acc, Write::Accumulate)
            .unwrap_or_else(ctx);
        dev.conv3d_backward_weight(&mut a, self.x, self.dy, self.dw, Write::Overwrite)
            .unwrap_or_else(ctx);
        dev.conv3d_backward_weight(&mut a, self.x, self.dy, self.dw_acc, Write::Accumulate)
            .unwrap_or_else(ctx);
        self.outputs()
            .iter()
            .map(|&(_, r, _)| {
                let mut v = vec![B::Elem::ZERO; r.len];
                dev.download(&a, r, &mut v).unwrap();
                v.iter().map(|x| x.to_f64()).collect()
            })
            .collect()
    }
}

/// Largest |got - exact| / bound over one output.
fn worst(got: &[f64], exact: &[f64], scale: &[f64], u: f64, k: usize) -> f64 {
    let factor = 2.0 * u + u * u + (k + 2) as f64 * U32;
    got.iter()
        .zip(exact.iter().zip(scale))
        .map(|(g, (e, s))| {
            assert!(g.is_finite(), "not finite");
            (g - e).abs() / (factor * s).max(f64::MIN_POSITIVE)
        })
        .fold(0.0, f64::max)
}

type Emu = GpuBackend<Recorder<EmuLauncher>>;

fn emu(precision: Precision, config: Option<EmuConfig>) -> Emu {
    let l = match config {
        Some(c) => EmuLauncher::with_config(c),
        None => EmuLauncher::new(),
    };
    GpuBackend::with_precision(Recorder::new(l), precision)
}

/// The launches of one case: only this file's kernels and conv3d.cu's in-order reduction, the
/// weight gradient split as `weight_splits` says for the emulator's SM count, and 16-byte loads
/// (one thread per 4 positions) exactly where the case is aligned with sp % 4 == 0.
fn check_launches(dev: &Emu, case: &Case, skew: usize) {
    let g = case.geom();
    assert!(is_narrow(&g), "{g:?}");
    let grids = dev.launcher.grids.borrow();
    let sms = dev.launcher.limits().sm_count as usize;
    let q = g.n * g.spatial();
    let vec = skew == 0 && g.spatial().is_multiple_of(4);
    let threads = if vec { q / 4 } else { q };
    let mut seen = [0usize; 3];
    for (k, grid) in grids.iter() {
        if k == "fill_f32" || k == "conv3d_backward_weight_reduce" {
            continue;
        }
        let rest = k
            .strip_prefix("conv3d_pointwise_narrow_")
            .unwrap_or_else(|| panic!("{:?}: {k} launched", case.dims));
        let pass = rest.rsplit_once('_').unwrap().0;
        match pass {
            "forward" | "backward_input" => {
                assert_eq!(
                    grid[0] as usize,
                    threads.div_ceil(256),
                    "{k} {:?}",
                    case.dims
                );
                seen[(pass == "backward_input") as usize] += 1;
            }
            "backward_weight" => {
                assert_eq!(grid[0] as usize, g.ci.div_ceil(8), "{k}");
                assert_eq!(grid[1] as usize, weight_splits(sms, &g).0, "{k}");
                seen[2] += 1;
            }
            _ => panic!("{k}"),
        }
    }
    assert_eq!(seen, [2, 2, 2], "{:?}", case.dims);
}

fn check(precision: Precision) {
    let u = unit_roundoff(precision);
    let mut rng = Rng::new(41);
    let cpu = CpuBackend::<f64>::new();
    for (i, &shape) in SHAPES.iter().enumerate() {
        let case = Case::new(shape, &mut rng);
        let exact = case.run(&cpu, false);
        let scale = case.run(&cpu, true);
        let mut runs: Vec<(String, [Vec<Vec<f64>>; 2])> = Vec::new();
        if std::env::var_os("REVSEG_PARITY_CUDA_ONLY").is_none() {
            let a = emu(precision, None);
            let got = case.run(&a, false);
            check_launches(&a, &case, shape.1);
            let b = emu(
                precision,
                Some(EmuConfig {
                    schedule: Schedule::Random(3),
                    check: true,
                }),
            );
            runs.push(("emu".into(), [got, case.run(&b, false)]));
        }
        if cuda::device_count() > 0 {
            let gpu = device::cuda_backend_in(0, precision)
                .expect("a CUDA device is listed but does not open");
            runs.push((
                "cuda".into(),
                [case.run(&gpu, false), case.run(&gpu, false)],
            ));
        } else if std::env::var_os("REVSEG_REQUIRE_CUDA").is_some() {
            panic!("REVSEG_REQUIRE_CUDA is set but no CUDA device was found (see `revseg info`)");
        }
        assert!(!runs.is_empty());
        for (dev, [got, again]) in &runs {
            let mut fwd_ratio_f32 = 0.0f64;
            for (j, (name, _, k)) in case.outputs().into_iter().enumerate() {
                assert!(
                    exact[j].iter().filter(|&&v| v != 0.0).count() == exact[j].len(),
                    "shape {i} {name}: the reference has zeros"
                );
                assert_eq!(
                    got[j].iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    again[j].iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{dev} shape {i} {name}: two runs (two schedules on the emulator) differ"
                );
                let r = worst(&got[j], &exact[j], &scale[j], u, k);
                eprintln!("{dev} {precision} shape {i} {name}: worst error {r:.3} of the bound");
                assert!(
                    r <= 1.0,
                    "{dev} {precision} shape {i} {:?} {name}: error {r:.2} times the bound",
                    case.dims
                );
                if j < 2 {
                    fwd_ratio_f32 = fwd_ratio_f32.max(worst(&got[j], &exact[j], &scale[j], U32, k));
                }
            }
            // The operands really are rounded in TF32 and BF16: the forward's error is above what
            // f32 operands allow, where that bound is well below the format's own (K 1,280 is not:
            // its f32 bound, 1,282 u32, is two thirds of TF32's u).
            if precision != Precision::F32 && ((case.dims[1] + 2) as f64 * U32) < u / 8.0 {
                assert!(
                    fwd_ratio_f32 > 1.0,
                    "{dev} {precision} shape {i}: error within the f32 bound ({fwd_ratio_f32:.2}), operands not rounded?"
                );
            }
        }
    }
}

#[test]
fn f32_matches_f64_within_the_bound() {
    check(Precision::F32);
}

#[test]
fn tf32_matches_f64_within_the_bound() {
    check(Precision::Tf32);
}

#[test]
fn bf16_matches_f64_within_the_bound() {
    check(Precision::Bf16);
}

/// The rule sends the output layer's shape here in every precision, and a layer just past it
/// (six output channels) to the kernels it took before.
#[test]
fn dispatch_follows_the_rule_in_every_precision() {
    let mut rng = Rng::new(5);
    for precision in [Precision::F32, Precision::Tf32, Precision::Bf16] {
        for (co, narrow) in [(3, true), (6, false)] {
            let case = Case::new(([1, 9, co, 1, 3, 4], 0), &mut rng);
            let dev = emu(
                precision,
                Some(EmuConfig {
                    schedule: Schedule::Ascending,
                    check: false,
                }),
            );
            case.run(&dev, false);
            let grids = dev.launcher.grids.borrow();
            let ours = grids
                .iter()
                .filter(|(k, _)| k.starts_with("conv3d_pointwise_narrow_"))
                .count();
            assert_eq!(ours, if narrow { 6 } else { 0 }, "{precision} co {co}");
            assert!(
                grids.iter().all(|(k, _)| !narrow
                    || k == "fill_f32"
                    || k == "conv3d_backward_weight_reduce"
                    || k.ends_with(&format!("_{}", precision.name()))),
                "{precision} co {co}: {grids:?}"
            );
        }
    }
}

//! conv3d on tensor cores (kernels/conv3d_mma.cu) on the emulator against the CPU in f64, in TF32
//! and BF16: forward (with and without bias), input gradient and weight gradient (overwrite and
//! accumulate), on ragged shapes (positions and channels not multiples of the tiles, K not a
//! multiple of 16, one input channel, five and six output channels, an aligned volume that takes the
//! 16-byte copies and misaligned ones that do not), under two schedules with every check on, and on
//! the GPU where one is found (scripts/gpu-check).
//!
//! Bound (kernels/README.md, "Tolerances of the tensor-core convolutions"): every output is a sum
//! of K products of operands rounded to the format (unit roundoff u), added in f32 (u32 = 2^-24),
//! so |got - exact| <= (2u + u^2 + (K + 2) u32) * (|prior| + |bias| + sum |x| |w|) elementwise;
//! the sum of absolute products is the same convolution of |x| and |w| in f64.

use revseg::backend::cpu::CpuBackend;
use revseg::backend::device;
use revseg::backend::gpu::emu::{EmuConfig, Schedule};
use revseg::backend::gpu::{cuda, EmuLauncher, GpuBackend};
use revseg::backend::{Backend, Bump, Region, View, Write};
use revseg::model::{self, NetConfig, Norm, ParamKind};
use revseg::precision::Precision;
use revseg::rng::Rng;
use revseg::scheduler::{self, Batch, Executor, Strategy};
use revseg::tensor::{Element, Shape5};

const U32: f64 = 1.0 / 16_777_216.0;

fn unit_roundoff(p: Precision) -> f64 {
    match p {
        Precision::Tf32 => 2f64.powi(-11),
        Precision::Bf16 => 2f64.powi(-8),
        Precision::F32 => U32,
    }
}

/// One layer's operands and outputs in one arena; `skew` shifts every tensor by one element
/// (no 16-byte copies), 0 keeps them 16-byte aligned.
struct Case {
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
    /// K of each output (forward, input gradient, weight gradient).
    k: [usize; 3],
}

impl Case {
    fn new(dims: [usize; 9], skew: usize, rng: &mut Rng) -> Case {
        let [n, ci, co, d, h, w, kd, kh, kw] = dims;
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
        let wt = view(Shape5::new(co, ci, kd, kh, kw), true, rng);
        let b = view(Shape5::vector(co), true, rng).region;
        let dy = view(Shape5::new(n, co, d, h, w), true, rng);
        let y = view(dy.shape, false, rng);
        let y_nb = view(dy.shape, false, rng);
        let dx = view(x.shape, false, rng);
        let dx_acc = view(x.shape, true, rng);
        let dw = view(wt.shape, false, rng);
        let dw_acc = view(wt.shape, true, rng);
        let taps = kd * kh * kw;
        Case {
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
            k: [ci * taps, co * taps, n * d * h * w],
        }
    }

    /// (name, region, K, prior values added) of each output.
    fn outputs(&self) -> Vec<(&'static str, Region, usize)> {
        vec![
            ("y bias", self.y.region, self.k[0]),
            ("y", self.y_nb.region, self.k[0]),
            ("dx", self.dx.region, self.k[1]),
            ("dx accumulate", self.dx_acc.region, self.k[1]),
            ("dw", self.dw.region, self.k[2]),
            ("dw accumulate", self.dw_acc.region, self.k[2]),
        ]
    }

    /// Runs every call; `abs` takes the absolute value of every input first (the bound's scale).
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

fn emu(precision: Precision, schedule: Schedule) -> GpuBackend<EmuLauncher> {
    GpuBackend::with_precision(
        EmuLauncher::with_config(EmuConfig {
            schedule,
            check: true,
        }),
        precision,
    )
}

/// Largest |got - exact| / bound over one output, and its count of values.
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

/// (n, ci, co, d, h, w, kd, kh, kw, skew)
const SHAPES: [([usize; 9], usize); 8] = [
    // 2 x 105 positions (two ragged position tiles each), co 5 in a tile of 8, K = 81.
    ([2, 3, 5, 3, 5, 7, 3, 3, 3], 1),
    // co 18 -> tile 24, ci 20 -> tile 24 for the input gradient, K = 180 and 162.
    ([1, 20, 18, 2, 6, 9, 1, 3, 3], 1),
    // One input channel, 1x5x5 (K = 25), rows of 12 (sp % 4 == 0, aligned: 16-byte copies).
    ([1, 1, 12, 1, 9, 12, 1, 5, 5], 0),
    // 1x1x1 with six output channels, K = 33 (five or fewer take conv3d_pointwise.cu).
    ([2, 33, 6, 1, 4, 5, 1, 1, 1], 1),
    // co 75 -> tile 80 (ten n-fragments per warp), aligned; the input gradient stages its 75
    // channels in 4 chunks of 19 (the last one part zeros).
    ([1, 6, 75, 1, 7, 8, 1, 3, 3], 0),
    // The forward's pair fold (one input channel) on an odd width, two samples, misaligned.
    ([2, 1, 7, 2, 5, 11, 1, 5, 5], 1),
    // 3x3x3 over 20 channels: two halo chunks with 16-byte copies (rows of 8), boxes over z.
    ([1, 20, 9, 3, 4, 8, 3, 3, 3], 0),
    // embed_in's weight gradient: one input channel, 28 outputs, 1x5x5 on the pair fold with an M
    // tile of 32 (two K groups, two parities per split); an odd width (the last pair half
    // outside), several boxes and splits.
    ([1, 1, 28, 2, 7, 13, 1, 5, 5], 1),
];

/// The devices a precision is checked on: the emulator always (unless a GPU run asks for CUDA
/// only, as scripts/gpu-check does: CI runs the emulator half), the GPU where one is found.
fn on_devices(
    precision: Precision,
    mut body: impl FnMut(&str, &dyn Fn(&Case) -> [Vec<Vec<f64>>; 2]),
) {
    if std::env::var_os("REVSEG_PARITY_CUDA_ONLY").is_none() {
        body("emu", &|case| {
            [
                case.run(&emu(precision, Schedule::Ascending), false),
                case.run(&emu(precision, Schedule::Descending), false),
            ]
        });
    }
    if cuda::device_count() > 0 {
        let gpu = device::cuda_backend_in(0, precision)
            .expect("a CUDA device is listed but does not open");
        // Two runs: the kernels are deterministic, so any difference is a race.
        body("cuda", &|case| {
            [case.run(&gpu, false), case.run(&gpu, false)]
        });
    } else if std::env::var_os("REVSEG_REQUIRE_CUDA").is_some() {
        panic!("REVSEG_REQUIRE_CUDA is set but no CUDA device was found (see `revseg info`)");
    }
}

fn check(precision: Precision) {
    let u = unit_roundoff(precision);
    let mut rng = Rng::new(23);
    let cpu = CpuBackend::<f64>::new();
    for (i, &(dims, skew)) in SHAPES.iter().enumerate() {
        let case = Case::new(dims, skew, &mut rng);
        let exact = case.run(&cpu, false);
        let scale = case.run(&cpu, true);
        on_devices(precision, |dev, run| {
            let [got, again] = run(&case);
            let mut fwd_ratio_f32 = 0.0f64;
            for (j, (name, _, k)) in case.outputs().into_iter().enumerate() {
                assert!(
                    exact[j].iter().any(|&v| v != 0.0),
                    "shape {i} {name}: the reference is all zero"
                );
                assert_eq!(
                    got[j].iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    again[j].iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{dev} shape {i} {name}: two runs (two schedules on the emulator) differ (a race)"
                );
                let r = worst(&got[j], &exact[j], &scale[j], u, k);
                eprintln!("{dev} {precision} shape {i} {name}: worst error {r:.3} of the bound");
                assert!(
                    r <= 1.0,
                    "{dev} {precision} shape {i} {dims:?} {name}: error {r:.2} times the bound"
                );
                if j < 2 {
                    fwd_ratio_f32 = fwd_ratio_f32.max(worst(&got[j], &exact[j], &scale[j], U32, k));
                }
            }
            // The operands really are rounded: the forward's error exceeds what f32 operands allow.
            assert!(
                fwd_ratio_f32 > 1.0,
                "{dev} {precision} shape {i}: error within the f32 bound ({fwd_ratio_f32:.2}), operands not rounded?"
            );
        });
    }
}

#[test]
fn tf32_matches_f64_within_the_bound() {
    check(Precision::Tf32);
}

#[test]
fn bf16_matches_f64_within_the_bound() {
    check(Precision::Bf16);
}

/// One training step (forward, loss, backward through the scheduler's recompute plan) of a small
/// reversible network: (loss, every parameter gradient, number of convolutions, parameter names).
fn train_step<B: Backend>(b: &B) -> Step {
    let c = NetConfig {
        widths: vec![4, 6, 8],
        rev_blocks: 2,
        norm: Norm::Batch,
        outputs: 3,
    };
    let prog = model::build(&c, (3, 8, 12)).unwrap();
    let convs = prog
        .params
        .iter()
        .filter(|p| matches!(p.kind, ParamKind::ConvWeight { .. }))
        .count();
    let mut rng = Rng::new(3);
    let n_in = prog.tensors[prog.input].shape.len();
    let n_out = prog.tensors[prog.output].shape.len();
    let elems = |v: Vec<f64>| v.into_iter().map(B::Elem::from_f64).collect::<Vec<_>>();
    let image = elems(rng.normals(n_in));
    let target = elems(
        (0..n_out)
            .map(|_| (rng.uniform() < 0.6) as u8 as f64)
            .collect(),
    );
    let mask = elems(
        (0..n_out)
            .map(|_| (rng.uniform() < 0.9) as u8 as f64)
            .collect(),
    );
    let plan = scheduler::training_plan(&prog, Strategy::Recompute, false).unwrap();
    let mut ex = Executor::new(b, &prog, plan, 1).unwrap();
    let batch = Batch {
        image: &image,
        target: &target,
        mask: &mask,
    };
    let loss = ex.train_step(b, &batch, false).unwrap();
    let grads = (0..prog.params.len())
        .map(|p| ex.grad(b, p).unwrap())
        .collect();
    let names = prog.params.iter().map(|p| p.name.clone()).collect();
    (loss, grads, convs, names)
}

fn norm(v: impl Iterator<Item = f64>) -> f64 {
    v.map(|x| x * x).sum::<f64>().sqrt()
}

/// Tolerance of a whole step (kernels/README.md): each convolution adds a norm-wise relative error
/// of about 2u (its two rounded operands; f32 accumulation is far below), and a gradient passes
/// through at most every convolution twice (forward and backward): 4 u D for D convolutions.
fn step_matches_cpu(precision: Precision) {
    let reference = train_step(&CpuBackend::<f64>::new());
    if std::env::var_os("REVSEG_PARITY_CUDA_ONLY").is_none() {
        let emu = GpuBackend::with_precision(EmuLauncher::new(), precision);
        step_within_tolerance("emu", precision, train_step(&emu), &reference);
    }
    if cuda::device_count() > 0 {
        let gpu = device::cuda_backend_in(0, precision)
            .expect("a CUDA device is listed but does not open");
        step_within_tolerance("cuda", precision, train_step(&gpu), &reference);
    } else if std::env::var_os("REVSEG_REQUIRE_CUDA").is_some() {
        panic!("REVSEG_REQUIRE_CUDA is set but no CUDA device was found (see `revseg info`)");
    }
}

type Step = (f64, Vec<Vec<f64>>, usize, Vec<String>);

fn step_within_tolerance(dev: &str, precision: Precision, got: Step, reference: &Step) {
    let (l_dev, g_dev, _, _) = got;
    let (l_ref, g_ref, convs, names) = reference;
    let (l_ref, convs) = (*l_ref, *convs);
    let tol = 4.0 * unit_roundoff(precision) * convs as f64;
    let loss_err = (l_dev - l_ref).abs() / l_ref.abs();
    eprintln!(
        "{dev} {precision}: loss {l_dev} vs {l_ref} (relative {loss_err:.2e}), tolerance {tol:.2e}"
    );
    assert!(
        loss_err <= tol,
        "{dev} {precision}: loss error {loss_err:.2e} > {tol:.2e}"
    );
    let global = g_ref
        .iter()
        .map(|g| norm(g.iter().copied()))
        .fold(0.0, f64::max);
    assert!(global > 0.0);
    let mut worst = 0.0f64;
    for (i, (c, d)) in g_ref.iter().zip(&g_dev).enumerate() {
        assert!(d.iter().all(|v| v.is_finite()), "param {i}: not finite");
        // Small gradients (biases right before a BatchNorm are zero by design) are measured
        // against a tenth of the largest: a max-pool whose arg-max flips after rounding moves
        // gradient by a step that does not shrink with the gradient's own size.
        let scale = norm(c.iter().copied()).max(0.1 * global);
        let err = norm(c.iter().zip(d).map(|(a, b)| a - b)) / scale;
        worst = worst.max(err);
        let name = &names[i];
        assert!(
            err <= tol,
            "{dev} {precision} {name}: error {err:.2e} > {tol:.2e}"
        );
    }
    eprintln!("{dev} {precision}: worst gradient error {worst:.2e}");
    // The precision is in effect: an f32 step is within 1e-4 (tests/gpu_parity.rs).
    assert!(
        worst > 1e-4,
        "{dev} {precision}: gradients as close as f32 ones ({worst:.2e})"
    );
}

#[test]
fn tf32_training_step_matches_cpu() {
    step_matches_cpu(Precision::Tf32);
}

#[test]
fn bf16_training_step_matches_cpu() {
    step_matches_cpu(Precision::Bf16);
}

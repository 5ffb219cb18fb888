//! The CUDA kernels against the CPU backend (the reference), op by op, on every device present: the
//! emulator always, the GPU where a CUDA driver and device are found. Also: the finite-difference
//! gradient checks on the device, determinism (same bits twice), error parity, and one training step
//! of a small reversible network through the scheduler.

use revseg::backend::cpu::CpuBackend;
use revseg::backend::device;
use revseg::backend::gpu::emu::{EmuConfig, Schedule};
use revseg::backend::gpu::{cuda, EmuLauncher, GpuBackend};
use revseg::backend::{Backend, BnRunning, BnStats, Bump, Region, View, Write};
use revseg::error::{Error, Result};
use revseg::gradcheck::{self, normwise_err};
use revseg::model::{self, NetConfig, Norm};
use revseg::ops::batchnorm::BatchNormArgs;
use revseg::ops::optim::{AdamParams, SgdParams};
use revseg::rng::Rng;
use revseg::scheduler::{self, Batch, Executor, Strategy};
use revseg::tensor::Shape5;
use std::cell::RefCell;

/// f32 on both sides, different summation orders (tiles, trees, FMA on the GPU): the CPU's own f32
/// error against exact results is ~1e-7 to 1e-6 norm-wise for these sizes.
const TOL: f64 = 1e-5;

thread_local! {
    /// The device outputs of one body's run, in order, while `emu_under_two_schedules` runs it.
    static RECORD: RefCell<Option<Vec<Vec<u32>>>> = const { RefCell::new(None) };
}

fn record(v: &[f32]) {
    RECORD.with(|r| {
        if let Some(log) = r.borrow_mut().as_mut() {
            log.push(v.iter().map(|x| x.to_bits()).collect());
        }
    });
}

/// The body on the emulator with every check on (races, bounds, uninitialised shared memory,
/// divergent barriers), once with the threads of each block in ascending and once in descending
/// order: the kernels are deterministic by design, so any difference in the bits is a race.
fn emu_under_two_schedules(body: impl Fn(&GpuBackend<EmuLauncher>)) {
    let mut runs = Vec::new();
    for schedule in [Schedule::Ascending, Schedule::Descending] {
        RECORD.with(|r| *r.borrow_mut() = Some(Vec::new()));
        body(&GpuBackend::new(EmuLauncher::with_config(EmuConfig {
            schedule,
            check: true,
        })));
        runs.push(RECORD.with(|r| r.borrow_mut().take().unwrap()));
    }
    assert_eq!(runs[0].len(), runs[1].len());
    for (i, (a, b)) in runs[0].iter().zip(&runs[1]).enumerate() {
        let diff = a.iter().zip(b).filter(|(x, y)| x != y).count();
        assert!(
            diff == 0,
            "output {i}: {diff} of {} values differ between the ascending and descending schedules (a race)",
            a.len()
        );
    }
}

macro_rules! on_devices {
    ($($name:ident => $body:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            // scripts/gpu-check on a GPU: the emulator half is what CI runs already.
            if std::env::var_os("REVSEG_PARITY_CUDA_ONLY").is_none() {
                emu_under_two_schedules(|d| $body(d));
            }
            if cuda::device_count() > 0 {
                $body(&device::cuda_backend(0).expect("a CUDA device is listed but does not open"));
            } else if std::env::var_os("REVSEG_REQUIRE_CUDA").is_some() {
                panic!("REVSEG_REQUIRE_CUDA is set but no CUDA device was found (see `revseg info`)");
            }
        }
    )*};
}

#[derive(Clone, Copy, Debug)]
enum Call {
    Fill(Region, f32),
    Copy(Region, Region),
    Conv(View, View, Option<Region>, View),
    ConvBi(View, View, View, Write),
    ConvBw(View, View, View, Write),
    ConvBb(View, Region, Write),
    Ct(View, View, Option<Region>, View),
    CtBi(View, View, View, Write),
    CtBw(View, View, View, Write),
    Pool(View, View),
    PoolB(View, View, View, Write),
    Elu(View, View),
    EluB(View, View, View, Write),
    Add(View, View, View),
    AddA(View, View),
    SubA(View, View),
    BnT(View, Region, Region, View, BnStats, Option<BnRunning>),
    BnI(View, Region, Region, BnRunning, View),
    BnA(View, Region, Region, BnStats, View),
    BnB(View, View, Region, BnStats, View, Region, Region, Write),
    BceW(View, View, View),
    Bce(View, View, View, View, Region, Option<View>),
    Sig(View, View),
    Adam(Region, Region, Region, Region, u64),
    Sgd(Region, Region, Option<Region>, SgdParams),
}

fn apply<B: Backend<Elem = f32>>(b: &B, a: &mut B::Arena, c: Call) -> Result<()> {
    use Call::*;
    match c {
        Fill(r, v) => b.fill(a, r, v),
        Copy(s, d) => b.copy(a, s, d),
        Conv(x, w, bias, y) => b.conv3d_forward(a, x, w, bias, y),
        ConvBi(dy, w, dx, m) => b.conv3d_backward_input(a, dy, w, dx, m),
        ConvBw(x, dy, dw, m) => b.conv3d_backward_weight(a, x, dy, dw, m),
        ConvBb(dy, db, m) => b.conv3d_backward_bias(a, dy, db, m),
        Ct(x, w, bias, y) => b.conv_transpose_forward(a, x, w, bias, y),
        CtBi(dy, w, dx, m) => b.conv_transpose_backward_input(a, dy, w, dx, m),
        CtBw(x, dy, dw, m) => b.conv_transpose_backward_weight(a, x, dy, dw, m),
        Pool(x, y) => b.maxpool_forward(a, x, y),
        PoolB(x, dy, dx, m) => b.maxpool_backward(a, x, dy, dx, m),
        Elu(x, y) => b.elu_forward(a, x, y),
        EluB(y, dy, dx, m) => b.elu_backward(a, y, dy, dx, m),
        Add(p, q, o) => b.add(a, p, q, o),
        AddA(d, s) => b.add_assign(a, d, s),
        SubA(d, s) => b.sub_assign(a, d, s),
        BnT(x, g, be, y, st, run) => {
            b.batchnorm_forward_train(a, x, g, be, y, st, run, BatchNormArgs::default())
        }
        BnI(x, g, be, run, y) => b.batchnorm_forward_infer(a, x, g, be, run, y, 1e-5),
        BnA(x, g, be, st, y) => b.batchnorm_apply(a, x, g, be, st, y),
        BnB(x, dy, g, st, dx, dg, db, m) => b.batchnorm_backward(a, x, dy, g, st, dx, dg, db, m),
        BceW(t, m, w) => b.bce_weights(a, t, m, w),
        Bce(z, t, w, m, l, dz) => b.bce_loss(a, z, t, w, m, l, dz),
        Sig(x, y) => b.sigmoid(a, x, y),
        Adam(p, g, m, v, step) => b.adam_step(a, p, g, m, v, AdamParams::default(), step),
        Sgd(p, g, vel, hp) => b.sgd_step(a, p, g, vel, hp),
    }
}

/// Operands laid by hand: initial values, the calls, and the regions compared afterwards.
#[derive(Default)]
struct Prog {
    bump: Bump,
    init: Vec<(Region, Vec<f32>)>,
    calls: Vec<Call>,
    outs: Vec<(String, Region)>,
}

impl Prog {
    fn data(&mut self, shape: Shape5, v: Vec<f32>) -> View {
        let view = self.bump.view(shape);
        self.init.push((view.region, v));
        view
    }
    fn normal(&mut self, rng: &mut Rng, shape: Shape5) -> View {
        let v = rng.normals(shape.len()).iter().map(|&x| x as f32).collect();
        self.data(shape, v)
    }
    fn vector(&mut self, rng: &mut Rng, len: usize) -> Region {
        self.normal(rng, Shape5::vector(len)).region
    }
    fn out(&mut self, name: &str, r: Region) {
        self.outs.push((name.to_string(), r));
    }
}

/// Runs the program and returns each output region's values.
fn run<B: Backend<Elem = f32>>(b: &B, p: &Prog) -> Result<Vec<Vec<f32>>> {
    let mut a = b.alloc_arena(p.bump.len())?;
    for (r, v) in &p.init {
        b.upload(&mut a, *r, v)?;
    }
    for c in &p.calls {
        apply(b, &mut a, *c)?;
    }
    p.outs
        .iter()
        .map(|(_, r)| {
            let mut v = vec![0.0f32; r.len];
            b.download(&a, *r, &mut v)?;
            Ok(v)
        })
        .collect()
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Every output of the program on `dev` within TOL (norm-wise) of the CPU's.
fn parity<B: Backend<Elem = f32>>(dev: &B, what: &str, p: &Prog) {
    let want = run(&CpuBackend::<f32>::new(), p).expect("CPU run");
    let got = run(dev, p).unwrap_or_else(|e| panic!("{what} on {}: {e}", dev.name()));
    got.iter().for_each(|v| record(v));
    for ((name, _), (w, g)) in p.outs.iter().zip(want.iter().zip(&got)) {
        assert!(
            w.iter().all(|v| v.is_finite()) && w.iter().any(|&v| v != 0.0),
            "{what}/{name}: reference is not finite or all zero"
        );
        let e = normwise_err(&f64s(g), &f64s(w));
        assert!(
            e <= TOL,
            "{what}/{name} on {}: error {e:.2e} > {TOL:e}",
            dev.name()
        );
    }
}

fn conv_body<B: Backend<Elem = f32>>(dev: &B) {
    let mut rng = Rng::new(11);
    // (n, ci, co, d, h, w, kd, kh, kw): odd sizes, several M/K/position tiles (co 70 > 64,
    // K = 67 not a multiple of 16, 1x1x1), one-channel input.
    let shapes = [
        (2, 3, 5, 3, 7, 9, 3, 3, 3),
        (1, 4, 70, 2, 9, 10, 1, 3, 3),
        (1, 1, 3, 2, 11, 6, 1, 5, 5),
        (2, 67, 2, 1, 5, 13, 1, 1, 1),
        (1, 2, 3, 4, 3, 7, 3, 1, 5),
    ];
    for (i, &(n, ci, co, d, h, w, kd, kh, kw)) in shapes.iter().enumerate() {
        let mut p = Prog::default();
        let x = p.normal(&mut rng, Shape5::new(n, ci, d, h, w));
        let wt = p.normal(&mut rng, Shape5::new(co, ci, kd, kh, kw));
        let b = p.vector(&mut rng, co);
        let dy = p.normal(&mut rng, Shape5::new(n, co, d, h, w));
        let y = p.bump.view(dy.shape);
        let y2 = p.bump.view(dy.shape);
        let dx = p.bump.view(x.shape);
        let dx_acc = p.normal(&mut rng, x.shape);
        let dw = p.bump.view(wt.shape);
        let dw_acc = p.normal(&mut rng, wt.shape);
        let db = p.bump.take(co);
        let db_acc = p.vector(&mut rng, co);
        p.calls = vec![
            Call::Conv(x, wt, Some(b), y),
            Call::Conv(x, wt, None, y2),
            Call::ConvBi(dy, wt, dx, Write::Overwrite),
            Call::ConvBi(dy, wt, dx_acc, Write::Accumulate),
            Call::ConvBw(x, dy, dw, Write::Overwrite),
            Call::ConvBw(x, dy, dw_acc, Write::Accumulate),
            Call::ConvBb(dy, db, Write::Overwrite),
            Call::ConvBb(dy, db_acc, Write::Accumulate),
        ];
        for (name, r) in [
            ("y bias", y.region),
            ("y", y2.region),
            ("dx", dx.region),
            ("dx accumulate", dx_acc.region),
            ("dw", dw.region),
            ("dw accumulate", dw_acc.region),
            ("db", db),
            ("db accumulate", db_acc),
        ] {
            p.out(name, r);
        }
        parity(dev, &format!("conv3d shape {i}"), &p);
    }
}

fn conv_transpose_body<B: Backend<Elem = f32>>(dev: &B) {
    let mut rng = Rng::new(12);
    for &(n, ci, co, d, h, w) in &[(2, 3, 5, 2, 3, 7), (1, 1, 2, 1, 5, 4)] {
        let mut p = Prog::default();
        let x = p.normal(&mut rng, Shape5::new(n, ci, d, h, w));
        let wt = p.normal(&mut rng, Shape5::new(ci, co, 1, 2, 2));
        let b = p.vector(&mut rng, co);
        let ys = Shape5::new(n, co, d, 2 * h, 2 * w);
        let dy = p.normal(&mut rng, ys);
        let y = p.bump.view(ys);
        let y2 = p.bump.view(ys);
        let dx = p.bump.view(x.shape);
        let dx_acc = p.normal(&mut rng, x.shape);
        let dw = p.bump.view(wt.shape);
        let dw_acc = p.normal(&mut rng, wt.shape);
        p.calls = vec![
            Call::Ct(x, wt, Some(b), y),
            Call::Ct(x, wt, None, y2),
            Call::CtBi(dy, wt, dx, Write::Overwrite),
            Call::CtBi(dy, wt, dx_acc, Write::Accumulate),
            Call::CtBw(x, dy, dw, Write::Overwrite),
            Call::CtBw(x, dy, dw_acc, Write::Accumulate),
        ];
        for (name, r) in [
            ("y bias", y.region),
            ("y", y2.region),
            ("dx", dx.region),
            ("dx accumulate", dx_acc.region),
            ("dw", dw.region),
            ("dw accumulate", dw_acc.region),
        ] {
            p.out(name, r);
        }
        parity(dev, "conv_transpose", &p);
    }
}

fn maxpool_body<B: Backend<Elem = f32>>(dev: &B) {
    let mut rng = Rng::new(13);
    let s = Shape5::new(2, 3, 2, 6, 10);
    let mut p = Prog::default();
    // Small integers: most windows hold ties, so the first-maximum rule decides the backward.
    let xv: Vec<f32> = rng
        .normals(s.len())
        .iter()
        .map(|v| (v * 1.5).round() as f32)
        .collect();
    let x = p.data(s, xv);
    let ys = Shape5::new(2, 3, 2, 3, 5);
    let dy = p.normal(&mut rng, ys);
    let y = p.bump.view(ys);
    let dx = p.bump.view(s);
    let dx_acc = p.normal(&mut rng, s);
    p.calls = vec![
        Call::Pool(x, y),
        Call::PoolB(x, dy, dx, Write::Overwrite),
        Call::PoolB(x, dy, dx_acc, Write::Accumulate),
    ];
    p.out("y", y.region);
    p.out("dx", dx.region);
    p.out("dx accumulate", dx_acc.region);
    parity(dev, "maxpool", &p);
}

fn elementwise_body<B: Backend<Elem = f32>>(dev: &B) {
    let mut rng = Rng::new(14);
    let s = Shape5::new(2, 3, 3, 5, 7);
    let mut p = Prog::default();
    let x = p.normal(&mut rng, s);
    let x_inplace = p.normal(&mut rng, s);
    let q = p.normal(&mut rng, s);
    let dy = p.normal(&mut rng, s);
    let y = p.bump.view(s);
    let dx = p.bump.view(s);
    let dx_acc = p.normal(&mut rng, s);
    let g_inplace = p.normal(&mut rng, s);
    let sum = p.bump.view(s);
    let p_as_out = p.normal(&mut rng, s);
    let q_as_out = p.normal(&mut rng, s);
    let coupled = p.normal(&mut rng, s);
    let filled = p.bump.view(s);
    let copied = p.bump.view(s);
    let sig = p.bump.view(s);
    p.calls = vec![
        Call::Elu(x, y),
        Call::Elu(x_inplace, x_inplace),
        Call::EluB(y, dy, dx, Write::Overwrite),
        Call::EluB(y, dy, dx_acc, Write::Accumulate),
        Call::EluB(y, g_inplace, g_inplace, Write::Overwrite),
        Call::Add(x, q, sum),
        Call::Add(p_as_out, q, p_as_out),
        Call::Add(x, q_as_out, q_as_out),
        Call::AddA(coupled, x),
        Call::SubA(coupled, q),
        Call::Fill(filled.region, -2.5),
        Call::Copy(dy.region, copied.region),
        Call::Sig(x, sig),
    ];
    for (name, r) in [
        ("elu", y),
        ("elu in place", x_inplace),
        ("elu backward", dx),
        ("elu backward accumulate", dx_acc),
        ("elu backward in place", g_inplace),
        ("add", sum),
        ("add out = p", p_as_out),
        ("add out = q", q_as_out),
        ("add_assign then sub_assign", coupled),
        ("fill", filled),
        ("copy", copied),
        ("sigmoid", sig),
    ] {
        p.out(name, r.region);
    }
    parity(dev, "elementwise", &p);
}

fn batchnorm_body<B: Backend<Elem = f32>>(dev: &B) {
    let mut rng = Rng::new(15);
    // The second shape has more than one split per channel (9216 values > 8192).
    for s in [Shape5::new(2, 3, 2, 5, 7), Shape5::new(1, 2, 4, 48, 48)] {
        let c = s.c;
        let mut p = Prog::default();
        let xv: Vec<f32> = rng
            .normals(s.len())
            .iter()
            .map(|v| (2.0 * v + 0.7) as f32)
            .collect();
        let x = p.data(s, xv);
        let gamma = p.vector(&mut rng, c);
        let beta = p.vector(&mut rng, c);
        let dy = p.normal(&mut rng, s);
        let y = p.bump.view(s);
        let y2 = p.bump.view(s);
        let yi = p.bump.view(s);
        let ya = p.bump.view(s);
        let stats = BnStats {
            mean: p.bump.take(c),
            invstd: p.bump.take(c),
        };
        let stats2 = BnStats {
            mean: p.bump.take(c),
            invstd: p.bump.take(c),
        };
        let rm = p.vector(&mut rng, c);
        let rvv: Vec<f32> = (0..c).map(|_| 0.5 + rng.uniform() as f32).collect();
        let rv = p.data(Shape5::vector(c), rvv).region;
        let run = BnRunning { mean: rm, var: rv };
        let dx = p.bump.view(s);
        let dx_acc = p.normal(&mut rng, s);
        let dg = p.vector(&mut rng, c);
        let db = p.vector(&mut rng, c);
        p.calls = vec![
            Call::BnI(x, gamma, beta, run, yi),
            Call::BnT(x, gamma, beta, y, stats, Some(run)),
            Call::BnT(x, gamma, beta, y2, stats2, None),
            // The recomputation path: y again from the saved statistics.
            Call::BnA(x, gamma, beta, stats, ya),
            Call::BnB(x, dy, gamma, stats, dx, dg, db, Write::Overwrite),
            Call::BnB(x, dy, gamma, stats, dx_acc, dg, db, Write::Accumulate),
        ];
        for (name, r) in [
            ("infer y", yi.region),
            ("y", y.region),
            ("y without running", y2.region),
            ("y from saved statistics", ya.region),
            ("mean", stats.mean),
            ("invstd", stats.invstd),
            ("running mean", rm),
            ("running var", rv),
            ("dx", dx.region),
            ("dx accumulate", dx_acc.region),
            ("dgamma", dg),
            ("dbeta", db),
        ] {
            p.out(name, r);
        }
        parity(dev, &format!("batchnorm {s}"), &p);
    }
}

fn loss_body<B: Backend<Elem = f32>>(dev: &B) {
    let mut rng = Rng::new(16);
    // The second shape has several splits, per channel (10800 > 8192) and in all.
    for s in [Shape5::new(2, 3, 2, 6, 7), Shape5::new(1, 3, 4, 30, 90)] {
        let mut p = Prog::default();
        let z = p.normal(&mut rng, s);
        let sp = s.spatial();
        let tv: Vec<f32> = (0..s.len())
            .map(|i| {
                // Channel 1 holds positives only: its weights are 1/2 by the rule.
                if (i / sp) % s.c == 1 || rng.uniform() < 0.6 {
                    1.0
                } else {
                    0.0
                }
            })
            .collect();
        let t = p.data(s, tv);
        let mv: Vec<f32> = (0..s.len())
            .map(|_| (rng.uniform() < 0.8) as u8 as f32)
            .collect();
        let m = p.data(s, mv);
        let w = p.bump.view(s);
        let loss = p.bump.take(1);
        let loss2 = p.bump.take(1);
        let dz = p.bump.view(s);
        p.calls = vec![
            Call::BceW(t, m, w),
            Call::Bce(z, t, w, m, loss, Some(dz)),
            Call::Bce(z, t, w, m, loss2, None),
        ];
        p.out("weights", w.region);
        p.out("loss", loss);
        p.out("loss without gradient", loss2);
        p.out("dlogits", dz.region);
        parity(dev, &format!("bce {s}"), &p);
    }
}

fn optim_body<B: Backend<Elem = f32>>(dev: &B) {
    let mut rng = Rng::new(17);
    let n = 1000;
    let mut p = Prog::default();
    let s = Shape5::vector(n);
    let param = p.normal(&mut rng, s).region;
    let grad = p.normal(&mut rng, s).region;
    let m = p.normal(&mut rng, s).region;
    let vv: Vec<f32> = (0..n).map(|_| rng.uniform() as f32).collect();
    let v = p.data(s, vv).region;
    let p2 = p.normal(&mut rng, s).region;
    let vel = p.normal(&mut rng, s).region;
    let p3 = p.normal(&mut rng, s).region;
    let hp = SgdParams {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 1e-3,
    };
    p.calls = vec![
        Call::Adam(param, grad, m, v, 1),
        Call::Adam(param, grad, m, v, 2),
        Call::Adam(param, grad, m, v, 3),
        Call::Sgd(p2, grad, Some(vel), hp),
        Call::Sgd(p2, grad, Some(vel), hp),
        Call::Sgd(p3, grad, None, hp),
    ];
    for (name, r) in [
        ("adam param", param),
        ("adam m", m),
        ("adam v", v),
        ("sgd momentum param", p2),
        ("sgd velocity", vel),
        ("sgd param", p3),
    ] {
        p.out(name, r);
    }
    parity(dev, "optim", &p);
}

/// Bad calls fail on the device with the CPU's error kind, and leave no launch behind.
fn errors_body<B: Backend<Elem = f32>>(dev: &B) {
    let cpu = CpuBackend::<f32>::new();
    let s = Shape5::new(1, 2, 1, 4, 4);
    let mut bump = Bump::default();
    let x = bump.view(s);
    let y = bump.view(s);
    let w = bump.view(Shape5::new(3, 2, 3, 3, 3));
    let y3 = bump.view(s.with_c(3));
    let len = bump.len();
    let overlapping = View {
        region: Region::new(x.region.offset + 1, s.len()),
        shape: s,
    };
    let outside = View {
        region: Region::new(len - 3, s.len()),
        shape: s,
    };
    let calls: Vec<(&str, Call)> = vec![
        ("output overlaps input", Call::Elu(x, overlapping)),
        ("outside the arena", Call::Add(x, y, outside)),
        ("shape mismatch", Call::Conv(x, w, None, y)),
        ("bias length", Call::Conv(x, w, Some(Region::new(0, 2)), y3)),
        ("odd pool", Call::Pool(x, y)),
        (
            "adam step 0",
            Call::Adam(
                x.region,
                y.region,
                w.region.slice(0, 32),
                w.region.slice(32, 32),
                0,
            ),
        ),
        ("copy lengths", Call::Copy(x.region, w.region)),
        (
            "accumulate into its own input",
            Call::EluB(x, y, y, Write::Accumulate),
        ),
    ];
    let kind = |e: &Error| std::mem::discriminant(e);
    for (what, c) in calls {
        let mut ac = cpu.alloc_arena(len).unwrap();
        let mut ad = dev.alloc_arena(len).unwrap();
        let ec = apply(&cpu, &mut ac, c).expect_err(what);
        let ed = apply(dev, &mut ad, c).expect_err(what);
        assert_eq!(kind(&ec), kind(&ed), "{what}: CPU says {ec}, device {ed}");
    }
}

/// The reductions (split weight gradient, BN statistics and backward, loss) give the same bits when
/// run twice.
fn determinism_body<B: Backend<Elem = f32>>(dev: &B) {
    let mut rng = Rng::new(18);
    let mut p = Prog::default();
    let s = Shape5::new(1, 3, 4, 40, 60);
    let x = p.normal(&mut rng, s);
    let wt = p.normal(&mut rng, Shape5::new(4, 3, 3, 3, 3));
    let dy = p.normal(&mut rng, s.with_c(4));
    let dw = p.bump.view(wt.shape);
    let db = p.bump.take(4);
    let gamma = p.vector(&mut rng, 3);
    let beta = p.vector(&mut rng, 3);
    let y = p.bump.view(s);
    let stats = BnStats {
        mean: p.bump.take(3),
        invstd: p.bump.take(3),
    };
    let gy = p.normal(&mut rng, s);
    let dx = p.bump.view(s);
    let dg = p.bump.take(3);
    let dbeta = p.bump.take(3);
    let tv: Vec<f32> = (0..s.len()).map(|i| (i % 3 == 0) as u8 as f32).collect();
    let t = p.data(s, tv);
    let m = p.data(s, vec![1.0; s.len()]);
    let w = p.bump.view(s);
    let loss = p.bump.take(1);
    let dz = p.bump.view(s);
    p.calls = vec![
        Call::ConvBw(x, dy, dw, Write::Overwrite),
        Call::ConvBb(dy, db, Write::Overwrite),
        Call::BnT(x, gamma, beta, y, stats, None),
        Call::Fill(dg, 0.0),
        Call::Fill(dbeta, 0.0),
        Call::BnB(x, gy, gamma, stats, dx, dg, dbeta, Write::Overwrite),
        Call::BceW(t, m, w),
        Call::Bce(x, t, w, m, loss, Some(dz)),
    ];
    for (name, r) in [
        ("dw", dw.region),
        ("db", db),
        ("y", y.region),
        ("dx", dx.region),
        ("dgamma", dg),
        ("loss", loss),
        ("dz", dz.region),
    ] {
        p.out(name, r);
    }
    let first = run(dev, &p).unwrap();
    let second = run(dev, &p).unwrap();
    first.iter().for_each(|v| record(v));
    for ((name, _), (a, b)) in p.outs.iter().zip(first.iter().zip(&second)) {
        assert!(a.iter().any(|&v| v != 0.0), "{name}: all zero");
        let same = a.iter().zip(b).all(|(u, v)| u.to_bits() == v.to_bits());
        assert!(same, "{name}: two runs on {} differ", dev.name());
    }
    // And the reductions agree with the CPU.
    parity(dev, "determinism program", &p);
}

/// The gradient checker's cases: the device's f32 backward against f64 finite differences.
fn gradcheck_body<B: Backend<Elem = f32>>(dev: &B) {
    let results = gradcheck::run_on(dev, None, 1, 1.0).unwrap();
    assert_eq!(results.len(), gradcheck::all_cases(1).len());
    for r in &results {
        assert!(
            r.passed,
            "{} {} ({}): fd {:.2e}, vs f64 {:.2e}",
            r.op, r.variant, r.shape, r.fd_err, r.f32_err
        );
    }
    // The checker notices a backward that is 1% off.
    let faulty = gradcheck::run_on(dev, Some("conv3d"), 1, 1.01).unwrap();
    assert!(faulty.iter().all(|r| !r.passed));
}

fn train_step<B: Backend<Elem = f32>>(b: &B, strategy: Strategy) -> (f64, Vec<Vec<f64>>) {
    let c = NetConfig {
        widths: vec![4, 6, 8],
        rev_blocks: 2,
        norm: Norm::Batch,
        outputs: 3,
    };
    let prog = model::build(&c, (3, 8, 12)).unwrap();
    let mut rng = Rng::new(3);
    let n_in = prog.tensors[prog.input].shape.len();
    let n_out = prog.tensors[prog.output].shape.len();
    let image: Vec<f32> = rng.normals(n_in).iter().map(|&v| v as f32).collect();
    let target: Vec<f32> = (0..n_out)
        .map(|_| (rng.uniform() < 0.6) as u8 as f32)
        .collect();
    let mask: Vec<f32> = (0..n_out)
        .map(|_| (rng.uniform() < 0.9) as u8 as f32)
        .collect();
    let plan = scheduler::training_plan(&prog, strategy, false).unwrap();
    let mut ex = Executor::new(b, &prog, plan, 1).unwrap();
    ex.poison = true;
    let batch = Batch {
        image: &image,
        target: &target,
        mask: &mask,
    };
    let loss = ex.train_step(b, &batch, false).unwrap();
    let grads = (0..prog.params.len())
        .map(|p| ex.grad(b, p).unwrap())
        .collect();
    (loss, grads)
}

/// A training step of a small reversible network (BN, recompute plan) through the scheduler: the
/// device's loss and every parameter gradient match the CPU's.
fn network_body<B: Backend<Elem = f32>>(dev: &B) {
    let (l_cpu, g_cpu) = train_step(&CpuBackend::<f32>::new(), Strategy::Recompute);
    let (l_dev, g_dev) = train_step(dev, Strategy::Recompute);
    record(&[l_dev as f32]);
    g_dev
        .iter()
        .for_each(|g| record(&g.iter().map(|&v| v as f32).collect::<Vec<_>>()));
    assert!(
        (l_cpu - l_dev).abs() <= 1e-4 * l_cpu.abs(),
        "loss {l_dev} vs CPU {l_cpu}"
    );
    let global = g_cpu.iter().flatten().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(global > 0.0);
    for (i, (c, d)) in g_cpu.iter().zip(&g_dev).enumerate() {
        assert!(d.iter().all(|v| v.is_finite()), "param {i}: not finite");
        let scale = c.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        // Biases right before a BatchNorm have a zero gradient by design: compare to the global
        // scale there, since both sides are rounding noise.
        let err = d
            .iter()
            .zip(c)
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()))
            / if scale > 1e-6 * global { scale } else { global };
        assert!(err <= 1e-4, "param {i}: error {err:.2e}");
    }
}

on_devices!(
    conv3d_matches_cpu => conv_body,
    conv_transpose_matches_cpu => conv_transpose_body,
    maxpool_matches_cpu => maxpool_body,
    elementwise_matches_cpu => elementwise_body,
    batchnorm_matches_cpu => batchnorm_body,
    loss_matches_cpu => loss_body,
    optim_matches_cpu => optim_body,
    bad_calls_fail_like_cpu => errors_body,
    reductions_are_deterministic => determinism_body,
    gradients_match_finite_differences => gradcheck_body,
    training_step_matches_cpu => network_body,
);

#[test]
fn devices_parse() {
    use device::DeviceSpec::*;
    assert_eq!(device::parse("cpu").unwrap(), Cpu);
    assert_eq!(device::parse("emu").unwrap(), Emu);
    assert_eq!(device::parse("cuda").unwrap(), Cuda(0));
    assert_eq!(device::parse("cuda:3").unwrap(), Cuda(3));
    assert_eq!(device::parse("auto").unwrap(), Auto);
    for bad in ["gpu", "cuda:", "cuda:x", ""] {
        assert!(matches!(device::parse(bad), Err(Error::Device(_))), "{bad}");
    }
    // A GPU that is not there is an error, never a panic.
    let n = cuda::device_count();
    assert!(device::resolve(Cuda(n)).is_err());
    assert!(device::device_info().contains("emu"));
}

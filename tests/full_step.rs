//! Whole training steps (forward, loss, backward, Adam) of the preset network, all five scales at
//! the preset widths 28..80, on the emulator (and a GPU where one is found) against the CPU
//! backend, f32, relative 1e-4, two ways:
//! - in lockstep (`lockstep`): before each of the step's ~1,100 instructions the CPU's copy of its
//!   operands is set to the device's; both run it and every operand is compared. Every activation,
//!   gradient and weight update is so checked at its real shape, grid and split count, on the same
//!   inputs as the CPU's.
//! - end to end: the loss always; every gradient and updated weight where that is well posed. It
//!   is not at every patch: f32 rounding differs between the backends in the last bits, so a 2x2
//!   max-pool window whose two largest values are within that of each other can take its maximum
//!   from another voxel on the device (at 18 x 32 x 32 one window of enc3's 4,608 does), the
//!   backward then routes that window's gradient elsewhere, and everything before it differs by
//!   ~1e-3 to 1e-2. Both are correct subgradients; comparing them compares tie-breaks, not kernels.
//!
//! Three sizes:
//! - `multi_wave_step_matches_cpu` (CI, RevNet n = 2, 2 x 64 x 80, end to end too; 25 s wall, 42 s
//!   of CPU time on two cores with the uninstrumented emulator): grids of more than one H200 wave (the
//!   elementwise and BatchNorm passes of scale 0 launch 1,120 blocks of 256 threads; 132 SMs hold
//!   1,056), the BatchNorm and bias reductions split two ways, the weight gradients split over
//!   positions as the H200's SM count asks (24 to 64 ways at scale 0, as at the full patch but for
//!   the reversible blocks' 43 for 44; 3 at the deepest scale, 15 at full size), H != W at every
//!   scale (2 x 4 x 5 at the deepest) and two z-planes, so every 3x3x3 tap is exercised. The test
//!   checks these claims on the launches themselves.
//! - `real_size_step_matches_cpu` (ignored: 4 min wall, 7 min of CPU time on two cores,
//!   2026-12-02; `cargo test --release --test full_step -- --ignored`), RevNet n = 2 at
//!   18 x 80 x 80, lockstep and loss: the full depth, and every weight gradient (but the narrow
//!   output layer's, which conv3d_pointwise.cu splits by its own rule) within 10% of the
//!   split count it has at the full 18 x 160 x 160 patch on an H200 (all but three layers exactly:
//!   29 for 30, 41 for 44, 63 for 64); the BatchNorm reductions split 15 ways at scale 0. End to
//!   end, 17 gradients differ by 1e-3 to 1e-2 there (a max-pool near-tie in enc0).
//! - `full_size_step_matches_cpu_on_gpu`: only where a CUDA device is found (scripts/gpu-check):
//!   the base network and RevNet n = 2 at the full 18 x 160 x 160 patch, lockstep and loss.
//!
//! REVSEG_FULL_STEP_PATCH=d,h,w changes the patch of all three (scripts/gpu-check --dry-run runs
//! the first at 1 x 16 x 16); REVSEG_PARITY_CUDA_ONLY=1 leaves the emulator out (a GPU run: CI has
//! run it); REVSEG_REQUIRE_CUDA=1 fails a test that finds no CUDA device instead of skipping it.

use revseg::backend::cpu::CpuBackend;
use revseg::backend::gpu::conv3d_pointwise::{is_narrow, weight_splits};
use revseg::backend::gpu::recorder::Recorder;
use revseg::backend::gpu::{
    cuda, wgrad_splits, CudaLauncher, DeviceLimits, EmuLauncher, GpuBackend, Launcher,
};
use revseg::backend::Backend;
use revseg::model::{self, NetConfig};
use revseg::ops::conv3d::Conv3dGeom;
use revseg::rng::Rng;
use revseg::scheduler::instr::Instr;
use revseg::scheduler::{self, Batch, Executor, Plan, Strategy};
use std::time::Instant;

/// (loss, gradients, updated weights) of one step from the same seeded inputs.
type Step = (f64, Vec<Vec<f64>>, Vec<Vec<f64>>);

/// The full training patch of the preset.
const FULL: (usize, usize, usize) = (18, 160, 160);

fn patch(default: (usize, usize, usize)) -> (usize, usize, usize) {
    let Ok(s) = std::env::var("REVSEG_FULL_STEP_PATCH") else {
        return default;
    };
    let v: Vec<usize> = s.split(',').filter_map(|x| x.trim().parse().ok()).collect();
    assert!(
        v.len() == 3,
        "REVSEG_FULL_STEP_PATCH={s:?}: give d,h,w (h and w multiples of 16)"
    );
    (v[0], v[1], v[2])
}

fn plan_of(net: &NetConfig, patch: (usize, usize, usize)) -> (model::Program, Plan) {
    let prog = model::build(net, patch).unwrap();
    let plan = scheduler::training_plan(&prog, Strategy::Recompute, false).unwrap();
    (prog, plan)
}

/// The seeded inputs of the step: image, target, mask.
fn batch_of(prog: &model::Program) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut rng = Rng::new(12);
    let n_in = prog.tensors[prog.input].shape.len();
    let n_out = prog.tensors[prog.output].shape.len();
    let image: Vec<f32> = (0..n_in).map(|_| rng.uniform() as f32).collect();
    let target: Vec<f32> = (0..n_out)
        .map(|_| (rng.uniform() < 0.7) as u8 as f32)
        .collect();
    let mask: Vec<f32> = (0..n_out)
        .map(|_| (rng.uniform() < 0.95) as u8 as f32)
        .collect();
    (image, target, mask)
}

/// Loss, gradients and updated weights of one independent step.
fn step<B: Backend<Elem = f32>>(b: &B, net: &NetConfig, patch: (usize, usize, usize)) -> Step {
    let (prog, plan) = plan_of(net, patch);
    let (image, target, mask) = batch_of(&prog);
    let mut ex = Executor::new(b, &prog, plan, 1).unwrap();
    let batch = Batch {
        image: &image,
        target: &target,
        mask: &mask,
    };
    let loss = ex.train_step(b, &batch, true).unwrap();
    let n = prog.params.len();
    let grads = (0..n).map(|p| ex.grad(b, p).unwrap()).collect();
    let params = (0..n).map(|p| ex.param(b, p).unwrap()).collect();
    (loss, grads, params)
}

/// Largest difference over the largest CPU magnitude, per parameter; parameters whose CPU values
/// are rounding noise (biases right before a BatchNorm have zero gradient by design) are measured
/// against the largest magnitude of all.
fn compare(what: &str, dev: &str, names: &[String], cpu: &[Vec<f64>], got: &[Vec<f64>]) {
    let global = cpu.iter().flatten().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(global > 0.0, "{what}: all zero on the CPU");
    let mut bad = Vec::new();
    for (i, (c, d)) in cpu.iter().zip(got).enumerate() {
        let scale = c.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let err = d
            .iter()
            .zip(c)
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()))
            / if scale > 1e-6 * global { scale } else { global };
        if err.is_nan() || err > 1e-4 {
            bad.push(format!("{} ({i}): {err:.2e}", names[i]));
        }
    }
    assert!(
        bad.is_empty(),
        "{what} on {dev}, {} of {} over a relative error of 1e-4 end to end (the lockstep \
         comparison passed, so each op agrees with the CPU on the same inputs: where errors grow \
         from one layer back, suspect a 2x2 max-pool near-tie that f32 rounding broke the other \
         way, and compare at another patch):\n  {}",
        bad.len(),
        cpu.len(),
        bad.join("\n  ")
    );
}

/// The geometry of every weight gradient of a plan, in the order the step runs them.
fn wgrad_geoms(plan: &Plan) -> Vec<Conv3dGeom> {
    plan.instrs
        .iter()
        .filter_map(|(_, i)| match i {
            Instr::ConvBwdWeight { x, dy, dw, .. } => {
                Some(Conv3dGeom::check(x.shape, dw.shape, dy.shape).unwrap())
            }
            _ => None,
        })
        .collect()
}

/// What the launches of one step on a device looked like.
struct Grids {
    /// The device's limits, which the split counts follow.
    limits: DeviceLimits,
    /// The most blocks of one launch, per kernel (the arena's fill left out).
    max_blocks: std::collections::BTreeMap<String, u64>,
    /// The most splits of a BatchNorm reduction (bn_partial's grid.x).
    bn_splits: u32,
    /// The weight gradients' splits (conv3d_backward_weight_partial's grid.z), in order.
    wgrad: Vec<usize>,
    /// The same for the narrow 1x1x1 layers (conv3d_pointwise.cu's grid.y).
    wgrad_narrow: Vec<usize>,
}

/// One compared output of the lockstep: which instruction, which buffer, its largest CPU
/// magnitude and its largest difference.
struct Output {
    instr: usize,
    op: &'static str,
    buf: String,
    scale: f64,
    err: f64,
}

/// The device's step, run in lockstep with the CPU: before each instruction the CPU's copy of its
/// operands is set to the device's, both run it, and each operand is compared. So every op of the
/// step (every activation, gradient, weight update) is checked at its real shape and split counts
/// against the CPU on the same inputs, and no difference carries over from one op to the next:
/// where f32 rounding breaks a near-tie of a 2x2 max-pool window differently (one window in
/// 4,608 of enc3 at 18 x 32 x 32, more the larger the patch), an end-to-end comparison would see a
/// gradient routed to the window's other voxel, and compare subgradients, not kernels.
fn lockstep<L: Launcher>(
    name: &str,
    l: L,
    net: &NetConfig,
    patch: (usize, usize, usize),
) -> (String, Step, Grids, Vec<Output>) {
    let dev = GpuBackend::new(Recorder::new(l));
    let cpu = CpuBackend::<f32>::new();
    let (prog, plan) = plan_of(net, patch);
    let (image, target, mask) = batch_of(&prog);
    let batch = Batch {
        image: &image,
        target: &target,
        mask: &mask,
    };
    let mut de = Executor::new(&dev, &prog, plan.clone(), 1).unwrap();
    let mut ce = Executor::new(&cpu, &prog, plan.clone(), 1).unwrap();
    let t = Instant::now();
    let n = de.begin_step(&dev, &batch, true).unwrap();
    assert_eq!(ce.begin_step(&cpu, &batch, true).unwrap(), n);
    let mut outputs = Vec::new();
    let mut dev_secs = 0.0;
    for i in 0..n {
        let (_, ins) = &plan.instrs[i];
        let ops = ins.operands();
        for &o in &ops {
            ce.write(&cpu, o, &de.read(&dev, o).unwrap()).unwrap();
        }
        let t = Instant::now();
        de.run_instr(&dev, i).unwrap();
        dev.synchronize().unwrap();
        dev_secs += t.elapsed().as_secs_f64();
        ce.run_instr(&cpu, i).unwrap();
        for &o in &ops {
            let (d, c) = (de.read(&dev, o).unwrap(), ce.read(&cpu, o).unwrap());
            outputs.push(Output {
                instr: i,
                op: ins.op_name(),
                buf: plan.bufs[o.buf].name.clone(),
                scale: c.iter().fold(0.0f64, |m, v| m.max(v.abs())),
                err: d.iter().zip(&c).fold(0.0f64, |m, (a, b)| {
                    m.max(if a == b { 0.0 } else { (a - b).abs() })
                }),
            });
        }
    }
    eprintln!(
        "{name}: {n} instructions in lockstep, {:.1} s ({dev_secs:.1} s on the device: {})",
        t.elapsed().as_secs_f64(),
        dev.name()
    );
    let loss = de.read(&dev, plan.loss).unwrap()[0];
    let np = prog.params.len();
    let grads = (0..np).map(|p| de.grad(&dev, p).unwrap()).collect();
    let params = (0..np).map(|p| de.param(&dev, p).unwrap()).collect();
    let log = dev.launcher.grids.borrow();
    let g = Grids {
        limits: dev.launcher.limits(),
        max_blocks: log.iter().filter(|(k, _)| k != "fill_f32").fold(
            Default::default(),
            |mut m, (k, g)| {
                let n = g.iter().map(|&v| v as u64).product::<u64>();
                let e = m.entry(k.clone()).or_insert(0);
                *e = (*e).max(n);
                m
            },
        ),
        bn_splits: log
            .iter()
            .filter(|(k, _)| k == "bn_partial")
            .map(|(_, g)| g[0])
            .max()
            .unwrap_or(0),
        wgrad: log
            .iter()
            .filter(|(k, _)| k == "conv3d_backward_weight_partial")
            .map(|(_, g)| g[2] as usize)
            .collect(),
        wgrad_narrow: log
            .iter()
            .filter(|(k, _)| k.starts_with("conv3d_pointwise_narrow_backward_weight_"))
            .map(|(_, g)| g[1] as usize)
            .collect(),
    };
    (name.to_string(), (loss, grads, params), g, outputs)
}

/// Every lockstep output within a relative 1e-4 of the CPU's: the difference over the output's
/// largest CPU magnitude, or, for outputs that are rounding noise on the CPU (below 1e-6 of the
/// largest output of the same op in the step: the gradient of a bias right before a BatchNorm is
/// zero by design), over that largest output.
fn lockstep_ok(dev: &str, outputs: &[Output]) {
    let mut largest: std::collections::HashMap<&str, f64> = Default::default();
    for o in outputs {
        let e = largest.entry(o.op).or_insert(0.0);
        *e = e.max(o.scale);
    }
    let rel = |o: &Output| {
        let g = largest[o.op];
        o.err
            / if o.scale > 1e-6 * g {
                o.scale
            } else {
                g.max(1e-30)
            }
    };
    let describe = |o: &Output| {
        format!(
            "instruction {} {} -> {}: {:.2e}",
            o.instr,
            o.op,
            o.buf,
            rel(o)
        )
    };
    let mut bad: Vec<&Output> = outputs
        .iter()
        .filter(|o| rel(o).is_nan() || rel(o) > 1e-4)
        .collect();
    bad.sort_by(|a, b| rel(b).partial_cmp(&rel(a)).unwrap());
    if let Some(worst) = outputs
        .iter()
        .max_by(|a, b| rel(a).partial_cmp(&rel(b)).unwrap())
    {
        eprintln!(
            "{dev}: {} outputs compared in lockstep, the largest relative difference at {}",
            outputs.len(),
            describe(worst)
        );
    }
    assert!(
        bad.is_empty(),
        "{dev}: {} of {} lockstep outputs over a relative difference of 1e-4, worst first:\n  {}",
        bad.len(),
        outputs.len(),
        bad.iter()
            .take(20)
            .map(|o| describe(o))
            .collect::<Vec<_>>()
            .join("\n  ")
    );
}

/// One step of `net` at `patch` on each device (the emulator where `emu` and not
/// REVSEG_PARITY_CUDA_ONLY; the first GPU where one is found), in lockstep with the CPU
/// (`lockstep_ok`), and end to end against an independent CPU step: the loss always, every
/// gradient and updated weight where `end_to_end` (a patch without max-pool near-ties broken
/// differently). Also checks that every weight gradient was split as `wgrad_splits` asks for the
/// device's SM count. Returns each device's launches and the weight-gradient geometries.
fn check(
    net: &NetConfig,
    patch: (usize, usize, usize),
    emu: bool,
    end_to_end: bool,
) -> (Vec<(String, Grids)>, Vec<Conv3dGeom>) {
    let t = Instant::now();
    let (l_cpu, g_cpu, p_cpu) = step(&CpuBackend::<f32>::new(), net, patch);
    eprintln!("cpu: {:.1} s", t.elapsed().as_secs_f64());
    let mut devices = Vec::new();
    if emu && std::env::var_os("REVSEG_PARITY_CUDA_ONLY").is_none() {
        devices.push(lockstep("emu", EmuLauncher::new(), net, patch));
    }
    if cuda::device_count() > 0 {
        let l = CudaLauncher::new(0).expect("a CUDA device is listed but does not open");
        devices.push(lockstep("cuda", l, net, patch));
    }
    assert!(!devices.is_empty(), "no device to compare with the CPU");
    if std::env::var_os("REVSEG_REQUIRE_CUDA").is_some() {
        assert!(
            devices.iter().any(|d| d.0 == "cuda"),
            "REVSEG_REQUIRE_CUDA is set but no CUDA device was found (see `revseg info`)"
        );
    }
    let (prog, plan) = plan_of(net, patch);
    let geoms = wgrad_geoms(&plan);
    let names: Vec<String> = prog.params.iter().map(|p| p.name.clone()).collect();
    for (dev, (l, g, p), grids, outputs) in &devices {
        lockstep_ok(dev, outputs);
        assert!(
            (l - l_cpu).abs() <= 1e-4 * l_cpu.abs(),
            "loss on {dev}: {l} vs CPU {l_cpu}"
        );
        if end_to_end {
            compare("gradient", dev, &names, &g_cpu, g);
            compare("updated parameter", dev, &names, &p_cpu, p);
        }
        // The narrow 1x1x1 layers (the output layer) take conv3d_pointwise.cu, split by its own
        // rule; every other layer conv3d.cu's partial GEMMs.
        let sms = grids.limits.sm_count as usize;
        let (narrow, wide): (Vec<&Conv3dGeom>, Vec<&Conv3dGeom>) =
            geoms.iter().partition(|g| is_narrow(g));
        let want: Vec<usize> = wide
            .iter()
            .map(|g| wgrad_splits(g, grids.limits.target_blocks()).0)
            .collect();
        assert_eq!(grids.wgrad, want, "{dev}: weight-gradient splits");
        let want: Vec<usize> = narrow.iter().map(|g| weight_splits(sms, g).0).collect();
        assert_eq!(
            grids.wgrad_narrow, want,
            "{dev}: narrow weight-gradient splits"
        );
        assert!(!narrow.is_empty(), "the preset's output layer is narrow");
        eprintln!(
            "{dev} ({} SMs): largest grids {:?}; BatchNorm reductions in up to {} splits, weight gradients in {:?} splits",
            grids.limits.sm_count, grids.max_blocks, grids.bn_splits, grids.wgrad
        );
    }
    (
        devices.into_iter().map(|(d, _, g, _)| (d, g)).collect(),
        geoms,
    )
}

#[test]
fn multi_wave_step_matches_cpu() {
    let p = patch((2, 64, 80));
    // End to end only at this patch, where no max-pool near-tie is broken differently today (at
    // 2 x 16 x 16 one is: the lockstep still holds there).
    let (devices, _) = check(&NetConfig::superhuman(2), p, true, p == (2, 64, 80));
    if p == (2, 64, 80) {
        for (dev, g) in &devices {
            // More blocks of 256 threads than one wave of an H200 holds (132 SMs x 2,048 threads).
            let bn = g.max_blocks.get("bn_apply").copied().unwrap_or(0);
            assert!(bn > 132 * 8, "{dev}: bn_apply in {bn} blocks");
            assert!(g.bn_splits >= 2, "{dev}: BatchNorm in one split");
            assert!(g.wgrad.iter().all(|&s| s >= 2), "{dev}: {:?}", g.wgrad);
        }
    }
}

#[test]
#[ignore = "4 min on two cores (2026-12-02): cargo test --release --test full_step -- --ignored"]
fn real_size_step_matches_cpu() {
    let net = NetConfig::superhuman(2);
    let p = patch((18, 80, 80));
    let (_, geoms) = check(&net, p, true, false);
    // The splits each layer has at the full patch on an H200, against this patch's.
    let (_, full_plan) = plan_of(&net, FULL);
    let target = DeviceLimits::H200.target_blocks();
    // The narrow output layer is split by conv3d_pointwise.rs's rule, not compared here.
    let geoms: Vec<Conv3dGeom> = geoms.into_iter().filter(|g| !is_narrow(g)).collect();
    let full: Vec<usize> = wgrad_geoms(&full_plan)
        .iter()
        .filter(|g| !is_narrow(g))
        .map(|g| wgrad_splits(g, target).0)
        .collect();
    let here: Vec<usize> = geoms.iter().map(|g| wgrad_splits(g, target).0).collect();
    eprintln!("weight-gradient splits on an H200, here / at {FULL:?}:");
    for (g, (h, f)) in geoms.iter().zip(here.iter().zip(&full)) {
        eprintln!(
            "  {} -> {}, {}x{}x{} at {}x{}x{}: {h} / {f}",
            g.ci, g.co, g.kd, g.kh, g.kw, g.d, g.h, g.w
        );
    }
    if p == (18, 80, 80) {
        assert!(
            here.iter()
                .zip(&full)
                .all(|(&h, &f)| 10 * h >= 9 * f && h <= f),
            "{here:?} vs {full:?}"
        );
    }
}

/// On a GPU only (scripts/gpu-check): the emulator at this size would take hours.
#[test]
fn full_size_step_matches_cpu_on_gpu() {
    if cuda::device_count() == 0 {
        assert!(
            std::env::var_os("REVSEG_REQUIRE_CUDA").is_none(),
            "REVSEG_REQUIRE_CUDA is set but no CUDA device was found (see `revseg info`)"
        );
        eprintln!("skipped: no CUDA device (scripts/gpu-check runs this on a GPU)");
        return;
    }
    let p = patch(FULL);
    for net in [NetConfig::superhuman(0), NetConfig::superhuman(2)] {
        eprintln!("rev_blocks {} at {p:?}", net.rev_blocks);
        check(&net, p, false, false);
    }
}

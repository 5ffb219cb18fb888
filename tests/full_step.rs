//! One whole training step (forward, loss, backward, Adam) of the preset network, RevNet n = 2
//! with the preset widths 28..80 over all five scales, on the emulator (and a GPU where one is
//! found) against the CPU backend: loss, every parameter gradient and every updated weight.
//!
//! The patch (REVSEG_FULL_STEP_PATCH=d,h,w to change it) is chosen for the CI's two cores: 2 x 48 x
//! 48 takes about 90 s of CPU time for both backends (4 x 64 x 64 took 275 s). It keeps what the
//! op-level tests cannot show: the real layer shapes of all five scales (down to 2 x 3 x 3), two
//! z-planes so that every 3x3x3 tap is exercised, and the conv3d weight gradients split over
//! positions as at full size (42 ways for the 14-channel RevNet convolutions of scale 0, 58 for
//! conv1, every layer more than one block), reduced in split order. What it does not reach: the
//! BatchNorm and bias reductions stay one split per channel (4,608 values < 8,192 per split; the
//! op test `reductions_are_deterministic` covers two splits) and the grids fit one GPU wave. On a
//! GPU, scripts/gpu-check runs this test at the full 18 x 160 x 160.

use revseg::backend::cpu::CpuBackend;
use revseg::backend::device;
use revseg::backend::gpu::cuda;
use revseg::backend::Backend;
use revseg::model::{self, NetConfig};
use revseg::rng::Rng;
use revseg::scheduler::{self, Batch, Executor, Strategy};

/// (loss, gradients, updated weights) of one step from the same seeded inputs.
type Step = (f64, Vec<Vec<f64>>, Vec<Vec<f64>>);

fn patch() -> (usize, usize, usize) {
    let Ok(s) = std::env::var("REVSEG_FULL_STEP_PATCH") else {
        return (2, 48, 48);
    };
    let v: Vec<usize> = s.split(',').filter_map(|x| x.trim().parse().ok()).collect();
    assert!(
        v.len() == 3,
        "REVSEG_FULL_STEP_PATCH={s:?}: give d,h,w (h and w multiples of 16)"
    );
    (v[0], v[1], v[2])
}

fn step<B: Backend<Elem = f32>>(b: &B) -> Step {
    let prog = model::build(&NetConfig::superhuman(2), patch()).unwrap();
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
    let plan = scheduler::training_plan(&prog, Strategy::Recompute, false).unwrap();
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
fn compare(what: &str, dev: &str, cpu: &[Vec<f64>], got: &[Vec<f64>]) {
    let global = cpu.iter().flatten().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(global > 0.0, "{what}: all zero on the CPU");
    for (i, (c, d)) in cpu.iter().zip(got).enumerate() {
        assert!(
            d.iter().all(|v| v.is_finite()),
            "{what} {i} on {dev}: not finite"
        );
        let scale = c.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let err = d
            .iter()
            .zip(c)
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()))
            / if scale > 1e-6 * global { scale } else { global };
        assert!(err <= 1e-4, "{what} {i} on {dev}: relative error {err:.2e}");
    }
}

#[test]
fn preset_training_step_matches_cpu() {
    let (l_cpu, g_cpu, p_cpu) = step(&CpuBackend::<f32>::new());
    let mut devices: Vec<(String, Step)> = Vec::new();
    // scripts/gpu-check on a GPU leaves the emulator out (CI runs it).
    if std::env::var_os("REVSEG_PARITY_CUDA_ONLY").is_none() {
        devices.push(("emu".into(), step(&device::emu_backend())));
    }
    if cuda::device_count() > 0 {
        let b = device::cuda_backend(0).expect("a CUDA device is listed but does not open");
        devices.push(("cuda".into(), step(&b)));
    }
    for (dev, (l, g, p)) in &devices {
        assert!(
            (l - l_cpu).abs() <= 1e-4 * l_cpu.abs(),
            "loss on {dev}: {l} vs CPU {l_cpu}"
        );
        compare("gradient of parameter", dev, &g_cpu, g);
        compare("updated parameter", dev, &p_cpu, p);
    }
}

//! The network program, the scheduler's two strategies, and the executor.

mod step_data;
use step_data::{cast, data, Data};

use revseg::backend::cpu::CpuBackend;
use revseg::gradcheck::{normwise_err, rel_err};
use revseg::model::{self, NetConfig, Norm, Program};
use revseg::precision::Precision;
use revseg::rng::Rng;
use revseg::scheduler::{self, Batch, Executor, PlanOptions, Strategy};
use revseg::{Backend, Element};

#[test]
fn superhuman_parameter_counts() {
    let p = (18, 160, 160);
    let count = |n: usize, outputs: usize| {
        let mut c = NetConfig::superhuman(n);
        c.outputs = outputs;
        model::build(&c, p).unwrap().param_count()
    };
    assert_eq!(count(0, 3), 1_510_443);
    assert_eq!(count(0, 12), 1_510_704);
    assert_eq!(count(1, 3), 879_723);
    assert_eq!(count(2, 3), 1_511_307);
    assert_eq!(count(3, 3), 2_142_891);
}

#[test]
fn bad_configs_are_errors() {
    let c = NetConfig::superhuman(2);
    assert!(model::build(&c, (18, 160, 150))
        .unwrap_err()
        .to_string()
        .contains("multiples of 16"));
    let odd = NetConfig {
        widths: vec![5, 8],
        rev_blocks: 1,
        norm: Norm::Batch,
        outputs: 3,
    };
    assert!(model::build(&odd, (4, 8, 8)).is_err());
}

/// Loss and every parameter gradient after one step (no update) from the seed-1 initialisation.
fn grads<T: Element>(
    prog: &Program,
    strategy: Strategy,
    d: &Data,
) -> (f64, Vec<Vec<f64>>, Executor<CpuBackend<T>>) {
    let b = CpuBackend::<T>::new();
    let plan = scheduler::training_plan(prog, strategy, false).unwrap();
    let mut ex = Executor::new(&b, prog, plan, 1).unwrap();
    ex.poison = true;
    let (i, t, m) = (
        cast::<T>(&d.image),
        cast::<T>(&d.target),
        cast::<T>(&d.mask),
    );
    let loss = ex
        .train_step(
            &b,
            &Batch {
                image: &i,
                target: &t,
                mask: &m,
            },
            false,
        )
        .unwrap();
    let g = (0..prog.params.len())
        .map(|p| ex.grad(&b, p).unwrap())
        .collect();
    (loss, g, ex)
}

fn max_abs(v: &[Vec<f64>]) -> f64 {
    v.iter().flatten().fold(0.0f64, |m, x| m.max(x.abs()))
}

/// A bias right before a BatchNorm (the decoder's upsampling bias, then the skip sum, then BN) has a
/// zero gradient: BN removes any per-channel constant. Its computed gradient is rounding noise.
fn zero_by_design(prog: &Program, p: usize, g: &[f64], global: f64) -> bool {
    let name = &prog.params[p].name;
    let zero =
        prog.config.norm == Norm::Batch && name.starts_with("dec") && name.ends_with(".up.bias");
    if zero {
        assert!(
            max_abs(&[g.to_vec()]) < 1e-9 * global,
            "{name}: gradient should vanish"
        );
    }
    zero
}

fn small(rev: usize, norm: Norm) -> Program {
    let c = NetConfig {
        widths: vec![4, 6, 8],
        rev_blocks: rev,
        norm,
        outputs: 3,
    };
    model::build(&c, (3, 8, 12)).unwrap()
}

#[test]
fn reversible_plan_gradients_equal_store_all() {
    for (rev, norm) in [(2, Norm::Batch), (1, Norm::None), (0, Norm::Batch)] {
        let prog = small(rev, norm);
        let d = data(&prog, 3);
        let (l64a, g64a, _) = grads::<f64>(&prog, Strategy::StoreAll, &d);
        let (l64b, g64b, _) = grads::<f64>(&prog, Strategy::Recompute, &d);
        assert!(
            (l64a - l64b).abs() <= 1e-12 * l64a.abs(),
            "losses differ: {l64a} vs {l64b}"
        );
        let global = max_abs(&g64a);
        for (p, (a, b)) in g64a.iter().zip(&g64b).enumerate() {
            assert!(
                a.iter().all(|v| v.is_finite()),
                "{}: non-finite gradient",
                prog.params[p].name
            );
            if zero_by_design(&prog, p, a, global) {
                assert!(max_abs(&[b.clone()]) < 1e-9 * global);
                continue;
            }
            let e = normwise_err(b, a);
            assert!(
                e <= 1e-10,
                "f64 rev={rev}: {} differs by {e:e}",
                prog.params[p].name
            );
        }
        let (_, g32a, _) = grads::<f32>(&prog, Strategy::StoreAll, &d);
        let (_, g32b, _) = grads::<f32>(&prog, Strategy::Recompute, &d);
        for (p, (a, b)) in g32a.iter().zip(&g32b).enumerate() {
            if zero_by_design(&prog, p, &g64a[p], global) {
                continue;
            }
            let e = normwise_err(b, a);
            assert!(
                e <= 1e-5,
                "f32 rev={rev}: {} differs by {e:e}",
                prog.params[p].name
            );
        }
    }
}

#[test]
fn whole_network_finite_differences_f64() {
    let c = NetConfig {
        widths: vec![4, 6],
        rev_blocks: 1,
        norm: Norm::Batch,
        outputs: 3,
    };
    let prog = model::build(&c, (2, 6, 6)).unwrap();
    let d = data(&prog, 5);
    let b = CpuBackend::<f64>::new();
    let (_, g, mut ex) = grads::<f64>(&prog, Strategy::Recompute, &d);
    let batch = Batch {
        image: &d.image,
        target: &d.target,
        mask: &d.mask,
    };
    let mut rng = Rng::new(9);
    let h = 1e-4;
    let mut worst = 0.0f64;
    let global = max_abs(&g);
    for p in 0..prog.params.len() {
        if zero_by_design(&prog, p, &g[p], global) {
            continue;
        }
        let base = ex.param(&b, p).unwrap();
        let n = base.len();
        let picks: Vec<usize> = (0..3.min(n)).map(|_| rng.range(0, n - 1)).collect();
        let mut ana = vec![];
        let mut num = vec![];
        for &e in &picks {
            let mut at = |dx: f64| {
                let mut v = base.clone();
                v[e] += dx;
                ex.set_param(&b, p, &v).unwrap();
                ex.loss(&b, &batch).unwrap()
            };
            let d1 = (at(h) - at(-h)) / (2.0 * h);
            let d2 = (at(h / 2.0) - at(-h / 2.0)) / h;
            num.push((4.0 * d2 - d1) / 3.0);
            ana.push(g[p][e]);
        }
        ex.set_param(&b, p, &base).unwrap();
        let e = rel_err(&ana, &num);
        assert!(
            e <= 1e-6,
            "{}: analytic {ana:?} vs numeric {num:?} (err {e:e})",
            prog.params[p].name
        );
        worst = worst.max(e);
    }
    eprintln!("whole-network finite differences: worst relative error {worst:e}");
}

/// Rows of 64 and 32 voxels take the CPU's direct AVX-512 convolution where the CPU has it (the
/// tiny patches above take im2col): f32 gradients of the reversible plan against f64 store-all.
#[test]
fn f32_gradients_on_wide_rows_match_f64() {
    let c = NetConfig {
        widths: vec![4, 6],
        rev_blocks: 2,
        norm: Norm::Batch,
        outputs: 3,
    };
    let prog = model::build(&c, (2, 4, 64)).unwrap();
    let d = data(&prog, 5);
    let (l64, g64, _) = grads::<f64>(&prog, Strategy::StoreAll, &d);
    let (l32, g32, _) = grads::<f32>(&prog, Strategy::Recompute, &d);
    assert!((l32 - l64).abs() <= 1e-5 * l64.abs(), "loss {l32} vs {l64}");
    let global = max_abs(&g64);
    for (p, (a, b)) in g64.iter().zip(&g32).enumerate() {
        if zero_by_design(&prog, p, a, global) {
            continue;
        }
        let e = normwise_err(b, a);
        assert!(e <= 1e-4, "{} differs by {e:e}", prog.params[p].name);
    }
}

/// The backward rebuilds ELU(BN(a)) with one fused op, never a BnApply followed by an in-place
/// ELU on its output.
#[test]
fn recomputed_elu_is_fused_into_batchnorm_apply() {
    use revseg::scheduler::instr::Instr;
    let prog = small(2, Norm::Batch);
    let plan = scheduler::training_plan(&prog, Strategy::Recompute, false).unwrap();
    let fused = plan
        .instrs
        .iter()
        .filter(|(_, i)| matches!(i, Instr::BnApply { elu: true, .. }))
        .count();
    assert!(fused > 0, "no fused rebuild in the plan");
    for w in plan.instrs.windows(2) {
        if let (Instr::BnApply { y, .. }, Instr::Elu { x, y: y2 }) = (&w[0].1, &w[1].1) {
            assert!(!(x == y && y2 == y), "an unfused BnApply + ELU pair");
        }
    }
}

#[test]
fn reconstruction_through_16_blocks_f32() {
    let c = NetConfig {
        widths: vec![8, 12],
        rev_blocks: 16,
        norm: Norm::Batch,
        outputs: 3,
    };
    let prog = model::build(&c, (4, 16, 16)).unwrap();
    let d = data(&prog, 7);
    let b = CpuBackend::<f32>::new();
    let plan = scheduler::training_plan(&prog, Strategy::Recompute, true).unwrap();
    let mut ex = Executor::new(&b, &prog, plan, 1).unwrap();
    let (i, t, m) = (
        cast::<f32>(&d.image),
        cast::<f32>(&d.target),
        cast::<f32>(&d.mask),
    );
    ex.train_step(
        &b,
        &Batch {
            image: &i,
            target: &t,
            mask: &m,
        },
        false,
    )
    .unwrap();
    assert_eq!(ex.recon_errors.len(), 3, "one check per reversible chain");
    for e in &ex.recon_errors {
        // Relative L2 error; above 0 shows the check compared a rebuilt tensor, not the original.
        assert!(*e <= 1e-5 && *e > 0.0, "reconstruction error {e:e}");
    }
}

#[test]
fn planned_peak_equals_measured_high_water() {
    for strategy in [Strategy::StoreAll, Strategy::Recompute] {
        let prog = small(2, Norm::Batch);
        let d = data(&prog, 1);
        let (_, _, ex) = grads::<f32>(&prog, strategy, &d);
        assert_eq!(ex.high_water.get(), ex.plan.arena_bytes, "{strategy:?}");
    }
}

#[test]
fn running_statistics_move_once_per_step() {
    let prog = small(2, Norm::Batch);
    let d = data(&prog, 2);
    let b = CpuBackend::<f64>::new();
    let (_, _, a) = grads::<f64>(&prog, Strategy::StoreAll, &d);
    let (_, _, r) = grads::<f64>(&prog, Strategy::Recompute, &d);
    for k in 0..a.plan.running.len() {
        for which in 0..2 {
            let pick = |ex: &Executor<CpuBackend<f64>>| {
                let (m, v) = ex.plan.running[k];
                ex.read(&b, if which == 0 { m } else { v }).unwrap()
            };
            let (x, y) = (pick(&a), pick(&r));
            assert!(
                normwise_err(&y, &x) < 1e-12,
                "running statistics {k} differ"
            );
            let init = if which == 0 { 0.0 } else { 1.0 };
            assert!(
                x.iter().any(|v| (*v - init).abs() > 1e-9),
                "running statistics {k} did not move"
            );
        }
    }
}

#[test]
fn training_lowers_the_loss() {
    let prog = small(2, Norm::Batch);
    let d = data(&prog, 4);
    let b = CpuBackend::<f32>::new();
    let plan = scheduler::training_plan(&prog, Strategy::Recompute, false).unwrap();
    let mut ex = Executor::new(&b, &prog, plan, 1).unwrap();
    let (i, t, m) = (
        cast::<f32>(&d.image),
        cast::<f32>(&d.target),
        cast::<f32>(&d.mask),
    );
    let batch = Batch {
        image: &i,
        target: &t,
        mask: &m,
    };
    let first = ex.train_step(&b, &batch, true).unwrap();
    let mut last = first;
    for _ in 0..30 {
        last = ex.train_step(&b, &batch, true).unwrap();
    }
    assert!(last < 0.7 * first, "loss {first} -> {last}");
    let _ = b.name();
}

/// The scheduler's memory claims for the preset at the paper's patch, from the plans (the executor
/// matches its plan byte for byte: `planned_peak_equals_measured_high_water`).
#[test]
fn superhuman_memory_plan_at_18x160x160() {
    use revseg::scheduler::report::PlanSummary;
    let patch = (18, 160, 160);
    let summary = |n: usize, s: Strategy| {
        let prog = model::build(&NetConfig::superhuman(n), patch).unwrap();
        let plan = scheduler::training_plan(&prog, s, false).unwrap();
        PlanSummary::new(&plan, prog.param_count())
    };
    let base = summary(0, Strategy::StoreAll);
    let rev: Vec<PlanSummary> = [1, 2, 3, 4, 16]
        .iter()
        .map(|&n| summary(n, Strategy::Recompute))
        .collect();
    // Flat in depth in both storages (bf16's figures: tests/plan_storage.rs).
    for precision in [Precision::F32, Precision::Bf16] {
        let acts: Vec<f64> = [1, 2, 3, 4, 16]
            .iter()
            .map(|&n| {
                let prog = model::build(&NetConfig::superhuman(n), patch).unwrap();
                let opt = PlanOptions {
                    strategy: Strategy::Recompute,
                    inference: false,
                    check_reconstruction: false,
                    exact_coupling: None,
                    precision,
                };
                let plan = scheduler::plan_with(&prog, &opt).unwrap();
                PlanSummary::new(&plan, prog.param_count()).activation_bytes() as f64
            })
            .collect();
        let (lo, hi) = (
            acts.iter().cloned().fold(f64::MAX, f64::min),
            acts.iter().cloned().fold(0.0, f64::max),
        );
        assert!(
            hi <= 1.02 * lo,
            "{precision}: activation peaks {acts:?} vary by more than 2%"
        );
    }
    let n2 = &rev[1];
    let ratio = n2.arena_bytes as f64 / base.arena_bytes as f64;
    assert!(
        ratio <= 0.45,
        "N=2 peak {} is {:.1}% of the store-all base {}",
        n2.arena_bytes,
        100.0 * ratio,
        base.arena_bytes
    );
    // Depth costs parameters only: 16 blocks add their weights, gradients and Adam moments.
    let extra = rev[4].arena_bytes - rev[0].arena_bytes;
    let params = (rev[4].params - rev[0].params) * 16;
    assert!(
        extra <= params + params / 50,
        "16 blocks cost {extra} bytes beyond 1 block; their parameters take {params}"
    );
}

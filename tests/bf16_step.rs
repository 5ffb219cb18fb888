//! Whole training steps in bf16 storage (backend::cpu::mixed) against the f64 reference and the
//! f32 executor, and the bf16 executor's measured high-water mark against its plan.
//!
//! Tolerance (docs/PERFORMANCE.md, "bf16 training step: error budget"): every bf16 store rounds
//! to nearest with relative error at most u = 2^-8, and every convolution rounds its f32 master
//! weights to bf16 (u again); f32 sums over a reduction of length K add gamma_K = K 2^-24 /
//! (1 - K 2^-24), below 2^-14 for every K here, so the bf16 roundings dominate. R, the number of
//! such roundings in the step, is counted from the plan (each instruction writing a bf16 buffer,
//! plus one weight rounding per convolution pass). With every op's amplification taken as 1
//! (BatchNorm rescales each level to unit variance), the worst-case first-order bound on the
//! normwise relative error is R (u + gamma_K): above 0.5 for these plans, so it would let any
//! plausible result pass. Rounding errors of round-to-nearest behave as independent, mean-zero
//! variables (Higham and Mary, SIAM J. Sci. Comput. 41(5), 2019), which gives
//! lambda sqrt(R) (u + gamma_K) with probability at least 1 - 2 exp(-lambda^2 / 2) per sum; the
//! test takes lambda = 2. It also requires the bf16 error to exceed the f32 executor's tenfold and
//! to reach u / 10, so that it shows the bf16 storage is in effect.

mod step_data;
use step_data::{cast, data, Data};

use revseg::backend::cpu::mixed::CpuMixedBackend;
use revseg::backend::cpu::CpuBackend;
use revseg::backend::Backend;
use revseg::gradcheck::l2_rel_err;
use revseg::model::{self, NetConfig, Norm, Program};
use revseg::ops::coupling::FixedPoint;
use revseg::precision::{Precision, Storage};
use revseg::scheduler::instr::Instr;
use revseg::scheduler::{self, Batch, Executor, Plan, PlanOptions, Strategy};

const U: f64 = 1.0 / 256.0;

fn small(rev: usize) -> Program {
    let c = NetConfig {
        widths: vec![4, 6, 8],
        rev_blocks: rev,
        norm: Norm::Batch,
        outputs: 3,
    };
    model::build(&c, (3, 16, 16)).unwrap()
}

fn options(strategy: Strategy, precision: Precision, exact: bool) -> PlanOptions {
    PlanOptions {
        strategy,
        inference: false,
        check_reconstruction: false,
        exact_coupling: exact.then(|| FixedPoint::for_precision(precision)),
        precision,
    }
}

struct Step<B: Backend> {
    /// The first and the last step's loss.
    first_loss: f64,
    loss: f64,
    grads: Vec<Vec<f64>>,
    ex: Executor<B>,
}

fn step<B: Backend>(b: &B, prog: &Program, opt: &PlanOptions, d: &Data, update: bool) -> Step<B> {
    step_n(b, prog, opt, d, update, 1)
}

/// `n` training steps on one batch.
fn step_n<B: Backend>(
    b: &B,
    prog: &Program,
    opt: &PlanOptions,
    d: &Data,
    update: bool,
    n: usize,
) -> Step<B> {
    let plan = scheduler::plan_with(prog, opt).unwrap();
    let mut ex = Executor::new(b, prog, plan, 1).unwrap();
    ex.poison = true;
    let (i, t, m) = (
        cast::<B::Elem>(&d.image),
        cast::<B::Elem>(&d.target),
        cast::<B::Elem>(&d.mask),
    );
    let batch = Batch {
        image: &i,
        target: &t,
        mask: &m,
    };
    let first_loss = ex.train_step(b, &batch, update).unwrap();
    let mut loss = first_loss;
    for _ in 1..n {
        loss = ex.train_step(b, &batch, update).unwrap();
    }
    let grads = (0..prog.params.len())
        .map(|p| ex.grad(b, p).unwrap())
        .collect();
    Step {
        first_loss,
        loss,
        grads,
        ex,
    }
}

/// Roundings to bf16 on the step's longest chain: convolutions count their output and their
/// weights, every other op writing a bf16 buffer its output; the forward and backward chains both
/// run through every instruction of their phase at most once.
fn roundings(plan: &Plan) -> usize {
    plan.instrs
        .iter()
        .map(|(_, ins)| {
            let bf16_out = ins
                .written()
                .iter()
                .filter(|o| plan.bufs[o.buf].storage == Storage::Bf16)
                .count()
                .min(1);
            let weights = matches!(
                ins,
                Instr::Conv { .. } | Instr::ConvBwdInput { .. } | Instr::ConvBwdWeight { .. }
            ) as usize;
            bf16_out + weights
        })
        .sum()
}

fn flat(g: &[Vec<f64>]) -> Vec<f64> {
    g.iter().flatten().copied().collect()
}

#[test]
fn bf16_steps_stay_within_their_error_budget_of_f64() {
    for (rev, strategy) in [
        (0, Strategy::StoreAll),
        (2, Strategy::Recompute),
        (2, Strategy::StoreAll),
    ] {
        let prog = small(rev);
        let d = data(&prog, 5);
        let what = format!("n = {rev}, {strategy:?}");
        let f64s = step(
            &CpuBackend::<f64>::new(),
            &prog,
            &options(strategy, Precision::F32, false),
            &d,
            false,
        );
        let f32s = step(
            &CpuBackend::<f32>::new(),
            &prog,
            &options(strategy, Precision::F32, false),
            &d,
            false,
        );
        let bf = step(
            &CpuMixedBackend,
            &prog,
            &options(strategy, Precision::Bf16, false),
            &d,
            false,
        );
        let r = roundings(&bf.ex.plan);
        // Reductions: at most 8 channels x 27 taps in a convolution, the whole patch in BN and
        // the bias and weight gradients (3 x 16 x 16 = 768 per channel): gamma_768 < 2^-14.
        let bound = 2.0 * (r as f64).sqrt() * (U + 768.0 / 16_777_216.0);
        let loss_err = (bf.loss - f64s.loss).abs() / f64s.loss.abs();
        let g_ref = flat(&f64s.grads);
        let g_err = l2_rel_err(&flat(&bf.grads), &g_ref);
        let g32_err = l2_rel_err(&flat(&f32s.grads), &g_ref);
        eprintln!(
            "{what}: R = {r}, bound {bound:.3}; loss err {loss_err:.2e}, grad err {g_err:.2e} \
             (f32 {g32_err:.2e})"
        );
        assert!(
            loss_err <= bound,
            "{what}: loss error {loss_err:e} > {bound}"
        );
        assert!(g_err <= bound, "{what}: gradient error {g_err:e} > {bound}");
        // The bf16 storage is in effect: far above f32's error, and near bf16's own u.
        assert!(
            g_err > 10.0 * g32_err && g_err > 0.1 * U,
            "{what}: {g_err:e} vs f32 {g32_err:e}"
        );
        assert!(bf.grads.iter().flatten().all(|v| v.is_finite()));
    }
}

#[test]
fn bf16_high_water_equals_the_plan_byte_for_byte() {
    for rev in [0, 2] {
        for strategy in [Strategy::StoreAll, Strategy::Recompute] {
            for exact in [false, true] {
                let prog = small(rev);
                let d = data(&prog, 1);
                let opt = options(strategy, Precision::Bf16, exact);
                let s = step(&CpuMixedBackend, &prog, &opt, &d, true);
                let what = format!("n = {rev}, {strategy:?}, exact {exact}");
                assert!(
                    s.ex.plan.bufs.iter().any(|b| b.storage == Storage::Bf16),
                    "{what}: no bf16 buffer"
                );
                // Exact chains hold their state in 16 bits in a bf16 plan.
                assert_eq!(
                    s.ex.plan.bufs.iter().any(|b| b.storage == Storage::Fix16),
                    exact && rev > 0,
                    "{what}"
                );
                assert!(s.loss.is_finite(), "{what}");
                assert_eq!(s.ex.high_water.get(), s.ex.plan.arena_bytes, "{what}");
                // Smaller than the same plan in f32.
                let f32_plan =
                    scheduler::plan_with(&prog, &options(strategy, Precision::F32, exact)).unwrap();
                assert!(s.ex.plan.arena_bytes < f32_plan.arena_bytes, "{what}");
            }
        }
    }
}

/// Adam updates master weights in f32: after one step the parameters are within 1% of the
/// learning rate of the f32 executor's wherever the two gradients agree in sign (a first Adam step
/// moves every value by about lr against its gradient's sign), and they are f32 values that bf16
/// could not hold.
#[test]
fn bf16_updates_keep_master_weights_in_f32() {
    let prog = small(2);
    let d = data(&prog, 9);
    let opt = |p| options(Strategy::Recompute, p, false);
    let f32s = step(
        &CpuBackend::<f32>::new(),
        &prog,
        &opt(Precision::F32),
        &d,
        true,
    );
    let bf = step(&CpuMixedBackend, &prog, &opt(Precision::Bf16), &d, true);
    let (b, b32) = (CpuMixedBackend, CpuBackend::<f32>::new());
    let lr = bf.ex.adam.lr;
    let (mut same, mut total, mut not_bf16) = (0, 0, 0);
    for p in 0..prog.params.len() {
        let (x, y) = (bf.ex.param(&b, p).unwrap(), f32s.ex.param(&b32, p).unwrap());
        for (a, c) in x.iter().zip(&y) {
            total += 1;
            same += ((a - c).abs() <= 0.01 * lr) as usize;
            not_bf16 += (half::bf16::from_f64(*a).to_f64() != *a) as usize;
        }
    }
    assert!(
        same * 10 > total * 8,
        "{same} of {total} parameters equal f32's"
    );
    assert!(
        not_bf16 * 2 > total,
        "only {not_bf16} of {total} parameters need f32"
    );
}

/// Training in bf16 lowers the loss as f32 does: 30 Adam steps on one batch, from the same
/// initialisation, end within 10% of the f32 run's loss (both well below the first).
#[test]
fn bf16_training_lowers_the_loss_like_f32() {
    let prog = small(2);
    let d = data(&prog, 4);
    let opt = |p| options(Strategy::Recompute, p, false);
    let f = step_n(
        &CpuBackend::<f32>::new(),
        &prog,
        &opt(Precision::F32),
        &d,
        true,
        31,
    );
    let b = step_n(&CpuMixedBackend, &prog, &opt(Precision::Bf16), &d, true, 31);
    let ((f0, f1), (b0, b1)) = ((f.first_loss, f.loss), (b.first_loss, b.loss));
    assert!(
        f1 < 0.85 * f0 && b1 < 0.85 * b0,
        "f32 {f0} -> {f1}, bf16 {b0} -> {b1}"
    );
    assert!(
        (b1 - f1).abs() <= 0.1 * f1,
        "after 30 steps: bf16 {b1} vs f32 {f1}"
    );
}

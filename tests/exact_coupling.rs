//! Exact reversible coupling (ops/coupling.rs): chains of 16 and 64 blocks rebuild their inputs
//! bit for bit, the Recompute plan's gradients equal the store-all plan's bit for bit, the CPU and
//! the CUDA kernels (on the emulator) compute the fixed-point step as the scalar reference does,
//! and overflow is an error naming the block and the value.

mod step_data;
use step_data::{cast, data, Data};

use revseg::backend::cpu::mixed::CpuMixedBackend;
use revseg::backend::cpu::CpuBackend;
use revseg::backend::gpu::emu::{EmuConfig, Schedule};
use revseg::backend::gpu::{EmuLauncher, GpuBackend};
use revseg::backend::{Backend, Bump, View};
use revseg::error::Error;
use revseg::model::{self, NetConfig, Norm, Program};
use revseg::ops::coupling::{reference, Direction, FixedPoint};
use revseg::rng::Rng;
use revseg::scheduler::{self, Batch, Executor, PlanOptions, Strategy};
use revseg::tensor::Shape5;

fn net(widths: &[usize], rev: usize) -> NetConfig {
    NetConfig {
        widths: widths.to_vec(),
        rev_blocks: rev,
        norm: Norm::Batch,
        outputs: 3,
    }
}

/// The plan options for backend `b`: bf16 storage where its arena holds per-buffer storage.
fn options<B: Backend>(b: &B, strategy: Strategy, check: bool, exact: bool) -> PlanOptions {
    PlanOptions {
        strategy,
        inference: false,
        check_reconstruction: check,
        exact_coupling: exact.then(FixedPoint::default),
        precision: if b.byte_regions() {
            revseg::precision::Precision::Bf16
        } else {
            revseg::precision::Precision::F32
        },
    }
}

/// One step without update; the executor (for gradients and reconstruction errors) and the result.
fn step<B: Backend>(
    b: &B,
    prog: &Program,
    opt: &PlanOptions,
    d: &Data,
    prepare: impl FnOnce(&mut Executor<B>, &B),
) -> (Executor<B>, revseg::error::Result<f64>) {
    let plan = scheduler::plan_with(prog, opt).unwrap();
    let mut ex = Executor::new(b, prog, plan, 1).unwrap();
    ex.poison = true;
    prepare(&mut ex, b);
    let (i, t, m) = (
        cast::<B::Elem>(&d.image),
        cast::<B::Elem>(&d.target),
        cast::<B::Elem>(&d.mask),
    );
    let r = ex.train_step(
        b,
        &Batch {
            image: &i,
            target: &t,
            mask: &m,
        },
        false,
    );
    (ex, r)
}

/// The reconstruction errors of every chain, with and without exact coupling.
fn recon<B: Backend>(b: &B, rev: usize, patch: (usize, usize, usize)) -> (Vec<f64>, Vec<f64>) {
    let prog = model::build(&net(&[8, 12], rev), patch).unwrap();
    let d = data(&prog, 7);
    let run = |exact| {
        let (ex, r) = step(
            b,
            &prog,
            &options(b, Strategy::Recompute, true, exact),
            &d,
            |_, _| {},
        );
        r.unwrap();
        assert_eq!(ex.recon_errors.len(), 3, "one check per reversible chain");
        ex.recon_errors.clone()
    };
    (run(true), run(false))
}

fn assert_exact_rebuild(exact: &[f64], plain: &[f64], what: &str) {
    // A relative L2 error of exactly 0 means every rebuilt element equals the forward's input.
    assert!(
        exact.iter().all(|e| *e == 0.0),
        "{what}: exact coupling rebuilt with errors {exact:?}"
    );
    // The same chains with float coupling drift: the check compares rebuilt tensors.
    assert!(
        plain.iter().all(|e| *e > 0.0),
        "{what}: float coupling {plain:?}"
    );
}

#[test]
fn chains_of_16_and_64_blocks_rebuild_their_inputs_bit_for_bit_on_the_cpu() {
    let b = CpuBackend::<f32>::new();
    let (e, p) = recon(&b, 16, (4, 16, 16));
    assert_exact_rebuild(&e, &p, "16 blocks");
    let (e, p) = recon(&b, 64, (2, 8, 8));
    assert_exact_rebuild(&e, &p, "64 blocks");
    let b = CpuMixedBackend;
    let (e, p) = recon(&b, 16, (4, 16, 16));
    assert_exact_rebuild(&e, &p, "16 blocks, bf16");
    let (e, p) = recon(&b, 64, (2, 8, 8));
    assert_exact_rebuild(&e, &p, "64 blocks, bf16");
}

#[test]
fn chains_of_16_blocks_rebuild_their_inputs_bit_for_bit_on_the_emulated_gpu() {
    let b = GpuBackend::new(EmuLauncher::with_config(EmuConfig {
        check: false,
        schedule: Schedule::Ascending,
    }));
    let (e, p) = recon(&b, 16, (2, 8, 8));
    assert_exact_rebuild(&e, &p, "16 blocks, emulator");
}

fn grads<B: Backend>(b: &B, prog: &Program, strategy: Strategy, d: &Data) -> (u64, Vec<Vec<u64>>) {
    let (ex, r) = step(b, prog, &options(b, strategy, false, true), d, |_, _| {});
    let loss = r.unwrap();
    let g = (0..prog.params.len())
        .map(|p| ex.grad(b, p).unwrap().iter().map(|v| v.to_bits()).collect())
        .collect();
    (loss.to_bits(), g)
}

fn assert_same_gradients<B: Backend>(b: &B, prog: &Program, what: &str) {
    let d = data(prog, 3);
    let (la, ga) = grads(b, prog, Strategy::StoreAll, &d);
    let (lb, gb) = grads(b, prog, Strategy::Recompute, &d);
    assert_eq!(la, lb, "{what}: losses differ");
    let mut nonzero = 0;
    for (p, (a, g)) in ga.iter().zip(&gb).enumerate() {
        let diff = a.iter().zip(g).filter(|(x, y)| x != y).count();
        assert_eq!(
            diff,
            0,
            "{what}: {} differs in {diff} of {} values",
            prog.params[p].name,
            a.len()
        );
        nonzero += a.iter().filter(|v| f64::from_bits(**v) != 0.0).count();
    }
    assert!(nonzero > 100, "{what}: gradients are (nearly) all zero");
}

#[test]
fn recompute_gradients_equal_store_all_bit_for_bit() {
    let prog = model::build(&net(&[4, 6, 8], 2), (3, 8, 12)).unwrap();
    assert_same_gradients(&CpuBackend::<f32>::new(), &prog, "f32, n = 2");
    assert_same_gradients(&CpuBackend::<f64>::new(), &prog, "f64, n = 2");
    let prog = model::build(&net(&[8, 12], 16), (2, 8, 8)).unwrap();
    assert_same_gradients(&CpuBackend::<f32>::new(), &prog, "f32, n = 16");
    let prog2 = model::build(&net(&[4, 6, 8], 2), (3, 8, 12)).unwrap();
    assert_same_gradients(&CpuMixedBackend, &prog2, "bf16, n = 2");
    assert_same_gradients(&CpuMixedBackend, &prog, "bf16, n = 16");
}

#[test]
fn recompute_gradients_equal_store_all_bit_for_bit_on_the_emulated_gpu() {
    let b = GpuBackend::new(EmuLauncher::with_config(EmuConfig {
        check: false,
        schedule: Schedule::Ascending,
    }));
    let prog = model::build(&net(&[4, 6], 2), (2, 8, 8)).unwrap();
    assert_same_gradients(&b, &prog, "emulator, n = 2");
}

/// Every call shape (entry rounding, forward and inverse, in place and not) against the scalar
/// reference, bit for bit, on both backends.
fn op_matches_reference<B: Backend<Elem = f32>>(b: &B) {
    let fp = FixedPoint::default();
    let n = 70_001; // not a multiple of any chunk or block
    let s = Shape5::new(1, 1, 1, 1, n);
    let mut rng = Rng::new(5);
    let x: Vec<f32> = rng.normals(n).iter().map(|v| (v * 30.0) as f32).collect();
    let f: Vec<f32> = rng.normals(n).iter().map(|v| (v * 3.0) as f32).collect();
    let mut bump = Bump::default();
    let (xv, fv, yv) = (bump.view(s), bump.view(s), bump.view(s));
    let mut a = b.alloc_arena(bump.len()).unwrap();
    let (xq, _) = reference(fp, &x, None, Direction::Forward);
    for (arg_f, dir, in_place) in [
        (None, Direction::Forward, true),
        (None, Direction::Forward, false),
        (Some(&f), Direction::Forward, true),
        (Some(&f), Direction::Forward, false),
        (Some(&f), Direction::Inverse, true),
        (Some(&f), Direction::Inverse, false),
    ] {
        let input = if arg_f.is_some() { &xq } else { &x };
        b.upload(&mut a, xv.region, input).unwrap();
        b.upload(&mut a, fv.region, &f).unwrap();
        let out: View = if in_place { xv } else { yv };
        b.coupling(&mut a, xv, arg_f.map(|_| fv), out, dir, fp)
            .unwrap();
        let mut got = vec![0f32; n];
        b.download(&a, out.region, &mut got).unwrap();
        let (want, bad) = reference(fp, input, arg_f.map(|v| v.as_slice()), dir);
        assert_eq!(bad, None);
        let diff = got
            .iter()
            .zip(&want)
            .filter(|(g, w)| g.to_bits() != w.to_bits())
            .count();
        assert_eq!(diff, 0, "{} {dir:?} in place {in_place}", b.name());
        if arg_f.is_some() {
            // The inverse of the forward is the identity on grid values.
            let (back, _) = reference(
                fp,
                &want,
                Some(&f),
                match dir {
                    Direction::Forward => Direction::Inverse,
                    Direction::Inverse => Direction::Forward,
                },
            );
            assert!(back
                .iter()
                .zip(input)
                .all(|(p, q)| p.to_bits() == q.to_bits()));
        }
    }
    // Out of range: element 40_000 lands at 250 + 10, past +-256; the error names it and its value.
    let mut xo = xq.clone();
    let mut fo = vec![0.0f32; n];
    xo[40_000] = 250.0;
    fo[40_000] = 10.0;
    xo[60_000] = f32::NAN;
    b.upload(&mut a, xv.region, &xo).unwrap();
    b.upload(&mut a, fv.region, &fo).unwrap();
    let e = b
        .coupling(&mut a, xv, Some(fv), yv, Direction::Forward, fp)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("overflow")
            && e.contains("element 40000")
            && e.contains("2.6e2")
            && e.contains("256"),
        "{}: {e}",
        b.name()
    );
}

#[test]
fn the_coupling_op_matches_the_scalar_reference_on_cpu_and_emulator() {
    op_matches_reference(&CpuBackend::<f32>::new());
    op_matches_reference(&GpuBackend::new(EmuLauncher::with_config(EmuConfig {
        check: true,
        schedule: Schedule::Ascending,
    })));
}

#[test]
fn overflow_in_a_chain_names_the_block_and_the_value() {
    let prog = model::build(&net(&[8, 12], 4), (2, 8, 8)).unwrap();
    let d = data(&prog, 9);
    // F of block 2 of the first chain's: its last convolution's weights made huge.
    let p = prog
        .params
        .iter()
        .position(|p| p.name.contains("rev2.f") && p.name.ends_with("conv2.weight"))
        .unwrap_or_else(|| {
            let names: Vec<&str> = prog.params.iter().map(|p| p.name.as_str()).collect();
            panic!("no F weight in {names:?}")
        });
    let name = prog.params[p].name.clone();
    let b = CpuBackend::<f32>::new();
    let (_, r) = step(
        &b,
        &prog,
        &options(&b, Strategy::Recompute, false, true),
        &d,
        |ex, b| {
            let w = ex.param(b, p).unwrap();
            let big: Vec<f64> = w.iter().map(|v| v * 1e4).collect();
            ex.set_param(b, p, &big).unwrap();
        },
    );
    match r {
        Err(Error::Value { what, detail }) => {
            let chain = name.split(".rev").next().unwrap();
            assert!(
                what.contains(&format!("{chain}.rev2.f")) && detail.contains("overflow"),
                "{what}: {detail}"
            );
            assert!(
                detail.contains("outside the fixed-point range +-256"),
                "{detail}"
            );
        }
        other => panic!("expected an overflow error, got {other:?}"),
    }
}

//! Exact reversible coupling (ops/coupling.rs): chains of 16 and 64 blocks rebuild their inputs
//! bit for bit (f32 container in f32 plans, 16-bit state in bf16 plans), the Recompute plan's
//! gradients equal the store-all plan's bit for bit, the CPU and the CUDA kernels (on the
//! emulator) compute the fixed-point step as the scalar reference does, the bf16 backend's i16
//! kernels as the f32 backend does on the same grid, and overflow is an error naming the block and
//! the value, never a wrapped result.

mod step_data;
use step_data::{cast, data, Data};

use revseg::backend::cpu::mixed::{CpuMixedBackend, MixedArena};
use revseg::backend::cpu::{CpuArena, CpuBackend};
use revseg::backend::gpu::emu::{EmuConfig, Schedule};
use revseg::backend::gpu::{EmuLauncher, GpuBackend};
use revseg::backend::Region;
use revseg::backend::{Backend, Bump, View};
use revseg::error::Error;
use revseg::model::{self, NetConfig, Norm, Program};
use revseg::ops::coupling::{reference, Direction, FixedPoint};
use revseg::precision::{Precision, Storage};
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

/// The plan options for backend `b`: bf16 storage (and the 16-bit state) where its arena holds
/// per-buffer storage.
fn options<B: Backend>(b: &B, strategy: Strategy, check: bool, exact: bool) -> PlanOptions {
    let precision = if b.byte_regions() {
        Precision::Bf16
    } else {
        Precision::F32
    };
    PlanOptions {
        strategy,
        inference: false,
        check_reconstruction: check,
        exact_coupling: exact.then(|| FixedPoint::for_precision(precision)),
        precision,
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
        // bf16 plans hold the state in 16 bits: the checks compare fix16 buffers.
        let fix16 = ex.plan.bufs.iter().any(|x| x.storage == Storage::Fix16);
        assert_eq!(fix16, exact && b.byte_regions());
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

/// Byte regions of the bf16 backend's arena, each at a multiple of 256 bytes.
struct Bytes(usize);
impl Bytes {
    fn take(&mut self, len: usize, storage: Storage) -> Region {
        let r = Region::bytes_at(self.0, len, storage);
        self.0 += (len * storage.bytes()).div_ceil(256) * 256;
        r
    }
}

fn bf16_values(v: &[f32]) -> Vec<f32> {
    v.iter()
        .map(|&x| half::bf16::from_f32(x).to_f32())
        .collect()
}

/// The bf16 backend's 16-bit state (i16 k, integer arithmetic) against the scalar reference and
/// the f32 backend's coupling on the same 2^-7 grid in f32 containers, bit for bit: the entry from
/// a bf16 tensor, forward and inverse steps in place and not, with F's output in bf16.
#[test]
fn the_16_bit_state_matches_the_f32_backend_on_the_same_grid() {
    let fp = FixedPoint::fix16();
    let n = 70_001;
    let s = Shape5::new(1, 1, 1, 1, n);
    let mut rng = Rng::new(11);
    // |x| up to 100 (the range is +-256), F's outputs of a few units and some far below the
    // grid's 2^-7, so that rounding to zero and ties occur.
    let x = bf16_values(
        &rng.normals(n)
            .iter()
            .map(|v| (v * 25.0).clamp(-100.0, 100.0) as f32)
            .collect::<Vec<_>>(),
    );
    let f = bf16_values(
        &rng.normals(n)
            .iter()
            .enumerate()
            .map(|(i, v)| (v * if i % 3 == 0 { 0.003 } else { 3.0 }) as f32)
            .collect::<Vec<_>>(),
    );
    let mb = CpuMixedBackend;
    let mut l = Bytes(0);
    let (xb, fb) = (l.take(n, Storage::Bf16), l.take(n, Storage::Bf16));
    let (st, st2) = (l.take(n, Storage::Fix16), l.take(n, Storage::Fix16));
    let mut a = mb.alloc_arena(l.0).unwrap();
    let v = |r: Region| View::new(r, s).unwrap();
    mb.upload(&mut a, xb, &x).unwrap();
    mb.upload(&mut a, fb, &f).unwrap();
    let read = |a: &MixedArena, r: Region| {
        let mut o = vec![0f32; n];
        mb.download(a, r, &mut o).unwrap();
        o
    };
    // The f32 backend on the same values, the same format.
    let cb = CpuBackend::<f32>::new();
    let mut bump = Bump::default();
    let (cx, cf, cy) = (bump.view(s), bump.view(s), bump.view(s));
    let mut ca = cb.alloc_arena(bump.len()).unwrap();
    cb.upload(&mut ca, cf.region, &f).unwrap();
    let cpu = |ca: &mut CpuArena<f32>, input: &[f32], with_f: bool, dir| {
        cb.upload(ca, cx.region, input).unwrap();
        cb.coupling(ca, cx, with_f.then_some(cf), cy, dir, fp)
            .unwrap();
        let mut o = vec![0f32; n];
        cb.download(ca, cy.region, &mut o).unwrap();
        o
    };
    // Bit for bit but for the sign of zero: the f32 container keeps a -0 from rounding a small
    // negative value, an i16 has one zero (the two compare equal and give the same sums).
    let same = |got: &[f32], want: &[f32], what: &str| {
        let diff = got
            .iter()
            .zip(want)
            .filter(|(g, w)| g.to_bits() != w.to_bits() && !(**g == 0.0 && **w == 0.0))
            .count();
        assert_eq!(diff, 0, "{what}: {diff} of {n} differ");
    };
    // Entry.
    mb.coupling(&mut a, v(xb), None, v(st), Direction::Forward, fp)
        .unwrap();
    let xq = read(&a, st);
    let (want, bad) = reference(fp, &x, None, Direction::Forward);
    assert_eq!(bad, None);
    same(&xq, &want, "entry vs reference");
    same(
        &xq,
        &cpu(&mut ca, &x, false, Direction::Forward),
        "entry vs f32",
    );
    assert!(xq.iter().zip(&x).any(|(q, x)| q != x), "the entry rounds");
    // Steps, out of place then in place, forward and inverse.
    for (dir, in_place) in [
        (Direction::Forward, false),
        (Direction::Inverse, false),
        (Direction::Forward, true),
        (Direction::Inverse, true),
    ] {
        mb.coupling(&mut a, v(xb), None, v(st), Direction::Forward, fp)
            .unwrap();
        let out = if in_place { st } else { st2 };
        mb.coupling(&mut a, v(st), Some(v(fb)), v(out), dir, fp)
            .unwrap();
        let got = read(&a, out);
        let (want, bad) = reference(fp, &xq, Some(&f), dir);
        assert_eq!(bad, None);
        let what = format!("{dir:?}, in place {in_place}");
        same(&got, &want, &format!("{what} vs reference"));
        same(
            &got,
            &cpu(&mut ca, &xq, true, dir),
            &format!("{what} vs f32"),
        );
        // And back: the other direction on the result gives the entry's values bit for bit.
        let back_dir = match dir {
            Direction::Forward => Direction::Inverse,
            Direction::Inverse => Direction::Forward,
        };
        mb.coupling(&mut a, v(out), Some(v(fb)), v(out), back_dir, fp)
            .unwrap();
        same(&read(&a, out), &xq, &format!("{what}, undone"));
    }
    // A copy into bf16 (what F and G read) rounds the state as bf16 does.
    let cb16 = l.take(n, Storage::Bf16);
    let mut a2 = mb.alloc_arena(l.0).unwrap();
    mb.upload(&mut a2, xb, &x).unwrap();
    mb.coupling(&mut a2, v(xb), None, v(st), Direction::Forward, fp)
        .unwrap();
    mb.copy(&mut a2, st, cb16).unwrap();
    same(&read(&a2, cb16), &bf16_values(&xq), "copy to bf16");
}

/// A step whose result leaves +-(2^15 - 1) x 2^-S is an error naming the first such element and
/// the value it would have had; the element is left as the NaN mark, not wrapped around.
#[test]
fn a_16_bit_overflow_is_an_error_and_never_wraps() {
    let fp = FixedPoint::fix16();
    let n = 70_001;
    let s = Shape5::new(1, 1, 1, 1, n);
    let mb = CpuMixedBackend;
    let mut l = Bytes(0);
    let (xb, fb) = (l.take(n, Storage::Bf16), l.take(n, Storage::Bf16));
    let (st, st2) = (l.take(n, Storage::Fix16), l.take(n, Storage::Fix16));
    let mut a = mb.alloc_arena(l.0).unwrap();
    let v = |r: Region| View::new(r, s).unwrap();
    // 250 + 10 leaves +-(2^15 - 1) x 2^-7 = +-255.99.
    assert_eq!(fp.frac_bits, 7);
    let mut x = vec![0.5f32; n];
    x[40_000] = 250.0;
    let mut f = vec![0.25f32; n];
    f[40_000] = 10.0;
    f[60_000] = f32::NAN;
    mb.upload(&mut a, xb, &x).unwrap();
    mb.upload(&mut a, fb, &f).unwrap();
    mb.coupling(&mut a, v(xb), None, v(st), Direction::Forward, fp)
        .unwrap();
    for in_place in [false, true] {
        let out = if in_place { st } else { st2 };
        let e = mb
            .coupling(&mut a, v(st), Some(v(fb)), v(out), Direction::Forward, fp)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("overflow")
                && e.contains("element 40000 is 2.6e2")
                && e.contains(&format!("+-{}", fp.range()))
                && e.contains("fix16"),
            "in place {in_place}: {e}"
        );
        let mut got = vec![0f32; n];
        mb.download(&a, out, &mut got).unwrap();
        // 250 + 10 wrapped in 16 bits would read as 260 - 512 = -252.
        assert!(got[40_000].is_nan(), "{}", got[40_000]);
        assert!(got[60_000].is_nan(), "{}", got[60_000]);
        assert_eq!(got[0], 0.75);
    }
    // The entry checks its range too.
    let mut big = vec![1.0f32; n];
    big[7] = -600.0;
    mb.upload(&mut a, xb, &big).unwrap();
    let e = mb
        .coupling(&mut a, v(xb), None, v(st), Direction::Forward, fp)
        .unwrap_err()
        .to_string();
    assert!(e.contains("element 7 is -6e2"), "{e}");
}

/// Ops other than the coupling and the few readers of the state refuse a fix16 operand by name.
#[test]
fn other_ops_refuse_a_16_bit_state() {
    let n = 512;
    let s = Shape5::new(1, 1, 1, 1, n);
    let mb = CpuMixedBackend;
    let mut l = Bytes(0);
    let (xb, st) = (l.take(n, Storage::Bf16), l.take(n, Storage::Fix16));
    let mut a = mb.alloc_arena(l.0).unwrap();
    let v = |r: Region| View::new(r, s).unwrap();
    mb.upload(&mut a, xb, &vec![0.5; n]).unwrap();
    mb.coupling(
        &mut a,
        v(xb),
        None,
        v(st),
        Direction::Forward,
        FixedPoint::fix16(),
    )
    .unwrap();
    for e in [
        mb.add_assign(&mut a, v(xb), v(st)).unwrap_err(),
        mb.elu_forward(&mut a, v(st), v(xb)).unwrap_err(),
        mb.copy(&mut a, xb, st).unwrap_err(),
        mb.upload(&mut a, st, &vec![0.001; n]).unwrap_err(),
    ] {
        let e = e.to_string();
        assert!(e.contains("fix16") || e.contains("16-bit"), "{e}");
    }
    // A 16-bit state written in the f32-container format is refused too.
    let e = mb
        .coupling(
            &mut a,
            v(xb),
            None,
            v(st),
            Direction::Forward,
            FixedPoint::default(),
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("16-bit format"), "{e}");
}

#[test]
fn overflow_in_a_bf16_chain_names_the_block_and_the_16_bit_range() {
    let prog = model::build(&net(&[8, 12], 4), (2, 8, 8)).unwrap();
    let d = data(&prog, 9);
    let p = prog
        .params
        .iter()
        .position(|p| p.name.contains("rev2.f") && p.name.ends_with("conv2.weight"))
        .unwrap();
    let name = prog.params[p].name.clone();
    let b = CpuMixedBackend;
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
            let range = format!(
                "outside the fixed-point range +-{}",
                FixedPoint::fix16().range()
            );
            assert!(
                detail.contains(&range) && detail.contains("fix16"),
                "{detail}"
            );
        }
        other => panic!("expected an overflow error, got {other:?}"),
    }
}

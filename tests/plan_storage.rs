//! Element sizes in the static plan: which buffers a bf16 plan stores in bf16, their byte
//! offsets, and the memory figures of the preset at the paper's patch.

use revseg::model::{self, NetConfig, Program};
use revseg::ops::coupling::FixedPoint;
use revseg::precision::{Precision, Storage};
use revseg::scheduler::memory::{lifetimes, ALIGN};
use revseg::scheduler::plan::{BufInfo, Class};
use revseg::scheduler::report::PlanSummary;
use revseg::scheduler::{self, Plan, PlanOptions, Strategy};

const PATCH: (usize, usize, usize) = (18, 160, 160);
const MIB: f64 = (1 << 20) as f64;

fn plan(prog: &Program, strategy: Strategy, precision: Precision, exact: bool) -> Plan {
    scheduler::plan_with(
        prog,
        &PlanOptions {
            strategy,
            inference: false,
            check_reconstruction: false,
            exact_coupling: exact.then(|| FixedPoint::for_precision(precision)),
            precision,
        },
    )
    .unwrap()
}

fn find<'a>(p: &'a Plan, name: &str) -> &'a BufInfo {
    p.bufs
        .iter()
        .find(|b| b.name == name)
        .unwrap_or_else(|| panic!("no buffer {name}"))
}

/// Byte ranges of buffers alive at the same time never overlap, every offset is aligned, and the
/// arena holds them all.
fn check_layout(p: &Plan) {
    let life = lifetimes(p);
    let used: Vec<(usize, &BufInfo)> = p
        .bufs
        .iter()
        .enumerate()
        .filter(|(i, b)| b.persistent || life[*i].is_some())
        .collect();
    for &(i, a) in &used {
        assert_eq!(a.offset % ALIGN, 0, "{} at {}", a.name, a.offset);
        assert!(a.offset + a.bytes() <= p.arena_bytes, "{}", a.name);
        for &(j, b) in &used {
            if j <= i {
                continue;
            }
            let together = match (life[i], life[j]) {
                _ if a.persistent || b.persistent => true,
                (Some((f1, l1)), Some((f2, l2))) => f1 <= l2 && f2 <= l1,
                _ => false,
            };
            let disjoint = a.offset + a.bytes() <= b.offset || b.offset + b.bytes() <= a.offset;
            assert!(
                !together || disjoint,
                "{} and {} overlap while both live",
                a.name,
                b.name
            );
        }
    }
}

#[test]
fn bf16_plan_stores_activations_in_two_bytes_and_master_state_in_four() {
    let prog = model::build(&NetConfig::superhuman(2), PATCH).unwrap();
    let f = plan(&prog, Strategy::Recompute, Precision::F32, false);
    let h = plan(&prog, Strategy::Recompute, Precision::Bf16, false);
    assert_eq!(f.bufs.len(), h.bufs.len());
    let voxels = 18 * 160 * 160;
    // The image: 1 channel, bf16.
    let input = find(&h, &prog.tensors[prog.input].name);
    assert_eq!((input.storage, input.bytes()), (Storage::Bf16, 2 * voxels));
    // The logits, targets, masks and class weights feed the f32 loss: 3 channels of 4 bytes.
    let logits = find(&h, &prog.tensors[prog.output].name);
    assert_eq!(
        (logits.storage, logits.bytes()),
        (Storage::F32, 4 * 3 * voxels)
    );
    for name in ["target", "mask", "class_weights"] {
        let b = find(&h, name);
        assert_eq!(
            (b.storage, b.bytes()),
            (Storage::F32, 12 * voxels),
            "{name}"
        );
    }
    for (a, b) in f.bufs.iter().zip(&h.bufs) {
        assert_eq!((a.name.as_str(), a.len), (b.name.as_str(), b.len));
        assert_eq!(a.storage, Storage::F32, "{}", a.name);
        let master = matches!(
            b.class,
            Class::Weights | Class::Gradients | Class::Optimizer
        );
        if master || b.persistent {
            // Parameters, their gradients, Adam's moments, BN statistics and the loss.
            assert_eq!(b.storage, Storage::F32, "{}", b.name);
        }
        if b.class == Class::Workspace && b.name.starts_with("grad:") {
            // Gradients of activations (the logits' one too: the loss writes it in bf16).
            assert_eq!(b.storage, Storage::Bf16, "{}", b.name);
        }
        assert_eq!(b.bytes(), b.len * b.storage.bytes());
    }
    // A 3x3x3 14 -> 14 weight of a scale-0 reversible block: 5292 values of 4 bytes.
    let w = h
        .bufs
        .iter()
        .find(|b| b.class == Class::Weights && b.len == 14 * 14 * 27)
        .unwrap();
    assert_eq!((w.storage, w.bytes()), (Storage::F32, 4 * 5292));
    check_layout(&f);
    check_layout(&h);
}

/// RevNet n = 2 at 18x160x160 in bf16 against its f32 plan and the store-all f32 base network:
/// at most 55% and 22% (flatness in depth: tests/network.rs).
#[test]
fn bf16_memory_plan_at_18x160x160() {
    let summary = |n: usize, s: Strategy, p: Precision| {
        let prog = model::build(&NetConfig::superhuman(n), PATCH).unwrap();
        PlanSummary::new(&plan(&prog, s, p, false), prog.param_count())
    };
    let base = summary(0, Strategy::StoreAll, Precision::F32);
    let f2 = summary(2, Strategy::Recompute, Precision::F32);
    let h2 = &summary(2, Strategy::Recompute, Precision::Bf16);
    let (r_f, r_base) = (
        h2.arena_bytes as f64 / f2.arena_bytes as f64,
        h2.arena_bytes as f64 / base.arena_bytes as f64,
    );
    assert!(
        r_f <= 0.55 && r_base <= 0.22,
        "bf16 N=2 {:.1} MiB: {:.1}% of f32 {:.1} MiB, {:.1}% of the store-all base {:.1} MiB",
        h2.arena_bytes as f64 / MIB,
        100.0 * r_f,
        f2.arena_bytes as f64 / MIB,
        100.0 * r_base,
        base.arena_bytes as f64 / MIB
    );
    // Master state is the same bytes in both precisions.
    for class in ["weights", "gradients", "optimizer"] {
        let get = |s: &PlanSummary| s.breakdown.iter().find(|(n, _)| *n == class).unwrap().1;
        assert_eq!(get(h2), get(&f2), "{class}");
    }
    // Activations and workspace: bf16 halves everything but the f32 loss inputs (logits,
    // targets, masks and class weights: 3 channels each, 2 bytes per value more than halved),
    // give or take half an alignment unit per buffer.
    let loss_inputs = 4 * 3 * 18 * 160 * 160 * 2;
    let padding = ALIGN / 2 * h2.buffers;
    let (a16, a32) = (h2.activation_bytes(), f2.activation_bytes());
    assert!(
        a16 < a32 && a16 <= a32 / 2 + loss_inputs + padding,
        "activations+workspace {a16} in bf16 vs {a32} in f32"
    );
}

/// Exact coupling in a bf16 plan keeps each chain's state in 16 bits (fix16); F and G read a
/// bf16 copy of it, and the chain's input (ELU's bf16 output) is rounded into a state buffer of
/// its own. The f32-container format still plans in bf16, its state in f32.
#[test]
fn exact_coupling_in_bf16_keeps_chain_state_in_16_bits() {
    let prog = model::build(&NetConfig::superhuman(2), (4, 32, 32)).unwrap();
    for strategy in [Strategy::Recompute, Strategy::StoreAll] {
        let h = plan(&prog, strategy, Precision::Bf16, true);
        let coupled: Vec<usize> = h
            .instrs
            .iter()
            .filter_map(|(_, i)| match i {
                scheduler::instr::Instr::Coupling { y, .. } => Some(y.buf),
                _ => None,
            })
            .collect();
        assert!(!coupled.is_empty());
        for b in coupled {
            assert_eq!(h.bufs[b].storage, Storage::Fix16, "{}", h.bufs[b].name);
            assert_eq!(h.bufs[b].bytes(), 2 * h.bufs[b].len);
        }
        // Nothing is f32 but master state, statistics and the loss's inputs.
        for b in &h.bufs {
            if b.storage == Storage::F32 && !b.persistent {
                assert!(
                    matches!(
                        b.class,
                        Class::Weights | Class::Gradients | Class::Optimizer
                    ) || ["target", "mask", "class_weights", "output"]
                        .iter()
                        .any(|n| b.name == *n),
                    "{strategy:?}: {} is f32",
                    b.name
                );
            }
        }
        let copies = h
            .bufs
            .iter()
            .filter(|b| b.name.ends_with(".input"))
            .inspect(|b| assert_eq!(b.storage, Storage::Bf16, "{}", b.name))
            .count();
        assert!(
            copies > 0,
            "F and G read their 16-bit input through a bf16 copy"
        );
        check_layout(&h);
    }
    let h = plan(&prog, Strategy::Recompute, Precision::Bf16, true);
    let plain = plan(&prog, Strategy::Recompute, Precision::Bf16, false);
    let wide = scheduler::plan_with(
        &prog,
        &PlanOptions {
            strategy: Strategy::Recompute,
            inference: false,
            check_reconstruction: false,
            exact_coupling: Some(FixedPoint::default()),
            precision: Precision::Bf16,
        },
    )
    .unwrap();
    assert!(wide.bufs.iter().all(|b| b.storage != Storage::Fix16));
    // The state's copies for F and G and the entry's second buffer fall outside the peak, which
    // the plain plan shares; the f32 container costs 2 bytes more per kept chain output.
    assert!(
        plain.arena_bytes <= h.arena_bytes && h.arena_bytes < wide.arena_bytes,
        "plain {}, 16-bit {}, f32 container {}",
        plain.arena_bytes,
        h.arena_bytes,
        wide.arena_bytes
    );
    check_layout(&wide);
}

/// RevNet n = 2 at 18x160x160 in bf16 with exact coupling (16-bit state): at most 55% of the f32
/// plan and 22% of the store-all f32 base network.
#[test]
fn exact_bf16_memory_plan_at_18x160x160() {
    let peak = |n: usize, s: Strategy, p: Precision, exact| {
        let prog = model::build(&NetConfig::superhuman(n), PATCH).unwrap();
        plan(&prog, s, p, exact).arena_bytes as f64
    };
    let base = peak(0, Strategy::StoreAll, Precision::F32, false);
    let f2 = peak(2, Strategy::Recompute, Precision::F32, false);
    let h2 = peak(2, Strategy::Recompute, Precision::Bf16, true);
    assert!(
        h2 <= 0.55 * f2 && h2 <= 0.22 * base,
        "exact bf16 N=2 {:.1} MiB: {:.1}% of f32 {:.1} MiB, {:.1}% of the base {:.1} MiB",
        h2 / MIB,
        100.0 * h2 / f2,
        f2 / MIB,
        100.0 * h2 / base,
        base / MIB
    );
}

/// The element-typed backends run f32 plans only; a bf16 plan is refused by name, not misread.
#[test]
fn element_backends_refuse_a_bf16_plan() {
    use revseg::backend::cpu::CpuBackend;
    use revseg::scheduler::Executor;
    let prog = model::build(&NetConfig::superhuman(1), (2, 16, 16)).unwrap();
    let p = plan(&prog, Strategy::Recompute, Precision::Bf16, false);
    let e = Executor::new(&CpuBackend::<f32>::new(), &prog, p, 1)
        .err()
        .expect("a bf16 plan on an f32 arena")
        .to_string();
    assert!(e.contains("bf16") && e.contains("f32 storage"), "{e}");
    let p = plan(&prog, Strategy::Recompute, Precision::F32, false);
    assert!(Executor::new(&CpuBackend::<f32>::new(), &prog, p, 1).is_ok());
}

/// `revseg plan --precision` reports the library's plan in bytes, and names a bad precision.
#[test]
fn plan_command_gives_the_bf16_peak() {
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_revseg"))
            .args(["plan", "--rev-blocks", "1", "--patch", "4,32,32"])
            .args(args)
            .output()
            .unwrap()
    };
    let prog = model::build(&NetConfig::superhuman(1), (4, 32, 32)).unwrap();
    for (p, precision) in [("f32", Precision::F32), ("bf16", Precision::Bf16)] {
        let out = run(&["--precision", p, "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let want = plan(&prog, Strategy::Recompute, precision, false).arena_bytes;
        assert_eq!(j["arena_bytes"].as_u64(), Some(want as u64), "{p}");
        assert_eq!(j["precision"].as_str(), Some(p));
    }
    let out = run(&["--precision", "fp16"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("fp16"), "{err}");
}

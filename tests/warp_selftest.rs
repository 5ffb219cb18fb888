//! The warp-level instructions (kernels/warp_selftest.cu through kernels/intrinsics.cuh) against
//! values computed here from their definitions: shuffles and votes as the CUDA programming guide
//! defines them, mma against a plain matrix product, ldmatrix and cp.async against the data they
//! move. On the emulator under three schedules with every check on, and on a GPU where one is
//! found. Each mma test also runs the kernel with one fragment index transposed and requires a
//! wrong answer, so a layout error cannot pass.

use revseg::backend::gpu::args::{EwArgs, KernelArgs};
use revseg::backend::gpu::emu::{EmuConfig, Schedule};
use revseg::backend::gpu::{cuda, CudaLauncher, EmuLauncher, Launcher};
use revseg::error::Result;

struct Run<'a> {
    kernel: &'a str,
    threads: u32,
    a: Vec<f32>,
    b: Vec<f32>,
    out: usize,
    sabotage: bool,
    alpha: f32,
}

fn launch<L: Launcher>(l: &L, r: &Run) -> Result<Vec<f32>> {
    let mut a = l.alloc(r.a.len())?;
    let mut b = l.alloc(r.b.len().max(1))?;
    let mut o = l.alloc(r.out)?;
    l.upload(&mut a, 0, &r.a)?;
    if !r.b.is_empty() {
        l.upload(&mut b, 0, &r.b)?;
    }
    l.upload(&mut o, 0, &vec![0.0; r.out])?;
    let (ap, bp, op) = (
        l.device_ptr(&mut a),
        l.device_ptr(&mut b),
        l.device_ptr(&mut o),
    );
    l.clear_regions();
    l.note_region(ap, r.a.len());
    l.note_region(bp, r.b.len());
    l.note_region(op, r.out);
    let args = EwArgs {
        a: ap,
        b: bp,
        out: op,
        n: r.a.len() as i32,
        accumulate: r.sabotage as i32,
        alpha: r.alpha,
        pad: 0,
    };
    l.launch(r.kernel, [1, 1, 1], [r.threads, 1, 1], 0, args.bytes())?;
    let mut out = vec![0.0; r.out];
    l.download(&o, 0, &mut out)?;
    Ok(out)
}

/// Every device: the emulator (checks on) under three schedules, and CUDA device 0 if present.
fn on_devices(r: &Run) -> Vec<(String, Result<Vec<f32>>)> {
    let mut got = Vec::new();
    for schedule in [
        Schedule::Ascending,
        Schedule::Descending,
        Schedule::Random(5),
    ] {
        let l = EmuLauncher::with_config(EmuConfig {
            schedule,
            check: true,
        });
        got.push((format!("emu {schedule:?}"), launch(&l, r)));
    }
    if cuda::device_count() > 0 {
        let l = CudaLauncher::new(0).expect("a CUDA device is listed but does not open");
        got.push(("cuda".to_string(), launch(&l, r)));
    }
    got
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn assert_all(r: &Run, want: &[f32]) {
    for (dev, got) in on_devices(r) {
        let got = got.unwrap_or_else(|e| panic!("{} on {dev}: {e}", r.kernel));
        assert_eq!(bits(&got), bits(want), "{} on {dev}", r.kernel);
    }
}

/// Small integers: exact in TF32 and BF16, and sums of products of them exact in f32.
fn ints(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i * 7 + seed * 13) % 9) as f32) - 4.0)
        .collect()
}

/// D = A B + C for an m x k times k x 8 product, row-major.
fn matmul(a: &[f32], b: &[f32], c: &[f32], m: usize, k: usize) -> Vec<f32> {
    let mut d = c.to_vec();
    for i in 0..m {
        for j in 0..8 {
            for kk in 0..k {
                d[i * 8 + j] += a[i * k + kk] * b[kk * 8 + j];
            }
        }
    }
    d
}

fn mma_case(kernel: &str, k: usize) {
    let a = ints(16 * k, 1);
    let b = ints(k * 8, 2);
    let c = ints(16 * 8, 3);
    let want = matmul(&a, &b, &c, 16, k);
    let mut run = Run {
        kernel,
        threads: 32,
        a: [a, b].concat(),
        b: c,
        out: 128,
        sabotage: false,
        alpha: 0.0,
    };
    assert_all(&run, &want);
    run.sabotage = true;
    for (dev, got) in on_devices(&run) {
        let got = got.unwrap();
        assert_ne!(
            bits(&got),
            bits(&want),
            "{kernel} on {dev}: a transposed fragment index passed"
        );
    }
}

#[test]
fn mma_tf32_m16n8k8_matches_a_matrix_product() {
    mma_case("selftest_mma_tf32", 8);
}

#[test]
fn mma_bf16_m16n8k16_matches_a_matrix_product() {
    mma_case("selftest_mma_bf16", 16);
}

#[test]
fn shuffles_and_votes_follow_the_programming_guide() {
    let x: Vec<f32> = (0..64)
        .map(|t| {
            if t / 16 == 1 {
                t as f32
            } else {
                ((t * 37) % 101) as f32 - 50.0
            }
        })
        .collect();
    let mut want = vec![0.0f32; 640];
    for t in 0..64usize {
        let (l, wb, v) = (t % 32, t - t % 32, x[t]);
        let half = if l < 16 {
            wb..wb + 16
        } else {
            wb + 16..wb + 32
        };
        let ballot = (0..32).fold(0u32, |m, j| m | ((x[wb + j] > 0.0) as u32) << j);
        let xor8 = l ^ 12;
        let o = &mut want[10 * t..10 * t + 10];
        o[0] = x[wb + (l * 7 + 3) % 32];
        o[1] = if l >= 3 { x[t - 3] } else { v };
        o[2] = if l + 5 < 32 { x[t + 5] } else { v };
        o[3] = x[wb + (l ^ 6)];
        o[4] = x[wb + (l & !7) + 3];
        o[5] = f32::from_bits(ballot & 0x7FFF_FFFF);
        o[6] = x[half.clone()].iter().any(|&y| y > 40.0) as u8 as f32;
        o[7] = x[half].iter().all(|&y| y > -10.0) as u8 as f32;
        o[8] = if xor8 < (l & !7) + 8 { x[wb + xor8] } else { v };
        o[9] = x[t ^ 1];
    }
    // Both vote outcomes occur, so a vote stuck at one answer fails.
    let votes: Vec<f32> = (0..64).map(|t| want[10 * t + 7]).collect();
    assert!(votes.contains(&0.0) && votes.contains(&1.0));
    assert_all(
        &Run {
            kernel: "selftest_warp_votes",
            threads: 64,
            a: x,
            b: vec![],
            out: 640,
            sabotage: false,
            alpha: 0.0,
        },
        &want,
    );
}

#[test]
fn ldmatrix_x4_gives_the_manuals_fragments() {
    let m = |j: usize, r: usize, c: usize| (j * 64 + r * 8 + c) as u32;
    for trans in [false, true] {
        let mut want = Vec::new();
        for l in 0..32 {
            for j in 0..4 {
                let (lo, hi) = if trans {
                    (m(j, 2 * (l % 4), l / 4), m(j, 2 * (l % 4) + 1, l / 4))
                } else {
                    (m(j, l / 4, 2 * (l % 4)), m(j, l / 4, 2 * (l % 4) + 1))
                };
                want.push(f32::from_bits(lo | hi << 16));
            }
        }
        assert_all(
            &Run {
                kernel: "selftest_ldmatrix",
                threads: 32,
                a: (0..256).map(|i| i as f32).collect(),
                b: vec![],
                out: 128,
                sabotage: false,
                alpha: if trans { 1.0 } else { 0.0 },
            },
            &want,
        );
    }
}

#[test]
fn cp_async_lands_after_the_wait() {
    let x: Vec<f32> = (0..256).map(|i| i as f32 * 0.5 - 3.0).collect();
    let want: Vec<f32> = (0..256).map(|i| x[(i + 4) % 256]).collect();
    let mut run = Run {
        kernel: "selftest_cp_async",
        threads: 64,
        a: x,
        b: vec![],
        out: 256,
        sabotage: false,
        alpha: 0.0,
    };
    assert_all(&run, &want);
    // Without the wait the copy never lands: the checks see the read of unwritten shared memory,
    // and even unchecked the emulator refuses a thread that returns with copies in flight.
    run.sabotage = true;
    let checked = EmuLauncher::with_config(EmuConfig {
        schedule: Schedule::Ascending,
        check: true,
    });
    let e = launch(&checked, &run).unwrap_err().to_string();
    assert!(
        e.contains("uninitialised") || e.contains("never waited"),
        "{e}"
    );
    let plain = EmuLauncher::with_config(EmuConfig {
        schedule: Schedule::Ascending,
        check: false,
    });
    let v = launch(&plain, &run).unwrap_err().to_string();
    assert!(v.contains("never waited"), "{v}");
}

#[test]
fn warp_collective_errors_are_reported() {
    // A lane masks itself out or waits for a lane that never comes: reported, not hung. (Built
    // from the vote kernel with a 48-thread block: its second warp has 16 lanes, and the full
    // mask names lanes past the block's end.)
    let l = EmuLauncher::with_config(EmuConfig {
        schedule: Schedule::Ascending,
        check: false,
    });
    let e = launch(
        &l,
        &Run {
            kernel: "selftest_warp_votes",
            threads: 48,
            a: vec![1.0; 64],
            b: vec![],
            out: 640,
            sabotage: false,
            alpha: 0.0,
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("past the block's end"), "{e}");
}

//! The bf16 backend's elementwise, BatchNorm, pooling and sigmoid ops against the f64 backend on
//! the same (bf16-representable) inputs. Each output is computed in f32 from exact inputs and
//! rounded once to bf16, so element by element |got - ref| <= u |ref| + e_f32, u = 2^-8, where
//! e_f32 is the f32 evaluation's own error: 2^-20 |ref| for ELU and sigmoid (the exp polynomial,
//! relative error about 1e-7, and at most three roundings of 2^-24), 2^-22 |ref| for a sum or
//! a product of two values; max-pooling picks one of its inputs, so it is exact. BatchNorm sums
//! in f64 and keeps its statistics and the gamma/beta gradients in f32: those are within 2^-23 of
//! f64; y = x a + b is two f32 roundings on |x a| + |b| before the bf16 store.

use half::bf16;
use revseg::backend::cpu::mixed::CpuMixedBackend;
use revseg::backend::cpu::CpuBackend;
use revseg::backend::{Backend, BnStats, Region, View, Write};
use revseg::ops::batchnorm::BatchNormArgs;
use revseg::precision::Storage;
use revseg::rng::Rng;
use revseg::tensor::{Element, Shape5};

const U: f64 = 1.0 / 256.0;

/// Regions laid end to end in one arena, in elements or (for the bf16 backend) in bytes.
struct Layout {
    bytes: bool,
    at: usize,
}

impl Layout {
    fn take(&mut self, len: usize, storage: Storage) -> Region {
        if self.bytes {
            let r = Region::bytes_at(self.at, len, storage);
            self.at += (len * storage.bytes()).next_multiple_of(256);
            r
        } else {
            let r = Region::new(self.at, len);
            self.at += len;
            r
        }
    }
}

fn put<B: Backend>(b: &B, a: &mut B::Arena, r: Region, v: &[f64]) {
    let d: Vec<B::Elem> = v.iter().map(|&x| B::Elem::from_f64(x)).collect();
    b.upload(a, r, &d).unwrap();
}

fn get<B: Backend>(b: &B, a: &B::Arena, r: Region) -> Vec<f64> {
    let mut d = vec![B::Elem::ZERO; r.len];
    b.download(a, r, &mut d).unwrap();
    d.iter().map(|v| v.to_f64()).collect()
}

/// Every op's outputs by name; activations in `act` storage, statistics and parameters f32.
fn run<B: Backend>(
    b: &B,
    act: Storage,
    s: Shape5,
    x: &[f64],
    dy: &[f64],
) -> Vec<(&'static str, Vec<f64>)> {
    let n = s.len();
    let pooled = Shape5 {
        h: s.h / 2,
        w: s.w / 2,
        ..s
    };
    let mut l = Layout {
        bytes: b.byte_regions(),
        at: 0,
    };
    let (xr, dyr) = (l.take(n, act), l.take(n, act));
    let outs: Vec<Region> = (0..6).map(|_| l.take(n, act)).collect();
    let pr = l.take(pooled.len(), act);
    let f = |l: &mut Layout| l.take(s.c, Storage::F32);
    let (g, be, mu, is, dg, db) = (
        f(&mut l),
        f(&mut l),
        f(&mut l),
        f(&mut l),
        f(&mut l),
        f(&mut l),
    );
    let mut a = b.alloc_arena(l.at).unwrap();
    put(b, &mut a, xr, x);
    put(b, &mut a, dyr, dy);
    let gamma: Vec<f64> = (0..s.c).map(|c| 0.5 + 0.25 * c as f64).collect();
    let beta: Vec<f64> = (0..s.c).map(|c| 0.125 * c as f64 - 0.1).collect();
    put(b, &mut a, g, &gamma);
    put(b, &mut a, be, &beta);
    put(b, &mut a, dg, &vec![0.0; s.c]);
    put(b, &mut a, db, &vec![0.0; s.c]);
    let v = |r: Region, shape| View::new(r, shape).unwrap();
    let stats = BnStats {
        mean: mu,
        invstd: is,
    };
    b.elu_forward(&mut a, v(xr, s), v(outs[0], s)).unwrap();
    b.elu_backward(
        &mut a,
        v(outs[0], s),
        v(dyr, s),
        v(outs[1], s),
        Write::Overwrite,
    )
    .unwrap();
    b.add(&mut a, v(xr, s), v(dyr, s), v(outs[2], s)).unwrap();
    b.sigmoid(&mut a, v(xr, s), v(outs[3], s)).unwrap();
    b.maxpool_forward(&mut a, v(xr, s), v(pr, pooled)).unwrap();
    let args = BatchNormArgs::default();
    b.batchnorm_forward_train(&mut a, v(xr, s), g, be, v(outs[4], s), stats, None, args)
        .unwrap();
    b.batchnorm_backward(
        &mut a,
        v(xr, s),
        v(dyr, s),
        g,
        stats,
        v(outs[5], s),
        dg,
        db,
        Write::Overwrite,
    )
    .unwrap();
    vec![
        ("elu", get(b, &a, outs[0])),
        ("elu_backward", get(b, &a, outs[1])),
        ("add", get(b, &a, outs[2])),
        ("sigmoid", get(b, &a, outs[3])),
        ("maxpool", get(b, &a, pr)),
        ("bn", get(b, &a, outs[4])),
        ("bn_dx", get(b, &a, outs[5])),
        ("bn_mean", get(b, &a, mu)),
        ("bn_invstd", get(b, &a, is)),
        ("bn_dgamma", get(b, &a, dg)),
        ("bn_dbeta", get(b, &a, db)),
    ]
}

#[test]
fn bf16_ops_are_within_one_bf16_rounding_of_f64() {
    let s = Shape5::new(2, 3, 2, 6, 10);
    let mut rng = Rng::new(11);
    let bf = |v: f64| bf16::from_f64(v).to_f64();
    let x: Vec<f64> = rng
        .normals(s.len())
        .into_iter()
        .map(|v| bf(1.5 * v + 0.2))
        .collect();
    let dy: Vec<f64> = rng.normals(s.len()).into_iter().map(bf).collect();
    let got = run(&CpuMixedBackend, Storage::Bf16, s, &x, &dy);
    let want = run(&CpuBackend::<f64>::new(), Storage::F32, s, &x, &dy);
    let (mean, invstd) = (&want[7].1, &want[8].1);
    let (gamma, beta): (Vec<f64>, Vec<f64>) = (0..s.c)
        .map(|c| (0.5 + 0.25 * c as f64, 0.125 * c as f64 - 0.1))
        .unzip();
    let sp = s.spatial();
    for ((name, g), (_, w)) in got.iter().zip(&want) {
        let mut rounded = 0;
        for (i, (a, r)) in g.iter().zip(w).enumerate() {
            let tol = match *name {
                "elu" | "sigmoid" => (U + 2f64.powi(-20)) * r.abs(),
                // ELU's backward reads y, itself one bf16 rounding (u |y|) away from f64's.
                "elu_backward" => (U + 2f64.powi(-22)) * r.abs() + U * (dy[i] * want[0].1[i]).abs(),
                "add" => (U + 2f64.powi(-22)) * r.abs(),
                "maxpool" => 0.0,
                "bn" => {
                    let c = (i / sp) % s.c;
                    let a = gamma[c] * invstd[c];
                    U * r.abs()
                        + 2f64.powi(-21) * ((x[i] * a).abs() + (beta[c] - mean[c] * a).abs())
                }
                // dx = a dy + b x + c0 (ops/batchnorm.rs), f32 terms bounded by M |dy| k etc.:
                // bounded normwise below.
                "bn_dx" => {
                    U * r.abs() + 2f64.powi(-16) * w.iter().fold(0.0f64, |m, v| m.max(v.abs()))
                }
                _ => 2f64.powi(-23) * r.abs(),
            };
            assert!(
                (a - r).abs() <= tol,
                "{name}[{i}]: {a} vs {r} (tolerance {tol:e})"
            );
            rounded += (a != r) as usize;
        }
        // The bf16 outputs were rounded: many differ from f64 (the check compares values; ELU
        // passes its positive inputs through unchanged).
        if !["maxpool", "bn_mean", "bn_invstd", "bn_dgamma", "bn_dbeta"].contains(name) {
            assert!(
                rounded * 4 > g.len(),
                "{name}: only {rounded} of {} rounded",
                g.len()
            );
        }
    }
}

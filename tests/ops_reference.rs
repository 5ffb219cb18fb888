//! The CPU ops against independent references: naive loops written here from the definitions,
//! hand-worked values, and the typed errors for bad shapes and regions.

use approx::assert_relative_eq;
use revseg::backend::{BnRunning, BnStats, Bump, View, Write};
use revseg::ops::batchnorm::BatchNormArgs;
use revseg::ops::optim::{AdamParams, SgdParams};
use revseg::rng::Rng;
use revseg::{Backend, CpuBackend, Error, Shape5};

type B = CpuBackend<f64>;

fn setup(shapes: &[Shape5]) -> (B, Vec<View>, revseg::backend::cpu::CpuArena<f64>) {
    let b = B::new();
    let mut bump = Bump::default();
    let views: Vec<View> = shapes.iter().map(|s| bump.view(*s)).collect();
    let a = b.alloc_arena(bump.len()).unwrap();
    (b, views, a)
}

fn get(b: &B, a: &revseg::backend::cpu::CpuArena<f64>, v: View) -> Vec<f64> {
    let mut out = vec![0.0; v.region.len];
    b.download(a, v.region, &mut out).unwrap();
    out
}

/// Direct 7-loop convolution, zero padding, from the definition.
fn naive_conv(x: &[f64], xs: Shape5, w: &[f64], ws: Shape5, bias: Option<&[f64]>) -> Vec<f64> {
    let (pd, ph, pw) = (ws.d as i64 / 2, ws.h as i64 / 2, ws.w as i64 / 2);
    let mut y = vec![0.0; xs.n * ws.n * xs.spatial()];
    for n in 0..xs.n {
        for co in 0..ws.n {
            for z in 0..xs.d as i64 {
                for yy in 0..xs.h as i64 {
                    for xx in 0..xs.w as i64 {
                        let mut s = bias.map_or(0.0, |b| b[co]);
                        for ci in 0..xs.c {
                            for a in 0..ws.d as i64 {
                                for bb in 0..ws.h as i64 {
                                    for c in 0..ws.w as i64 {
                                        let (iz, iy, ix) = (z + a - pd, yy + bb - ph, xx + c - pw);
                                        if iz < 0
                                            || iy < 0
                                            || ix < 0
                                            || iz >= xs.d as i64
                                            || iy >= xs.h as i64
                                            || ix >= xs.w as i64
                                        {
                                            continue;
                                        }
                                        let xi = (((n * xs.c + ci) * xs.d + iz as usize) * xs.h
                                            + iy as usize)
                                            * xs.w
                                            + ix as usize;
                                        let wi = (((co * ws.c + ci) * ws.d + a as usize) * ws.h
                                            + bb as usize)
                                            * ws.w
                                            + c as usize;
                                        s += x[xi] * w[wi];
                                    }
                                }
                            }
                        }
                        y[(((n * ws.n + co) * xs.d + z as usize) * xs.h + yy as usize) * xs.w
                            + xx as usize] = s;
                    }
                }
            }
        }
    }
    y
}

#[test]
fn conv3d_matches_naive_loops_including_large_tiles() {
    let mut rng = Rng::new(11);
    // The last shape spans several im2col tiles and rows of different lengths.
    for (xs, k) in [
        (Shape5::new(2, 3, 4, 5, 7), (3, 3, 3)),
        (Shape5::new(1, 2, 3, 9, 11), (1, 5, 5)),
        (Shape5::new(1, 4, 5, 33, 70), (3, 3, 3)),
        (Shape5::new(1, 3, 2, 6, 6), (1, 1, 1)),
    ] {
        let co = 3;
        let ws = Shape5::new(co, xs.c, k.0, k.1, k.2);
        let ys = xs.with_c(co);
        let (b, v, mut a) = setup(&[xs, ws, Shape5::vector(co), ys]);
        let x = rng.normals(xs.len());
        let w = rng.normals(ws.len());
        let bias = rng.normals(co);
        b.upload(&mut a, v[0].region, &x).unwrap();
        b.upload(&mut a, v[1].region, &w).unwrap();
        b.upload(&mut a, v[2].region, &bias).unwrap();
        b.conv3d_forward(&mut a, v[0], v[1], Some(v[2].region), v[3])
            .unwrap();
        let got = get(&b, &a, v[3]);
        let want = naive_conv(&x, xs, &w, ws, Some(&bias));
        for (g, w) in got.iter().zip(&want) {
            assert_relative_eq!(g, w, epsilon = 1e-10, max_relative = 1e-10);
        }
    }
}

#[test]
fn conv3d_hand_worked() {
    // 1x1x3x3 input 1..9, 1x1x1x3x3 kernel of ones: each output is the sum of its 3x3 neighbourhood.
    let (b, v, mut a) = setup(&[
        Shape5::new(1, 1, 1, 3, 3),
        Shape5::new(1, 1, 1, 3, 3),
        Shape5::new(1, 1, 1, 3, 3),
    ]);
    b.upload(&mut a, v[0].region, &[1., 2., 3., 4., 5., 6., 7., 8., 9.])
        .unwrap();
    b.upload(&mut a, v[1].region, &[1.0; 9]).unwrap();
    b.conv3d_forward(&mut a, v[0], v[1], None, v[2]).unwrap();
    assert_eq!(
        get(&b, &a, v[2]),
        vec![12., 21., 16., 27., 45., 33., 24., 39., 28.]
    );
}

#[test]
fn conv_transpose_hand_worked() {
    // One input channel with values 1, 2 (1x1x1x1x2); kernel [[1, 2], [3, 4]] to two output channels
    // (the second scaled by 10), bias (0.5, -1).
    let (b, v, mut a) = setup(&[
        Shape5::new(1, 1, 1, 1, 2),
        Shape5::new(1, 2, 1, 2, 2),
        Shape5::vector(2),
        Shape5::new(1, 2, 1, 2, 4),
    ]);
    b.upload(&mut a, v[0].region, &[1., 2.]).unwrap();
    b.upload(&mut a, v[1].region, &[1., 2., 3., 4., 10., 20., 30., 40.])
        .unwrap();
    b.upload(&mut a, v[2].region, &[0.5, -1.]).unwrap();
    b.conv_transpose_forward(&mut a, v[0], v[1], Some(v[2].region), v[3])
        .unwrap();
    let want = [
        1.5, 2.5, 2.5, 4.5, 3.5, 4.5, 6.5, 8.5, 9., 19., 19., 39., 29., 39., 59., 79.,
    ];
    assert_eq!(get(&b, &a, v[3]), want.to_vec());
}

#[test]
fn maxpool_hand_worked_with_first_maximum_on_ties() {
    let (b, v, mut a) = setup(&[
        Shape5::new(1, 1, 1, 2, 4),
        Shape5::new(1, 1, 1, 1, 2),
        Shape5::new(1, 1, 1, 1, 2),
        Shape5::new(1, 1, 1, 2, 4),
    ]);
    b.upload(&mut a, v[0].region, &[1., 5., 7., 7., 3., -2., 7., 0.])
        .unwrap();
    b.maxpool_forward(&mut a, v[0], v[1]).unwrap();
    assert_eq!(get(&b, &a, v[1]), vec![5., 7.]);
    b.upload(&mut a, v[2].region, &[10., 20.]).unwrap();
    b.maxpool_backward(&mut a, v[0], v[2], v[3], Write::Overwrite)
        .unwrap();
    assert_eq!(get(&b, &a, v[3]), vec![0., 10., 20., 0., 0., 0., 0., 0.]);
}

#[test]
fn batchnorm_running_statistics_and_inference() {
    // Channel 0 holds 1, 2, 3, 6 (mean 3, biased var 3.5, unbiased 14/3).
    let s = Shape5::new(1, 1, 1, 2, 2);
    let (b, v, mut a) = setup(&[
        s,
        Shape5::vector(1),
        Shape5::vector(1),
        s,
        Shape5::vector(1),
        Shape5::vector(1),
        Shape5::vector(1),
        Shape5::vector(1),
        s,
    ]);
    b.upload(&mut a, v[0].region, &[1., 2., 3., 6.]).unwrap();
    b.upload(&mut a, v[1].region, &[2.]).unwrap();
    b.upload(&mut a, v[2].region, &[0.5]).unwrap();
    b.upload(&mut a, v[6].region, &[1.]).unwrap();
    b.upload(&mut a, v[7].region, &[4.]).unwrap();
    let stats = BnStats {
        mean: v[4].region,
        invstd: v[5].region,
    };
    let running = BnRunning {
        mean: v[6].region,
        var: v[7].region,
    };
    let args = BatchNormArgs {
        eps: 1e-5,
        momentum: 0.1,
    };
    b.batchnorm_forward_train(
        &mut a,
        v[0],
        v[1].region,
        v[2].region,
        v[3],
        stats,
        Some(running),
        args,
    )
    .unwrap();
    let y = get(&b, &a, v[3]);
    let is = 1.0 / (3.5f64 + 1e-5).sqrt();
    for (got, x) in y.iter().zip([1., 2., 3., 6.]) {
        assert_relative_eq!(*got, 2.0 * (x - 3.0) * is + 0.5, max_relative = 1e-12);
    }
    assert_relative_eq!(
        get(&b, &a, v[6])[0],
        0.9 * 1.0 + 0.1 * 3.0,
        max_relative = 1e-12
    );
    assert_relative_eq!(
        get(&b, &a, v[7])[0],
        0.9 * 4.0 + 0.1 * 14.0 / 3.0,
        max_relative = 1e-12
    );
    // Without running statistics the update is skipped (recomputation must not count twice).
    b.batchnorm_forward_train(
        &mut a,
        v[0],
        v[1].region,
        v[2].region,
        v[3],
        stats,
        None,
        args,
    )
    .unwrap();
    assert_relative_eq!(get(&b, &a, v[6])[0], 1.2, max_relative = 1e-12);
    b.batchnorm_forward_infer(&mut a, v[0], v[1].region, v[2].region, running, v[8], 1e-5)
        .unwrap();
    let rv = 0.9 * 4.0 + 0.1 * 14.0 / 3.0;
    for (got, x) in get(&b, &a, v[8]).iter().zip([1., 2., 3., 6.]) {
        assert_relative_eq!(
            *got,
            2.0 * (x - 1.2) / (rv + 1e-5f64).sqrt() + 0.5,
            max_relative = 1e-12
        );
    }
}

#[test]
fn bce_weights_and_loss_hand_worked() {
    // One channel, 4 voxels, one masked out: targets 1, 0, 0 among masked -> w_pos 2/3, w_neg 1/3.
    let s = Shape5::new(1, 1, 1, 1, 4);
    let (b, v, mut a) = setup(&[s, s, s, s, Shape5::vector(1), s]);
    b.upload(&mut a, v[0].region, &[0.0, 2.0, -1.0, 5.0])
        .unwrap();
    b.upload(&mut a, v[1].region, &[1., 0., 0., 1.]).unwrap();
    b.upload(&mut a, v[2].region, &[1., 1., 1., 0.]).unwrap();
    b.bce_weights(&mut a, v[1], v[2], v[3]).unwrap();
    let w = get(&b, &a, v[3]);
    assert_relative_eq!(w[0], 2.0 / 3.0, max_relative = 1e-15);
    assert_relative_eq!(w[1], 1.0 / 3.0, max_relative = 1e-15);
    assert_eq!(w[3], 0.0);
    b.bce_loss(&mut a, v[0], v[1], v[3], v[2], v[4].region, Some(v[5]))
        .unwrap();
    let l = |z: f64, t: f64| {
        -(t * (1.0 / (1.0 + (-z).exp())).ln() + (1.0 - t) * (1.0 - 1.0 / (1.0 + (-z).exp())).ln())
    };
    let want = (2.0 / 3.0 * l(0.0, 1.0) + 1.0 / 3.0 * l(2.0, 0.0) + 1.0 / 3.0 * l(-1.0, 0.0)) / 3.0;
    assert_relative_eq!(
        get(&b, &a, v[4].region.into_view())[0],
        want,
        max_relative = 1e-12
    );
    let g = get(&b, &a, v[5]);
    assert_relative_eq!(g[0], 2.0 / 3.0 * (0.5 - 1.0) / 3.0, max_relative = 1e-12);
    assert_eq!(g[3], 0.0);
}

trait IntoView {
    fn into_view(self) -> View;
}
impl IntoView for revseg::Region {
    fn into_view(self) -> View {
        View::new(self, Shape5::vector(self.len)).unwrap()
    }
}

#[test]
fn adam_first_step_and_reference_trajectory() {
    let hp = AdamParams {
        lr: 0.01,
        beta1: 0.9,
        beta2: 0.999,
        eps: 0.01,
    };
    let s = Shape5::vector(3);
    let (b, v, mut a) = setup(&[s, s, s, s]);
    let p0 = [1.0, -2.0, 0.5];
    b.upload(&mut a, v[0].region, &p0).unwrap();
    b.fill(&mut a, v[2].region, 0.0).unwrap();
    b.fill(&mut a, v[3].region, 0.0).unwrap();
    let grads = [[0.3, -0.05, 2.0], [0.1, 0.2, -1.0], [-0.4, 0.0, 0.5]];
    // Independent reference: PyTorch's documented update.
    let (mut p, mut m, mut vv) = (p0, [0.0; 3], [0.0; 3]);
    for (t, g) in grads.iter().enumerate() {
        b.upload(&mut a, v[1].region, g).unwrap();
        b.adam_step(
            &mut a,
            v[0].region,
            v[1].region,
            v[2].region,
            v[3].region,
            hp,
            t as u64 + 1,
        )
        .unwrap();
        for i in 0..3 {
            m[i] = 0.9 * m[i] + 0.1 * g[i];
            vv[i] = 0.999 * vv[i] + 0.001 * g[i] * g[i];
            let mh = m[i] / (1.0 - 0.9f64.powi(t as i32 + 1));
            let vh = vv[i] / (1.0 - 0.999f64.powi(t as i32 + 1));
            p[i] -= 0.01 * mh / (vh.sqrt() + 0.01);
        }
        if t == 0 {
            // The first step moves each parameter by lr * g / (|g| + eps).
            let got = get(&b, &a, v[0]);
            for i in 0..3 {
                assert_relative_eq!(
                    got[i],
                    p0[i] - 0.01 * grads[0][i] / (grads[0][i].abs() + 0.01),
                    max_relative = 1e-12
                );
            }
        }
    }
    for (g, w) in get(&b, &a, v[0]).iter().zip(p) {
        assert_relative_eq!(*g, w, max_relative = 1e-12);
    }
    assert!(b
        .adam_step(
            &mut a,
            v[0].region,
            v[1].region,
            v[2].region,
            v[3].region,
            hp,
            0
        )
        .is_err());
}

#[test]
fn sgd_with_momentum_hand_worked() {
    let s = Shape5::vector(2);
    let (b, v, mut a) = setup(&[s, s, s]);
    b.upload(&mut a, v[0].region, &[1.0, 2.0]).unwrap();
    b.upload(&mut a, v[1].region, &[0.5, -1.0]).unwrap();
    b.fill(&mut a, v[2].region, 0.0).unwrap();
    let hp = SgdParams {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 0.0,
    };
    b.sgd_step(&mut a, v[0].region, v[1].region, Some(v[2].region), hp)
        .unwrap();
    b.sgd_step(&mut a, v[0].region, v[1].region, Some(v[2].region), hp)
        .unwrap();
    // velocity 0.5 then 0.95; p = 1 - 0.05 - 0.095
    let p = get(&b, &a, v[0]);
    assert_relative_eq!(p[0], 1.0 - 0.05 - 0.095, max_relative = 1e-12);
    assert_relative_eq!(p[1], 2.0 + 0.1 + 0.19, max_relative = 1e-12);
}

#[test]
fn bad_shapes_and_regions_are_typed_errors() {
    let xs = Shape5::new(1, 2, 3, 4, 4);
    let (b, v, mut a) = setup(&[
        xs,
        Shape5::new(3, 3, 3, 3, 3),
        xs.with_c(3),
        Shape5::new(1, 2, 3, 2, 2),
    ]);
    // Weight expects 3 input channels, x has 2.
    assert!(matches!(
        b.conv3d_forward(&mut a, v[0], v[1], None, v[2]),
        Err(Error::Shape { .. })
    ));
    // Even kernel.
    let even = View::new(
        v[1].region.slice(0, 3 * 2 * 2 * 2 * 2),
        Shape5::new(3, 2, 2, 2, 2),
    )
    .unwrap();
    assert!(matches!(
        b.conv3d_forward(&mut a, v[0], even, None, v[2]),
        Err(Error::Shape { .. })
    ));
    // Odd H for max-pool.
    let odd = View::new(
        v[0].region.slice(0, 2 * 3 * 3 * 4),
        Shape5::new(1, 2, 3, 3, 4),
    )
    .unwrap();
    let e = b.maxpool_forward(&mut a, odd, v[3]).unwrap_err();
    assert!(e.to_string().contains("odd"), "{e}");
    // Output overlapping its input.
    let overl = View::new(v[0].region.slice(0, 24), Shape5::new(1, 2, 3, 2, 2)).unwrap();
    assert!(matches!(
        b.maxpool_forward(&mut a, v[0], overl),
        Err(Error::Region { .. })
    ));
    // Region past the arena's end.
    let far = View::new(revseg::Region::new(1 << 20, xs.len()), xs).unwrap();
    assert!(matches!(
        b.elu_forward(&mut a, far, v[0]),
        Err(Error::Region { .. })
    ));
    // A view whose region cannot hold its shape.
    assert!(View::new(revseg::Region::new(0, 5), xs).is_err());
}

#[test]
fn fresh_arena_reads_as_nan() {
    let b = B::new();
    let a = b.alloc_arena(4).unwrap();
    assert!(a.data.iter().all(|v| v.is_nan()));
}

#[test]
fn fast_exp_matches_libm() {
    let mut worst = 0.0f64;
    for i in 0..200_000 {
        let x = -(i as f32) * 1e-4 * (1.0 + (i % 7) as f32);
        let got = revseg::tensor::exp_nonpositive_f32(x) as f64;
        let want = (x as f64).exp();
        if want > 1e-37 {
            worst = worst.max((got - want).abs() / want);
        }
    }
    assert!(worst < 3e-7, "relative error {worst:e}");
    assert_eq!(revseg::tensor::exp_nonpositive_f32(0.0), 1.0);
    assert!(revseg::tensor::exp_nonpositive_f32(-200.0) < 1e-37);
    // NaN must survive ELU, or poisoned (freed) buffers and diverged runs would go unnoticed.
    assert!(revseg::tensor::exp_nonpositive_f32(f32::NAN).is_nan());
    assert!(revseg::ops::elementwise::elu(f32::NAN).is_nan());
    assert!(revseg::ops::elementwise::elu(f64::NAN).is_nan());
}

#[test]
fn conv_transpose_matches_naive_loops_over_many_tiles() {
    let mut rng = Rng::new(5);
    let (n, ci, co, d, h, w) = (2, 3, 2, 3, 37, 30);
    let xs = Shape5::new(n, ci, d, h, w);
    let ws = Shape5::new(ci, co, 1, 2, 2);
    let ys = Shape5::new(n, co, d, 2 * h, 2 * w);
    let (b, v, mut a) = setup(&[xs, ws, Shape5::vector(co), ys, ys, xs, ws]);
    let (x, wt, bias, dy) = (
        rng.normals(xs.len()),
        rng.normals(ws.len()),
        rng.normals(co),
        rng.normals(ys.len()),
    );
    for (k, data) in [(0, &x), (1, &wt), (2, &bias), (4, &dy)] {
        b.upload(&mut a, v[k].region, data).unwrap();
    }
    b.conv_transpose_forward(&mut a, v[0], v[1], Some(v[2].region), v[3])
        .unwrap();
    b.conv_transpose_backward_input(&mut a, v[4], v[1], v[5], Write::Overwrite)
        .unwrap();
    b.conv_transpose_backward_weight(&mut a, v[0], v[4], v[6], Write::Overwrite)
        .unwrap();
    let xi = |nn: usize, c: usize, z: usize, yy: usize, xx: usize| {
        (((nn * ci + c) * d + z) * h + yy) * w + xx
    };
    let yi = |nn: usize, c: usize, z: usize, yy: usize, xx: usize| {
        (((nn * co + c) * d + z) * 2 * h + yy) * 2 * w + xx
    };
    let wi = |c: usize, o: usize, i: usize, j: usize| ((c * co + o) * 2 + i) * 2 + j;
    let mut y = vec![0.0; ys.len()];
    let mut dx = vec![0.0; xs.len()];
    let mut dw = vec![0.0; ws.len()];
    for nn in 0..n {
        for o in 0..co {
            for z in 0..d {
                for yy in 0..2 * h {
                    for xx in 0..2 * w {
                        let (i, j) = (yy % 2, xx % 2);
                        let mut s = bias[o];
                        for c in 0..ci {
                            s += x[xi(nn, c, z, yy / 2, xx / 2)] * wt[wi(c, o, i, j)];
                            dx[xi(nn, c, z, yy / 2, xx / 2)] +=
                                dy[yi(nn, o, z, yy, xx)] * wt[wi(c, o, i, j)];
                            dw[wi(c, o, i, j)] +=
                                dy[yi(nn, o, z, yy, xx)] * x[xi(nn, c, z, yy / 2, xx / 2)];
                        }
                        y[yi(nn, o, z, yy, xx)] = s;
                    }
                }
            }
        }
    }
    for (k, want) in [(3, &y), (5, &dx), (6, &dw)] {
        for (g, w) in get(&b, &a, v[k]).iter().zip(want.iter()) {
            assert_relative_eq!(g, w, epsilon = 1e-9, max_relative = 1e-9);
        }
    }
}

#[test]
fn batchnorm_apply_reproduces_the_training_forward_bit_for_bit() {
    let s = Shape5::new(2, 3, 2, 5, 7);
    let b32 = revseg::CpuBackend::<f32>::new();
    let mut bump = Bump::default();
    let (x, y, y2) = (bump.view(s), bump.view(s), bump.view(s));
    let (g, be) = (bump.take(3), bump.take(3));
    let st = BnStats {
        mean: bump.take(3),
        invstd: bump.take(3),
    };
    let mut a = b32.alloc_arena(bump.len()).unwrap();
    let mut rng = Rng::new(8);
    let xv: Vec<f32> = rng
        .normals(s.len())
        .iter()
        .map(|v| (3.0 * v + 1.0) as f32)
        .collect();
    b32.upload(&mut a, x.region, &xv).unwrap();
    b32.upload(&mut a, g, &[0.5, 1.5, -2.0]).unwrap();
    b32.upload(&mut a, be, &[0.1, -0.3, 0.7]).unwrap();
    b32.batchnorm_forward_train(&mut a, x, g, be, y, st, None, BatchNormArgs::default())
        .unwrap();
    b32.batchnorm_apply(&mut a, x, g, be, st, y2).unwrap();
    let (mut p, mut q) = (vec![0f32; s.len()], vec![0f32; s.len()]);
    b32.download(&a, y.region, &mut p).unwrap();
    b32.download(&a, y2.region, &mut q).unwrap();
    assert!(p.iter().zip(&q).all(|(u, v)| u.to_bits() == v.to_bits()));
    assert!(p.iter().any(|v| v.abs() > 0.5));
    // The fused recomputation of ELU(BN(x)) equals the forward's two ops, bit for bit.
    b32.elu_forward(&mut a, y, y).unwrap();
    b32.batchnorm_apply_elu(&mut a, x, g, be, st, y2).unwrap();
    b32.download(&a, y.region, &mut p).unwrap();
    b32.download(&a, y2.region, &mut q).unwrap();
    assert!(p.iter().zip(&q).all(|(u, v)| u.to_bits() == v.to_bits()));
    assert!(p.iter().any(|v| *v < -0.5) && p.iter().any(|v| *v > 0.5));
}

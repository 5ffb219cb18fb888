//! bf16 convolutions (f32 accumulation) against f64 references, with tolerances derived from bf16's
//! unit roundoff u = 2^-8 and the reduction length (docs/PERFORMANCE.md, "bf16 error bounds"):
//!
//! - exact operands (the f64 reference multiplies the same bf16 values): every product is exact in
//!   f32, so |err| <= gamma_N * S, S = sum |x w|, gamma_N = N 2^-24 / (1 - N 2^-24) for N summed
//!   terms, plus u |y| (1 + ...) when the result is stored as bf16;
//! - from f64 operands (each rounded to bf16 first): |x^ w^ - x w| <= (2u + u^2) |x w| per product,
//!   so |err| <= (2u + u^2) S + gamma_N (1 + u)^2 S (+ u |y| ... for a bf16 result).
//!
//! Every kernel path runs that the CPU has. The scalar and AVX512-BF16 paths give the same bits
//! (they add the same pairs in the same order). The widened path's three passes are f32 FMA sums of
//! exact products in another order: the same bound gamma_N, other bits. AMX sums inside `tdpbf16ps` in an undocumented
//! order and rounding, so its bound takes each addition's relative error as 2^-23 (truncation)
//! instead of 2^-24; its results are checked to repeat bit for bit from run to run.

use half::bf16;
use revseg::backend::cpu::conv3d_bf16::{self, Path};
use revseg::ops::conv3d::Conv3dGeom;
use revseg::rng::Rng;

const U: f64 = 1.0 / 256.0;
const U32: f64 = 1.0 / 16_777_216.0;

fn gamma(n: usize) -> f64 {
    n as f64 * U32 / (1.0 - n as f64 * U32)
}

/// gamma_N for a path: with a unit roundoff of 2^-23 per addition for AMX.
fn gamma_for(path: Path, n: usize) -> f64 {
    match path {
        Path::Amx => gamma(2 * n),
        _ => gamma(n),
    }
}

fn geom(
    n: usize,
    ci: usize,
    co: usize,
    dhw: (usize, usize, usize),
    k: (usize, usize, usize),
) -> Conv3dGeom {
    Conv3dGeom {
        n,
        ci,
        co,
        d: dhw.0,
        h: dhw.1,
        w: dhw.2,
        kd: k.0,
        kh: k.1,
        kw: k.2,
    }
}

/// The shapes: odd K (3 x 27 = 81, 25), channel counts off the 8-row and 4-row blocks, rows not a
/// multiple of 32, several tiles and two samples; a 1x1x1 output-style kernel. For AMX's tiles:
/// odd ci and co, ci over 32 (two and three groups of ci pairs, the last padded), co over 16 (two
/// to four blocks, unequal ones padded), rows of 5 to 19 voxels (blocks of 16 positions crossing
/// rows and planes).
fn shapes() -> Vec<Conv3dGeom> {
    vec![
        geom(2, 3, 10, (3, 5, 13), (3, 3, 3)),
        geom(1, 1, 6, (1, 40, 37), (1, 5, 5)),
        geom(1, 14, 14, (2, 7, 9), (3, 3, 3)),
        geom(1, 12, 3, (2, 4, 70), (1, 1, 1)),
        geom(1, 33, 17, (2, 3, 19), (3, 3, 3)),
        geom(2, 40, 50, (2, 2, 5), (3, 3, 3)),
        geom(1, 66, 9, (1, 3, 7), (1, 3, 3)),
        // Rows the widened path's direct kernel takes (whole 32-voxel blocks).
        geom(2, 5, 17, (2, 3, 32), (3, 3, 3)),
        geom(1, 14, 14, (3, 2, 64), (3, 3, 3)),
        geom(1, 1, 6, (1, 4, 160), (1, 5, 5)),
    ]
}

fn paths() -> Vec<Path> {
    let mut p = vec![Path::Scalar];
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bf16") {
        p.push(Path::Avx512Bf16);
        p.push(Path::Widened);
    }
    if Path::best() == Path::Amx {
        p.push(Path::Amx);
    }
    p
}

/// Offsets of tap (a, b, c) and whether position (z, y, x) + offset lies inside.
fn src(
    g: &Conv3dGeom,
    z: usize,
    y: usize,
    x: usize,
    a: usize,
    b: usize,
    c: usize,
) -> Option<usize> {
    let zz = z as isize + a as isize - (g.kd / 2) as isize;
    let yy = y as isize + b as isize - (g.kh / 2) as isize;
    let xx = x as isize + c as isize - (g.kw / 2) as isize;
    if zz < 0 || yy < 0 || xx < 0 || zz >= g.d as isize || yy >= g.h as isize || xx >= g.w as isize
    {
        return None;
    }
    Some((zz as usize * g.h + yy as usize) * g.w + xx as usize)
}

/// Direct f64 loops over (output position, input channel, tap): the three sums and, for each
/// result, the sum of |terms| S (the bound's scale). Returns (forward y, S_y), (dx, S_dx), (dw, S_dw).
#[allow(clippy::type_complexity)]
fn reference(g: &Conv3dGeom, x: &[f64], w: &[f64], dy: &[f64]) -> [(Vec<f64>, Vec<f64>); 3] {
    let sp = g.spatial();
    let taps = g.taps();
    let mut y = vec![0.0; g.n * g.co * sp];
    let mut ys = y.clone();
    let mut dx = vec![0.0; g.n * g.ci * sp];
    let mut dxs = dx.clone();
    let mut dw = vec![0.0; g.co * g.ci * taps];
    let mut dws = dw.clone();
    for n in 0..g.n {
        for z in 0..g.d {
            for yy in 0..g.h {
                for xx in 0..g.w {
                    let p = (z * g.h + yy) * g.w + xx;
                    for a in 0..g.kd {
                        for b in 0..g.kh {
                            for c in 0..g.kw {
                                let Some(q) = src(g, z, yy, xx, a, b, c) else {
                                    continue;
                                };
                                let tap = (a * g.kh + b) * g.kw + c;
                                for co in 0..g.co {
                                    let yi = (n * g.co + co) * sp + p;
                                    for ci in 0..g.ci {
                                        let wi = (co * g.ci + ci) * taps + tap;
                                        let xi = (n * g.ci + ci) * sp + q;
                                        y[yi] += w[wi] * x[xi];
                                        ys[yi] += (w[wi] * x[xi]).abs();
                                        dx[xi] += w[wi] * dy[yi];
                                        dxs[xi] += (w[wi] * dy[yi]).abs();
                                        dw[wi] += dy[yi] * x[xi];
                                        dws[wi] += (dy[yi] * x[xi]).abs();
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    [(y, ys), (dx, dxs), (dw, dws)]
}

fn normals(rng: &mut Rng, n: usize, scale: f64) -> Vec<f64> {
    rng.normals(n).into_iter().map(|v| v * scale).collect()
}

fn to_bf16(v: &[f64]) -> Vec<bf16> {
    v.iter().map(|&x| bf16::from_f64(x)).collect()
}

fn back(v: &[bf16]) -> Vec<f64> {
    v.iter().map(|x| x.to_f64()).collect()
}

/// Every element within its bound; returns the largest error relative to its bound (to show the
/// bound is not vacuous: it is well above 0).
fn check(what: &str, got: &[f64], want: &[f64], tol: impl Fn(usize) -> f64) -> f64 {
    let mut worst: f64 = 0.0;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let t = tol(i);
        let e = (g - w).abs();
        assert!(
            e <= t,
            "{what}: element {i} is {g}, reference {w}, error {e:e} over bound {t:e}"
        );
        worst = worst.max(e / t);
    }
    worst
}

struct Run {
    y: Vec<bf16>,
    y32: Vec<f32>,
    dx: Vec<bf16>,
    dw: Vec<f32>,
}

fn run(path: Path, g: &Conv3dGeom, x: &[bf16], w: &[bf16], dy: &[bf16]) -> Run {
    let mut y = vec![bf16::ZERO; g.n * g.co * g.spatial()];
    conv3d_bf16::forward(path, g, x, w, None, &mut y, false);
    let mut y32 = vec![0f32; y.len()];
    conv3d_bf16::forward(path, g, x, w, None, &mut y32, false);
    let mut dx = vec![bf16::ZERO; x.len()];
    conv3d_bf16::backward_input(path, g, dy, w, &mut dx, false);
    let mut dw = vec![0f32; w.len()];
    conv3d_bf16::backward_weight(path, g, x, dy, &mut dw, false);
    Run { y, y32, dx, dw }
}

#[test]
fn bf16_convolutions_are_within_their_error_bounds_of_f64() {
    let mut rng = Rng::new(11);
    for g in shapes() {
        let sp = g.spatial();
        let x = normals(&mut rng, g.n * g.ci * sp, 1.0);
        let w = normals(
            &mut rng,
            g.co * g.ci * g.taps(),
            (2.0 / (g.ci * g.taps()) as f64).sqrt(),
        );
        let dy = normals(&mut rng, g.n * g.co * sp, 0.5);
        let (xb, wb, dyb) = (to_bf16(&x), to_bf16(&w), to_bf16(&dy));
        // References on the bf16 operands themselves (exact products) and on the f64 originals.
        let exact = reference(&g, &back(&xb), &back(&wb), &back(&dyb));
        let orig = reference(&g, &x, &w, &dy);
        let k_fwd = g.ci * g.taps() + 1;
        let k_in = g.co * g.taps() + 1;
        // AMX sums over the padded planes (zeros at the padding, exact to add).
        let padded = g.d * (g.h + g.kh - 1) * (g.w + g.kw - 1);
        let k_w = g.n * sp.max(padded).next_multiple_of(32) + 8;
        let mut first: Option<Run> = None;
        for path in paths() {
            let r = run(path, &g, &xb, &wb, &dyb);
            let gamma = |n: usize| gamma_for(path, n);
            let what = format!("{g:?} {path:?}");
            let [(ye, yse), (dxe, dxse), (dwe, dwse)] = &exact;
            // f32 result: the f32 sums alone.
            let w1 = check(
                &format!("{what} forward f32"),
                &r.y32.iter().map(|&v| v as f64).collect::<Vec<_>>(),
                ye,
                |i| gamma(k_fwd) * yse[i] + 1e-30,
            );
            let tol_b = |n: usize, s: f64, y: f64| gamma(n) * s * (1.0 + U) + U * y.abs() + 1e-30;
            check(&format!("{what} forward"), &back(&r.y), ye, |i| {
                tol_b(k_fwd, yse[i], ye[i])
            });
            check(&format!("{what} input gradient"), &back(&r.dx), dxe, |i| {
                tol_b(k_in, dxse[i], dxe[i])
            });
            let w3 = check(
                &format!("{what} weight gradient"),
                &r.dw.iter().map(|&v| v as f64).collect::<Vec<_>>(),
                dwe,
                |i| gamma(k_w) * dwse[i] + 1e-30,
            );
            // The f32 sums round somewhere: the results were computed, not copied from the
            // reference.
            assert!(
                w1 > 0.0 && w3 > 0.0,
                "{what}: no rounding at all ({w1:e}, {w3:e})"
            );
            eprintln!(
                "{what}: worst error / bound: forward f32 {w1:.2e}, weight gradient {w3:.2e}"
            );
            // From the f64 operands: bf16 rounding of the inputs dominates.
            let [(yo, yso), (dxo, dxso), (dwo, dwso)] = &orig;
            let e_in = 2.0 * U + U * U;
            let full = |n: usize, s: f64| e_in * s + gamma(n) * (1.0 + U) * (1.0 + U) * s;
            check(&format!("{what} forward vs f64"), &back(&r.y), yo, |i| {
                let e = full(k_fwd, yso[i]);
                e + U * (yo[i].abs() + e) + 1e-30
            });
            check(
                &format!("{what} input gradient vs f64"),
                &back(&r.dx),
                dxo,
                |i| {
                    let e = full(k_in, dxso[i]);
                    e + U * (dxo[i].abs() + e) + 1e-30
                },
            );
            check(
                &format!("{what} weight gradient vs f64"),
                &r.dw.iter().map(|&v| v as f64).collect::<Vec<_>>(),
                dwo,
                |i| full(k_w, dwso[i]) + 1e-30,
            );
            let same_bits =
                |a: &[bf16], b: &[bf16]| a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits());
            let again = run(path, &g, &xb, &wb, &dyb);
            assert!(
                same_bits(&again.y, &r.y)
                    && same_bits(&again.dx, &r.dx)
                    && again
                        .dw
                        .iter()
                        .zip(&r.dw)
                        .all(|(p, q)| p.to_bits() == q.to_bits()),
                "{what}: a second run differs"
            );
            if path == Path::Amx {
                continue;
            }
            if path == Path::Widened {
                // f32 FMA sums of exact products in another order: inside the same bound, not
                // in the same bits.
                continue;
            }
            if let Some(f) = &first {
                let same = |a: &[bf16], b: &[bf16]| {
                    a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits())
                };
                assert!(
                    same(&f.y, &r.y) && same(&f.dx, &r.dx),
                    "{what}: paths differ"
                );
                assert!(
                    f.dw.iter()
                        .zip(&r.dw)
                        .all(|(p, q)| p.to_bits() == q.to_bits()),
                    "{what}: weight gradients differ"
                );
            } else {
                first = Some(r);
            }
        }
    }
}

#[test]
fn bias_and_accumulation_add_to_the_result() {
    let g = geom(1, 4, 5, (2, 6, 11), (3, 3, 3));
    let mut rng = Rng::new(4);
    let x = to_bf16(&normals(&mut rng, g.ci * g.spatial(), 1.0));
    let w = to_bf16(&normals(&mut rng, g.co * g.ci * g.taps(), 0.2));
    let bias: Vec<f32> = (0..g.co).map(|c| c as f32 - 2.0).collect();
    let start: Vec<f32> = normals(&mut rng, g.co * g.spatial(), 1.0)
        .iter()
        .map(|&v| v as f32)
        .collect();
    let mut plain = vec![0f32; start.len()];
    conv3d_bf16::forward(Path::best(), &g, &x, &w, None, &mut plain, false);
    let mut acc = start.clone();
    conv3d_bf16::forward(Path::best(), &g, &x, &w, Some(&bias), &mut acc, true);
    for (i, ((a, s), p)) in acc.iter().zip(&start).zip(&plain).enumerate() {
        let want = s + (p + bias[i / g.spatial()]);
        assert_eq!(a.to_bits(), want.to_bits(), "element {i}");
    }
    let dy = to_bf16(&normals(&mut rng, g.co * g.spatial(), 1.0));
    let mut dw0 = vec![0f32; g.co * g.ci * g.taps()];
    conv3d_bf16::backward_weight(Path::best(), &g, &x, &dy, &mut dw0, false);
    assert!(dw0.iter().all(|v| *v != 0.0));
    let mut dw = vec![1.5f32; dw0.len()];
    conv3d_bf16::backward_weight(Path::best(), &g, &x, &dy, &mut dw, true);
    for (i, (a, z)) in dw.iter().zip(&dw0).enumerate() {
        assert_eq!(a.to_bits(), (1.5 + z).to_bits(), "weight gradient {i}");
    }
}

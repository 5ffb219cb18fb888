//! Every op's backward against central finite differences in f64, and the f32 path against the
//! f64 path, over several seeds (random shapes with odd sizes, one channel, non-cubic volumes).

use revseg::gradcheck::{self, OPS};

#[test]
fn every_op_passes_finite_differences_and_f32_parity() {
    for seed in [1, 2, 3, 4] {
        let results = gradcheck::run(None, seed, 1.0).unwrap();
        for op in OPS {
            assert!(results.iter().any(|r| r.op == *op), "no check ran for {op}");
        }
        for r in &results {
            assert!(
                r.evaluated > 0,
                "{} {}: no element perturbed",
                r.op,
                r.variant
            );
            assert!(
                r.passed,
                "seed {seed}: {} {} {}: fd err {:e}, f32 err {:e}",
                r.op, r.variant, r.shape, r.fd_err, r.f32_err
            );
        }
    }
}

#[test]
fn checker_rejects_a_backward_scaled_by_1_01() {
    let results = gradcheck::run(None, 1, 1.01).unwrap();
    for r in &results {
        assert!(
            !r.passed,
            "{} {}: a 1% wrong gradient passed (fd err {:e})",
            r.op, r.variant, r.fd_err
        );
        assert!(
            r.fd_err > 5e-3,
            "{} {}: error {:e} should be about 1e-2",
            r.op,
            r.variant,
            r.fd_err
        );
    }
}

#[test]
fn unknown_op_is_an_error() {
    let e = gradcheck::run(Some("conv9d"), 1, 1.0).unwrap_err();
    assert!(e.to_string().contains("conv9d"));
}

#[test]
fn shapes_cover_one_channel_odd_and_non_cubic() {
    let cases = gradcheck::all_cases(1);
    let shapes: Vec<_> = cases.iter().map(|c| c.inputs[0].shape).collect();
    assert!(shapes.iter().any(|s| s.c == 1), "no one-channel case");
    assert!(
        shapes.iter().any(|s| s.w % 2 == 1 || s.h % 2 == 1),
        "no odd size"
    );
    assert!(
        shapes.iter().any(|s| !(s.d == s.h && s.h == s.w)),
        "no non-cubic volume"
    );
    for c in &cases {
        for i in &c.inputs {
            assert!(
                i.data.iter().any(|v| *v != 0.0),
                "{} input {} is all zeros",
                c.op,
                i.name
            );
        }
    }
}

//! Sliding-window inference: window placement, blending weights, and the inversion of every one of
//! the 16 test-time transforms on affinities computed independently from labels.

use revseg::predict::{bump, starts, transform_image, untransform_affinities, Transform};
use revseg::rng::Rng;
use revseg::segment::{affinities_from_labels, Dims};

#[test]
fn windows_overlap_by_half_and_cover_the_volume() {
    assert_eq!(starts(10, 4).unwrap(), vec![0, 2, 4, 6]);
    assert_eq!(starts(11, 4).unwrap(), vec![0, 2, 4, 6, 7]);
    assert_eq!(starts(4, 4).unwrap(), vec![0]);
    assert!(starts(3, 4).is_err());
}

#[test]
fn bump_peaks_in_the_middle_and_stays_positive() {
    let b = bump(3, 8, 8);
    let at = |z: usize, y: usize, x: usize| b[(z * 8 + y) * 8 + x];
    assert!(b.iter().all(|v| *v > 0.0));
    assert!(at(1, 3, 4) > at(1, 0, 4) * 10.0);
    assert!(at(1, 4, 4) > at(0, 4, 4));
    assert_eq!(at(1, 3, 3), at(1, 4, 4));
}

#[test]
fn every_transform_inverts_on_affinities() {
    let mut rng = Rng::new(3);
    let n = [3, 6, 6];
    // Blocky random labels so that affinities hold both values.
    let labels: Vec<u32> = (0..n[0] * n[1] * n[2])
        .map(|i| {
            let (z, y, x) = (i / 36, (i / 6) % 6, i % 6);
            1 + (z as u32) * 9 + (y as u32 / 2) * 3 + (x as u32 / 2)
        })
        .collect();
    let labels: Vec<u32> = labels
        .iter()
        .map(|l| if rng.uniform() < 0.1 { 0 } else { *l })
        .collect();
    let dims = Dims::new(n[0], n[1], n[2]);
    let want = affinities_from_labels(&labels, dims);
    assert!(want.contains(&1.0) && want.contains(&0.0));
    let mut distinct = std::collections::HashSet::new();
    for t in 0..16 {
        let t = Transform(t);
        let lt: Vec<f32> =
            transform_image(t, &labels.iter().map(|v| *v as f32).collect::<Vec<_>>(), n);
        distinct.insert(lt.iter().map(|v| *v as u32).collect::<Vec<_>>());
        let lt: Vec<u32> = lt.iter().map(|v| *v as u32).collect();
        let aff_t = affinities_from_labels(&lt, dims);
        let back = untransform_affinities(t, &aff_t, 3, n);
        assert_eq!(back, want, "transform {t:?}");
    }
    assert_eq!(distinct.len(), 16);
}

#[test]
fn inference_plan_matches_the_training_forward_and_keeps_less() {
    use revseg::model::{build, NetConfig, Norm};
    use revseg::scheduler::{inference_plan, training_plan, Batch, Executor, Strategy};
    use revseg::CpuBackend;
    // Without BatchNorm, inference and training forwards compute the same function.
    let c = NetConfig {
        widths: vec![4, 6],
        rev_blocks: 2,
        norm: Norm::None,
        outputs: 3,
    };
    let prog = build(&c, (3, 8, 8)).unwrap();
    let b = CpuBackend::<f64>::new();
    let mut rng = Rng::new(1);
    let image = rng.normals(3 * 64);
    let n_out = 3 * 3 * 64;
    let ones = vec![1.0; n_out];
    let mut train = Executor::new(
        &b,
        &prog,
        training_plan(&prog, Strategy::Recompute, false).unwrap(),
        4,
    )
    .unwrap();
    train
        .loss(
            &b,
            &Batch {
                image: &image,
                target: &ones,
                mask: &ones,
            },
        )
        .unwrap();
    let logits = train.read(&b, train.plan.logits).unwrap();
    let mut infer = Executor::new(&b, &prog, inference_plan(&prog).unwrap(), 4).unwrap();
    let probs = infer.predict(&b, &image).unwrap();
    for (p, z) in probs.iter().zip(&logits) {
        assert!((p - 1.0 / (1.0 + (-z).exp())).abs() < 1e-12);
    }
    assert!(
        infer.plan.arena_bytes * 3 < train.plan.arena_bytes,
        "{} vs {}",
        infer.plan.arena_bytes,
        train.plan.arena_bytes
    );
}

/// The streaming sliding window (sections held one window deep) against a direct full-volume
/// blend written here: every window predicted, weighted by the bump, summed, normalised.
#[test]
fn streamed_prediction_equals_a_direct_blend() {
    use revseg::model::{build, NetConfig, Norm};
    use revseg::predict::{predict_volume, PredictOptions};
    use revseg::scheduler::{inference_plan, Executor};
    use revseg::CpuBackend;
    let c = NetConfig {
        widths: vec![4, 6],
        rev_blocks: 1,
        norm: Norm::None,
        outputs: 3,
    };
    let patch = (3, 8, 8);
    let prog = build(&c, patch).unwrap();
    let b = CpuBackend::<f64>::new();
    let mut ex = Executor::new(&b, &prog, inference_plan(&prog).unwrap(), 2).unwrap();
    let shape = (7, 20, 12);
    let mut rng = Rng::new(5);
    let image: Vec<f32> = (0..7 * 20 * 12).map(|_| rng.uniform() as f32).collect();
    let opt = PredictOptions { patch, tta: false };
    let got = predict_volume(&b, &mut ex, &image, shape, 3, &opt, |_, _| {}).unwrap();
    let sp = 7 * 20 * 12;
    let (mut acc, mut ws) = (vec![0.0f64; 3 * sp], vec![0.0f64; sp]);
    let w = bump(3, 8, 8);
    for z0 in starts(7, 3).unwrap() {
        for y0 in starts(20, 8).unwrap() {
            for x0 in starts(12, 8).unwrap() {
                let mut p = vec![0.0f64; 3 * 64];
                for z in 0..3 {
                    for y in 0..8 {
                        for x in 0..8 {
                            p[(z * 8 + y) * 8 + x] =
                                image[((z0 + z) * 20 + y0 + y) * 12 + x0 + x] as f64;
                        }
                    }
                }
                let out = ex.predict(&b, &p).unwrap();
                for z in 0..3 {
                    for y in 0..8 {
                        for x in 0..8 {
                            let i = (z * 8 + y) * 8 + x;
                            let g = ((z0 + z) * 20 + y0 + y) * 12 + x0 + x;
                            ws[g] += w[i] as f64;
                            for ch in 0..3 {
                                acc[ch * sp + g] += w[i] as f64 * out[ch * 192 + i];
                            }
                        }
                    }
                }
            }
        }
    }
    for (i, g) in got.iter().enumerate() {
        let want = acc[i] / ws[i % sp];
        assert!((*g as f64 - want).abs() < 1e-5, "voxel {i}: {g} vs {want}");
    }
    assert!(got.iter().any(|v| (v - got[0]).abs() > 1e-3));
}

//! Which segmentation settings suit a set of predicted affinities, and how far the pipeline alone
//! is from perfect: segments `DIR/test_affinities.h5:/affinities` (the first 3 channels; what
//! `revseg demo --out DIR` writes) with several fragment modes, watershed settings and merge
//! scores, scores each against `DIR/test_labels.h5:/labels` at thresholds 0.05..0.95, and does
//! the same for the labels' own affinities with noise added (the pipeline's share of the error).
//! Given 12 channels (`revseg predict` on an `outputs=12` checkpoint), it also runs the mutex
//! watershed on them, alone and with the nearest or the long-range channels made perfect.
//!
//!     cargo run --release --example segment_sweep -- DIR

use revseg::metrics::evaluate;
use revseg::rng::Rng;
use revseg::segment::agglomerate::{agglomerate, Score};
use revseg::segment::mutex::{mutex_watershed, Signs};
use revseg::segment::watershed::{watershed, watershed_per_section, Params};
use revseg::segment::{affinities_from_labels, Dims};
use revseg::train::targets::widen_borders;
use revseg::volume::io::open_volume;

fn params(low: f64, high: f64, merge: u64, weight: f64, dust: u64) -> Params {
    Params {
        low,
        high,
        merge: vec![(merge, weight)],
        dust,
        relative: false,
    }
}

fn sweep(
    name: &str,
    aff: &[f32],
    labels: &[u32],
    dims: Dims,
    per_section: bool,
    p: &Params,
    score: Score,
) {
    let (frag, st) = if per_section {
        watershed_per_section::<u32>(aff, dims, p).unwrap()
    } else {
        watershed::<u32>(aff, dims, p).unwrap()
    };
    let ts: Vec<f64> = (1..20).map(|i| i as f64 * 0.05).collect();
    let agg = agglomerate(aff, &frag, dims, &ts, score).unwrap();
    let mut best = (f64::MAX, 0.0, 0.0, 0.0);
    for (i, t) in ts.iter().enumerate() {
        let m = evaluate(&agg.apply(i, &frag), labels, dims, None).unwrap();
        if m.adapted_rand_error < best.0 {
            best = (m.adapted_rand_error, *t, m.voi_split, m.voi_merge);
        }
    }
    println!(
        "| {name} | {} | {:.4} | {:.2} | {:.3} | {:.3} |",
        st.segments, best.0, best.1, best.2, best.3
    );
}

fn main() {
    let dir = std::env::args().nth(1).expect("usage: segment_sweep DIR");
    let a = open_volume(&format!("{dir}/test_affinities.h5:/affinities")).unwrap();
    let shape = a.shape().to_vec();
    let all = a.read_all::<f32>().unwrap().data;
    let dims = Dims::new(shape[1], shape[2], shape[3]);
    let aff = all[..3 * dims.voxels()].to_vec();
    let channels = shape[0];
    let labels = open_volume(&format!("{dir}/test_labels.h5:/labels"))
        .unwrap()
        .read_all::<u32>()
        .unwrap()
        .data;
    let mean = Score::OneMinusMean;
    let p3 = params(0.01, 0.99, 200, 0.3, 50);
    let p2 = params(0.01, 0.99, 40, 0.3, 10);
    let perfect = affinities_from_labels(&labels, dims);
    let n = dims.voxels();
    for (c, name) in ["z", "y", "x"].iter().enumerate() {
        let r = c * n..(c + 1) * n;
        let (mut pos, mut pos_low, mut neg, mut neg_high) = (0u64, 0u64, 0u64, 0u64);
        for (t, p) in perfect[r.clone()].iter().zip(&aff[r]) {
            if *t > 0.5 {
                pos += 1;
                pos_low += (*p < 0.5) as u64;
            } else {
                neg += 1;
                neg_high += (*p >= 0.5) as u64;
            }
        }
        println!(
            "channel {name}: {pos} edges inside objects, {:.3} of them predicted < 0.5; {neg} across borders, {:.3} predicted >= 0.5",
            pos_low as f64 / pos.max(1) as f64,
            neg_high as f64 / neg.max(1) as f64
        );
    }
    println!("| affinities, fragments, watershed, score | fragments | best adapted Rand | threshold | VOI split | VOI merge |\n|---|---|---|---|---|---|");
    // Where the z affinity goes wrong: per section, the fraction of z edges on the wrong side.
    let plane = dims.y * dims.x;
    let per_z: Vec<String> = (1..dims.z)
        .map(|z| {
            let r = z * plane..(z + 1) * plane;
            let wrong = perfect[r.clone()]
                .iter()
                .zip(&aff[r])
                .filter(|(t, p)| (**t > 0.5) != (**p >= 0.5))
                .count();
            format!("{z}:{:.2}", wrong as f64 / plane as f64)
        })
        .collect();
    println!("z edges wrong, per section: {}", per_z.join(" "));
    // The target the network is trained on: Superhuman's widened borders.
    let widened = affinities_from_labels(&widen_borders(&labels, dims), dims);
    sweep(
        "perfect, borders widened (the training target), 3D, demo, mean",
        &widened,
        &labels,
        dims,
        false,
        &p3,
        mean,
    );
    // Which channel limits: each predicted channel alone, the others perfect.
    for (c, name) in ["z", "y", "x"].iter().enumerate() {
        let mut mix = perfect.clone();
        mix[c * n..(c + 1) * n].copy_from_slice(&aff[c * n..(c + 1) * n]);
        sweep(
            &format!("predicted {name} only, the others perfect, 3D, demo, mean"),
            &mix,
            &labels,
            dims,
            false,
            &p3,
            mean,
        );
    }
    let mut rng = Rng::new(5);
    for sigma in [0.1f32, 0.2, 0.3] {
        let noisy: Vec<f32> = perfect
            .iter()
            .map(|&v| (v + sigma * rng.normal() as f32).clamp(0.0, 1.0))
            .collect();
        sweep(
            &format!("perfect + noise {sigma}, 3D, demo, mean"),
            &noisy,
            &labels,
            dims,
            false,
            &p3,
            mean,
        );
        sweep(
            &format!("perfect + noise {sigma}, 2D, mean"),
            &noisy,
            &labels,
            dims,
            true,
            &p2,
            mean,
        );
    }
    let runs: Vec<(&str, bool, Params, Score)> = vec![
        (
            "3D, demo (0.01/0.99, 200:0.3, dust 50), mean",
            false,
            p3.clone(),
            mean,
        ),
        (
            "3D, demo, quantile 0.5",
            false,
            p3.clone(),
            Score::OneMinusQuantile(0.5),
        ),
        (
            "3D, demo, quantile 0.25",
            false,
            p3.clone(),
            Score::OneMinusQuantile(0.25),
        ),
        (
            "3D, 0.01/0.9, 200:0.5, dust 50, mean",
            false,
            params(0.01, 0.9, 200, 0.5, 50),
            mean,
        ),
        (
            "3D, 0.05/0.99, 100:0.3, dust 20, mean",
            false,
            params(0.05, 0.99, 100, 0.3, 20),
            mean,
        ),
        (
            "2D (0.01/0.99, 40:0.3, dust 10), mean",
            true,
            p2.clone(),
            mean,
        ),
        (
            "2D, quantile 0.5",
            true,
            p2.clone(),
            Score::OneMinusQuantile(0.5),
        ),
        (
            "2D, quantile 0.75",
            true,
            p2.clone(),
            Score::OneMinusQuantile(0.75),
        ),
        (
            "2D, 0.01/0.9, 100:0.5, dust 20, mean",
            true,
            params(0.01, 0.9, 100, 0.5, 20),
            mean,
        ),
        (
            "2D, 0.01/0.99, no merge, dust 5, mean",
            true,
            params(0.01, 0.99, 0, 0.3, 5),
            mean,
        ),
    ];
    for (name, ps, p, s) in &runs {
        sweep(
            &format!("predicted, {name}"),
            &aff,
            &labels,
            dims,
            *ps,
            p,
            *s,
        );
    }
    // Trusting the z channel more or less than the in-plane ones: z affinities raised to a power.
    for gamma in [0.5f32, 0.75, 1.5, 2.0] {
        let mut g = aff.clone();
        g[..n].iter_mut().for_each(|v| *v = v.powf(gamma));
        let name = format!("predicted, z affinity ^ {gamma}, 3D, demo, mean");
        sweep(&name, &g, &labels, dims, false, &p3, mean);
    }
    // With 12 channels (nearest and long-range, `outputs=12`): the mutex watershed on them, and
    // with the long-range channels replaced by the labels' own (what better long-range edges
    // would give).
    if channels == 12 {
        mutex_rows(&all, &labels, dims);
    }
}

fn mutex_rows(all: &[f32], labels: &[u32], dims: Dims) {
    use revseg::train::targets::{affinity_targets, TargetOptions, LONG_RANGE};
    use revseg::volume::array::Array;
    let n = dims.voxels();
    let lbl = Array::new(vec![dims.z, dims.y, dims.x], labels.to_vec()).unwrap();
    let opt = TargetOptions {
        widen_borders: false,
    };
    let perfect = affinity_targets(&lbl, &LONG_RANGE, opt).unwrap().0.data;
    let mut perfect_long = all.to_vec();
    perfect_long[3 * n..].copy_from_slice(&perfect[3 * n..]);
    let mut perfect_near = all.to_vec();
    perfect_near[..3 * n].copy_from_slice(&perfect[..3 * n]);
    for c in 3..12 {
        let r = c * n..(c + 1) * n;
        let wrong = perfect[r.clone()]
            .iter()
            .zip(&all[r])
            .filter(|(t, p)| (**t > 0.5) != (**p >= 0.5))
            .count();
        println!(
            "long-range channel {c} {:?}: {:.3} of edges on the wrong side of 0.5",
            LONG_RANGE[c],
            wrong as f64 / n as f64
        );
    }
    for (name, a) in [
        ("predicted", all),
        ("predicted nearest, perfect long-range", &perfect_long[..]),
        ("perfect nearest, predicted long-range", &perfect_near[..]),
    ] {
        for signs in [Signs::Signed, Signs::Wolf { attractive: 3 }] {
            let seg: Vec<u32> = mutex_watershed(a, dims, &LONG_RANGE, signs).unwrap();
            let segments = seg.iter().max().copied().unwrap_or(0);
            let m = evaluate(&seg, labels, dims, None).unwrap();
            println!(
                "| mutex watershed {signs:?}, {name} | {segments} | {:.4} | - | {:.3} | {:.3} |",
                m.adapted_rand_error, m.voi_split, m.voi_merge
            );
        }
    }
}

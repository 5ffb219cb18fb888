//! The synthetic volume: deterministic, neurite-like (elongated, spanning sections), dark at
//! object borders, and with its artefacts where its report says.

use revseg::synth::{synthesize, ArtefactKind, SynthConfig, SynthVolume};
use std::collections::HashMap;

fn small(seed: u64, artefacts: bool) -> SynthVolume {
    synthesize(&SynthConfig {
        size: (32, 128, 128),
        seed,
        artefacts,
        ..SynthConfig::default()
    })
    .unwrap()
}

#[test]
fn deterministic_for_a_seed_and_different_across_seeds() {
    let a = small(7, true);
    let b = small(7, true);
    assert_eq!(a.image, b.image);
    assert_eq!(a.labels, b.labels);
    assert_eq!(a.artefacts, b.artefacts);
    let c = small(8, true);
    assert_ne!(a.image, c.image);
    assert_ne!(a.labels, c.labels);
    // Not a degenerate image.
    let mean = a.image.iter().map(|&v| v as f64).sum::<f64>() / a.image.len() as f64;
    assert!(mean > 60.0 && mean < 200.0, "mean {mean}");
    assert!(a.image.iter().any(|&v| v < 60) && a.image.iter().any(|&v| v > 180));
}

#[test]
fn labels_are_dense_and_numbered() {
    let v = small(3, false);
    assert_eq!(v.labels.len(), 32 * 128 * 128);
    assert!(v.labels.iter().all(|&l| l != 0), "label 0 is reserved");
    let max = *v.labels.iter().max().unwrap() as usize;
    assert_eq!(max, v.n_objects);
    let mut seen = vec![false; max + 1];
    for &l in &v.labels {
        seen[l as usize] = true;
    }
    assert!(seen[1..].iter().all(|&s| s), "labels 1..n all used");
    assert!(v.n_objects > 30, "{} objects", v.n_objects);
}

/// Eigenvalues of a symmetric 3x3 matrix (trigonometric closed form), descending.
fn eig3(m: [[f64; 3]; 3]) -> [f64; 3] {
    let p1 = m[0][1].powi(2) + m[0][2].powi(2) + m[1][2].powi(2);
    let q = (m[0][0] + m[1][1] + m[2][2]) / 3.0;
    let p2 = (m[0][0] - q).powi(2) + (m[1][1] - q).powi(2) + (m[2][2] - q).powi(2) + 2.0 * p1;
    let p = (p2 / 6.0).sqrt();
    if p < 1e-12 {
        return [q, q, q];
    }
    let mut b = [[0.0; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            b[i][j] = (m[i][j] - if i == j { q } else { 0.0 }) / p;
        }
    }
    let det = b[0][0] * (b[1][1] * b[2][2] - b[1][2] * b[2][1])
        - b[0][1] * (b[1][0] * b[2][2] - b[1][2] * b[2][0])
        + b[0][2] * (b[1][0] * b[2][1] - b[1][1] * b[2][0]);
    let phi = (det / 2.0).clamp(-1.0, 1.0).acos() / 3.0;
    let e1 = q + 2.0 * p * phi.cos();
    let e3 = q + 2.0 * p * (phi + 2.0 * std::f64::consts::PI / 3.0).cos();
    [e1, 3.0 * q - e1 - e3, e3]
}

#[test]
fn eig3_is_right() {
    let e = eig3([[4.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 9.0]]);
    assert!((e[0] - 9.0).abs() < 1e-9 && (e[1] - 4.0).abs() < 1e-9 && (e[2] - 1.0).abs() < 1e-9);
    // [[2,1,0],[1,2,0],[0,0,5]]: eigenvalues 5, 3, 1.
    let e = eig3([[2.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 5.0]]);
    assert!(
        (e[0] - 5.0).abs() < 1e-9 && (e[1] - 3.0).abs() < 1e-9 && (e[2] - 1.0).abs() < 1e-9,
        "{e:?}"
    );
}

#[test]
fn objects_are_elongated_and_span_sections() {
    let v = small(5, false);
    let (nz, ny, nx) = v.shape;
    let aniso = SynthConfig::default().anisotropy;
    // Moments in physical units (a section is `aniso` pixels thick).
    #[derive(Default)]
    struct M {
        n: f64,
        s: [f64; 3],
        ss: [[f64; 3]; 3],
        zmin: usize,
        zmax: usize,
    }
    let mut m: HashMap<u32, M> = HashMap::new();
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                let l = v.labels[(z * ny + y) * nx + x];
                let e = m.entry(l).or_insert_with(|| M {
                    zmin: usize::MAX,
                    ..Default::default()
                });
                let p = [z as f64 * aniso, y as f64, x as f64];
                e.n += 1.0;
                for i in 0..3 {
                    e.s[i] += p[i];
                    for j in 0..3 {
                        e.ss[i][j] += p[i] * p[j];
                    }
                }
                e.zmin = e.zmin.min(z);
                e.zmax = e.zmax.max(z);
            }
        }
    }
    let mut ratios = Vec::new();
    let mut spans = Vec::new();
    for e in m.values().filter(|e| e.n >= 500.0) {
        let c: [[f64; 3]; 3] = std::array::from_fn(|i| {
            std::array::from_fn(|j| e.ss[i][j] / e.n - (e.s[i] / e.n) * (e.s[j] / e.n))
        });
        let ev = eig3(c);
        ratios.push((ev[0] / ev[2].max(1e-9)).sqrt());
        spans.push(e.zmax - e.zmin + 1);
    }
    assert!(
        ratios.len() >= 20,
        "only {} objects of 500+ voxels",
        ratios.len()
    );
    ratios.sort_by(|a, b| a.partial_cmp(b).unwrap());
    spans.sort_unstable();
    let median_ratio = ratios[ratios.len() / 2];
    let median_span = spans[spans.len() / 2];
    // A ball has ratio 1; Voronoi cells about 1.2-1.5. Tubes are several times longer than wide.
    assert!(
        median_ratio > 2.5,
        "median principal-axis ratio {median_ratio}"
    );
    assert!(
        median_span >= 6,
        "median object spans {median_span} sections"
    );
    let long = spans.iter().filter(|&&s| s >= 16).count();
    assert!(
        long * 5 >= spans.len(),
        "{long} of {} objects span 16+ sections",
        spans.len()
    );
}

#[test]
fn borders_are_dark() {
    let v = small(11, false);
    let (nz, ny, nx) = v.shape;
    let (mut bsum, mut bn, mut isum, mut inn) = (0.0, 0.0, 0.0, 0.0);
    for z in 0..nz {
        for y in 3..ny - 3 {
            for x in 3..nx - 3 {
                let i = (z * ny + y) * nx + x;
                let l = v.labels[i];
                let at = |dy: isize, dx: isize| {
                    v.labels
                        [(z * ny + (y as isize + dy) as usize) * nx + (x as isize + dx) as usize]
                };
                let border = at(0, 1) != l || at(0, -1) != l || at(1, 0) != l || at(-1, 0) != l;
                let mut interior = true;
                for dy in -3..=3 {
                    for dx in -3..=3 {
                        interior &= at(dy, dx) == l;
                    }
                }
                if border {
                    bsum += v.image[i] as f64;
                    bn += 1.0;
                } else if interior {
                    isum += v.image[i] as f64;
                    inn += 1.0;
                }
            }
        }
    }
    let (b, i) = (bsum / bn, isum / inn);
    assert!(bn > 1000.0 && inn > 1000.0);
    assert!(b < i - 40.0, "border mean {b:.1} vs interior {i:.1}");
}

/// Fraction of pixels where section z's labels equal section w's labels shifted by (dy, dx):
/// labels[z](y, x) == labels[w](y + dy, x + dx).
fn agreement(v: &SynthVolume, z: usize, w: usize, dy: i64, dx: i64) -> f64 {
    let (_, ny, nx) = v.shape;
    let (mut same, mut n) = (0usize, 0usize);
    for y in 16..ny - 16 {
        for x in 16..nx - 16 {
            let (yy, xx) = ((y as i64 + dy) as usize, (x as i64 + dx) as usize);
            n += 1;
            same += (v.labels[(z * ny + y) * nx + x] == v.labels[(w * ny + yy) * nx + xx]) as usize;
        }
    }
    same as f64 / n as f64
}

/// The displacement within +-ms that makes section z agree best with section w.
fn best_shift(v: &SynthVolume, z: usize, w: usize, ms: i64) -> (i64, i64) {
    let mut best = (0, 0, -1.0);
    for dy in -ms..=ms {
        for dx in -ms..=ms {
            let a = agreement(v, z, w, dy, dx);
            if a > best.2 {
                best = (dy, dx, a);
            }
        }
    }
    (best.0, best.1)
}

#[test]
fn artefacts_are_where_reported() {
    let v = synthesize(&SynthConfig {
        size: (60, 128, 128),
        seed: 21,
        ..SynthConfig::default()
    })
    .unwrap();
    let (nz, ny, nx) = v.shape;
    let ms = SynthConfig::default().max_shift as i64;
    let plane = ny * nx;
    let sec = |z: usize| &v.image[z * plane..(z + 1) * plane];
    let kinds: Vec<&str> = v
        .artefacts
        .iter()
        .map(|a| match a.kind {
            ArtefactKind::Blank => "blank",
            ArtefactKind::Duplicate { .. } => "duplicate",
            ArtefactKind::Shift { .. } => "shift",
            ArtefactKind::Slip { .. } => "slip",
        })
        .collect();
    for k in ["blank", "duplicate", "shift", "slip"] {
        assert!(kinds.contains(&k), "no {k} in {kinds:?}");
    }
    let special: Vec<usize> = v.artefacts.iter().map(|a| a.z).collect();
    for z in 0..nz {
        let blank = v
            .artefacts
            .iter()
            .any(|a| a.z == z && a.kind == ArtefactKind::Blank);
        assert_eq!(sec(z).iter().all(|&p| p == 0), blank, "section {z} blank?");
    }
    for a in &v.artefacts {
        let z = a.z;
        match a.kind {
            ArtefactKind::Blank => {}
            ArtefactKind::Duplicate { of } => {
                assert_eq!(of, z - 1);
                assert_eq!(sec(z), sec(of), "duplicate at {z}");
                // Its labels are the true tissue, not a copy.
                assert_ne!(
                    &v.labels[z * plane..(z + 1) * plane],
                    &v.labels[of * plane..(of + 1) * plane]
                );
            }
            ArtefactKind::Shift { dy, dx } | ArtefactKind::Slip { dy, dx } => {
                // Section z-1 is aligned with the stack before the artefact, so the displacement
                // that best matches z to z-1 is the reported one.
                let best = best_shift(&v, z, z - 1, ms);
                assert!(
                    (best.0 - dy).abs() <= 1 && (best.1 - dx).abs() <= 1,
                    "{:?} at {z}: best match at {best:?}",
                    a.kind
                );
                if !special.contains(&(z + 1)) {
                    let next = if matches!(a.kind, ArtefactKind::Slip { .. }) {
                        // After a slip the following sections are aligned with each other.
                        best_shift(&v, z + 1, z, ms)
                    } else {
                        // After a single shifted section the next one is back in place.
                        best_shift(&v, z + 1, z - 1, ms)
                    };
                    assert!(
                        next.0.abs() <= 1 && next.1.abs() <= 1,
                        "after {:?} at {z}: {next:?}",
                        a.kind
                    );
                }
            }
        }
    }
    // Ordinary neighbouring sections agree in place.
    let z = (1..nz)
        .find(|z| !special.contains(z) && !special.contains(&(z - 1)))
        .unwrap();
    assert!(agreement(&v, z, z - 1, 0, 0) > 0.5);
    // Contrast varies per section.
    let gains: Vec<f32> = v.section_contrast.iter().map(|c| c.0).collect();
    let spread = gains.iter().cloned().fold(f32::MIN, f32::max)
        - gains.iter().cloned().fold(f32::MAX, f32::min);
    assert!(spread > 0.05, "gain spread {spread}");
}

#[test]
fn bad_configs_are_errors() {
    for cfg in [
        SynthConfig {
            size: (0, 64, 64),
            ..SynthConfig::default()
        },
        SynthConfig {
            size: (4, 8, 64),
            ..SynthConfig::default()
        },
        SynthConfig {
            radius: (5.0, 2.0),
            ..SynthConfig::default()
        },
        SynthConfig {
            anisotropy: f64::NAN,
            ..SynthConfig::default()
        },
        SynthConfig {
            size: (1 << 20, 1 << 20, 1 << 20),
            ..SynthConfig::default()
        },
    ] {
        assert!(synthesize(&cfg).is_err(), "{cfg:?}");
    }
    // Few sections: no artefacts, still a volume.
    let v = synthesize(&SynthConfig {
        size: (4, 32, 32),
        ..SynthConfig::default()
    })
    .unwrap();
    assert!(v.artefacts.is_empty());
    assert!(v.labels.iter().all(|&l| l != 0));
}

//! Mutex watershed (Wolf et al. 2018, "The Mutex Watershed"): a segmentation straight from
//! nearest and long-range affinities, with no threshold to choose.
//!
//! Every edge is attractive (its ends want one segment) or repulsive (they must stay apart), with a
//! weight; edges are taken heaviest first. An attractive edge joins its two clusters unless a
//! repulsive edge already taken lies between them (a mutex); a repulsive edge between two
//! different clusters adds a mutex. Affinities are (C, Z, Y, X) with channel c's edge at voxel p
//! joining p and p - offsets[c] (the layout of `train::targets`).
//!
//! [`Signs::Wolf`] is the paper's: the nearest channels (the first `attractive`) are attractive
//! with weight a, the long-range ones repulsive with weight 1 - a. [`Signs::Signed`] lets every
//! edge take the side its affinity is on (a >= 0.5 attractive with weight a, else repulsive with
//! weight 1 - a), so a confident nearest-neighbour border also repels: with the paper's signs,
//! two touching objects that no long-range edge separates would be joined by their weakest
//! border edge at the end, since every attractive edge is taken.

use super::{Dims, Label};
use crate::error::{Error, Result};
use std::collections::HashSet;

/// Which edges attract and which repel (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signs {
    /// The first `attractive` channels attract, the others repel.
    Wolf { attractive: usize },
    /// Each edge by its affinity: >= 0.5 attracts, below repels.
    Signed,
}

/// One edge: the two voxels and whether it attracts. Sorting is by weight, heaviest first.
struct Edge {
    weight: f32,
    u: u32,
    v: u32,
    attract: bool,
}

fn find(parent: &mut [u32], mut a: u32) -> u32 {
    while parent[a as usize] != a {
        let p = parent[a as usize];
        parent[a as usize] = parent[p as usize];
        a = p;
    }
    a
}

/// Mutex watershed of `aff` ((C, Z, Y, X), C = `offsets.len()`): labels 1.. per voxel in order of
/// first appearance.
pub fn mutex_watershed<L: Label>(
    aff: &[f32],
    dims: Dims,
    offsets: &[[usize; 3]],
    signs: Signs,
) -> Result<Vec<L>> {
    let n = dims.voxels();
    if aff.len() != offsets.len() * n {
        return Err(Error::shape(
            "mutex watershed",
            format!(
                "{} affinities for {} offsets over ({}, {}, {}) voxels",
                aff.len(),
                offsets.len(),
                dims.z,
                dims.y,
                dims.x
            ),
        ));
    }
    if n >= u32::MAX as usize {
        return Err(Error::Invalid(format!(
            "mutex watershed: {n} voxels is more than the u32 voxel index holds; segment in blocks"
        )));
    }
    if let Some(i) = aff.iter().position(|a| !(0.0..=1.0).contains(a)) {
        return Err(Error::Value {
            what: "affinities".into(),
            detail: format!(
                "value {} at index {i} is not in [0, 1] (NaN or not a probability: apply the sigmoid first)",
                aff[i]
            ),
        });
    }
    if let Signs::Wolf { attractive } = signs {
        if attractive > offsets.len() {
            return Err(Error::Invalid(format!(
                "mutex watershed: {attractive} attractive channels of {}",
                offsets.len()
            )));
        }
    }
    let (sy, sz) = (dims.x, dims.y * dims.x);
    let mut edges = Vec::new();
    for (c, o) in offsets.iter().enumerate() {
        let step = o[0] * sz + o[1] * sy + o[2];
        let ch = &aff[c * n..(c + 1) * n];
        for z in o[0]..dims.z {
            for y in o[1]..dims.y {
                for x in o[2]..dims.x {
                    let i = z * sz + y * sy + x;
                    let a = ch[i];
                    let attract = match signs {
                        Signs::Wolf { attractive } => c < attractive,
                        Signs::Signed => a >= 0.5,
                    };
                    edges.push(Edge {
                        weight: if attract { a } else { 1.0 - a },
                        u: i as u32,
                        v: (i - step) as u32,
                        attract,
                    });
                }
            }
        }
    }
    // Stable: equal weights keep channel-then-voxel order, so the result is deterministic.
    edges.sort_by(|a, b| b.weight.total_cmp(&a.weight));

    let mut parent: Vec<u32> = (0..n as u32).collect();
    // Mutex partners of each root, kept as current roots (rewritten on every merge), so that a
    // check is one lookup. Merging moves the smaller set into the larger.
    let mut mutex: Vec<HashSet<u32>> = vec![HashSet::new(); n];
    for e in &edges {
        let (a, b) = (find(&mut parent, e.u), find(&mut parent, e.v));
        if a == b {
            continue;
        }
        if e.attract {
            if mutex[a as usize].contains(&b) {
                continue;
            }
            let (keep, gone) = if mutex[a as usize].len() >= mutex[b as usize].len() {
                (a, b)
            } else {
                (b, a)
            };
            parent[gone as usize] = keep;
            let moved = std::mem::take(&mut mutex[gone as usize]);
            for p in moved {
                let s = &mut mutex[p as usize];
                s.remove(&gone);
                s.insert(keep);
                mutex[keep as usize].insert(p);
            }
        } else {
            mutex[a as usize].insert(b);
            mutex[b as usize].insert(a);
        }
    }
    let mut id = vec![0u32; n];
    let mut next = 0u32;
    let mut out = Vec::with_capacity(n);
    for i in 0..n as u32 {
        let r = find(&mut parent, i) as usize;
        if id[r] == 0 {
            next += 1;
            id[r] = next;
        }
        out.push(L::from_usize(id[r] as usize));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Four voxels in a row, x offsets 1 (attractive) and 3 (repulsive):
    /// 0 -0.9- 1 -0.4- 2 -0.8- 3, and a long-range edge 0..3 with affinity 0.15 (weight 0.85).
    /// Heaviest first: join 0-1 (0.9), mutex 0|3 (0.85), join 2-3 (0.8), then 1-2 (0.4) would join
    /// {0,1} with {2,3}, which the mutex forbids: two segments. With the long-range affinity at
    /// 0.95 (weight 0.05, taken last) nothing forbids it: one segment.
    fn line(long: f32) -> Vec<f32> {
        // channel 0: x offset 1, edge at voxel p joins p and p - 1; channel 1: offset 3.
        vec![0.0, 0.9, 0.4, 0.8, 0.0, 0.0, 0.0, long]
    }

    #[test]
    fn hand_worked_line() {
        let dims = Dims::new(1, 1, 4);
        let offs = [[0, 0, 1], [0, 0, 3]];
        let wolf = Signs::Wolf { attractive: 1 };
        let two: Vec<u32> = mutex_watershed(&line(0.15), dims, &offs, wolf).unwrap();
        assert_eq!(two, vec![1, 1, 2, 2]);
        let one: Vec<u32> = mutex_watershed(&line(0.95), dims, &offs, wolf).unwrap();
        assert_eq!(one, vec![1, 1, 1, 1]);
        // Signed, long-range 0.15: as above, and 1-2 (0.4) repels with weight 0.6 after the
        // mutex. Long-range 0.95 attracts first (weight 0.95): 0 and 3 join, so do all.
        let s: Vec<u32> = mutex_watershed(&line(0.15), dims, &offs, Signs::Signed).unwrap();
        assert_eq!(s, vec![1, 1, 2, 2]);
        let s: Vec<u32> = mutex_watershed(&line(0.95), dims, &offs, Signs::Signed).unwrap();
        assert_eq!(s, vec![1, 1, 1, 1]);
    }

    /// Two voxels, one nearest edge at 0.2: the paper's signs take every nearest edge as
    /// attractive (one segment); signed ones make it a repulsion (two).
    #[test]
    fn weak_nearest_edge_repels_only_when_signed() {
        let dims = Dims::new(1, 1, 2);
        let aff = [0.0, 0.2];
        let w: Vec<u32> =
            mutex_watershed(&aff, dims, &[[0, 0, 1]], Signs::Wolf { attractive: 1 }).unwrap();
        assert_eq!(w, vec![1, 1]);
        let s: Vec<u32> = mutex_watershed(&aff, dims, &[[0, 0, 1]], Signs::Signed).unwrap();
        assert_eq!(s, vec![1, 2]);
    }

    /// A mutex must follow merges: 0-1 joined, mutex 1|3 taken, then 3-2 joined, and 2-0 (which
    /// would close {0,1} with {2,3}) must be refused.
    #[test]
    fn mutex_follows_merged_roots() {
        let dims = Dims::new(1, 2, 2);
        // voxels (y, x): 0 = (0,0), 1 = (0,1), 2 = (1,0), 3 = (1,1).
        // channel 0: y offset 1 (2-0 at 0.7, 3-1 at 0.1); channel 1: x offset 1 (1-0 at 0.95,
        // 3-2 at 0.85).
        let aff = vec![0.0, 0.0, 0.7, 0.1, 0.0, 0.95, 0.0, 0.85];
        let seg: Vec<u32> =
            mutex_watershed(&aff, dims, &[[0, 1, 0], [0, 0, 1]], Signs::Signed).unwrap();
        assert_eq!(seg, vec![1, 1, 2, 2]);
    }

    /// The definition run literally: clusters as a label per voxel (relabelled on every merge),
    /// a mutex check scanning every repulsive edge taken so far. Edges in the same order.
    fn reference(aff: &[f32], dims: Dims, offsets: &[[usize; 3]], signs: Signs) -> Vec<u64> {
        let n = dims.voxels();
        let mut edges = Vec::new();
        for (c, o) in offsets.iter().enumerate() {
            for z in 0..dims.z {
                for y in 0..dims.y {
                    for x in 0..dims.x {
                        if z < o[0] || y < o[1] || x < o[2] {
                            continue;
                        }
                        let i = (z * dims.y + y) * dims.x + x;
                        let j = ((z - o[0]) * dims.y + y - o[1]) * dims.x + x - o[2];
                        let a = aff[c * n + i];
                        let attract = match signs {
                            Signs::Wolf { attractive } => c < attractive,
                            Signs::Signed => a >= 0.5,
                        };
                        let w = if attract { a } else { 1.0 - a };
                        edges.push((w, i, j, attract));
                    }
                }
            }
        }
        edges.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut lab: Vec<usize> = (0..n).collect();
        let mut repulsive: Vec<(usize, usize)> = Vec::new();
        for (_, i, j, attract) in edges {
            let (a, b) = (lab[i], lab[j]);
            if a == b {
                continue;
            }
            if attract {
                let blocked = repulsive
                    .iter()
                    .any(|&(u, v)| (lab[u] == a && lab[v] == b) || (lab[u] == b && lab[v] == a));
                if !blocked {
                    lab.iter_mut().filter(|l| **l == b).for_each(|l| *l = a);
                }
            } else {
                repulsive.push((i, j));
            }
        }
        super::super::canonical(&lab.iter().map(|&l| l as u32 + 1).collect::<Vec<u32>>())
    }

    #[test]
    fn matches_the_literal_definition_on_random_affinities() {
        let dims = Dims::new(3, 5, 6);
        let offs = [
            [1, 0, 0],
            [0, 1, 0],
            [0, 0, 1],
            [1, 0, 2],
            [0, 2, 0],
            [0, 0, 3],
        ];
        for seed in 1..=20u64 {
            let mut rng = crate::rng::Rng::new(seed);
            let aff: Vec<f32> = (0..offs.len() * dims.voxels())
                .map(|_| rng.uniform() as f32)
                .collect();
            for signs in [Signs::Wolf { attractive: 3 }, Signs::Signed] {
                let got: Vec<u32> = mutex_watershed(&aff, dims, &offs, signs).unwrap();
                let want = reference(&aff, dims, &offs, signs);
                assert_eq!(
                    super::super::canonical(&got),
                    want,
                    "seed {seed}, {signs:?}"
                );
                let segments = want.iter().max().copied().unwrap_or(0);
                assert!(
                    segments > 1 && segments < dims.voxels() as u64,
                    "seed {seed}, {signs:?}: {segments} segments says nothing"
                );
            }
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        let dims = Dims::new(1, 1, 4);
        let offs = [[0, 0, 1], [0, 0, 3]];
        assert!(mutex_watershed::<u32>(&[0.5; 7], dims, &offs, Signs::Signed).is_err());
        let mut nan = line(0.5);
        nan[2] = f32::NAN;
        let e = mutex_watershed::<u32>(&nan, dims, &offs, Signs::Signed).unwrap_err();
        assert!(e.to_string().contains("index 2"), "{e}");
        let e = mutex_watershed::<u32>(&line(0.5), dims, &offs, Signs::Wolf { attractive: 3 })
            .unwrap_err();
        assert!(e.to_string().contains("attractive"), "{e}");
    }
}

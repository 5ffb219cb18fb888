//! Agglomeration of watershed fragments as waterz does it (Funke et al. 2018): a region graph
//! whose edges gather every voxel edge between two fragments, merged lowest score first.
//!
//! Scores are exact: an edge keeps the sum and count of its affinities (and a 256-bin histogram
//! for quantile scores); when two regions merge, the edges they share with a third region are
//! combined and re-queued with the new score at once, so the queue never works from a stale score
//! (waterz re-scores lazily when a stale edge reaches the top, which can merge late).

use super::watershed::FxMap;
use super::{Dims, Label};
use crate::error::{Error, Result};
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Histogram bins of the quantile score, as waterz (value v goes to bin floor(v * 255)).
const BINS: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Score {
    /// 1 - mean affinity over all voxel edges between the two regions.
    OneMinusMean,
    /// 1 - q-quantile (q in [0, 1]) of those affinities, from a 256-bin histogram: the value of
    /// the bin holding the element of 1-based rank floor(q * n) + 1 (waterz's pivot).
    OneMinusQuantile(f64),
}

/// One segmentation per threshold, stored as a map from fragment id to segment id (the smallest
/// fragment id of the merged set), so that many thresholds cost no extra volumes.
pub struct Agglomeration {
    pub thresholds: Vec<f64>,
    /// `maps[t][f]`: segment of fragment `f` at `thresholds[t]` (index 0 maps to 0).
    pub maps: Vec<Vec<u32>>,
    /// Merges done before each threshold's snapshot.
    pub merges: Vec<usize>,
    pub fragments: usize,
    pub edges: usize,
}

impl Agglomeration {
    /// The segmentation at threshold index `t`.
    pub fn apply<L: Label>(&self, t: usize, fragments: &[L]) -> Vec<L> {
        let map = &self.maps[t];
        fragments
            .iter()
            .map(|f| L::from_usize(map[f.to_usize()] as usize))
            .collect()
    }
}

struct Edge {
    a: u32,
    b: u32,
    sum: f64,
    count: u64,
    version: u32,
    alive: bool,
}

struct Graph {
    edges: Vec<Edge>,
    /// Per edge, BINS counts, only for quantile scores.
    hist: Vec<u32>,
    /// adj[r]: neighbour region -> edge id, for regions that are still roots.
    adj: Vec<FxMap<u32, u32>>,
}

/// Agglomerates `fragments` (0 = background, never merged) for each threshold in `thresholds`.
/// Merging goes on while the lowest score is below the threshold, so the segmentation for
/// threshold t has every merge whose score (at its time) was < t.
pub fn agglomerate<L: Label>(
    aff: &[f32],
    fragments: &[L],
    dims: Dims,
    thresholds: &[f64],
    score: Score,
) -> Result<Agglomeration> {
    check_inputs(aff, fragments, dims, thresholds, score)?;
    let n_ids = max_id(fragments)? + 1;
    let mut g = build_graph(aff, fragments, dims, n_ids, score);
    let edges = g.edges.len();
    let mut order: Vec<usize> = (0..thresholds.len()).collect();
    order.sort_by(|&i, &j| thresholds[i].total_cmp(&thresholds[j]));
    let mut m = Merger::new(n_ids);
    let mut heap: BinaryHeap<Reverse<(u64, u32, u32)>> = (0..edges as u32)
        .map(|e| Reverse((score_key(&g, e, score), e, 0)))
        .collect();
    let mut maps = vec![Vec::new(); thresholds.len()];
    let mut merges = vec![0; thresholds.len()];
    let mut next = 0;
    while next < order.len() {
        let Some(&Reverse((key, e, ver))) = heap.peek() else {
            break;
        };
        let edge = &g.edges[e as usize];
        if !edge.alive || edge.version != ver {
            heap.pop();
            continue;
        }
        if f64::from_bits(key) >= thresholds[order[next]] {
            maps[order[next]] = m.snapshot();
            merges[order[next]] = m.merges;
            next += 1;
            continue;
        }
        heap.pop();
        for changed in m.merge(&mut g, e) {
            let v = g.edges[changed as usize].version;
            heap.push(Reverse((score_key(&g, changed, score), changed, v)));
        }
    }
    for &t in &order[next..] {
        maps[t] = m.snapshot();
        merges[t] = m.merges;
    }
    Ok(Agglomeration {
        thresholds: thresholds.to_vec(),
        maps,
        merges,
        fragments: n_ids - 1,
        edges,
    })
}

fn check_inputs<L: Label>(
    aff: &[f32],
    fragments: &[L],
    dims: Dims,
    thresholds: &[f64],
    score: Score,
) -> Result<()> {
    super::check_affinities(aff, dims)?;
    if fragments.len() != dims.voxels() {
        return Err(Error::shape(
            "agglomerate",
            format!(
                "{} fragment labels for a volume of {} voxels",
                fragments.len(),
                dims.voxels()
            ),
        ));
    }
    if let Some(t) = thresholds.iter().find(|t| !t.is_finite()) {
        return Err(Error::Invalid(format!(
            "agglomeration threshold {t} is not a finite number"
        )));
    }
    if let Score::OneMinusQuantile(q) = score {
        if !(0.0..=1.0).contains(&q) {
            return Err(Error::Invalid(format!("quantile {q} is not in [0, 1]")));
        }
    }
    Ok(())
}

/// Largest fragment id; ids index tables directly, so they must be dense enough to fit u32.
fn max_id<L: Label>(fragments: &[L]) -> Result<usize> {
    let m = fragments.iter().map(|l| l.to_usize()).max().unwrap_or(0);
    if m >= u32::MAX as usize || m > 2 * fragments.len() + 1 {
        return Err(Error::Invalid(format!(
            "fragment ids up to {m} for {} voxels: relabel fragments consecutively first",
            fragments.len()
        )));
    }
    Ok(m)
}

fn build_graph<L: Label>(aff: &[f32], frag: &[L], d: Dims, n_ids: usize, score: Score) -> Graph {
    let n = d.voxels();
    let (sx, sxy) = (d.x, d.x * d.y);
    let quantile = matches!(score, Score::OneMinusQuantile(_));
    let mut index: FxMap<(u32, u32), u32> = FxMap::default();
    let mut g = Graph {
        edges: Vec::new(),
        hist: Vec::new(),
        adj: Vec::new(),
    };
    for i in 0..n {
        let s = frag[i].to_usize() as u32;
        if s == 0 {
            continue;
        }
        let (z, y, x) = (i / sxy, i / sx % d.y, i % sx);
        for (ok, o, c) in [(z > 0, sxy, 0), (y > 0, sx, 1), (x > 0, 1, 2)] {
            let t = if ok { frag[i - o].to_usize() as u32 } else { 0 };
            if t == 0 || t == s {
                continue;
            }
            let key = (s.min(t), s.max(t));
            let e = *index.entry(key).or_insert_with(|| {
                g.edges.push(Edge {
                    a: key.0,
                    b: key.1,
                    sum: 0.0,
                    count: 0,
                    version: 0,
                    alive: true,
                });
                if quantile {
                    g.hist.extend([0u32; BINS]);
                }
                (g.edges.len() - 1) as u32
            });
            add_affinity(&mut g, e, aff[c * n + i], quantile);
        }
    }
    g.adj = vec![FxMap::default(); n_ids];
    for (&(a, b), &e) in &index {
        g.adj[a as usize].insert(b, e);
        g.adj[b as usize].insert(a, e);
    }
    g
}

fn add_affinity(g: &mut Graph, e: u32, a: f32, quantile: bool) {
    let edge = &mut g.edges[e as usize];
    edge.sum += a as f64;
    edge.count += 1;
    if quantile {
        let bin = ((a * (BINS - 1) as f32) as usize).min(BINS - 1);
        let h = &mut g.hist[e as usize * BINS + bin];
        *h = h.saturating_add(1);
    }
}

/// Scores are in [0, 1], where f64 bit patterns order like the values: the heap compares bits.
fn score_key(g: &Graph, e: u32, score: Score) -> u64 {
    let edge = &g.edges[e as usize];
    let v = match score {
        Score::OneMinusMean => 1.0 - edge.sum / edge.count as f64,
        Score::OneMinusQuantile(q) => {
            let h = &g.hist[e as usize * BINS..(e as usize + 1) * BINS];
            1.0 - quantile_value(h, edge.count, q)
        }
    };
    v.max(0.0).to_bits()
}

fn quantile_value(hist: &[u32], count: u64, q: f64) -> f64 {
    let pivot = ((q * count as f64).floor() as u64 + 1).min(count);
    let mut acc = 0u64;
    for (bin, &c) in hist.iter().enumerate() {
        acc += c as u64;
        if acc >= pivot {
            return bin as f64 / (BINS - 1) as f64;
        }
    }
    1.0
}

/// Union-find over fragment ids, remembering each set's smallest id for the output labels.
struct Merger {
    parent: Vec<u32>,
    smallest: Vec<u32>,
    merges: usize,
}

impl Merger {
    fn new(n: usize) -> Self {
        Merger {
            parent: (0..n as u32).collect(),
            smallest: (0..n as u32).collect(),
            merges: 0,
        }
    }

    fn find(&mut self, mut x: u32) -> u32 {
        let mut r = x;
        while self.parent[r as usize] != r {
            r = self.parent[r as usize];
        }
        while self.parent[x as usize] != r {
            let next = self.parent[x as usize];
            self.parent[x as usize] = r;
            x = next;
        }
        r
    }

    fn snapshot(&mut self) -> Vec<u32> {
        (0..self.parent.len() as u32)
            .map(|f| {
                let r = self.find(f);
                self.smallest[r as usize]
            })
            .collect()
    }

    /// Merges the two regions of edge `e` (both are roots: edges always join roots). The region
    /// with fewer neighbours is folded into the other. Returns the edges whose statistics changed.
    fn merge(&mut self, g: &mut Graph, e: u32) -> Vec<u32> {
        let Edge { a, b, .. } = g.edges[e as usize];
        g.edges[e as usize].alive = false;
        let (keep, gone) = if g.adj[a as usize].len() >= g.adj[b as usize].len() {
            (a, b)
        } else {
            (b, a)
        };
        self.parent[gone as usize] = keep;
        self.smallest[keep as usize] =
            self.smallest[keep as usize].min(self.smallest[gone as usize]);
        self.merges += 1;
        let gone_adj = std::mem::take(&mut g.adj[gone as usize]);
        g.adj[keep as usize].remove(&gone);
        let mut changed = Vec::new();
        let mut moved: Vec<(u32, u32)> =
            gone_adj.into_iter().filter(|&(nb, _)| nb != keep).collect();
        moved.sort_unstable();
        for (nb, e2) in moved {
            g.adj[nb as usize].remove(&gone);
            match g.adj[keep as usize].get(&nb).copied() {
                Some(e1) => {
                    combine(g, e1, e2);
                    changed.push(e1);
                }
                None => {
                    let edge = &mut g.edges[e2 as usize];
                    if edge.a == gone {
                        edge.a = keep;
                    } else {
                        edge.b = keep;
                    }
                    g.adj[keep as usize].insert(nb, e2);
                    g.adj[nb as usize].insert(keep, e2);
                }
            }
        }
        changed
    }
}

/// Adds edge `from`'s statistics to `into` (sums, counts, histograms add exactly) and retires it.
fn combine(g: &mut Graph, into: u32, from: u32) {
    let (sum, count) = (g.edges[from as usize].sum, g.edges[from as usize].count);
    g.edges[from as usize].alive = false;
    let edge = &mut g.edges[into as usize];
    edge.sum += sum;
    edge.count += count;
    edge.version += 1;
    if !g.hist.is_empty() {
        let (i, f) = (into as usize * BINS, from as usize * BINS);
        for k in 0..BINS {
            g.hist[i + k] = g.hist[i + k].saturating_add(g.hist[f + k]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1 x 1 x 4 line of fragments 1..4 with x-edges 1-2: 0.9, 2-3: 0.2, 3-4: 0.6, so scores
    /// 0.1, 0.8, 0.4 (up to f32 rounding). Merge order: 1-2, then 3-4, then {1,2}-{3,4} at 0.8.
    #[test]
    fn line_merges_in_score_order_with_one_snapshot_per_threshold() {
        let frag: Vec<u32> = vec![1, 2, 3, 4];
        let mut aff = vec![0f32; 12];
        aff[8..12].copy_from_slice(&[0.0, 0.9, 0.2, 0.6]);
        let dims = Dims::new(1, 1, 4);
        // Thresholds given out of order: results come back in the order asked.
        let ts = [0.5, 0.05, 0.9, 0.3];
        let r = agglomerate(&aff, &frag, dims, &ts, Score::OneMinusMean).unwrap();
        assert_eq!(r.apply(1, &frag), vec![1, 2, 3, 4]);
        assert_eq!(r.apply(3, &frag), vec![1, 1, 3, 4]);
        assert_eq!(r.apply(0, &frag), vec![1, 1, 3, 3]);
        assert_eq!(r.apply(2, &frag), vec![1, 1, 1, 1]);
        assert_eq!(r.merges, vec![2, 0, 3, 1]);
        assert_eq!((r.fragments, r.edges), (4, 3));
    }

    /// 1 x 2 x 2, fragments (row y0) A=1 C=3, (row y1) B=2 C=3. Voxel edges: A-C (x at y0) 0.7,
    /// B-C (x at y1) 0.1, A-B (y at x0) 0.9; C-C is inside a fragment and ignored.
    /// A-B merges first (score 0.1). The edges A-C and B-C then combine into one with mean
    /// (0.7 + 0.1) / 2 = 0.4, score 0.6; a stale A-C score (0.3) would merge C below 0.5.
    fn triangle() -> (Vec<f32>, Vec<u32>, Dims) {
        let dims = Dims::new(1, 2, 2);
        let frag = vec![1, 3, 2, 3];
        let mut aff = vec![0f32; 12];
        aff[4 + 2] = 0.9; // y-edge at (y1, x0): B with A
        aff[8 + 1] = 0.7; // x-edge at (y0, x1): C with A
        aff[8 + 3] = 0.1; // x-edge at (y1, x1): C with B
        (aff, frag, dims)
    }

    #[test]
    fn mean_is_updated_exactly_when_edges_combine() {
        let (aff, frag, dims) = triangle();
        let r = agglomerate(&aff, &frag, dims, &[0.5, 0.65], Score::OneMinusMean).unwrap();
        assert_eq!(r.apply(0, &frag), vec![1, 3, 1, 3]);
        assert_eq!(r.apply(1, &frag), vec![1, 1, 1, 1]);
    }

    #[test]
    fn quantile_scores_use_merged_histograms() {
        let (aff, frag, dims) = triangle();
        // Combined A,B-C affinities {0.7, 0.1}: bins floor(0.7*255) = 178, floor(0.1*255) = 25.
        // Median (q 0.5): pivot floor(0.5*2)+1 = 2 -> bin 178 -> 178/255 = 0.698, score 0.302:
        // merged below 0.5. q = 0: pivot 1 -> bin 25 -> 0.098, score 0.902: not merged below 0.9.
        let r = agglomerate(&aff, &frag, dims, &[0.5], Score::OneMinusQuantile(0.5)).unwrap();
        assert_eq!(r.apply(0, &frag), vec![1, 1, 1, 1]);
        let r = agglomerate(
            &aff,
            &frag,
            dims,
            &[0.9, 0.91],
            Score::OneMinusQuantile(0.0),
        )
        .unwrap();
        assert_eq!(r.apply(0, &frag), vec![1, 3, 1, 3]);
        assert_eq!(r.apply(1, &frag), vec![1, 1, 1, 1]);
    }

    #[test]
    fn background_is_never_merged_and_bad_input_is_refused() {
        let frag: Vec<u32> = vec![1, 0, 2];
        let mut aff = vec![0f32; 9];
        aff[6..9].copy_from_slice(&[0.0, 1.0, 1.0]);
        let dims = Dims::new(1, 1, 3);
        let r = agglomerate(&aff, &frag, dims, &[1.0], Score::OneMinusMean).unwrap();
        assert_eq!(r.apply(0, &frag), vec![1, 0, 2]);
        assert_eq!(r.edges, 0);
        aff[7] = f32::NAN;
        assert!(agglomerate(&aff, &frag, dims, &[0.5], Score::OneMinusMean).is_err());
        aff[7] = 0.5;
        let bad = agglomerate(&aff, &frag[..2], dims, &[0.5], Score::OneMinusMean);
        assert!(matches!(bad, Err(Error::Shape { .. })));
        let bad = agglomerate(&aff, &frag, dims, &[0.5], Score::OneMinusQuantile(1.5));
        assert!(bad.is_err());
    }
}

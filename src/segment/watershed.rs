//! Watershed on affinity graphs (Zlateski & Seung 2015, arXiv 1505.00249), step for step as
//! seung-lab/Watershed.jl does it, so that its test segmentation (the piriform fixture) comes out
//! identical, label values included.
//!
//! Every order that decides a tie follows Watershed.jl: voxels are scanned in linear order (x
//! fastest, which is Julia's column-major order of aff[x, y, z, c]), neighbours in the order
//! -x, -y, -z, +x, +y, +z, region-graph edges sorted by (weight, id1, id2) descending, disjoint
//! sets joined by rank as DataStructures.jl does, final ids handed out in increasing basin id.

use super::{check_affinities, Dims, Label};
use crate::error::{Error, Result};
use rayon::prelude::*;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Edge bits of the steepest-ascent graph, in Watershed.jl's direction order.
const DIR_BITS: [u8; 6] = [0x01, 0x02, 0x04, 0x08, 0x10, 0x20];
/// The bit of the same edge seen from the other end.
const INV_BITS: [u8; 6] = [0x08, 0x10, 0x20, 0x01, 0x02, 0x04];
/// Visited mark used by plateau division and basin search.
const VISITED: u8 = 0x40;

/// Watershed thresholds. With `relative`, `low`, `high` and the merge weights are fractions of the
/// affinity distribution (see [`Histogram`]), as Watershed.jl's `is_threshold_relative`.
///
/// f64 on purpose: Watershed.jl rounds `low` and `high` to the affinity type (f32) but compares
/// f32 region-graph weights with the f64 merge weight, so 0.2f32 > 0.2 there; we do the same.
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    /// Edges at or below are cut; a voxel whose best edge is at or below is background.
    pub low: f64,
    /// Edges at or above count as infinitely strong (ties with the best edge).
    pub high: f64,
    /// (size, weight): merge regions joined by an edge above `weight` while one is under `size`.
    pub merge: Vec<(u64, f64)>,
    /// Regions under this size after merging become background.
    pub dust: u64,
    pub relative: bool,
}

impl Params {
    /// Watershed.jl's defaults, the settings of the piriform fixture.
    pub fn watershed_jl() -> Self {
        Params {
            low: 0.1,
            high: 0.8,
            merge: vec![(800, 0.2)],
            dust: 600,
            relative: true,
        }
    }

    /// waterz's defaults (`aff_threshold_low` 0.0001, `aff_threshold_high` 0.9999, absolute, no
    /// size merges and no dust): many small fragments, all joining left to the agglomeration.
    pub fn waterz() -> Self {
        Params {
            low: 0.0001,
            high: 0.9999,
            merge: Vec::new(),
            dust: 0,
            relative: false,
        }
    }
}

/// What each step produced, for tests and reports.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    /// Absolute thresholds actually used.
    pub low: f32,
    pub high: f32,
    pub merge: Vec<(u64, f64)>,
    pub basins: usize,
    pub background_before_merge: u64,
    /// Edges of the basins' region graph; None when no size merge or dust removal needed it.
    pub region_graph_edges: Option<usize>,
    pub segments: usize,
    pub background: u64,
    /// Dust sets kept by Watershed.jl's renumbering quirk (see [`merge_regions`]).
    pub revived_dust: usize,
}

/// Runs every step; returns labels (Z, Y, X) with 0 = background and ids 1..=segments.
pub fn watershed<L: Label>(aff: &[f32], dims: Dims, p: &Params) -> Result<(Vec<L>, Stats)> {
    check_affinities(aff, dims)?;
    if L::LOW_BITS.to_usize() <= dims.voxels() {
        return Err(Error::Invalid(format!(
            "watershed: {} voxels need 64-bit labels",
            dims.voxels()
        )));
    }
    let (low, high, merge) = absolute_thresholds(aff, p);
    let mut seg: Vec<L> = steepest_ascent(aff, dims, low, high);
    divide_plateaus(&mut seg, dims);
    let (counts, background_before_merge) = find_basins(&mut seg, dims);
    let mut stats = Stats {
        low,
        high,
        merge: merge.clone(),
        basins: counts.len() - 1,
        background_before_merge,
        ..Stats::default()
    };
    if merge.is_empty() && p.dust == 0 {
        // Nothing to merge and no dust: renumbering would map every basin to itself (ids are
        // already 1..=basins in scan order), so the region graph, the largest structure of the
        // watershed with millions of basins, is not built at all.
        stats.segments = stats.basins;
        stats.background = background_before_merge;
        return Ok((seg, stats));
    }
    let rg = region_graph(aff, &seg, dims);
    stats.region_graph_edges = Some(rg.len());
    let m = merge_regions(&mut seg, &rg, counts, &merge, p.dust);
    stats.segments = m.segments;
    stats.revived_dust = m.revived_dust;
    stats.background = seg.iter().filter(|&&l| l == L::ZERO).count() as u64;
    Ok((seg, stats))
}

/// The watershed of each section on its own (the z affinities left out), for anisotropic data
/// where the z affinity is the unreliable one: fragments never cross sections, and the
/// agglomeration alone decides what joins across z (as lsd/daisy pipelines do). Sizes in `p`
/// (merge, dust) are then per-section fragment sizes.
pub fn watershed_per_section<L: Label>(
    aff: &[f32],
    dims: Dims,
    p: &Params,
) -> Result<(Vec<L>, Stats)> {
    check_affinities(aff, dims)?;
    // Relative thresholds are percentiles of the affinities as given, not of the flattened copy.
    let (low, high, merge) = absolute_thresholds(aff, p);
    let abs = Params {
        low: low as f64,
        high: high as f64,
        merge,
        dust: p.dust,
        relative: false,
    };
    let mut flat = aff.to_vec();
    // A z edge of 0 is at or below every low threshold, so no voxel ascends along it and the
    // size-dependent merges never take it.
    flat[..dims.voxels()].fill(0.0);
    watershed(&flat, dims, &abs)
}

fn absolute_thresholds(aff: &[f32], p: &Params) -> (f32, f32, Vec<(u64, f64)>) {
    if !p.relative {
        return (p.low as f32, p.high as f32, p.merge.clone());
    }
    let h = Histogram::of(aff);
    let merge = p.merge.iter().map(|&(s, w)| (s, h.threshold(w))).collect();
    (h.threshold(p.low) as f32, h.threshold(p.high) as f32, merge)
}

/// Linear offsets of the six neighbours, in direction order.
fn offsets(d: Dims) -> [isize; 6] {
    let (x, xy) = (d.x as isize, (d.x * d.y) as isize);
    [-1, -x, -xy, 1, x, xy]
}

/// For each voxel, a bit per incident edge that is maximal (or at least `high`), none when the
/// best edge is at or below `low`. Edges out of the volume never get a bit (Watershed.jl gives
/// them the value `low`, which can only matter if `low >= high`).
pub fn steepest_ascent<L: Label>(aff: &[f32], d: Dims, low: f32, high: f32) -> Vec<L> {
    let mut sag = vec![L::ZERO; d.voxels()];
    let sxy = (d.x * d.y).max(1);
    // Each voxel's bits depend on its own edges only: sections run in parallel, same result.
    sag.par_chunks_mut(sxy)
        .enumerate()
        .for_each(|(z, section)| steepest_ascent_section(aff, d, low, high, z, section));
    sag
}

/// [`steepest_ascent`] of section `z` into `out` (that section's voxels).
fn steepest_ascent_section<L: Label>(
    aff: &[f32],
    d: Dims,
    low: f32,
    high: f32,
    z: usize,
    out: &mut [L],
) {
    let n = d.voxels();
    let (az, ay, ax) = (&aff[..n], &aff[n..2 * n], &aff[2 * n..3 * n]);
    let (sx, sxy) = (d.x, d.x * d.y);
    for (j, out) in out.iter_mut().enumerate() {
        let i = z * sxy + j;
        let (y, x) = (j / sx, j % sx);
        let e = [
            (x > 0).then(|| ax[i]),
            (y > 0).then(|| ay[i]),
            (z > 0).then(|| az[i]),
            (x + 1 < d.x).then(|| ax[i + 1]),
            (y + 1 < d.y).then(|| ay[i + sx]),
            (z + 1 < d.z).then(|| az[i + sxy]),
        ];
        let m = e.iter().map(|v| v.unwrap_or(low)).fold(low, f32::max);
        // Zlateski & Seung: edges at or above `high` always join, so a voxel is background only
        // when its best edge is at or below `low` and below `high`. The two differ only when
        // low >= high, as relative thresholds give on a uniform affinity graph (all ones).
        if m <= low && m < high {
            continue;
        }
        let mut bits = 0u8;
        for (k, v) in e.iter().enumerate() {
            if let Some(v) = *v {
                if v == m || v >= high {
                    bits |= DIR_BITS[k];
                }
            }
        }
        *out = L::from_usize(bits as usize);
    }
}

#[inline]
fn bits<L: Label>(v: L) -> u8 {
    (v.to_usize() & 0xff) as u8
}

#[inline]
fn step(i: usize, off: isize) -> usize {
    (i as isize + off) as usize
}

/// Leaves each voxel of a non-maximal plateau one edge, on a shortest path off the plateau
/// (breadth-first from the plateau's exits); also picks one edge where steepest paths tie.
pub fn divide_plateaus<L: Label>(sag: &mut [L], d: Dims) {
    let off = offsets(d);
    // Queue entries in the label type: it holds any voxel index (see `watershed`), at half the
    // memory of usize for u32 labels.
    let mut bfs: Vec<L> = Vec::new();
    for idx in 0..sag.len() {
        let b = bits(sag[idx]);
        for k in 0..6 {
            if b & DIR_BITS[k] != 0 && bits(sag[step(idx, off[k])]) & INV_BITS[k] == 0 {
                sag[idx] = sag[idx].or(L::from_usize(VISITED as usize));
                bfs.push(L::from_usize(idx));
                break;
            }
        }
    }
    let mut head = 0;
    while head < bfs.len() {
        let idx = bfs[head].to_usize();
        let b = bits(sag[idx]);
        let mut to_set = 0u8;
        for k in 0..6 {
            if b & DIR_BITS[k] == 0 {
                continue;
            }
            let nb = step(idx, off[k]);
            let nbits = bits(sag[nb]);
            if nbits & INV_BITS[k] != 0 {
                if nbits & VISITED == 0 {
                    bfs.push(L::from_usize(nb));
                    sag[nb] = sag[nb].or(L::from_usize(VISITED as usize));
                }
            } else {
                to_set = DIR_BITS[k];
            }
        }
        sag[idx] = L::from_usize(to_set as usize);
        head += 1;
    }
}

/// Turns the (divided) steepest-ascent graph into basin ids in place. Returns voxel counts per
/// basin (index 0 unused, basins are 1..) and the number of background voxels (no edge at all).
pub fn find_basins<L: Label>(seg: &mut [L], d: Dims) -> (Vec<u64>, u64) {
    let off = offsets(d);
    let visited = L::from_usize(VISITED as usize);
    let mut counts: Vec<u64> = vec![0];
    let mut background = 0u64;
    let mut bfs: Vec<usize> = Vec::new();
    for idx in 0..seg.len() {
        if seg[idx] == L::ZERO {
            seg[idx] = L::HIGH_BIT;
            background += 1;
        } else if seg[idx].and(L::HIGH_BIT) == L::ZERO {
            bfs.push(idx);
            seg[idx] = seg[idx].or(visited);
            descend(seg, &off, &mut bfs, &mut counts);
            if !bfs.is_empty() {
                let id = L::from_usize(counts.len()).or(L::HIGH_BIT);
                counts.push(bfs.len() as u64);
                for &it in &bfs {
                    seg[it] = id;
                }
                bfs.clear();
            }
        }
    }
    for v in seg.iter_mut() {
        *v = v.and(L::LOW_BITS);
    }
    (counts, background)
}

/// Follows the edges from the queued voxels until it meets an assigned voxel (whose id then goes
/// to the whole queue, which is emptied) or runs out (a new basin: the queue stays for the caller).
fn descend<L: Label>(seg: &mut [L], off: &[isize; 6], bfs: &mut Vec<usize>, counts: &mut [u64]) {
    let visited = L::from_usize(VISITED as usize);
    let mut head = 0;
    while head < bfs.len() {
        let me = bfs[head];
        let b = bits(seg[me]);
        for k in 0..6 {
            if b & DIR_BITS[k] == 0 {
                continue;
            }
            let him = step(me, off[k]);
            if seg[him].and(L::HIGH_BIT) != L::ZERO {
                let id = seg[him];
                for &it in bfs.iter() {
                    seg[it] = id;
                }
                counts[id.and(L::LOW_BITS).to_usize()] += bfs.len() as u64;
                bfs.clear();
                return;
            } else if seg[him].and(visited) == L::ZERO {
                seg[him] = seg[him].or(visited);
                bfs.push(him);
            }
        }
        head += 1;
    }
}

/// FxHash: region-graph keys are small integers, and SipHash would dominate the pass.
#[derive(Default)]
pub(crate) struct FxHasher(u64);

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.write_u64(i as u64);
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

pub(crate) type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// Edges between distinct non-background regions with the largest affinity joining them, as
/// (weight, id1 < id2), sorted descending by the whole tuple (Julia's `sort!(rev=true)`).
pub fn region_graph<L: Label>(aff: &[f32], seg: &[L], d: Dims) -> Vec<(f32, L, L)> {
    let n = d.voxels();
    let (sx, sxy) = (d.x, d.x * d.y);
    let mut edges: FxMap<(L, L), f32> = FxMap::default();
    for i in 0..n {
        let s = seg[i];
        if s == L::ZERO {
            continue;
        }
        let (z, y, x) = (i / sxy, i / sx % d.y, i % sx);
        let nbrs = [(x > 0, 1, 2), (y > 0, sx, 1), (z > 0, sxy, 0)];
        for (ok, o, c) in nbrs {
            if !ok {
                continue;
            }
            let t = seg[i - o];
            if t != L::ZERO && t != s {
                let e = edges.entry((s.min(t), s.max(t))).or_insert(0.0);
                *e = e.max(aff[c * n + i]);
            }
        }
    }
    let mut rg: Vec<(f32, L, L)> = edges.into_iter().map(|((a, b), w)| (w, a, b)).collect();
    rg.sort_unstable_by(|p, q| q.0.total_cmp(&p.0).then(q.1.cmp(&p.1)).then(q.2.cmp(&p.2)));
    rg
}

/// Disjoint sets with union by rank, as DataStructures.jl's `IntDisjointSets`: which element
/// becomes the root decides where Watershed.jl keeps a set's count, and so the dust quirk below.
struct Sets {
    parent: Vec<usize>,
    rank: Vec<u8>,
}

impl Sets {
    fn new(n: usize) -> Self {
        Sets {
            parent: (0..n).collect(),
            rank: vec![0; n],
        }
    }
    fn find(&mut self, mut x: usize) -> usize {
        let mut r = x;
        while self.parent[r] != r {
            r = self.parent[r];
        }
        while self.parent[x] != r {
            let next = self.parent[x];
            self.parent[x] = r;
            x = next;
        }
        r
    }
    /// Joins two roots; the first wins ties of rank.
    fn union_roots(&mut self, mut x: usize, mut y: usize) -> usize {
        if self.rank[x] < self.rank[y] {
            std::mem::swap(&mut x, &mut y);
        } else if self.rank[x] == self.rank[y] {
            self.rank[x] += 1;
        }
        self.parent[y] = x;
        x
    }
}

/// Outcome of [`merge_regions`].
pub struct Merged {
    pub segments: usize,
    pub revived_dust: usize,
}

/// Size-dependent single linkage, dust removal and renumbering, as Watershed.jl's
/// `mergeregions!`. Final ids go to sets in order of their smallest basin id.
///
/// Quirk kept on purpose (it is in Watershed.jl and in Zlateski's C++): the renumbering loop
/// stores each kept set's count at `counts[next_id]`, overwriting the count of whatever root has
/// that id. If that root was a dust set already passed over, a later member of it reads the
/// overwritten (large) count and the set is kept after all. `revived_dust` counts such sets.
pub fn merge_regions<L: Label>(
    seg: &mut [L],
    rg: &[(f32, L, L)],
    mut counts: Vec<u64>,
    thresholds: &[(u64, f64)],
    dust: u64,
) -> Merged {
    let mut sets = Sets::new(counts.len());
    for &(size_th, weight_th) in thresholds {
        for &(w, a, b) in rg {
            if w as f64 <= weight_th {
                break; // rg is sorted descending: no later edge passes either
            }
            let (s1, s2) = (sets.find(a.to_usize()), sets.find(b.to_usize()));
            if s1 != s2 && (counts[s1] < size_th || counts[s2] < size_th) {
                counts[s1] += counts[s2];
                counts[s2] = 0;
                let s = sets.union_roots(s1, s2);
                counts.swap(s, s1);
            }
        }
    }
    let (remap, merged) = renumber(&mut sets, &mut counts, dust);
    for v in seg.iter_mut() {
        if *v != L::ZERO {
            *v = L::from_usize(remap[sets.find(v.to_usize())]);
        }
    }
    merged
}

/// New ids per root (0 = dust), with Watershed.jl's count overwrite (see [`merge_regions`]).
fn renumber(sets: &mut Sets, counts: &mut [u64], dust: u64) -> (Vec<usize>, Merged) {
    let mut remap = vec![0usize; counts.len()];
    let mut seen_dust = vec![false; counts.len()];
    let mut revived_dust = 0;
    let mut next_id = 1;
    for id in 1..counts.len() {
        let s = sets.find(id);
        if remap[s] == 0 && counts[s] >= dust {
            revived_dust += seen_dust[s] as usize;
            remap[s] = next_id;
            counts[next_id] = counts[s];
            next_id += 1;
        } else if remap[s] == 0 {
            seen_dust[s] = true;
        }
    }
    let merged = Merged {
        segments: next_id - 1,
        revived_dust,
    };
    (remap, merged)
}

/// Watershed.jl's relative thresholds: StatsBase's `fit(Histogram, aff; nbins = 1_000_000)`
/// (bin edges on a "nice" step chosen by `histrange`, bins closed on the left) and `_percent2thd`
/// (left edge of the first bin where the running count reaches fraction * total).
pub struct Histogram {
    start: f64,
    divisor: f64,
    /// u32 is enough: at most `HIST_CAP` (< 2^32) values are counted.
    counts: Vec<u32>,
    total: u64,
}

/// Watershed.jl histograms at most this many values, the first ones in its own memory order.
const HIST_CAP: usize = 3 * 1024 * 1024 * 128;

impl Histogram {
    pub fn of(aff: &[f32]) -> Self {
        let vals = julia_order_prefix(aff);
        let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
        for part in &vals {
            for &v in *part {
                lo = lo.min(v);
                hi = hi.max(v);
            }
        }
        let (start, divisor, len) = histrange(lo, hi, 1_000_000);
        let counts = vec![0u32; len.saturating_sub(1).max(1)];
        let mut h = Histogram {
            start,
            divisor,
            counts,
            total: 0,
        };
        for part in &vals {
            for &v in *part {
                let k = h.bin(v as f64);
                h.counts[k] += 1;
            }
            h.total += part.len() as u64;
        }
        h
    }

    fn edge(&self, k: usize) -> f64 {
        (self.start + k as f64) / self.divisor
    }

    /// Last bin whose left edge is at or below `v` (Julia's `searchsortedlast` on the edges):
    /// a first guess from the scale, then exact comparisons with the edges.
    fn bin(&self, v: f64) -> usize {
        let last = self.counts.len() - 1;
        let t = v * self.divisor - self.start;
        let f = t.floor();
        let mut k = f.clamp(0.0, last as f64) as usize;
        // Far from an edge the scaled value decides; only near one do the exact comparisons run.
        let frac = t - f;
        if frac > 1e-6 && frac < 1.0 - 1e-6 && (f as usize) == k {
            return k;
        }
        while k > 0 && v < self.edge(k) {
            k -= 1;
        }
        while k < last && v >= self.edge(k + 1) {
            k += 1;
        }
        k
    }

    /// Left edge of the first bin where the cumulative count reaches `fraction` of the total.
    pub fn threshold(&self, fraction: f64) -> f64 {
        let rank = self.total as f64 * fraction;
        let mut acc = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            acc += c as u64;
            if acc as f64 >= rank {
                return self.edge(i);
            }
        }
        self.edge(self.counts.len())
    }
}

/// The values Watershed.jl histograms: Julia's column-major order of aff[x, y, z, c] (our channels
/// reversed), cut after `HIST_CAP` values.
fn julia_order_prefix(aff: &[f32]) -> Vec<&[f32]> {
    let n = aff.len() / 3;
    let mut left = HIST_CAP;
    (0..3)
        .rev()
        .map(|c| {
            let take = n.min(left);
            left -= take;
            &aff[c * n..c * n + take]
        })
        .collect()
}

/// StatsBase's `histrange(lo, hi, n, :left)` in f32 as Julia computes it for Float32 data:
/// returns (start, divisor, number of edges); edge k is (start + k) / divisor.
fn histrange(lo: f32, hi: f32, n: u32) -> (f64, f64, usize) {
    // Also catches an empty input (lo = +inf, hi = -inf): one bin at hi.
    if lo >= hi || !lo.is_finite() {
        return (hi as f64, 1.0, 2);
    }
    let bw = (hi - lo) / n as f32;
    let lbw = bw.log10();
    let (mut start, step, divisor, mut len);
    if lbw >= 0.0 {
        let mut s = 10f32.powf(lbw.floor());
        let r = bw / s;
        s *= nice(r);
        step = s;
        divisor = 1f32;
        start = s * (lo / s).floor();
        len = ((hi - start) / s).ceil();
    } else {
        let d = 10f32.powf(-lbw.floor());
        divisor = d / nice(bw * d);
        step = 1f32;
        start = (lo * divisor).floor();
        len = (hi * divisor - start).ceil();
    }
    while lo < start / divisor {
        start -= step;
    }
    while (start + (len - 1.0) * step) / divisor <= hi {
        len += 1.0;
    }
    // Edges are start/divisor + k*step/divisor; express them with step 1 on a scaled divisor.
    let scaled = divisor as f64 / step as f64;
    (start as f64 / step as f64, scaled, len as usize)
}

/// StatsBase's rounding of a bin width to 1, 2, 5 or 10 times a power of ten.
fn nice(r: f32) -> f32 {
    if r <= 1.1 {
        1.0
    } else if r <= 2.2 {
        2.0
    } else if r <= 5.5 {
        5.0
    } else {
        10.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(z: usize, y: usize, x: usize) -> Dims {
        Dims::new(z, y, x)
    }

    #[test]
    fn per_section_fragments_stay_in_their_section() {
        // One object through 3 sections of 4x4, cut in two halves (x < 2, x >= 2): in 3D the
        // watershed gives 2 fragments; per section 6, each the half in one section.
        let dims = d(3, 4, 4);
        let labels: Vec<u32> = (0..48).map(|i| 1 + (i % 4 >= 2) as u32).collect();
        let aff = crate::segment::affinities_from_labels(&labels, dims);
        let p = Params {
            low: 0.01,
            high: 0.99,
            merge: vec![],
            dust: 0,
            relative: false,
        };
        let (three, _) = watershed::<u32>(&aff, dims, &p).unwrap();
        let (per, st) = watershed_per_section::<u32>(&aff, dims, &p).unwrap();
        assert_eq!(
            three.iter().collect::<std::collections::HashSet<_>>().len(),
            2
        );
        assert_eq!(st.segments, 6);
        for i in 0..48 {
            for j in 0..48 {
                let same_section_half = i / 16 == j / 16 && labels[i] == labels[j];
                assert_eq!(per[i] == per[j], same_section_half, "voxels {i} {j}");
            }
        }
    }

    /// 1 x 1 x 5 line: x-edges (at the higher voxel) 0.9, 0.2, 0.3, 0.8 between voxels 0-1, 1-2,
    /// 2-3, 3-4. Voxel 2's best edge is 0.3 (towards 3): steepest ascent leads 2 -> 3 -> 4 ... and
    /// 3's best is 0.8 (towards 4). So basins {0, 1} and {2, 3, 4}.
    fn line() -> (Vec<f32>, Dims) {
        let mut aff = vec![0f32; 15];
        aff[10..15].copy_from_slice(&[0.0, 0.9, 0.2, 0.3, 0.8]);
        (aff, d(1, 1, 5))
    }

    #[test]
    fn steepest_ascent_keeps_maximal_edges() {
        let (aff, dims) = line();
        let sag: Vec<u32> = steepest_ascent(&aff, dims, 0.1, 0.95);
        // bits: 0x01 = -x, 0x08 = +x
        assert_eq!(sag, vec![0x08, 0x01, 0x08, 0x08, 0x01]);
        // With high = 0.25 the 0.3 edge also counts as infinite for voxel 3.
        let sag: Vec<u32> = steepest_ascent(&aff, dims, 0.1, 0.25);
        assert_eq!(sag, vec![0x08, 0x01, 0x08, 0x09, 0x01]);
        // Everything at or below low: no edges.
        let sag: Vec<u32> = steepest_ascent(&aff, dims, 0.9, 0.95);
        assert_eq!(sag, vec![0; 5]);
    }

    #[test]
    fn edges_at_high_join_even_when_low_is_as_high() {
        // 1 x 1 x 6 line, x-edges 1, 1, 0, 1, 1 (between 0-1, 1-2, 2-3, 3-4, 4-5) and
        // low = high = 1: every edge of 1 is "infinitely strong", the 0 edge is cut, so the two
        // connected runs {0, 1, 2} and {3, 4, 5} are one basin each.
        let mut aff = vec![0f32; 18];
        aff[12..18].copy_from_slice(&[0.0, 1.0, 1.0, 0.0, 1.0, 1.0]);
        let p = Params {
            low: 1.0,
            high: 1.0,
            merge: vec![],
            dust: 0,
            relative: false,
        };
        let (seg, st) = watershed::<u32>(&aff, d(1, 1, 6), &p).unwrap();
        assert_eq!(seg, vec![1, 1, 1, 2, 2, 2]);
        assert_eq!((st.basins, st.segments, st.background), (2, 2, 0));
    }

    #[test]
    fn all_ones_affinities_are_one_segment_with_the_default_thresholds() {
        // Relative thresholds of a uniform distribution are both 1.0; 1000 voxels pass the dust
        // size of 600.
        let dims = d(10, 10, 10);
        let aff = vec![1f32; 3 * dims.voxels()];
        let (seg, st) = watershed::<u32>(&aff, dims, &Params::watershed_jl()).unwrap();
        assert_eq!((st.low, st.high), (1.0, 1.0));
        assert_eq!((st.segments, st.background), (1, 0));
        assert!(seg.iter().all(|&l| l == 1));
    }

    #[test]
    fn basins_on_a_line() {
        let (aff, dims) = line();
        let mut seg: Vec<u32> = steepest_ascent(&aff, dims, 0.1, 0.95);
        divide_plateaus(&mut seg, dims);
        let (counts, bg) = find_basins(&mut seg, dims);
        assert_eq!(seg, vec![1, 1, 2, 2, 2]);
        assert_eq!((counts, bg), (vec![0, 2, 3], 0));
        let rg = region_graph(&aff, &seg, dims);
        assert_eq!(rg, vec![(0.2, 1, 2)]);
    }

    /// A plateau of three voxels at 0.5 (edges 0-1, 1-2 both 0.5) with an exit 2 -> 3 of
    /// weight 0.5 towards a pair joined by 0.9 (3-4): the plateau drains through 2, so one basin.
    #[test]
    fn non_maximal_plateau_drains_to_its_exit() {
        let mut aff = vec![0f32; 15];
        aff[10..15].copy_from_slice(&[0.0, 0.5, 0.5, 0.5, 0.9]);
        let dims = d(1, 1, 5);
        let mut seg: Vec<u32> = steepest_ascent(&aff, dims, 0.1, 0.95);
        divide_plateaus(&mut seg, dims);
        assert_eq!(seg, vec![0x08, 0x08, 0x08, 0x08, 0x01]);
        let (counts, _) = find_basins(&mut seg, dims);
        assert_eq!(seg, vec![1; 5]);
        assert_eq!(counts, vec![0, 5]);
    }

    /// Without size merges and dust the watershed skips its region graph: the result must be
    /// what building it and renumbering would give, on noisy affinities with many basins and
    /// some background.
    #[test]
    fn no_merge_no_dust_equals_the_full_renumbering() {
        let dims = d(6, 17, 19);
        let mut rng = crate::rng::Rng::new(11);
        let aff: Vec<f32> = (0..3 * dims.voxels())
            .map(|_| rng.uniform() as f32)
            .collect();
        let p = Params {
            low: 0.3,
            high: 0.97,
            merge: vec![],
            dust: 0,
            relative: false,
        };
        let (fast, st) = watershed::<u32>(&aff, dims, &p).unwrap();
        let mut seg: Vec<u32> = steepest_ascent(&aff, dims, 0.3, 0.97);
        divide_plateaus(&mut seg, dims);
        let (counts, bg) = find_basins(&mut seg, dims);
        let rg = region_graph(&aff, &seg, dims);
        assert!(counts.len() > 50 && bg > 0 && !rg.is_empty());
        let m = merge_regions(&mut seg, &rg, counts, &[], 0);
        assert_eq!(fast, seg);
        assert_eq!((st.segments, st.region_graph_edges), (m.segments, None));
        let zeros = seg.iter().filter(|&&l| l == 0).count() as u64;
        assert_eq!(st.background, zeros);
    }

    #[test]
    fn single_linkage_respects_sizes_and_dust() {
        // Basins 1 (size 2), 2 (size 3), 3 (size 1); edges 1-2 at 0.7, 2-3 at 0.4.
        let mut seg: Vec<u32> = vec![1, 1, 2, 2, 2, 3];
        let rg = vec![(0.7, 1u32, 2u32), (0.4, 2, 3)];
        let counts = vec![0, 2, 3, 1];
        // Size 3: 1 (2 < 3) merges into 2 -> size 5; 3 (1 < 3) merges too -> 6. One segment.
        let m = merge_regions(&mut seg.clone(), &rg, counts.clone(), &[(3, 0.3)], 0);
        assert_eq!(m.segments, 1);
        // Weight 0.5 stops before the 0.4 edge: {1,2} and {3}; dust 2 removes {3}.
        let m = merge_regions(&mut seg, &rg, counts, &[(3, 0.5)], 2);
        assert_eq!(seg, vec![1, 1, 1, 1, 1, 0]);
        assert_eq!((m.segments, m.revived_dust), (1, 0));
    }

    #[test]
    fn renumbering_revives_dust_like_watershed_jl() {
        // Basins 1..=6 with counts 5, 5, 2, 0, 10, 0; basins 3, 4 and 6 form one set rooted at 3
        // (count 2). Dust 3. Ids 1 and 2 become 1 and 2; at id 3 the set is dust and next_id stays
        // 3; id 5 becomes 3 and its count 10 is written to counts[3], the dust set's root; at id
        // 6 that set now reads 10 and is kept as id 4. Watershed.jl does the same.
        let mut sets_counts = vec![0u64, 5, 5, 2, 0, 10, 0];
        let mut sets = Sets::new(7);
        sets.union_roots(3, 4);
        sets.union_roots(3, 6);
        let (remap, m) = renumber(&mut sets, &mut sets_counts, 3);
        assert_eq!((remap[1], remap[2], remap[3], remap[5]), (1, 2, 4, 3));
        assert_eq!((m.segments, m.revived_dust), (4, 1));
    }

    #[test]
    fn histrange_matches_statsbase_on_unit_range() {
        // lo = 0, hi = 1, 1e6 bins: step 1e-6, edges k / 1e6, last edge above hi.
        let (start, div, len) = histrange(0.0, 1.0, 1_000_000);
        assert_eq!((start, div, len), (0.0, 1e6, 1_000_002));
        // A narrower range keeps the nice 1e-6 step but starts at floor(lo * 1e6).
        let (start, div, _) = histrange(0.25, 0.75, 1_000_000);
        assert_eq!((start, div), (500_000.0, 2e6));
    }

    #[test]
    fn relative_threshold_is_left_edge_of_reaching_bin() {
        // 10 values 0.0, 0.1, ..., 0.9 and two 1.0: total 12. Fraction 0.5 -> rank 6 reached at
        // the 6th value, 0.5, whose bin's left edge is 0.5 (to the 1e-6 grid).
        let mut v: Vec<f32> = (0..10).map(|i| i as f32 / 10.0).collect();
        v.extend([1.0, 1.0]);
        let h = Histogram::of(&v);
        assert!((h.threshold(0.5) - 0.5).abs() < 1.5e-6);
        assert_eq!(h.threshold(0.0), 0.0);
        assert!((h.threshold(1.0) - 1.0).abs() < 1.5e-6);
    }
}

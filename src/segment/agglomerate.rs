//! Agglomeration of watershed fragments as waterz does it (Funke et al. 2018): a region graph
//! whose edges gather every voxel edge between two fragments, merged lowest score first.
//!
//! Scores are exact: an edge keeps the sum and count of its affinities (and a 256-bin histogram
//! for quantile scores); when two regions merge, the edges they share with a third region are
//! combined and re-queued with the new score at once, so the queue never works from a stale score
//! (waterz re-scores lazily when a stale edge reaches the top, which can merge late).
//!
//! Built for volumes of millions of fragments and tens of millions of edges:
//! - the region graph is gathered in one pass over the sections, with a hash map holding only the
//!   edges that can still grow (those of fragments reaching the current section), so the map stays
//!   the size of a few sections' edges; edges are numbered by their first voxel edge in scan order
//!   and sums are added in scan order, whatever the volume's size;
//! - edge statistics are columns (endpoints, sum, count: 20 bytes an edge) and each region's
//!   neighbours a sorted run in one shared arena, not a hash map per region;
//! - scores only fall towards the smallest one left as regions merge (a merged edge's mean lies
//!   between its parts'), so the queue is monotone: a bucket queue over [0, largest threshold),
//!   exact within the current bucket, holding nothing that can no longer merge.
//! The merge order, and so every segmentation, is the one of a binary heap over (score, edge id).

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
    /// Seconds spent building the region graph and merging (for `revseg bench segment`).
    pub seconds_graph: f64,
    pub seconds_merge: f64,
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

/// What the queue reads of an edge, in one cache line: its sum, count and first endpoint;
/// `count == 0` marks an edge retired into another.
#[derive(Clone, Copy)]
struct Stat {
    sum: f64,
    count: u32,
    a: u32,
}

/// Edge statistics; the second endpoint apart, as only merges read it.
struct Edges {
    stat: Vec<Stat>,
    b: Vec<u32>,
    /// Per edge, BINS counts, only for quantile scores.
    hist: Vec<u32>,
}

impl Edges {
    fn len(&self) -> usize {
        self.b.len()
    }

    fn alive(&self, e: u32) -> bool {
        self.stat[e as usize].count != 0
    }
}

/// Each region's neighbours as a run of (neighbour, edge) sorted by neighbour, in one arena.
/// Runs that outgrow their room move to the arena's end; the arena is compacted in place when a
/// third of it is left behind.
struct Adjacency {
    arena: Vec<(u32, u32)>,
    /// Per region, where its run lies: one record, so that a neighbour's run is found with one
    /// cache miss (the merge loop is bound by such random reads).
    runs: Vec<Run>,
    dead: usize,
}

#[derive(Clone, Copy, Default)]
struct Run {
    start: u32,
    len: u32,
    cap: u32,
}

impl Adjacency {
    /// From the edges' endpoints, in edge-id order within each region, then sorted by neighbour.
    fn build(e: &Edges, n_ids: usize) -> Result<Self> {
        let mut runs = vec![Run::default(); n_ids];
        for i in 0..e.len() {
            runs[e.stat[i].a as usize].len += 1;
            runs[e.b[i] as usize].len += 1;
        }
        let total = 2 * e.len();
        if total > u32::MAX as usize {
            return Err(Error::Invalid(format!(
                "{} region-graph edges: beyond this agglomeration's 2^31 edges; segment in blocks",
                e.len()
            )));
        }
        let mut acc = 0u32;
        for r in runs.iter_mut() {
            r.start = acc;
            r.cap = r.len;
            acc += r.len;
            // `len` counts the entries filled in so far.
            r.len = 0;
        }
        let mut arena = vec![(0u32, 0u32); total];
        for i in 0..e.len() {
            let (a, b) = (e.stat[i].a as usize, e.b[i] as usize);
            let ra = &mut runs[a];
            arena[(ra.start + ra.len) as usize] = (b as u32, i as u32);
            ra.len += 1;
            let rb = &mut runs[b];
            arena[(rb.start + rb.len) as usize] = (a as u32, i as u32);
            rb.len += 1;
        }
        for r in &runs {
            arena[r.start as usize..(r.start + r.len) as usize].sort_unstable();
        }
        Ok(Adjacency {
            arena,
            runs,
            dead: 0,
        })
    }

    /// Asks for `r`'s run record and the first entries of its run to be brought into cache.
    #[inline(always)]
    fn prefetch_record(&self, r: u32) {
        prefetch(&self.runs[r as usize]);
    }
    #[inline(always)]
    fn prefetch_run(&self, r: u32) {
        let run = self.runs[r as usize];
        if run.len > 0 {
            prefetch(&self.arena[run.start as usize]);
            prefetch(&self.arena[(run.start + run.len - 1) as usize]);
        }
    }

    fn run(&self, r: u32) -> &[(u32, u32)] {
        let run = self.runs[r as usize];
        &self.arena[run.start as usize..(run.start + run.len) as usize]
    }

    fn degree(&self, r: u32) -> usize {
        self.runs[r as usize].len as usize
    }

    /// Position of `nb` in `r`'s run.
    fn find(&self, r: u32, nb: u32) -> Option<usize> {
        self.run(r).binary_search_by_key(&nb, |&(n, _)| n).ok()
    }

    /// In `r`'s run, the entry for `old` becomes (`new`, `edge`), kept sorted.
    fn rename(&mut self, r: u32, old: u32, new: u32, edge: u32) {
        let Run { start, len, .. } = self.runs[r as usize];
        let run = &mut self.arena[start as usize..(start + len) as usize];
        let Ok(i) = run.binary_search_by_key(&old, |&(n, _)| n) else {
            return;
        };
        let j = run.partition_point(|&(n, _)| n < new);
        if j > i {
            run.copy_within(i + 1..j, i);
            run[j - 1] = (new, edge);
        } else {
            run.copy_within(j..i, j + 1);
            run[j] = (new, edge);
        }
    }

    /// Removes the entry for `nb` from `r`'s run.
    fn remove(&mut self, r: u32, nb: u32) {
        if let Some(i) = self.find(r, nb) {
            let run = &mut self.runs[r as usize];
            let (s, l) = (run.start as usize, run.len as usize);
            run.len -= 1;
            self.arena.copy_within(s + i + 1..s + l, s + i);
            self.dead += 1;
        }
    }

    /// Replaces `r`'s run by `items` (sorted), moving it to the arena's end when it has no room.
    fn set(&mut self, r: u32, items: &[(u32, u32)]) {
        let ri = r as usize;
        let run = self.runs[ri];
        if items.len() <= run.cap as usize {
            let s = run.start as usize;
            self.arena[s..s + items.len()].copy_from_slice(items);
            self.dead += run.len as usize - items.len().min(run.len as usize);
        } else {
            self.dead += run.cap as usize;
            if self.arena.len() + items.len() > u32::MAX as usize {
                self.compact();
            }
            self.runs[ri].start = self.arena.len() as u32;
            self.runs[ri].cap = items.len() as u32;
            self.arena.extend_from_slice(items);
        }
        self.runs[ri].len = items.len() as u32;
    }

    /// Frees `r`'s run.
    fn clear(&mut self, r: u32) {
        let run = &mut self.runs[r as usize];
        self.dead += run.cap as usize;
        run.len = 0;
        run.cap = 0;
    }

    fn maybe_compact(&mut self) {
        if self.dead > self.arena.len() / 3 && self.dead > COMPACT_MIN {
            self.compact();
        }
    }

    /// In place: runs move down in the order they lie, so none is overwritten before it moves.
    fn compact(&mut self) {
        let mut order: Vec<u32> = (0..self.runs.len() as u32)
            .filter(|&r| self.runs[r as usize].len > 0)
            .collect();
        order.sort_unstable_by_key(|&r| self.runs[r as usize].start);
        let mut w = 0usize;
        for r in order {
            let run = &mut self.runs[r as usize];
            let (s, l) = (run.start as usize, run.len as usize);
            self.arena.copy_within(s..s + l, w);
            run.start = w as u32;
            run.cap = l as u32;
            w += l;
        }
        for run in self.runs.iter_mut() {
            if run.len == 0 {
                run.cap = 0;
            }
        }
        self.arena.truncate(w);
        self.arena.shrink_to_fit();
        self.dead = 0;
    }
}

/// A hint that `v` will be read soon (random reads of the merge loop overlap instead of
/// queueing one after another).
#[inline(always)]
fn prefetch<T>(v: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetching is a hint with no effect on memory, valid for any address.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>((v as *const T).cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = v;
}

/// Least garbage worth a compaction (small under test, so that tests compact).
#[cfg(not(test))]
const COMPACT_MIN: usize = 1 << 16;
#[cfg(test)]
const COMPACT_MIN: usize = 8;

/// Monotone priority queue of (score bits, edge): every key pushed is at least (up to rounding)
/// the last one popped, so buckets above the current one are plain lists of edges and only the
/// current bucket is a heap. Keys at or above `limit` are dropped: nothing merges there.
///
/// A bucket keeps edge ids alone; their keys are read again when it becomes current. An edge
/// whose score changed since has been pushed anew where its new score belongs, so an entry whose
/// key now falls outside its bucket is dropped there.
struct Queue {
    buckets: Vec<Vec<u32>>,
    scale: f64,
    limit: u64,
    cur: usize,
    heap: BinaryHeap<Reverse<(u64, u32)>>,
}

const BUCKETS: usize = 1 << 14;

impl Queue {
    fn new(limit: f64) -> Self {
        let limit = limit.max(0.0);
        Queue {
            buckets: vec![Vec::new(); BUCKETS],
            scale: if limit > 0.0 {
                BUCKETS as f64 / limit
            } else {
                0.0
            },
            limit: limit.to_bits(),
            cur: 0,
            heap: BinaryHeap::new(),
        }
    }

    fn bucket(&self, key: u64) -> usize {
        ((f64::from_bits(key) * self.scale) as usize).min(BUCKETS - 1)
    }

    fn push(&mut self, key: u64, e: u32) {
        if key >= self.limit {
            return;
        }
        let b = self.bucket(key);
        if b <= self.cur {
            self.heap.push(Reverse((key, e)));
        } else {
            self.buckets[b].push(e);
        }
    }

    /// The smallest entry, without removing it; `key_of` gives an edge's current key.
    fn peek(&mut self, key_of: impl Fn(u32) -> u64) -> Option<(u64, u32)> {
        while self.heap.is_empty() {
            if self.cur + 1 >= BUCKETS {
                return None;
            }
            self.cur += 1;
            let v = std::mem::take(&mut self.buckets[self.cur]);
            let cur = self.cur;
            let heap: Vec<_> = v
                .into_iter()
                .filter_map(|e| {
                    let k = key_of(e);
                    (k < self.limit && self.bucket(k) == cur).then_some(Reverse((k, e)))
                })
                .collect();
            self.heap = heap.into();
        }
        self.heap.peek().map(|r| r.0)
    }

    fn pop(&mut self) {
        self.heap.pop();
    }
}

/// The region graph of a fragment volume: build it while the affinities are at hand, then
/// agglomerate after they are dropped.
pub struct RegionGraph {
    edges: Edges,
    n_ids: usize,
    score: Score,
    pub seconds_build: f64,
}

impl RegionGraph {
    pub fn build<L: Label>(aff: &[f32], fragments: &[L], dims: Dims, score: Score) -> Result<Self> {
        Self::build_with(aff, fragments, dims, score, false)
    }

    /// As [`RegionGraph::build`], consuming the affinities: each section's memory goes back to
    /// the operating system as soon as the scan has passed it, so that the growing graph takes
    /// the place of the affinities instead of adding to them (the peak of a whole-volume run).
    pub fn build_consuming<L: Label>(
        aff: Vec<f32>,
        fragments: &[L],
        dims: Dims,
        score: Score,
    ) -> Result<Self> {
        Self::build_with(&aff, fragments, dims, score, true)
    }

    fn build_with<L: Label>(
        aff: &[f32],
        fragments: &[L],
        dims: Dims,
        score: Score,
        release: bool,
    ) -> Result<Self> {
        check_inputs(aff, fragments, dims, score)?;
        let t0 = std::time::Instant::now();
        let n_ids = max_id(fragments)? + 1;
        let edges = build_edges(aff, fragments, dims, n_ids, score, release)?;
        Ok(RegionGraph {
            edges,
            n_ids,
            score,
            seconds_build: t0.elapsed().as_secs_f64(),
        })
    }

    pub fn edges(&self) -> usize {
        self.edges.len()
    }

    /// A mean-score graph from statistics gathered elsewhere (blockwise jobs sum each block's
    /// voxel edges): `(a, b, sum, count)` with `0 < a < b < n_ids`, one entry per pair. The order
    /// given numbers the edges, which breaks ties between equal scores.
    pub fn from_mean_stats(n_ids: usize, edges: &[(u32, u32, f64, u64)]) -> Result<Self> {
        if n_ids > u32::MAX as usize {
            return Err(Error::Invalid(format!(
                "{n_ids} fragments: beyond this agglomeration's 2^32 ids"
            )));
        }
        let mut g = Edges {
            stat: Vec::with_capacity(edges.len()),
            b: Vec::with_capacity(edges.len()),
            hist: Vec::new(),
        };
        for (k, &(a, b, sum, count)) in edges.iter().enumerate() {
            if a == 0 || a >= b || b as usize >= n_ids {
                return Err(Error::Invalid(format!(
                    "region-graph edge {k} joins fragments {a} and {b}: expected 0 < a < b < {n_ids}"
                )));
            }
            if count == 0 {
                return Err(Error::Invalid(format!(
                    "region-graph edge {k} ({a}, {b}) counts no voxel edges"
                )));
            }
            let count = u32::try_from(count).map_err(|_| too_many_voxel_edges())?;
            if !(sum.is_finite() && sum >= 0.0 && sum <= count as f64) {
                return Err(Error::Invalid(format!(
                    "region-graph edge {k} ({a}, {b}): sum {sum} of {count} affinities is not in [0, count]"
                )));
            }
            g.stat.push(Stat { sum, count, a });
            g.b.push(b);
        }
        Ok(RegionGraph {
            edges: g,
            n_ids,
            score: Score::OneMinusMean,
            seconds_build: 0.0,
        })
    }

    /// Merges lowest score first; one snapshot per threshold (see [`agglomerate`]).
    pub fn agglomerate(self, thresholds: &[f64]) -> Result<Agglomeration> {
        if let Some(t) = thresholds.iter().find(|t| !t.is_finite()) {
            return Err(Error::Invalid(format!(
                "agglomeration threshold {t} is not a finite number"
            )));
        }
        let t0 = std::time::Instant::now();
        let RegionGraph {
            mut edges,
            n_ids,
            score,
            seconds_build,
        } = self;
        let n_edges = edges.len();
        let mut adj = Adjacency::build(&edges, n_ids)?;
        let mut order: Vec<usize> = (0..thresholds.len()).collect();
        order.sort_by(|&i, &j| thresholds[i].total_cmp(&thresholds[j]));
        let limit = order.last().map_or(0.0, |&i| thresholds[i]);
        let mut q = Queue::new(limit);
        for e in 0..n_edges as u32 {
            q.push(score_key(&edges, e, score), e);
        }
        let mut m = Merger::new(n_ids);
        let mut maps = vec![Vec::new(); thresholds.len()];
        let mut merges = vec![0; thresholds.len()];
        let mut next = 0;
        let mut scratch = Vec::new();
        let mut changed = Vec::new();
        while next < order.len() {
            let Some((key, e)) = q.peek(|e| {
                if edges.alive(e) {
                    score_key(&edges, e, score)
                } else {
                    u64::MAX
                }
            }) else {
                break;
            };
            if !edges.alive(e) || score_key(&edges, e, score) != key {
                q.pop();
                continue;
            }
            if f64::from_bits(key) >= thresholds[order[next]] {
                maps[order[next]] = m.snapshot();
                merges[order[next]] = m.merges;
                next += 1;
                continue;
            }
            q.pop();
            changed.clear();
            m.merge(&mut edges, &mut adj, e, &mut scratch, &mut changed)?;
            for &c in &changed {
                q.push(score_key(&edges, c, score), c);
            }
            adj.maybe_compact();
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
            edges: n_edges,
            seconds_graph: seconds_build,
            seconds_merge: t0.elapsed().as_secs_f64(),
        })
    }
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
    RegionGraph::build(aff, fragments, dims, score)?.agglomerate(thresholds)
}

fn check_inputs<L: Label>(aff: &[f32], fragments: &[L], dims: Dims, score: Score) -> Result<()> {
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

/// One pass in scan order (voxel by voxel, z then y then x edge): an edge is numbered at its first
/// voxel edge and its affinities are summed in scan order. The map holds an edge only while one
/// of its fragments can still add to it: a fragment whose last section is z contributes nothing
/// after section z + 1.
fn build_edges<L: Label>(
    aff: &[f32],
    frag: &[L],
    d: Dims,
    n_ids: usize,
    score: Score,
    release: bool,
) -> Result<Edges> {
    let n = d.voxels();
    let sxy = d.x * d.y;
    let quantile = matches!(score, Score::OneMinusQuantile(_));
    let mut last_z = vec![0u32; n_ids];
    for z in 0..d.z {
        for &f in &frag[z * sxy..(z + 1) * sxy] {
            last_z[f.to_usize()] = z as u32;
        }
    }
    let mut g = Edges {
        stat: Vec::new(),
        b: Vec::new(),
        hist: Vec::new(),
    };
    let mut open: FxMap<u64, u32> = FxMap::default();
    let (az, ay, ax) = (&aff[..n], &aff[n..2 * n], &aff[2 * n..3 * n]);
    for z in 0..d.z {
        for y in 0..d.y {
            let row = (z * d.y + y) * d.x;
            for x in 0..d.x {
                let i = row + x;
                let s = frag[i].to_usize() as u32;
                if s == 0 {
                    continue;
                }
                for (ok, o, a) in [(z > 0, sxy, az), (y > 0, d.x, ay), (x > 0, 1, ax)] {
                    if !ok {
                        continue;
                    }
                    let t = frag[i - o].to_usize() as u32;
                    if t == 0 || t == s {
                        continue;
                    }
                    let (lo, hi) = (s.min(t), s.max(t));
                    let key = (lo as u64) << 32 | hi as u64;
                    let e = *open.entry(key).or_insert_with(|| {
                        g.stat.push(Stat {
                            sum: 0.0,
                            count: 0,
                            a: lo,
                        });
                        g.b.push(hi);
                        if quantile {
                            g.hist.extend([0u32; BINS]);
                        }
                        (g.b.len() - 1) as u32
                    });
                    add_affinity(&mut g, e, a[i], quantile)?;
                }
            }
        }
        if release {
            for c in 0..3 {
                let section = &aff[c * n + z * sxy..c * n + (z + 1) * sxy];
                // SAFETY: section z of every channel has been read for the last time (later
                // sections read only their own), and the caller gave up the affinities.
                unsafe {
                    crate::alloc::release_pages(section.as_ptr().cast(), size_of_val(section))
                };
            }
        }
        // Edges whose fragments cannot reach section z + 1 are complete.
        let z = z as u32;
        open.retain(|&k, _| {
            let (lo, hi) = ((k >> 32) as usize, (k & 0xffff_ffff) as usize);
            last_z[lo].min(last_z[hi]) + 1 > z
        });
    }
    Ok(g)
}

fn add_affinity(g: &mut Edges, e: u32, a: f32, quantile: bool) -> Result<()> {
    let e = e as usize;
    let st = &mut g.stat[e];
    st.sum += a as f64;
    st.count = st.count.checked_add(1).ok_or_else(too_many_voxel_edges)?;
    if quantile {
        let bin = ((a * (BINS - 1) as f32) as usize).min(BINS - 1);
        let h = &mut g.hist[e * BINS + bin];
        *h = h.saturating_add(1);
    }
    Ok(())
}

fn too_many_voxel_edges() -> Error {
    Error::Invalid(
        "two regions share more than 2^32 voxel edges: beyond this agglomeration's counters; segment in blocks"
            .into(),
    )
}

/// Scores are in [0, 1], where f64 bit patterns order like the values: the queue compares bits.
fn score_key(g: &Edges, e: u32, score: Score) -> u64 {
    let e = e as usize;
    let st = g.stat[e];
    let v = match score {
        Score::OneMinusMean => 1.0 - st.sum / st.count as f64,
        Score::OneMinusQuantile(q) => {
            let h = &g.hist[e * BINS..(e + 1) * BINS];
            1.0 - quantile_value(h, st.count as u64, q)
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

    /// Merges the two regions of edge `e` (its endpoints as stored may be regions merged away
    /// since; they resolve to roots). The region with more neighbours keeps its id and the other is folded into it; the edges whose
    /// statistics changed are appended to `changed`.
    fn merge(
        &mut self,
        g: &mut Edges,
        adj: &mut Adjacency,
        e: u32,
        merged: &mut Vec<(u32, u32)>,
        changed: &mut Vec<u32>,
    ) -> Result<()> {
        // Endpoints are not renamed when a region merges away (that would be one more random
        // write per edge of the smaller region): they resolve to the current regions here.
        let (a, b) = (self.find(g.stat[e as usize].a), self.find(g.b[e as usize]));
        g.stat[e as usize].count = 0;
        let (keep, gone) = if adj.degree(a) >= adj.degree(b) {
            (a, b)
        } else {
            (b, a)
        };
        self.parent[gone as usize] = keep;
        self.smallest[keep as usize] =
            self.smallest[keep as usize].min(self.smallest[gone as usize]);
        self.merges += 1;
        // keep's new run: both runs merged by neighbour, without each other; where both have a
        // neighbour, gone's edge is combined into keep's.
        // The walk below reads, for each neighbour of `gone`, its run record, its run and the
        // edge's statistics, all at random places: ask for them all first so that the misses
        // overlap.
        for &(gn, e2) in adj.run(gone) {
            adj.prefetch_record(gn);
            prefetch(&g.stat[e2 as usize]);
        }
        for &(gn, _) in adj.run(gone) {
            adj.prefetch_run(gn);
        }
        merged.clear();
        let (mut i, mut j) = (0, 0);
        let (kl, gl) = (adj.degree(keep), adj.degree(gone));
        while i < kl || j < gl {
            let kr = adj.run(keep);
            let gr = adj.run(gone);
            let ke = kr.get(i).copied();
            let ge = gr.get(j).copied();
            match (ke, ge) {
                (Some((kn, _)), _) if kn == gone => i += 1,
                (_, Some((gn, _))) if gn == keep => j += 1,
                (Some((kn, e1)), Some((gn, e2))) if kn == gn => {
                    combine(g, e1, e2)?;
                    changed.push(e1);
                    adj.remove(gn, gone);
                    merged.push((kn, e1));
                    i += 1;
                    j += 1;
                }
                (Some((kn, e1)), Some((gn, _))) if kn < gn => {
                    merged.push((kn, e1));
                    i += 1;
                }
                (Some((kn, e1)), None) => {
                    merged.push((kn, e1));
                    i += 1;
                }
                (_, Some((gn, e2))) => {
                    adj.rename(gn, gone, keep, e2);
                    merged.push((gn, e2));
                    j += 1;
                }
                (None, None) => break,
            }
        }
        adj.clear(gone);
        adj.set(keep, merged);
        Ok(())
    }
}

/// Adds edge `from`'s statistics to `into` (sums, counts, histograms add exactly) and retires it.
fn combine(g: &mut Edges, into: u32, from: u32) -> Result<()> {
    let (i, f) = (into as usize, from as usize);
    let from_stat = g.stat[f];
    let st = &mut g.stat[i];
    st.sum += from_stat.sum;
    st.count = st
        .count
        .checked_add(from_stat.count)
        .ok_or_else(too_many_voxel_edges)?;
    g.stat[f].count = 0;
    if !g.hist.is_empty() {
        let (i, f) = (i * BINS, f * BINS);
        for k in 0..BINS {
            g.hist[i + k] = g.hist[i + k].saturating_add(g.hist[f + k]);
        }
    }
    Ok(())
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

    /// Agglomeration the slow way: every step recomputes every pair of adjacent regions' mean from
    /// the voxel edges and merges the lowest. Random continuous affinities leave no ties.
    fn naive(aff: &[f32], frag: &[u32], d: Dims, thresholds: &[f64]) -> Vec<Vec<u32>> {
        let n = d.voxels();
        let mut seg: Vec<u32> = frag.to_vec();
        let mut sorted: Vec<f64> = thresholds.to_vec();
        sorted.sort_by(f64::total_cmp);
        let mut snaps: Vec<(f64, Vec<u32>)> = Vec::new();
        let mut ti = 0;
        loop {
            let mut stats: std::collections::BTreeMap<(u32, u32), (f64, u64)> = Default::default();
            for z in 0..d.z {
                for y in 0..d.y {
                    for x in 0..d.x {
                        let i = (z * d.y + y) * d.x + x;
                        for (ok, o, c) in [(z > 0, d.x * d.y, 0), (y > 0, d.x, 1), (x > 0, 1, 2)] {
                            let (s, t) = (seg[i], if ok { seg[i - o] } else { 0 });
                            if ok && s != 0 && t != 0 && s != t {
                                let v = stats.entry((s.min(t), s.max(t))).or_default();
                                v.0 += aff[c * n + i] as f64;
                                v.1 += 1;
                            }
                        }
                    }
                }
            }
            let best = stats
                .iter()
                .map(|(&k, &(sum, c))| (1.0 - sum / c as f64, k))
                .min_by(|a, b| a.0.total_cmp(&b.0));
            while ti < sorted.len() && best.is_none_or(|b| b.0 >= sorted[ti]) {
                snaps.push((sorted[ti], seg.clone()));
                ti += 1;
            }
            let Some((_, (a, b))) = best else { break };
            if ti == sorted.len() {
                break;
            }
            for v in seg.iter_mut() {
                if *v == b {
                    *v = a;
                }
            }
        }
        thresholds
            .iter()
            .map(|t| snaps.iter().find(|s| s.0 == *t).unwrap().1.clone())
            .collect()
    }

    /// Random fragments (boxes of random sizes, some split across sections) and random
    /// affinities: the fast agglomeration equals the naive one at every threshold, through many
    /// merges, arena moves and compactions.
    #[test]
    fn equals_naive_agglomeration_on_random_volumes() {
        let mut rng = crate::rng::Rng::new(11);
        for trial in 0..6 {
            let d = Dims::new(3 + trial % 3, 10, 11);
            let n = d.voxels();
            let mut frag = vec![0u32; n];
            let mut next = 1u32;
            for z in 0..d.z {
                for y in 0..d.y {
                    for x in 0..d.x {
                        let i = (z * d.y + y) * d.x + x;
                        frag[i] = if rng.uniform() < 0.03 {
                            0
                        } else if x > 0 && rng.uniform() < 0.6 {
                            frag[i - 1]
                        } else if y > 0 && rng.uniform() < 0.5 {
                            frag[i - d.x]
                        } else if z > 0 && rng.uniform() < 0.5 {
                            frag[i - d.x * d.y]
                        } else {
                            next += 1;
                            next - 1
                        };
                    }
                }
            }
            let aff: Vec<f32> = (0..3 * n).map(|_| rng.uniform() as f32).collect();
            let ts = [0.45, 0.3, 0.6, 0.52];
            let fast = agglomerate(&aff, &frag, d, &ts, Score::OneMinusMean).unwrap();
            let slow = naive(&aff, &frag, d, &ts);
            for (t, want) in slow.iter().enumerate() {
                let got = fast.apply(t, &frag);
                // Same partition: ids may differ (naive keeps the edge's first id).
                let mut pairs = std::collections::HashMap::new();
                for (g, w) in got.iter().zip(want) {
                    assert_eq!(
                        *pairs.entry(*g).or_insert(*w),
                        *w,
                        "trial {trial} t {}",
                        ts[t]
                    );
                }
                let distinct = |v: &[u32]| v.iter().collect::<std::collections::HashSet<_>>().len();
                assert_eq!(distinct(&got), distinct(want), "trial {trial} t {}", ts[t]);
            }
            assert!(fast.merges.iter().max().unwrap() > &20, "{:?}", fast.merges);
        }
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

//! `revseg bench segment`: time and peak memory of watershed + agglomeration on a synthetic
//! affinity volume (SNEMI3D's 100 x 1024 x 1024 by default).
//!
//! The volume: a jittered-grid Voronoi partition (one seed per cell of 5 x 64 x 64 voxels, z
//! distances weighted by 5 for EM's anisotropy, each voxel choosing among the seeds of the 27
//! cells around it). Like a network's output, the affinities fall smoothly towards borders: with
//! b the distance margin between a voxel's nearest and second-nearest seed, scaled to reach 1 at
//! 12 units, an edge inside a region gets min(b) * (0.9 + 0.1u) and one across a border 0.1u
//! (u uniform in [0, 1)). The watershed runs with Watershed.jl's thresholds taken as absolute
//! values (low 0.1, high 0.8, merge (800, 0.2), dust 600).

use crate::error::{Error, Result};
use crate::json::{self, Json};
use crate::rng::Rng;
use crate::segment::agglomerate::{RegionGraph, Score};
use crate::segment::watershed::{watershed, Params};
use crate::segment::{fits_u32, Dims};
use clap::Args;
use std::time::Instant;

#[derive(Args, Debug, Clone)]
pub struct SegmentBenchArgs {
    /// Volume Z,Y,X.
    #[arg(long, default_value = "100,1024,1024")]
    pub size: String,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Agglomeration thresholds.
    #[arg(long, default_value = "0.1,0.3,0.5")]
    pub thresholds: String,
    /// Watershed settings: `jl` (Watershed.jl's defaults as absolute thresholds: few, large
    /// fragments) or `waterz` (waterz's 0.0001 / 0.9999 without size merges: millions of small
    /// fragments, the agglomeration's hard case).
    #[arg(long, default_value = "jl")]
    pub watershed: String,
    /// Write the synthetic affinities (DIR/affinities.zarr, float32 (3, Z, Y, X)) and their
    /// labels (DIR/labels.zarr, uint32) instead of segmenting, to run `revseg segment` on them.
    #[arg(long)]
    pub write_volumes: Option<std::path::PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Debug)]
pub struct SegmentBench {
    pub dims: Dims,
    pub regions: usize,
    pub fragments: usize,
    pub edges: usize,
    pub seconds_generate: f64,
    pub seconds_watershed: f64,
    pub seconds_agglomerate: f64,
    /// Of `seconds_agglomerate`: building the region graph, then merging.
    pub seconds_graph: f64,
    pub seconds_merge: f64,
    /// Peak resident memory while segmenting (VmHWM reset after the volume was made), bytes.
    pub peak_segment_bytes: Option<u64>,
    /// Peak resident memory of the whole process, generation included, bytes.
    pub peak_process_bytes: Option<u64>,
    pub affinity_bytes: u64,
    /// Per threshold: segments, and an FNV-1a hash of the fragment-to-segment map, so that two
    /// agglomeration implementations can be compared on volumes too large to keep.
    pub segments: Vec<usize>,
    pub map_hashes: Vec<u64>,
}

/// FNV-1a over the map's u32 words: equal hashes mean (barring collisions) equal segmentations.
pub fn map_hash(map: &[u32]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &v in map {
        for b in v.to_le_bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

fn segment_count(map: &[u32]) -> usize {
    let mut roots: Vec<u32> = map.iter().copied().filter(|&v| v != 0).collect();
    roots.sort_unstable();
    roots.dedup();
    roots.len()
}

/// VmHWM of this process in bytes, when /proc tells it.
pub fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Resets VmHWM to the current RSS (Linux: "5" to clear_refs); false where that is not allowed.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Jittered-grid Voronoi labels 1.. and border margins (see module doc); also the region count.
pub fn voronoi_labels(d: Dims, cell: [usize; 3], rng: &mut Rng) -> (Vec<u32>, Vec<f32>, usize) {
    let g = [
        d.z.div_ceil(cell[0]),
        d.y.div_ceil(cell[1]),
        d.x.div_ceil(cell[2]),
    ];
    let seeds: Vec<[f64; 3]> = (0..g[0] * g[1] * g[2])
        .map(|k| {
            let c = [k / (g[1] * g[2]), k / g[2] % g[1], k % g[2]];
            std::array::from_fn(|a| (c[a] as f64 + rng.uniform()) * cell[a] as f64)
        })
        .collect();
    let mut labels = vec![0u32; d.voxels()];
    let mut margin = vec![0f32; d.voxels()];
    let mut i = 0;
    for z in 0..d.z {
        for y in 0..d.y {
            for x in 0..d.x {
                let (k, d1, d2) = nearest_seeds(&seeds, g, cell, [z, y, x]);
                labels[i] = k as u32 + 1;
                margin[i] = ((d2.sqrt() - d1.sqrt()) / 12.0).min(1.0) as f32;
                i += 1;
            }
        }
    }
    (labels, margin, seeds.len())
}

/// The nearest seed and the squared distances to the nearest and the second nearest.
fn nearest_seeds(
    seeds: &[[f64; 3]],
    g: [usize; 3],
    cell: [usize; 3],
    p: [usize; 3],
) -> (usize, f64, f64) {
    let c: [usize; 3] = std::array::from_fn(|a| p[a] / cell[a]);
    let range = |a: usize| c[a].saturating_sub(1)..=(c[a] + 1).min(g[a] - 1);
    let (mut best, mut d1, mut d2) = (0, f64::INFINITY, f64::INFINITY);
    for cz in range(0) {
        for cy in range(1) {
            for cx in range(2) {
                let k = (cz * g[1] + cy) * g[2] + cx;
                let s = seeds[k];
                let dz = (s[0] - p[0] as f64) * 5.0;
                let (dy, dx) = (s[1] - p[1] as f64, s[2] - p[2] as f64);
                let dist = dz * dz + dy * dy + dx * dx;
                if dist < d1 {
                    (best, d2, d1) = (k, d1, dist);
                } else if dist < d2 {
                    d2 = dist;
                }
            }
        }
    }
    (best, d1, d2)
}

/// Affinities of a label volume with smooth border dips and noise (see module doc), channel 0 = z.
pub fn noisy_affinities(labels: &[u32], margin: &[f32], d: Dims, rng: &mut Rng) -> Vec<f32> {
    let n = d.voxels();
    let mut aff = vec![0f32; 3 * n];
    let steps = [d.y * d.x, d.x, 1];
    for (c, &s) in steps.iter().enumerate() {
        for i in 0..n {
            let has = match c {
                0 => i >= s,
                1 => !(i / d.x).is_multiple_of(d.y),
                _ => !i.is_multiple_of(d.x),
            };
            if has {
                let u = rng.uniform() as f32;
                aff[c * n + i] = if labels[i] == labels[i - s] {
                    margin[i].min(margin[i - s]) * (0.9 + 0.1 * u)
                } else {
                    0.1 * u
                };
            }
        }
    }
    aff
}

/// The watershed settings `name` stands for (see `SegmentBenchArgs::watershed`).
pub fn bench_params(name: &str) -> Result<Params> {
    match name {
        "jl" => Ok(Params {
            relative: false,
            ..Params::watershed_jl()
        }),
        "waterz" => Ok(Params::waterz()),
        other => Err(Error::Invalid(format!(
            "--watershed '{other}': choose jl or waterz"
        ))),
    }
}

/// The bench's volume for `seed`: labels and affinities, as [`run`] segments them.
pub fn volume(d: Dims, seed: u64) -> (Vec<u32>, Vec<f32>, usize) {
    let mut rng = Rng::new(seed);
    let (labels, margin, regions) = voronoi_labels(d, [5, 64, 64], &mut rng);
    let aff = noisy_affinities(&labels, &margin, d, &mut rng);
    (labels, aff, regions)
}

/// Writes the bench's volume as `dir/affinities.zarr` and `dir/labels.zarr` (gzip level 1).
pub fn write_volumes(d: Dims, seed: u64, dir: &std::path::Path) -> Result<()> {
    use crate::volume::array::{Array, Dtype};
    use crate::volume::zarr::{Compressor, CreateOptions, ZarrArray};
    let (labels, aff, _) = volume(d, seed);
    let co = CreateOptions {
        compressor: Compressor::Gzip(1),
        overwrite: true,
        ..CreateOptions::default()
    };
    let shape = vec![d.z, d.y, d.x];
    let chunks = [10.min(d.z), 256.min(d.y), 256.min(d.x)];
    let z = ZarrArray::create_with(dir.join("labels.zarr"), &shape, &chunks, Dtype::U32, &co)?;
    z.write_region(&[0, 0, 0], &Array::new(shape.clone(), labels)?)?;
    let shape4 = vec![3, d.z, d.y, d.x];
    let chunks4 = [3, chunks[0], chunks[1], chunks[2]];
    let z = ZarrArray::create_with(
        dir.join("affinities.zarr"),
        &shape4,
        &chunks4,
        Dtype::F32,
        &co,
    )?;
    z.write_region(&[0, 0, 0, 0], &Array::new(shape4, aff)?)?;
    crate::fsutil::sync_tree(dir)
}

pub fn run(d: Dims, seed: u64, thresholds: &[f64], params: &Params) -> Result<SegmentBench> {
    if !fits_u32(d.voxels()) {
        return Err(Error::Invalid(format!(
            "bench volume of {} voxels is beyond the u32 watershed this bench runs",
            d.voxels()
        )));
    }
    let t0 = Instant::now();
    let (labels, aff, regions) = volume(d, seed);
    drop(labels);
    let seconds_generate = t0.elapsed().as_secs_f64();
    let peak_process_before = peak_rss();
    let reset = reset_peak_rss();
    let t1 = Instant::now();
    let (frag, ws) = watershed::<u32>(&aff, d, params)?;
    let t2 = Instant::now();
    // As `revseg segment` does: the affinities go section by section as the region graph
    // takes up their sums.
    let affinity_bytes = (aff.len() * 4) as u64;
    let graph = RegionGraph::build_consuming(aff, &frag, d, Score::OneMinusMean)?;
    let agg = graph.agglomerate(thresholds)?;
    let t3 = Instant::now();
    let peak = peak_rss();
    Ok(SegmentBench {
        dims: d,
        regions,
        fragments: ws.segments,
        edges: agg.edges,
        seconds_generate,
        seconds_watershed: (t2 - t1).as_secs_f64(),
        seconds_agglomerate: (t3 - t2).as_secs_f64(),
        seconds_graph: agg.seconds_graph,
        seconds_merge: agg.seconds_merge,
        peak_segment_bytes: if reset { peak } else { None },
        peak_process_bytes: peak.max(peak_process_before),
        affinity_bytes,
        segments: agg.maps.iter().map(|m| segment_count(m)).collect(),
        map_hashes: agg.maps.iter().map(|m| map_hash(m)).collect(),
    })
}

pub fn json(b: &SegmentBench) -> Json {
    let opt = |v: Option<u64>| v.map(Json::from).unwrap_or(Json::Null);
    json::obj([
        ("bench", Json::from("segment")),
        (
            "shape",
            Json::Array(vec![b.dims.z.into(), b.dims.y.into(), b.dims.x.into()]),
        ),
        ("regions", Json::from(b.regions)),
        ("fragments", Json::from(b.fragments)),
        ("region_graph_edges", Json::from(b.edges)),
        ("seconds_generate", Json::from(b.seconds_generate)),
        ("seconds_watershed", Json::from(b.seconds_watershed)),
        ("seconds_agglomerate", Json::from(b.seconds_agglomerate)),
        ("seconds_region_graph", Json::from(b.seconds_graph)),
        ("seconds_merge", Json::from(b.seconds_merge)),
        ("peak_segment_bytes", opt(b.peak_segment_bytes)),
        ("peak_process_bytes", opt(b.peak_process_bytes)),
        ("affinity_bytes", Json::from(b.affinity_bytes)),
        ("segments", Json::from(b.segments.clone())),
        (
            "map_hashes",
            Json::from(
                b.map_hashes
                    .iter()
                    .map(|h| format!("{h:016x}"))
                    .collect::<Vec<_>>(),
            ),
        ),
    ])
}

/// `revseg bench segment`.
pub fn run_cli(a: &SegmentBenchArgs) -> Result<()> {
    let v: Vec<usize> = a
        .size
        .split(',')
        .map(|p| p.trim().parse().ok().filter(|&n| n > 0))
        .collect::<Option<_>>()
        .filter(|v: &Vec<usize>| v.len() == 3)
        .ok_or_else(|| {
            Error::Invalid(format!(
                "size '{}': expected Z,Y,X, e.g. 100,1024,1024",
                a.size
            ))
        })?;
    let thresholds = crate::cli::segment::parse_thresholds(&a.thresholds)?;
    if let Some(dir) = &a.write_volumes {
        std::fs::create_dir_all(dir).map_err(|e| crate::volume::array::io_err(dir, e))?;
        write_volumes(Dims::new(v[0], v[1], v[2]), a.seed, dir)?;
        println!(
            "wrote {0}/affinities.zarr and {0}/labels.zarr ({1}x{2}x{3})",
            dir.display(),
            v[0],
            v[1],
            v[2]
        );
        return Ok(());
    }
    let b = run(
        Dims::new(v[0], v[1], v[2]),
        a.seed,
        &thresholds,
        &bench_params(&a.watershed)?,
    )?;
    if a.json {
        println!("{}", json(&b));
        return Ok(());
    }
    let gb = |v: Option<u64>| v.map_or("n/a".into(), |v| format!("{:.2} GB", v as f64 / 1e9));
    println!(
        "volume {}x{}x{} ({} regions): {} fragments, {} region-graph edges",
        b.dims.z, b.dims.y, b.dims.x, b.regions, b.fragments, b.edges
    );
    println!(
        "watershed {:.2} s, agglomeration {:.2} s (region graph {:.2} s, merging {:.2} s; volume made in {:.2} s)",
        b.seconds_watershed, b.seconds_agglomerate, b.seconds_graph, b.seconds_merge, b.seconds_generate
    );
    println!(
        "peak memory while segmenting {}, whole process {}; affinities {:.2} GB",
        gb(b.peak_segment_bytes),
        gb(b.peak_process_bytes),
        b.affinity_bytes as f64 / 1e9
    );
    for (t, (n, h)) in thresholds.iter().zip(b.segments.iter().zip(&b.map_hashes)) {
        println!("threshold {t}: {n} segments (map hash {h:016x})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_volume_has_its_regions_and_a_small_run_works() {
        let d = Dims::new(10, 128, 128);
        let mut rng = Rng::new(3);
        let (labels, margin, regions) = voronoi_labels(d, [5, 64, 64], &mut rng);
        assert!(margin.iter().all(|m| (0.0..=1.0).contains(m)));
        assert_eq!(regions, 2 * 2 * 2);
        let distinct: std::collections::HashSet<u32> = labels.iter().copied().collect();
        assert!(
            distinct.len() >= 6 && distinct.len() <= 8,
            "{}",
            distinct.len()
        );
        let b = run(d, 3, &[0.3, 0.5], &bench_params("jl").unwrap()).unwrap();
        assert!(b.fragments > 0 && b.edges > 0);
        assert!(peak_rss().unwrap() > 0);
    }
}

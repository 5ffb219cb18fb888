//! `revseg segment`: affinities to segmentations (watershed fragments, then agglomeration).

use crate::error::{Error, Result};
use crate::json::{self, Json};
use crate::segment::agglomerate::{Agglomeration, RegionGraph, Score};
use crate::segment::watershed::{watershed, Params, Stats};
use crate::segment::{fits_u32, Dims, Label};
use crate::volume::hdf5::Writer;
use crate::volume::{parse_spec, DatasetSpec};
use clap::Args;
use std::time::Instant;

#[derive(Args, Debug, Clone)]
pub struct SegmentArgs {
    /// Affinities (FILE.h5:/dataset, DIR.zarr, FILE.raw:C,Z,Y,X:float32, ...), float32 (3, Z, Y, X) in [0, 1].
    #[arg(long)]
    pub affinities: String,
    /// Output FILE.h5:/group. Written there: <group>/fragments (the watershed) and
    /// <group>/threshold_<t> for each agglomeration threshold.
    #[arg(long)]
    pub output: String,
    /// Agglomeration thresholds on the merge score (1 - mean affinity), comma-separated.
    #[arg(long, default_value = "0.1,0.3,0.5")]
    pub thresholds: String,
    /// Merge score: `mean` (1 - mean affinity) or `quantile:Q` (1 - Q-quantile, Q in [0, 1]).
    #[arg(long, default_value = "mean")]
    pub score: String,
    /// Channel order of the affinity file: zyx (ours, waterz) or xyz (Watershed.jl files).
    #[arg(long, default_value = "zyx")]
    pub channel_order: String,
    /// Watershed low threshold (a fraction of the affinity distribution unless --ws-absolute).
    #[arg(long, default_value_t = 0.1)]
    pub ws_low: f64,
    /// Watershed high threshold.
    #[arg(long, default_value_t = 0.8)]
    pub ws_high: f64,
    /// Watershed size-dependent merges, SIZE:WEIGHT pairs, comma-separated ("" for none).
    #[arg(long, default_value = "800:0.2")]
    pub ws_merge: String,
    /// Watershed fragments under this many voxels become background.
    #[arg(long, default_value_t = 600)]
    pub ws_dust: u64,
    /// Take the watershed thresholds as affinity values, not fractions of the distribution.
    #[arg(long)]
    pub ws_absolute: bool,
    /// Store without gzip compression.
    #[arg(long)]
    pub no_gzip: bool,
    #[arg(long)]
    pub json: bool,
    /// With --block: the stage to run (fragments, graph, agglomerate, relabel), or all of them
    /// in turn.
    #[arg(long, default_value = "all")]
    pub stage: String,
    /// With --block: context Z,Y,X read around each block for its watershed.
    #[arg(long, default_value = "4,32,32")]
    pub halo: String,
    #[command(flatten)]
    pub blocks: crate::blocks::BlockArgs,
}

/// Parse "0.1,0.3,0.5".
pub fn parse_thresholds(s: &str) -> Result<Vec<f64>> {
    let v: Vec<f64> = s
        .split(',')
        .map(|p| p.trim().parse::<f64>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| {
            Error::Invalid(format!(
                "thresholds '{s}': expected comma-separated numbers, e.g. 0.1,0.3,0.5"
            ))
        })?;
    if let Some(t) = v.iter().find(|t| !(0.0..=1.0).contains(*t)) {
        return Err(Error::Invalid(format!(
            "threshold {t} is not in [0, 1] (scores are 1 - affinity)"
        )));
    }
    Ok(v)
}

pub fn parse_score(s: &str) -> Result<Score> {
    if s == "mean" {
        return Ok(Score::OneMinusMean);
    }
    let q = s
        .strip_prefix("quantile:")
        .and_then(|q| q.parse::<f64>().ok())
        .filter(|q| (0.0..=1.0).contains(q))
        .ok_or_else(|| {
            Error::Invalid(format!(
                "score '{s}': use 'mean' or 'quantile:Q' with Q in [0, 1], e.g. quantile:0.75"
            ))
        })?;
    Ok(Score::OneMinusQuantile(q))
}

fn parse_merge(s: &str) -> Result<Vec<(u64, f64)>> {
    let bad = || {
        Error::Invalid(format!(
            "--ws-merge '{s}': expected SIZE:WEIGHT pairs, e.g. 800:0.2"
        ))
    };
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let (a, b) = p.trim().split_once(':').ok_or_else(bad)?;
            Ok((a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?))
        })
        .collect()
}

pub fn watershed_params(a: &SegmentArgs) -> Result<Params> {
    Ok(Params {
        low: a.ws_low,
        high: a.ws_high,
        merge: parse_merge(&a.ws_merge)?,
        dust: a.ws_dust,
        relative: !a.ws_absolute,
    })
}

/// Reads the affinities in our channel order.
fn read_affinities(spec: &str, order: &str) -> Result<(Vec<f32>, Dims)> {
    let r = crate::volume::io::open_volume(spec)?;
    let shape = r.shape().to_vec();
    let mut aff = r.read_all::<f32>()?.data;
    let dims = Dims::from_affinity_shape(&shape).map_err(|_| {
        Error::Invalid(format!(
            "{spec}: affinities must be shaped (3, Z, Y, X), found {shape:?}"
        ))
    })?;
    match order {
        "zyx" => {}
        "xyz" => {
            let n = dims.voxels();
            let (first, rest) = aff.split_at_mut(n);
            first.swap_with_slice(&mut rest[n..]);
        }
        o => {
            return Err(Error::Invalid(format!(
                "channel order '{o}': use zyx or xyz"
            )))
        }
    }
    Ok((aff, dims))
}

pub fn run(a: &SegmentArgs) -> Result<()> {
    if a.blocks.active() {
        return super::segment_blocks::run(a);
    }
    if a.stage != "all" {
        return Err(Error::Invalid(format!(
            "--stage {}: stages are those of a blockwise segmentation; give --block Z,Y,X too",
            a.stage
        )));
    }
    let aff_spec = a.affinities.as_str();
    let out = parse_spec(&a.output)?;
    crate::fsutil::refuse_output_over_inputs(
        ("--output", &out.file),
        &[("--affinities", &super::spec_file(aff_spec)?)],
    )?;
    let thresholds = parse_thresholds(&a.thresholds)?;
    let score = parse_score(&a.score)?;
    let params = watershed_params(a)?;
    let (aff, dims) = read_affinities(aff_spec, &a.channel_order)?;
    crate::segment::check_affinities(&aff, dims)
        .map_err(|e| Error::Invalid(format!("{aff_spec}: {e}")))?;
    let report = if fits_u32(dims.voxels()) {
        segment_as::<u32>(aff, dims, &params, &thresholds, score, &out, !a.no_gzip)?
    } else {
        segment_as::<u64>(aff, dims, &params, &thresholds, score, &out, !a.no_gzip)?
    };
    print_report(a, aff_spec, &out, dims, &report);
    Ok(())
}

struct Report {
    ws: Stats,
    agg: Agglomeration,
    segments: Vec<usize>,
    datasets: Vec<String>,
    seconds: [f64; 3],
}

/// Takes the affinities to drop them once the region graph holds what agglomeration needs.
fn segment_as<L: Label>(
    aff: Vec<f32>,
    dims: Dims,
    params: &Params,
    thresholds: &[f64],
    score: Score,
    out: &DatasetSpec,
    gzip: bool,
) -> Result<Report> {
    let t0 = Instant::now();
    let (frag, ws) = watershed::<L>(&aff, dims, params)?;
    let t1 = Instant::now();
    let graph = RegionGraph::build_consuming(aff, &frag, dims, score)?;
    let agg = graph.agglomerate(thresholds)?;
    let t2 = Instant::now();
    let shape = [dims.z, dims.y, dims.x];
    let mut w = Writer::create(&out.file)?;
    let base = out.dataset.trim_end_matches('/');
    w.add(&format!("{base}/fragments"), &shape, &frag, gzip)?;
    let mut datasets = vec![format!("{base}/fragments")];
    let mut segments = Vec::new();
    for (i, t) in thresholds.iter().enumerate() {
        let name = format!("{base}/threshold_{t}");
        w.add(&name, &shape, &agg.apply(i, &frag), gzip)?;
        segments.push(count_segments(&agg.maps[i]));
        datasets.push(name);
    }
    w.commit()?;
    let seconds = [
        (t1 - t0).as_secs_f64(),
        (t2 - t1).as_secs_f64(),
        t2.elapsed().as_secs_f64(),
    ];
    Ok(Report {
        ws,
        agg,
        segments,
        datasets,
        seconds,
    })
}

/// Distinct segments among fragments 1.. of a fragment -> segment map.
fn count_segments(map: &[u32]) -> usize {
    let mut seen = vec![false; map.len()];
    let mut n = 0;
    for &s in map.iter().skip(1) {
        if !seen[s as usize] {
            seen[s as usize] = true;
            n += 1;
        }
    }
    n
}

fn print_report(a: &SegmentArgs, aff: &str, out: &DatasetSpec, d: Dims, r: &Report) {
    if a.json {
        let per: Vec<Json> = (0..r.datasets.len() - 1)
            .map(|i| {
                json::obj([
                    ("threshold", Json::from(r.agg.thresholds[i])),
                    ("dataset", Json::from(r.datasets[i + 1].clone())),
                    ("segments", Json::from(r.segments[i])),
                    ("merges", Json::from(r.agg.merges[i])),
                ])
            })
            .collect();
        let j = json::obj([
            ("command", Json::from("segment")),
            ("affinities", Json::from(aff.to_string())),
            ("output", Json::from(out.file.display().to_string())),
            (
                "shape",
                Json::Array(vec![d.z.into(), d.y.into(), d.x.into()]),
            ),
            ("watershed", ws_json(&r.ws, &r.datasets[0])),
            ("region_graph_edges", Json::from(r.agg.edges)),
            ("thresholds", Json::Array(per)),
            ("seconds_watershed", Json::from(r.seconds[0])),
            ("seconds_agglomerate", Json::from(r.seconds[1])),
            ("seconds_write", Json::from(r.seconds[2])),
        ]);
        println!("{j}");
        return;
    }
    println!(
        "watershed: {} fragments ({} basins, low {} high {}), {:.2} s -> {}:{}",
        r.ws.segments,
        r.ws.basins,
        r.ws.low,
        r.ws.high,
        r.seconds[0],
        out.file.display(),
        r.datasets[0]
    );
    for i in 0..r.segments.len() {
        println!(
            "threshold {}: {} segments ({} merges) -> {}",
            r.agg.thresholds[i],
            r.segments[i],
            r.agg.merges[i],
            r.datasets[i + 1]
        );
    }
}

fn ws_json(s: &Stats, dataset: &str) -> Json {
    json::obj([
        ("dataset", Json::from(dataset)),
        ("low", Json::from(s.low as f64)),
        ("high", Json::from(s.high as f64)),
        ("basins", Json::from(s.basins)),
        ("fragments", Json::from(s.segments)),
        ("background_voxels", Json::from(s.background)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_parsing() {
        assert_eq!(parse_thresholds("0.1, 0.5").unwrap(), vec![0.1, 0.5]);
        assert!(parse_thresholds("0.1,x").is_err());
        assert!(parse_thresholds("1.5").is_err());
        assert_eq!(
            parse_score("quantile:0.75").unwrap(),
            Score::OneMinusQuantile(0.75)
        );
        assert!(parse_score("median").is_err());
        assert_eq!(
            parse_merge("800:0.2,100:0.5").unwrap(),
            vec![(800, 0.2), (100, 0.5)]
        );
        assert_eq!(parse_merge("").unwrap(), vec![]);
        assert!(parse_merge("800").is_err());
        assert_eq!(count_segments(&[0, 1, 1, 3]), 2);
    }
}

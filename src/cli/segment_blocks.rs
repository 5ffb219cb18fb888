//! `revseg segment --block Z,Y,X [--stage S] [--worker I/N | --workers K]`: segmentation of a
//! zarr affinity volume block by block, in four stages that each run as one command per worker
//! (a Slurm array runs the same line with `--worker $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT`)
//! and skip the blocks already done:
//!
//!     revseg segment --affinities aff.zarr --output seg.zarr --ws-absolute --block 32,256,256 --stage fragments --worker I/N
//!     ... --stage graph --worker I/N
//!     ... --stage agglomerate            (one process: worker 0 of N, the others return)
//!     ... --stage relabel --worker I/N
//!
//! `--stage all` (the default) runs them in turn, each with `--workers K` local processes.

use super::segment::{parse_score, parse_thresholds, watershed_params, SegmentArgs};
use crate::blocks::segjob::{lower_neighbours, run_blocks, SegJob, StageRun};
use crate::blocks::{self, agglomerate, fragments, graph, relabel, WorkerSlice};
use crate::error::{Error, Result};
use crate::json::{self, Json};
use crate::segment::agglomerate::Score;
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Fragments,
    Graph,
    Agglomerate,
    Relabel,
}

const STAGES: [Stage; 4] = [
    Stage::Fragments,
    Stage::Graph,
    Stage::Agglomerate,
    Stage::Relabel,
];

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Fragments => "fragments",
            Stage::Graph => "graph",
            Stage::Agglomerate => "agglomerate",
            Stage::Relabel => "relabel",
        }
    }

    /// The stages `s` names (`all`: every one, in order).
    fn parse(s: &str) -> Result<Vec<Stage>> {
        if s == "all" {
            return Ok(STAGES.to_vec());
        }
        STAGES
            .iter()
            .find(|st| st.name() == s)
            .map(|&st| vec![st])
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "--stage {s}: choose fragments, graph, agglomerate, relabel or all"
                ))
            })
    }
}

/// `Z,Y,X` of non-negative integers.
fn parse_halo(s: &str) -> Result<[usize; 3]> {
    let v: Option<Vec<usize>> = s.split(',').map(|p| p.trim().parse().ok()).collect();
    match v.as_deref() {
        Some(&[z, y, x]) => Ok([z, y, x]),
        _ => Err(Error::Invalid(format!(
            "--halo {s}: expected Z,Y,X of non-negative integers, e.g. 4,32,32"
        ))),
    }
}

fn open_job(a: &SegmentArgs) -> Result<SegJob> {
    let root = blocks::zarr_target(&a.output)?;
    crate::fsutil::refuse_output_over_inputs(
        ("--output", &root),
        &[("--affinities", &super::spec_file(&a.affinities)?)],
    )?;
    if parse_score(&a.score)? != Score::OneMinusMean {
        return Err(Error::Invalid(format!(
            "--score {}: blockwise agglomeration merges means (sum and count per edge); use --score mean",
            a.score
        )));
    }
    let block = match &a.blocks.block {
        Some(s) => blocks::parse_zyx("--block", s)?,
        None => {
            return Err(Error::Invalid(
                "--worker and --workers need --block Z,Y,X (a multiple of the output chunks)"
                    .into(),
            ))
        }
    };
    let chunk = match &a.blocks.block_chunks {
        Some(s) => blocks::parse_zyx("--block-chunks", s)?,
        None => block,
    };
    let xyz = match a.channel_order.as_str() {
        "zyx" => false,
        "xyz" => true,
        o => {
            return Err(Error::Invalid(format!(
                "channel order '{o}': use zyx or xyz"
            )))
        }
    };
    SegJob::new(
        root,
        crate::volume::io::open_volume(&a.affinities)?,
        xyz,
        block,
        chunk,
        parse_halo(&a.halo)?,
        watershed_params(a)?,
    )
}

pub fn run(a: &SegmentArgs) -> Result<()> {
    let stages = Stage::parse(&a.stage)?;
    let thresholds = parse_thresholds(&a.thresholds)?;
    let job = open_job(a)?;
    if let Some(k) = a.blocks.workers {
        if a.blocks.worker.is_some() {
            return Err(Error::Invalid(
                "--workers starts its own --worker processes; give one or the other".into(),
            ));
        }
        for &st in &stages {
            if st == Stage::Agglomerate {
                run_stage(a, &job, st, WorkerSlice::ALL, &thresholds)?;
            } else {
                blocks::run_local_workers_with(k, &[("--stage", st.name())])?;
                check_complete(&job, st, &thresholds)?;
            }
        }
        return Ok(());
    }
    let slice = match &a.blocks.worker {
        Some(w) => WorkerSlice::parse(w)?,
        None => WorkerSlice::ALL,
    };
    if stages.len() > 1 && slice != WorkerSlice::ALL {
        return Err(Error::Invalid(
            "--worker runs one stage (the next needs every worker's blocks): give --stage fragments, graph, agglomerate or relabel".into(),
        ));
    }
    for &st in &stages {
        run_stage(a, &job, st, slice, &thresholds)?;
    }
    Ok(())
}

/// After local workers: every block of stage `st` is done, or the error says how many are not.
fn check_complete(job: &SegJob, st: Stage, thresholds: &[f64]) -> Result<()> {
    let all: Vec<usize> = (0..job.grid.len()).collect();
    match st {
        Stage::Fragments => job.require_done(&job.fragments_marks()?, &all, "fragments"),
        Stage::Graph => job.require_done(&job.graph_marks()?, &all, "graph"),
        Stage::Agglomerate => Ok(()),
        Stage::Relabel => thresholds
            .iter()
            .try_for_each(|&t| job.require_done(&job.relabel_marks(t)?, &all, "relabel")),
    }
}

fn run_stage(
    a: &SegmentArgs,
    job: &SegJob,
    st: Stage,
    slice: WorkerSlice,
    thresholds: &[f64],
) -> Result<()> {
    let t0 = Instant::now();
    let mut extra: Vec<(&str, Json)> = Vec::new();
    let run = match st {
        Stage::Fragments => {
            // The array before its marks: the marks live inside its directory.
            let array = job.label_array(&job.fragments_path())?;
            let marks = job.fragments_marks()?;
            let mut n = 0u64;
            let r = run_blocks(
                job.grid.len(),
                slice,
                |b| marks.is_done(b),
                |b| {
                    n += fragments::write_block(job, &array, b)?;
                    marks.mark(b)
                },
            )?;
            extra.push(("fragments_now", Json::from(n as usize)));
            r
        }
        Stage::Graph => {
            let (frag, fmarks) = job.written_fragments()?;
            let marks = job.graph_marks()?;
            let mut edges = 0usize;
            run_blocks(
                job.grid.len(),
                slice,
                |b| marks.is_done(b),
                |b| {
                    job.require_done(&fmarks, &lower_neighbours(&job.grid, b), "fragments")?;
                    let g = graph::graph_block(job, &frag, b)?;
                    edges += g.edges.len();
                    graph::write(&job.graph_path(b), &g)?;
                    marks.mark(b)
                },
            )
            .inspect(|_| extra.push(("edges_now", Json::from(edges))))?
        }
        Stage::Agglomerate => return run_agglomerate(a, job, slice, thresholds),
        Stage::Relabel => {
            let (frag, fmarks) = job.written_fragments()?;
            let mut maps: Vec<_> = thresholds
                .iter()
                .map(|&t| {
                    agglomerate::MapFile::open(
                        &job.map_path(t),
                        job.grid.len(),
                        job.ids_per_block(),
                    )
                })
                .collect::<Result<_>>()?;
            let outputs: Vec<_> = thresholds
                .iter()
                .map(|&t| job.label_array(&job.segmentation_path(t)))
                .collect::<Result<_>>()?;
            let marks: Vec<_> = thresholds
                .iter()
                .map(|&t| job.relabel_marks(t))
                .collect::<Result<_>>()?;
            run_blocks(
                job.grid.len(),
                slice,
                |b| marks.iter().all(|m| m.is_done(b)),
                |b| {
                    job.require_done(&fmarks, &[b], "fragments")?;
                    relabel::write_block(job, &frag, &mut maps, &outputs, b)?;
                    marks.iter().try_for_each(|m| m.mark(b))
                },
            )?
        }
    };
    report(a, st, slice, &run, t0.elapsed().as_secs_f64(), extra);
    Ok(())
}

fn run_agglomerate(
    a: &SegmentArgs,
    job: &SegJob,
    slice: WorkerSlice,
    thresholds: &[f64],
) -> Result<()> {
    // One process merges the whole graph: in an array of N workers, worker 0.
    if slice.index != 0 {
        if !a.json {
            println!(
                "agglomerate: worker {}/{} has nothing to do (worker 0 agglomerates)",
                slice.index, slice.count
            );
        }
        return Ok(());
    }
    let t0 = Instant::now();
    let _marks = job.agglomeration_marks()?;
    let all: Vec<usize> = (0..job.grid.len()).collect();
    job.require_done(&job.graph_marks()?, &all, "graph")?;
    let todo: Vec<f64> = thresholds
        .iter()
        .copied()
        .filter(|&t| !job.map_path(t).exists())
        .collect();
    let summary = if todo.is_empty() {
        None
    } else {
        let s = agglomerate::agglomerate_job(job, &todo)?;
        crate::fsutil::sync_tree(&job.maps_dir())?;
        Some(s)
    };
    let secs = t0.elapsed().as_secs_f64();
    let peak = crate::bench::segment::peak_rss();
    if a.json {
        let per: Vec<Json> = summary
            .iter()
            .flat_map(|s| {
                todo.iter().enumerate().map(|(i, &t)| {
                    json::obj([
                        ("threshold", Json::from(t)),
                        ("segments", Json::from(s.segments[i])),
                        ("merges", Json::from(s.merges[i])),
                    ])
                })
            })
            .collect();
        println!(
            "{}",
            json::obj([
                ("stage", Json::from("agglomerate")),
                ("output", Json::from(a.output.clone())),
                (
                    "fragments",
                    summary.as_ref().map_or(Json::Null, |s| s.fragments.into())
                ),
                (
                    "region_graph_edges",
                    summary.as_ref().map_or(Json::Null, |s| s.edges.into())
                ),
                (
                    "rejoined_pieces",
                    summary.as_ref().map_or(Json::Null, |s| s.rejoined.into())
                ),
                ("thresholds", Json::Array(per)),
                (
                    "thresholds_skipped",
                    Json::from(thresholds.len() - todo.len())
                ),
                ("seconds", Json::from(secs)),
                ("peak_rss_bytes", peak.map_or(Json::Null, Json::from)),
            ])
        );
    } else if let Some(s) = &summary {
        println!(
            "agglomerate: {} fragments ({} pieces cut by block faces rejoined), {} region-graph edges in {secs:.1} s",
            s.fragments, s.rejoined, s.edges
        );
        for (i, t) in todo.iter().enumerate() {
            println!(
                "threshold {t}: {} segments ({} merges)",
                s.segments[i], s.merges[i]
            );
        }
    } else {
        println!("agglomerate: every threshold asked is already done");
    }
    Ok(())
}

fn report(
    a: &SegmentArgs,
    st: Stage,
    slice: WorkerSlice,
    r: &StageRun,
    secs: f64,
    extra: Vec<(&str, Json)>,
) {
    let peak = crate::bench::segment::peak_rss();
    if a.json {
        let mut fields = vec![
            ("stage", Json::from(st.name())),
            ("output", Json::from(a.output.clone())),
            (
                "worker",
                Json::from(format!("{}/{}", slice.index, slice.count)),
            ),
            ("blocks", Json::from(r.blocks)),
            ("blocks_now", Json::from(r.done_now)),
            ("blocks_skipped", Json::from(r.skipped)),
            ("seconds", Json::from(secs)),
            ("peak_rss_bytes", peak.map_or(Json::Null, Json::from)),
        ];
        fields.extend(extra);
        println!("{}", json::obj(fields));
    } else {
        println!(
            "{}: worker {}/{}: {} blocks done now, {} already done, of {} in {secs:.1} s",
            st.name(),
            slice.index,
            slice.count,
            r.done_now,
            r.skipped,
            r.blocks
        );
    }
}

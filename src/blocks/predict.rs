//! Blockwise prediction: every block of the output is predicted from its input with the
//! network's context, and the result equals the one-process prediction bit for bit. The
//! sliding windows are the whole volume's (`predict::starts` over the full shape); a block
//! gathers the windows that touch it, in the one-process order, and sums their bump-weighted
//! outputs over its own voxels only, so each voxel receives the same terms in the same order.
//! The input read is the union of those windows: the block plus up to one patch of context.

use super::{BlockArgs, BlockGrid, DoneMarks, WorkerSlice};
use crate::backend::Backend;
use crate::cli::predict::PredictArgs;
use crate::error::{Error, Result};
use crate::predict::{bump, predict_window, starts, transforms, PredictOptions};
use crate::scheduler::{self, Executor};
use crate::train::{progress::Progress, state};
use crate::volume::array::{Array, Dtype};
use crate::volume::io::VolumeReader;
use crate::volume::zarr::{CreateOptions, ZarrVersion};
use std::path::Path;

/// Windows along one axis that overlap `lo..hi`, as indices into `starts`.
fn touching(starts: &[usize], patch: usize, lo: usize, hi: usize) -> Vec<usize> {
    (0..starts.len())
        .filter(|&i| starts[i] < hi && starts[i] + patch > lo)
        .collect()
}

/// Affinities (channels, block) of the block at `off` with shape `size`: the sums of every
/// window that touches it, normalised as the one-process prediction does.
#[allow(clippy::too_many_arguments)]
pub fn predict_block<B: Backend>(
    b: &B,
    ex: &mut Executor<B>,
    reader: &VolumeReader,
    shape: [usize; 3],
    channels: usize,
    opt: &PredictOptions,
    off: [usize; 3],
    size: [usize; 3],
    mut progress: impl FnMut(),
) -> Result<Vec<f32>> {
    let p = [opt.patch.0, opt.patch.1, opt.patch.2];
    if opt.tta && p[1] != p[2] {
        return Err(Error::Invalid(format!(
            "test-time augmentation transposes y and x: the patch must be square in y, x (got {}x{})",
            p[1], p[2]
        )));
    }
    let all: Vec<Vec<usize>> = (0..3)
        .map(|a| starts(shape[a], p[a]))
        .collect::<Result<_>>()?;
    let win: Vec<Vec<usize>> = (0..3)
        .map(|a| touching(&all[a], p[a], off[a], off[a] + size[a]))
        .collect();
    // The input box: from the first touching window's start to the last one's end.
    let lo: [usize; 3] = [0, 1, 2].map(|a| all[a][win[a][0]]);
    let hi: [usize; 3] = [0, 1, 2].map(|a| all[a][*win[a].last().unwrap()] + p[a]);
    let ish = [0, 1, 2].map(|a| hi[a] - lo[a]);
    crate::alloc::check(
        "predict: one block's input and sums",
        &[ish[0], ish[1], ish[2], channels + 2],
        4,
    )?;
    let img = crate::cli::read_image_region(reader, lo, ish)?;
    let n = [p[0], p[1], p[2]];
    let psp = p[0] * p[1] * p[2];
    let weight = bump(p[0], p[1], p[2]);
    let bsp = size[0] * size[1] * size[2];
    let mut acc = vec![0.0f32; channels * bsp];
    let mut wsum = vec![0.0f32; bsp];
    let ts = transforms(opt.tta);
    let mut patch = vec![0.0f32; psp];
    for &zi in &win[0] {
        for &yi in &win[1] {
            for &xi in &win[2] {
                let w0 = [all[0][zi], all[1][yi], all[2][xi]];
                for z in 0..p[0] {
                    for y in 0..p[1] {
                        let src = ((w0[0] - lo[0] + z) * ish[1] + w0[1] - lo[1] + y) * ish[2]
                            + w0[2]
                            - lo[2];
                        patch[(z * p[1] + y) * p[2]..][..p[2]]
                            .copy_from_slice(&img[src..src + p[2]]);
                    }
                }
                let avg = predict_window(b, ex, &patch, n, channels, &ts)?;
                // Same terms, same order as `predict_stream`: weight first, then each channel.
                for z in 0..p[0] {
                    let gz = w0[0] + z;
                    if gz < off[0] || gz >= off[0] + size[0] {
                        continue;
                    }
                    for y in 0..p[1] {
                        let gy = w0[1] + y;
                        if gy < off[1] || gy >= off[1] + size[1] {
                            continue;
                        }
                        for x in 0..p[2] {
                            let gx = w0[2] + x;
                            if gx < off[2] || gx >= off[2] + size[2] {
                                continue;
                            }
                            let i = (z * p[1] + y) * p[2] + x;
                            let g = ((gz - off[0]) * size[1] + gy - off[1]) * size[2] + gx - off[2];
                            wsum[g] += weight[i];
                            for c in 0..channels {
                                acc[c * bsp + g] += weight[i] * avg[c * psp + i];
                            }
                        }
                    }
                }
                progress();
            }
        }
    }
    for c in 0..channels {
        for (a, w) in acc[c * bsp..(c + 1) * bsp].iter_mut().zip(&wsum) {
            *a /= w;
        }
    }
    Ok(acc)
}

/// `revseg predict --block ...`: this process's share of a blockwise prediction.
pub fn run(a: &PredictArgs, blocks: &BlockArgs) -> Result<()> {
    if let Some(k) = blocks.workers {
        if blocks.worker.is_some() {
            return Err(Error::Invalid(
                "--workers starts its own --worker processes; give one or the other".into(),
            ));
        }
        run_prepared(a, blocks, None)?;
        super::run_local_workers(k)?;
        return run_prepared(a, blocks, Some(WorkerSlice { index: 0, count: 0 }));
    }
    let slice = match &blocks.worker {
        Some(w) => WorkerSlice::parse(w)?,
        None => WorkerSlice::ALL,
    };
    run_prepared(a, blocks, Some(slice))
}

/// Sets the job up (output array, done marks) and, given a slice, predicts its blocks; a slice
/// of count 0 only reports how many blocks are done.
fn run_prepared(a: &PredictArgs, blocks: &BlockArgs, slice: Option<WorkerSlice>) -> Result<()> {
    crate::fsutil::refuse_output_over_inputs(
        ("--output", &crate::cli::spec_file(&a.output)?),
        &[
            ("--input", &crate::cli::spec_file(&a.input)?),
            ("--checkpoint", Path::new(&a.checkpoint)),
        ],
    )?;
    let block = match &blocks.block {
        Some(s) => super::parse_zyx("--block", s)?,
        None => {
            return Err(Error::Invalid(
                "--worker and --workers need --block Z,Y,X (a multiple of the output chunks)"
                    .into(),
            ))
        }
    };
    let chunk = match &blocks.block_chunks {
        Some(s) => super::parse_zyx("--block-chunks", s)?,
        None => block,
    };
    let target = super::zarr_target(&a.output)?;
    let ck = crate::checkpoint::load(&a.checkpoint)?;
    let cfg = state::config_of(&ck, &a.checkpoint)?;
    let patch = match &a.patch {
        Some(p) => crate::cli::parse_patch(p)?,
        None => cfg.patch,
    };
    let reader = crate::volume::io::open_volume(&a.input)?;
    let (z, y, x) = crate::cli::shape3(&reader, "image")?;
    let shape = [z, y, x];
    let channels = cfg.net.outputs;
    let dtype = crate::cli::predict::output_dtype(&a.dtype)?;
    let voxel = crate::cli::predict::voxel_size_arg(a.voxel_size.as_deref(), reader.voxel_size())?;
    let grid = BlockGrid::new(shape, block, chunk)?;
    let out_shape = vec![channels, z, y, x];
    let out_chunks = vec![channels, chunk[0], chunk[1], chunk[2]];
    let co = CreateOptions {
        version: ZarrVersion::V2,
        compressor: crate::volume::zarr::Compressor::Gzip(1),
        voxel_size: voxel,
        offset_nm: reader.offset_nm(),
        ..CreateOptions::default()
    };
    let array = super::open_or_create(&target, &out_shape, &out_chunks, dtype, &co)?;
    let ck_len = std::fs::metadata(&a.checkpoint)
        .map_err(|e| crate::volume::array::io_err(Path::new(&a.checkpoint), e))?
        .len();
    let job = serde_json::json!({
        "job": "predict",
        "input": a.input,
        "checkpoint": a.checkpoint,
        "checkpoint_bytes": ck_len,
        "patch": [patch.0, patch.1, patch.2],
        "tta": a.tta,
        "dtype": dtype.name(),
        "block": block,
        "precision": a.precision.precision,
    });
    let marks = DoneMarks::open(&target.join(".revseg-blocks"), &job)?;
    let Some(slice) = slice.filter(|s| s.count > 0) else {
        if slice.is_some() {
            let done = marks.count_done(grid.len());
            if done != grid.len() {
                return Err(Error::Io(format!(
                    "{}: {done} of {} blocks done; rerun to finish",
                    a.output,
                    grid.len()
                )));
            }
            report(a, &grid, done, 0, 0, 0.0);
        }
        return Ok(());
    };
    let mine: Vec<usize> = (0..grid.len()).filter(|&i| slice.owns(i)).collect();
    let todo: Vec<usize> = mine
        .iter()
        .copied()
        .filter(|&i| !marks.is_done(i))
        .collect();
    let skipped = mine.len() - todo.len();
    let t0 = std::time::Instant::now();
    if !todo.is_empty() {
        let prog = crate::model::build(&cfg.net, patch)?;
        let dev = crate::cli::select_device(&a.device)?;
        let precision = a.precision.resolve(dev)?;
        let opt = PredictOptions { patch, tta: a.tta };
        crate::on_device!(dev, precision, |b| {
            let plan = scheduler::inference_plan_in(&prog, scheduler::storage_precision(b))?;
            let mut ex = Executor::new(b, &prog, plan, 0)?;
            ex.poison = false;
            state::load_model(b, &prog, &mut ex, &ck, &a.checkpoint)?;
            let mut bar = Progress::new("predict blocks", todo.len());
            for (k, &i) in todo.iter().enumerate() {
                let (off, size) = grid.get(i);
                let aff =
                    predict_block(b, &mut ex, &reader, shape, channels, &opt, off, size, || {})?;
                let s = vec![channels, size[0], size[1], size[2]];
                let o = [0, off[0], off[1], off[2]];
                if dtype == Dtype::U8 {
                    let q = aff
                        .iter()
                        .map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
                        .collect();
                    array.write_region(&o, &Array::new(s, q)?)?;
                } else {
                    array.write_region(&o, &Array::new(s, aff)?)?;
                }
                marks.mark(i)?;
                bar.update(k + 1, "blocks", &format!("block {i}"));
            }
            bar.finish();
            Ok::<_, Error>(())
        })?;
    }
    report(
        a,
        &grid,
        marks.count_done(grid.len()),
        todo.len(),
        skipped,
        t0.elapsed().as_secs_f64(),
    );
    Ok(())
}

fn report(a: &PredictArgs, grid: &BlockGrid, done: usize, now: usize, skipped: usize, secs: f64) {
    if a.json {
        println!(
            "{}",
            crate::json::obj([
                ("output", crate::json::Json::from(a.output.clone())),
                ("blocks", grid.len().into()),
                ("blocks_done", done.into()),
                ("blocks_predicted", now.into()),
                ("blocks_skipped", skipped.into()),
                ("seconds", secs.into()),
            ])
        );
    } else {
        println!(
            "{}: {done} of {} blocks done ({now} predicted now, {skipped} already done) in {secs:.1} s",
            a.output,
            grid.len()
        );
    }
}

//! What every stage of a blockwise segmentation shares: the block grid over the affinities, the
//! watershed settings, where each stage's output lives and how fragment ids are made unique.
//!
//! Layout under the output group `OUT.zarr` (each stage's done markers beside its output, in
//! `.revseg-blocks/`, with the job manifest that stops a rerun with other settings from mixing
//! results):
//! - `fragments/`: uint64 (Z, Y, X) zarr array, the watershed of each block; fragment `l`
//!   (1-based, consecutive within the block) of block `b` has id `b * C + l`, where C is the
//!   voxel count of a whole block, so ids are unique without the blocks coordinating.
//! - `region_graph/B.rg`: block B's region-graph edges (format in [`super::graph`]).
//! - `agglomeration/threshold_T.map`: fragment -> segment for threshold T (format in
//!   [`super::agglomerate`]).
//! - `threshold_T/`: uint64 segmentation at threshold T; a segment's id is the smallest fragment
//!   id it holds, 0 is background.

use super::{BlockGrid, DoneMarks, WorkerSlice};
use crate::error::{Error, Result};
use crate::segment::watershed::Params;
use crate::segment::Dims;
use crate::volume::array::Dtype;
use crate::volume::io::VolumeReader;
use crate::volume::zarr::{CreateOptions, ZarrArray, ZarrVersion};
use std::path::{Path, PathBuf};

pub struct SegJob {
    pub root: PathBuf,
    pub affinities: VolumeReader,
    /// The affinity file stores channels as x, y, z (Watershed.jl's order).
    pub xyz: bool,
    pub shape: [usize; 3],
    pub chunk: [usize; 3],
    pub grid: BlockGrid,
    /// Context read around a block for its watershed, clipped by the volume.
    pub halo: [usize; 3],
    pub params: Params,
    /// The manifest of the fragments stage, which every later stage's manifest includes.
    pub fragments_job: serde_json::Value,
}

impl SegJob {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        root: PathBuf,
        affinities: VolumeReader,
        xyz: bool,
        block: [usize; 3],
        chunk: [usize; 3],
        halo: [usize; 3],
        params: Params,
    ) -> Result<Self> {
        let shape = match *affinities.shape() {
            [3, z, y, x] => [z, y, x],
            ref s => {
                return Err(Error::Invalid(format!(
                    "{}: affinities must be shaped (3, Z, Y, X), found {s:?}",
                    affinities.spec()
                )))
            }
        };
        if params.relative {
            return Err(Error::Invalid(
                "blockwise segmentation needs --ws-absolute: relative thresholds are fractions of the whole volume's affinities, which no block sees".into(),
            ));
        }
        let grid = BlockGrid::new(shape, block, chunk)?;
        let ext: usize = (0..3).map(|a| block[a] + 2 * halo[a]).product();
        if !crate::segment::fits_u32(ext) {
            return Err(Error::Invalid(format!(
                "a block of {block:?} with halo {halo:?} has {ext} voxels: beyond the 2^31 of the per-block watershed; choose smaller blocks"
            )));
        }
        let fragments_job = serde_json::json!({
            "job": "fragments",
            "affinities": affinities.spec(),
            "channel_order": if xyz { "xyz" } else { "zyx" },
            "shape": shape,
            "block": block,
            "chunks": chunk,
            "halo": halo,
            "ws_low": params.low,
            "ws_high": params.high,
            "ws_merge": params.merge,
            "ws_dust": params.dust,
        });
        Ok(SegJob {
            root,
            affinities,
            xyz,
            shape,
            chunk,
            grid,
            halo,
            params,
            fragments_job,
        })
    }

    /// Ids per block: a block's fragments never outnumber its voxels.
    pub fn ids_per_block(&self) -> u64 {
        self.grid.block.iter().product::<usize>() as u64
    }

    /// The block a fragment id belongs to and its 1-based number there.
    pub fn block_of(&self, id: u64) -> (usize, u64) {
        let c = self.ids_per_block();
        (((id - 1) / c) as usize, (id - 1) % c + 1)
    }

    pub fn fragments_path(&self) -> PathBuf {
        self.root.join("fragments")
    }

    pub fn graph_dir(&self) -> PathBuf {
        self.root.join("region_graph")
    }

    pub fn graph_path(&self, block: usize) -> PathBuf {
        self.graph_dir().join(format!("{block}.rg"))
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.root.join("agglomeration")
    }

    pub fn map_path(&self, threshold: f64) -> PathBuf {
        self.maps_dir().join(format!("threshold_{threshold}.map"))
    }

    pub fn segmentation_path(&self, threshold: f64) -> PathBuf {
        self.root.join(format!("threshold_{threshold}"))
    }

    pub fn fragments_marks(&self) -> Result<DoneMarks> {
        DoneMarks::open(
            &self.fragments_path().join(".revseg-blocks"),
            &self.fragments_job,
        )
    }

    /// The fragments array and its marks, for the stages that read it.
    pub fn written_fragments(&self) -> Result<(ZarrArray, DoneMarks)> {
        let p = self.fragments_path();
        if !p.join(".zarray").exists() {
            return Err(Error::Invalid(format!(
                "{}: no fragments yet; run --stage fragments first (same settings)",
                p.display()
            )));
        }
        Ok((ZarrArray::open(&p)?, self.fragments_marks()?))
    }

    pub fn graph_marks(&self) -> Result<DoneMarks> {
        let job = serde_json::json!({"job": "region_graph", "fragments": self.fragments_job});
        DoneMarks::open(&self.graph_dir().join(".revseg-blocks"), &job)
    }

    pub fn agglomeration_marks(&self) -> Result<DoneMarks> {
        let job = serde_json::json!({"job": "agglomerate", "score": "mean", "fragments": self.fragments_job});
        DoneMarks::open(&self.maps_dir().join(".revseg-blocks"), &job)
    }

    pub fn relabel_marks(&self, threshold: f64) -> Result<DoneMarks> {
        let job = serde_json::json!({"job": "relabel", "threshold": threshold, "fragments": self.fragments_job});
        DoneMarks::open(
            &self.segmentation_path(threshold).join(".revseg-blocks"),
            &job,
        )
    }

    /// A uint64 (Z, Y, X) label array of this job, created by the first worker that needs it.
    pub fn label_array(&self, path: &Path) -> Result<ZarrArray> {
        let co = CreateOptions {
            version: ZarrVersion::V2,
            compressor: crate::volume::zarr::Compressor::Gzip(1),
            voxel_size: self.affinities.voxel_size(),
            offset_nm: self.affinities.offset_nm(),
            ..CreateOptions::default()
        };
        super::open_or_create(path, &self.shape, &self.chunk, Dtype::U64, &co)
    }

    /// Affinities (3, box) of the box at `off`, channels in our z, y, x order, checked.
    pub fn read_affinities(&self, off: [usize; 3], size: [usize; 3]) -> Result<Vec<f32>> {
        let mut aff = self
            .affinities
            .read_region::<f32>(
                &[0, off[0], off[1], off[2]],
                &[3, size[0], size[1], size[2]],
            )?
            .data;
        let dims = Dims::new(size[0], size[1], size[2]);
        if self.xyz {
            let n = dims.voxels();
            let (first, rest) = aff.split_at_mut(n);
            first.swap_with_slice(&mut rest[n..]);
        }
        crate::segment::check_affinities(&aff, dims).map_err(|e| {
            Error::Invalid(format!(
                "{} (block at {off:?}): {e}",
                self.affinities.spec()
            ))
        })?;
        Ok(aff)
    }

    /// Blocks whose stage-`what` output is missing among `blocks`, as an error naming them.
    pub fn require_done(&self, marks: &DoneMarks, blocks: &[usize], what: &str) -> Result<()> {
        let missing: Vec<usize> = blocks
            .iter()
            .copied()
            .filter(|&b| !marks.is_done(b))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let shown: Vec<String> = missing.iter().take(8).map(|b| b.to_string()).collect();
        Err(Error::Invalid(format!(
            "{}: the {what} stage has not finished block(s) {}{}; run --stage {what} first (same settings)",
            self.root.display(),
            shown.join(", "),
            if missing.len() > 8 { ", ..." } else { "" }
        )))
    }
}

/// What one worker did in a stage.
#[derive(Clone, Copy, Debug, Default)]
pub struct StageRun {
    pub blocks: usize,
    pub done_now: usize,
    pub skipped: usize,
}

/// Runs `work` on each block of `slice` that `is_done` does not report, in block order; `work`
/// marks its block once the block's output is durable.
pub fn run_blocks(
    n_blocks: usize,
    slice: WorkerSlice,
    is_done: impl Fn(usize) -> bool,
    mut work: impl FnMut(usize) -> Result<()>,
) -> Result<StageRun> {
    let mut r = StageRun {
        blocks: n_blocks,
        ..StageRun::default()
    };
    for b in (0..n_blocks).filter(|&b| slice.owns(b)) {
        if is_done(b) {
            r.skipped += 1;
        } else {
            work(b)?;
            r.done_now += 1;
        }
    }
    Ok(r)
}

/// The block itself and its neighbours across its lower faces: the fragments a block's region
/// graph reads.
pub fn lower_neighbours(grid: &BlockGrid, b: usize) -> Vec<usize> {
    let c = grid.counts();
    let idx = [b / (c[1] * c[2]), b / c[2] % c[1], b % c[2]];
    let mut v = vec![b];
    for a in 0..3 {
        if idx[a] > 0 {
            let mut j = idx;
            j[a] -= 1;
            v.push((j[0] * c[1] + j[1]) * c[2] + j[2]);
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_neighbours_are_across_faces() {
        let g = BlockGrid::new([4, 4, 4], [2, 2, 2], [2, 2, 2]).unwrap();
        assert_eq!(lower_neighbours(&g, 0), vec![0]);
        // Block 7 is (1, 1, 1): its lower neighbours are (0, 1, 1), (1, 0, 1), (1, 1, 0).
        assert_eq!(lower_neighbours(&g, 7), vec![7, 3, 5, 6]);
        assert_eq!(lower_neighbours(&g, 2), vec![2, 0]);
    }

    #[test]
    fn run_blocks_skips_done_and_foreign_blocks() {
        let mut seen = Vec::new();
        let r = run_blocks(
            7,
            WorkerSlice { index: 1, count: 2 },
            |b| b == 3,
            |b| {
                seen.push(b);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(seen, vec![1, 5]);
        assert_eq!((r.blocks, r.done_now, r.skipped), (7, 2, 1));
    }
}

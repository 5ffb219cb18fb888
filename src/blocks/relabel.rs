//! Stage 4 of a blockwise segmentation: each block's fragments mapped to their segments, one
//! segmentation array per threshold, written into the block's own chunks. A worker holds one
//! block of fragments and that block's slice of each map.

use super::agglomerate::MapFile;
use super::segjob::SegJob;
use crate::error::{Error, Result};
use crate::volume::array::Array;
use crate::volume::zarr::ZarrArray;

/// Segment ids of block `b` for each map in `maps` (read from `fragments`).
pub fn relabel_block(
    job: &SegJob,
    fragments: &ZarrArray,
    maps: &mut [MapFile],
    b: usize,
) -> Result<Vec<Vec<u64>>> {
    let (off, size) = job.grid.get(b);
    let frag = fragments.read_region::<u64>(&off, &size)?.data;
    let base = b as u64 * job.ids_per_block();
    maps.iter_mut()
        .map(|m| {
            let seg = m.block(b)?;
            frag.iter()
                .map(|&f| match f {
                    0 => Ok(0),
                    f if f > base && f - base <= seg.len() as u64 => {
                        Ok(seg[(f - base - 1) as usize])
                    }
                    f => Err(Error::Invalid(format!(
                        "{}: block {b} holds fragment {f}, which its map does not know; the fragments changed after the agglomeration: rerun the graph and agglomerate stages",
                        job.fragments_path().display()
                    ))),
                })
                .collect()
        })
        .collect()
}

/// Relabels block `b` into `outputs` (one per map, durable on return).
pub fn write_block(
    job: &SegJob,
    fragments: &ZarrArray,
    maps: &mut [MapFile],
    outputs: &[ZarrArray],
    b: usize,
) -> Result<()> {
    let (off, size) = job.grid.get(b);
    for (seg, out) in relabel_block(job, fragments, maps, b)?
        .into_iter()
        .zip(outputs)
    {
        out.write_region(&off, &Array::new(size.to_vec(), seg)?)?;
    }
    Ok(())
}

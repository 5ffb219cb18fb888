//! Stage 1 of a blockwise segmentation: the watershed of each block, run on the block with a
//! halo of context so that steepest-ascent paths, plateaus and the size-dependent merges near a
//! block's faces see what the one-process watershed sees; only the block's own voxels are kept,
//! renumbered 1.. in the watershed's id order, and written into the block's own chunks.
//! A fragment that crosses a face becomes one fragment per block; the region graph joins the
//! pieces with the mean affinity of the face between them, so the agglomeration merges them
//! first.

use super::segjob::SegJob;
use crate::error::Result;
use crate::segment::watershed::watershed;
use crate::segment::Dims;
use crate::volume::array::Array;
use crate::volume::zarr::ZarrArray;

/// Global fragment ids (block shape, C order; 0 = background) of block `b` and how many
/// fragments it holds.
pub fn fragments_block(job: &SegJob, b: usize) -> Result<(Vec<u64>, u64)> {
    let (off, size) = job.grid.get(b);
    let lo: [usize; 3] = [0, 1, 2].map(|a| off[a].saturating_sub(job.halo[a]));
    let hi: [usize; 3] = [0, 1, 2].map(|a| (off[a] + size[a] + job.halo[a]).min(job.shape[a]));
    let ext: [usize; 3] = [0, 1, 2].map(|a| hi[a] - lo[a]);
    let aff = job.read_affinities(lo, ext)?;
    let (ws, _) = watershed::<u32>(&aff, Dims::new(ext[0], ext[1], ext[2]), &job.params)?;
    drop(aff);
    let inner = |f: &mut dyn FnMut(usize, usize)| {
        let mut k = 0;
        for z in 0..size[0] {
            for y in 0..size[1] {
                let row =
                    ((z + off[0] - lo[0]) * ext[1] + y + off[1] - lo[1]) * ext[2] + off[2] - lo[2];
                for x in 0..size[2] {
                    f(k, ws[row + x] as usize);
                    k += 1;
                }
            }
        }
    };
    let top = ws.iter().copied().max().unwrap_or(0) as usize;
    let mut local = vec![0u64; top + 1];
    inner(&mut |_, w| local[w] = 1);
    let mut n = 0u64;
    for l in local.iter_mut().skip(1) {
        if *l != 0 {
            n += 1;
            *l = n;
        }
    }
    let base = b as u64 * job.ids_per_block();
    let mut out = vec![0u64; size.iter().product()];
    inner(&mut |k, w| {
        if w != 0 {
            out[k] = base + local[w];
        }
    });
    Ok((out, n))
}

/// Computes block `b` and writes it into `array` (durable on return).
pub fn write_block(job: &SegJob, array: &ZarrArray, b: usize) -> Result<u64> {
    let (off, size) = job.grid.get(b);
    let (ids, n) = fragments_block(job, b)?;
    array.write_region(&off, &Array::new(size.to_vec(), ids)?)?;
    Ok(n)
}

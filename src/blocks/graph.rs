//! Stage 2 of a blockwise segmentation: each block's region-graph edges with the statistics the
//! mean agglomeration merges exactly (sum and count of the affinities of the voxel edges between
//! two fragments).
//!
//! Ownership: the affinity of channel c at voxel p is the edge between p and p - e_c, so it
//! belongs to p's block. A block thus owns the edges among its own fragments and those across
//! its three lower faces (to the fragments of the blocks below it in z, y and x), and each voxel
//! edge of the volume is counted by exactly one block. It reads its own affinities and its
//! fragments plus one voxel layer below each lower face.
//!
//! File `region_graph/B.rg`, little-endian:
//!
//! | bytes | field |
//! |---|---|
//! | 8 | magic `RVSGRG01` |
//! | 8 | u64 block index B |
//! | 8 | u64 fragments of block B (ids `B * C + 1 ..= B * C + n`, C the voxels of a whole block) |
//! | 8 | u64 edge count E |
//! | 40 E | per edge: u64 fragment a, u64 fragment b (global ids, a < b), f64 sum of affinities, u64 count, u64 strong |
//!
//! Edges are sorted by (a, b); a pair appears in one block's file only (its voxel edges all lie
//! in that block or on one of its lower faces). `strong` counts the voxel edges at or above the
//! watershed's high threshold: such an edge joins its two voxels in every watershed, so a pair
//! with strong edges is one fragment that a block face cut in two (the agglomeration rejoins it
//! before anything else, as if no face had cut it).

use super::segjob::SegJob;
use crate::error::{Error, Result};
use crate::segment::watershed::FxMap;
use crate::volume::array::{io_err, write_file_atomic};
use crate::volume::zarr::ZarrArray;
use std::io::{Read, Write};
use std::path::Path;

const MAGIC: &[u8; 8] = b"RVSGRG02";
const EDGE_BYTES: usize = 40;

#[derive(Clone, Debug, PartialEq)]
pub struct BlockGraph {
    pub block: u64,
    pub fragments: u64,
    pub edges: Vec<Edge>,
}

/// Statistics of the voxel edges between fragments `a` < `b`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Edge {
    pub a: u64,
    pub b: u64,
    pub sum: f64,
    pub count: u64,
    /// Voxel edges at or above the watershed's high threshold (see the module doc).
    pub strong: u64,
}

/// The edges block `b` owns, from its affinities and the fragments (already written) of it and
/// its lower neighbours.
pub fn graph_block(job: &SegJob, fragments: &ZarrArray, b: usize) -> Result<BlockGraph> {
    let (off, size) = job.grid.get(b);
    let lo: [usize; 3] = [0, 1, 2].map(|a| off[a] - (off[a] > 0) as usize);
    let ext: [usize; 3] = [0, 1, 2].map(|a| off[a] + size[a] - lo[a]);
    let frag = fragments.read_region::<u64>(&lo, &ext)?.data;
    let aff = job.read_affinities(off, size)?;
    let n = size.iter().product::<usize>();
    let strides = [ext[1] * ext[2], ext[2], 1];
    let base = b as u64 * job.ids_per_block();
    let high = job.params.high as f32;
    let mut open: FxMap<(u64, u64), (f64, u64, u64)> = FxMap::default();
    let mut fragments_here = 0u64;
    let mut k = 0;
    for z in 0..size[0] {
        for y in 0..size[1] {
            for x in 0..size[2] {
                let g = [off[0] + z, off[1] + y, off[2] + x];
                let p = ((g[0] - lo[0]) * ext[1] + g[1] - lo[1]) * ext[2] + g[2] - lo[2];
                let s = frag[p];
                if s != 0 {
                    if s <= base || s > base + job.ids_per_block() {
                        return Err(Error::Invalid(format!(
                            "{}: voxel {g:?} of block {b} holds fragment {s}, not one of this block's ids; the fragments were written by another job: remove the output and rerun",
                            job.fragments_path().display()
                        )));
                    }
                    fragments_here = fragments_here.max(s - base);
                    for c in 0..3 {
                        if g[c] == 0 {
                            continue;
                        }
                        let t = frag[p - strides[c]];
                        if t == 0 || t == s {
                            continue;
                        }
                        let e = open.entry((s.min(t), s.max(t))).or_insert((0.0, 0, 0));
                        let v = aff[c * n + k];
                        e.0 += v as f64;
                        e.1 += 1;
                        e.2 += (v >= high) as u64;
                    }
                }
                k += 1;
            }
        }
    }
    let mut edges: Vec<Edge> = open
        .into_iter()
        .map(|((a, b), (sum, count, strong))| Edge {
            a,
            b,
            sum,
            count,
            strong,
        })
        .collect();
    edges.sort_unstable_by_key(|e| (e.a, e.b));
    Ok(BlockGraph {
        block: b as u64,
        fragments: fragments_here,
        edges,
    })
}

pub fn write(path: &Path, g: &BlockGraph) -> Result<()> {
    write_file_atomic(path, |w| {
        let mut put = |v: &[u8]| w.write_all(v).map_err(|e| io_err(path, e));
        put(MAGIC)?;
        put(&g.block.to_le_bytes())?;
        put(&g.fragments.to_le_bytes())?;
        put(&(g.edges.len() as u64).to_le_bytes())?;
        for e in &g.edges {
            put(&e.a.to_le_bytes())?;
            put(&e.b.to_le_bytes())?;
            put(&e.sum.to_le_bytes())?;
            put(&e.count.to_le_bytes())?;
            put(&e.strong.to_le_bytes())?;
        }
        Ok(())
    })
}

pub fn read(path: &Path) -> Result<BlockGraph> {
    let bad = |why: String| {
        Error::Invalid(format!(
            "{}: not a region-graph block file ({why}); remove it and its .done marker, then rerun the graph stage",
            path.display()
        ))
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| io_err(path, e))?;
    if bytes.len() < 32 || &bytes[..8] != MAGIC {
        return Err(bad("no RVSGRG02 header".into()));
    }
    let word = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().unwrap());
    let n = word(24);
    if n.checked_mul(EDGE_BYTES as u64)
        .and_then(|v| v.checked_add(32))
        != Some(bytes.len() as u64)
    {
        return Err(bad(format!("{} bytes for {n} edges", bytes.len())));
    }
    let edges: Vec<Edge> = (0..n as usize)
        .map(|k| {
            let o = 32 + EDGE_BYTES * k;
            Edge {
                a: word(o),
                b: word(o + 8),
                sum: f64::from_bits(word(o + 16)),
                count: word(o + 24),
                strong: word(o + 32),
            }
        })
        .collect();
    Ok(BlockGraph {
        block: word(8),
        fragments: word(16),
        edges,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_round_trip_and_truncation_is_refused() {
        let d = std::env::temp_dir().join(format!("revseg-rg-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("3.rg");
        let g = BlockGraph {
            block: 3,
            fragments: 7,
            edges: vec![
                Edge {
                    a: 2,
                    b: 9,
                    sum: 1.25,
                    count: 2,
                    strong: 1,
                },
                Edge {
                    a: 5,
                    b: 6,
                    sum: 0.1,
                    count: 1,
                    strong: 0,
                },
            ],
        };
        write(&p, &g).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 32 + 80);
        assert_eq!(read(&p).unwrap(), g);
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 4]).unwrap();
        let e = read(&p).unwrap_err().to_string();
        assert!(e.contains("108 bytes for 2 edges"), "{e}");
        std::fs::write(&p, b"junk").unwrap();
        assert!(read(&p).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }
}

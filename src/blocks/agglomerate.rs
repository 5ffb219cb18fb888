//! Stage 3 of a blockwise segmentation: one process reads every block's region graph, numbers
//! the fragments densely (block by block, which keeps their order), first rejoins the pieces of
//! fragments that block faces cut (pairs joined by a voxel edge at or above the watershed's high
//! threshold, which one process's watershed never separates), agglomerates the whole graph with
//! the one-process algorithm ([`RegionGraph::from_mean_stats`]) and writes, per threshold, the map
//! from fragment to segment. Rejoining first matters at low thresholds: otherwise a cut fragment
//! is rejoined only once its face's mean affinity scores below the threshold, and its pieces
//! merge with their neighbours in another order than the whole fragment would.
//!
//! File `agglomeration/threshold_T.map`, little-endian, read by the relabel workers one block's
//! slice at a time:
//!
//! | bytes | field |
//! |---|---|
//! | 8 | magic `RVSGMAP1` |
//! | 8 | u64 blocks N |
//! | 8 | u64 ids per block C |
//! | 8 (N + 1) | u64 prefix: fragments in the blocks before block i (the last entry is the total F) |
//! | 8 F | u64 segment of each fragment, block by block, fragment 1.. within a block: the smallest fragment id of its segment |

use super::segjob::SegJob;
use crate::error::{Error, Result};
use crate::segment::agglomerate::RegionGraph;
use crate::volume::array::{io_err, write_file_atomic};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

const MAGIC: &[u8; 8] = b"RVSGMAP1";

/// What the agglomeration found, per threshold in the order asked.
pub struct Summary {
    pub fragments: usize,
    pub edges: usize,
    pub segments: Vec<usize>,
    /// Per threshold, the agglomeration's merges (the rejoined pieces apart).
    pub merges: Vec<usize>,
    /// Fragment pieces rejoined across block faces before agglomerating.
    pub rejoined: usize,
}

/// Agglomerates the whole graph for `thresholds` and writes their maps.
pub fn agglomerate_job(job: &SegJob, thresholds: &[f64]) -> Result<Summary> {
    let n_blocks = job.grid.len();
    let mut prefix = vec![0u64; n_blocks + 1];
    let mut stats: Vec<(u32, u32, f64, u64)> = Vec::new();
    let mut graphs = Vec::with_capacity(n_blocks);
    for b in 0..n_blocks {
        let g = super::graph::read(&job.graph_path(b))?;
        if g.block != b as u64 || g.fragments > job.ids_per_block() {
            return Err(Error::Invalid(format!(
                "{}: holds block {} with {} fragments, not block {b} of this job; remove the output and rerun",
                job.graph_path(b).display(),
                g.block,
                g.fragments
            )));
        }
        prefix[b + 1] = prefix[b] + g.fragments;
        graphs.push(g);
    }
    let total = prefix[n_blocks];
    if total + 1 > u32::MAX as u64 {
        return Err(Error::Invalid(format!(
            "{total} fragments: beyond one agglomeration's 2^32; use larger watershed fragments (--ws-merge, --ws-dust)"
        )));
    }
    let dense = |id: u64| -> Result<u32> {
        let (b, l) = job.block_of(id);
        if b >= n_blocks || l > prefix[b + 1] - prefix[b] {
            return Err(Error::Invalid(format!(
                "region graph names fragment {id}, which no block's fragments hold; remove the output and rerun"
            )));
        }
        Ok((prefix[b] + l) as u32)
    };
    let mut cut = Vec::new();
    for g in graphs {
        for e in g.edges {
            let (a, b) = (dense(e.a)?, dense(e.b)?);
            stats.push((a, b, e.sum, e.count));
            if e.strong > 0 {
                cut.push((a, b));
            }
        }
    }
    let (piece_of, rejoined) = rejoin(total as usize + 1, &cut);
    drop(cut);
    for s in stats.iter_mut() {
        let (a, b) = (piece_of[s.0 as usize], piece_of[s.1 as usize]);
        (s.0, s.1) = (a.min(b), a.max(b));
    }
    stats.retain(|s| s.0 != s.1);
    // Each pair lives in one block's file, but a merged graph must hold one edge per pair
    // whatever wrote the files: duplicates are summed.
    stats.sort_unstable_by_key(|s| (s.0, s.1));
    stats.dedup_by(|later, kept| {
        let same = (later.0, later.1) == (kept.0, kept.1);
        if same {
            kept.2 += later.2;
            kept.3 += later.3;
        }
        same
    });
    let edges = stats.len();
    let agg = RegionGraph::from_mean_stats(total as usize + 1, &stats)?.agglomerate(thresholds)?;
    drop(stats);
    // Dense ids back to fragment ids.
    let mut global = Vec::with_capacity(total as usize + 1);
    global.push(0u64);
    for b in 0..n_blocks {
        let base = b as u64 * job.ids_per_block();
        global.extend((1..=prefix[b + 1] - prefix[b]).map(|l| base + l));
    }
    let mut segments = Vec::new();
    for (t, &th) in thresholds.iter().enumerate() {
        let map = &agg.maps[t];
        let path = job.map_path(th);
        write_file_atomic(&path, |w| {
            let mut put = |v: u64| w.write_all(&v.to_le_bytes()).map_err(|e| io_err(&path, e));
            w_header(&mut put, n_blocks, job.ids_per_block(), &prefix)?;
            for d in 1..=total as usize {
                put(global[map[piece_of[d] as usize] as usize])?;
            }
            Ok(())
        })?;
        let mut roots: Vec<u32> = piece_of[1..].iter().map(|&p| map[p as usize]).collect();
        roots.sort_unstable();
        roots.dedup();
        segments.push(roots.len());
    }
    Ok(Summary {
        fragments: total as usize,
        edges,
        segments,
        merges: agg.merges,
        rejoined,
    })
}

/// Union of the pairs in `joins` over ids 0..n: each id's set, named by its smallest id, and how
/// many unions joined two sets.
fn rejoin(n: usize, joins: &[(u32, u32)]) -> (Vec<u32>, usize) {
    let mut parent: Vec<u32> = (0..n as u32).collect();
    fn find(parent: &mut [u32], mut x: u32) -> u32 {
        while parent[x as usize] != x {
            let up = parent[parent[x as usize] as usize];
            parent[x as usize] = up;
            x = up;
        }
        x
    }
    let mut unions = 0;
    for &(a, b) in joins {
        let (ra, rb) = (find(&mut parent, a), find(&mut parent, b));
        if ra != rb {
            // The smaller id stays the root, so a set is named by its smallest id.
            parent[ra.max(rb) as usize] = ra.min(rb);
            unions += 1;
        }
    }
    for x in 0..n as u32 {
        let r = find(&mut parent, x);
        parent[x as usize] = r;
    }
    (parent, unions)
}

fn w_header(
    put: &mut impl FnMut(u64) -> Result<()>,
    blocks: usize,
    ids_per_block: u64,
    prefix: &[u64],
) -> Result<()> {
    put(u64::from_le_bytes(*MAGIC))?;
    put(blocks as u64)?;
    put(ids_per_block)?;
    prefix.iter().try_for_each(|&p| put(p))
}

/// Reads the segments of one block's fragments from a map file.
pub struct MapFile {
    file: std::fs::File,
    path: std::path::PathBuf,
    prefix: Vec<u64>,
}

impl MapFile {
    pub fn open(path: &Path, blocks: usize, ids_per_block: u64) -> Result<Self> {
        let bad = |why: String| {
            Error::Invalid(format!(
                "{}: not this job's fragment-to-segment map ({why}); rerun --stage agglomerate",
                path.display()
            ))
        };
        let mut file = std::fs::File::open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::Invalid(format!(
                    "{}: no map for this threshold; run --stage agglomerate with it first",
                    path.display()
                ))
            } else {
                io_err(path, e)
            }
        })?;
        let mut head = vec![0u8; 8 * (3 + blocks + 1)];
        file.read_exact(&mut head)
            .map_err(|_| bad("shorter than its header".into()))?;
        let word = |i: usize| u64::from_le_bytes(head[8 * i..8 * i + 8].try_into().unwrap());
        if &head[..8] != MAGIC || word(1) != blocks as u64 || word(2) != ids_per_block {
            return Err(bad(format!(
                "header for {} blocks of {} ids, this job has {blocks} of {ids_per_block}",
                word(1),
                word(2)
            )));
        }
        let prefix: Vec<u64> = (0..=blocks).map(|i| word(3 + i)).collect();
        let want = 8 * (3 + blocks as u64 + 1 + prefix[blocks]);
        let len = file.metadata().map_err(|e| io_err(path, e))?.len();
        if len != want {
            return Err(bad(format!("{len} bytes, expected {want}")));
        }
        Ok(MapFile {
            file,
            path: path.to_path_buf(),
            prefix,
        })
    }

    /// Segments of block `b`'s fragments 1..=n (index l - 1 for fragment l).
    pub fn block(&mut self, b: usize) -> Result<Vec<u64>> {
        let n = (self.prefix[b + 1] - self.prefix[b]) as usize;
        let start = 8 * (3 + self.prefix.len() as u64 + self.prefix[b]);
        let mut bytes = vec![0u8; 8 * n];
        self.file
            .seek(SeekFrom::Start(start))
            .and_then(|_| self.file.read_exact(&mut bytes))
            .map_err(|e| io_err(&self.path, e))?;
        Ok(bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::rejoin;

    #[test]
    fn rejoined_sets_are_named_by_their_smallest_id() {
        // Chains 5-2-7 and 3-6 (given out of order, one pair twice); 1 and 4 stay alone.
        let (piece, unions) = rejoin(8, &[(5, 7), (2, 7), (6, 3), (2, 5), (3, 6)]);
        assert_eq!(piece, vec![0, 1, 2, 3, 4, 2, 3, 2]);
        assert_eq!(unions, 3);
    }
}

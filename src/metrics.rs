//! Segmentation metrics against a ground truth: adapted Rand error (SNEMI3D), its merge and split
//! components, variation of information, and boundary accuracy.
//!
//! Conventions (ENGINEERING.md section 4):
//! - Only voxels with ground-truth label != 0 count for Rand and VOI (N = their number).
//! - A voxel with segmentation label 0 inside the ground-truth foreground is a singleton: its own
//!   segment of one voxel (so leaving voxels unlabelled is never rewarded). It adds 1 to
//!   sum p_ij^2 and to sum b_j^2, and (1/N) log2 N to H(S) and H(S, G).
//!   (gala's and CREMI's Python adds count/N instead of count to those sums, a known variant.)
//! - P = sum p_ij^2 / sum b_j^2 (1 when no segment spans two objects: the merge side),
//!   R = sum p_ij^2 / sum a_i^2 (1 when no object is cut: the split side),
//!   adapted Rand error = 1 - 2PR / (P + R).
//! - VOI split = H(S|G), merge = H(G|S), in bits.
//! - Boundary accuracy: a voxel is a border voxel of a labelling when it is 0 or its 1x3x3
//!   neighbourhood (same z, y and x within 1, diagonals included, clipped at the volume's edge)
//!   holds a label other than its own. The accuracy is the fraction of all voxels (ground truth 0
//!   included) where the segmentation's border map agrees with the ground truth's.
//!
//! Counts are u64 and sums of squares u128, so billion-voxel volumes cannot overflow; f64 appears
//! only in the final ratios.

use crate::error::{Error, Result};
use crate::segment::watershed::FxMap;
use crate::segment::{Dims, Label};

#[derive(Clone, Debug, PartialEq)]
pub struct Metrics {
    pub adapted_rand_error: f64,
    /// P: the merge side of the Rand score (1 = no false merges).
    pub rand_merge: f64,
    /// R: the split side of the Rand score (1 = no false splits).
    pub rand_split: f64,
    pub voi_split: f64,
    pub voi_merge: f64,
    pub boundary_accuracy: f64,
    /// Ground-truth foreground voxels (N).
    pub voxels: u64,
    pub dims: Dims,
}

/// Compares `seg` with `gt` (both Z, Y, X of `dims`), over the centred `crop` if given.
pub fn evaluate<S: Label, G: Label>(
    seg: &[S],
    gt: &[G],
    dims: Dims,
    crop: Option<Dims>,
) -> Result<Metrics> {
    if seg.len() != dims.voxels() || gt.len() != dims.voxels() {
        return Err(Error::shape(
            "evaluate",
            format!(
                "segmentation has {} voxels, ground truth {}, volume {:?}",
                seg.len(),
                gt.len(),
                dims
            ),
        ));
    }
    let win = Window::new(dims, crop)?;
    let t = Table::count(seg, gt, &win);
    if t.n == 0 {
        return Err(Error::Invalid(
            "ground truth has no foreground voxels in the evaluated region: nothing to compare"
                .into(),
        ));
    }
    let (p, r) = t.rand();
    let (voi_split, voi_merge) = t.voi();
    Ok(Metrics {
        adapted_rand_error: 1.0 - 2.0 * p * r / (p + r),
        rand_merge: p,
        rand_split: r,
        voi_split,
        voi_merge,
        boundary_accuracy: boundary_accuracy(seg, gt, &win),
        voxels: t.n,
        dims: win.size,
    })
}

/// The evaluated box: `size` voxels starting at `origin`, inside a volume of `full` dims.
struct Window {
    full: Dims,
    origin: [usize; 3],
    size: Dims,
}

impl Window {
    fn new(full: Dims, crop: Option<Dims>) -> Result<Self> {
        let size = crop.unwrap_or(full);
        if size.z > full.z || size.y > full.y || size.x > full.x || size.voxels() == 0 {
            return Err(Error::Invalid(format!(
                "crop {}x{}x{} does not fit the volume {}x{}x{} (or is empty)",
                size.z, size.y, size.x, full.z, full.y, full.x
            )));
        }
        let origin = [
            (full.z - size.z) / 2,
            (full.y - size.y) / 2,
            (full.x - size.x) / 2,
        ];
        Ok(Window { full, origin, size })
    }

    /// Flat index in the full volume of window position (z, y, x).
    fn index(&self, z: usize, y: usize, x: usize) -> usize {
        ((self.origin[0] + z) * self.full.y + self.origin[1] + y) * self.full.x + self.origin[2] + x
    }

    fn for_each(&self, mut f: impl FnMut(usize, usize, usize, usize)) {
        for z in 0..self.size.z {
            for y in 0..self.size.y {
                for x in 0..self.size.x {
                    f(z, y, x, self.index(z, y, x));
                }
            }
        }
    }
}

/// Contingency table over ground-truth foreground voxels.
struct Table {
    /// (gt, seg) -> count, for seg != 0.
    joint: FxMap<(u64, u64), u64>,
    /// gt -> count (row sums a_i, singletons included).
    rows: FxMap<u64, u64>,
    /// seg -> count (column sums b_j, seg != 0).
    cols: FxMap<u64, u64>,
    singletons: u64,
    n: u64,
}

impl Table {
    fn count<S: Label, G: Label>(seg: &[S], gt: &[G], win: &Window) -> Self {
        let mut t = Table {
            joint: FxMap::default(),
            rows: FxMap::default(),
            cols: FxMap::default(),
            singletons: 0,
            n: 0,
        };
        win.for_each(|_, _, _, i| {
            let g = gt[i].to_usize() as u64;
            if g == 0 {
                return;
            }
            let s = seg[i].to_usize() as u64;
            t.n += 1;
            *t.rows.entry(g).or_insert(0) += 1;
            if s == 0 {
                t.singletons += 1;
            } else {
                *t.joint.entry((g, s)).or_insert(0) += 1;
                *t.cols.entry(s).or_insert(0) += 1;
            }
        });
        t
    }

    fn rand(&self) -> (f64, f64) {
        let sq = |m: &mut dyn Iterator<Item = u64>| m.map(|c| c as u128 * c as u128).sum::<u128>();
        let single = self.singletons as u128;
        let sum_p = sq(&mut self.joint.values().copied()) + single;
        let sum_a = sq(&mut self.rows.values().copied());
        let sum_b = sq(&mut self.cols.values().copied()) + single;
        (sum_p as f64 / sum_b as f64, sum_p as f64 / sum_a as f64)
    }

    /// (H(S|G), H(G|S)) in bits.
    fn voi(&self) -> (f64, f64) {
        let n = self.n as f64;
        let h = |it: &mut dyn Iterator<Item = u64>| -> f64 {
            it.map(|c| {
                let p = c as f64 / n;
                -p * p.log2()
            })
            .sum()
        };
        let single = self.singletons as f64 * n.log2() / n;
        let h_sg = h(&mut self.joint.values().copied()) + single;
        let h_s = h(&mut self.cols.values().copied()) + single;
        let h_g = h(&mut self.rows.values().copied());
        ((h_sg - h_g).max(0.0), (h_sg - h_s).max(0.0))
    }
}

/// Whether the voxel at window position (z, y, x) is a border voxel of `labels` (see module doc).
fn is_border<L: Label>(labels: &[L], win: &Window, z: usize, y: usize, x: usize) -> bool {
    let me = labels[win.index(z, y, x)];
    if me == L::ZERO {
        return true;
    }
    let (gy, gx) = (win.origin[1] + y, win.origin[2] + x);
    let rows = gy.saturating_sub(1)..=(gy + 1).min(win.full.y - 1);
    let zoff = (win.origin[0] + z) * win.full.y;
    rows.into_iter().any(|yy| {
        let base = (zoff + yy) * win.full.x;
        (gx.saturating_sub(1)..=(gx + 1).min(win.full.x - 1)).any(|xx| labels[base + xx] != me)
    })
}

/// Fraction of voxels in the window whose border status agrees between `seg` and `gt`. The
/// neighbourhood looks past the crop into the full volume, so cropping does not invent borders.
fn boundary_accuracy<S: Label, G: Label>(seg: &[S], gt: &[G], win: &Window) -> f64 {
    let mut agree = 0u64;
    win.for_each(|z, y, x, _| {
        agree += (is_border(seg, win, z, y, x) == is_border(gt, win, z, y, x)) as u64;
    });
    agree as f64 / win.size.voxels() as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::watershed::{watershed, Params};
    use crate::segment::{affinities_from_labels, canonical};

    fn line(seg: &[u32], gt: &[u32]) -> Metrics {
        evaluate(seg, gt, Dims::new(1, 1, seg.len()), None).unwrap()
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    #[test]
    fn identical_partitions_score_perfectly_whatever_the_ids() {
        let m = line(&[7, 7, 3, 3], &[1, 1, 2, 2]);
        close(m.adapted_rand_error, 0.0);
        close(m.voi_split + m.voi_merge, 0.0);
        assert_eq!(m.voxels, 4);
    }

    #[test]
    fn merge_of_two_objects() {
        // gt [1,1,2,2], seg one segment: p = {2, 2}, sum p^2 = 8, a = {2,2} -> 8, b = {4} -> 16.
        // P = 0.5, R = 1, error = 1 - 2*0.5/1.5 = 1/3. H(G) = 1, H(S) = 0, H(S,G) = 1:
        // split H(S|G) = 0, merge H(G|S) = 1.
        let m = line(&[1, 1, 1, 1], &[1, 1, 2, 2]);
        close(m.rand_merge, 0.5);
        close(m.rand_split, 1.0);
        close(m.adapted_rand_error, 1.0 / 3.0);
        close(m.voi_split, 0.0);
        close(m.voi_merge, 1.0);
    }

    #[test]
    fn split_of_one_object() {
        // Mirror of the merge: P = 1, R = 8/16, error 1/3; VOI split 1, merge 0.
        let m = line(&[1, 1, 2, 2], &[1, 1, 1, 1]);
        close(m.rand_merge, 1.0);
        close(m.rand_split, 0.5);
        close(m.adapted_rand_error, 1.0 / 3.0);
        close(m.voi_split, 1.0);
        close(m.voi_merge, 0.0);
    }

    #[test]
    fn ground_truth_zero_is_ignored() {
        // The two gt-0 voxels carry arbitrary segments; only [1, 1] vs [1, 1] counts.
        let m = line(&[5, 6, 1, 1], &[0, 0, 1, 1]);
        close(m.adapted_rand_error, 0.0);
        assert_eq!(m.voxels, 2);
    }

    #[test]
    fn segmentation_zero_in_foreground_counts_as_singletons() {
        // gt one object of 4; seg [0, 0, 1, 1]: cells {2} plus 2 singletons.
        // sum p^2 = 4 + 2 = 6, sum b^2 = 4 + 2 = 6, sum a^2 = 16: P = 1, R = 3/8,
        // error = 1 - (3/4)/(11/8) = 5/11. H(S) = 0.5*1 + 2*(1/4)*2 = 1.5 = H(S,G), H(G) = 0:
        // VOI split 1.5, merge 0.
        let m = line(&[0, 0, 1, 1], &[1, 1, 1, 1]);
        close(m.rand_merge, 1.0);
        close(m.rand_split, 3.0 / 8.0);
        close(m.adapted_rand_error, 5.0 / 11.0);
        close(m.voi_split, 1.5);
        close(m.voi_merge, 0.0);
    }

    #[test]
    fn empty_overlap_and_empty_truth() {
        // Nothing segmented: 4 singletons. sum p^2 = 4 = sum b^2, sum a^2 = 8: P = 1, R = 1/2,
        // error 1/3.
        let m = line(&[0, 0, 0, 0], &[1, 1, 2, 2]);
        close(m.adapted_rand_error, 1.0 / 3.0);
        assert!(matches!(
            evaluate(&[1u32, 2], &[0u32, 0], Dims::new(1, 1, 2), None),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            evaluate(&[1u32, 2], &[1u32], Dims::new(1, 1, 2), None),
            Err(Error::Shape { .. })
        ));
    }

    #[test]
    fn centred_crop_sees_only_the_middle() {
        // 1 x 1 x 6: the merge sits in the outer voxels; the middle 2 voxels agree.
        let m = evaluate(
            &[1u32, 1, 2, 3, 4, 4],
            &[1u32, 2, 2, 3, 5, 6],
            Dims::new(1, 1, 6),
            Some(Dims::new(1, 1, 2)),
        )
        .unwrap();
        close(m.adapted_rand_error, 0.0);
        assert_eq!(m.voxels, 2);
        assert!(evaluate(
            &[1u32; 6],
            &[1u32; 6],
            Dims::new(1, 1, 6),
            Some(Dims::new(1, 1, 7))
        )
        .is_err());
    }

    #[test]
    fn boundary_accuracy_by_hand() {
        // gt columns 1 1 2 (3 rows): voxels in columns x=1 and x=2 see both labels (6 borders),
        // column x=0 sees only 1s. A single-segment prediction has no borders: 3 of 9 agree.
        let gt: Vec<u32> = vec![1, 1, 2, 1, 1, 2, 1, 1, 2];
        let m = evaluate(&[1u32; 9], &gt, Dims::new(1, 3, 3), None).unwrap();
        close(m.boundary_accuracy, 3.0 / 9.0);
        // A 0 in the prediction at the centre makes every voxel a border (all 8 neighbours see
        // it, and it is one itself): then columns 1 and 2 agree, column 0 does not: 6 of 9.
        let mut seg = vec![1u32; 9];
        seg[4] = 0;
        let m = evaluate(&seg, &gt, Dims::new(1, 3, 3), None).unwrap();
        close(m.boundary_accuracy, 6.0 / 9.0);
    }

    /// 2 x 8 x 8 in four quadrant objects of 2 x 4 x 4 = 32 voxels each.
    fn quadrants() -> (Vec<u32>, Dims) {
        let dims = Dims::new(2, 8, 8);
        let gt = (0..dims.voxels())
            .map(|i| {
                let (y, x) = (i / 8 % 8, i % 8);
                1 + (y / 4 * 2 + x / 4) as u32
            })
            .collect();
        (gt, dims)
    }

    fn segment_perfect(gt: &[u32], dims: Dims) -> Vec<u32> {
        let aff = affinities_from_labels(gt, dims);
        let p = Params {
            low: 0.5,
            high: 0.9,
            merge: vec![(10, 0.5)],
            dust: 0,
            relative: false,
        };
        watershed::<u32>(&aff, dims, &p).unwrap().0
    }

    #[test]
    fn perfect_affinities_give_zero_error_after_watershed() {
        let (gt, dims) = quadrants();
        let seg = segment_perfect(&gt, dims);
        assert_eq!(canonical(&seg), canonical(&gt));
        let m = evaluate(&seg, &gt, dims, None).unwrap();
        close(m.adapted_rand_error, 0.0);
        close(m.boundary_accuracy, 1.0);
    }

    #[test]
    fn merging_or_splitting_gives_the_hand_computed_error() {
        let (gt, dims) = quadrants();
        let seg = segment_perfect(&gt, dims);
        // Merge objects 1 and 2: sum p^2 = 4*32^2 = 4096, sum b^2 = 64^2 + 2*32^2 = 6144,
        // sum a^2 = 4096. P = 2/3, R = 1, error = 1 - (4/3)/(5/3) = 1/5.
        let (a, b) = (seg[0], seg[7]);
        let merged: Vec<u32> = seg.iter().map(|&l| if l == b { a } else { l }).collect();
        close(
            evaluate(&merged, &gt, dims, None)
                .unwrap()
                .adapted_rand_error,
            0.2,
        );
        // Split object 1 by z into halves of 16: sum p^2 = sum b^2 = 3*1024 + 2*256 = 3584,
        // sum a^2 = 4096. P = 1, R = 7/8, error = 1 - (7/4)/(15/8) = 1/15.
        let split: Vec<u32> = seg
            .iter()
            .enumerate()
            .map(|(i, &l)| if l == a && i >= 64 { 1000 } else { l })
            .collect();
        close(
            evaluate(&split, &gt, dims, None)
                .unwrap()
                .adapted_rand_error,
            1.0 / 15.0,
        );
    }
}

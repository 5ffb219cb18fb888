//! Affinity targets and loss masks from a label patch (ENGINEERING.md section 3).
//!
//! Layout: labels (Z, Y, X); targets and masks f32 (C, Z, Y, X), C order. Channel c has offset
//! o_c = (dz, dy, dx) and its edge at voxel p joins p with p - o_c (the edge lives at the
//! higher-coordinate voxel, as in waterz and gunpowder).
//!
//! - target[c][p] = 1 iff p - o_c is inside the patch, seg[p] == seg[p - o_c] and both are
//!   non-zero; otherwise 0.
//! - mask[c][p] = 1 iff p - o_c is inside the patch and both p and p - o_c lie in the labelled
//!   region (the whole patch unless a labelled-region volume is given). This is the DeepEM /
//!   DataProvider convention (`affinitize_mask`): an edge whose other end is outside the patch or
//!   outside the labelled region says nothing and is left out of the loss; an edge touching a
//!   label-0 (boundary) voxel inside the labelled region is a real "disconnected" target, 0, and
//!   counts.
//!
//! Border widening (Superhuman; Kisuk Lee's thesis, A.1.4): before the affinities, every
//! non-zero voxel whose 1 x 3 x 3 window (its own z section, y +- 1, x +- 1, clipped at the patch
//! edge) holds a non-zero label other than its own becomes 0. Label 0 in the window does not
//! count (a voxel next only to boundary keeps its label, so boundaries are not widened into
//! themselves), the test reads the original labels (one pass, not iterated), and z neighbours
//! are ignored (sections are 5x thicker than pixels). Near the patch edge the window is clipped,
//! so a patch cut from a larger volume with one voxel of y, x context, widened and then cropped,
//! matches widening the volume; widening the patch alone may keep a label next to a different
//! object just outside it.

use crate::error::{Error, Result};
use crate::segment::{Dims, Label};
use crate::volume::array::{Array, Voxel};

/// The 3 nearest-neighbour offsets (z, y, x): channel 0 = z, 1 = y, 2 = x.
pub const NEAREST: [[usize; 3]; 3] = [[1, 0, 0], [0, 1, 0], [0, 0, 1]];

/// The 12 offsets of the long-range output, in ENGINEERING.md's order (the first 3 are
/// [`NEAREST`]).
pub const LONG_RANGE: [[usize; 3]; 12] = [
    [1, 0, 0],
    [0, 1, 0],
    [0, 0, 1],
    [2, 0, 0],
    [0, 3, 0],
    [0, 0, 3],
    [3, 0, 0],
    [0, 9, 0],
    [0, 0, 9],
    [4, 0, 0],
    [0, 27, 0],
    [0, 0, 27],
];

/// Offsets for a network with `channels` outputs (3 or 12).
pub fn offsets_for(channels: usize) -> Result<&'static [[usize; 3]]> {
    match channels {
        3 => Ok(&NEAREST),
        12 => Ok(&LONG_RANGE),
        n => Err(Error::Invalid(format!(
            "affinity targets exist for 3 (nearest-neighbour) or 12 (long-range) channels, not {n}"
        ))),
    }
}

fn dims_of<T>(what: &str, a: &Array<T>) -> Result<Dims> {
    match a.shape[..] {
        [z, y, x] if a.data.len() == z * y * x => Ok(Dims::new(z, y, x)),
        _ => Err(Error::shape(
            "affinity targets",
            format!(
                "{what} must be (Z, Y, X) with matching data; got shape {:?} and {} values",
                a.shape,
                a.data.len()
            ),
        )),
    }
}

/// Superhuman's border widening (module documentation): a copy of `seg` where every non-zero
/// voxel with a different non-zero label in its in-section 3 x 3 window is 0.
pub fn widen_borders<L: Label>(seg: &[L], dims: Dims) -> Vec<L> {
    let mut out = seg.to_vec();
    let (ny, nx) = (dims.y, dims.x);
    for z in 0..dims.z {
        let sec = z * ny * nx;
        for y in 0..ny {
            for x in 0..nx {
                let i = sec + y * nx + x;
                let l = seg[i];
                if l == L::ZERO {
                    continue;
                }
                let mut other = false;
                'win: for yy in y.saturating_sub(1)..(y + 2).min(ny) {
                    for xx in x.saturating_sub(1)..(x + 2).min(nx) {
                        let m = seg[sec + yy * nx + xx];
                        if m != L::ZERO && m != l {
                            other = true;
                            break 'win;
                        }
                    }
                }
                if other {
                    out[i] = L::ZERO;
                }
            }
        }
    }
    out
}

/// How targets are made.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TargetOptions {
    /// Superhuman's border widening before the affinities (on for training).
    pub widen_borders: bool,
}

impl Default for TargetOptions {
    fn default() -> Self {
        TargetOptions {
            widen_borders: true,
        }
    }
}

/// Targets and masks, each f32 (C, Z, Y, X), for `offsets` (see the module documentation).
pub fn affinity_targets<L: Label + Voxel>(
    labels: &Array<L>,
    offsets: &[[usize; 3]],
    opt: TargetOptions,
) -> Result<(Array<f32>, Array<f32>)> {
    targets_impl(labels, None, offsets, opt)
}

/// As [`affinity_targets`], with a labelled-region volume (same shape, non-zero = labelled):
/// edges with an end outside it are masked out.
pub fn affinity_targets_in_region<L: Label + Voxel>(
    labels: &Array<L>,
    labelled: &Array<u8>,
    offsets: &[[usize; 3]],
    opt: TargetOptions,
) -> Result<(Array<f32>, Array<f32>)> {
    targets_impl(labels, Some(labelled), offsets, opt)
}

/// Nearest-neighbour targets (3 channels) with border widening: what training uses.
pub fn nearest_targets<L: Label + Voxel>(labels: &Array<L>) -> Result<(Array<f32>, Array<f32>)> {
    affinity_targets(labels, &NEAREST, TargetOptions::default())
}

/// Long-range targets (12 channels) with border widening.
pub fn long_range_targets<L: Label + Voxel>(labels: &Array<L>) -> Result<(Array<f32>, Array<f32>)> {
    affinity_targets(labels, &LONG_RANGE, TargetOptions::default())
}

fn targets_impl<L: Label + Voxel>(
    labels: &Array<L>,
    labelled: Option<&Array<u8>>,
    offsets: &[[usize; 3]],
    opt: TargetOptions,
) -> Result<(Array<f32>, Array<f32>)> {
    let dims = dims_of("label patch", labels)?;
    if let Some(m) = labelled {
        let md = dims_of("labelled-region mask", m)?;
        if md != dims {
            return Err(Error::shape(
                "affinity targets",
                format!(
                    "labelled-region mask {:?} and labels {:?} differ in shape",
                    m.shape, labels.shape
                ),
            ));
        }
    }
    if offsets.is_empty() {
        return Err(Error::Invalid(
            "affinity targets need at least one offset".into(),
        ));
    }
    if let Some(o) = offsets.iter().find(|o| o.iter().all(|&d| d == 0)) {
        return Err(Error::Invalid(format!(
            "affinity offset {o:?} joins a voxel with itself"
        )));
    }
    let seg = if opt.widen_borders {
        widen_borders(&labels.data, dims)
    } else {
        labels.data.clone()
    };
    let n = dims.voxels();
    let c = offsets.len();
    let shape = vec![c, dims.z, dims.y, dims.x];
    let mut target = Array::filled(shape.clone(), 0f32)?;
    let mut mask = Array::filled(shape, 0f32)?;
    let (sy, sz) = (dims.x, dims.y * dims.x);
    for (ch, o) in offsets.iter().enumerate() {
        let [dz, dy, dx] = *o;
        let step = dz * sz + dy * sy + dx;
        let t = &mut target.data[ch * n..(ch + 1) * n];
        let m = &mut mask.data[ch * n..(ch + 1) * n];
        // Voxels whose partner p - o is inside the patch: z >= dz, y >= dy, x >= dx.
        for z in dz..dims.z {
            for y in dy..dims.y {
                let row = z * sz + y * sy;
                for x in dx..dims.x {
                    let i = row + x;
                    let j = i - step;
                    let inside = labelled.is_none_or(|l| l.data[i] != 0 && l.data[j] != 0);
                    if inside {
                        m[i] = 1.0;
                    }
                    if seg[i] != L::ZERO && seg[i] == seg[j] {
                        t[i] = 1.0;
                    }
                }
            }
        }
    }
    Ok((target, mask))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::segment::affinities_from_labels;

    fn arr(shape: &[usize], v: &[u32]) -> Array<u32> {
        Array::new(shape.to_vec(), v.to_vec()).unwrap()
    }

    /// Two objects side by side, boundary (0) in the bottom-left corner:
    ///   1 1 2 2
    ///   1 1 2 2
    ///   1 1 2 2
    ///   0 0 2 2
    fn two_objects() -> Array<u32> {
        arr(
            &[1, 4, 4],
            &[1, 1, 2, 2, 1, 1, 2, 2, 1, 1, 2, 2, 0, 0, 2, 2],
        )
    }

    fn channel(a: &Array<f32>, c: usize) -> Vec<f32> {
        let n: usize = a.shape[1..].iter().product();
        a.data[c * n..(c + 1) * n].to_vec()
    }

    #[test]
    fn hand_worked_1x4x4_without_widening() {
        let opt = TargetOptions {
            widen_borders: false,
        };
        let (t, m) = affinity_targets(&two_objects(), &NEAREST, opt).unwrap();
        assert_eq!(t.shape, vec![3, 1, 4, 4]);
        // z: a single section has no z edges.
        assert_eq!(channel(&t, 0), vec![0.0; 16]);
        assert_eq!(channel(&m, 0), vec![0.0; 16]);
        // y: edge (y, x) joins (y-1, x); row 0 has no partner.
        #[rustfmt::skip]
        let ty = [
            0., 0., 0., 0.,
            1., 1., 1., 1.,
            1., 1., 1., 1.,
            0., 0., 1., 1.,
        ];
        #[rustfmt::skip]
        let my = [
            0., 0., 0., 0.,
            1., 1., 1., 1.,
            1., 1., 1., 1.,
            1., 1., 1., 1.,
        ];
        assert_eq!(channel(&t, 1), ty);
        assert_eq!(channel(&m, 1), my);
        // x: edge (y, x) joins (y, x-1); 1|2 cuts between columns 1 and 2; 0-0 is no edge.
        #[rustfmt::skip]
        let tx = [
            0., 1., 0., 1.,
            0., 1., 0., 1.,
            0., 1., 0., 1.,
            0., 0., 0., 1.,
        ];
        #[rustfmt::skip]
        let mx = [
            0., 1., 1., 1.,
            0., 1., 1., 1.,
            0., 1., 1., 1.,
            0., 1., 1., 1.,
        ];
        assert_eq!(channel(&t, 2), tx);
        assert_eq!(channel(&m, 2), mx);
    }

    #[test]
    fn hand_worked_1x4x4_with_widening() {
        // Columns 1 and 2 touch the other object within 3 x 3 and become boundary; (2, 0) only
        // sees label 1 and 0, so it keeps its label; (3, 3) only sees 2.
        let w = widen_borders(&two_objects().data, Dims::new(1, 4, 4));
        assert_eq!(w, vec![1, 0, 0, 2, 1, 0, 0, 2, 1, 0, 0, 2, 0, 0, 0, 2]);
        let (t, m) = nearest_targets(&two_objects()).unwrap();
        #[rustfmt::skip]
        let ty = [
            0., 0., 0., 0.,
            1., 0., 0., 1.,
            1., 0., 0., 1.,
            0., 0., 0., 1.,
        ];
        assert_eq!(channel(&t, 1), ty);
        // No two x-neighbours share a non-zero label any more.
        assert_eq!(channel(&t, 2), vec![0.0; 16]);
        // Widening changes targets, never the mask.
        let (_, m0) = affinity_targets(
            &two_objects(),
            &NEAREST,
            TargetOptions {
                widen_borders: false,
            },
        )
        .unwrap();
        assert_eq!(m, m0);
    }

    #[test]
    fn hand_worked_long_range_channels() {
        let opt = TargetOptions {
            widen_borders: false,
        };
        let (t, m) = affinity_targets(&two_objects(), &LONG_RANGE, opt).unwrap();
        assert_eq!(t.shape, vec![12, 1, 4, 4]);
        // Channel 4, offset (0, 3, 0): only row 3 has a partner (row 0).
        #[rustfmt::skip]
        let t4 = [
            0., 0., 0., 0.,
            0., 0., 0., 0.,
            0., 0., 0., 0.,
            0., 0., 1., 1.,
        ];
        let mut m4 = vec![0.0; 16];
        m4[12..].fill(1.0);
        assert_eq!(channel(&t, 4), t4);
        assert_eq!(channel(&m, 4), m4);
        // Channel 5, offset (0, 0, 3): column 3 against column 0: 2 vs 1, and 2 vs 0.
        assert_eq!(channel(&t, 5), vec![0.0; 16]);
        let m5: Vec<f32> = (0..16)
            .map(|i| if i % 4 == 3 { 1.0 } else { 0.0 })
            .collect();
        assert_eq!(channel(&m, 5), m5);
        // z offsets and the 9, 27 offsets reach outside a 1 x 4 x 4 patch everywhere.
        for c in [0, 3, 6, 7, 8, 9, 10, 11] {
            assert_eq!(channel(&m, c), vec![0.0; 16], "channel {c}");
            assert_eq!(channel(&t, c), vec![0.0; 16], "channel {c}");
        }
    }

    #[test]
    fn z_edges_and_labelled_region() {
        // Two sections: object 1 continues in z at x 0..1, object 2 becomes 3 at x = 2.
        let labels = arr(&[2, 1, 3], &[1, 1, 2, 1, 0, 3]);
        let opt = TargetOptions {
            widen_borders: false,
        };
        let (t, m) = affinity_targets(&labels, &NEAREST, opt).unwrap();
        assert_eq!(channel(&t, 0), vec![0., 0., 0., 1., 0., 0.]);
        assert_eq!(channel(&m, 0), vec![0., 0., 0., 1., 1., 1.]);
        // Voxel (1, 0, 2) outside the labelled region: its z edge and its x edge are masked;
        // the x edge at (1, 0, 1) touches label 0 and stays a counted 0 target.
        let region = Array::new(vec![2, 1, 3], vec![1u8, 1, 1, 1, 1, 0]).unwrap();
        let (t2, m2) = affinity_targets_in_region(&labels, &region, &NEAREST, opt).unwrap();
        assert_eq!(t2, t);
        assert_eq!(channel(&m2, 0), vec![0., 0., 0., 1., 1., 0.]);
        assert_eq!(channel(&m2, 2), vec![0., 1., 1., 0., 1., 0.]);
    }

    #[test]
    fn nearest_channels_match_segment_affinities() {
        let mut rng = Rng::new(7);
        let dims = Dims::new(3, 5, 6);
        // Few labels, so that equal neighbours are common; 0 appears too.
        let data: Vec<u32> = (0..dims.voxels()).map(|_| rng.range(0, 3) as u32).collect();
        let labels = Array::new(vec![3, 5, 6], data.clone()).unwrap();
        let opt = TargetOptions {
            widen_borders: false,
        };
        let (t, m) = affinity_targets(&labels, &NEAREST, opt).unwrap();
        let want = affinities_from_labels(&data, dims);
        assert_eq!(t.data, want);
        assert!(want.contains(&1.0) && want.contains(&0.0));
        // The mask is the in-range indicator.
        let n = dims.voxels();
        for i in 0..n {
            let (z, y, x) = (i / 30, i / 6 % 5, i % 6);
            assert_eq!(m.data[i], (z > 0) as u8 as f32);
            assert_eq!(m.data[n + i], (y > 0) as u8 as f32);
            assert_eq!(m.data[2 * n + i], (x > 0) as u8 as f32);
        }
        // u64 labels give the same targets.
        let l64 = labels.convert::<u64>().unwrap();
        assert_eq!(affinity_targets(&l64, &NEAREST, opt).unwrap().0, t);
    }

    #[test]
    fn widening_never_invents_labels_and_keeps_zero() {
        let mut rng = Rng::new(3);
        let dims = Dims::new(2, 6, 7);
        let data: Vec<u32> = (0..dims.voxels()).map(|_| rng.range(0, 4) as u32).collect();
        let w = widen_borders(&data, dims);
        let mut changed = 0;
        for (a, b) in data.iter().zip(&w) {
            assert!(*b == *a || *b == 0);
            if *a == 0 {
                assert_eq!(*b, 0);
            }
            changed += (a != b) as usize;
        }
        assert!(changed > 0);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let bad = Array {
            shape: vec![2, 2],
            data: vec![1u32, 2, 3, 4],
        };
        let e = nearest_targets(&bad).unwrap_err().to_string();
        assert!(e.contains("(Z, Y, X)"), "{e}");
        let e = affinity_targets(&two_objects(), &[[0, 0, 0]], TargetOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("itself"), "{e}");
        let region = Array::new(vec![1, 2, 2], vec![1u8; 4]).unwrap();
        let e =
            affinity_targets_in_region(&two_objects(), &region, &NEAREST, TargetOptions::default())
                .unwrap_err()
                .to_string();
        assert!(e.contains("differ"), "{e}");
        assert!(offsets_for(5).is_err());
        assert_eq!(offsets_for(12).unwrap().len(), 12);
    }
}

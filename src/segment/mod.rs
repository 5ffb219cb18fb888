//! From affinities to a segmentation: watershed into fragments, then agglomeration.
//!
//! Layout everywhere: affinities f32 (3, Z, Y, X) in C order, channel 0 = z edge, 1 = y, 2 = x; the
//! edge of channel c at voxel p joins p with p - e_c. Labels (Z, Y, X), 0 = background.

pub mod agglomerate;
pub mod mutex;
pub mod watershed;

use crate::error::{Error, Result};
use crate::volume::hdf5::Element;

/// Label types: u32 while the voxel count allows, u64 beyond (the watershed keeps two flag bits in
/// the label word while it runs, so u32 serves volumes under 2^31 voxels).
pub trait Label:
    Element + Copy + Eq + Ord + std::hash::Hash + Default + std::fmt::Debug + Send + Sync
{
    const HIGH_BIT: Self;
    const LOW_BITS: Self;
    const ZERO: Self;
    fn from_usize(x: usize) -> Self;
    fn to_usize(self) -> usize;
    fn and(self, o: Self) -> Self;
    fn or(self, o: Self) -> Self;
}

macro_rules! label {
    ($t:ty) => {
        impl Label for $t {
            const HIGH_BIT: Self = 1 << (<$t>::BITS - 1);
            const LOW_BITS: Self = !(1 << (<$t>::BITS - 1));
            const ZERO: Self = 0;
            #[inline]
            fn from_usize(x: usize) -> Self {
                x as $t
            }
            #[inline]
            fn to_usize(self) -> usize {
                self as usize
            }
            #[inline]
            fn and(self, o: Self) -> Self {
                self & o
            }
            #[inline]
            fn or(self, o: Self) -> Self {
                self | o
            }
        }
    };
}
label!(u32);
label!(u64);

/// Whether a volume of `voxels` voxels fits the u32 watershed (ids and flag bits in 32 bits).
pub fn fits_u32(voxels: usize) -> bool {
    voxels < (1usize << 31) - 1
}

/// Z, Y, X sizes of a volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub z: usize,
    pub y: usize,
    pub x: usize,
}

impl Dims {
    pub fn new(z: usize, y: usize, x: usize) -> Self {
        Dims { z, y, x }
    }
    pub fn voxels(&self) -> usize {
        self.z * self.y * self.x
    }
    /// Dims of an affinity array shaped (3, Z, Y, X).
    pub fn from_affinity_shape(shape: &[usize]) -> Result<Self> {
        match shape {
            [3, z, y, x] => Ok(Dims::new(*z, *y, *x)),
            _ => Err(Error::shape(
                "affinities",
                format!("expected (3, Z, Y, X), found {shape:?}"),
            )),
        }
    }
    pub fn from_volume_shape(shape: &[usize]) -> Result<Self> {
        match shape {
            [z, y, x] => Ok(Dims::new(*z, *y, *x)),
            _ => Err(Error::shape(
                "volume",
                format!("expected (Z, Y, X), found {shape:?}"),
            )),
        }
    }
}

/// Affinities must be finite and in [0, 1]: the watershed's thresholds and the agglomeration's
/// histograms assume it, and a NaN would silently break the ordering of edges.
pub fn check_affinities(aff: &[f32], dims: Dims) -> Result<()> {
    if aff.len() != 3 * dims.voxels() {
        return Err(Error::shape(
            "affinities",
            format!(
                "{} values for shape (3, {}, {}, {})",
                aff.len(),
                dims.z,
                dims.y,
                dims.x
            ),
        ));
    }
    if let Some(i) = aff.iter().position(|a| !(0.0..=1.0).contains(a)) {
        let n = dims.voxels();
        let (c, v) = (i / n, i % n);
        let (z, y, x) = (v / (dims.y * dims.x), v / dims.x % dims.y, v % dims.x);
        return Err(Error::Value {
            what: "affinities".into(),
            detail: format!(
                "value {} at channel {c}, z {z}, y {y}, x {x} is not in [0, 1] (NaN or not a probability: apply the sigmoid first)",
                aff[i]
            ),
        });
    }
    Ok(())
}

/// Affinities from a label volume (ENGINEERING.md section 3): 1 where both ends carry the same
/// non-zero label, 0 otherwise and out of range.
pub fn affinities_from_labels<L: Label>(seg: &[L], dims: Dims) -> Vec<f32> {
    let n = dims.voxels();
    let mut aff = vec![0f32; 3 * n];
    let steps = [dims.y * dims.x, dims.x, 1];
    for i in 0..n {
        let (z, y, x) = (i / (dims.y * dims.x), i / dims.x % dims.y, i % dims.x);
        let has = [z > 0, y > 0, x > 0];
        for c in 0..3 {
            if has[c] && seg[i] != L::ZERO && seg[i] == seg[i - steps[c]] {
                aff[c * n + i] = 1.0;
            }
        }
    }
    aff
}

/// Renumbers labels 1.. in order of first appearance (0 stays 0), so that partitions compare
/// with `==` whatever ids they were given.
pub fn canonical<L: Label>(seg: &[L]) -> Vec<u64> {
    let mut map = std::collections::HashMap::new();
    seg.iter()
        .map(|&l| {
            if l == L::ZERO {
                0
            } else {
                let next = map.len() as u64 + 1;
                *map.entry(l).or_insert(next)
            }
        })
        .collect()
}

//! Types shared by the volume formats: element types, a C-order n-dimensional array, a
//! dynamically typed array for files whose dtype is only known at run time, and voxel size.
//!
//! Conversions between element types are exact or they fail: a label volume that silently wraps
//! (u64 ids above u32::MAX) or rounds (float labels) would corrupt ground truth without a trace.

use crate::error::{Error, Result};

/// Element types of volumes on disk. Names follow numpy/zarr ("uint8", "float32").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    U8,
    U16,
    U32,
    U64,
    /// IEEE half precision, stored by zarr only and held in memory as f32 (see [`Dtype::held_as`]).
    F16,
    F32,
    F64,
}

/// Byte order of multi-byte elements in a file ("little" / "big" in metadata).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ByteOrder {
    #[default]
    Little,
    Big,
}

impl ByteOrder {
    pub fn native() -> Self {
        if cfg!(target_endian = "little") {
            ByteOrder::Little
        } else {
            ByteOrder::Big
        }
    }
}

pub const ALL_DTYPES: [Dtype; 7] = [
    Dtype::U8,
    Dtype::U16,
    Dtype::U32,
    Dtype::U64,
    Dtype::F16,
    Dtype::F32,
    Dtype::F64,
];

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::U8 => 1,
            Dtype::U16 | Dtype::F16 => 2,
            Dtype::U32 | Dtype::F32 => 4,
            Dtype::U64 | Dtype::F64 => 8,
        }
    }

    /// numpy / zarr v3 name: "uint8", ..., "float64".
    pub fn name(self) -> &'static str {
        match self {
            Dtype::U8 => "uint8",
            Dtype::U16 => "uint16",
            Dtype::U32 => "uint32",
            Dtype::U64 => "uint64",
            Dtype::F16 => "float16",
            Dtype::F32 => "float32",
            Dtype::F64 => "float64",
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, Dtype::F16 | Dtype::F32 | Dtype::F64)
    }

    /// The element type values of this dtype are held in once read: float16 as f32, which
    /// holds every half value exactly (rounding happens only when float16 is written); the
    /// others as themselves. Keeps half out of every per-dtype match of the formats.
    pub fn held_as(self) -> Dtype {
        match self {
            Dtype::F16 => Dtype::F32,
            d => d,
        }
    }

    /// Parses numpy/zarr v3 names and the short forms users type ("u8", "f32").
    pub fn from_name(s: &str) -> Result<Dtype> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "uint8" | "u8" => Dtype::U8,
            "uint16" | "u16" => Dtype::U16,
            "uint32" | "u32" => Dtype::U32,
            "uint64" | "u64" => Dtype::U64,
            "float16" | "f16" => Dtype::F16,
            "float32" | "f32" => Dtype::F32,
            "float64" | "f64" => Dtype::F64,
            other => {
                return Err(Error::Invalid(format!(
                    "unsupported dtype '{other}': use one of uint8, uint16, uint32, uint64, float16, float32, float64"
                )))
            }
        })
    }

    /// zarr v2 / numpy typestr, e.g. "<u2", ">f4", "|u1".
    pub fn typestr(self, order: ByteOrder) -> String {
        let kind = if self.is_float() { 'f' } else { 'u' };
        let o = if self.size() == 1 {
            '|'
        } else if order == ByteOrder::Little {
            '<'
        } else {
            '>'
        };
        format!("{o}{kind}{}", self.size())
    }

    /// Parses a numpy typestr into dtype and byte order.
    pub fn from_typestr(s: &str) -> Result<(Dtype, ByteOrder)> {
        let bad = || {
            Error::Invalid(format!(
                "unsupported dtype '{s}': only unsigned integers (u1, u2, u4, u8) and floats (f2, f4, f8) are read"
            ))
        };
        let mut chars = s.chars();
        let o = chars.next().ok_or_else(bad)?;
        let order = match o {
            '<' | '|' => ByteOrder::Little,
            '>' => ByteOrder::Big,
            _ => return Err(bad()),
        };
        let rest: String = chars.collect();
        let dt = match rest.as_str() {
            "u1" | "b1" => Dtype::U8,
            "u2" => Dtype::U16,
            "u4" => Dtype::U32,
            "u8" => Dtype::U64,
            "f2" => Dtype::F16,
            "f4" => Dtype::F32,
            "f8" => Dtype::F64,
            _ => return Err(bad()),
        };
        Ok((dt, order))
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One value of any dtype without loss: integers as u64, floats as f64.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scalar {
    U(u64),
    F(f64),
}

impl Scalar {
    pub fn as_f64(self) -> f64 {
        match self {
            Scalar::U(v) => v as f64,
            Scalar::F(v) => v,
        }
    }
}

/// An element type a volume can hold.
pub trait Voxel:
    bytemuck::Pod + Copy + Default + PartialEq + Send + Sync + std::fmt::Debug + 'static
{
    const DTYPE: Dtype;
    fn to_scalar(self) -> Scalar;
    /// The same value in this type, or None when it would change (out of range, fraction, NaN
    /// into an integer, precision lost).
    fn from_scalar_exact(s: Scalar) -> Option<Self>;
    /// Numeric cast for display and network input, where rounding is intended.
    fn to_f32(self) -> f32;
    fn swap_bytes(self) -> Self;
}

macro_rules! int_voxel {
    ($t:ty, $d:expr) => {
        impl Voxel for $t {
            const DTYPE: Dtype = $d;
            fn to_scalar(self) -> Scalar {
                Scalar::U(self as u64)
            }
            fn from_scalar_exact(s: Scalar) -> Option<Self> {
                match s {
                    Scalar::U(v) => <$t>::try_from(v).ok(),
                    Scalar::F(v) => {
                        // `v as u64` saturates; the round trip check catches range and fractions.
                        if v.is_finite()
                            && v >= 0.0
                            && v.fract() == 0.0
                            && v < (<$t>::MAX as f64) + 1.0
                        {
                            let u = v as u64;
                            if u as f64 == v {
                                return <$t>::try_from(u).ok();
                            }
                        }
                        None
                    }
                }
            }
            fn to_f32(self) -> f32 {
                self as f32
            }
            fn swap_bytes(self) -> Self {
                <$t>::swap_bytes(self)
            }
        }
    };
}
int_voxel!(u8, Dtype::U8);
int_voxel!(u16, Dtype::U16);
int_voxel!(u32, Dtype::U32);
int_voxel!(u64, Dtype::U64);

impl Voxel for f32 {
    const DTYPE: Dtype = Dtype::F32;
    fn to_scalar(self) -> Scalar {
        Scalar::F(self as f64)
    }
    fn from_scalar_exact(s: Scalar) -> Option<Self> {
        match s {
            Scalar::U(v) => {
                let f = v as f32;
                // f32 holds integers exactly only up to 2^24; beyond that the cast may round.
                (f as f64 == v as f64 && (f as f64) < 18_446_744_073_709_551_616.0 && f as u64 == v)
                    .then_some(f)
            }
            Scalar::F(v) => {
                let f = v as f32;
                (f as f64 == v || v.is_nan()).then_some(f)
            }
        }
    }
    fn to_f32(self) -> f32 {
        self
    }
    fn swap_bytes(self) -> Self {
        f32::from_bits(self.to_bits().swap_bytes())
    }
}

impl Voxel for f64 {
    const DTYPE: Dtype = Dtype::F64;
    fn to_scalar(self) -> Scalar {
        Scalar::F(self)
    }
    fn from_scalar_exact(s: Scalar) -> Option<Self> {
        match s {
            Scalar::U(v) => {
                let f = v as f64;
                (f < 18_446_744_073_709_551_616.0 && f as u64 == v).then_some(f)
            }
            Scalar::F(v) => Some(v),
        }
    }
    fn to_f32(self) -> f32 {
        self as f32
    }
    fn swap_bytes(self) -> Self {
        f64::from_bits(self.to_bits().swap_bytes())
    }
}

/// Decodes elements stored in `order` from raw bytes (any alignment).
pub fn decode_elements<T: Voxel>(bytes: &[u8], order: ByteOrder) -> Result<Vec<T>> {
    let sz = std::mem::size_of::<T>();
    if !bytes.len().is_multiple_of(sz) {
        return Err(Error::Invalid(format!(
            "{} bytes is not a whole number of {} elements ({} bytes each)",
            bytes.len(),
            T::DTYPE,
            sz
        )));
    }
    let mut v = vec![T::default(); bytes.len() / sz];
    bytemuck::cast_slice_mut::<T, u8>(&mut v).copy_from_slice(bytes);
    if order != ByteOrder::native() && sz > 1 {
        for x in v.iter_mut() {
            *x = x.swap_bytes();
        }
    }
    Ok(v)
}

/// Encodes elements into bytes in `order`.
pub fn encode_elements<T: Voxel>(data: &[T], order: ByteOrder) -> Vec<u8> {
    if order == ByteOrder::native() || std::mem::size_of::<T>() == 1 {
        bytemuck::cast_slice(data).to_vec()
    } else {
        let swapped: Vec<T> = data.iter().map(|x| x.swap_bytes()).collect();
        bytemuck::cast_slice(&swapped).to_vec()
    }
}

/// f32 values as IEEE half (round to nearest, ties to even; beyond the half range to infinity).
pub fn to_f16(data: &[f32]) -> Vec<half::f16> {
    data.iter().map(|&v| half::f16::from_f32(v)).collect()
}

/// A dense C-order (last axis fastest) n-dimensional array.
#[derive(Clone, Debug, PartialEq)]
pub struct Array<T> {
    pub shape: Vec<usize>,
    pub data: Vec<T>,
}

/// Number of elements of a shape, or an error when it overflows usize.
pub fn shape_len(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| {
            Error::Invalid(format!(
                "shape {shape:?} has more elements than fit in memory"
            ))
        })
}

/// C-order strides in elements.
pub fn c_strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

impl<T: Voxel> Array<T> {
    pub fn new(shape: Vec<usize>, data: Vec<T>) -> Result<Self> {
        let n = shape_len(&shape)?;
        if n != data.len() {
            return Err(Error::shape(
                "Array::new",
                format!("shape {shape:?} needs {n} elements, got {}", data.len()),
            ));
        }
        Ok(Array { shape, data })
    }

    pub fn filled(shape: Vec<usize>, v: T) -> Result<Self> {
        let n = shape_len(&shape)?;
        crate::alloc::check_elems::<T>(&format!("an array of shape {shape:?}"), n)?;
        Ok(Array {
            shape,
            data: vec![v; n],
        })
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn dtype(&self) -> Dtype {
        T::DTYPE
    }

    pub fn strides(&self) -> Vec<usize> {
        c_strides(&self.shape)
    }

    /// Element at a multi-index, None when out of range or of the wrong rank.
    pub fn get(&self, idx: &[usize]) -> Option<T> {
        if idx.len() != self.shape.len() || idx.iter().zip(&self.shape).any(|(i, d)| i >= d) {
            return None;
        }
        let off: usize = idx.iter().zip(self.strides()).map(|(i, s)| i * s).sum();
        self.data.get(off).copied()
    }

    /// The same values in another element type; fails at the first value that would change.
    pub fn convert<U: Voxel>(&self) -> Result<Array<U>> {
        let mut out = Vec::with_capacity(self.data.len());
        for (i, &v) in self.data.iter().enumerate() {
            match U::from_scalar_exact(v.to_scalar()) {
                Some(u) => out.push(u),
                None => {
                    let idx = unravel(i, &self.shape);
                    return Err(Error::Value {
                        what: format!("{} -> {} conversion", T::DTYPE, U::DTYPE),
                        detail: format!(
                            "value {:?} at index {idx:?} does not fit {} exactly; convert explicitly if rounding is intended",
                            v,
                            U::DTYPE
                        ),
                    });
                }
            }
        }
        Ok(Array {
            shape: self.shape.clone(),
            data: out,
        })
    }

    /// Copies the box `offset .. offset + shape` out of this array.
    pub fn slice(&self, offset: &[usize], shape: &[usize]) -> Result<Array<T>> {
        check_box("Array::slice", &self.shape, offset, shape)?;
        let mut out = Array::filled(shape.to_vec(), T::default())?;
        copy_box(
            &self.data,
            &self.shape,
            offset,
            &mut out.data,
            shape,
            &vec![0; shape.len()],
            shape,
        );
        Ok(out)
    }
}

/// Multi-index of a flat C-order offset.
pub fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        if shape[d] > 0 {
            idx[d] = i % shape[d];
            i /= shape[d];
        }
    }
    idx
}

/// Checks that the box `offset .. offset + shape` lies inside `full` (same rank).
pub fn check_box(
    op: &'static str,
    full: &[usize],
    offset: &[usize],
    shape: &[usize],
) -> Result<()> {
    if offset.len() != full.len() || shape.len() != full.len() {
        return Err(Error::shape(
            op,
            format!(
                "array has {} dimensions, offset has {} and shape {}",
                full.len(),
                offset.len(),
                shape.len()
            ),
        ));
    }
    for d in 0..full.len() {
        let end = offset[d].checked_add(shape[d]);
        if end.is_none_or(|e| e > full[d]) {
            return Err(Error::region(
                op,
                format!(
                    "box at {offset:?} of shape {shape:?} exceeds the array's shape {full:?} on axis {d}"
                ),
            ));
        }
    }
    Ok(())
}

/// Copies a box of `count` elements from `src` (of shape `src_shape`, box starting at `src_off`)
/// to `dst` (shape `dst_shape`, box starting at `dst_off`). The caller has checked the bounds.
pub fn copy_box<T: Copy>(
    src: &[T],
    src_shape: &[usize],
    src_off: &[usize],
    dst: &mut [T],
    dst_shape: &[usize],
    dst_off: &[usize],
    count: &[usize],
) {
    let nd = count.len();
    if nd == 0 {
        if let (Some(s), Some(d)) = (src.first(), dst.first_mut()) {
            *d = *s;
        }
        return;
    }
    if count.contains(&0) {
        return;
    }
    let ss = c_strides(src_shape);
    let ds = c_strides(dst_shape);
    let row = count[nd - 1];
    let mut idx = vec![0usize; nd - 1];
    loop {
        let mut so = src_off[nd - 1];
        let mut doff = dst_off[nd - 1];
        for d in 0..nd - 1 {
            so += (src_off[d] + idx[d]) * ss[d];
            doff += (dst_off[d] + idx[d]) * ds[d];
        }
        dst[doff..doff + row].copy_from_slice(&src[so..so + row]);
        // Odometer over all axes but the last.
        let mut d = nd - 1;
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            idx[d] += 1;
            if idx[d] < count[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

/// An array whose dtype is known only at run time (what a file holds).
#[derive(Clone, Debug, PartialEq)]
pub enum AnyArray {
    U8(Array<u8>),
    U16(Array<u16>),
    U32(Array<u32>),
    U64(Array<u64>),
    F32(Array<f32>),
    F64(Array<f64>),
}

macro_rules! any_dispatch {
    ($self:expr, $a:ident => $e:expr) => {
        match $self {
            AnyArray::U8($a) => $e,
            AnyArray::U16($a) => $e,
            AnyArray::U32($a) => $e,
            AnyArray::U64($a) => $e,
            AnyArray::F32($a) => $e,
            AnyArray::F64($a) => $e,
        }
    };
}

impl AnyArray {
    pub fn dtype(&self) -> Dtype {
        any_dispatch!(self, a => a.dtype())
    }

    pub fn shape(&self) -> &[usize] {
        any_dispatch!(self, a => &a.shape)
    }

    /// The values as `T`, exactly, or an error naming the first value that does not fit.
    pub fn to_typed<T: Voxel>(&self) -> Result<Array<T>> {
        any_dispatch!(self, a => a.convert::<T>())
    }

    /// As [`AnyArray::to_typed`], without a copy when the dtype is already `T`'s.
    pub fn into_typed<T: Voxel>(self) -> Result<Array<T>> {
        any_dispatch!(self, a => {
            if T::DTYPE == a.dtype() {
                let b: Box<dyn std::any::Any> = Box::new(a);
                if let Ok(t) = b.downcast::<Array<T>>() {
                    return Ok(*t);
                }
                unreachable!("one dtype is one element type")
            } else {
                a.convert::<T>()
            }
        })
    }

    /// An array of zeros.
    pub fn zeros(dtype: Dtype, shape: &[usize]) -> Result<AnyArray> {
        let s = shape.to_vec();
        Ok(match dtype {
            Dtype::U8 => Array::<u8>::filled(s, 0)?.into(),
            Dtype::U16 => Array::<u16>::filled(s, 0)?.into(),
            Dtype::U32 => Array::<u32>::filled(s, 0)?.into(),
            Dtype::U64 => Array::<u64>::filled(s, 0)?.into(),
            Dtype::F16 | Dtype::F32 => Array::<f32>::filled(s, 0.0)?.into(),
            Dtype::F64 => Array::<f64>::filled(s, 0.0)?.into(),
        })
    }

    /// Numeric cast to f32 (rounds u32/u64/f64 values that f32 cannot hold), for images.
    pub fn to_f32_rounding(&self) -> Array<f32> {
        any_dispatch!(self, a => Array {
            shape: a.shape.clone(),
            data: a.data.iter().map(|v| v.to_f32()).collect(),
        })
    }

    /// Builds an array of `dtype` from raw bytes in `order`.
    pub fn from_bytes(
        dtype: Dtype,
        shape: Vec<usize>,
        bytes: &[u8],
        order: ByteOrder,
    ) -> Result<AnyArray> {
        Ok(match dtype {
            Dtype::U8 => AnyArray::U8(Array::new(shape, decode_elements(bytes, order)?)?),
            Dtype::U16 => AnyArray::U16(Array::new(shape, decode_elements(bytes, order)?)?),
            Dtype::U32 => AnyArray::U32(Array::new(shape, decode_elements(bytes, order)?)?),
            Dtype::U64 => AnyArray::U64(Array::new(shape, decode_elements(bytes, order)?)?),
            Dtype::F32 => AnyArray::F32(Array::new(shape, decode_elements(bytes, order)?)?),
            Dtype::F64 => AnyArray::F64(Array::new(shape, decode_elements(bytes, order)?)?),
            Dtype::F16 => {
                let bits: Vec<u16> = decode_elements(bytes, order)?;
                let f = bits.into_iter().map(|b| half::f16::from_bits(b).to_f32());
                AnyArray::F32(Array::new(shape, f.collect())?)
            }
        })
    }
}

macro_rules! any_from {
    ($t:ty, $v:ident) => {
        impl From<Array<$t>> for AnyArray {
            fn from(a: Array<$t>) -> Self {
                AnyArray::$v(a)
            }
        }
    };
}
any_from!(u8, U8);
any_from!(u16, U16);
any_from!(u32, U32);
any_from!(u64, U64);
any_from!(f32, F32);
any_from!(f64, F64);

/// Physical size of one voxel in nanometres, z, y, x.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VoxelSize {
    pub z: f64,
    pub y: f64,
    pub x: f64,
}

impl Default for VoxelSize {
    /// Serial-section EM as in SNEMI3D and CREMI: 30 nm sections, about 6 nm pixels (CREMI: 4).
    fn default() -> Self {
        VoxelSize {
            z: 30.0,
            y: 6.0,
            x: 6.0,
        }
    }
}

impl VoxelSize {
    pub fn new(z: f64, y: f64, x: f64) -> Result<Self> {
        let v = VoxelSize { z, y, x };
        v.check()?;
        Ok(v)
    }

    pub fn check(&self) -> Result<()> {
        for (n, v) in [("z", self.z), ("y", self.y), ("x", self.x)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::Value {
                    what: format!("voxel size {n}"),
                    detail: format!("{v} nm: must be a positive finite number"),
                });
            }
        }
        Ok(())
    }

    /// How many times thicker a section is than a pixel is wide (5 for 30 x 6 x 6 nm).
    pub fn anisotropy(&self) -> f64 {
        self.z / self.x.min(self.y)
    }
}

/// Writes a file through a temporary file in the same directory and a rename, so that readers
/// (and a crash half-way) never see a partly written file. The temporary file is removed when
/// `fill` fails; temporaries that dead writers left beside `path` are removed first.
pub fn write_file_atomic(
    path: &std::path::Path,
    fill: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> Result<()>,
) -> Result<()> {
    crate::fsutil::remove_stale_temps(path);
    write_file_renamed(path, fill, true)
        .map_err(|e| crate::fsutil::not_written(&path.display().to_string(), e))
}

/// [`write_file_atomic`] without the sweep, for the many small files of one directory (zarr
/// chunks) where reading the directory per file would cost quadratic time; `sync: false` leaves
/// the sync to the caller (zarr chunks are rewritten per section and synced once at the end).
pub fn write_file_renamed(
    path: &std::path::Path,
    fill: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> Result<()>,
    sync: bool,
) -> Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .ok_or_else(|| Error::Invalid(format!("{}: not a file path", path.display())))?
        .to_string_lossy()
        .into_owned();
    let tmp = path.with_file_name(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let io = |e: std::io::Error, p: &std::path::Path| Error::Io(format!("{}: {e}", p.display()));
    let result = (|| {
        let f = std::fs::File::create(&tmp).map_err(|e| io(e, &tmp))?;
        let mut w = std::io::BufWriter::new(f);
        fill(&mut w)?;
        let f = w.into_inner().map_err(|e| io(e.into_error(), &tmp))?;
        // Some file systems (NFS, quotas) report a full disk only when the data reaches it.
        if sync {
            f.sync_all().map_err(|e| io(e, &tmp))?;
        }
        drop(f);
        std::fs::rename(&tmp, path).map_err(|e| io(e, path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// `std::io::Error` with the file it concerns.
pub fn io_err(path: &std::path::Path, e: std::io::Error) -> Error {
    Error::Io(format!("{}: {e}", path.display()))
}

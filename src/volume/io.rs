//! One entry point for volumes whatever their format, named by the spec strings users type:
//!
//! | spec | format |
//! |---|---|
//! | `stack.tif`, `stack.tiff` | multi-page TIFF, one page per z section |
//! | `file.h5:/group/dataset` (also `.hdf5`, `.hdf`) | HDF5 dataset |
//! | `dir.zarr`, `dir.zarr/path/in/group` | zarr v2 or v3 array (directory store) |
//! | `file.raw:Z,Y,X:DTYPE[:le\|be]` (also `.bin`) | raw C-order elements, layout inline |
//! | `file.raw` (also `.bin`) | raw, layout from the sidecar `file.raw.json` |
//!
//! Extensions are matched without regard to case. The raw sidecar is a JSON object:
//! `{"shape": [Z, Y, X], "dtype": "uint8", "byte_order": "little", "header_bytes": 0,
//! "voxel_size_nm": [z, y, x]}`; only `shape` and `dtype` are required (little-endian, no header
//! and unknown voxel size otherwise). An inline layout wins over a sidecar. [`create_volume`]
//! always writes the sidecar beside a raw file so that the plain `file.raw` spec reads it back.
//!
//! Reading converts exactly or fails (see `array::Voxel::from_scalar_exact`): a u8 image reads
//! as f32, a u64 label volume with small ids reads as u32, a float volume never reads as labels.
//! Signed HDF5 datasets (int32 labels) report the unsigned dtype of the same width and read where
//! every value is non-negative, as the TIFF reader does with signed pages.
//!
//! TIFF pages are decoded whole, so a TIFF reader holds the whole stack in memory and regions are
//! copies of it; the other formats read only what a region touches. Writers never leave a partly
//! written volume at the target: TIFF is buffered and written at [`VolumeWriter::finish`]; raw,
//! HDF5 and zarr are written into a temporary file or directory beside the target and renamed
//! over it at `finish`. A writer dropped without `finish` removes its temporary data (and the
//! parent directories it created).

use super::array::{
    c_strides, check_box, copy_box, encode_elements, io_err, shape_len, AnyArray, Array, ByteOrder,
    Dtype, Voxel, VoxelSize,
};
use super::hdf5::h5err;
use super::raw::RawVolume;
use super::zarr::{Compressor, CreateOptions, ZarrArray, ZarrVersion};
use crate::error::{Error, Result};
use hdf5::types::{FloatSize, IntSize, TypeDescriptor};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! any_pair {
    ($a:expr, $b:expr, |$x:ident, $y:ident| $e:expr, $else:expr) => {
        match ($a, $b) {
            (AnyArray::U8($x), AnyArray::U8($y)) => $e,
            (AnyArray::U16($x), AnyArray::U16($y)) => $e,
            (AnyArray::U32($x), AnyArray::U32($y)) => $e,
            (AnyArray::U64($x), AnyArray::U64($y)) => $e,
            (AnyArray::F32($x), AnyArray::F32($y)) => $e,
            (AnyArray::F64($x), AnyArray::F64($y)) => $e,
            _ => $else,
        }
    };
}

macro_rules! any_one {
    ($a:expr, |$x:ident| $e:expr) => {
        match $a {
            AnyArray::U8($x) => $e,
            AnyArray::U16($x) => $e,
            AnyArray::U32($x) => $e,
            AnyArray::U64($x) => $e,
            AnyArray::F32($x) => $e,
            AnyArray::F64($x) => $e,
        }
    };
}

/// The accepted spec forms, for error messages.
pub const ACCEPTED_FORMS: &str = "FILE.tif or FILE.tiff (multi-page TIFF); FILE.h5:/DATASET (also .hdf5, .hdf); DIR.zarr or DIR.zarr/PATH/IN/GROUP (zarr v2/v3); FILE.raw:Z,Y,X:DTYPE[:le|be] or FILE.raw with a FILE.raw.json sidecar (also .bin)";

/// An element type every format can read into: the six volume dtypes.
pub trait IoVoxel: Voxel + super::hdf5::Element {}
impl<T: Voxel + super::hdf5::Element> IoVoxel for T {}

/// Shape, dtype and layout of a raw file.
#[derive(Clone, Debug, PartialEq)]
pub struct RawLayout {
    pub shape: Vec<usize>,
    pub dtype: Dtype,
    pub order: ByteOrder,
    /// Bytes before the first element.
    pub header: usize,
    pub voxel_size: Option<VoxelSize>,
}

/// A parsed volume spec.
#[derive(Clone, Debug, PartialEq)]
pub enum VolumeSpec {
    Tiff {
        path: PathBuf,
    },
    Hdf5 {
        file: PathBuf,
        /// Absolute dataset path; None when the spec named only the file.
        dataset: Option<String>,
    },
    Zarr {
        path: PathBuf,
    },
    Raw {
        path: PathBuf,
        /// From the spec itself; None means "read the sidecar".
        layout: Option<RawLayout>,
    },
}

/// Which format a reader or writer works on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Tiff,
    Hdf5,
    Zarr,
    Raw,
}

fn unknown(s: &str, why: &str) -> Error {
    Error::Invalid(format!("'{s}': {why}; accepted forms: {ACCEPTED_FORMS}"))
}

/// Position just past an extension from `exts` that is followed by ':' or the end of `s`
/// (first match from the left), with the length of the extension.
fn find_ext(lower: &str, exts: &[&str]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for ext in exts {
        let mut from = 0;
        while let Some(i) = lower[from..].find(ext) {
            let end = from + i + ext.len();
            let next = lower.as_bytes().get(end);
            if next.is_none() || next == Some(&b':') {
                if best.is_none_or(|b| end < b) {
                    best = Some(end);
                }
                break;
            }
            from = end;
        }
    }
    best
}

impl VolumeSpec {
    pub fn parse(s: &str) -> Result<VolumeSpec> {
        if s.is_empty() {
            return Err(unknown(s, "empty volume spec"));
        }
        // ASCII lowercasing keeps byte offsets, so positions found in `lower` index `s`.
        let lower = s.to_ascii_lowercase();
        if let Some(end) = find_ext(&lower, &[".h5", ".hdf5", ".hdf"]) {
            let file = &s[..end];
            let rest = s.get(end + 1..).unwrap_or("");
            let ds = rest.trim_start_matches('/');
            let base = file.rsplit('/').next().unwrap_or(file).to_ascii_lowercase();
            if matches!(base.as_str(), ".h5" | ".hdf5" | ".hdf") {
                return Err(unknown(s, "empty HDF5 file name"));
            }
            let dataset = if end == s.len() {
                None
            } else if ds.is_empty() || ds.ends_with('/') {
                return Err(Error::Invalid(format!(
                    "'{s}': empty dataset path after ':'; expected FILE.h5:/DATASET, e.g. sample_A.hdf:/volumes/raw"
                )));
            } else {
                Some(format!("/{ds}"))
            };
            return Ok(VolumeSpec::Hdf5 {
                file: PathBuf::from(file),
                dataset,
            });
        }
        let trimmed = s.trim_end_matches('/');
        if trimmed
            .to_ascii_lowercase()
            .split('/')
            .any(|c| c.ends_with(".zarr") && c.len() > 5)
        {
            return Ok(VolumeSpec::Zarr {
                path: PathBuf::from(trimmed),
            });
        }
        if let Some(end) = find_ext(&lower, &[".raw", ".bin"]) {
            let path = PathBuf::from(&s[..end]);
            let layout = if end == s.len() {
                None
            } else {
                Some(parse_inline_layout(s, &s[end + 1..])?)
            };
            return Ok(VolumeSpec::Raw { path, layout });
        }
        if lower.ends_with(".tif") || lower.ends_with(".tiff") {
            return Ok(VolumeSpec::Tiff {
                path: PathBuf::from(s),
            });
        }
        Err(unknown(s, "unknown volume format"))
    }

    /// The file (or zarr directory) the volume lives in.
    pub fn file(&self) -> &Path {
        match self {
            VolumeSpec::Tiff { path }
            | VolumeSpec::Zarr { path }
            | VolumeSpec::Raw { path, .. } => path,
            VolumeSpec::Hdf5 { file, .. } => file,
        }
    }

    pub fn format(&self) -> Format {
        match self {
            VolumeSpec::Tiff { .. } => Format::Tiff,
            VolumeSpec::Hdf5 { .. } => Format::Hdf5,
            VolumeSpec::Zarr { .. } => Format::Zarr,
            VolumeSpec::Raw { .. } => Format::Raw,
        }
    }
}

/// `Z,Y,X:DTYPE[:le|be]` after a raw file name.
fn parse_inline_layout(spec: &str, s: &str) -> Result<RawLayout> {
    let bad = |why: String| {
        Error::Invalid(format!(
            "'{spec}': {why}; expected FILE.raw:Z,Y,X:DTYPE[:le|be], e.g. train.raw:100,1024,1024:uint8"
        ))
    };
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() < 2 || parts.len() > 3 {
        return Err(bad(format!("layout '{s}' is not SHAPE:DTYPE")));
    }
    let shape = parts[0]
        .split(',')
        .map(|d| {
            d.trim()
                .parse::<usize>()
                .map_err(|_| bad(format!("shape entry '{d}' is not a non-negative integer")))
        })
        .collect::<Result<Vec<usize>>>()?;
    let dtype = Dtype::from_name(parts[1]).map_err(|e| bad(e.to_string()))?;
    let order = match parts.get(2).map(|o| o.trim().to_ascii_lowercase()) {
        None => ByteOrder::Little,
        Some(o) if o == "le" || o == "little" => ByteOrder::Little,
        Some(o) if o == "be" || o == "big" => ByteOrder::Big,
        Some(o) => return Err(bad(format!("byte order '{o}' is not le or be"))),
    };
    Ok(RawLayout {
        shape,
        dtype,
        order,
        header: 0,
        voxel_size: None,
    })
}

/// The sidecar of a raw file: `file.raw` -> `file.raw.json`.
pub fn raw_sidecar(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".json");
    PathBuf::from(s)
}

fn read_sidecar(path: &Path) -> Result<RawLayout> {
    let side = raw_sidecar(path);
    let text = match std::fs::read_to_string(&side) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::Invalid(format!(
                "{}: a raw file needs its shape and dtype: give them in the spec ({}:Z,Y,X:DTYPE) or in a sidecar {} ({{\"shape\": [Z, Y, X], \"dtype\": \"uint8\"}})",
                path.display(),
                path.display(),
                side.display()
            )))
        }
        Err(e) => return Err(io_err(&side, e)),
    };
    let what = side.display().to_string();
    let j: Sidecar = crate::json::parse(&text, &what)?;
    let bad = |why: &str| Error::Invalid(format!("{what}: {why}"));
    let dtype = Dtype::from_name(&j.dtype).map_err(|e| bad(&e.to_string()))?;
    let voxel_size = match j.voxel_size_nm {
        None => None,
        Some([z, y, x]) => Some(VoxelSize::new(z, y, x).map_err(|e| bad(&e.to_string()))?),
    };
    Ok(RawLayout {
        shape: j.shape,
        dtype,
        order: j.byte_order,
        header: j.header_bytes,
        voxel_size,
    })
}

/// A raw file's `.json` sidecar.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sidecar {
    shape: Vec<usize>,
    dtype: String,
    #[serde(default)]
    byte_order: ByteOrder,
    #[serde(default)]
    header_bytes: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    voxel_size_nm: Option<[f64; 3]>,
}

fn sidecar_json(layout: &RawLayout) -> String {
    let s = Sidecar {
        shape: layout.shape.clone(),
        dtype: layout.dtype.name().to_string(),
        byte_order: layout.order,
        header_bytes: layout.header,
        voxel_size_nm: layout.voxel_size.map(|v| [v.z, v.y, v.x]),
    };
    format!("{}\n", serde_json::to_string(&s).unwrap_or_default())
}

enum Source {
    Tiff(AnyArray),
    Hdf5 { ds: hdf5::Dataset, ctx: String },
    Zarr(ZarrArray),
    Raw(RawVolume),
}

/// An open volume: its geometry now, its voxels on demand.
pub struct VolumeReader {
    spec: String,
    shape: Vec<usize>,
    dtype: Dtype,
    voxel_size: Option<VoxelSize>,
    source: Source,
}

impl std::fmt::Debug for VolumeReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolumeReader")
            .field("spec", &self.spec)
            .field("shape", &self.shape)
            .field("dtype", &self.dtype)
            .field("voxel_size", &self.voxel_size)
            .finish()
    }
}

/// The dtype a stored HDF5 type reads as (signed integers as the unsigned type of their width).
fn h5_dtype(desc: &TypeDescriptor) -> Option<Dtype> {
    Some(match desc {
        TypeDescriptor::Unsigned(IntSize::U1) | TypeDescriptor::Integer(IntSize::U1) => Dtype::U8,
        TypeDescriptor::Unsigned(IntSize::U2) | TypeDescriptor::Integer(IntSize::U2) => Dtype::U16,
        TypeDescriptor::Unsigned(IntSize::U4) | TypeDescriptor::Integer(IntSize::U4) => Dtype::U32,
        TypeDescriptor::Unsigned(IntSize::U8) | TypeDescriptor::Integer(IntSize::U8) => Dtype::U64,
        TypeDescriptor::Float(FloatSize::U4) => Dtype::F32,
        TypeDescriptor::Float(FloatSize::U8) => Dtype::F64,
        _ => return None,
    })
}

fn h5_selection(offset: &[usize], shape: &[usize]) -> hdf5::Hyperslab {
    let s: Vec<hdf5::SliceOrIndex> = offset
        .iter()
        .zip(shape)
        .map(|(&o, &n)| hdf5::SliceOrIndex::from(o..o + n))
        .collect();
    hdf5::Hyperslab::from(s)
}

fn h5_read_region<T: IoVoxel>(
    ds: &hdf5::Dataset,
    ctx: &str,
    offset: &[usize],
    shape: &[usize],
) -> Result<Vec<T>> {
    use super::hdf5::Stored;
    if shape.contains(&0) {
        return Ok(Vec::new());
    }
    let desc = ds
        .dtype()
        .and_then(|d| d.to_descriptor())
        .map_err(|e| h5err(ctx, "reading the stored type", e))?;
    let r = ds.as_reader().no_convert();
    let sel = || h5_selection(offset, shape);
    macro_rules! rd {
        ($t:ty, $v:ident) => {
            Stored::$v(
                r.read_slice::<$t, _, ndarray::IxDyn>(sel())
                    .map_err(|e| h5err(ctx, "reading a region", e))?
                    .into_raw_vec_and_offset()
                    .0,
            )
        };
    }
    let stored = match desc {
        TypeDescriptor::Unsigned(IntSize::U1) => rd!(u8, U8),
        TypeDescriptor::Unsigned(IntSize::U2) => rd!(u16, U16),
        TypeDescriptor::Unsigned(IntSize::U4) => rd!(u32, U32),
        TypeDescriptor::Unsigned(IntSize::U8) => rd!(u64, U64),
        TypeDescriptor::Integer(IntSize::U1) => rd!(i8, I8),
        TypeDescriptor::Integer(IntSize::U2) => rd!(i16, I16),
        TypeDescriptor::Integer(IntSize::U4) => rd!(i32, I32),
        TypeDescriptor::Integer(IntSize::U8) => rd!(i64, I64),
        TypeDescriptor::Float(FloatSize::U4) => rd!(f32, F32),
        TypeDescriptor::Float(FloatSize::U8) => rd!(f64, F64),
        other => {
            return Err(Error::Invalid(format!(
                "{ctx}: stored type {other:?} is not a plain integer or float"
            )))
        }
    };
    super::hdf5::convert_stored::<T>(ctx, stored)
}

/// Refuses unchunked data that the file cannot hold: libhdf5 (1.10) copies a contiguous or
/// compact dataset's declared extent without checking it against the file or the object header
/// and crashes (SIGSEGV) on a corrupt layout message, so the extent is checked here first.
fn h5_check_storage(
    ds: &hdf5::Dataset,
    ctx: &str,
    file: &Path,
    shape: &[usize],
    elem: usize,
) -> Result<()> {
    use hdf5::plist::dataset_create::Layout;
    let corrupt = |why: String| Error::Io(format!("{ctx}: corrupt dataset: {why}"));
    if shape.is_empty() {
        return Err(Error::Invalid(format!(
            "{ctx}: a scalar dataset, not a volume; give the path of an array dataset"
        )));
    }
    let layout = ds.layout();
    if layout == Layout::Chunked {
        // libhdf5 sizes its chunk buffers from the layout message: a chunk rank that is not the
        // dataspace's, or a chunk larger than memory, is refused before it reads.
        let chunk = ds.chunk().unwrap_or_default();
        if chunk.len() != shape.len() || chunk.contains(&0) {
            return Err(corrupt(format!(
                "chunks {chunk:?} do not match its shape {shape:?}"
            )));
        }
        crate::alloc::check(&format!("{ctx}: one chunk"), &chunk, elem)?;
        return Ok(());
    }
    let need = crate::alloc::bytes_of(shape, elem).unwrap_or(usize::MAX) as u64;
    let file_len = std::fs::metadata(file).map_err(|e| io_err(file, e))?.len();
    let stored = ds.storage_size();
    // An unallocated contiguous dataset reads its fill value without touching the file.
    let allocated = layout == Layout::Compact || ds.offset().is_some();
    if allocated && stored < need {
        return Err(corrupt(format!(
            "{layout:?} storage holds {stored} bytes but shape {shape:?} needs {need}"
        )));
    }
    if let Some(off) = ds.offset() {
        if off.checked_add(need).is_none_or(|end| end > file_len) {
            return Err(corrupt(format!(
                "its {need} bytes at offset {off} lie past the end of the {file_len}-byte file"
            )));
        }
    }
    Ok(())
}

/// CREMI and gunpowder keep the voxel size as a `resolution` attribute [z, y, x] in nm.
fn h5_voxel_size(ds: &hdf5::Dataset) -> Option<VoxelSize> {
    let a = ds.attr("resolution").ok()?;
    let v: Vec<f64> = a.read_raw::<f64>().ok()?;
    match v[..] {
        [z, y, x] => VoxelSize::new(z, y, x).ok(),
        _ => None,
    }
}

/// Opens the volume named by `spec` (see the module documentation for the forms).
pub fn open_volume(spec: &str) -> Result<VolumeReader> {
    let parsed = VolumeSpec::parse(spec)?;
    let (shape, dtype, voxel_size, source) = match parsed {
        VolumeSpec::Tiff { path } => {
            let st = super::tiff::read(&path)?;
            (
                st.data.shape().to_vec(),
                st.data.dtype(),
                st.voxel_size,
                Source::Tiff(st.data),
            )
        }
        VolumeSpec::Hdf5 { file, dataset } => {
            let Some(dataset) = dataset else {
                let names = super::hdf5::list_datasets(&file)?;
                return Err(Error::Invalid(format!(
                    "'{spec}': no dataset named; add ':/DATASET' to the file name; datasets in this file: {}",
                    if names.is_empty() { "none".to_string() } else { names.join(", ") }
                )));
            };
            // Validates file and dataset with the hdf5 module's messages (missing file, names of
            // the datasets that do exist, group instead of dataset).
            let shape = super::hdf5::dataset_shape(&file, &dataset)?;
            let ctx = format!("{}:{dataset}", file.display());
            let f = hdf5::File::open(&file).map_err(|e| h5err(&ctx, "cannot open as HDF5", e))?;
            let ds = f
                .dataset(&dataset)
                .map_err(|e| h5err(&ctx, "cannot open dataset", e))?;
            let desc = ds
                .dtype()
                .and_then(|d| d.to_descriptor())
                .map_err(|e| h5err(&ctx, "reading the stored type", e))?;
            let dtype = h5_dtype(&desc).ok_or_else(|| {
                Error::Invalid(format!(
                    "{ctx}: stored type {desc:?} is not a plain integer or float"
                ))
            })?;
            h5_check_storage(&ds, &ctx, &file, &shape, desc.size())?;
            let vs = h5_voxel_size(&ds);
            (shape, dtype, vs, Source::Hdf5 { ds, ctx })
        }
        VolumeSpec::Zarr { path } => {
            let z = ZarrArray::open(&path)?;
            (z.shape.clone(), z.dtype, z.voxel_size, Source::Zarr(z))
        }
        VolumeSpec::Raw { path, layout } => {
            let layout = match layout {
                Some(l) => l,
                None => read_sidecar(&path)?,
            };
            let r = RawVolume::open(
                &path,
                &layout.shape,
                layout.dtype,
                layout.order,
                layout.header,
            )?;
            (
                layout.shape,
                layout.dtype,
                layout.voxel_size,
                Source::Raw(r),
            )
        }
    };
    Ok(VolumeReader {
        spec: spec.to_string(),
        shape,
        dtype,
        voxel_size,
        source,
    })
}

impl VolumeReader {
    pub fn spec(&self) -> &str {
        &self.spec
    }
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// The stored element type (signed HDF5 integers: the unsigned type of the same width).
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }
    /// Physical voxel size when the file records one (TIFF resolution tags, HDF5 and zarr
    /// `resolution` attributes, raw sidecar `voxel_size_nm`).
    pub fn voxel_size(&self) -> Option<VoxelSize> {
        self.voxel_size
    }
    pub fn format(&self) -> Format {
        match self.source {
            Source::Tiff(_) => Format::Tiff,
            Source::Hdf5 { .. } => Format::Hdf5,
            Source::Zarr(_) => Format::Zarr,
            Source::Raw(_) => Format::Raw,
        }
    }

    fn named(&self, e: Error) -> Error {
        match e {
            Error::Region { op, detail } if !detail.contains(&self.spec) => Error::Region {
                op,
                detail: format!("{}: {detail}", self.spec),
            },
            Error::Value { what, detail } if !what.contains(&self.spec) => Error::Value {
                what: format!("{}: {what}", self.spec),
                detail,
            },
            other => other,
        }
    }

    /// The box `offset .. offset + shape`, converted exactly to `T`.
    pub fn read_region<T: IoVoxel>(&self, offset: &[usize], shape: &[usize]) -> Result<Array<T>> {
        check_box("read_region", &self.shape, offset, shape).map_err(|e| self.named(e))?;
        // Formats decode into the stored type and then convert, so both copies are held at once.
        let per_voxel = self.dtype.size() + std::mem::size_of::<T>();
        crate::alloc::check(
            &format!("{}: reading a region of shape {shape:?}", self.spec),
            shape,
            per_voxel,
        )?;
        let r = match &self.source {
            Source::Tiff(a) => any_one!(a, |x| x.slice(offset, shape).map(AnyArray::from))
                .and_then(|s| s.to_typed()),
            Source::Hdf5 { ds, ctx } => h5_read_region::<T>(ds, ctx, offset, shape)
                .and_then(|v| Array::new(shape.to_vec(), v)),
            Source::Zarr(z) => z.read_region_any(offset, shape).and_then(|a| a.to_typed()),
            Source::Raw(r) => r.read_region(offset, shape).and_then(|a| a.to_typed()),
        };
        r.map_err(|e| self.named(e))
    }

    /// The whole volume, converted exactly to `T` (it must fit in memory).
    pub fn read_all<T: IoVoxel>(&self) -> Result<Array<T>> {
        let shape = self.shape.clone();
        self.read_region(&vec![0; shape.len()], &shape)
    }
}

/// How to create a volume beyond its spec, shape and dtype.
#[derive(Clone, Debug, Default)]
pub struct WriteOptions {
    /// Chunk shape for HDF5 and zarr (ignored by TIFF and raw). None: up to 8 x 128 x 128 on the
    /// last three axes, 1 on any axis before them.
    pub chunks: Option<Vec<usize>>,
    /// Recorded where the format can (TIFF tags, HDF5/zarr `resolution`, raw sidecar).
    pub voxel_size: Option<VoxelSize>,
    /// gzip for HDF5 and zarr chunks.
    pub compress: bool,
    /// gzip level 0..=9 when compressing (None: 4 for HDF5, 5 for zarr).
    pub gzip_level: Option<u32>,
    /// zarr v2 (default) or v3.
    pub zarr_v3: bool,
}

fn default_chunks(shape: &[usize]) -> Vec<usize> {
    let caps = [128usize, 128, 8];
    let n = shape.len();
    (0..n)
        .map(|i| {
            let cap = caps.get(n - 1 - i).copied().unwrap_or(1);
            shape[i].clamp(1, cap)
        })
        .collect()
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A hidden name beside `path` for data that becomes `path` at the end.
fn temp_beside(path: &Path, tag: &str) -> Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::Invalid(format!("{}: not a file name", path.display())))?
        .to_string_lossy()
        .into_owned();
    Ok(path.with_file_name(format!(
        ".{name}.{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )))
}

/// Creates the missing parent directories of `path`; returns those it created, outermost first,
/// so that a failed write can remove them again.
fn create_parents(path: &Path) -> Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut p = path.parent();
    while let Some(d) = p {
        if d.as_os_str().is_empty() || d.exists() {
            break;
        }
        missing.push(d.to_path_buf());
        p = d.parent();
    }
    missing.reverse();
    for d in &missing {
        if let Err(e) = std::fs::create_dir(d) {
            for c in missing.iter().rev() {
                let _ = std::fs::remove_dir(c);
            }
            return Err(io_err(d, e));
        }
    }
    Ok(missing)
}

enum Sink {
    Tiff {
        path: PathBuf,
        buf: AnyArray,
    },
    Hdf5 {
        target: PathBuf,
        tmp: PathBuf,
        file: Option<hdf5::File>,
        ds: Option<hdf5::Dataset>,
    },
    Zarr {
        target: PathBuf,
        tmp: PathBuf,
        array: ZarrArray,
        version: ZarrVersion,
    },
    Raw {
        path: PathBuf,
        tmp: PathBuf,
        file: Option<std::fs::File>,
        sidecar: String,
    },
}

/// A volume being written; nothing appears at the target until [`VolumeWriter::finish`].
pub struct VolumeWriter {
    spec: String,
    shape: Vec<usize>,
    dtype: Dtype,
    voxel_size: Option<VoxelSize>,
    sink: Sink,
    created_dirs: Vec<PathBuf>,
    done: bool,
}

/// `data` as an array of `dtype`, exactly.
fn to_dtype<T: Voxel>(data: &Array<T>, dtype: Dtype) -> Result<AnyArray> {
    Ok(match dtype {
        Dtype::U8 => data.convert::<u8>()?.into(),
        Dtype::U16 => data.convert::<u16>()?.into(),
        Dtype::U32 => data.convert::<u32>()?.into(),
        Dtype::U64 => data.convert::<u64>()?.into(),
        Dtype::F32 => data.convert::<f32>()?.into(),
        Dtype::F64 => data.convert::<f64>()?.into(),
    })
}

fn empty_any(dtype: Dtype, shape: &[usize]) -> Result<AnyArray> {
    let s = shape.to_vec();
    Ok(match dtype {
        Dtype::U8 => Array::<u8>::filled(s, 0)?.into(),
        Dtype::U16 => Array::<u16>::filled(s, 0)?.into(),
        Dtype::U32 => Array::<u32>::filled(s, 0)?.into(),
        Dtype::U64 => Array::<u64>::filled(s, 0)?.into(),
        Dtype::F32 => Array::<f32>::filled(s, 0.0)?.into(),
        Dtype::F64 => Array::<f64>::filled(s, 0.0)?.into(),
    })
}

/// Creates a volume of `shape` and `dtype` at `spec`, with default options.
pub fn create_volume(
    spec: &str,
    shape: &[usize],
    dtype: Dtype,
    chunks: Option<&[usize]>,
) -> Result<VolumeWriter> {
    create_volume_with(
        spec,
        shape,
        dtype,
        &WriteOptions {
            chunks: chunks.map(|c| c.to_vec()),
            ..WriteOptions::default()
        },
    )
}

/// Creates a volume; an existing one at the target is replaced at `finish` (other datasets of an
/// existing HDF5 file are kept).
pub fn create_volume_with(
    spec: &str,
    shape: &[usize],
    dtype: Dtype,
    opt: &WriteOptions,
) -> Result<VolumeWriter> {
    let parsed = VolumeSpec::parse(spec)?;
    let bad = |why: String| Error::Invalid(format!("'{spec}': {why}"));
    if shape.is_empty() {
        return Err(bad("a volume needs at least one dimension".into()));
    }
    shape_len(shape)?;
    if let Some(v) = opt.voxel_size {
        v.check()?;
    }
    let chunks = match &opt.chunks {
        Some(c) if c.len() != shape.len() || c.contains(&0) => {
            return Err(bad(format!(
                "chunks {c:?} must have one positive entry per axis of shape {shape:?}"
            )))
        }
        Some(c) => c.clone(),
        None => default_chunks(shape),
    };
    let target = parsed.file().to_path_buf();
    let mut w = VolumeWriter {
        spec: spec.to_string(),
        shape: shape.to_vec(),
        dtype,
        voxel_size: opt.voxel_size,
        // Placeholder until the sink is built below; `done` keeps Drop from touching it.
        sink: Sink::Tiff {
            path: PathBuf::new(),
            buf: AnyArray::U8(Array {
                shape: vec![0],
                data: vec![],
            }),
        },
        created_dirs: Vec::new(),
        done: true,
    };
    // Validate everything that can fail without touching the disk first.
    match &parsed {
        VolumeSpec::Tiff { .. } => {
            if shape.len() != 3 || shape.contains(&0) {
                return Err(bad(format!(
                    "a TIFF stack is (Z, Y, X) with no empty axis; got shape {shape:?}"
                )));
            }
            if !matches!(dtype, Dtype::U8 | Dtype::U16 | Dtype::U32 | Dtype::F32) {
                return Err(bad(format!(
                    "TIFF stacks are written as uint8, uint16, uint32 or float32, not {dtype}; use HDF5, zarr or raw"
                )));
            }
        }
        VolumeSpec::Hdf5 { dataset: None, .. } => {
            return Err(bad(
                "no dataset named; write FILE.h5:/DATASET, e.g. out.h5:/volumes/labels".into(),
            ))
        }
        VolumeSpec::Raw {
            layout: Some(l), ..
        } if l.shape != shape || l.dtype != dtype => {
            return Err(bad(format!(
                "the spec says shape {:?} of {} but the volume is {shape:?} of {dtype}",
                l.shape, l.dtype
            )));
        }
        _ => {}
    }
    w.created_dirs = create_parents(&target)?;
    crate::fsutil::remove_stale_temps(&target);
    w.done = false;
    let sink = (|| -> Result<Sink> {
        Ok(match parsed {
            VolumeSpec::Tiff { path } => Sink::Tiff {
                path,
                buf: empty_any(dtype, shape)?,
            },
            VolumeSpec::Hdf5 { file, dataset } => {
                let dataset = dataset.unwrap_or_default();
                let tmp = temp_beside(&file, "partial")?;
                let ctx = format!("{}:{dataset}", file.display());
                // A copy of an existing file, so that its other datasets survive the rename.
                let made = (|| -> Result<(hdf5::File, hdf5::Dataset)> {
                    let f = if file.exists() {
                        std::fs::copy(&file, &tmp).map_err(|e| io_err(&tmp, e))?;
                        hdf5::File::open_rw(&tmp).map_err(|e| h5err(&ctx, "open for update", e))?
                    } else {
                        hdf5::File::create(&tmp).map_err(|e| h5err(&ctx, "create", e))?
                    };
                    let ds = h5_create_dataset(&f, &dataset, shape, &chunks, dtype, opt, &ctx)?;
                    Ok((f, ds))
                })();
                match made {
                    Ok((f, ds)) => Sink::Hdf5 {
                        target: file,
                        tmp,
                        file: Some(f),
                        ds: Some(ds),
                    },
                    Err(e) => {
                        let _ = std::fs::remove_file(&tmp);
                        return Err(e);
                    }
                }
            }
            VolumeSpec::Zarr { path } => {
                if path.exists()
                    && !(path.join(".zarray").exists() || path.join("zarr.json").exists())
                {
                    return Err(Error::Invalid(format!(
                        "{}: exists and is not a zarr array; refusing to replace it",
                        path.display()
                    )));
                }
                let tmp = temp_beside(&path, "partial")?;
                let version = if opt.zarr_v3 {
                    ZarrVersion::V3
                } else {
                    ZarrVersion::V2
                };
                let co = CreateOptions {
                    version,
                    compressor: if opt.compress {
                        Compressor::Gzip(opt.gzip_level.unwrap_or(5).min(9))
                    } else {
                        Compressor::None
                    },
                    voxel_size: opt.voxel_size,
                    ..CreateOptions::default()
                };
                let array = match ZarrArray::create_with(&tmp, shape, &chunks, dtype, &co) {
                    Ok(a) => a,
                    Err(e) => {
                        let _ = std::fs::remove_dir_all(&tmp);
                        return Err(e);
                    }
                };
                Sink::Zarr {
                    target: path,
                    tmp,
                    array,
                    version,
                }
            }
            VolumeSpec::Raw { path, .. } => {
                let tmp = temp_beside(&path, "partial")?;
                let bytes = shape_len(shape)?
                    .checked_mul(dtype.size())
                    .ok_or_else(|| bad("volume too large".into()))?;
                let f = std::fs::File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
                if let Err(e) = f.set_len(bytes as u64) {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(io_err(&tmp, e));
                }
                let layout = RawLayout {
                    shape: shape.to_vec(),
                    dtype,
                    order: ByteOrder::Little,
                    header: 0,
                    voxel_size: opt.voxel_size,
                };
                Sink::Raw {
                    path,
                    tmp,
                    file: Some(f),
                    sidecar: sidecar_json(&layout),
                }
            }
        })
    })();
    match sink {
        Ok(s) => {
            w.sink = s;
            Ok(w)
        }
        Err(e) => {
            w.remove_created_dirs();
            w.done = true;
            Err(crate::fsutil::not_written(spec, e))
        }
    }
}

fn h5_create_dataset(
    f: &hdf5::File,
    dataset: &str,
    shape: &[usize],
    chunks: &[usize],
    dtype: Dtype,
    opt: &WriteOptions,
    ctx: &str,
) -> Result<hdf5::Dataset> {
    let e = |e: hdf5::Error| h5err(ctx, "creating the dataset", e);
    if f.link_exists(dataset) {
        f.unlink(dataset).map_err(e)?;
    }
    let parts: Vec<&str> = dataset.split('/').filter(|p| !p.is_empty()).collect();
    let mut path = String::new();
    for p in &parts[..parts.len().saturating_sub(1)] {
        path.push('/');
        path.push_str(p);
        if !f.link_exists(&path) {
            f.create_group(&path).map_err(e)?;
        }
    }
    macro_rules! make {
        ($t:ty) => {{
            let b = f.new_dataset::<$t>().shape(shape);
            let b = if shape.contains(&0) {
                b
            } else if opt.compress {
                b.chunk(chunks.to_vec())
                    .deflate(opt.gzip_level.unwrap_or(4).min(9) as u8)
            } else {
                b.chunk(chunks.to_vec())
            };
            b.create(dataset).map_err(e)?
        }};
    }
    let ds = match dtype {
        Dtype::U8 => make!(u8),
        Dtype::U16 => make!(u16),
        Dtype::U32 => make!(u32),
        Dtype::U64 => make!(u64),
        Dtype::F32 => make!(f32),
        Dtype::F64 => make!(f64),
    };
    if let Some(v) = opt.voxel_size {
        let a = ds
            .new_attr::<f64>()
            .shape([3])
            .create("resolution")
            .map_err(e)?;
        a.write_raw(&[v.z, v.y, v.x]).map_err(e)?;
    }
    Ok(ds)
}

/// Renames a finished zarr directory over `target`, moving an old array aside first (a
/// directory cannot be renamed over a non-empty one).
fn replace_dir(tmp: &Path, target: &Path) -> Result<()> {
    if target.exists() {
        let old = temp_beside(target, "old")?;
        std::fs::rename(target, &old).map_err(|e| io_err(target, e))?;
        if let Err(e) = std::fs::rename(tmp, target) {
            let _ = std::fs::rename(&old, target);
            return Err(io_err(target, e));
        }
        let _ = std::fs::remove_dir_all(&old);
    } else {
        std::fs::rename(tmp, target).map_err(|e| io_err(target, e))?;
    }
    Ok(())
}

/// Marks the directories between the `*.zarr` root and the array as v2 groups, so that zarr
/// tools walking from the root find the array.
fn write_zarr_groups(target: &Path, version: ZarrVersion) -> Result<()> {
    let mut dirs = Vec::new();
    let mut p = target.parent();
    while let Some(d) = p {
        if d.as_os_str().is_empty() {
            break;
        }
        dirs.push(d.to_path_buf());
        if d.to_string_lossy().to_ascii_lowercase().ends_with(".zarr") {
            break;
        }
        p = d.parent();
    }
    // Only inside a store: an array directory that is itself the `.zarr` root has no groups.
    if !dirs
        .last()
        .is_some_and(|d| d.to_string_lossy().to_ascii_lowercase().ends_with(".zarr"))
    {
        return Ok(());
    }
    for d in dirs {
        let (name, text) = match version {
            ZarrVersion::V2 => (".zgroup", "{\"zarr_format\": 2}\n"),
            ZarrVersion::V3 => (
                "zarr.json",
                "{\"zarr_format\": 3, \"node_type\": \"group\", \"attributes\": {}}\n",
            ),
        };
        let f = d.join(name);
        let other = d.join(if version == ZarrVersion::V2 {
            "zarr.json"
        } else {
            ".zgroup"
        });
        if !f.exists() && !other.exists() && !d.join(".zarray").exists() {
            super::array::write_file_atomic(&f, |w| {
                use std::io::Write;
                w.write_all(text.as_bytes()).map_err(|e| io_err(&f, e))
            })?;
        }
    }
    Ok(())
}

impl std::fmt::Debug for VolumeWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolumeWriter")
            .field("spec", &self.spec)
            .field("shape", &self.shape)
            .field("dtype", &self.dtype)
            .finish()
    }
}

impl VolumeWriter {
    pub fn spec(&self) -> &str {
        &self.spec
    }
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// Writes `data` at `offset`; values are converted exactly to the volume's dtype.
    pub fn write_region<T: Voxel>(&mut self, offset: &[usize], data: &Array<T>) -> Result<()> {
        self.write_region_inner(offset, data)
            .map_err(|e| crate::fsutil::not_written(&self.spec, e))
    }

    fn write_region_inner<T: Voxel>(&mut self, offset: &[usize], data: &Array<T>) -> Result<()> {
        let spec = self.spec.clone();
        let named = |e: Error| match e {
            Error::Region { op, detail } => Error::Region {
                op,
                detail: format!("{spec}: {detail}"),
            },
            Error::Value { what, detail } => Error::Value {
                what: format!("{spec}: {what}"),
                detail,
            },
            other => other,
        };
        check_box("write_region", &self.shape, offset, &data.shape).map_err(named)?;
        let any = to_dtype(data, self.dtype).map_err(named)?;
        if data.is_empty() {
            return Ok(());
        }
        match &mut self.sink {
            Sink::Tiff { buf, .. } => {
                let zeros = vec![0; offset.len()];
                let full = buf.shape().to_vec();
                any_pair!(
                    &any,
                    buf,
                    |s, d| copy_box(
                        &s.data,
                        &s.shape,
                        &zeros,
                        &mut d.data,
                        &full,
                        offset,
                        &s.shape
                    ),
                    return Err(Error::Invalid(format!(
                        "{spec}: internal: region dtype differs from the buffer's"
                    )))
                );
                Ok(())
            }
            Sink::Hdf5 { ds, .. } => {
                let ds = ds
                    .as_ref()
                    .ok_or_else(|| Error::Io(format!("{spec}: closed")))?;
                let sel = h5_selection(offset, &data.shape);
                any_one!(&any, |a| {
                    let view = ndarray::ArrayViewD::from_shape(ndarray::IxDyn(&a.shape), &a.data)
                        .map_err(|e| Error::shape("write_region", format!("{spec}: {e}")))?;
                    ds.as_writer()
                        .write_slice(view, sel)
                        .map_err(|e| h5err(&spec, "writing a region", e))
                })
            }
            Sink::Zarr { array, .. } => {
                any_one!(&any, |a| array.write_region(offset, a))
            }
            Sink::Raw { file, tmp, .. } => {
                use std::os::unix::fs::FileExt;
                let f = file
                    .as_ref()
                    .ok_or_else(|| Error::Io(format!("{spec}: closed")))?;
                let bytes = any_one!(&any, |a| encode_elements(&a.data, ByteOrder::Little));
                let es = self.dtype.size();
                let nd = self.shape.len();
                let strides = c_strides(&self.shape);
                let row = data.shape[nd - 1] * es;
                for (r, src) in bytes.chunks(row).enumerate() {
                    let idx = super::array::unravel(r, &data.shape[..nd - 1]);
                    let mut o = offset[nd - 1];
                    for d in 0..nd - 1 {
                        o += (offset[d] + idx[d]) * strides[d];
                    }
                    f.write_all_at(src, (o * es) as u64)
                        .map_err(|e| io_err(tmp, e))?;
                }
                Ok(())
            }
        }
    }

    /// Puts the volume at its target. Regions never written hold 0.
    pub fn finish(mut self) -> Result<()> {
        let r = self
            .finish_inner()
            .map_err(|e| crate::fsutil::not_written(&self.spec, e));
        self.done = true;
        if r.is_err() {
            self.cleanup();
        }
        r
    }

    fn finish_inner(&mut self) -> Result<()> {
        match &mut self.sink {
            Sink::Tiff { path, buf } => {
                let vs = self.voxel_size;
                match buf {
                    AnyArray::U8(a) => super::tiff::write(&*path, a, vs),
                    AnyArray::U16(a) => super::tiff::write(&*path, a, vs),
                    AnyArray::U32(a) => super::tiff::write(&*path, a, vs),
                    AnyArray::F32(a) => super::tiff::write(&*path, a, vs),
                    other => Err(Error::Invalid(format!(
                        "{}: TIFF cannot hold {}",
                        path.display(),
                        other.dtype()
                    ))),
                }
            }
            Sink::Hdf5 {
                target,
                tmp,
                file,
                ds,
            } => {
                // While the dataset is open: closing it flushes its chunk cache and drops errors.
                if let Some(f) = file.as_ref() {
                    f.flush().map_err(|e| h5err(&self.spec, "flushing", e))?;
                }
                ds.take();
                if let Some(f) = file.take() {
                    super::hdf5::close_synced(f, tmp, &self.spec)?;
                }
                std::fs::rename(&*tmp, &*target).map_err(|e| io_err(target, e))
            }
            Sink::Zarr {
                target,
                tmp,
                version,
                ..
            } => {
                crate::fsutil::sync_tree(tmp)?;
                // Before the array appears: once it is in place, nothing may fail any more.
                write_zarr_groups(target, *version)?;
                replace_dir(tmp, target)
            }
            Sink::Raw {
                path,
                tmp,
                file,
                sidecar,
            } => {
                if let Some(f) = file.take() {
                    f.sync_all().map_err(|e| io_err(tmp, e))?;
                }
                let side = raw_sidecar(path);
                super::array::write_file_atomic(&side, |w| {
                    use std::io::Write;
                    w.write_all(sidecar.as_bytes())
                        .map_err(|e| io_err(&side, e))
                })?;
                std::fs::rename(&*tmp, &*path).map_err(|e| io_err(path, e))
            }
        }
    }

    fn remove_created_dirs(&mut self) {
        for d in self.created_dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }

    fn cleanup(&mut self) {
        match &mut self.sink {
            Sink::Tiff { .. } => {}
            Sink::Hdf5 { tmp, file, ds, .. } => {
                ds.take();
                file.take();
                let _ = std::fs::remove_file(&*tmp);
            }
            Sink::Zarr { tmp, .. } => {
                let _ = std::fs::remove_dir_all(&*tmp);
            }
            Sink::Raw { tmp, file, .. } => {
                file.take();
                let _ = std::fs::remove_file(&*tmp);
            }
        }
        self.remove_created_dirs();
    }
}

impl Drop for VolumeWriter {
    fn drop(&mut self) {
        if !self.done {
            self.cleanup();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("revseg-io-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A non-symmetric volume whose every voxel differs from its neighbours.
    fn ramp(shape: &[usize]) -> Array<u16> {
        let n: usize = shape.iter().product();
        Array::new(
            shape.to_vec(),
            (0..n).map(|i| (i * 7 % 1000 + 1) as u16).collect(),
        )
        .unwrap()
    }

    fn entries(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn spec_forms_parse() {
        let p = |s| VolumeSpec::parse(s).unwrap();
        assert_eq!(
            p("a/b.TIF"),
            VolumeSpec::Tiff {
                path: "a/b.TIF".into()
            }
        );
        assert_eq!(
            p("run:1/s.hdf:volumes/raw"),
            VolumeSpec::Hdf5 {
                file: "run:1/s.hdf".into(),
                dataset: Some("/volumes/raw".into())
            }
        );
        assert_eq!(
            p("x.hdf5"),
            VolumeSpec::Hdf5 {
                file: "x.hdf5".into(),
                dataset: None
            }
        );
        assert_eq!(
            p("d/v.zarr/labels/s0/"),
            VolumeSpec::Zarr {
                path: "d/v.zarr/labels/s0".into()
            }
        );
        match p("v.raw:3,4,5:u16:be") {
            VolumeSpec::Raw {
                path,
                layout: Some(l),
            } => {
                assert_eq!(path, PathBuf::from("v.raw"));
                assert_eq!(
                    (l.shape, l.dtype, l.order),
                    (vec![3, 4, 5], Dtype::U16, ByteOrder::Big)
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(p("v.bin"), VolumeSpec::Raw { layout: None, .. }));
    }

    #[test]
    fn bad_specs_are_explained() {
        let e = VolumeSpec::parse("volume.png").unwrap_err().to_string();
        assert!(
            e.contains("volume.png") && e.contains(".zarr") && e.contains(".h5:/"),
            "{e}"
        );
        let e = VolumeSpec::parse("d/.hdf5:/x").unwrap_err().to_string();
        assert!(e.contains("empty HDF5 file name"), "{e}");
        let e = VolumeSpec::parse("a.h5:/").unwrap_err().to_string();
        assert!(e.contains("empty dataset"), "{e}");
        let e = VolumeSpec::parse("a.raw:3,x,5:u8").unwrap_err().to_string();
        assert!(e.contains("'x'"), "{e}");
        let e = VolumeSpec::parse("a.raw:3,4:int7").unwrap_err().to_string();
        assert!(e.contains("int7"), "{e}");
    }

    /// Writes `vol` in two overlapping-free halves through the facade, reads it back whole and
    /// by region, and checks that no temporary file is left.
    fn round_trip(dir: &Path, spec: &str, vol: &Array<u16>, chunks: Option<&[usize]>) {
        let [z, y, x] = vol.shape[..] else { panic!() };
        let mut w = create_volume_with(
            spec,
            &vol.shape,
            Dtype::U16,
            &WriteOptions {
                chunks: chunks.map(|c| c.to_vec()),
                voxel_size: Some(VoxelSize::new(40.0, 4.0, 4.0).unwrap()),
                ..WriteOptions::default()
            },
        )
        .unwrap();
        let h = z / 2;
        w.write_region(&[0, 0, 0], &vol.slice(&[0, 0, 0], &[h, y, x]).unwrap())
            .unwrap();
        w.write_region(&[h, 0, 0], &vol.slice(&[h, 0, 0], &[z - h, y, x]).unwrap())
            .unwrap();
        w.finish().unwrap();
        let r = open_volume(spec).unwrap();
        assert_eq!(r.shape(), &vol.shape[..], "{spec}");
        assert_eq!(r.dtype(), Dtype::U16, "{spec}");
        assert_eq!(r.read_all::<u16>().unwrap(), *vol, "{spec}");
        // Exact widening on read.
        let f = r.read_all::<f32>().unwrap();
        assert_eq!(f.data[5], vol.data[5] as f32, "{spec}");
        let sub = r.read_region::<u32>(&[1, 2, 3], &[2, 3, 4]).unwrap();
        let want = vol
            .slice(&[1, 2, 3], &[2, 3, 4])
            .unwrap()
            .convert::<u32>()
            .unwrap();
        assert_eq!(sub, want, "{spec}");
        let vs = r.voxel_size().expect(spec);
        assert!(
            (vs.z - 40.0).abs() < 1e-6 && (vs.x - 4.0).abs() < 1e-6,
            "{spec}: {vs:?}"
        );
        let leftovers: Vec<String> = entries(dir)
            .into_iter()
            .filter(|n| n.contains("partial") || n.contains(".old-"))
            .collect();
        assert!(leftovers.is_empty(), "{spec}: {leftovers:?}");
    }

    #[test]
    fn round_trip_every_format() {
        let d = tmpdir("rt");
        let vol = ramp(&[4, 6, 7]);
        let s = |n: &str| d.join(n).to_string_lossy().into_owned();
        round_trip(&d, &s("v.tif"), &vol, None);
        round_trip(
            &d,
            &format!("{}:/g/labels", s("v.h5")),
            &vol,
            Some(&[2, 4, 4]),
        );
        round_trip(&d, &s("v.zarr"), &vol, Some(&[3, 4, 5]));
        round_trip(&d, &s("root.zarr/group/arr"), &vol, Some(&[2, 2, 2]));
        round_trip(&d, &s("v.raw"), &vol, None);
        // The group levels of a store carry group metadata for zarr tools.
        assert!(d.join("root.zarr/.zgroup").exists());
        assert!(d.join("root.zarr/group/.zgroup").exists());
        // The raw sidecar describes the file; the inline form reads the same bytes.
        let r = open_volume(&format!("{}:4,6,7:uint16", s("v.raw"))).unwrap();
        assert_eq!(r.read_all::<u16>().unwrap(), vol);
        // A second dataset in the same HDF5 file keeps the first one.
        let other = ramp(&[2, 2, 2]);
        let spec2 = format!("{}:/other", s("v.h5"));
        let mut w = create_volume(&spec2, &[2, 2, 2], Dtype::U16, None).unwrap();
        w.write_region(&[0, 0, 0], &other).unwrap();
        w.finish().unwrap();
        let first = open_volume(&format!("{}:/g/labels", s("v.h5"))).unwrap();
        assert_eq!(first.read_all::<u16>().unwrap(), vol);
        assert_eq!(
            open_volume(&spec2).unwrap().read_all::<u16>().unwrap(),
            other
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn zarr_v3_and_overwrite() {
        let d = tmpdir("v3");
        let spec = d.join("a.zarr").to_string_lossy().into_owned();
        let vol = ramp(&[3, 5, 4]);
        let mut w = create_volume_with(
            &spec,
            &vol.shape,
            Dtype::U16,
            &WriteOptions {
                zarr_v3: true,
                compress: true,
                chunks: Some(vec![2, 2, 3]),
                ..WriteOptions::default()
            },
        )
        .unwrap();
        w.write_region(&[0, 0, 0], &vol).unwrap();
        w.finish().unwrap();
        assert!(d.join("a.zarr/zarr.json").exists());
        assert_eq!(open_volume(&spec).unwrap().read_all::<u16>().unwrap(), vol);
        // Replacing it with a different volume leaves only the new one.
        let vol2 = Array::new(vec![2, 2, 2], (10u16..18).collect()).unwrap();
        let mut w = create_volume(&spec, &[2, 2, 2], Dtype::U16, None).unwrap();
        w.write_region(&[0, 0, 0], &vol2).unwrap();
        w.finish().unwrap();
        assert_eq!(open_volume(&spec).unwrap().read_all::<u16>().unwrap(), vol2);
        assert_eq!(entries(&d), vec!["a.zarr".to_string()]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn unfinished_writers_leave_nothing() {
        let d = tmpdir("drop");
        let vol = ramp(&[2, 3, 3]);
        for name in [
            "a.tif",
            "a.h5:/x",
            "a.zarr",
            "sub/deeper/a.raw",
            "s.zarr/g/a",
        ] {
            let spec = d.join(name).to_string_lossy().into_owned();
            let mut w = create_volume(&spec, &vol.shape, Dtype::U16, None).unwrap();
            w.write_region(&[0, 0, 0], &vol).unwrap();
            drop(w);
            assert!(entries(&d).is_empty(), "{name}: {:?}", entries(&d));
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn writes_check_boxes_and_values() {
        let d = tmpdir("chk");
        let spec = d.join("a.raw").to_string_lossy().into_owned();
        let mut w = create_volume(&spec, &[2, 2, 2], Dtype::U8, None).unwrap();
        let e = w
            .write_region(&[1, 0, 0], &ramp(&[2, 2, 2]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("a.raw") && e.contains("exceeds"), "{e}");
        let big = Array::new(vec![1, 1, 2], vec![3u16, 300]).unwrap();
        let e = w.write_region(&[0, 0, 0], &big).unwrap_err().to_string();
        assert!(e.contains("a.raw") && e.contains("300"), "{e}");
        let e = create_volume(
            &d.join("a.tif").to_string_lossy(),
            &[2, 2, 2],
            Dtype::U64,
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("uint64"), "{e}");
        drop(w);
        assert!(entries(&d).is_empty(), "{:?}", entries(&d));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn open_errors_name_file_and_problem() {
        let d = tmpdir("err");
        let raw = d.join("n.raw");
        std::fs::write(&raw, [1u8, 2, 3, 4]).unwrap();
        let e = open_volume(&raw.to_string_lossy()).unwrap_err().to_string();
        assert!(e.contains("n.raw.json") && e.contains("shape"), "{e}");
        let e = open_volume(&format!("{}:2,3:u8", raw.display()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("n.raw") && e.contains("4 bytes"), "{e}");
        let h5 = d.join("f.h5");
        crate::volume::hdf5::write_dataset(&h5, "/vol", &[2], &[1u8, 2], false).unwrap();
        let e = open_volume(&h5.to_string_lossy()).unwrap_err().to_string();
        assert!(e.contains("/vol") && e.contains("no dataset"), "{e}");
        let e = open_volume(&format!("{}:/vlo", h5.display()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/vlo") && e.contains("/vol"), "{e}");
        let e = open_volume(&d.join("none.tif").to_string_lossy())
            .unwrap_err()
            .to_string();
        assert!(e.contains("none.tif"), "{e}");
        // A float volume never reads as labels.
        let fspec = d.join("f.raw").to_string_lossy().into_owned();
        let mut w = create_volume(&fspec, &[1, 1, 2], Dtype::F32, None).unwrap();
        w.write_region(
            &[0, 0, 0],
            &Array::new(vec![1, 1, 2], vec![1.0f32, 2.5]).unwrap(),
        )
        .unwrap();
        w.finish().unwrap();
        let e = open_volume(&fspec)
            .unwrap()
            .read_all::<u32>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("f.raw") && e.contains("2.5"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn signed_hdf5_labels_read_as_unsigned() {
        let d = tmpdir("signed");
        let p = d.join("s.h5");
        {
            let f = hdf5::File::create(&p).unwrap();
            let ds = f
                .new_dataset::<i32>()
                .shape([1, 2, 3])
                .create("seg")
                .unwrap();
            ds.write_raw(&[5i32, 6, 7, 8, 9, 70000]).unwrap();
        }
        let r = open_volume(&format!("{}:/seg", p.display())).unwrap();
        assert_eq!(r.dtype(), Dtype::U32);
        let a = r.read_region::<u32>(&[0, 1, 1], &[1, 1, 2]).unwrap();
        assert_eq!(a.data, vec![9, 70000]);
        let e = r.read_all::<u16>().unwrap_err().to_string();
        assert!(e.contains("70000"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}

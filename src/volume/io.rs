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
//! float16 is stored by zarr and raw only (TIFF and HDF5 writers refuse it by name) and is held
//! as f32 in memory: it reads exactly as f32, and writing into a float16 volume is the one
//! conversion that rounds (to the nearest half, ties to even, beyond ±65504 to infinity), since
//! choosing float16 is asking for it.
//!
//! TIFF pages are decoded whole, so a TIFF reader holds the whole stack in memory and regions are
//! copies of it; the other formats read only what a region touches. Writers never leave a partly
//! written volume at the target: TIFF is buffered and written at [`VolumeWriter::finish`]; raw,
//! HDF5 and zarr are written into a temporary file or directory beside the target and renamed
//! over it at `finish`. A writer dropped without `finish` removes its temporary data (and the
//! parent directories it created).

use super::array::{check_box, io_err, shape_len, AnyArray, Array, Dtype, Voxel, VoxelSize};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub use super::raw::{raw_sidecar, RawLayout};

/// The accepted spec forms, for error messages.
pub const ACCEPTED_FORMS: &str = "FILE.tif or FILE.tiff (multi-page TIFF); FILE.h5:/DATASET (also .hdf5, .hdf); DIR.zarr or DIR.zarr/PATH/IN/GROUP (zarr v2/v3); FILE.raw:Z,Y,X:DTYPE[:le|be] or FILE.raw with a FILE.raw.json sidecar (also .bin)";

/// An element type every format can read into: the six volume dtypes.
pub trait IoVoxel: Voxel + super::hdf5::Element {}
impl<T: Voxel + super::hdf5::Element> IoVoxel for T {}

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

impl Format {
    /// How users know the format, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Format::Tiff => "TIFF",
            Format::Hdf5 => "HDF5",
            Format::Zarr => "zarr",
            Format::Raw => "raw",
        }
    }
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
                Some(super::raw::parse_inline_layout(s, &s[end + 1..])?)
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

/// One format's open volume: the dispatcher checks the box and the memory first, then asks for
/// the voxels.
pub(crate) trait FormatReader: Send + Sync {
    /// The box `offset .. offset + shape` (already checked against the shape), in the volume's
    /// dtype, or directly in `want` where the format converts from its stored type itself
    /// (HDF5's signed datasets); the dispatcher converts the rest exactly.
    fn read_region(&self, offset: &[usize], shape: &[usize], want: Dtype) -> Result<AnyArray>;
}

/// What a format module hands back when it opens a volume.
pub(crate) struct Opened {
    pub shape: Vec<usize>,
    pub dtype: Dtype,
    pub voxel_size: Option<VoxelSize>,
    /// Origin in nm [z, y, x] where the format records one (zarr).
    pub offset_nm: Option<[f64; 3]>,
    pub reader: Box<dyn FormatReader>,
}

/// One format's volume being written into its temporary place.
pub(crate) trait FormatWriter: Send {
    /// Writes `data` (checked against the volume, in its dtype, not empty) at `offset`.
    fn write_region(&mut self, offset: &[usize], data: &AnyArray) -> Result<()>;
    /// Makes the data durable and puts it at the target; nothing may fail after the rename.
    fn finish(&mut self) -> Result<()>;
    /// Removes the temporary data of a writer that did not finish.
    fn discard(&mut self);
}

/// Everything a format's writer is created from, checked by the dispatcher.
pub(crate) struct WriteRequest<'a> {
    pub shape: &'a [usize],
    pub dtype: Dtype,
    /// One positive entry per axis.
    pub chunks: &'a [usize],
    pub opt: &'a WriteOptions,
}

/// An open volume: its geometry now, its voxels on demand.
pub struct VolumeReader {
    spec: String,
    shape: Vec<usize>,
    dtype: Dtype,
    voxel_size: Option<VoxelSize>,
    offset_nm: Option<[f64; 3]>,
    format: Format,
    reader: Box<dyn FormatReader>,
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

/// Opens the volume named by `spec` (see the module documentation for the forms).
pub fn open_volume(spec: &str) -> Result<VolumeReader> {
    let parsed = VolumeSpec::parse(spec)?;
    let format = parsed.format();
    let o = match parsed {
        VolumeSpec::Tiff { path } => super::tiff::open_volume(&path)?,
        VolumeSpec::Hdf5 { file, dataset } => {
            super::hdf5::open_volume(spec, &file, dataset.as_deref())?
        }
        VolumeSpec::Zarr { path } => super::zarr::open_volume(&path)?,
        VolumeSpec::Raw { path, layout } => super::raw::open_volume(&path, layout)?,
    };
    Ok(VolumeReader {
        spec: spec.to_string(),
        shape: o.shape,
        dtype: o.dtype,
        voxel_size: o.voxel_size,
        offset_nm: o.offset_nm,
        format,
        reader: o.reader,
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
    /// `resolution` attributes or OME-Zarr scales, raw sidecar `voxel_size_nm`).
    pub fn voxel_size(&self) -> Option<VoxelSize> {
        self.voxel_size
    }
    /// Origin in nm [z, y, x] when the file records one (zarr `offset` attributes or OME-Zarr
    /// translations).
    pub fn offset_nm(&self) -> Option<[f64; 3]> {
        self.offset_nm
    }
    pub fn format(&self) -> Format {
        self.format
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
        self.reader
            .read_region(offset, shape, T::DTYPE)
            .and_then(|a| a.into_typed())
            .map_err(|e| self.named(e))
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
    /// Origin in nm [z, y, x], recorded by zarr (`offset` attribute and OME-Zarr translation).
    pub offset_nm: Option<[f64; 3]>,
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
pub(crate) fn temp_beside(path: &Path, tag: &str) -> Result<PathBuf> {
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

/// A volume being written; nothing appears at the target until [`VolumeWriter::finish`].
pub struct VolumeWriter {
    spec: String,
    shape: Vec<usize>,
    dtype: Dtype,
    writer: Option<Box<dyn FormatWriter>>,
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
        // The zarr and raw writers round to half when they encode.
        Dtype::F16 | Dtype::F32 => data.convert::<f32>()?.into(),
        Dtype::F64 => data.convert::<f64>()?.into(),
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
    // Everything that can fail without touching the disk first.
    if dtype == Dtype::F16 && matches!(parsed.format(), Format::Tiff | Format::Hdf5) {
        return Err(bad(format!(
            "{} volumes are not written as float16; write DIR.zarr or FILE.raw for float16, or choose float32 or uint8",
            parsed.format().name()
        )));
    }
    match &parsed {
        VolumeSpec::Tiff { .. } => super::tiff::check_writable(shape, dtype).map_err(bad)?,
        VolumeSpec::Hdf5 { dataset: None, .. } => {
            return Err(bad(
                "no dataset named; write FILE.h5:/DATASET, e.g. out.h5:/volumes/labels".into(),
            ))
        }
        VolumeSpec::Raw {
            layout: Some(l), ..
        } => super::raw::check_writable(l, shape, dtype).map_err(bad)?,
        _ => {}
    }
    let target = parsed.file().to_path_buf();
    let mut w = VolumeWriter {
        spec: spec.to_string(),
        shape: shape.to_vec(),
        dtype,
        writer: None,
        created_dirs: create_parents(&target)?,
        done: false,
    };
    crate::fsutil::remove_stale_temps(&target);
    let req = WriteRequest {
        shape,
        dtype,
        chunks: &chunks,
        opt,
    };
    let made = match parsed {
        VolumeSpec::Tiff { path } => super::tiff::create_volume(path, &req),
        VolumeSpec::Hdf5 { file, dataset } => {
            super::hdf5::create_volume(file, &dataset.unwrap_or_default(), &req)
        }
        VolumeSpec::Zarr { path } => super::zarr::create_volume(path, &req),
        VolumeSpec::Raw { path, .. } => super::raw::create_volume(path, &req),
    };
    match made {
        Ok(s) => {
            w.writer = Some(s);
            Ok(w)
        }
        Err(e) => {
            w.remove_created_dirs();
            w.done = true;
            Err(crate::fsutil::not_written(spec, e))
        }
    }
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
        self.writer
            .as_mut()
            .ok_or_else(|| Error::Io(format!("{spec}: closed")))?
            .write_region(offset, &any)
    }

    /// Puts the volume at its target. Regions never written hold 0.
    pub fn finish(mut self) -> Result<()> {
        let r = match self.writer.as_mut() {
            Some(s) => s.finish(),
            None => Err(Error::Io(format!("{}: closed", self.spec))),
        }
        .map_err(|e| crate::fsutil::not_written(&self.spec, e));
        self.done = true;
        if r.is_err() {
            self.cleanup();
        }
        r
    }

    fn remove_created_dirs(&mut self) {
        for d in self.created_dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }

    fn cleanup(&mut self) {
        if let Some(s) = self.writer.as_mut() {
            s.discard();
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
    use crate::volume::array::ByteOrder;

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

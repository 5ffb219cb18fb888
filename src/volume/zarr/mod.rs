//! Zarr v2 and v3 arrays in directory stores, read and written chunk by chunk so that volumes
//! larger than memory can be processed by region.
//!
//! Chunks are decoded and encoded by the `zarrs` crate: every codec of its default set (blosc,
//! gzip, zstd, crc32c, transpose, sharding, plus zlib for v2), v2 filters and order "F", both byte
//! orders, every chunk key encoding. This module adds what revseg needs around it: metadata
//! checked with errors that name the file and the fix, dtypes u1/u2/u4/u8/f4/f8 (signed integer
//! arrays read as the unsigned type of their width where no value is negative, as HDF5 and TIFF
//! do), voxel size and offset from `resolution`/`offset` attributes or OME-Zarr (NGFF)
//! multiscales, and writes through [`store::AtomicStore`]: every chunk and metadata file goes
//! to a temporary file renamed into place, so a reader never sees a partial chunk. Two writers of
//! the same chunk at once are not coordinated (the last rename wins); blockwise jobs give every
//! chunk one writer.

pub mod store;

use super::array::{
    check_box, copy_box, io_err, shape_len, to_f16, write_file_atomic, AnyArray, Array, ByteOrder,
    Dtype, Scalar, Voxel, VoxelSize,
};
use super::io::{temp_beside, FormatReader, FormatWriter, Opened, WriteRequest};
use crate::error::{Error, Result};
use crate::json::{self, Json};
use rayon::prelude::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use store::AtomicStore;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZarrVersion {
    V2,
    V3,
}

/// Chunk compression.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compressor {
    None,
    /// gzip stream, level 0-9.
    Gzip(u32),
    /// zlib stream, level 0-9 (v2 only: v3 has no zlib codec).
    Zlib(u32),
    /// zstd frame at this level.
    Zstd(i32),
}

impl Compressor {
    /// Parses "none", "raw", "gzip", "gzip:6", "zlib:1", "zstd", "zstd:3".
    pub fn parse(s: &str) -> Result<Compressor> {
        let (name, level) = match s.split_once(':') {
            Some((n, l)) => (
                n,
                Some(l.trim().parse::<i32>().map_err(|_| {
                    Error::Invalid(format!("compressor '{s}': level must be an integer"))
                })?),
            ),
            None => (s, None),
        };
        let lvl09 = |d: i32| -> Result<u32> {
            let l = level.unwrap_or(d);
            if (0..=9).contains(&l) {
                Ok(l as u32)
            } else {
                Err(Error::Invalid(format!(
                    "compressor '{s}': level must be 0-9"
                )))
            }
        };
        match name.trim() {
            "none" | "raw" => Ok(Compressor::None),
            "gzip" => Ok(Compressor::Gzip(lvl09(5)?)),
            "zlib" => Ok(Compressor::Zlib(lvl09(5)?)),
            "zstd" => Ok(Compressor::Zstd(level.unwrap_or(1))),
            other => Err(Error::Invalid(format!(
                "compressor '{other}': choose none, gzip[:level], zlib[:level] or zstd"
            ))),
        }
    }
}

/// How to build a new array beyond shape, chunks, dtype and compressor.
#[derive(Clone, Debug)]
pub struct CreateOptions {
    pub version: ZarrVersion,
    pub compressor: Compressor,
    /// Value of missing chunks (and of the padding of edge chunks).
    pub fill_value: f64,
    pub order: ByteOrder,
    /// Stored as `resolution` [z, y, x] in nm, as CREMI and gunpowder do.
    pub voxel_size: Option<VoxelSize>,
    /// Stored as `offset` [z, y, x] in nm (daisy's convention) and as the OME-Zarr translation.
    pub offset_nm: Option<[f64; 3]>,
    /// Replace an existing zarr array at the path (its chunks are removed first).
    pub overwrite: bool,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            version: ZarrVersion::V2,
            compressor: Compressor::None,
            fill_value: 0.0,
            order: ByteOrder::Little,
            voxel_size: None,
            offset_nm: None,
            overwrite: false,
        }
    }
}

/// An open zarr array (metadata only; chunks are read on demand).
#[derive(Clone)]
pub struct ZarrArray {
    path: PathBuf,
    pub version: ZarrVersion,
    pub shape: Vec<usize>,
    pub chunks: Vec<usize>,
    pub dtype: Dtype,
    pub order: ByteOrder,
    pub fill_value: Scalar,
    pub voxel_size: Option<VoxelSize>,
    /// Origin of the array in nm [z, y, x] (OME-Zarr translation or an `offset` attribute).
    pub offset_nm: Option<[f64; 3]>,
    /// The compressor, when the pipeline is one this module also writes.
    pub compressor: Compressor,
    /// Stored as signed integers of `dtype`'s width.
    pub signed: bool,
    separator: char,
    /// v3 "default" key encoding prefixes keys with "c".
    key_prefix_c: bool,
    /// The chunk codecs; None until the metadata has been checked.
    za: Option<Arc<zarrs::array::Array<AtomicStore>>>,
}

impl std::fmt::Debug for ZarrArray {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZarrArray")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("shape", &self.shape)
            .field("chunks", &self.chunks)
            .field("dtype", &self.dtype)
            .field("signed", &self.signed)
            .finish()
    }
}

/// A dtype string, signed integers as the unsigned type of their width (the flag says signed).
fn dtype_of(name: &str, v2: bool) -> Result<(Dtype, ByteOrder, bool)> {
    let (unsigned, signed) = if v2 {
        match name.get(1..) {
            Some(r) if r.starts_with('i') => (format!("{}u{}", &name[..1], &r[1..]), true),
            _ => (name.to_string(), false),
        }
    } else {
        match name.strip_prefix("int") {
            Some(bits) => (format!("uint{bits}"), true),
            None => (name.to_string(), false),
        }
    };
    let supported = "uint8/16/32/64, int8/16/32/64, float16, float32 and float64 are read";
    let e = |e: Error| Error::Invalid(format!("dtype '{name}': {e}; {supported}"));
    if v2 {
        let (d, o) = Dtype::from_typestr(&unsigned).map_err(e)?;
        Ok((d, o, signed))
    } else {
        Ok((
            Dtype::from_name(&unsigned).map_err(e)?,
            ByteOrder::Little,
            signed,
        ))
    }
}

fn meta_err(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("{}: {msg}", path.display()))
}

/// A non-negative integer that fits usize, exactly (no float rounding).
fn as_usize(v: &Json) -> Option<usize> {
    v.as_u64().and_then(|n| usize::try_from(n).ok())
}

fn usize_list(v: Option<&Json>, path: &Path, what: &str) -> Result<Vec<usize>> {
    let a = v
        .and_then(Json::as_array)
        .ok_or_else(|| meta_err(path, format!("'{what}' missing or not a list")))?;
    a.iter()
        .map(|x| {
            as_usize(x).ok_or_else(|| {
                meta_err(
                    path,
                    format!(
                        "'{what}' holds {x}, not a non-negative integer of at most {}",
                        usize::MAX
                    ),
                )
            })
        })
        .collect()
}

/// Fill value from JSON: a number, null, "NaN", "Infinity", "-Infinity", or (v3) a hex bit pattern.
fn parse_fill(v: Option<&Json>, dtype: Dtype, signed: bool, path: &Path) -> Result<Scalar> {
    if let (Some(Json::Number(n)), false) = (v, dtype.is_float()) {
        if signed && n.as_i64().is_some_and(|i| i < 0) {
            return Err(meta_err(
                path,
                format!("fill_value {n} is negative; signed arrays are read as unsigned labels"),
            ));
        }
        // Integer fill values are exact: u64 ones above 2^53 do not go through f64.
        let u = n
            .as_u64()
            .ok_or_else(|| meta_err(path, format!("fill_value {n} is not valid for {dtype}")))?;
        return Ok(Scalar::U(u));
    }
    let f = match v {
        None | Some(Json::Null) => 0.0,
        Some(Json::Number(n)) => n.as_f64().unwrap_or(f64::NAN),
        Some(Json::String(s)) => match s.as_str() {
            "NaN" => f64::NAN,
            "Infinity" => f64::INFINITY,
            "-Infinity" => f64::NEG_INFINITY,
            h if h.starts_with("0x") => {
                let bits = u64::from_str_radix(&h[2..], 16)
                    .map_err(|_| meta_err(path, format!("fill_value '{h}' is not hex")))?;
                match dtype {
                    Dtype::F16 => half::f16::from_bits(bits as u16).to_f64(),
                    Dtype::F32 => f32::from_bits(bits as u32) as f64,
                    Dtype::F64 => f64::from_bits(bits),
                    _ => bits as f64,
                }
            }
            other => {
                return Err(meta_err(
                    path,
                    format!("fill_value '{other}' not understood"),
                ))
            }
        },
        Some(Json::Bool(b)) => *b as u8 as f64,
        Some(_) => return Err(meta_err(path, "fill_value not understood")),
    };
    let s = if dtype == Dtype::F16 {
        // What a written chunk would hold (other writers may record the unrounded value).
        Scalar::F(half::f16::from_f64(f).to_f64())
    } else if dtype.is_float() {
        Scalar::F(f)
    } else {
        if !(f.is_finite() && f >= 0.0 && f.fract() == 0.0) {
            return Err(meta_err(
                path,
                format!("fill_value {f} is not valid for {dtype}"),
            ));
        }
        Scalar::U(f as u64)
    };
    Ok(s)
}

fn read_json(path: &Path) -> Result<Option<Json>> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(crate::json::parse(
            &crate::json::quote_non_finite(&t),
            &path.display().to_string(),
        )?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path, e)),
    }
}

/// Nanometres per unit of an OME-NGFF axis unit.
fn ome_unit_nm(u: &str) -> Option<f64> {
    match u {
        "nanometer" => Some(1.0),
        "micrometer" => Some(1e3),
        "angstrom" => Some(0.1),
        "millimeter" => Some(1e6),
        "picometer" => Some(1e-3),
        _ => None,
    }
}

/// `resolution` [.., z, y, x] in nm (CREMI, gunpowder, daisy).
fn voxel_from_resolution(attrs: &Json) -> Option<VoxelSize> {
    let r: Vec<f64> = attrs
        .get("resolution")?
        .as_array()?
        .iter()
        .filter_map(Json::as_f64)
        .collect();
    if r.len() < 3 {
        return None;
    }
    let n = r.len();
    VoxelSize::new(r[n - 3], r[n - 2], r[n - 1]).ok()
}

/// `offset` [.., z, y, x] in nm (daisy, funlib).
fn offset_attr(attrs: &Json) -> Option<[f64; 3]> {
    let r: Vec<f64> = attrs
        .get("offset")?
        .as_array()?
        .iter()
        .filter_map(Json::as_f64)
        .collect();
    let n = r.len();
    (n >= 3).then(|| [r[n - 3], r[n - 2], r[n - 1]])
}

/// OME-NGFF multiscales of a parent group: the scale and translation (nm, last three axes) of
/// the dataset named `name`.
fn placement_from_ome(attrs: &Json, name: &str) -> (Option<VoxelSize>, Option<[f64; 3]>) {
    let none = (None, None);
    let Some(ms) = attrs
        .get("multiscales")
        .or_else(|| attrs.get("ome")?.get("multiscales"))
        .and_then(Json::as_array)
    else {
        return none;
    };
    for m in ms {
        let axes = m.get("axes").and_then(Json::as_array);
        let unit = |i: usize| -> f64 {
            axes.and_then(|a| a.get(i))
                .and_then(|a| a.get("unit"))
                .and_then(Json::as_str)
                .and_then(ome_unit_nm)
                // OME-NGFF has no default unit; nm is what EM pipelines use.
                .unwrap_or(1.0)
        };
        let zyx = |t: &Json, key: &str| -> Option<[f64; 3]> {
            let s: Vec<f64> = t
                .get(key)?
                .as_array()?
                .iter()
                .filter_map(Json::as_f64)
                .collect();
            let n = s.len();
            (n >= 3).then(|| {
                [
                    s[n - 3] * unit(n - 3),
                    s[n - 2] * unit(n - 2),
                    s[n - 1] * unit(n - 1),
                ]
            })
        };
        let Some(datasets) = m.get("datasets").and_then(Json::as_array) else {
            continue;
        };
        for d in datasets {
            if d.get("path").and_then(Json::as_str) != Some(name) {
                continue;
            }
            let (mut vs, mut off) = (None, None);
            let ts = d.get("coordinateTransformations").and_then(Json::as_array);
            for t in ts.into_iter().flatten() {
                match t.get("type").and_then(Json::as_str) {
                    Some("scale") => {
                        vs = zyx(t, "scale").and_then(|v| VoxelSize::new(v[0], v[1], v[2]).ok())
                    }
                    Some("translation") => off = zyx(t, "translation"),
                    _ => {}
                }
            }
            return (vs, off);
        }
    }
    none
}

/// Voxel size and offset: the array's own `resolution` and `offset` attributes first, else the
/// OME-Zarr multiscales of the group around it.
fn placement(
    path: &Path,
    own: Option<&Json>,
    version: ZarrVersion,
) -> (Option<VoxelSize>, Option<[f64; 3]>) {
    let (mut vs, mut off) = (
        own.and_then(voxel_from_resolution),
        own.and_then(offset_attr),
    );
    if let (Some(parent), Some(name)) = (path.parent(), path.file_name()) {
        let attrs = match version {
            ZarrVersion::V2 => read_json(&parent.join(".zattrs")).ok().flatten(),
            ZarrVersion::V3 => read_json(&parent.join("zarr.json"))
                .ok()
                .flatten()
                .and_then(|j| j.get("attributes").cloned()),
        };
        if let Some(a) = attrs {
            let (ovs, ooff) = placement_from_ome(&a, &name.to_string_lossy());
            vs = vs.or(ovs);
            off = off.or(ooff);
        }
    }
    (vs, off)
}

/// OME-Zarr (NGFF 0.4) multiscales for a group holding one array named `name`, so that
/// neuroglancer and napari place it with its voxel size.
pub fn ome_multiscales(name: &str, vs: VoxelSize, offset_nm: Option<[f64; 3]>) -> Json {
    let axis = |n: &str| {
        json::obj([
            ("name", Json::from(n)),
            ("type", Json::from("space")),
            ("unit", Json::from("nanometer")),
        ])
    };
    let mut ts = vec![json::obj([
        ("type", Json::from("scale")),
        (
            "scale",
            Json::Array(vec![vs.z.into(), vs.y.into(), vs.x.into()]),
        ),
    ])];
    if let Some(o) = offset_nm {
        ts.push(json::obj([
            ("type", Json::from("translation")),
            (
                "translation",
                Json::Array(vec![o[0].into(), o[1].into(), o[2].into()]),
            ),
        ]));
    }
    json::obj([(
        "multiscales",
        Json::Array(vec![json::obj([
            ("version", Json::from("0.4")),
            ("name", Json::from(name)),
            ("axes", Json::Array(vec![axis("z"), axis("y"), axis("x")])),
            (
                "datasets",
                Json::Array(vec![json::obj([
                    ("path", Json::from(name)),
                    ("coordinateTransformations", Json::Array(ts)),
                ])]),
            ),
        ])]),
    )])
}

impl ZarrArray {
    /// Opens the zarr array at `path` (a directory holding `.zarray` or `zarr.json`).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if let Some(m) = read_json(&path.join(".zarray"))? {
            Self::from_v2(path, &m)
        } else if let Some(m) = read_json(&path.join("zarr.json"))? {
            Self::from_v3(path, &m)
        } else if !path.is_dir() {
            Err(Error::Io(format!("{}: no such directory", path.display())))
        } else {
            Err(meta_err(
                &path,
                "not a zarr array: neither .zarray (v2) nor zarr.json (v3) is there",
            ))
        }
    }

    fn from_v2(path: PathBuf, m: &Json) -> Result<Self> {
        let mp = path.join(".zarray");
        if m.get("zarr_format").and_then(as_usize) != Some(2) {
            return Err(meta_err(&mp, "zarr_format is not 2"));
        }
        let shape = usize_list(m.get("shape"), &mp, "shape")?;
        let chunks = usize_list(m.get("chunks"), &mp, "chunks")?;
        let ts = m
            .get("dtype")
            .and_then(Json::as_str)
            .ok_or_else(|| meta_err(&mp, "'dtype' missing or not a string"))?;
        let (dtype, order, signed) = dtype_of(ts, true).map_err(|e| meta_err(&mp, e))?;
        let fill_value = parse_fill(m.get("fill_value"), dtype, signed, &mp)?;
        // Filters and other compressors are zarrs' to decode; `compressor` only records the
        // ones this module also writes.
        let compressor = match m.get("compressor") {
            None | Some(Json::Null) => Compressor::None,
            Some(c) => {
                let id = c.get("id").and_then(Json::as_str).unwrap_or("?");
                let level = c.get("level").and_then(Json::as_f64);
                match id {
                    "gzip" => Compressor::Gzip(level.unwrap_or(5.0).clamp(0.0, 9.0) as u32),
                    "zlib" => Compressor::Zlib(level.unwrap_or(5.0).clamp(0.0, 9.0) as u32),
                    "zstd" => Compressor::Zstd(level.unwrap_or(1.0) as i32),
                    _ => Compressor::None,
                }
            }
        };
        let separator = match m.get("dimension_separator").and_then(Json::as_str) {
            None | Some(".") => '.',
            Some("/") => '/',
            Some(o) => return Err(meta_err(&mp, format!("dimension_separator '{o}'"))),
        };
        let attrs = read_json(&path.join(".zattrs"))?;
        let (voxel_size, offset_nm) = placement(&path, attrs.as_ref(), ZarrVersion::V2);
        let mut a = ZarrArray {
            path,
            version: ZarrVersion::V2,
            shape,
            chunks,
            dtype,
            order,
            fill_value,
            voxel_size,
            offset_nm,
            compressor,
            signed,
            separator,
            key_prefix_c: false,
            za: None,
        };
        a.check_geometry(&mp)?;
        a.open_codecs(&mp)?;
        Ok(a)
    }

    fn from_v3(path: PathBuf, m: &Json) -> Result<Self> {
        let mp = path.join("zarr.json");
        if m.get("zarr_format").and_then(as_usize) != Some(3) {
            return Err(meta_err(&mp, "zarr_format is not 3"));
        }
        if m.get("node_type").and_then(Json::as_str) != Some("array") {
            return Err(meta_err(&mp, "node_type is not 'array' (a group?)"));
        }
        let shape = usize_list(m.get("shape"), &mp, "shape")?;
        let grid = m
            .get("chunk_grid")
            .ok_or_else(|| meta_err(&mp, "chunk_grid missing"))?;
        if grid.get("name").and_then(Json::as_str) != Some("regular") {
            return Err(meta_err(&mp, "only the 'regular' chunk grid is supported"));
        }
        let chunks = usize_list(
            grid.get("configuration").and_then(|c| c.get("chunk_shape")),
            &mp,
            "chunk_grid.configuration.chunk_shape",
        )?;
        let dname = m.get("data_type").and_then(Json::as_str).ok_or_else(|| {
            meta_err(
                &mp,
                "'data_type' missing or not a string (extension types are not supported)",
            )
        })?;
        let (dtype, _, signed) = dtype_of(dname, false).map_err(|e| meta_err(&mp, e))?;
        let fill_value = parse_fill(m.get("fill_value"), dtype, signed, &mp)?;
        let (separator, key_prefix_c) = {
            let enc = m.get("chunk_key_encoding");
            let name = enc
                .and_then(|e| e.get("name"))
                .and_then(Json::as_str)
                .unwrap_or("default");
            let sep = enc
                .and_then(|e| e.get("configuration"))
                .and_then(|c| c.get("separator"))
                .and_then(Json::as_str);
            match (name, sep) {
                ("default", None | Some("/")) => ('/', true),
                ("default", Some(".")) => ('.', true),
                ("v2", None | Some(".")) => ('.', false),
                ("v2", Some("/")) => ('/', false),
                (n, s) => {
                    return Err(meta_err(
                        &mp,
                        format!("chunk_key_encoding {n} with separator {s:?} is not supported"),
                    ))
                }
            }
        };
        let list = m
            .get("codecs")
            .and_then(Json::as_array)
            .ok_or_else(|| meta_err(&mp, "'codecs' missing"))?;
        // The codecs are zarrs' to run; these fields only describe the simple pipelines.
        let mut order = ByteOrder::Little;
        let mut compressors = Vec::new();
        for c in list {
            let name = c.get("name").and_then(Json::as_str).unwrap_or("?");
            let cf = |k: &str| c.get("configuration").and_then(|c| c.get(k));
            match name {
                "bytes" if cf("endian").and_then(Json::as_str) == Some("big") => {
                    order = ByteOrder::Big
                }
                "gzip" => compressors.push(Compressor::Gzip(
                    cf("level")
                        .and_then(Json::as_f64)
                        .unwrap_or(5.0)
                        .clamp(0.0, 9.0) as u32,
                )),
                "zstd" => compressors.push(Compressor::Zstd(
                    cf("level").and_then(Json::as_f64).unwrap_or(0.0) as i32,
                )),
                "bytes" | "transpose" => {}
                _ => compressors.push(Compressor::None),
            }
        }
        let compressor = match compressors[..] {
            [c] => c,
            _ => Compressor::None,
        };
        let (voxel_size, offset_nm) = placement(&path, m.get("attributes"), ZarrVersion::V3);
        let mut a = ZarrArray {
            path,
            version: ZarrVersion::V3,
            shape,
            chunks,
            dtype,
            order,
            fill_value,
            voxel_size,
            offset_nm,
            compressor,
            signed,
            separator,
            key_prefix_c,
            za: None,
        };
        a.check_geometry(&mp)?;
        a.open_codecs(&mp)?;
        Ok(a)
    }

    fn check_geometry(&self, mp: &Path) -> Result<()> {
        if self.shape.is_empty() {
            return Err(meta_err(mp, "zero-dimensional arrays are not supported"));
        }
        if self.chunks.len() != self.shape.len() {
            return Err(meta_err(
                mp,
                format!(
                    "chunks {:?} and shape {:?} differ in rank",
                    self.chunks, self.shape
                ),
            ));
        }
        if self.chunks.contains(&0) {
            return Err(meta_err(mp, "a chunk dimension is 0"));
        }
        let n = shape_len(&self.chunks)?;
        n.checked_mul(self.dtype.size())
            .filter(|&b| b <= isize::MAX as usize)
            .ok_or_else(|| meta_err(mp, "chunks are too large"))?;
        shape_len(&self.shape)?;
        Ok(())
    }

    /// Hands the checked metadata to zarrs, which builds the codec pipeline (and refuses codecs
    /// it does not know, by name).
    fn open_codecs(&mut self, mp: &Path) -> Result<()> {
        self.open_codecs_with(mp, false)
    }

    /// What the metadata asks of the codecs, to name in an error zarrs gives.
    fn codec_hint(&self) -> String {
        let meta = match self.version {
            ZarrVersion::V2 => read_json(&self.path.join(".zarray")),
            ZarrVersion::V3 => read_json(&self.path.join("zarr.json")),
        };
        let m = meta.ok().flatten().unwrap_or(Json::Null);
        match self.version {
            ZarrVersion::V2 => format!(
                "compressor {}, filters {}",
                m.get("compressor").unwrap_or(&Json::Null),
                m.get("filters").unwrap_or(&Json::Null)
            ),
            ZarrVersion::V3 => format!("codecs {}", m.get("codecs").unwrap_or(&Json::Null)),
        }
    }

    /// The same array with every chunk write synced (file and directory) before it returns, for
    /// jobs that record a block as done once its chunks are written. Otherwise writers sync the
    /// whole tree once at the end.
    pub fn durable(mut self) -> Result<Self> {
        let mp = self.path.join("metadata");
        self.open_codecs_with(&mp, true)?;
        Ok(self)
    }

    fn open_codecs_with(&mut self, mp: &Path, sync: bool) -> Result<()> {
        let store = Arc::new(AtomicStore::new(&self.path, sync));
        let za = zarrs::array::Array::open(store, "/").map_err(|e| {
            meta_err(
                mp,
                format!(
                    "zarrs cannot open it: {} ({}); re-save the array with codecs zarrs reads",
                    crate::fsutil::one_line(&e.to_string()),
                    self.codec_hint()
                ),
            )
        })?;
        let got: Vec<usize> = za.shape().iter().map(|&n| n as usize).collect();
        if got != self.shape {
            return Err(meta_err(
                mp,
                format!("zarrs reads shape {got:?}, not {:?}", self.shape),
            ));
        }
        self.za = Some(Arc::new(za));
        Ok(())
    }

    fn codecs(&self) -> Result<&zarrs::array::Array<AtomicStore>> {
        self.za
            .as_deref()
            .ok_or_else(|| Error::Invalid(format!("{}: metadata not checked", self.path.display())))
    }

    /// Creates a v2 array with the given compressor, fill value 0, little-endian.
    pub fn create(
        path: impl AsRef<Path>,
        shape: &[usize],
        chunks: &[usize],
        dtype: Dtype,
        compressor: Compressor,
    ) -> Result<Self> {
        Self::create_with(
            path,
            shape,
            chunks,
            dtype,
            &CreateOptions {
                compressor,
                ..CreateOptions::default()
            },
        )
    }

    /// Creates an array; writes its metadata (atomically) and no chunks.
    pub fn create_with(
        path: impl AsRef<Path>,
        shape: &[usize],
        chunks: &[usize],
        dtype: Dtype,
        opt: &CreateOptions,
    ) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if let Some(v) = opt.voxel_size {
            v.check()?;
        }
        let exists = path.join(".zarray").exists() || path.join("zarr.json").exists();
        if exists {
            if !opt.overwrite {
                return Err(Error::Invalid(format!(
                    "{}: a zarr array is already there; remove it or ask to overwrite",
                    path.display()
                )));
            }
            std::fs::remove_dir_all(&path).map_err(|e| io_err(&path, e))?;
        } else if path.exists() && !path.is_dir() {
            return Err(Error::Invalid(format!(
                "{}: exists and is not a directory",
                path.display()
            )));
        }
        std::fs::create_dir_all(&path).map_err(|e| io_err(&path, e))?;
        let fill_value = if dtype == Dtype::F16 {
            // What the chunks will hold, so that missing chunks read as written ones do.
            Scalar::F(half::f16::from_f64(opt.fill_value).to_f64())
        } else if dtype.is_float() {
            Scalar::F(opt.fill_value)
        } else {
            let f = opt.fill_value;
            if !(f.is_finite() && f >= 0.0 && f.fract() == 0.0) {
                return Err(Error::Invalid(format!(
                    "fill value {f} is not a valid {dtype}"
                )));
            }
            Scalar::U(f as u64)
        };
        if matches!(opt.compressor, Compressor::Zlib(_)) && opt.version == ZarrVersion::V3 {
            return Err(Error::Invalid(
                "zarr v3 has no zlib codec; use gzip or zstd".into(),
            ));
        }
        let compressor = match opt.compressor {
            Compressor::Gzip(l) => Compressor::Gzip(l.min(9)),
            Compressor::Zlib(l) => Compressor::Zlib(l.min(9)),
            c => c,
        };
        let mut a = ZarrArray {
            path,
            version: opt.version,
            shape: shape.to_vec(),
            chunks: chunks.to_vec(),
            dtype,
            order: if dtype.size() == 1 {
                ByteOrder::Little
            } else {
                opt.order
            },
            fill_value,
            voxel_size: opt.voxel_size,
            offset_nm: opt.offset_nm,
            compressor,
            signed: false,
            separator: match opt.version {
                ZarrVersion::V2 => '.',
                ZarrVersion::V3 => '/',
            },
            key_prefix_c: opt.version == ZarrVersion::V3,
            za: None,
        };
        let mp = a.path.join("metadata");
        a.check_geometry(&mp)?;
        a.write_metadata()?;
        a.open_codecs(&mp)?;
        Ok(a)
    }

    fn fill_json(&self) -> Json {
        match self.fill_value {
            Scalar::U(v) => Json::from(v),
            Scalar::F(v) if v.is_nan() => Json::String("NaN".into()),
            Scalar::F(v) if v == f64::INFINITY => Json::String("Infinity".into()),
            Scalar::F(v) if v == f64::NEG_INFINITY => Json::String("-Infinity".into()),
            Scalar::F(v) => Json::from(v),
        }
    }

    fn write_metadata(&self) -> Result<()> {
        let list = |v: &[usize]| Json::Array(v.iter().map(|&x| Json::from(x)).collect());
        let mut fields = Vec::new();
        if let Some(v) = self.voxel_size {
            fields.push((
                "resolution",
                Json::Array(vec![v.z.into(), v.y.into(), v.x.into()]),
            ));
        }
        if let Some(o) = self.offset_nm {
            fields.push((
                "offset",
                Json::Array(vec![o[0].into(), o[1].into(), o[2].into()]),
            ));
        }
        let attrs = (!fields.is_empty()).then(|| json::obj(fields));
        let write = |name: &str, j: &Json| {
            let p = self.path.join(name);
            write_file_atomic(&p, |w| writeln!(w, "{j}").map_err(|e| io_err(&p, e)))
        };
        match self.version {
            ZarrVersion::V2 => {
                let comp = match self.compressor {
                    Compressor::None => Json::Null,
                    Compressor::Gzip(l) => {
                        json::obj([("id", "gzip".into()), ("level", (l as usize).into())])
                    }
                    Compressor::Zlib(l) => {
                        json::obj([("id", "zlib".into()), ("level", (l as usize).into())])
                    }
                    Compressor::Zstd(l) => json::obj([
                        ("id", Json::from("zstd")),
                        ("level", Json::from(l)),
                        ("checksum", Json::Bool(false)),
                    ]),
                };
                let m = json::obj([
                    ("zarr_format", Json::from(2usize)),
                    ("shape", list(&self.shape)),
                    ("chunks", list(&self.chunks)),
                    ("dtype", Json::from(self.dtype.typestr(self.order))),
                    ("compressor", comp),
                    ("fill_value", self.fill_json()),
                    ("order", Json::from("C")),
                    ("filters", Json::Null),
                    (
                        "dimension_separator",
                        Json::from(self.separator.to_string()),
                    ),
                ]);
                write(".zarray", &m)?;
                if let Some(a) = attrs {
                    write(".zattrs", &a)?;
                }
            }
            ZarrVersion::V3 => {
                let mut codecs = vec![json::obj([
                    ("name", Json::from("bytes")),
                    (
                        "configuration",
                        json::obj([(
                            "endian",
                            Json::from(if self.order == ByteOrder::Big {
                                "big"
                            } else {
                                "little"
                            }),
                        )]),
                    ),
                ])];
                let written = match self.compressor {
                    Compressor::None | Compressor::Zlib(_) => None,
                    c => Some(c),
                };
                if let Some(c) = written {
                    codecs.push(match c {
                        Compressor::Gzip(l) => json::obj([
                            ("name", Json::from("gzip")),
                            (
                                "configuration",
                                json::obj([("level", Json::from(l as usize))]),
                            ),
                        ]),
                        Compressor::Zstd(l) => json::obj([
                            ("name", Json::from("zstd")),
                            (
                                "configuration",
                                json::obj([
                                    ("level", Json::from(l)),
                                    ("checksum", Json::Bool(false)),
                                ]),
                            ),
                        ]),
                        _ => Json::Null,
                    });
                }
                let m = json::obj([
                    ("zarr_format", Json::from(3usize)),
                    ("node_type", Json::from("array")),
                    ("shape", list(&self.shape)),
                    ("data_type", Json::from(self.dtype.name())),
                    (
                        "chunk_grid",
                        json::obj([
                            ("name", Json::from("regular")),
                            (
                                "configuration",
                                json::obj([("chunk_shape", list(&self.chunks))]),
                            ),
                        ]),
                    ),
                    (
                        "chunk_key_encoding",
                        json::obj([
                            ("name", Json::from("default")),
                            ("configuration", json::obj([("separator", Json::from("/"))])),
                        ]),
                    ),
                    ("fill_value", self.fill_json()),
                    ("codecs", Json::Array(codecs)),
                    (
                        "attributes",
                        attrs.unwrap_or_else(|| json::obj::<String>([])),
                    ),
                ]);
                write("zarr.json", &m)?;
            }
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of chunks along each axis.
    pub fn grid(&self) -> Vec<usize> {
        self.shape
            .iter()
            .zip(&self.chunks)
            .map(|(s, c)| s.div_ceil(*c))
            .collect()
    }

    /// Store key of a chunk, e.g. "1.0.2" (v2) or "c/1/0/2" (v3).
    pub fn chunk_key(&self, idx: &[usize]) -> String {
        let mut s = String::new();
        if self.key_prefix_c {
            s.push('c');
        }
        for (i, c) in idx.iter().enumerate() {
            if i > 0 || self.key_prefix_c {
                s.push(self.separator);
            }
            s.push_str(&c.to_string());
        }
        s
    }

    fn chunk_path(&self, idx: &[usize]) -> PathBuf {
        let key = self.chunk_key(idx);
        let mut p = self.path.clone();
        for part in key.split('/') {
            p.push(part);
        }
        p
    }

    fn chunk_len(&self) -> usize {
        self.chunks.iter().product()
    }

    /// The chunk at grid index `idx` as C-order elements, or None when it is missing (fill value).
    fn read_chunk<T: Voxel>(&self, idx: &[usize]) -> Result<Option<Vec<T>>> {
        crate::alloc::check(
            &format!("{}: a chunk of {:?}", self.path.display(), self.chunks),
            &self.chunks,
            self.dtype.size(),
        )?;
        let za = self.codecs()?;
        let i: Vec<u64> = idx.iter().map(|&c| c as u64).collect();
        let bad = |e: zarrs::array::ArrayError| {
            Error::Io(format!(
                "{}: corrupt chunk: {}",
                self.chunk_path(idx).display(),
                crate::fsutil::one_line(&e.to_string())
            ))
        };
        macro_rules! get {
            ($t:ty) => {
                za.retrieve_chunk_if_exists::<Vec<$t>>(&i)
                    .map_err(bad)?
                    .map(|v| bytemuck::allocation::cast_vec::<$t, T>(v))
            };
        }
        macro_rules! get_signed {
            ($s:ty, $u:ty) => {
                match za.retrieve_chunk_if_exists::<Vec<$s>>(&i).map_err(bad)? {
                    None => None,
                    Some(v) => {
                        let mut out = Vec::with_capacity(v.len());
                        for (k, x) in v.into_iter().enumerate() {
                            let u = <$u>::try_from(x).map_err(|_| Error::Value {
                                what: format!("{}: signed chunk {idx:?}", self.path.display()),
                                detail: format!(
                                    "value {x} at flat index {k} is negative and cannot be read as {}",
                                    self.dtype
                                ),
                            })?;
                            out.push(u);
                        }
                        Some(bytemuck::allocation::cast_vec::<$u, T>(out))
                    }
                }
            };
        }
        // `check_type` made T the array's dtype, so each cast below is to the same type.
        Ok(match (self.dtype, self.signed) {
            (Dtype::U8, false) => get!(u8),
            (Dtype::U16, false) => get!(u16),
            (Dtype::U32, false) => get!(u32),
            (Dtype::U64, false) => get!(u64),
            (Dtype::F16, _) => za
                .retrieve_chunk_if_exists::<Vec<half::f16>>(&i)
                .map_err(bad)?
                .map(|v| {
                    let f: Vec<f32> = v.into_iter().map(half::f16::to_f32).collect();
                    bytemuck::allocation::cast_vec::<f32, T>(f)
                }),
            (Dtype::F32, _) => get!(f32),
            (Dtype::F64, _) => get!(f64),
            (Dtype::U8, true) => get_signed!(i8, u8),
            (Dtype::U16, true) => get_signed!(i16, u16),
            (Dtype::U32, true) => get_signed!(i32, u32),
            (Dtype::U64, true) => get_signed!(i64, u64),
        })
    }

    fn write_chunk<T: Voxel>(&self, idx: &[usize], data: &[T]) -> Result<()> {
        if self.signed {
            return Err(Error::Invalid(format!(
                "{}: writing into signed integer arrays is not supported; write a new array",
                self.path.display()
            )));
        }
        let za = self.codecs()?;
        let i: Vec<u64> = idx.iter().map(|&c| c as u64).collect();
        let r = match self.dtype {
            Dtype::U8 => za.store_chunk(&i, bytemuck::cast_slice::<T, u8>(data)),
            Dtype::U16 => za.store_chunk(&i, bytemuck::cast_slice::<T, u16>(data)),
            Dtype::U32 => za.store_chunk(&i, bytemuck::cast_slice::<T, u32>(data)),
            Dtype::U64 => za.store_chunk(&i, bytemuck::cast_slice::<T, u64>(data)),
            Dtype::F16 => za.store_chunk(&i, to_f16(bytemuck::cast_slice::<T, f32>(data))),
            Dtype::F32 => za.store_chunk(&i, bytemuck::cast_slice::<T, f32>(data)),
            Dtype::F64 => za.store_chunk(&i, bytemuck::cast_slice::<T, f64>(data)),
        };
        r.map_err(|e| {
            Error::Io(format!(
                "{}: writing a chunk: {}",
                self.chunk_path(idx).display(),
                crate::fsutil::one_line(&e.to_string())
            ))
        })
    }

    fn fill<T: Voxel>(&self) -> T {
        // The fill value was validated for the dtype when parsed; NaN or out-of-range values
        // (a float fill for an integer array written by another tool) fall back to 0.
        T::from_scalar_exact(self.fill_value).unwrap_or_default()
    }

    fn check_type<T: Voxel>(&self, op: &str) -> Result<()> {
        if T::DTYPE != self.dtype.held_as() {
            return Err(Error::Invalid(format!(
                "{}: {op}: the array holds {} (read and written as {}) but {} was given; convert first",
                self.path.display(),
                self.dtype,
                self.dtype.held_as(),
                T::DTYPE
            )));
        }
        Ok(())
    }

    /// Chunk grid indices overlapping the box, with each overlap's offset in the chunk, in the
    /// box, and its extent.
    fn overlaps(&self, offset: &[usize], shape: &[usize]) -> Vec<Overlap> {
        let nd = self.shape.len();
        if shape.contains(&0) {
            return vec![];
        }
        let lo: Vec<usize> = (0..nd).map(|d| offset[d] / self.chunks[d]).collect();
        let hi: Vec<usize> = (0..nd)
            .map(|d| (offset[d] + shape[d] - 1) / self.chunks[d])
            .collect();
        let counts: Vec<usize> = (0..nd).map(|d| hi[d] - lo[d] + 1).collect();
        let total: usize = counts.iter().product();
        (0..total)
            .map(|i| {
                let rel = super::array::unravel(i, &counts);
                let chunk: Vec<usize> = (0..nd).map(|d| lo[d] + rel[d]).collect();
                let mut in_chunk = vec![0; nd];
                let mut in_box = vec![0; nd];
                let mut count = vec![0; nd];
                for d in 0..nd {
                    let c0 = chunk[d] * self.chunks[d];
                    let a = offset[d].max(c0);
                    let b = (offset[d] + shape[d]).min(c0 + self.chunks[d]);
                    in_chunk[d] = a - c0;
                    in_box[d] = a - offset[d];
                    count[d] = b - a;
                }
                Overlap {
                    chunk,
                    in_chunk,
                    in_box,
                    count,
                }
            })
            .collect()
    }

    /// Reads the box `offset .. offset + shape`; only the chunks it touches are read.
    pub fn read_region<T: Voxel>(&self, offset: &[usize], shape: &[usize]) -> Result<Array<T>> {
        self.check_type::<T>("read_region")?;
        check_box("zarr read_region", &self.shape, offset, shape).map_err(|e| self.named(e))?;
        let mut out = Array::filled(shape.to_vec(), self.fill::<T>())?;
        let ov = self.overlaps(offset, shape);
        // Decode a batch of chunks in parallel, then copy; the batch bounds the extra memory.
        let batch = rayon::current_num_threads().max(1) * 4;
        for group in ov.chunks(batch) {
            let decoded: Vec<Result<Option<Vec<T>>>> = group
                .par_iter()
                .map(|o| self.read_chunk::<T>(&o.chunk))
                .collect();
            for (o, d) in group.iter().zip(decoded) {
                if let Some(c) = d? {
                    copy_box(
                        &c,
                        &self.chunks,
                        &o.in_chunk,
                        &mut out.data,
                        shape,
                        &o.in_box,
                        &o.count,
                    );
                }
            }
        }
        Ok(out)
    }

    /// Reads a box whatever the dtype.
    pub fn read_region_any(&self, offset: &[usize], shape: &[usize]) -> Result<AnyArray> {
        Ok(match self.dtype.held_as() {
            Dtype::U8 => self.read_region::<u8>(offset, shape)?.into(),
            Dtype::U16 => self.read_region::<u16>(offset, shape)?.into(),
            Dtype::U32 => self.read_region::<u32>(offset, shape)?.into(),
            Dtype::U64 => self.read_region::<u64>(offset, shape)?.into(),
            Dtype::F16 | Dtype::F32 => self.read_region::<f32>(offset, shape)?.into(),
            Dtype::F64 => self.read_region::<f64>(offset, shape)?.into(),
        })
    }

    /// The whole array (it must fit in memory).
    pub fn read_all<T: Voxel>(&self) -> Result<Array<T>> {
        let shape = self.shape.clone();
        self.read_region(&vec![0; shape.len()], &shape)
    }

    /// Writes `data` at `offset`. Chunks the box covers only partly are read, updated and
    /// rewritten; chunks in the box are written in parallel.
    pub fn write_region<T: Voxel>(&self, offset: &[usize], data: &Array<T>) -> Result<()> {
        self.check_type::<T>("write_region")?;
        check_box("zarr write_region", &self.shape, offset, &data.shape)
            .map_err(|e| self.named(e))?;
        let ov = self.overlaps(offset, &data.shape);
        ov.par_iter().try_for_each(|o| {
            // Edge chunks count as whole when the box covers their part inside the array.
            let full = (0..o.count.len()).all(|d| {
                o.count[d] == self.chunks[d].min(self.shape[d] - o.chunk[d] * self.chunks[d])
            });
            let mut chunk = if full {
                vec![T::default(); self.chunk_len()]
            } else {
                match self.read_chunk::<T>(&o.chunk)? {
                    Some(c) => c,
                    None => vec![self.fill::<T>(); self.chunk_len()],
                }
            };
            copy_box(
                &data.data,
                &data.shape,
                &o.in_box,
                &mut chunk,
                &self.chunks,
                &o.in_chunk,
                &o.count,
            );
            self.write_chunk(&o.chunk, &chunk)
        })
    }

    fn named(&self, e: Error) -> Error {
        match e {
            Error::Region { op, detail } => Error::Region {
                op,
                detail: format!("{}: {detail}", self.path.display()),
            },
            other => other,
        }
    }
}

struct Overlap {
    chunk: Vec<usize>,
    in_chunk: Vec<usize>,
    in_box: Vec<usize>,
    count: Vec<usize>,
}

// The volume dispatcher's reader and writer (`volume::io`).
impl FormatReader for ZarrArray {
    fn read_region(&self, offset: &[usize], shape: &[usize], _want: Dtype) -> Result<AnyArray> {
        self.read_region_any(offset, shape)
    }
}

pub(crate) fn open_volume(path: &Path) -> Result<Opened> {
    let z = ZarrArray::open(path)?;
    Ok(Opened {
        shape: z.shape.clone(),
        dtype: z.dtype,
        voxel_size: z.voxel_size,
        offset_nm: z.offset_nm,
        reader: Box::new(z),
    })
}

/// An array written chunk by chunk into a temporary directory beside the target, renamed over
/// it at `finish`.
struct ZarrWriter {
    target: PathBuf,
    tmp: PathBuf,
    array: ZarrArray,
    version: ZarrVersion,
}

pub(crate) fn create_volume(path: PathBuf, req: &WriteRequest) -> Result<Box<dyn FormatWriter>> {
    if path.exists() && !(path.join(".zarray").exists() || path.join("zarr.json").exists()) {
        return Err(Error::Invalid(format!(
            "{}: exists and is not a zarr array; refusing to replace it",
            path.display()
        )));
    }
    let opt = req.opt;
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
        offset_nm: opt.offset_nm,
        ..CreateOptions::default()
    };
    let array = match ZarrArray::create_with(&tmp, req.shape, req.chunks, req.dtype, &co) {
        Ok(a) => a,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    Ok(Box::new(ZarrWriter {
        target: path,
        tmp,
        array,
        version,
    }))
}

impl FormatWriter for ZarrWriter {
    fn write_region(&mut self, offset: &[usize], data: &AnyArray) -> Result<()> {
        any_one!(data, |a| self.array.write_region(offset, a))
    }

    fn finish(&mut self) -> Result<()> {
        crate::fsutil::sync_tree(&self.tmp)?;
        // Before the array appears: once it is in place, nothing may fail any more.
        let ome = self.array.voxel_size.map(|v| (v, self.array.offset_nm));
        write_zarr_groups(&self.target, self.version, ome)?;
        replace_dir(&self.tmp, &self.target)
    }

    fn discard(&mut self) {
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
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

/// Marks the directories between the `*.zarr` root and the array as groups, so that zarr
/// tools walking from the root find the array; with a voxel size, the array's own group gets
/// OME-Zarr multiscales naming it.
pub(crate) fn write_zarr_groups(
    target: &Path,
    version: ZarrVersion,
    ome: Option<(VoxelSize, Option<[f64; 3]>)>,
) -> Result<()> {
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
    let array_name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for (k, d) in dirs.into_iter().enumerate() {
        let attrs = match ome {
            Some((vs, off)) if k == 0 => ome_multiscales(&array_name, vs, off),
            _ => json::obj::<String>([]),
        };
        if k == 0 && version == ZarrVersion::V2 && ome.is_some() && !d.join(".zattrs").exists() {
            let f = d.join(".zattrs");
            write_file_atomic(&f, |w| writeln!(w, "{attrs}").map_err(|e| io_err(&f, e)))?;
        }
        let v3 = json::obj([
            ("zarr_format", Json::from(3usize)),
            ("node_type", Json::from("group")),
            ("attributes", attrs),
        ]);
        let (name, text) = match version {
            ZarrVersion::V2 => (".zgroup", "{\"zarr_format\": 2}\n".to_string()),
            ZarrVersion::V3 => ("zarr.json", format!("{v3}\n")),
        };
        let f = d.join(name);
        let other = d.join(if version == ZarrVersion::V2 {
            "zarr.json"
        } else {
            ".zgroup"
        });
        if !f.exists() && !other.exists() && !d.join(".zarray").exists() {
            write_file_atomic(&f, |w| {
                use std::io::Write;
                w.write_all(text.as_bytes()).map_err(|e| io_err(&f, e))
            })?;
        }
    }
    Ok(())
}

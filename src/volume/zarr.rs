//! Zarr v2 and v3 arrays in directory stores, read and written chunk by chunk so that volumes
//! larger than memory can be processed by region.
//!
//! Supported: dtypes u1/u2/u4/u8/f4/f8 in either byte order; C order (and v2 `"order": "F"`,
//! v3 `transpose`); compressors none, gzip, zlib (flate2) and zstd (ruzstd, pure Rust, writes at
//! its one implemented level, about zstd -1); v3 `crc32c`; `fill_value` for missing chunks;
//! v2 "." or "/" separators and v3 "default" / "v2" chunk key encodings.
//! Not supported (a clear error names them): blosc, v2 filters, v3 sharding.
//!
//! Writes: every chunk and metadata file goes to a temporary file that is renamed into place, so
//! a reader never sees a partial chunk. Two writers of the same chunk at once are not
//! coordinated (the last rename wins).

use super::array::{
    c_strides, check_box, copy_box, decode_elements, encode_elements, io_err, shape_len,
    write_file_atomic, write_file_renamed, AnyArray, Array, ByteOrder, Dtype, Scalar, Voxel,
    VoxelSize,
};
use super::io::{temp_beside, FormatReader, FormatWriter, Opened, WriteRequest};
use crate::error::{Error, Result};
use crate::json::{self, Json};
use rayon::prelude::*;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

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
    /// zstd frame; the level is recorded, ruzstd always writes its "fastest" level.
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

/// One v3 codec in its pipeline order.
#[derive(Clone, Debug, PartialEq)]
enum Codec {
    /// Array -> array: stored axis k is original axis perm[k].
    Transpose(Vec<usize>),
    Gzip(u32),
    Zlib(u32),
    Zstd(i32),
    Crc32c,
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
            overwrite: false,
        }
    }
}

/// An open zarr array (metadata only; chunks are read on demand).
#[derive(Clone, Debug)]
pub struct ZarrArray {
    path: PathBuf,
    pub version: ZarrVersion,
    pub shape: Vec<usize>,
    pub chunks: Vec<usize>,
    pub dtype: Dtype,
    pub order: ByteOrder,
    pub fill_value: Scalar,
    pub voxel_size: Option<VoxelSize>,
    /// The compressor, when the pipeline is one this module also writes.
    pub compressor: Compressor,
    codecs: Vec<Codec>,
    separator: char,
    /// v3 "default" key encoding prefixes keys with "c".
    key_prefix_c: bool,
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
fn parse_fill(v: Option<&Json>, dtype: Dtype, path: &Path) -> Result<Scalar> {
    if let (Some(Json::Number(n)), false) = (v, dtype.is_float()) {
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
    let s = if dtype.is_float() {
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

/// OME-NGFF multiscales of a parent group: the scale of the dataset named `name`.
fn voxel_from_ome(attrs: &Json, name: &str) -> Option<VoxelSize> {
    let ms = attrs
        .get("multiscales")
        .or_else(|| attrs.get("ome")?.get("multiscales"))?;
    for m in ms.as_array()? {
        let axes = m.get("axes").and_then(Json::as_array);
        for d in m.get("datasets")?.as_array()? {
            if d.get("path").and_then(Json::as_str) != Some(name) {
                continue;
            }
            for t in d.get("coordinateTransformations")?.as_array()? {
                if t.get("type").and_then(Json::as_str) != Some("scale") {
                    continue;
                }
                let s: Vec<f64> = t
                    .get("scale")?
                    .as_array()?
                    .iter()
                    .filter_map(Json::as_f64)
                    .collect();
                let n = s.len();
                if n < 3 {
                    return None;
                }
                let unit = |i: usize| -> f64 {
                    axes.and_then(|a| a.get(i))
                        .and_then(|a| a.get("unit"))
                        .and_then(Json::as_str)
                        .and_then(ome_unit_nm)
                        // OME-NGFF has no default unit; nm is what EM pipelines use.
                        .unwrap_or(1.0)
                };
                return VoxelSize::new(
                    s[n - 3] * unit(n - 3),
                    s[n - 2] * unit(n - 2),
                    s[n - 1] * unit(n - 1),
                )
                .ok();
            }
        }
    }
    None
}

fn parent_voxel_size(path: &Path, version: ZarrVersion) -> Result<Option<VoxelSize>> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(None);
    };
    let name = name.to_string_lossy();
    let attrs = match version {
        ZarrVersion::V2 => read_json(&parent.join(".zattrs")).ok().flatten(),
        ZarrVersion::V3 => read_json(&parent.join("zarr.json"))
            .ok()
            .flatten()
            .and_then(|j| j.get("attributes").cloned()),
    };
    Ok(attrs.and_then(|a| voxel_from_ome(&a, &name)))
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
        let (dtype, order) = Dtype::from_typestr(ts).map_err(|e| meta_err(&mp, e))?;
        let fill_value = parse_fill(m.get("fill_value"), dtype, &mp)?;
        match m.get("filters") {
            None | Some(Json::Null) => {}
            Some(Json::Array(a)) if a.is_empty() => {}
            Some(_) => return Err(meta_err(&mp, "v2 filters are not supported")),
        }
        let (compressor, mut codecs) = match m.get("compressor") {
            None | Some(Json::Null) => (Compressor::None, vec![]),
            Some(c) => {
                let id = c.get("id").and_then(Json::as_str).unwrap_or("?");
                let level = c.get("level").and_then(Json::as_f64);
                match id {
                    "gzip" => {
                        let l = level.unwrap_or(5.0).clamp(0.0, 9.0) as u32;
                        (Compressor::Gzip(l), vec![Codec::Gzip(l)])
                    }
                    "zlib" => {
                        let l = level.unwrap_or(5.0).clamp(0.0, 9.0) as u32;
                        (Compressor::Zlib(l), vec![Codec::Zlib(l)])
                    }
                    "zstd" => {
                        let l = level.unwrap_or(1.0) as i32;
                        (Compressor::Zstd(l), vec![Codec::Zstd(l)])
                    }
                    other => {
                        return Err(meta_err(
                            &mp,
                            format!(
                                "compressor '{other}' is not supported (none, gzip, zlib and zstd are); re-save the array with one of those"
                            ),
                        ))
                    }
                }
            }
        };
        if m.get("order").and_then(Json::as_str) == Some("F") {
            let n = shape.len();
            codecs.insert(0, Codec::Transpose((0..n).rev().collect()));
        }
        let separator = match m.get("dimension_separator").and_then(Json::as_str) {
            None | Some(".") => '.',
            Some("/") => '/',
            Some(o) => return Err(meta_err(&mp, format!("dimension_separator '{o}'"))),
        };
        let mut voxel_size = read_json(&path.join(".zattrs"))?
            .as_ref()
            .and_then(voxel_from_resolution);
        if voxel_size.is_none() {
            voxel_size = parent_voxel_size(&path, ZarrVersion::V2)?;
        }
        let a = ZarrArray {
            path,
            version: ZarrVersion::V2,
            shape,
            chunks,
            dtype,
            order,
            fill_value,
            voxel_size,
            compressor,
            codecs,
            separator,
            key_prefix_c: false,
        };
        a.check_geometry(&mp)?;
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
        let dtype = Dtype::from_name(dname).map_err(|e| meta_err(&mp, e))?;
        let fill_value = parse_fill(m.get("fill_value"), dtype, &mp)?;
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
        let mut codecs = Vec::new();
        let mut order = ByteOrder::Little;
        let mut compressor = Compressor::None;
        let mut n_compress = 0;
        for c in list {
            let name = c.get("name").and_then(Json::as_str).unwrap_or("?");
            let conf = c.get("configuration");
            let cf = |k: &str| conf.and_then(|c| c.get(k));
            match name {
                "bytes" => {
                    order = match cf("endian").and_then(Json::as_str) {
                        None | Some("little") => ByteOrder::Little,
                        Some("big") => ByteOrder::Big,
                        Some(o) => return Err(meta_err(&mp, format!("bytes endian '{o}'"))),
                    }
                }
                "transpose" => {
                    let perm = usize_list(cf("order"), &mp, "transpose order")?;
                    let mut seen = perm.clone();
                    seen.sort_unstable();
                    if seen != (0..shape.len()).collect::<Vec<_>>() {
                        return Err(meta_err(&mp, "transpose order is not a permutation of the axes"));
                    }
                    codecs.push(Codec::Transpose(perm));
                }
                "gzip" => {
                    let l = cf("level").and_then(Json::as_f64).unwrap_or(5.0).clamp(0.0, 9.0) as u32;
                    compressor = Compressor::Gzip(l);
                    n_compress += 1;
                    codecs.push(Codec::Gzip(l));
                }
                "zstd" => {
                    let l = cf("level").and_then(Json::as_f64).unwrap_or(0.0) as i32;
                    compressor = Compressor::Zstd(l);
                    n_compress += 1;
                    codecs.push(Codec::Zstd(l));
                }
                "crc32c" => codecs.push(Codec::Crc32c),
                other => {
                    return Err(meta_err(
                        &mp,
                        format!(
                            "codec '{other}' is not supported (bytes, transpose, gzip, zstd and crc32c are)"
                        ),
                    ))
                }
            }
        }
        if n_compress > 1 || codecs.contains(&Codec::Crc32c) {
            // Read fine, but `compressor` cannot describe it; writes keep the exact pipeline.
            compressor = Compressor::None;
        }
        let attrs = m.get("attributes");
        let mut voxel_size = attrs.and_then(voxel_from_resolution);
        if voxel_size.is_none() {
            voxel_size = parent_voxel_size(&path, ZarrVersion::V3)?;
        }
        let a = ZarrArray {
            path,
            version: ZarrVersion::V3,
            shape,
            chunks,
            dtype,
            order,
            fill_value,
            voxel_size,
            compressor,
            codecs,
            separator,
            key_prefix_c,
        };
        a.check_geometry(&mp)?;
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
        let fill_value = if dtype.is_float() {
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
        let codecs = match opt.compressor {
            Compressor::None => vec![],
            Compressor::Gzip(l) => vec![Codec::Gzip(l.min(9))],
            Compressor::Zlib(l) => {
                if opt.version == ZarrVersion::V3 {
                    return Err(Error::Invalid(
                        "zarr v3 has no zlib codec; use gzip or zstd".into(),
                    ));
                }
                vec![Codec::Zlib(l.min(9))]
            }
            Compressor::Zstd(l) => vec![Codec::Zstd(l)],
        };
        let a = ZarrArray {
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
            compressor: opt.compressor,
            codecs,
            separator: match opt.version {
                ZarrVersion::V2 => '.',
                ZarrVersion::V3 => '/',
            },
            key_prefix_c: opt.version == ZarrVersion::V3,
        };
        a.check_geometry(&a.path.join("metadata"))?;
        a.write_metadata()?;
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
        let attrs = self.voxel_size.map(|v| {
            json::obj([(
                "resolution",
                Json::Array(vec![v.z.into(), v.y.into(), v.x.into()]),
            )])
        });
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
                for c in &self.codecs {
                    codecs.push(match c {
                        Codec::Gzip(l) => json::obj([
                            ("name", Json::from("gzip")),
                            (
                                "configuration",
                                json::obj([("level", Json::from(*l as usize))]),
                            ),
                        ]),
                        Codec::Zstd(l) => json::obj([
                            ("name", Json::from("zstd")),
                            (
                                "configuration",
                                json::obj([
                                    ("level", Json::from(*l)),
                                    ("checksum", Json::Bool(false)),
                                ]),
                            ),
                        ]),
                        // create() only builds gzip/zstd pipelines for v3.
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

    /// Decodes stored chunk bytes into C-order elements.
    fn decode_chunk<T: Voxel>(&self, mut bytes: Vec<u8>, file: &Path) -> Result<Vec<T>> {
        let want = crate::alloc::check(
            &format!("{}: a chunk of {:?}", file.display(), self.chunks),
            &self.chunks,
            self.dtype.size(),
        )?;
        let bad = |msg: String| Error::Io(format!("{}: corrupt chunk: {msg}", file.display()));
        let mut perm: Option<&Vec<usize>> = None;
        for c in self.codecs.iter().rev() {
            bytes = match c {
                Codec::Transpose(p) => {
                    perm = Some(p);
                    continue;
                }
                Codec::Gzip(_) => {
                    let mut out = Vec::with_capacity(want);
                    flate2::read::MultiGzDecoder::new(&bytes[..])
                        .take(want as u64 + 1)
                        .read_to_end(&mut out)
                        .map_err(|e| bad(format!("gzip: {e}")))?;
                    out
                }
                Codec::Zlib(_) => {
                    let mut out = Vec::with_capacity(want);
                    flate2::read::ZlibDecoder::new(&bytes[..])
                        .take(want as u64 + 1)
                        .read_to_end(&mut out)
                        .map_err(|e| bad(format!("zlib: {e}")))?;
                    out
                }
                Codec::Zstd(_) => {
                    let mut out = vec![0u8; want];
                    let mut dec = ruzstd::decoding::FrameDecoder::new();
                    let n = dec
                        .decode_all(&bytes, &mut out)
                        .map_err(|e| bad(format!("zstd: {e}")))?;
                    out.truncate(n);
                    out
                }
                Codec::Crc32c => {
                    if bytes.len() < 4 {
                        return Err(bad("shorter than its crc32c checksum".into()));
                    }
                    let (body, sum) = bytes.split_at(bytes.len() - 4);
                    let expect = u32::from_le_bytes([sum[0], sum[1], sum[2], sum[3]]);
                    if crc32c(body) != expect {
                        return Err(bad("crc32c checksum mismatch".into()));
                    }
                    body.to_vec()
                }
            };
        }
        if bytes.len() != want {
            return Err(bad(format!(
                "{} bytes after decoding, a chunk of {:?} {} needs {want}",
                bytes.len(),
                self.chunks,
                self.dtype
            )));
        }
        let v: Vec<T> = decode_elements(&bytes, self.order)?;
        Ok(match perm {
            Some(p) => untranspose(&v, &self.chunks, p),
            None => v,
        })
    }

    fn encode_chunk<T: Voxel>(&self, data: &[T]) -> Result<Vec<u8>> {
        let transposed;
        let elems: &[T] = match self.codecs.iter().find_map(|c| match c {
            Codec::Transpose(p) => Some(p),
            _ => None,
        }) {
            Some(p) => {
                transposed = transpose(data, &self.chunks, p);
                &transposed
            }
            None => data,
        };
        let mut bytes = encode_elements(elems, self.order);
        let err = |e: std::io::Error| {
            Error::Io(format!("{}: compressing a chunk: {e}", self.path.display()))
        };
        for c in &self.codecs {
            bytes = match c {
                Codec::Transpose(_) => continue,
                Codec::Gzip(l) => {
                    let mut e =
                        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(*l));
                    e.write_all(&bytes).map_err(err)?;
                    e.finish().map_err(err)?
                }
                Codec::Zlib(l) => {
                    let mut e =
                        flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(*l));
                    e.write_all(&bytes).map_err(err)?;
                    e.finish().map_err(err)?
                }
                Codec::Zstd(_) => ruzstd::encoding::compress_to_vec(
                    &bytes[..],
                    ruzstd::encoding::CompressionLevel::Fastest,
                ),
                Codec::Crc32c => {
                    let s = crc32c(&bytes);
                    bytes.extend_from_slice(&s.to_le_bytes());
                    bytes
                }
            };
        }
        Ok(bytes)
    }

    /// The chunk at grid index `idx` as C-order elements, or None when it is missing (fill value).
    fn read_chunk<T: Voxel>(&self, idx: &[usize]) -> Result<Option<Vec<T>>> {
        let p = self.chunk_path(idx);
        match std::fs::read(&p) {
            Ok(b) => self.decode_chunk(b, &p).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&p, e)),
        }
    }

    fn write_chunk<T: Voxel>(&self, idx: &[usize], data: &[T]) -> Result<()> {
        let p = self.chunk_path(idx);
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        }
        let bytes = self.encode_chunk(data)?;
        write_file_renamed(
            &p,
            |w| w.write_all(&bytes).map_err(|e| io_err(&p, e)),
            false,
        )
    }

    fn fill<T: Voxel>(&self) -> T {
        // The fill value was validated for the dtype when parsed; NaN or out-of-range values
        // (a float fill for an integer array written by another tool) fall back to 0.
        T::from_scalar_exact(self.fill_value).unwrap_or_default()
    }

    fn check_type<T: Voxel>(&self, op: &str) -> Result<()> {
        if T::DTYPE != self.dtype {
            return Err(Error::Invalid(format!(
                "{}: {op}: the array holds {} but {} was given; convert first",
                self.path.display(),
                self.dtype,
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
        Ok(match self.dtype {
            Dtype::U8 => self.read_region::<u8>(offset, shape)?.into(),
            Dtype::U16 => self.read_region::<u16>(offset, shape)?.into(),
            Dtype::U32 => self.read_region::<u32>(offset, shape)?.into(),
            Dtype::U64 => self.read_region::<u64>(offset, shape)?.into(),
            Dtype::F32 => self.read_region::<f32>(offset, shape)?.into(),
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
            let full = o.count == self.chunks;
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

/// C-order chunk -> stored order of a v3 transpose(perm): stored axis k is original axis perm[k].
fn transpose<T: Copy>(data: &[T], shape: &[usize], perm: &[usize]) -> Vec<T> {
    let tshape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let src = c_strides(shape);
    let mut out = Vec::with_capacity(data.len());
    for j in 0..data.len() {
        let jt = super::array::unravel(j, &tshape);
        let o: usize = (0..perm.len()).map(|k| jt[k] * src[perm[k]]).sum();
        out.push(data[o]);
    }
    out
}

/// Inverse of `transpose`.
fn untranspose<T: Copy + Default>(stored: &[T], shape: &[usize], perm: &[usize]) -> Vec<T> {
    let tshape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let src = c_strides(shape);
    let mut out = vec![T::default(); stored.len()];
    for (j, &v) in stored.iter().enumerate() {
        let jt = super::array::unravel(j, &tshape);
        let o: usize = (0..perm.len()).map(|k| jt[k] * src[perm[k]]).sum();
        out[o] = v;
    }
    out
}

/// CRC-32C (Castagnoli), as the v3 crc32c codec stores it.
fn crc32c(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let t = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0x82F6_3B78 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *e = c;
        }
        t
    });
    let mut c = !0u32;
    for &b in data {
        c = t[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
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
        write_zarr_groups(&self.target, self.version)?;
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
            write_file_atomic(&f, |w| {
                use std::io::Write;
                w.write_all(text.as_bytes()).map_err(|e| io_err(&f, e))
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_value() {
        // The standard check value of CRC-32C.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn transpose_inverts() {
        let shape = [2, 3, 4];
        let d: Vec<u32> = (0..24).collect();
        let t = transpose(&d, &shape, &[2, 1, 0]);
        // Fortran order of a C array: first stored elements walk axis 0.
        assert_eq!(&t[..4], &[0, 12, 4, 16]);
        assert_eq!(untranspose(&t, &shape, &[2, 1, 0]), d);
    }
}

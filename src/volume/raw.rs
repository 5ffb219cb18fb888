//! Raw binary volumes: a C-order block of elements after an optional header, memory-mapped so
//! that volumes larger than memory can be read by region.

use super::array::{
    c_strides, check_box, decode_elements, encode_elements, io_err, shape_len, to_f16, unravel,
    write_file_atomic, AnyArray, Array, ByteOrder, Dtype, Voxel, VoxelSize,
};
use super::io::{temp_beside, FormatReader, FormatWriter, Opened, WriteRequest};
use crate::error::{Error, Result};
use memmap2::Mmap;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A raw volume mapped read-only.
pub struct RawVolume {
    path: PathBuf,
    map: Mmap,
    pub shape: Vec<usize>,
    pub dtype: Dtype,
    pub order: ByteOrder,
    pub header: usize,
}

impl RawVolume {
    /// Maps `path` as `shape` elements of `dtype` after `header` bytes. The file must be exactly
    /// that long: a size mismatch nearly always means a wrong shape or dtype.
    pub fn open(
        path: impl AsRef<Path>,
        shape: &[usize],
        dtype: Dtype,
        order: ByteOrder,
        header: usize,
    ) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let n = shape_len(shape)?;
        let want = n
            .checked_mul(dtype.size())
            .and_then(|b| b.checked_add(header))
            .ok_or_else(|| {
                Error::Invalid(format!("{}: shape {shape:?} is too large", path.display()))
            })?;
        let f = std::fs::File::open(&path).map_err(|e| io_err(&path, e))?;
        let len = f.metadata().map_err(|e| io_err(&path, e))?.len();
        if len != want as u64 {
            return Err(Error::Invalid(format!(
                "{}: file is {len} bytes but a {header}-byte header plus shape {shape:?} of {dtype} ({} bytes each) needs {want}; check the shape, dtype and header offset",
                path.display(),
                dtype.size()
            )));
        }
        // SAFETY: the map is read-only; a concurrent writer truncating the file could fault, which
        // is the accepted risk of every mmap reader (the project's choice of memmap2).
        let map = if want == 0 {
            memmap2::MmapOptions::new()
                .len(0)
                .map_anon()
                .map_err(|e| io_err(&path, e))?
                .make_read_only()
                .map_err(|e| io_err(&path, e))?
        } else {
            unsafe { Mmap::map(&f) }.map_err(|e| io_err(&path, e))?
        };
        Ok(RawVolume {
            path,
            map,
            shape: shape.to_vec(),
            dtype,
            order,
            header,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The element bytes (after the header), as stored.
    pub fn bytes(&self) -> &[u8] {
        &self.map[self.header..]
    }

    /// The whole volume, decoded.
    pub fn read_all(&self) -> Result<AnyArray> {
        AnyArray::from_bytes(self.dtype, self.shape.clone(), self.bytes(), self.order)
    }

    /// The box `offset .. offset + shape`, decoded; only its pages are touched.
    pub fn read_region(&self, offset: &[usize], shape: &[usize]) -> Result<AnyArray> {
        check_box("raw read_region", &self.shape, offset, shape).map_err(|e| self.named(e))?;
        let es = self.dtype.size();
        let n = shape_len(shape)?;
        let mut out = vec![0u8; n * es];
        if n > 0 {
            let nd = shape.len();
            let strides = c_strides(&self.shape);
            let row = shape[nd - 1] * es;
            let bytes = self.bytes();
            for (r, dst) in out.chunks_mut(row).enumerate() {
                let idx = unravel(r, &shape[..nd - 1]);
                let mut o = offset[nd - 1];
                for d in 0..nd - 1 {
                    o += (offset[d] + idx[d]) * strides[d];
                }
                dst.copy_from_slice(&bytes[o * es..o * es + row]);
            }
        }
        AnyArray::from_bytes(self.dtype, shape.to_vec(), &out, self.order)
    }

    /// The whole volume as `T` (dtype must match).
    pub fn read_typed<T: Voxel>(&self) -> Result<Array<T>> {
        if T::DTYPE != self.dtype {
            return Err(Error::Invalid(format!(
                "{}: holds {}, asked for {}",
                self.path.display(),
                self.dtype,
                T::DTYPE
            )));
        }
        Array::new(
            self.shape.clone(),
            decode_elements(self.bytes(), self.order)?,
        )
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

/// Writes `array` as a raw volume (optionally after `header` bytes), atomically.
pub fn write<T: Voxel>(
    path: impl AsRef<Path>,
    array: &Array<T>,
    order: ByteOrder,
    header: &[u8],
) -> Result<()> {
    let path = path.as_ref();
    write_file_atomic(path, |w| {
        w.write_all(header).map_err(|e| io_err(path, e))?;
        // Encode in slabs so a big volume needs no second full-size copy.
        for slab in array.data.chunks(1 << 20) {
            w.write_all(&encode_elements(slab, order))
                .map_err(|e| io_err(path, e))?;
        }
        Ok(())
    })
}

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

/// `Z,Y,X:DTYPE[:le|be]` after a raw file name.
pub(crate) fn parse_inline_layout(spec: &str, s: &str) -> Result<RawLayout> {
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

/// Opens a raw volume for the dispatcher, its layout from the spec or else the sidecar.
pub(crate) fn open_volume(path: &Path, layout: Option<RawLayout>) -> Result<Opened> {
    let layout = match layout {
        Some(l) => l,
        None => read_sidecar(path)?,
    };
    let r = RawVolume::open(
        path,
        &layout.shape,
        layout.dtype,
        layout.order,
        layout.header,
    )?;
    Ok(Opened {
        shape: layout.shape,
        dtype: layout.dtype,
        voxel_size: layout.voxel_size,
        offset_nm: None,
        reader: Box::new(r),
    })
}

impl FormatReader for RawVolume {
    fn read_region(&self, offset: &[usize], shape: &[usize], _want: Dtype) -> Result<AnyArray> {
        RawVolume::read_region(self, offset, shape)
    }
}

/// An inline layout in a spec being written must describe the volume.
pub(crate) fn check_writable(
    l: &RawLayout,
    shape: &[usize],
    dtype: Dtype,
) -> std::result::Result<(), String> {
    if l.shape != shape || l.dtype != dtype {
        return Err(format!(
            "the spec says shape {:?} of {} but the volume is {shape:?} of {dtype}",
            l.shape, l.dtype
        ));
    }
    Ok(())
}

/// A raw volume written in place into a temporary file of its full size (little-endian), with
/// the sidecar written and the file renamed at `finish`.
struct RawWriter {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<std::fs::File>,
    shape: Vec<usize>,
    dtype: Dtype,
    sidecar: String,
}

pub(crate) fn create_volume(path: PathBuf, req: &WriteRequest) -> Result<Box<dyn FormatWriter>> {
    let tmp = temp_beside(&path, "partial")?;
    let bytes = shape_len(req.shape)?
        .checked_mul(req.dtype.size())
        .ok_or_else(|| Error::Invalid(format!("{}: volume too large", path.display())))?;
    let f = std::fs::File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
    if let Err(e) = f.set_len(bytes as u64) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(&tmp, e));
    }
    let layout = RawLayout {
        shape: req.shape.to_vec(),
        dtype: req.dtype,
        order: ByteOrder::Little,
        header: 0,
        voxel_size: req.opt.voxel_size,
    };
    Ok(Box::new(RawWriter {
        path,
        tmp,
        file: Some(f),
        shape: req.shape.to_vec(),
        dtype: req.dtype,
        sidecar: sidecar_json(&layout),
    }))
}

impl FormatWriter for RawWriter {
    fn write_region(&mut self, offset: &[usize], data: &AnyArray) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let f = self
            .file
            .as_ref()
            .ok_or_else(|| Error::Io(format!("{}: closed", self.path.display())))?;
        let bytes = match data {
            AnyArray::F32(a) if self.dtype == Dtype::F16 => {
                let bits: Vec<u16> = to_f16(&a.data).iter().map(|h| h.to_bits()).collect();
                encode_elements(&bits, ByteOrder::Little)
            }
            _ => any_one!(data, |a| encode_elements(&a.data, ByteOrder::Little)),
        };
        let es = self.dtype.size();
        let nd = self.shape.len();
        let strides = c_strides(&self.shape);
        let dshape = data.shape();
        let row = dshape[nd - 1] * es;
        for (r, src) in bytes.chunks(row).enumerate() {
            let idx = unravel(r, &dshape[..nd - 1]);
            let mut o = offset[nd - 1];
            for d in 0..nd - 1 {
                o += (offset[d] + idx[d]) * strides[d];
            }
            f.write_all_at(src, (o * es) as u64)
                .map_err(|e| io_err(&self.tmp, e))?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        if let Some(f) = self.file.take() {
            f.sync_all().map_err(|e| io_err(&self.tmp, e))?;
        }
        let side = raw_sidecar(&self.path);
        write_file_atomic(&side, |w| {
            w.write_all(self.sidecar.as_bytes())
                .map_err(|e| io_err(&side, e))
        })?;
        std::fs::rename(&self.tmp, &self.path).map_err(|e| io_err(&self.path, e))
    }

    fn discard(&mut self) {
        self.file.take();
        let _ = std::fs::remove_file(&self.tmp);
    }
}

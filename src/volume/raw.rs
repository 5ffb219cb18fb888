//! Raw binary volumes: a C-order block of elements after an optional header, memory-mapped so
//! that volumes larger than memory can be read by region.

use super::array::{
    check_box, decode_elements, encode_elements, io_err, shape_len, write_file_atomic, AnyArray,
    Array, ByteOrder, Dtype, Voxel,
};
use crate::error::{Error, Result};
use memmap2::Mmap;
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
            let strides = super::array::c_strides(&self.shape);
            let row = shape[nd - 1] * es;
            let bytes = self.bytes();
            for (r, dst) in out.chunks_mut(row).enumerate() {
                let idx = super::array::unravel(r, &shape[..nd - 1]);
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

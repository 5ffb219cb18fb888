//! The directory store zarrs reads and writes through: every value is written to a temporary
//! file beside its key and renamed over it, so a reader (or a worker killed mid-write) never
//! sees a partial chunk, and nothing caches file handles, so a chunk replaced by another process
//! is read anew.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use zarrs::storage::byte_range::{ByteRange, ByteRangeIterator};
use zarrs::storage::{
    Bytes, MaybeBytesIterator, OffsetBytesIterator, ReadableStorageTraits, StorageError, StoreKey,
    StorePrefix, WritableStorageTraits,
};

#[derive(Debug)]
pub struct AtomicStore {
    root: PathBuf,
    /// fsync each value before its rename (durable chunks, at the cost of one sync each).
    sync: bool,
}

fn io(e: std::io::Error) -> StorageError {
    StorageError::IOError(std::sync::Arc::new(e))
}

impl AtomicStore {
    pub fn new(root: impl AsRef<Path>, sync: bool) -> Self {
        AtomicStore {
            root: root.as_ref().to_path_buf(),
            sync,
        }
    }

    fn path(&self, key: &str) -> PathBuf {
        let mut p = self.root.clone();
        for part in key.split('/').filter(|s| !s.is_empty()) {
            p.push(part);
        }
        p
    }

    fn put(&self, key: &StoreKey, value: &[u8]) -> Result<(), StorageError> {
        let p = self.path(key.as_str());
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        crate::volume::array::write_file_renamed(
            &p,
            |w| {
                w.write_all(value)
                    .map_err(|e| crate::volume::array::io_err(&p, e))
            },
            self.sync,
        )
        .map_err(|e| StorageError::Other(e.to_string()))?;
        if self.sync {
            // The rename itself is durable only once its directory is.
            if let Some(dir) = p.parent() {
                std::fs::File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io)?;
            }
        }
        Ok(())
    }
}

impl ReadableStorageTraits for AtomicStore {
    fn get_partial_many<'a>(
        &'a self,
        key: &StoreKey,
        byte_ranges: ByteRangeIterator<'a>,
    ) -> Result<MaybeBytesIterator<'a>, StorageError> {
        let p = self.path(key.as_str());
        let name = key.as_str().rsplit('/').next().unwrap_or("");
        if matches!(name, ".zarray" | ".zattrs" | ".zgroup" | "zarr.json") {
            // zarr-python 2 writes bare NaN / Infinity fill values, which are not JSON.
            let text = match std::fs::read_to_string(&p) {
                Ok(t) => crate::json::quote_non_finite(&t).into_bytes(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(io(e)),
            };
            let size = text.len() as u64;
            let out: Vec<Result<Bytes, StorageError>> = byte_ranges
                .map(|r: ByteRange| {
                    let (start, end) = (r.start(size) as usize, r.end(size) as usize);
                    text.get(start..end)
                        .map(Bytes::copy_from_slice)
                        .ok_or_else(|| {
                            StorageError::Other(format!("{}: byte range {r}", p.display()))
                        })
                })
                .collect();
            return Ok(Some(Box::new(out.into_iter())));
        }
        let f = match std::fs::File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let size = f.metadata().map_err(io)?.len();
        let out: Vec<Result<Bytes, StorageError>> = byte_ranges
            .map(|r: ByteRange| {
                let (start, end) = (r.start(size), r.end(size));
                if start > end || end > size {
                    return Err(StorageError::Other(format!(
                        "{}: byte range {r} lies outside the {size}-byte file",
                        p.display()
                    )));
                }
                let mut buf = vec![0u8; (end - start) as usize];
                f.read_exact_at(&mut buf, start).map_err(io)?;
                Ok(Bytes::from(buf))
            })
            .collect();
        Ok(Some(Box::new(out.into_iter())))
    }

    fn size_key(&self, key: &StoreKey) -> Result<Option<u64>, StorageError> {
        match std::fs::metadata(self.path(key.as_str())) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(e)),
        }
    }

    fn supports_get_partial(&self) -> bool {
        true
    }
}

impl WritableStorageTraits for AtomicStore {
    fn set(&self, key: &StoreKey, value: Bytes) -> Result<(), StorageError> {
        self.put(key, &value)
    }

    /// Read, patched and written whole, so the replacement stays atomic.
    fn set_partial_many(
        &self,
        key: &StoreKey,
        offset_values: OffsetBytesIterator,
    ) -> Result<(), StorageError> {
        let p = self.path(key.as_str());
        let mut data = match std::fs::read(&p) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io(e)),
        };
        for (offset, value) in offset_values {
            let o = offset as usize;
            if data.len() < o + value.len() {
                data.resize(o + value.len(), 0);
            }
            data[o..o + value.len()].copy_from_slice(&value);
        }
        self.put(key, &data)
    }

    fn erase(&self, key: &StoreKey) -> Result<(), StorageError> {
        match std::fs::remove_file(self.path(key.as_str())) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(e)),
            _ => Ok(()),
        }
    }

    fn erase_prefix(&self, prefix: &StorePrefix) -> Result<(), StorageError> {
        match std::fs::remove_dir_all(self.path(prefix.as_str())) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(e)),
            _ => Ok(()),
        }
    }

    fn supports_set_partial(&self) -> bool {
        false
    }
}

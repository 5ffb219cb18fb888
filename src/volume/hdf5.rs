//! HDF5 datasets in and out, through `hdf5-metno` linked against the system HDF5 library.
//!
//! Reading converts from the stored type only where no value changes (checked value by value for
//! integer narrowing, so an int64 label volume with small ids still reads as u32); writing goes to a
//! temporary file beside the target that is renamed over it only once every dataset is written, so
//! a failure never leaves a half-written output behind.

use super::array::{io_err, AnyArray, Array, Dtype, VoxelSize};
use super::io::{temp_beside, FormatReader, FormatWriter, Opened, WriteRequest};
use crate::error::{Error, Result};
use hdf5::types::{FloatSize, IntSize, TypeDescriptor};
use std::path::{Path, PathBuf};

/// A dataset read in its stored type, before conversion to what the caller asked for.
pub enum Stored {
    U8(Vec<u8>),
    U16(Vec<u16>),
    U32(Vec<u32>),
    U64(Vec<u64>),
    I8(Vec<i8>),
    I16(Vec<i16>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl Stored {
    pub fn type_name(&self) -> &'static str {
        match self {
            Stored::U8(_) => "uint8",
            Stored::U16(_) => "uint16",
            Stored::U32(_) => "uint32",
            Stored::U64(_) => "uint64",
            Stored::I8(_) => "int8",
            Stored::I16(_) => "int16",
            Stored::I32(_) => "int32",
            Stored::I64(_) => "int64",
            Stored::F32(_) => "float32",
            Stored::F64(_) => "float64",
        }
    }
}

/// Why a stored dataset could not become the requested element type.
#[derive(Debug)]
pub enum ConvertError {
    /// No conversion keeps values exactly (float to integer, float64 to float32).
    Type,
    /// The conversion is exact for most values but not this one (index, value).
    Value(usize, String),
}

/// An element type the readers and writers handle.
pub trait Element: Copy + Send + Sync + 'static + hdf5::H5Type {
    const NAME: &'static str;
    fn from_stored(s: Stored) -> std::result::Result<Vec<Self>, ConvertError>;
}

/// Converts with `f`, reporting the first value it refuses.
fn convert<S: Copy + std::fmt::Display, T>(
    v: Vec<S>,
    f: impl Fn(S) -> Option<T>,
) -> std::result::Result<Vec<T>, ConvertError> {
    let mut out = Vec::with_capacity(v.len());
    for (i, &x) in v.iter().enumerate() {
        out.push(f(x).ok_or_else(|| ConvertError::Value(i, x.to_string()))?);
    }
    Ok(out)
}

macro_rules! int_element {
    ($t:ty, $name:expr) => {
        impl Element for $t {
            const NAME: &'static str = $name;
            fn from_stored(s: Stored) -> std::result::Result<Vec<Self>, ConvertError> {
                match s {
                    Stored::U8(v) => convert(v, |x| <$t>::try_from(x).ok()),
                    Stored::U16(v) => convert(v, |x| <$t>::try_from(x).ok()),
                    Stored::U32(v) => convert(v, |x| <$t>::try_from(x).ok()),
                    Stored::U64(v) => convert(v, |x| <$t>::try_from(x).ok()),
                    Stored::I8(v) => convert(v, |x| <$t>::try_from(x).ok()),
                    Stored::I16(v) => convert(v, |x| <$t>::try_from(x).ok()),
                    Stored::I32(v) => convert(v, |x| <$t>::try_from(x).ok()),
                    Stored::I64(v) => convert(v, |x| <$t>::try_from(x).ok()),
                    Stored::F32(_) | Stored::F64(_) => Err(ConvertError::Type),
                }
            }
        }
    };
}

int_element!(u8, "uint8");
int_element!(u16, "uint16");
int_element!(u32, "uint32");
int_element!(u64, "uint64");

/// Integer to float is exact only while the integer fits the mantissa; checked per value.
macro_rules! exact_float {
    ($t:ty, $v:expr) => {
        convert($v, |x| {
            let f = x as $t;
            (f as i128 == x as i128).then_some(f)
        })
    };
}

impl Element for f32 {
    const NAME: &'static str = "float32";
    fn from_stored(s: Stored) -> std::result::Result<Vec<Self>, ConvertError> {
        match s {
            Stored::F32(v) => Ok(v),
            Stored::F64(_) => Err(ConvertError::Type),
            Stored::U8(v) => Ok(v.into_iter().map(f32::from).collect()),
            Stored::U16(v) => Ok(v.into_iter().map(f32::from).collect()),
            Stored::I8(v) => Ok(v.into_iter().map(f32::from).collect()),
            Stored::I16(v) => Ok(v.into_iter().map(f32::from).collect()),
            Stored::U32(v) => exact_float!(f32, v),
            Stored::U64(v) => exact_float!(f32, v),
            Stored::I32(v) => exact_float!(f32, v),
            Stored::I64(v) => exact_float!(f32, v),
        }
    }
}

impl Element for f64 {
    const NAME: &'static str = "float64";
    fn from_stored(s: Stored) -> std::result::Result<Vec<Self>, ConvertError> {
        match s {
            Stored::F64(v) => Ok(v),
            Stored::F32(v) => Ok(v.into_iter().map(f64::from).collect()),
            Stored::U8(v) => Ok(v.into_iter().map(f64::from).collect()),
            Stored::U16(v) => Ok(v.into_iter().map(f64::from).collect()),
            Stored::U32(v) => Ok(v.into_iter().map(f64::from).collect()),
            Stored::I8(v) => Ok(v.into_iter().map(f64::from).collect()),
            Stored::I16(v) => Ok(v.into_iter().map(f64::from).collect()),
            Stored::I32(v) => Ok(v.into_iter().map(f64::from).collect()),
            Stored::U64(v) => exact_float!(f64, v),
            Stored::I64(v) => exact_float!(f64, v),
        }
    }
}

/// The library's message in one line (its error stacks span several), a failed system call cut
/// down to the call and the system's reason (buffer addresses and offsets say nothing to users).
pub(super) fn h5err(ctx: impl std::fmt::Display, what: &str, e: hdf5::Error) -> Error {
    let msg = crate::fsutil::one_line(&e.to_string());
    let cause = msg
        .split_once("error message = '")
        .and_then(|(head, rest)| {
            let reason = rest.split('\'').next()?;
            let call = head.split(": time =").next()?;
            Some(format!("{call}: {reason}"))
        });
    Error::Io(format!("{ctx}: {what}: {}", cause.unwrap_or(msg)))
}

fn open(file: &Path) -> Result<hdf5::File> {
    if !file.exists() {
        return Err(Error::Io(format!(
            "{}: no such file (check the path before ':' in FILE:DATASET)",
            file.display()
        )));
    }
    hdf5::File::open(file).map_err(|e| h5err(file.display(), "cannot open as HDF5", e))
}

/// Every dataset in the file, as absolute paths, sorted.
pub fn list_datasets(file: &Path) -> Result<Vec<String>> {
    let f = open(file)?;
    let mut out = Vec::new();
    collect_datasets(&f, &mut out).map_err(|e| h5err(file.display(), "listing datasets", e))?;
    out.sort();
    Ok(out)
}

fn collect_datasets(g: &hdf5::Group, out: &mut Vec<String>) -> hdf5::Result<()> {
    for d in g.datasets()? {
        out.push(d.name());
    }
    for sub in g.groups()? {
        collect_datasets(&sub, out)?;
    }
    Ok(())
}

/// libhdf5 1.10 trusts the structures of a file: a corrupt symbol table, local heap or layout
/// message can crash it (SIGSEGV, found by tests/fuzz_readers.rs) where no Rust code can catch
/// it. So the lookup of a dataset and its header is first made in a forked child: if the child
/// dies of a signal, the file is reported as corrupt instead of taking the process down. A child
/// that does not finish in time is killed and the lookup goes ahead as before. REVSEG_HDF5_PROBE=0 turns the probe off.
fn probe(file: &Path, dataset: &str) -> Result<()> {
    if std::env::var_os("REVSEG_HDF5_PROBE").is_some_and(|v| v == "0") {
        return Ok(());
    }
    let look = || -> hdf5::Result<()> {
        let f = hdf5::File::open(file)?;
        match f.dataset(dataset) {
            Ok(ds) => {
                let _ = (
                    ds.shape(),
                    ds.dtype()?.to_descriptor(),
                    ds.layout(),
                    ds.chunk(),
                );
            }
            Err(_) => {
                let _ = collect_datasets(&f, &mut Vec::new());
                let _ = f.group(dataset);
            }
        }
        Ok(())
    };
    let probed = std::fs::metadata(file).ok().map(|m| {
        use std::os::unix::fs::MetadataExt;
        (m.dev(), m.ino())
    });
    // Forking while holding the library's (reentrant) lock means no other thread is inside
    // libhdf5 at that moment, so the child's copy of its state is consistent, and the child's
    // one thread owns the lock. SAFETY: the child only runs the lookup and leaves with _exit (no
    // destructors or atexit handlers of the parent); the parent waits for it or kills it.
    let pid = hdf5::sync::sync(|| {
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // The child inherits every open file of the parent, and with them the parent's
            // HDF5 file locks (flock belongs to the shared open file): while it ran, another
            // thread's reopen of a file it had just written failed with EAGAIN. Only the
            // probed file's descriptors stay (libhdf5 may reuse its open handle of it).
            close_inherited_files_except(probed);
            // The parent holds its file lock; the child only reads.
            std::env::set_var("HDF5_USE_FILE_LOCKING", "FALSE");
            let _ = look();
            unsafe { libc::_exit(0) };
        }
        pid
    });
    if pid < 0 {
        return Ok(()); // No child to be had: look the normal way.
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut status = 0;
    loop {
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            break;
        }
        if r < 0 || std::time::Instant::now() > deadline {
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    if libc::WIFSIGNALED(status) {
        return Err(Error::Io(format!(
            "{}: corrupt HDF5 file: the HDF5 library crashed (signal {}) reading the header of '{dataset}'; the file is damaged: restore or re-export it",
            file.display(),
            libc::WTERMSIG(status)
        )));
    }
    Ok(())
}

/// In a forked child: closes every descriptor above stderr that is not open on `keep` (device,
/// inode). Only fstat and close, both async-signal-safe.
fn close_inherited_files_except(keep: Option<(u64, u64)>) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls on this process's own descriptors.
    unsafe {
        let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur.min(1 << 16) as i32
        } else {
            1024
        };
        for fd in 3..max {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(fd, &mut st) != 0 {
                continue;
            }
            if keep != Some((st.st_dev, st.st_ino)) {
                libc::close(fd);
            }
        }
    }
}

fn open_dataset(f: &hdf5::File, file: &Path, dataset: &str) -> Result<hdf5::Dataset> {
    probe(file, dataset)?;
    if let Ok(ds) = f.dataset(dataset) {
        return Ok(ds);
    }
    let mut names = Vec::new();
    let _ = collect_datasets(f, &mut names);
    names.sort();
    let is_group = f.group(dataset).is_ok();
    Err(Error::Invalid(format!(
        "{}: '{dataset}' {}; datasets in this file: {}",
        file.display(),
        if is_group {
            "is a group, not a dataset"
        } else {
            "does not exist"
        },
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    )))
}

/// Shape (C order) of a dataset, without reading it.
pub fn dataset_shape(file: impl AsRef<Path>, dataset: &str) -> Result<Vec<usize>> {
    let file = file.as_ref();
    let f = open(file)?;
    Ok(open_dataset(&f, file, dataset)?.shape())
}

fn read_stored(ds: &hdf5::Dataset) -> hdf5::Result<Option<Stored>> {
    let desc = ds.dtype()?.to_descriptor()?;
    let r = ds.as_reader().no_convert();
    Ok(Some(match desc {
        TypeDescriptor::Unsigned(IntSize::U1) => Stored::U8(r.read_raw()?),
        TypeDescriptor::Unsigned(IntSize::U2) => Stored::U16(r.read_raw()?),
        TypeDescriptor::Unsigned(IntSize::U4) => Stored::U32(r.read_raw()?),
        TypeDescriptor::Unsigned(IntSize::U8) => Stored::U64(r.read_raw()?),
        TypeDescriptor::Integer(IntSize::U1) => Stored::I8(r.read_raw()?),
        TypeDescriptor::Integer(IntSize::U2) => Stored::I16(r.read_raw()?),
        TypeDescriptor::Integer(IntSize::U4) => Stored::I32(r.read_raw()?),
        TypeDescriptor::Integer(IntSize::U8) => Stored::I64(r.read_raw()?),
        TypeDescriptor::Float(FloatSize::U4) => Stored::F32(r.read_raw()?),
        TypeDescriptor::Float(FloatSize::U8) => Stored::F64(r.read_raw()?),
        _ => return Ok(None),
    }))
}

/// Reads a whole dataset in its stored type: (shape in C order, values).
pub fn read_stored_dataset(file: impl AsRef<Path>, dataset: &str) -> Result<(Vec<usize>, Stored)> {
    let file = file.as_ref();
    let f = open(file)?;
    let ds = open_dataset(&f, file, dataset)?;
    let ctx = format!("{}:{dataset}", file.display());
    let stored = read_stored(&ds)
        .map_err(|e| Error::Io(format!("{ctx}: reading failed: {e}")))?
        .ok_or_else(|| {
            let t = ds
                .dtype()
                .and_then(|d| d.to_descriptor())
                .map(|d| format!("{d:?}"))
                .unwrap_or_else(|_| "unknown".into());
            Error::Invalid(format!(
                "{ctx}: stored type {t} is not a plain integer or float"
            ))
        })?;
    Ok((ds.shape(), stored))
}

/// Converts stored values to `T` where no value changes; `ctx` names the dataset in errors.
pub fn convert_stored<T: Element>(ctx: &str, stored: Stored) -> Result<Vec<T>> {
    let stored_name = stored.type_name();
    T::from_stored(stored).map_err(|e| match e {
        ConvertError::Type => Error::Invalid(format!(
            "{ctx}: stored as {stored_name}, which cannot be read as {} without changing values; convert the dataset first",
            T::NAME
        )),
        ConvertError::Value(i, v) => Error::Invalid(format!(
            "{ctx}: stored as {stored_name}; value {v} at flat index {i} does not fit {}",
            T::NAME
        )),
    })
}

/// Reads a whole dataset as `T`: (shape in C order, values in C order).
pub fn read_dataset<T: Element>(
    file: impl AsRef<Path>,
    dataset: &str,
) -> Result<(Vec<usize>, Vec<T>)> {
    let (shape, stored) = read_stored_dataset(&file, dataset)?;
    let ctx = format!("{}:{dataset}", file.as_ref().display());
    Ok((shape, convert_stored(&ctx, stored)?))
}

/// As [`read_dataset`], and the dataset must have `rank` dimensions (`what` names the role).
pub fn read_volume<T: Element>(
    file: impl AsRef<Path>,
    dataset: &str,
    rank: usize,
    what: &str,
) -> Result<(Vec<usize>, Vec<T>)> {
    let file = file.as_ref();
    let (shape, data) = read_dataset::<T>(file, dataset)?;
    if shape.len() != rank {
        return Err(Error::Invalid(format!(
            "{}:{dataset}: {what} must have {rank} dimensions, found shape {shape:?}",
            file.display()
        )));
    }
    Ok((shape, data))
}

/// Chunks for compressed datasets: whole rows of up to 128 x 128 x 8, small enough to stream.
fn chunk_shape(shape: &[usize]) -> Vec<usize> {
    let caps = [128usize, 128, 8];
    let n = shape.len();
    (0..n)
        .map(|i| {
            let from_end = n - 1 - i;
            let cap = caps.get(from_end).copied().unwrap_or(1);
            shape[i].clamp(1, cap)
        })
        .collect()
}

/// Output HDF5 file written atomically: datasets go to a temporary file beside the target (a copy
/// of the target when it exists, so other datasets in it survive), renamed over the target by
/// [`Writer::commit`]. Dropped without commit, the temporary file is removed.
pub struct Writer {
    target: PathBuf,
    tmp: PathBuf,
    file: Option<hdf5::File>,
}

impl Writer {
    pub fn create(target: impl AsRef<Path>) -> Result<Self> {
        let target = target.as_ref().to_path_buf();
        let name = target
            .file_name()
            .ok_or_else(|| Error::Invalid(format!("{}: not a file name", target.display())))?;
        let tmp = target.with_file_name(format!(
            ".{}.partial-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let mut w = Writer {
            target,
            tmp,
            file: None,
        };
        crate::fsutil::remove_stale_temps(&w.target);
        let target = w.target.display().to_string();
        w.file = Some(
            w.open_tmp()
                .map_err(|e| crate::fsutil::not_written(&target, e))?,
        );
        Ok(w)
    }

    fn open_tmp(&self) -> Result<hdf5::File> {
        let ctx = |e: std::io::Error| {
            Error::Io(format!(
                "{}: cannot write temporary file: {e}",
                self.tmp.display()
            ))
        };
        if self.target.exists() {
            std::fs::copy(&self.target, &self.tmp).map_err(ctx)?;
            hdf5::File::open_rw(&self.tmp)
                .map_err(|e| h5err(self.target.display(), "open for update", e))
        } else {
            hdf5::File::create(&self.tmp).map_err(|e| h5err(self.target.display(), "create", e))
        }
    }

    /// Adds (or replaces) a dataset; parent groups are created as needed.
    pub fn add<T: Element>(
        &mut self,
        dataset: &str,
        shape: &[usize],
        data: &[T],
        gzip: bool,
    ) -> Result<()> {
        let ctx = format!("{}:{dataset}", self.target.display());
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(Error::shape(
                "hdf5 write",
                format!(
                    "{ctx}: shape {shape:?} holds {n} values, data has {}",
                    data.len()
                ),
            ));
        }
        let f = self.file.as_ref().expect("file open until commit");
        let target = self.target.display().to_string();
        let e =
            |e: hdf5::Error| crate::fsutil::not_written(&target, h5err(&ctx, "write failed", e));
        if f.link_exists(dataset) {
            f.unlink(dataset).map_err(e)?;
        }
        ensure_parents(f, dataset).map_err(e)?;
        let ds = if gzip && n > 0 {
            f.new_dataset::<T>()
                .shape(shape)
                .chunk(chunk_shape(shape))
                .deflate(4)
                .create(dataset)
        } else {
            f.new_dataset::<T>().shape(shape).create(dataset)
        }
        .map_err(e)?;
        ds.write_raw(data).map_err(e)?;
        // Chunks wait in the cache; a write failing when the dataset closes would go unseen.
        f.flush().map_err(e)
    }

    /// Closes the temporary file and renames it over the target.
    pub fn commit(mut self) -> Result<()> {
        let target = self.target.display().to_string();
        let f = self.file.take().expect("file open until commit");
        close_synced(f, &self.tmp, &target).map_err(|e| crate::fsutil::not_written(&target, e))?;
        std::fs::rename(&self.tmp, &self.target).map_err(|e| {
            Error::Io(format!(
                "{target}: cannot move finished file into place: {e}"
            ))
        })
    }
}

/// Flushes, closes and syncs an HDF5 file written at `tmp`, with every error reported (a
/// dataset or file closed by drop loses them). Datasets of `f` must be closed already.
pub(super) fn close_synced(f: hdf5::File, tmp: &Path, ctx: &str) -> Result<()> {
    f.flush().map_err(|e| h5err(ctx, "flushing", e))?;
    f.close().map_err(|e| h5err(ctx, "closing", e))?;
    std::fs::File::open(tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| super::array::io_err(tmp, e))
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.file.take();
        let _ = std::fs::remove_file(&self.tmp);
    }
}

fn ensure_parents(f: &hdf5::File, dataset: &str) -> hdf5::Result<()> {
    let parts: Vec<&str> = dataset.split('/').filter(|p| !p.is_empty()).collect();
    let mut path = String::new();
    for p in &parts[..parts.len().saturating_sub(1)] {
        path.push('/');
        path.push_str(p);
        if !f.link_exists(&path) {
            f.create_group(&path)?;
        }
    }
    Ok(())
}

/// Writes one dataset atomically (see [`Writer`]).
pub fn write_dataset<T: Element>(
    file: impl AsRef<Path>,
    dataset: &str,
    shape: &[usize],
    data: &[T],
    gzip: bool,
) -> Result<()> {
    let mut w = Writer::create(file)?;
    w.add(dataset, shape, data, gzip)?;
    w.commit()
}

// Region reads and writes for the volume dispatcher (`volume::io`).

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

fn read_region_as<T: Element>(
    ds: &hdf5::Dataset,
    ctx: &str,
    offset: &[usize],
    shape: &[usize],
) -> Result<Vec<T>> {
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
    convert_stored::<T>(ctx, stored)
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

/// An HDF5 dataset open for region reads.
struct Hdf5Reader {
    ds: hdf5::Dataset,
    ctx: String,
}

/// Opens `file:dataset` for the dispatcher; `spec` names the volume in errors.
pub(crate) fn open_volume(spec: &str, file: &Path, dataset: Option<&str>) -> Result<Opened> {
    let Some(dataset) = dataset else {
        let names = list_datasets(file)?;
        return Err(Error::Invalid(format!(
            "'{spec}': no dataset named; add ':/DATASET' to the file name; datasets in this file: {}",
            if names.is_empty() { "none".to_string() } else { names.join(", ") }
        )));
    };
    // Validates file and dataset with this module's messages (missing file, names of the
    // datasets that do exist, group instead of dataset).
    let shape = dataset_shape(file, dataset)?;
    let ctx = format!("{}:{dataset}", file.display());
    let f = hdf5::File::open(file).map_err(|e| h5err(&ctx, "cannot open as HDF5", e))?;
    let ds = f
        .dataset(dataset)
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
    h5_check_storage(&ds, &ctx, file, &shape, desc.size())?;
    let voxel_size = h5_voxel_size(&ds);
    Ok(Opened {
        shape,
        dtype,
        voxel_size,
        offset_nm: None,
        reader: Box::new(Hdf5Reader { ds, ctx }),
    })
}

impl FormatReader for Hdf5Reader {
    /// Converts from the stored type straight to `want`, so that signed datasets read wherever
    /// their values fit.
    fn read_region(&self, offset: &[usize], shape: &[usize], want: Dtype) -> Result<AnyArray> {
        let (ds, ctx) = (&self.ds, self.ctx.as_str());
        let s = shape.to_vec();
        Ok(match want {
            Dtype::U8 => Array::new(s, read_region_as::<u8>(ds, ctx, offset, shape)?)?.into(),
            Dtype::U16 => Array::new(s, read_region_as::<u16>(ds, ctx, offset, shape)?)?.into(),
            Dtype::U32 => Array::new(s, read_region_as::<u32>(ds, ctx, offset, shape)?)?.into(),
            Dtype::U64 => Array::new(s, read_region_as::<u64>(ds, ctx, offset, shape)?)?.into(),
            Dtype::F16 | Dtype::F32 => {
                Array::new(s, read_region_as::<f32>(ds, ctx, offset, shape)?)?.into()
            }
            Dtype::F64 => Array::new(s, read_region_as::<f64>(ds, ctx, offset, shape)?)?.into(),
        })
    }
}

/// A dataset written into a temporary copy of the file, renamed over it at `finish`.
struct Hdf5VolumeWriter {
    target: PathBuf,
    tmp: PathBuf,
    spec: String,
    file: Option<hdf5::File>,
    ds: Option<hdf5::Dataset>,
}

pub(crate) fn create_volume(
    file: PathBuf,
    dataset: &str,
    req: &WriteRequest,
) -> Result<Box<dyn FormatWriter>> {
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
        let ds = h5_create_dataset(&f, dataset, req, &ctx)?;
        Ok((f, ds))
    })();
    match made {
        Ok((f, ds)) => Ok(Box::new(Hdf5VolumeWriter {
            target: file,
            tmp,
            spec: ctx,
            file: Some(f),
            ds: Some(ds),
        })),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

impl FormatWriter for Hdf5VolumeWriter {
    fn write_region(&mut self, offset: &[usize], data: &AnyArray) -> Result<()> {
        let spec = &self.spec;
        let ds = self
            .ds
            .as_ref()
            .ok_or_else(|| Error::Io(format!("{spec}: closed")))?;
        let sel = h5_selection(offset, data.shape());
        any_one!(data, |a| {
            let view = ndarray::ArrayViewD::from_shape(ndarray::IxDyn(&a.shape), &a.data)
                .map_err(|e| Error::shape("write_region", format!("{spec}: {e}")))?;
            ds.as_writer()
                .write_slice(view, sel)
                .map_err(|e| h5err(spec, "writing a region", e))
        })
    }

    fn finish(&mut self) -> Result<()> {
        // While the dataset is open: closing it flushes its chunk cache and drops errors.
        if let Some(f) = self.file.as_ref() {
            f.flush().map_err(|e| h5err(&self.spec, "flushing", e))?;
        }
        self.ds.take();
        if let Some(f) = self.file.take() {
            close_synced(f, &self.tmp, &self.spec)?;
        }
        std::fs::rename(&self.tmp, &self.target).map_err(|e| io_err(&self.target, e))
    }

    fn discard(&mut self) {
        self.ds.take();
        self.file.take();
        let _ = std::fs::remove_file(&self.tmp);
    }
}

fn h5_create_dataset(
    f: &hdf5::File,
    dataset: &str,
    req: &WriteRequest,
    ctx: &str,
) -> Result<hdf5::Dataset> {
    let (shape, chunks, dtype, opt) = (req.shape, req.chunks, req.dtype, req.opt);
    let e = |e: hdf5::Error| h5err(ctx, "creating the dataset", e);
    if f.link_exists(dataset) {
        f.unlink(dataset).map_err(e)?;
    }
    ensure_parents(f, dataset).map_err(e)?;
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
        Dtype::F16 => {
            return Err(Error::Invalid(format!(
                "{ctx}: HDF5 volumes are not written as float16; choose float32 or uint8"
            )))
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("revseg-h5-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn round_trip_every_type_with_and_without_gzip() {
        let d = tmpdir("rt");
        let p = d.join("a.h5");
        let shape = [2usize, 3, 5];
        let u: Vec<u32> = (0..30).map(|i| i * 7 + 1).collect();
        let f: Vec<f32> = (0..30).map(|i| i as f32 * 0.25 - 1.0).collect();
        write_dataset(&p, "/labels/u", &shape, &u, true).unwrap();
        write_dataset(&p, "f", &shape, &f, false).unwrap();
        // The second write kept the first dataset (the file is updated, not replaced).
        let (s, back) = read_dataset::<u32>(&p, "/labels/u").unwrap();
        assert_eq!((s, back), (shape.to_vec(), u.clone()));
        assert_eq!(read_dataset::<f32>(&p, "/f").unwrap().1, f);
        // Lossless widening.
        let wide: Vec<u64> = read_dataset::<u64>(&p, "/labels/u").unwrap().1;
        assert_eq!(wide[29], 29 * 7 + 1);
        assert_eq!(read_dataset::<f64>(&p, "f").unwrap().1[1], -0.75);
        // u32 values up to 204 fit u8 exactly.
        assert_eq!(read_dataset::<u8>(&p, "/labels/u").unwrap().1[29], 204);
        assert_eq!(
            list_datasets(&p).unwrap(),
            vec!["/f".to_string(), "/labels/u".to_string()]
        );
        let leftovers: Vec<_> = std::fs::read_dir(&d).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "temporary file left behind");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn lossy_reads_are_refused_with_the_reason() {
        let d = tmpdir("lossy");
        let p = d.join("a.h5");
        write_dataset(&p, "big", &[2], &[5u32, 300], false).unwrap();
        {
            // int64 is not an Element (we never write it), so it is made with the crate directly.
            let f = hdf5::File::append(&p).unwrap();
            let ds = f.new_dataset::<i64>().shape([2]).create("neg").unwrap();
            ds.write_raw(&[3i64, -1]).unwrap();
        }
        write_dataset(&p, "flt", &[1], &[0.5f64], false).unwrap();
        let e = read_dataset::<u8>(&p, "big").unwrap_err().to_string();
        assert!(e.contains("300") && e.contains("index 1"), "{e}");
        let e = read_dataset::<u32>(&p, "neg").unwrap_err().to_string();
        assert!(e.contains("-1") && e.contains("int64"), "{e}");
        let e = read_dataset::<f32>(&p, "flt").unwrap_err().to_string();
        assert!(e.contains("float64") && e.contains("float32"), "{e}");
        let e = read_dataset::<u64>(&p, "neg").unwrap_err().to_string();
        assert!(e.contains("-1"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn missing_file_dataset_and_wrong_rank_are_named() {
        let d = tmpdir("missing");
        let p = d.join("a.h5");
        let e = read_dataset::<u32>(&p, "x").unwrap_err().to_string();
        assert!(e.contains("a.h5") && e.contains("no such file"), "{e}");
        write_dataset(&p, "/g/seg", &[2, 2], &[1u32, 2, 3, 4], false).unwrap();
        let e = read_dataset::<u32>(&p, "/g/sge").unwrap_err().to_string();
        assert!(e.contains("/g/sge") && e.contains("/g/seg"), "{e}");
        let e = read_dataset::<u32>(&p, "/g").unwrap_err().to_string();
        assert!(e.contains("is a group"), "{e}");
        let e = read_volume::<u32>(&p, "/g/seg", 3, "segmentation")
            .unwrap_err()
            .to_string();
        assert!(e.contains("3 dimensions") && e.contains("[2, 2]"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn failed_write_leaves_target_untouched() {
        let d = tmpdir("fail");
        let p = d.join("a.h5");
        write_dataset(&p, "keep", &[1], &[9u8], false).unwrap();
        let before = std::fs::read(&p).unwrap();
        let e = write_dataset(&p, "bad", &[3], &[1u8, 2], false).unwrap_err();
        assert!(matches!(e, Error::Shape { .. }));
        assert_eq!(std::fs::read(&p).unwrap(), before);
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1);
        std::fs::remove_dir_all(&d).unwrap();
    }
}

//! Blockwise jobs over chunked (zarr) volumes, the way daisy and chunkflow split a volume too
//! large for one machine: the output is divided into blocks, each a whole number of output
//! chunks, so that no two blocks write the same chunk and any number of workers can run at once
//! without coordinating. A block is marked done (a marker file beside the array) only after its
//! chunks are durable; a worker killed at any moment loses at most its unfinished blocks, and
//! rerunning the job skips the done ones. Worker `I/N` takes blocks I, I + N, I + 2N, ... so a
//! Slurm array runs the same command with `--worker $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT`.

pub mod agglomerate;
pub mod fragments;
pub mod graph;
pub mod predict;
pub mod relabel;
pub mod segjob;
pub mod slurm;

use crate::error::{Error, Result};
use crate::volume::array::Dtype;
use crate::volume::io::VolumeSpec;
use crate::volume::zarr::{CreateOptions, ZarrArray};
use clap::Args;
use std::path::{Path, PathBuf};

/// How a command runs blockwise; all absent means the one-process path.
#[derive(Args, Debug, Clone, Default)]
pub struct BlockArgs {
    /// Work block by block (resumable; the output must be zarr): block shape Z,Y,X, a multiple
    /// of the output chunks.
    #[arg(long)]
    pub block: Option<String>,
    /// Output chunk shape Z,Y,X for blockwise output (default: the block shape).
    #[arg(long)]
    pub block_chunks: Option<String>,
    /// Do only blocks I, I+N, I+2N, ... of the job (0 <= I < N), e.g.
    /// $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT.
    #[arg(long)]
    pub worker: Option<String>,
    /// Run the job as K local worker processes and wait for them.
    #[arg(long)]
    pub workers: Option<usize>,
}

impl BlockArgs {
    pub fn active(&self) -> bool {
        self.block.is_some() || self.worker.is_some() || self.workers.is_some()
    }
}

/// `I/N`: this worker's index and the number of workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerSlice {
    pub index: usize,
    pub count: usize,
}

impl WorkerSlice {
    pub const ALL: WorkerSlice = WorkerSlice { index: 0, count: 1 };

    pub fn parse(s: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::Invalid(format!(
                "--worker {s}: {why}; expected I/N with 0 <= I < N, e.g. 0/4"
            ))
        };
        let (i, n) = s.split_once('/').ok_or_else(|| bad("no '/'"))?;
        let index: usize = i.trim().parse().map_err(|_| bad("I is not a number"))?;
        let count: usize = n.trim().parse().map_err(|_| bad("N is not a number"))?;
        if count == 0 || index >= count {
            return Err(bad("I must be below N"));
        }
        Ok(WorkerSlice { index, count })
    }

    pub fn owns(&self, block: usize) -> bool {
        block % self.count == self.index
    }
}

/// `Z,Y,X` of positive integers.
pub fn parse_zyx(flag: &str, s: &str) -> Result<[usize; 3]> {
    let v: Vec<usize> = s
        .split(',')
        .map(|p| p.trim().parse::<usize>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| {
            Error::Invalid(format!(
                "{flag} {s}: expected Z,Y,X of positive integers, e.g. 32,256,256"
            ))
        })?;
    match v[..] {
        [z, y, x] if z > 0 && y > 0 && x > 0 => Ok([z, y, x]),
        _ => Err(Error::Invalid(format!(
            "{flag} {s}: expected three positive integers Z,Y,X"
        ))),
    }
}

/// The blocks of a (z, y, x) volume, numbered in C order; edge blocks are cut by the volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockGrid {
    pub shape: [usize; 3],
    pub block: [usize; 3],
}

impl BlockGrid {
    /// `block` must be a multiple of `chunk` on every axis, so that blocks own whole chunks.
    pub fn new(shape: [usize; 3], block: [usize; 3], chunk: [usize; 3]) -> Result<Self> {
        for a in 0..3 {
            if chunk[a] == 0 || block[a] % chunk[a] != 0 {
                return Err(Error::Invalid(format!(
                    "block {block:?} is not a multiple of the output chunks {chunk:?} on axis {a}; choose a block made of whole chunks"
                )));
            }
        }
        Ok(BlockGrid { shape, block })
    }

    pub fn counts(&self) -> [usize; 3] {
        [0, 1, 2].map(|a| self.shape[a].div_ceil(self.block[a]))
    }

    pub fn len(&self) -> usize {
        self.counts().iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Offset and shape of block `i`.
    pub fn get(&self, i: usize) -> ([usize; 3], [usize; 3]) {
        let c = self.counts();
        let idx = [i / (c[1] * c[2]), i / c[2] % c[1], i % c[2]];
        let off = [0, 1, 2].map(|a| idx[a] * self.block[a]);
        let size = [0, 1, 2].map(|a| self.block[a].min(self.shape[a] - off[a]));
        (off, size)
    }
}

/// The done markers of one job: `DIR/job.json` says what the job computes, `DIR/N.done` that
/// block N is durable.
pub struct DoneMarks {
    dir: PathBuf,
}

impl DoneMarks {
    /// Opens (or starts) the marks in `dir` for the job described by `job`; a folder holding
    /// another job's marks is refused, since its done blocks are not this job's.
    pub fn open(dir: &Path, job: &serde_json::Value) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| crate::volume::array::io_err(dir, e))?;
        let manifest = dir.join("job.json");
        let text = format!("{job}\n");
        match std::fs::read_to_string(&manifest) {
            Ok(old) if old == text => {}
            Ok(old) => {
                return Err(Error::Invalid(format!(
                    "{}: the output belongs to another job ({}); this one is {}; remove the output to start afresh",
                    manifest.display(),
                    old.trim(),
                    text.trim()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                crate::volume::array::write_file_atomic(&manifest, |w| {
                    use std::io::Write;
                    w.write_all(text.as_bytes())
                        .map_err(|e| crate::volume::array::io_err(&manifest, e))
                })?;
            }
            Err(e) => return Err(crate::volume::array::io_err(&manifest, e)),
        }
        Ok(DoneMarks {
            dir: dir.to_path_buf(),
        })
    }

    fn marker(&self, block: usize) -> PathBuf {
        self.dir.join(format!("{block}.done"))
    }

    pub fn is_done(&self, block: usize) -> bool {
        self.marker(block).exists()
    }

    /// Records block `block` as done; call only once its chunks are durable.
    pub fn mark(&self, block: usize) -> Result<()> {
        let m = self.marker(block);
        crate::volume::array::write_file_renamed(&m, |_| Ok(()), true)?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| crate::volume::array::io_err(&self.dir, e))
    }

    pub fn count_done(&self, n: usize) -> usize {
        (0..n).filter(|&b| self.is_done(b)).count()
    }
}

/// The zarr array directory an output spec names, or why blockwise output needs zarr.
pub fn zarr_target(spec: &str) -> Result<PathBuf> {
    match VolumeSpec::parse(spec)? {
        VolumeSpec::Zarr { path } => Ok(path),
        _ => Err(Error::Invalid(format!(
            "--output {spec}: blockwise jobs write zarr (DIR.zarr or DIR.zarr/PATH), whose chunks workers can write independently"
        ))),
    }
}

/// Opens the output array, creating it first when no worker has: built in a temporary
/// directory and renamed into place, so that of several workers starting at once one wins and
/// the others open its array.
pub fn open_or_create(
    path: &Path,
    shape: &[usize],
    chunks: &[usize],
    dtype: Dtype,
    co: &CreateOptions,
) -> Result<ZarrArray> {
    if !path.join(".zarray").exists() && !path.join("zarr.json").exists() {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| crate::volume::array::io_err(parent, e))?;
        }
        let tmp = crate::volume::io::temp_beside(path, "partial")?;
        let made = ZarrArray::create_with(&tmp, shape, chunks, dtype, co).and_then(|_| {
            crate::volume::zarr::write_zarr_groups(
                path,
                co.version,
                co.voxel_size.map(|v| (v, co.offset_nm)),
            )
        });
        if let Err(e) = made {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        if std::fs::rename(&tmp, path).is_err() {
            // Another worker's array got there first (or the target is not ours to replace;
            // opening it below says which).
            let _ = std::fs::remove_dir_all(&tmp);
        }
    }
    let z = ZarrArray::open(path)?;
    if z.shape != shape || z.chunks != chunks || z.dtype != dtype {
        return Err(Error::Invalid(format!(
            "{}: holds shape {:?}, chunks {:?}, {} but this job writes {shape:?}, {chunks:?}, {dtype}; remove it or choose another --output",
            path.display(),
            z.shape,
            z.chunks,
            z.dtype
        )));
    }
    z.durable()
}

/// Runs this program again as `k` worker processes (`--worker i/k` replacing `--workers k`) and
/// waits for all of them; any failure is reported with the worker's exit status.
pub fn run_local_workers(k: usize) -> Result<()> {
    run_local_workers_with(k, &[])
}

/// [`run_local_workers`] with flags replaced in the workers' command lines: each
/// `(flag, value)` drops the flag's occurrences (`--flag V` or `--flag=V`) and appends
/// `--flag value`, so that one command can run a pipeline stage by stage.
pub fn run_local_workers_with(k: usize, replace: &[(&str, &str)]) -> Result<()> {
    if k == 0 {
        return Err(Error::Invalid("--workers must be at least 1".into()));
    }
    let exe = std::env::current_exe()
        .map_err(|e| Error::Io(format!("cannot find this program to start workers: {e}")))?;
    let mut args: Vec<String> = Vec::new();
    let mut it = std::env::args().skip(1);
    let dropped = |a: &str| {
        std::iter::once("--workers")
            .chain(replace.iter().map(|r| r.0))
            .find(|f| a == *f || a.starts_with(&format!("{f}=")))
            .map(|f| a == f)
    };
    while let Some(a) = it.next() {
        match dropped(&a) {
            Some(true) => {
                it.next();
            }
            Some(false) => {}
            None => args.push(a),
        }
    }
    for (f, v) in replace {
        args.push(f.to_string());
        args.push(v.to_string());
    }
    let mut children = Vec::new();
    for i in 0..k {
        let c = std::process::Command::new(&exe)
            .args(&args)
            .arg("--worker")
            .arg(format!("{i}/{k}"))
            .spawn()
            .map_err(|e| Error::Io(format!("cannot start worker {i}/{k}: {e}")))?;
        children.push(c);
    }
    let mut failed = Vec::new();
    for (i, mut c) in children.into_iter().enumerate() {
        let st = c
            .wait()
            .map_err(|e| Error::Io(format!("worker {i}/{k}: {e}")))?;
        if !st.success() {
            failed.push(format!("{i}/{k} ({st})"));
        }
    }
    if !failed.is_empty() {
        return Err(Error::Io(format!(
            "workers {} failed; their done blocks are kept: rerun the same command to finish the rest",
            failed.join(", ")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_cuts_edges_and_numbers_in_c_order() {
        let g = BlockGrid::new([10, 7, 5], [4, 4, 4], [2, 2, 4]).unwrap();
        assert_eq!(g.counts(), [3, 2, 2]);
        assert_eq!(g.len(), 12);
        assert_eq!(g.get(0), ([0, 0, 0], [4, 4, 4]));
        assert_eq!(g.get(11), ([8, 4, 4], [2, 3, 1]));
        assert_eq!(g.get(5), ([4, 0, 4], [4, 4, 1]));
        // Every voxel in exactly one block.
        let mut seen = vec![0u8; 10 * 7 * 5];
        for b in 0..g.len() {
            let (o, s) = g.get(b);
            for z in o[0]..o[0] + s[0] {
                for y in o[1]..o[1] + s[1] {
                    for x in o[2]..o[2] + s[2] {
                        seen[(z * 7 + y) * 5 + x] += 1;
                    }
                }
            }
        }
        assert!(seen.iter().all(|&c| c == 1));
        assert!(BlockGrid::new([10, 7, 5], [3, 4, 4], [2, 2, 4]).is_err());
    }

    #[test]
    fn worker_slices_partition_the_blocks() {
        let w = WorkerSlice::parse("1/3").unwrap();
        assert_eq!((w.index, w.count), (1, 3));
        let owned: Vec<usize> = (0..8).filter(|&b| w.owns(b)).collect();
        assert_eq!(owned, vec![1, 4, 7]);
        for bad in ["3/3", "1", "a/2", "0/0"] {
            assert!(WorkerSlice::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn marks_refuse_another_job() {
        let d = std::env::temp_dir().join(format!("revseg-marks-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let m = DoneMarks::open(&d, &serde_json::json!({"a": 1})).unwrap();
        assert!(!m.is_done(3));
        m.mark(3).unwrap();
        let again = DoneMarks::open(&d, &serde_json::json!({"a": 1})).unwrap();
        assert!(again.is_done(3) && again.count_done(5) == 1);
        let e = DoneMarks::open(&d, &serde_json::json!({"a": 2}))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("another job"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }
}

//! Volumes on disk: HDF5 datasets named by `file.h5:/path/to/dataset` specs.

// Per-dtype dispatch over `AnyArray`, shared by the format modules declared below.
macro_rules! any_pair {
    ($a:expr, $b:expr, |$x:ident, $y:ident| $e:expr, $else:expr) => {
        match ($a, $b) {
            ($crate::volume::array::AnyArray::U8($x), $crate::volume::array::AnyArray::U8($y)) => {
                $e
            }
            (
                $crate::volume::array::AnyArray::U16($x),
                $crate::volume::array::AnyArray::U16($y),
            ) => $e,
            (
                $crate::volume::array::AnyArray::U32($x),
                $crate::volume::array::AnyArray::U32($y),
            ) => $e,
            (
                $crate::volume::array::AnyArray::U64($x),
                $crate::volume::array::AnyArray::U64($y),
            ) => $e,
            (
                $crate::volume::array::AnyArray::F32($x),
                $crate::volume::array::AnyArray::F32($y),
            ) => $e,
            (
                $crate::volume::array::AnyArray::F64($x),
                $crate::volume::array::AnyArray::F64($y),
            ) => $e,
            _ => $else,
        }
    };
}

macro_rules! any_one {
    ($a:expr, |$x:ident| $e:expr) => {
        match $a {
            $crate::volume::array::AnyArray::U8($x) => $e,
            $crate::volume::array::AnyArray::U16($x) => $e,
            $crate::volume::array::AnyArray::U32($x) => $e,
            $crate::volume::array::AnyArray::U64($x) => $e,
            $crate::volume::array::AnyArray::F32($x) => $e,
            $crate::volume::array::AnyArray::F64($x) => $e,
        }
    };
}

pub mod array;
pub mod hdf5;
pub mod io;
pub mod png;
pub mod raw;
pub mod tiff;
pub mod zarr;

use crate::error::{Error, Result};
use std::path::PathBuf;

/// An HDF5 file and a dataset path inside it, as given on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatasetSpec {
    pub file: PathBuf,
    pub dataset: String,
}

impl std::fmt::Display for DatasetSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.dataset)
    }
}

/// Parse `file.h5:/dataset/path`. The split is at the last ':' so that a file name may hold one
/// (dataset names with ':' are rare in EM data; file names with one occur in timestamps).
pub fn parse_spec(s: &str) -> Result<DatasetSpec> {
    let bad = |why: &str| {
        Error::Invalid(format!(
            "'{s}': {why}; expected FILE:DATASET, e.g. volume.h5:/volumes/labels/neuron_ids"
        ))
    };
    let (file, dataset) = s
        .rsplit_once(':')
        .ok_or_else(|| bad("no ':' before the dataset"))?;
    let dataset = dataset.trim_start_matches('/');
    if file.is_empty() {
        return Err(bad("empty file name"));
    }
    if dataset.is_empty() || dataset.ends_with('/') {
        return Err(bad("empty dataset path"));
    }
    Ok(DatasetSpec {
        file: PathBuf::from(file),
        dataset: format!("/{dataset}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_splits_at_last_colon_and_roots_the_path() {
        let s = parse_spec("run:12/out.h5:volumes/raw").unwrap();
        assert_eq!(s.file, PathBuf::from("run:12/out.h5"));
        assert_eq!(s.dataset, "/volumes/raw");
        assert_eq!(parse_spec("a.h5:/main").unwrap().dataset, "/main");
    }

    #[test]
    fn spec_without_dataset_is_rejected() {
        assert!(parse_spec("a.h5").is_err());
        assert!(parse_spec("a.h5:").is_err());
        assert!(parse_spec("a.h5:/").is_err());
        assert!(parse_spec(":/main").is_err());
    }
}

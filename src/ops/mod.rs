//! One module per op family: shapes, validation, FLOP counts and hyper-parameters. The same names are
//! used by the CPU code (`backend/cpu/<op>.rs`) and, for the CUDA backend, by `kernels/<op>.cu`.

pub mod batchnorm;
pub mod conv3d;
pub mod conv_transpose;
pub mod coupling;
pub mod elementwise;
pub mod loss;
pub mod maxpool;
pub mod optim;

use crate::error::{Error, Result};
use crate::tensor::Shape5;

pub(crate) fn same_shape(op: &'static str, what: &str, a: Shape5, b: Shape5) -> Result<()> {
    if a != b {
        return Err(Error::shape(op, format!("{what}: {a} vs {b}")));
    }
    Ok(())
}

pub(crate) fn vector_len(op: &'static str, what: &str, len: usize, want: usize) -> Result<()> {
    if len != want {
        return Err(Error::shape(
            op,
            format!("{what} has {len} values, expected {want} (one per channel)"),
        ));
    }
    Ok(())
}

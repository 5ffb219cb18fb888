//! revseg: the reversible residual symmetric U-Net for EM neuron segmentation, with its own kernels.
//!
//! Map of the crate: docs/ARCHITECTURE.md.

pub mod alloc;
pub mod backend;
pub mod bench;
pub mod blocks;
pub mod checkpoint;
pub mod cli;
pub mod curves;
pub mod error;
pub mod fsutil;
pub mod gradcheck;
pub mod json;
pub mod metrics;
pub mod model;
pub mod nvtx;
pub mod ops;
pub mod plot;
pub mod precision;
pub mod predict;
pub mod render;
pub mod rng;
pub mod scheduler;
pub mod segment;
pub mod synth;
pub mod tensor;
pub mod train;
pub mod volume;

pub use backend::{cpu::CpuBackend, Backend, Region, View, Write};
pub use error::{Error, Result};
pub use tensor::{Element, Shape5, Tensor};

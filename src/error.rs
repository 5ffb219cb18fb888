//! Typed errors of the library. The binary turns them into one or two lines that say what to do.

use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// Two tensors that an op combines disagree in shape.
    Shape {
        op: &'static str,
        detail: String,
    },
    /// A region lies outside its arena, or an output region overlaps an input it must not.
    Region {
        op: &'static str,
        detail: String,
    },
    /// A value that must be finite, positive, in range, ... is not.
    Value {
        what: String,
        detail: String,
    },
    /// A device was asked for that this build or this machine does not have.
    Device(String),
    /// Anything the user asked for that cannot be done as asked.
    Invalid(String),
    Io(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn shape(op: &'static str, detail: impl Into<String>) -> Self {
        Error::Shape {
            op,
            detail: detail.into(),
        }
    }
    pub fn region(op: &'static str, detail: impl Into<String>) -> Self {
        Error::Region {
            op,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Shape { op, detail } => write!(f, "{op}: shape mismatch: {detail}"),
            Error::Region { op, detail } => write!(f, "{op}: bad buffer region: {detail}"),
            Error::Value { what, detail } => write!(f, "{what}: {detail}"),
            Error::Device(d) => write!(f, "{d}"),
            Error::Invalid(d) => write!(f, "{d}"),
            Error::Io(d) => write!(f, "{d}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e.to_string())
    }
}

//! The runtime: host [`Tensor`]s, the reference interpreter ([`interp::run`]), weights and
//! inputs in safetensors files, and seeded random initialisation. It never compiles.
#![deny(clippy::unwrap_used, clippy::expect_used)]

mod checkpoint;
mod fourier;
mod fused;
pub mod interp;
mod io;
mod tensor;

pub use checkpoint::{bind_checkpoint, Bound};
pub use interp::{concrete, cumsum, run, segment, window, Dims};
pub use io::{bind_dims, random_inputs, random_params, read_safetensors, write_safetensors};
pub use tensor::{broadcast_offsets, strides, Data, Tensor};

/// Errors while running a graph or reading its tensors. Every one names the tensor or the
/// source location concerned.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// An input or parameter the graph needs was not provided.
    #[error("missing {kind} `{name}`")]
    Missing {
        /// "input" or "parameter".
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// A provided tensor has the wrong shape or dtype.
    #[error("{kind} `{name}` should be {expected} but is {got}")]
    BadTensor {
        /// "input" or "parameter".
        kind: &'static str,
        /// Its name.
        name: String,
        /// Declared type.
        expected: String,
        /// Provided type.
        got: String,
    },
    /// A tensor was provided that the model does not declare.
    #[error("the model has no {kind} named `{name}`")]
    Unknown {
        /// "input" or "parameter".
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// A symbolic dimension has no value.
    #[error("dimension `{0}` has no value: pass it with --dim {0}=N or give an input that fixes it")]
    UnboundDim(String),
    /// Two inputs disagree on a dimension.
    #[error("{0}")]
    Shape(String),
    /// A gather index outside its table.
    #[error("index {index} is out of range for an axis of size {size} (at {at})")]
    IndexOutOfRange {
        /// The bad index.
        index: i64,
        /// The axis size.
        size: usize,
        /// Where the gather came from.
        at: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {msg}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        msg: String,
    },
    /// A checkpoint that does not fit the model: every problem found, one per line.
    #[error("{path} does not fit the model:\n  {}", errors.join("\n  "))]
    Checkpoint {
        /// The checkpoint file.
        path: String,
        /// One message per problem, each naming the parameter and the checkpoint tensor.
        errors: Vec<String>,
    },
    /// The device failed or is missing (no GPU, out of device memory, ...).
    #[error("{0}")]
    Device(String),
    /// A bug in Tessera.
    #[error("internal error: {0}")]
    Internal(String),
}

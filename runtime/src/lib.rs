//! The runtime: host [`Tensor`]s, the reference interpreter ([`interp::run`]), weights and
//! inputs in safetensors files, and seeded random initialisation. It never compiles.
#![deny(clippy::unwrap_used, clippy::expect_used)]

mod checkpoint;
mod fourier;
mod fused;
pub mod interp;
mod io;
mod route;
mod tensor;

pub use checkpoint::{bind_checkpoint, Bound};
pub use interp::{concrete, cumsum, memory_estimate, run, scan_steps, segment, window, Dims, MemoryEstimate, MAX_ELEMENTS};
pub use io::{bind_dims, check_indices, random_inputs, random_params, read_safetensors, write_safetensors};
pub use route::{route_rows, topk, Routing};
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
    /// A run would need more memory than its budget: refused before allocating.
    #[error("this run needs about {} ({}), more than the memory budget of {} (set it with --max-memory)", human_bytes(*need), parts, human_bytes(*budget))]
    Memory {
        /// Bytes needed at the peak.
        need: u128,
        /// What they are: parameters, inputs, intermediates.
        parts: String,
        /// The budget.
        budget: u128,
    },
    /// The device failed or is missing (no GPU, out of device memory, ...).
    #[error("{0}")]
    Device(String),
    /// A bug in Tessera.
    #[error("internal error: {0}")]
    Internal(String),
}

/// A byte count for people: `1.5 GiB`.
pub fn human_bytes(n: u128) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

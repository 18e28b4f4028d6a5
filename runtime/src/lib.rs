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
    /// Two inputs disagree on a size.
    #[error("input `{input}` gives {name} = {value}, but {name} = {other} elsewhere")]
    DimConflict {
        /// The input that disagrees.
        input: String,
        /// The size's name.
        name: String,
        /// The value this input gives.
        value: i64,
        /// The value given before.
        other: i64,
    },
    /// A size that the program cuts into blocks is not a multiple of the block.
    #[error("{name} = {value} is not a multiple of {block}: the program cuts {name} into blocks of {block} (a size {dim})")]
    NotMultiple {
        /// The size's name.
        name: String,
        /// Its value.
        value: i64,
        /// The block.
        block: i64,
        /// The size expression that cuts it.
        dim: String,
    },
    /// A size expression that evaluates below zero.
    #[error("dimension {dim} evaluates to {value}")]
    NegativeSize {
        /// The size expression.
        dim: String,
        /// Its value.
        value: i64,
    },
    /// A tensor of more than [`MAX_ELEMENTS`] elements.
    #[error("a tensor of shape [{}]{} would hold more than {MAX_ELEMENTS} elements", list(shape), symbolic.as_ref().map_or_else(String::new, |s| format!(" ([{s}])")))]
    TooLarge {
        /// Its sizes.
        shape: Vec<usize>,
        /// Its symbolic shape, where it differs.
        symbolic: Option<String>,
    },
    /// A slice reaching outside its axis.
    #[error("slice from {start} by {step} of {len} is out of range for size {size}")]
    SliceOutOfRange {
        /// The first index.
        start: i64,
        /// The stride.
        step: i64,
        /// How many elements it takes.
        len: usize,
        /// The axis size.
        size: usize,
    },
    /// A top-k taking more elements than its axis holds.
    #[error("top-{k} of {n} elements along axis {axis}")]
    TopK {
        /// How many it takes.
        k: usize,
        /// How many there are.
        n: usize,
        /// The axis.
        axis: usize,
    },
    /// An index input pointing outside the table it gathers from.
    #[error("input `{input}` holds {value} at [{}], outside the {rows} rows of {table} that it indexes{at}", list(position))]
    IndexInput {
        /// The input.
        input: String,
        /// The bad value.
        value: f64,
        /// Where it is in the input.
        position: Vec<usize>,
        /// The table's rows.
        rows: i64,
        /// The table (a parameter's name, or "the table").
        table: String,
        /// Where the gather is (`, gathered at …`), or nothing.
        at: String,
    },
    /// More positions (an `iota`) than the rows of the table they index.
    #[error("{len} positions{named} are more than the {rows} rows of {table}{at}")]
    TooManyPositions {
        /// How many positions.
        len: i64,
        /// Their size expression (` (seq = 9)`), where it is not a number.
        named: String,
        /// The table's rows.
        rows: i64,
        /// The table.
        table: String,
        /// Where the gather is, or nothing.
        at: String,
    },
    /// A parameter initialiser that cannot be sampled.
    #[error("parameter `{name}`: init normal({std}) needs a finite standard deviation")]
    BadInit {
        /// The parameter.
        name: String,
        /// The standard deviation given.
        std: f64,
    },
    /// A carried input (generation's state on a device) given without data and without a copy.
    #[error("input `{name}` has no data and no copy of its shape {shape:?} on this device")]
    NoCarriedCopy {
        /// The input.
        name: String,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// A size given on the command line (`--dim KEY=VALUE`) that is not one.
    #[error("--dim {key}={value}: {why}")]
    DimFlag {
        /// The size's name.
        key: String,
        /// What was given.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A size given that the model never mentions.
    #[error("--dim {key}: the model has no size `{key}` (its sizes: {known})")]
    UnknownDim {
        /// The size's name.
        key: String,
        /// The model's sizes, or "none".
        known: String,
    },
    /// A file of inputs that lacks some the model declares.
    #[error("{file} lacks the input{} {} that the model declares (give every input, or none to run on random ones)", if names.len() > 1 { "s" } else { "" }, names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", "))]
    MissingInputs {
        /// The file.
        file: String,
        /// The inputs it lacks.
        names: Vec<String>,
    },
    /// One of the errors above at an op of the program: the op and its source location.
    #[error("{inner} ({at})")]
    At {
        /// The error.
        inner: Box<RunError>,
        /// Where: the op and its source location.
        at: String,
    },
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

impl RunError {
    /// This error, said to happen `at` (an op and its source location, made only when
    /// needed): errors about sizes are wrapped in [`RunError::At`] (one already located, in a
    /// scan's or route's body, gets the outer place too), an index out of range takes it as
    /// its place; others (missing tensors, files, bugs) are left as they are.
    pub fn located(self, at: impl FnOnce() -> String) -> RunError {
        match self {
            RunError::IndexOutOfRange { index, size, .. } => RunError::IndexOutOfRange { index, size, at: at() },
            RunError::NotMultiple { .. }
            | RunError::NegativeSize { .. }
            | RunError::TooLarge { .. }
            | RunError::SliceOutOfRange { .. }
            | RunError::TopK { .. }
            | RunError::At { .. } => RunError::At { inner: Box::new(self), at: at() },
            other => other,
        }
    }
}

/// Sizes as a list: `2, 3`.
fn list(sizes: &[usize]) -> String {
    sizes.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ")
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

//! Errors of code generation: a backend that failed to compile a kernel, or one that is not
//! in this build. Every variant is a compiler bug or a build choice, never a user mistake.

/// Why a program could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum CodegenError {
    /// Cranelift rejected a function.
    #[error("cranelift: {0}")]
    Cranelift(String),
    /// LLVM rejected the module or could not make a JIT for this host.
    #[error("llvm: {0}")]
    Llvm(String),
    /// MLIR rejected the module, a lowering failed, or the execution engine could not be made.
    #[error("mlir: {0}")]
    Mlir(String),
    /// The backend is behind a cargo feature that this build does not have.
    #[error("the {backend} backend is not in this build: rebuild with `--features {feature}`")]
    NotBuilt {
        /// The backend's name.
        backend: &'static str,
        /// The cargo feature that enables it.
        feature: &'static str,
    },
    /// An inconsistency of the kernel program.
    #[error("{0}")]
    Internal(String),
}

/// Why a program could not be lowered to CUDA or run on a GPU (`cuda/`).
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// No usable device: no driver, no GPU of that ordinal, a CUDA library missing, or a GPU
    /// too old for what was asked.
    #[error("{0}")]
    NoDevice(String),
    /// The CUDA driver, cuBLAS or cuBLASLt failed a call (out of device memory, a failed
    /// launch, ...).
    #[error("CUDA: {0}")]
    Driver(String),
    /// NVRTC rejected the generated source (a compiler bug): the error and NVRTC's log.
    #[error("NVRTC: {0}")]
    Nvrtc(String),
    /// The CUDA backend does not lower a construct of this program; the CPU backends run it.
    #[error("the CUDA backend does not lower this {what}{at}: {why}; run it with --backend cpu or interp")]
    Unsupported {
        /// The construct (`scan`, `route`).
        what: &'static str,
        /// Where it was written (` (the scan at file:line:col)`), or nothing.
        at: String,
        /// Why not.
        why: Unlowered,
    },
    /// A size beyond what a device API takes (32-bit counts of cuBLAS, a launch's grid).
    #[error("{0}")]
    TooLarge(String),
    /// The inputs or parameters of a run: missing, of the wrong type, or out of range.
    #[error(transparent)]
    Run(#[from] tessera_runtime::RunError),
    /// An inconsistency of the lowered program or of the memory kept between runs (a compiler
    /// bug).
    #[error("internal error: {0}")]
    Internal(String),
}

/// Why the CUDA backend does not lower a scan or a route.
#[derive(Debug, thiserror::Error)]
pub enum Unlowered {
    /// A route whose experts are not feed-forward blocks.
    #[error("it runs experts that are feed-forward blocks, and {0}")]
    Route(crate::route::NotGrouped),
    /// A scan whose body is not fused on the CPU either.
    #[error("its body is not elementwise math over the state ({0})")]
    ScanBody(crate::scan::NotFused),
    /// A scan whose reductions read rows longer than a thread walks (the state's last size).
    #[error("the state's last axis ({0}) is not a constant of at most 1024")]
    ScanRow(String),
}

impl From<GpuError> for tessera_runtime::RunError {
    fn from(e: GpuError) -> Self {
        match e {
            GpuError::Run(e) => e,
            GpuError::Internal(m) => tessera_runtime::RunError::Internal(m),
            e => tessera_runtime::RunError::Device(e.to_string()),
        }
    }
}

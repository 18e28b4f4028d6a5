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

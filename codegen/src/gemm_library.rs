//! Which library computes the CPU's GEMMs of more than four rows (smaller ones stream the
//! weights: `cpu/gemv.rs`). `TESSERA_GEMM` picks: `crate` (the `gemm` crate, pure Rust, the
//! default), `openblas` (feature `openblas`: Debian's libopenblas) or `llvm` (feature `llvm`:
//! the packed GEMM of `cpu/gemm.rs` around LLVM's micro-kernel for the host, `llvm/gemm.rs`).
//! A choice this build lacks falls back to the `gemm` crate. `bench/gemm.py` measures them.

use crate::cpu::gemm::MicroKernel;
use std::sync::OnceLock;

/// A library for GEMMs.
#[derive(Clone, Copy, Debug)]
pub enum Library {
    /// The `gemm` crate.
    Crate,
    /// OpenBLAS's `cblas_sgemm`.
    OpenBlas,
    /// The packed GEMM with a generated micro-kernel.
    Packed(MicroKernel),
}

/// The library of this process's GEMMs (decided once).
pub fn library() -> Library {
    static CHOICE: OnceLock<Library> = OnceLock::new();
    *CHOICE.get_or_init(|| match std::env::var("TESSERA_GEMM").unwrap_or_default().as_str() {
        "openblas" if cfg!(feature = "openblas") => Library::OpenBlas,
        #[cfg(feature = "llvm")]
        "llvm" => crate::llvm::gemm::microkernel().map_or_else(
            |why| {
                eprintln!("warning: TESSERA_GEMM=llvm: no micro-kernel ({why}); GEMMs by the gemm crate");
                Library::Crate
            },
            Library::Packed,
        ),
        _ => Library::Crate,
    })
}

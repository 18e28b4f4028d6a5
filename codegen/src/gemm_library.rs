//! Which library computes the CPU's GEMMs of more than four rows (smaller ones stream the
//! weights: `cpu/gemv.rs`): `crate` (the `gemm` crate, pure Rust), `openblas` (feature
//! `openblas`: Debian's libopenblas) or `llvm` (feature `llvm`: the packed GEMM of
//! `cpu/gemm.rs` around LLVM's micro-kernel for the host, `llvm/gemm.rs`). By default the
//! fastest this build has, as `bench/gemm.py` measured them (bench/RESULTS.md): the LLVM
//! micro-kernel (with weights packed once, equal to or faster than OpenBLAS at every measured
//! shape), then OpenBLAS, then the gemm crate (the only one the default build has, which needs
//! no system library). `TESSERA_GEMM` picks one; a choice this build lacks falls back to the
//! default.

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
    *CHOICE.get_or_init(|| {
        let asked = std::env::var("TESSERA_GEMM").unwrap_or_default();
        match asked.as_str() {
            "crate" => Library::Crate,
            "openblas" if cfg!(feature = "openblas") => Library::OpenBlas,
            "llvm" => llvm(true).unwrap_or(Library::Crate),
            _ => llvm(false).unwrap_or(if cfg!(feature = "openblas") { Library::OpenBlas } else { Library::Crate }),
        }
    })
}

/// The packed GEMM with LLVM's micro-kernel, where this build and this CPU have one; a
/// warning where it was `asked` for and there is none.
fn llvm(asked: bool) -> Option<Library> {
    #[cfg(feature = "llvm")]
    match crate::llvm::gemm::microkernel() {
        Ok(k) => return Some(Library::Packed(k)),
        Err(why) if asked => eprintln!("warning: TESSERA_GEMM=llvm: no micro-kernel ({why}); GEMMs by the gemm crate"),
        Err(_) => {}
    }
    #[cfg(not(feature = "llvm"))]
    if asked {
        eprintln!("warning: TESSERA_GEMM=llvm: this build has no LLVM (feature `llvm`); GEMMs by the gemm crate");
    }
    None
}

//! Which library computes the CPU's GEMMs of more than four rows (smaller ones stream the
//! weights: `cpu/gemv.rs`): `llvm` (feature `llvm`: the packed GEMM of `cpu/gemm.rs` around
//! LLVM's micro-kernel for the host, `llvm/gemm.rs`), `rust` (the same packed GEMM around the
//! `std::arch` micro-kernel of `cpu/ukernel.rs`, picked at run time: AVX-512F or AVX2+FMA),
//! `openblas` (feature `openblas`: Debian's libopenblas) or `crate` (the `gemm` crate, pure
//! Rust, for CPUs with neither). By default the fastest this build has, as `bench/gemm.py`
//! measured them (bench/RESULTS.md): the LLVM micro-kernel (equal to or faster than OpenBLAS
//! at every measured shape), then the Rust one (the default build's, no system library:
//! 7.9 against 13.9 ms for the gemm crate at [512, 768] @ [768, 3072] on this
//! host), then OpenBLAS, then the gemm crate. `TESSERA_GEMM` picks one; a
//! choice this build or CPU lacks falls back to the default.

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
            "openblas" if cfg!(feature = "openblas") => {
                openblas_check();
                Library::OpenBlas
            }
            "llvm" => llvm(true).unwrap_or(Library::Crate),
            "rust" => crate::cpu::ukernel::host().map_or(Library::Crate, Library::Packed),
            _ => llvm(false).or_else(|| crate::cpu::ukernel::host().map(Library::Packed)).unwrap_or(if cfg!(feature = "openblas") {
                Library::OpenBlas
            } else {
                Library::Crate
            }),
        }
    })
}

/// Warns where OpenBLAS runs kernels older than the CPU: an OpenBLAS older than the CPU model
/// (Debian 12's 0.3.21 on an Emerald Rapids Xeon) falls back to its SSE3 `Prescott` kernels,
/// about a quarter of the speed of its AVX-512 ones, unless `OPENBLAS_CORETYPE` names them.
fn openblas_check() {
    #[cfg(all(feature = "openblas", target_arch = "x86_64"))]
    {
        let core = crate::cpu::gemm::openblas_core();
        let old = ["Prescott", "Core2", "Penryn", "Dunnington", "Nehalem", "Atom", "Sandybridge"];
        if old.contains(&core.as_str()) && std::arch::is_x86_feature_detected!("avx2") {
            let wide = if std::arch::is_x86_feature_detected!("avx512f") { "SkylakeX" } else { "Haswell" };
            eprintln!(
                "warning: TESSERA_GEMM=openblas: OpenBLAS chose its {core} kernels for this CPU, which has AVX2{}; \
                 its GEMMs will be several times slower than they can be: set OPENBLAS_CORETYPE={wide}",
                if wide == "SkylakeX" { " and AVX-512" } else { "" }
            );
        }
    }
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

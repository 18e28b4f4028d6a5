//! The CPU backend: the kernel program's elementwise chains and attention score functions
//! compiled with Cranelift ([`cranelift`]), run by the executor ([`Executable`]): one arena
//! laid out by the shared memory plan, GEMMs by the `gemm` crate, the flash-style attention
//! kernel, the fused and chunked scan kernels, the grouped route kernel, threads from rayon.

pub mod attention;
pub mod codegen;
pub mod cranelift;
mod exec;
mod fourier;
pub mod gemm;
mod gemv;
pub mod host;
mod route;
mod scan;
mod scan_chunked;
pub(crate) mod tile_gemm;
pub mod ukernel;
mod vmath;

pub use codegen::Codegen;
pub use exec::{Executable, RunStats};

//! The CPU backend: the optimised IR is scheduled into a kernel [`Program`] ([`schedule`]),
//! whose elementwise chains and attention score functions are compiled with Cranelift
//! ([`jit`]), and run by the [`exec`] module: a memory plan over one arena, GEMMs by the
//! `gemm` crate, a flash-style attention kernel, threads from rayon. [`cuda`] lowers the same
//! program to CUDA C (text), compiled by NVRTC with the `cuda` feature.
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod attention;
pub mod cuda;
#[cfg(feature = "cuda")]
pub mod cuda_device;
mod exec;
mod fourier;
mod gemv;
pub mod gpu;
pub mod host;
pub mod jit;
mod kernel;
#[cfg(feature = "cuda")]
pub mod nvrtc;
mod route;
mod scan;
mod scan_chunked;
mod schedule;
mod tile_gemm;
mod vmath;

pub use exec::{plan, Executable, MemoryPlan, RunStats};
pub use kernel::{BufId, Buffer, Kernel, Program, RouteKernel, ScanKernel, Step, Storage};
pub use route::RoutedFfn;
pub use scan::FusedScan;
pub use schedule::schedule;

//! Kernel programs and their lowerings. The optimised IR is scheduled into a kernel
//! [`Program`] ([`schedule`]); what every backend shares sits here (the program, the memory
//! [`plan`], the scan and route plans); each backend is one folder: [`cpu`] (Cranelift and
//! host kernels, the default) and [`cuda`] (CUDA C, compiled by NVRTC with the `cuda` feature).
#![deny(clippy::unwrap_used, clippy::expect_used)]

mod approx;
pub mod cpu;
pub mod cuda;
pub mod engine;
mod error;
pub mod gemm_library;
mod kernel;
#[cfg(feature = "llvm")]
pub mod llvm;
#[cfg(feature = "mlir")]
pub mod mlir;
mod plan;
mod route;
mod scan;
mod scan_chunked;
mod schedule;

pub use cpu::{Codegen, Executable, RunStats};
pub use engine::{Backend, Engine};
pub use error::{CodegenError, GpuError, Unlowered};
pub use kernel::{broadcast_strides, BufId, Buffer, Kernel, Program, RouteKernel, ScanKernel, Step, Storage};
pub use plan::{plan, MemoryPlan};
pub use route::{NotGrouped, RoutedFfn};
pub use scan::{FusedScan, NotFused};
pub use schedule::schedule;

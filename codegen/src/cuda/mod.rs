//! The CUDA backend: the kernel program lowered to CUDA C ([`lower`]: a kernel per step, the
//! tensor-core attention kernel for bf16, which GEMM epilogues cuBLASLt takes), run by the GPU
//! executor ([`exec`]) over a [`Device`]; with feature `cuda`, NVRTC compilation (`nvrtc`)
//! and the cudarc device (`device`).

#[cfg(feature = "cuda")]
pub mod device;
pub mod exec;
pub mod lower;
#[cfg(feature = "cuda")]
pub mod nvrtc;

pub use exec::{Device, Resident};
pub use lower::*;

//! What runs an optimised graph: the interpreter, the compiled CPU kernels (Cranelift, or
//! with feature `llvm` LLVM), or (feature `cuda`) the generated CUDA kernels on a GPU. The
//! one dispatch over the backends, shared by the facade's `Model` and the CLI.

use crate::cuda::Precision;
use crate::{CodegenError, Executable, RunStats};
use std::collections::HashMap;
use tessera_ir::Graph;
use tessera_runtime::{Dims, RunError, Tensor};

/// Named output tensors, in the model's order.
pub type Outputs = Vec<(String, Tensor)>;

/// Which engine runs a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The reference interpreter (slow, the oracle).
    Interp,
    /// CPU kernels compiled with Cranelift (the default).
    Cpu,
    /// CPU kernels compiled with LLVM at O3 for the host CPU (feature `llvm`).
    Llvm,
    /// CPU kernels written as MLIR (linalg, scf, arith, math, memref), lowered to LLVM and
    /// compiled by MLIR's execution engine at O3 (feature `mlir`).
    Mlir,
    /// Generated CUDA kernels and cuBLAS on the GPU of this ordinal (the `cuda` feature and
    /// an NVIDIA GPU).
    Cuda(usize),
}

impl Backend {
    /// The backend's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Interp => "interp",
            Backend::Cpu => "cpu",
            Backend::Llvm => "llvm",
            Backend::Mlir => "mlir",
            Backend::Cuda(_) => "cuda",
        }
    }
}

/// The CPU code generator of `backend`, keeping its IR text where `keep_ir` says.
pub fn cpu_codegen(backend: Backend, keep_ir: bool) -> Result<Box<dyn crate::Codegen>, CodegenError> {
    match backend {
        #[cfg(feature = "llvm")]
        Backend::Llvm => Ok(Box::new(crate::llvm::Llvm::new(keep_ir)?)),
        #[cfg(not(feature = "llvm"))]
        Backend::Llvm => Err(CodegenError::NotBuilt { backend: "llvm", feature: "llvm" }),
        #[cfg(feature = "mlir")]
        Backend::Mlir => Ok(Box::new(crate::mlir::Mlir::new(keep_ir)?)),
        #[cfg(not(feature = "mlir"))]
        Backend::Mlir => Err(CodegenError::NotBuilt { backend: "mlir", feature: "mlir" }),
        _ => Ok(Box::new(crate::cpu::cranelift::Jit::new(keep_ir).map_err(CodegenError::Cranelift)?)),
    }
}

fn run_error(e: CodegenError) -> RunError {
    match e {
        CodegenError::NotBuilt { .. } => RunError::Device(e.to_string()),
        e => RunError::Internal(e.to_string()),
    }
}

/// A compiled graph, ready to run.
pub enum Engine {
    /// The reference interpreter over the graph.
    Interp,
    /// Compiled CPU kernels (Cranelift or LLVM).
    Cpu(Box<Executable>),
    /// Generated CUDA kernels and cuBLAS on a GPU.
    #[cfg(feature = "cuda")]
    Cuda(Box<Gpu>),
}

/// A program lowered to CUDA with the device that runs it.
#[cfg(feature = "cuda")]
pub struct Gpu {
    program: crate::Program,
    kernels: crate::cuda::Lowered,
    precision: Precision,
    device: crate::cuda::device::CudaDevice,
    /// Parameters and intermediate memory kept on the GPU between runs.
    resident: std::sync::Mutex<crate::cuda::exec::Resident<<crate::cuda::device::CudaDevice as crate::cuda::exec::Device>::Buf>>,
}

impl Engine {
    /// Compiles `g` (already optimised) for `backend`, storing f32 tensors as `precision`
    /// says (bf16 only on the GPU). The CUDA backend fails with [`RunError::Device`] in a
    /// build without the `cuda` feature or on a machine without a GPU.
    pub fn new(g: &Graph, backend: Backend, keep_clif: bool, precision: Precision) -> Result<Engine, RunError> {
        if precision != Precision::F32 && !matches!(backend, Backend::Cuda(_)) {
            return Err(RunError::Device(
                "bf16 storage is for the CUDA backend; the interpreter and the CPU backend compute in f32".into(),
            ));
        }
        match backend {
            Backend::Interp => Ok(Engine::Interp),
            Backend::Cpu | Backend::Llvm | Backend::Mlir => {
                let codegen = cpu_codegen(backend, keep_clif).map_err(run_error)?;
                Ok(Engine::Cpu(Box::new(Executable::with(crate::schedule(g), codegen).map_err(run_error)?)))
            }
            Backend::Cuda(gpu) => cuda(g, gpu, precision),
        }
    }

    /// Compiles another graph of the same model for the same backend, sharing this engine's
    /// copy of the parameters on the device and of what is derived from them (merged
    /// weights): generation's prefill and decode programs.
    pub fn sibling(&self, g: &Graph, backend: Backend, precision: Precision) -> Result<Engine, RunError> {
        let mut e = Engine::new(g, backend, false, precision)?;
        match (&mut e, self) {
            (Engine::Cpu(mine), Engine::Cpu(theirs)) => mine.share_derived(theirs),
            #[cfg(feature = "cuda")]
            (Engine::Cuda(mine), Engine::Cuda(theirs)) => {
                let shared = theirs.resident.lock().map_err(|_| RunError::Internal("a previous run panicked".into()))?.sharing_params();
                mine.resident = std::sync::Mutex::new(shared);
            }
            _ => {}
        }
        Ok(e)
    }

    /// Forgets what this engine (and every sibling) keeps of the parameters: call it when
    /// they are replaced, since what is kept is keyed by their addresses.
    pub fn forget_params(&self) {
        match self {
            Engine::Interp => {}
            Engine::Cpu(e) => e.forget_derived(),
            #[cfg(feature = "cuda")]
            Engine::Cuda(g) => {
                if let Ok(mut r) = g.resident.lock() {
                    r.forget_params();
                }
            }
        }
    }

    /// Keeps the outputs named `names` where the next run reads them as inputs, when that is
    /// not host memory: on a GPU they stay on the device, and a run returns each as a tensor
    /// of its shape without data, which the caller passes back (generation's states).
    pub fn carry(&self, names: &[String]) -> Result<(), RunError> {
        #[cfg(feature = "cuda")]
        if let Engine::Cuda(g) = self {
            g.resident.lock().map_err(|_| RunError::Internal("a previous run panicked".into()))?.set_carry(names.iter().cloned());
        }
        let _ = names;
        Ok(())
    }

    /// The host memory a run of `g` (the graph this engine compiled) at `dims` needs,
    /// estimated before anything is allocated: the graph's
    /// ([`tessera_runtime::memory_estimate`]) and, on the CPU, what the compiled program
    /// derives from the parameters and keeps (merged weights, and weights packed for the
    /// GEMM, about as large as the weights). A GPU keeps those in device memory, not counted.
    pub fn memory_estimate(&self, g: &Graph, dims: &Dims) -> Result<tessera_runtime::MemoryEstimate, RunError> {
        let mut estimate = tessera_runtime::memory_estimate(g, dims)?;
        if let Engine::Cpu(e) = self {
            let p = &e.program;
            for b in p.buffers.iter().filter(|b| b.storage == crate::kernel::Storage::Derived) {
                let n: u128 = tessera_runtime::concrete(&b.ty.shape, dims)?.iter().map(|&n| n as u128).product();
                estimate.derived += n * b.ty.dtype.size() as u128;
            }
        }
        Ok(estimate)
    }

    /// The kernel program, for the compiled backends.
    pub fn program(&self) -> Option<&crate::Program> {
        match self {
            Engine::Interp => None,
            Engine::Cpu(e) => Some(&e.program),
            #[cfg(feature = "cuda")]
            Engine::Cuda(g) => Some(&g.program),
        }
    }

    /// The IR of the CPU kernels (Cranelift's or LLVM's), when kept.
    pub fn clif(&self) -> &[String] {
        match self {
            Engine::Cpu(e) => &e.clif,
            _ => &[],
        }
    }

    /// Runs; the compiled backends also report what they did.
    pub fn run(
        &self,
        g: &Graph,
        dims: &Dims,
        inputs: &HashMap<String, Tensor>,
        params: &HashMap<String, Tensor>,
    ) -> Result<(Outputs, Option<RunStats>), RunError> {
        self.run_reusing(g, dims, inputs, params, HashMap::new())
    }

    /// As [`Self::run`]; the CPU backend writes outputs into the memory of the tensors of
    /// `reuse` with their names (generation's states: no fresh memory per step).
    pub fn run_reusing(
        &self,
        g: &Graph,
        dims: &Dims,
        inputs: &HashMap<String, Tensor>,
        params: &HashMap<String, Tensor>,
        reuse: HashMap<String, Tensor>,
    ) -> Result<(Outputs, Option<RunStats>), RunError> {
        tessera_runtime::check_indices(g, dims, inputs)?;
        match self {
            Engine::Interp => Ok((tessera_runtime::run(g, dims, inputs, params)?, None)),
            Engine::Cpu(e) => e.run_reusing(dims, inputs, params, reuse).map(|(o, s)| (o, Some(s))),
            #[cfg(feature = "cuda")]
            Engine::Cuda(gpu) => {
                let mut resident = gpu.resident.lock().map_err(|_| RunError::Internal("a previous run panicked".into()))?;
                let (out, stats) =
                    crate::cuda::exec::run(&gpu.program, &gpu.kernels, gpu.precision, &gpu.device, inputs, params, &mut resident, dims)
                        .map_err(RunError::from)?;
                Ok((out, Some(RunStats { device_seconds: Some(stats.seconds), arena_bytes: stats.memory_bytes, ..RunStats::default() })))
            }
        }
    }
}

#[cfg(feature = "cuda")]
fn cuda(g: &Graph, gpu: usize, precision: Precision) -> Result<Engine, RunError> {
    use crate::cuda;
    let program = crate::schedule(g);
    let kernels = cuda::lower(&program, precision)?;
    let source = cuda::source(&program, &kernels, precision);
    let device = crate::cuda::device::CudaDevice::new(gpu, &source, &kernels, precision)?;
    Ok(Engine::Cuda(Box::new(Gpu { program, kernels, precision, device, resident: Default::default() })))
}

#[cfg(not(feature = "cuda"))]
fn cuda(_: &Graph, _: usize, _: Precision) -> Result<Engine, RunError> {
    Err(RunError::Device("this build has no CUDA backend: build with `--features cuda`".into()))
}

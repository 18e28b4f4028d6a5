//! The CUDA [`Device`] (feature `cuda`): cudarc with the driver, NVRTC and cuBLAS loaded at run
//! time. Creating one checks for the driver library first, because cudarc panics on first use
//! when it is missing; every later failure is an error, not a panic.
//!
//! Compiled and type-checked everywhere the feature is on, but run only on a machine with an
//! NVIDIA GPU: the emulated device of `tests/cuda.rs` checks the executor and the kernels'
//! meaning, not this file.

use super::exec::{Device, GemmAct, GemmShape, View};
use super::lower::{CudaKernel, Precision};
use crate::GpuError;
use cudarc::cublas::{sys::cublasOperation_t, CudaBlas, Gemm, GemmConfig};
use cudarc::cublaslt::CudaBlasLT;
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, CudaView, CudaViewMut, LaunchConfig, PushKernelArg};
use std::cell::{Ref, RefCell};
use std::sync::Arc;

/// One GPU with the compiled kernels of one program.
pub struct CudaDevice {
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    /// cuBLASLt, for GEMMs with fused epilogues (bf16 storage).
    lt: Option<CudaBlasLT>,
    /// Each kernel's function and threads per block.
    functions: Vec<(CudaFunction, u32)>,
    /// `meta` arrays already on the device (the same ones come back every run).
    metas: std::sync::Mutex<std::collections::HashMap<Vec<i64>, CudaSlice<i64>>>,
}

fn err(e: impl std::fmt::Debug) -> GpuError {
    GpuError::Driver(format!("{e:?}"))
}

fn internal(what: &str) -> GpuError {
    GpuError::Internal(what.into())
}

/// Whether the CUDA driver library can be loaded (cudarc panics on first use when not).
pub fn driver_present() -> bool {
    // SAFETY: only probes for the shared library.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

impl CudaDevice {
    /// Opens GPU `ordinal` and compiles `kernels` (one NVRTC module, `source`, generated for
    /// `precision`) for it.
    pub fn new(ordinal: usize, source: &str, kernels: &[CudaKernel], precision: Precision) -> Result<CudaDevice, GpuError> {
        if !driver_present() {
            return Err(GpuError::NoDevice("no CUDA device: the CUDA driver library (libcuda) was not found".into()));
        }
        // cuBLAS (and cuBLASLt for bf16) come with the CUDA toolkit, not the driver: say so
        // rather than let cudarc panic when it first loads them.
        // SAFETY: these only probe for the shared libraries.
        let (blas, lt) = unsafe { (cudarc::cublas::sys::is_culib_present(), cudarc::cublaslt::sys::is_culib_present()) };
        if !blas || (precision == Precision::Bf16 && !lt) {
            let missing = if blas { "cuBLASLt (libcublasLt)" } else { "cuBLAS (libcublas)" };
            return Err(GpuError::NoDevice(format!(
                "{missing} was not found: install the CUDA toolkit's libraries or put them on LD_LIBRARY_PATH"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| GpuError::NoDevice(format!("no CUDA device {ordinal}: {e:?}")))?;
        let (major, minor) = (
            ctx.attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR).map_err(err)?,
            ctx.attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR).map_err(err)?,
        );
        // bf16 GEMMs and the tensor-core attention kernel (`mma.sync` on bf16) need Ampere.
        if precision == Precision::Bf16 && major < 8 {
            return Err(GpuError::NoDevice(format!(
                "bf16 storage needs a GPU of compute capability 8.0 or later; GPU {ordinal} is {major}.{minor}"
            )));
        }
        // Hopper gets a CUBIN for sm_90a (no driver JIT at load); others PTX for their
        // compute capability. Both come from the disk cache when the source was seen before.
        let arch: &'static str =
            Box::leak(if (major, minor) == (9, 0) { "sm_90a".to_string() } else { format!("compute_{major}{minor}") }.into_boxed_str());
        let (code, _cached) = super::nvrtc::compile_cached(source, arch)?;
        let image = if arch.starts_with("sm_") {
            cudarc::nvrtc::Ptx::from_binary(code)
        } else {
            cudarc::nvrtc::Ptx::from_src(String::from_utf8(code).map_err(|_| internal("a cached PTX that is not text"))?)
        };
        let module = ctx.load_module(image).map_err(err)?;
        let functions = kernels
            .iter()
            .map(|k| Ok((module.load_function(&k.name).map_err(err)?, u32::try_from(k.block).map_err(|_| internal("block too large"))?)))
            .collect::<Result<_, GpuError>>()?;
        let stream = ctx.default_stream();
        let blas = CudaBlas::new(stream.clone()).map_err(err)?;
        let lt = if precision == Precision::Bf16 { Some(CudaBlasLT::new(stream.clone()).map_err(err)?) } else { None };
        Ok(CudaDevice { stream, blas, lt, functions, metas: Default::default() })
    }
}

/// A device allocation: borrowed shared to be read or launched with, mutably to be a GEMM's
/// output.
type Buf = RefCell<CudaSlice<u8>>;

impl Device for CudaDevice {
    type Buf = Buf;

    fn alloc(&self, bytes: usize) -> Result<Self::Buf, GpuError> {
        self.stream.alloc_zeros::<u8>(bytes).map(RefCell::new).map_err(err)
    }

    fn upload(&self, bytes: &[u8]) -> Result<Self::Buf, GpuError> {
        self.stream.clone_htod(bytes).map(RefCell::new).map_err(err)
    }

    fn download(&self, view: View<'_, Self::Buf>) -> Result<Vec<u8>, GpuError> {
        let b = view.buf.try_borrow().map_err(|_| internal("a buffer written while read"))?;
        self.stream.clone_dtoh(&part(&b, view)?).map_err(err)
    }

    fn synchronize(&self) -> Result<(), GpuError> {
        self.stream.synchronize().map_err(err)
    }

    fn launch(&self, kernel: usize, threads: usize, args: &[View<'_, Self::Buf>], meta: &[i64]) -> Result<(), GpuError> {
        if threads == 0 {
            return Ok(());
        }
        let (f, block) = self.functions.get(kernel).ok_or_else(|| GpuError::Internal(format!("no kernel {kernel}")))?;
        let mut metas = self.metas.lock().map_err(|_| internal("a previous launch panicked"))?;
        if !metas.contains_key(meta) {
            metas.insert(meta.to_vec(), self.stream.clone_htod(meta).map_err(err)?);
        }
        let meta = metas.get(meta).ok_or_else(|| internal("meta vanished"))?;
        // Every argument is borrowed shared (the kernel writes through a pointer): views of one
        // allocation go together.
        let bufs: Vec<std::cell::Ref<CudaSlice<u8>>> =
            args.iter().map(|a| a.buf.try_borrow().map_err(|_| internal("a buffer written while launched"))).collect::<Result<_, _>>()?;
        let views: Vec<CudaView<u8>> = bufs.iter().zip(args).map(|(b, a)| part(b, *a)).collect::<Result<_, _>>()?;
        let mut b = self.stream.launch_builder(f);
        for view in &views {
            b.arg(view);
        }
        b.arg(meta);
        let blocks = u32::try_from(threads.div_ceil(*block as usize))
            .map_err(|_| GpuError::TooLarge(format!("{threads} threads are too many for one launch")))?;
        let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (*block, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: the kernel's parameters are the buffers and `meta` in the order lowered, and
        // `meta` describes sizes within those buffers.
        unsafe { b.launch(cfg) }.map(|_| ()).map_err(err)
    }

    fn gemm(
        &self,
        c: View<'_, Self::Buf>,
        a: View<'_, Self::Buf>,
        b: View<'_, Self::Buf>,
        bias: Option<View<'_, Self::Buf>>,
        g: GemmShape,
    ) -> Result<(), GpuError> {
        // `c` is written, so its allocation is borrowed mutably and split around it; an operand
        // in the same allocation (the arena) is read from the part before or after `c`.
        let mut c_buf = c.buf.try_borrow_mut().map_err(|_| internal("a GEMM's output is being read"))?;
        let (before, rest) = c_buf.try_split_at_mut(c.offset).ok_or_else(|| internal("a GEMM's output outside its buffer"))?;
        let mut rest = rest;
        let (out, after) = rest.try_split_at_mut(c.len).ok_or_else(|| internal("a GEMM's output outside its buffer"))?;
        // Operands in other allocations are borrowed shared.
        let (ga, gb) = (guard(a, c)?, guard(b, c)?);
        let gbias = match bias {
            Some(v) => guard(v, c)?,
            None => None,
        };
        let split = (c, &before, &after);
        let operands = (operand(a, &ga, split)?, operand(b, &gb, split)?, out);
        if bias.is_some() || g.act.is_some() {
            // The epilogue runs inside the GEMM: cuBLASLt, bf16 only (see `cuda::fused_in_gemm`).
            let lt = self
                .lt
                .as_ref()
                .filter(|_| g.precision == Precision::Bf16)
                .ok_or_else(|| internal("GEMM epilogues are for bf16 storage"))?;
            let bias_view = bias.map(|v| operand(v, &gbias, split)).transpose()?;
            // SAFETY: as below, and the bias holds `n` elements.
            return unsafe { lt_bf16(lt, operands, bias_view, g) };
        }
        let cm = g.col_major();
        let int = |x: usize| i32::try_from(x).map_err(|_| GpuError::TooLarge(format!("GEMM size {x} too large for cuBLAS")));
        let op = |t: bool| if t { cublasOperation_t::CUBLAS_OP_T } else { cublasOperation_t::CUBLAS_OP_N };
        let (m, n, k, lda, ldb, ldc) = (int(cm.m)?, int(cm.n)?, int(cm.k)?, int(cm.ld.0)?, int(cm.ld.1)?, int(cm.ld.2)?);
        let (transa, transb) = (op(cm.trans_first), op(false));
        // SAFETY: the views hold elements of the stored type, at least as many as the GEMM
        // reads and writes.
        unsafe {
            match g.precision {
                Precision::F32 => {
                    let cfg = GemmConfig { transa, transb, m, n, k, alpha: 1.0f32, lda, ldb, beta: 0.0f32, ldc };
                    typed(&self.blas, cfg, operands, g)
                }
                Precision::Bf16 => {
                    let (alpha, beta) = (half::bf16::ONE, half::bf16::ZERO);
                    typed(&self.blas, GemmConfig { transa, transb, m, n, k, alpha, lda, ldb, beta, ldc }, operands, g)
                }
            }
        }
    }
}

/// The bytes of `view` in its (borrowed) allocation.
fn part<'b>(buf: &'b CudaSlice<u8>, view: View<'_, Buf>) -> Result<CudaView<'b, u8>, GpuError> {
    buf.try_slice(view.offset..view.end()).ok_or_else(|| internal("a view outside its buffer"))
}

/// `v`'s allocation borrowed shared, unless it is the written `c`'s (then `None`).
fn guard<'b>(v: View<'b, Buf>, c: View<'_, Buf>) -> Result<Option<Ref<'b, CudaSlice<u8>>>, GpuError> {
    if std::ptr::eq(v.buf, c.buf) {
        return Ok(None);
    }
    v.buf.try_borrow().map(Some).map_err(|_| internal("a GEMM operand being written"))
}

/// The memory of the GEMM operand `v`: from its own allocation (`guard`), or from the part
/// before or after the written `c` in `c`'s allocation.
fn operand<'s>(
    v: View<'_, Buf>,
    guard: &'s Option<Ref<'_, CudaSlice<u8>>>,
    (c, before, after): (View<'_, Buf>, &'s CudaViewMut<'_, u8>, &'s CudaViewMut<'_, u8>),
) -> Result<CudaView<'s, u8>, GpuError> {
    let outside = || internal("a GEMM operand outside its buffer");
    match guard {
        Some(g) => part(g, v),
        None if v.overlaps(&c) => Err(internal("a GEMM's output overlaps an operand")),
        None if v.end() <= c.offset => before.try_slice(v.offset..v.end()).ok_or_else(outside),
        None => {
            // An empty operand may lie inside `c`'s bytes: any empty slice stands for it.
            let at = v.offset.saturating_sub(c.end());
            after.try_slice(at..at + v.len).ok_or_else(outside)
        }
    }
}

/// One cuBLASLt bf16 GEMM with its bias and activation fused (see [`GemmShape::col_major`]
/// for the operand order).
///
/// # Safety
/// The views hold at least `m·k`, `k·n` and `m·n` bf16 elements, and the bias `n`.
unsafe fn lt_bf16(
    lt: &CudaBlasLT,
    (a, b, mut c): (CudaView<u8>, CudaView<u8>, CudaViewMut<u8>),
    bias: Option<CudaView<u8>>,
    g: GemmShape,
) -> Result<(), GpuError> {
    use cudarc::cublaslt::{Activation, Matmul, MatmulConfig};
    let cm = g.col_major();
    let int = |x: usize| i64::try_from(x).map_err(|_| GpuError::TooLarge(format!("GEMM size {x} too large for cuBLASLt")));
    let cfg = MatmulConfig {
        transa: cm.trans_first,
        transb: false,
        transc: false,
        m: cm.m as u64,
        n: cm.n as u64,
        k: cm.k as u64,
        alpha: 1.0,
        lda: int(cm.ld.0)?,
        ldb: int(cm.ld.1)?,
        beta: 0.0,
        ldc: int(cm.ld.2)?,
        stride_a: None,
        stride_b: None,
        stride_c: None,
        stride_bias: None,
        batch_size: None,
    };
    // cuBLASLt's GELU epilogue is the tanh approximation (as PyTorch's fused addmm+GELU).
    let act = g.act.map(|a| match a {
        GemmAct::Relu => Activation::Relu,
        GemmAct::GeluTanh => Activation::Gelu,
    });
    unsafe {
        let a = a.transmute::<half::bf16>(g.m * g.k).ok_or_else(|| internal("A too small"))?;
        let b = b.transmute::<half::bf16>(g.k * g.n).ok_or_else(|| internal("B too small"))?;
        let bias = bias.map(|v| v.transmute::<half::bf16>(g.n).ok_or_else(|| internal("bias too small"))).transpose()?;
        let mut c = c.transmute_mut::<half::bf16>(g.m * g.n).ok_or_else(|| internal("C too small"))?;
        lt.matmul(cfg, &b, &a, &mut c, bias.as_ref(), act.as_ref()).map_err(err)
    }
}

/// One cuBLAS GEMM on untyped views holding elements of type `T`.
///
/// # Safety
/// The views hold at least `m·k`, `k·n` and `m·n` elements of `T`.
unsafe fn typed<T>(
    blas: &CudaBlas,
    cfg: GemmConfig<T>,
    (a, b, mut c): (CudaView<u8>, CudaView<u8>, CudaViewMut<u8>),
    g: GemmShape,
) -> Result<(), GpuError>
where
    CudaBlas: Gemm<T>,
{
    unsafe {
        let a = a.transmute::<T>(g.m * g.k).ok_or_else(|| internal("A too small"))?;
        let b = b.transmute::<T>(g.k * g.n).ok_or_else(|| internal("B too small"))?;
        let mut c = c.transmute_mut::<T>(g.m * g.n).ok_or_else(|| internal("C too small"))?;
        blas.gemm(cfg, &b, &a, &mut c).map_err(err)
    }
}

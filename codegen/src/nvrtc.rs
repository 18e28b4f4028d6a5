//! Compiling generated CUDA C with NVRTC (feature `cuda`). NVRTC needs no GPU, only its
//! library (`libnvrtc.so.13`, found by the loader or on `LD_LIBRARY_PATH`), so kernels can be
//! checked on any machine that has it.

/// Whether the NVRTC library can be loaded. cudarc panics on first use when it cannot, so
/// callers check this first.
pub fn available() -> bool {
    // SAFETY: only probes for the shared library.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Compiles one CUDA C source to PTX for `arch` (e.g. `compute_90`).
pub fn compile(source: &str, arch: &'static str) -> Result<String, String> {
    if !available() {
        return Err("NVRTC (libnvrtc) was not found: install the CUDA toolkit or the `nvidia-cuda-nvrtc` wheel and put its lib folder on LD_LIBRARY_PATH".into());
    }
    let opts = cudarc::nvrtc::CompileOptions { arch: Some(arch), ..Default::default() };
    cudarc::nvrtc::compile_ptx_with_opts(source, opts).map(|p| p.to_src()).map_err(|e| format!("NVRTC: {e}"))
}

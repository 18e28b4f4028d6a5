//! Compiling generated CUDA C with NVRTC (feature `cuda`). NVRTC needs no GPU, only its
//! library (`libnvrtc.so.13`, found by the loader or on `LD_LIBRARY_PATH`), so kernels can be
//! checked on any machine that has it. Compiled code is cached on disk by a hash of the
//! source and the target (`$TESSERA_CACHE`, else `$XDG_CACHE_HOME/tessera`, else
//! `~/.cache/tessera`; a cache that cannot be written is skipped).

use crate::GpuError;
use std::ffi::CString;

/// Whether the NVRTC library can be loaded. cudarc panics on first use when it cannot, so
/// callers check this first.
pub fn available() -> bool {
    // SAFETY: only probes for the shared library.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

fn missing() -> GpuError {
    GpuError::NoDevice(
        "NVRTC (libnvrtc) was not found: install the CUDA toolkit or the `nvidia-cuda-nvrtc` wheel and put its lib folder on LD_LIBRARY_PATH"
            .into(),
    )
}

/// Compiles one CUDA C source to PTX for `arch` (e.g. `compute_90`).
pub fn compile(source: &str, arch: &'static str) -> Result<String, GpuError> {
    if !available() {
        return Err(missing());
    }
    let opts = cudarc::nvrtc::CompileOptions { arch: Some(arch), ..Default::default() };
    cudarc::nvrtc::compile_ptx_with_opts(source, opts).map(|p| p.to_src()).map_err(|e| GpuError::Nvrtc(e.to_string()))
}

/// Compiles one CUDA C source to a CUBIN for a real architecture (e.g. `sm_90a`, which the
/// Hopper-only instructions need and which loads without the driver's PTX JIT).
pub fn compile_cubin(source: &str, arch: &str) -> Result<Vec<u8>, GpuError> {
    use cudarc::nvrtc::{result, sys};
    if !available() {
        return Err(missing());
    }
    let src = CString::new(source).map_err(|_| GpuError::Internal("a CUDA source with a NUL byte".into()))?;
    let prog = result::create_program(&src, None).map_err(|e| GpuError::Nvrtc(format!("{e:?}")))?;
    // SAFETY: `prog` is a live program until destroyed below; sizes come from NVRTC.
    let out = unsafe {
        let compiled = result::compile_program(prog, &[format!("--gpu-architecture={arch}")]);
        match compiled {
            Err(e) => {
                let log = result::get_program_log(prog).unwrap_or_default();
                let log: String = log.iter().map(|&c| c as u8 as char).collect();
                Err(GpuError::Nvrtc(format!("{e:?}\n{}", log.trim_end_matches('\0'))))
            }
            Ok(()) => {
                let mut size = 0usize;
                let got = sys::nvrtcGetCUBINSize(prog, &mut size).result();
                let mut bin = vec![0u8; size];
                got.and_then(|_| sys::nvrtcGetCUBIN(prog, bin.as_mut_ptr() as *mut std::ffi::c_char).result())
                    .map(|_| bin)
                    .map_err(|e| GpuError::Nvrtc(format!("{e:?}")))
            }
        }
    };
    // SAFETY: destroyed once, after its last use.
    let _ = unsafe { result::destroy_program(prog) };
    out
}

/// FNV-1a: a hash that stays the same across builds (the cache key).
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

fn cache_dir() -> Option<std::path::PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(std::path::PathBuf::from);
    env("TESSERA_CACHE")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("tessera")))
        .or_else(|| env("HOME").map(|d| d.join(".cache/tessera")))
}

/// `compile` or `compile_cubin` through the disk cache: the bytes of a PTX (`compute_XY`) or a
/// CUBIN (`sm_XY`, `sm_XYa`), and whether they came from the cache.
pub fn compile_cached(source: &str, arch: &'static str) -> Result<(Vec<u8>, bool), GpuError> {
    compile_cached_in(cache_dir().as_deref(), source, arch)
}

/// [`compile_cached`] with the cache in `dir` (none: no cache).
pub fn compile_cached_in(dir: Option<&std::path::Path>, source: &str, arch: &'static str) -> Result<(Vec<u8>, bool), GpuError> {
    let file =
        dir.map(|d| d.join(format!("{:016x}-{arch}.{}", fnv(source.as_bytes()), if arch.starts_with("sm_") { "cubin" } else { "ptx" })));
    if let Some(bytes) = file.as_ref().and_then(|f| std::fs::read(f).ok()) {
        return Ok((bytes, true));
    }
    let bytes = if arch.starts_with("sm_") { compile_cubin(source, arch)? } else { compile(source, arch)?.into_bytes() };
    if let Some(f) = &file {
        // Written whole under a temporary name, then renamed: readers never see half a file.
        let tmp = f.with_extension(format!("tmp{}", std::process::id()));
        let written = f
            .parent()
            .map(std::fs::create_dir_all)
            .transpose()
            .and_then(|_| std::fs::write(&tmp, &bytes))
            .and_then(|_| std::fs::rename(&tmp, f));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
    Ok((bytes, false))
}

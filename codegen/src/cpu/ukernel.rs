//! The GEMM micro-kernel of builds without LLVM: the tile of `llvm/gemm.rs` (`C[12×32]` in 24
//! AVX-512 registers, or `C[6×16]` in 12 AVX2 ones) written with `std::arch` intrinsics and
//! picked at run time, so that the default build's GEMMs run through the packed driver of
//! [`super::gemm`] too (the `gemm` crate reaches about 40% of an AVX-512 peak). Same ABI as
//! [`super::gemm::MicroFn`]: `(kc, a, b, c, ldc, accumulate)`, `A` as `MR` values per `k`, `B`
//! as `NR` values per `k`; the tile is summed from zero and added to `C` where `accumulate`.

use super::gemm::MicroKernel;

/// The host's micro-kernel, where its CPU has AVX-512F, or AVX2 with FMA.
pub fn host() -> Option<MicroKernel> {
    available().first().map(|(_, k)| *k)
}

/// Every micro-kernel this CPU runs, the widest first (the tests check each).
pub fn available() -> Vec<(&'static str, MicroKernel)> {
    let mut all = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            all.push(("avx512 12x32", MicroKernel { f: x86::tile_12x32, mr: 12, nr: 32 }));
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            all.push(("avx2 6x16", MicroKernel { f: x86::tile_6x16, mr: 6, nr: 16 }));
        }
    }
    all
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// `C[12×32] (+)= A·B` with AVX-512F.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `a` holds `12·kc`, `b` `32·kc` floats; `c` 12 rows of 32 at stride `ldc`.
    #[target_feature(enable = "avx512f")]
    pub unsafe extern "C" fn tile_12x32(kc: i64, a: *const f32, b: *const f32, c: *mut f32, ldc: i64, accumulate: i32) {
        let mut t = [[_mm512_setzero_ps(); 2]; 12];
        for p in 0..kc.max(0) as usize {
            // SAFETY: inside the panels, as the caller promised.
            unsafe {
                let (b0, b1) = (_mm512_loadu_ps(b.add(p * 32)), _mm512_loadu_ps(b.add(p * 32 + 16)));
                for (i, row) in t.iter_mut().enumerate() {
                    let ai = _mm512_set1_ps(*a.add(p * 12 + i));
                    row[0] = _mm512_fmadd_ps(ai, b0, row[0]);
                    row[1] = _mm512_fmadd_ps(ai, b1, row[1]);
                }
            }
        }
        for (i, row) in t.iter().enumerate() {
            for (h, &v) in row.iter().enumerate() {
                // SAFETY: inside C's tile.
                unsafe {
                    let cp = c.add(i * ldc as usize + h * 16);
                    _mm512_storeu_ps(cp, if accumulate != 0 { _mm512_add_ps(_mm512_loadu_ps(cp), v) } else { v });
                }
            }
        }
    }

    /// `C[6×16] (+)= A·B` with AVX2 and FMA.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `a` holds `6·kc`, `b` `16·kc` floats; `c` 6 rows of 16 at stride `ldc`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe extern "C" fn tile_6x16(kc: i64, a: *const f32, b: *const f32, c: *mut f32, ldc: i64, accumulate: i32) {
        let mut t = [[_mm256_setzero_ps(); 2]; 6];
        for p in 0..kc.max(0) as usize {
            // SAFETY: inside the panels, as the caller promised.
            unsafe {
                let (b0, b1) = (_mm256_loadu_ps(b.add(p * 16)), _mm256_loadu_ps(b.add(p * 16 + 8)));
                for (i, row) in t.iter_mut().enumerate() {
                    let ai = _mm256_set1_ps(*a.add(p * 6 + i));
                    row[0] = _mm256_fmadd_ps(ai, b0, row[0]);
                    row[1] = _mm256_fmadd_ps(ai, b1, row[1]);
                }
            }
        }
        for (i, row) in t.iter().enumerate() {
            for (h, &v) in row.iter().enumerate() {
                // SAFETY: inside C's tile.
                unsafe {
                    let cp = c.add(i * ldc as usize + h * 8);
                    _mm256_storeu_ps(cp, if accumulate != 0 { _mm256_add_ps(_mm256_loadu_ps(cp), v) } else { v });
                }
            }
        }
    }
}

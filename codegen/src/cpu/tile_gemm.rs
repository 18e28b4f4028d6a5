//! Small dense products for the attention kernel's tiles (`C = α·A·B`, or `C += A·B`), where
//! a general GEMM's packing and dispatch would cost as much as the arithmetic: both operands
//! are read in place (A by rows, B by rows of `n` contiguous columns), and the x86-64 versions
//! keep a block of C in registers while they stream over `k`: 6 × 64 in 24 AVX-512 registers,
//! or 6 × 16 in 12 AVX2 ones (the LLVM and MLIR backends compile the same loop nest).

/// A vector kernel of [`TileProduct::run`]'s arguments.
type Kernel = unsafe fn(&TileProduct, *const f32, usize, *const f32, usize, *mut f32, usize);

/// The vector kernels this CPU runs, the widest first (the tests check each).
pub(crate) fn kernels() -> &'static [(&'static str, Kernel)] {
    static KERNELS: std::sync::OnceLock<Vec<(&'static str, Kernel)>> = std::sync::OnceLock::new();
    KERNELS.get_or_init(|| {
        let mut all: Vec<(&'static str, Kernel)> = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                all.push(("avx512", avx512::product));
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                all.push(("avx2", avx2::product));
            }
        }
        all
    })
}

/// One product: `C[m×n] = α·A[m×k]·B[k×n]`, or `C += A·B` when `accumulate` (then α is 1).
/// Leading dimensions are in elements.
#[derive(Clone, Copy)]
pub struct TileProduct {
    /// Rows of A and C.
    pub m: usize,
    /// Columns of B and C.
    pub n: usize,
    /// Columns of A, rows of B.
    pub k: usize,
    /// Scale of the product (ignored when accumulating).
    pub alpha: f32,
    /// Add to C instead of overwriting it.
    pub accumulate: bool,
}

impl TileProduct {
    /// Computes the product, vectorized where the CPU has AVX2 and FMA.
    ///
    /// # Safety
    /// `a` valid for `m` rows of `k` at stride `lda`, `b` for `k` rows of `n` at stride `ldb`,
    /// `c` for `m` rows of `n` at stride `ldc`, and `c` overlapping neither.
    pub unsafe fn run(&self, a: *const f32, lda: usize, b: *const f32, ldb: usize, c: *mut f32, ldc: usize) {
        match kernels().first() {
            // SAFETY: the CPU has the kernel's features; the caller guarantees the pointers.
            Some((_, k)) => unsafe { k(self, a, lda, b, ldb, c, ldc) },
            None => unsafe { self.scalar(a, lda, b, ldb, c, ldc, 0, 0) },
        }
    }

    /// As [`TileProduct::run`], by `compiled` where the code generator made one.
    ///
    /// # Safety
    /// As [`TileProduct::run`]; `compiled` computes [`super::codegen::TileProductFn`]'s product.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn run_with(
        &self,
        compiled: Option<super::codegen::TileProductFn>,
        a: *const f32,
        lda: usize,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
    ) {
        match compiled {
            #[rustfmt::skip]
            Some(f) => unsafe {
                f(self.m as i64, self.n as i64, self.k as i64, self.alpha, i32::from(self.accumulate), a, lda as i64, b, ldb as i64, c, ldc as i64)
            },
            None => unsafe { self.run(a, lda, b, ldb, c, ldc) },
        }
    }

    /// The plain loops, over rows `row0..` and columns `col0..` (what the vector version
    /// leaves over, or everything).
    ///
    /// # Safety
    /// As [`TileProduct::run`].
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn scalar(&self, a: *const f32, lda: usize, b: *const f32, ldb: usize, c: *mut f32, ldc: usize, row0: usize, col0: usize) {
        for i in row0..self.m {
            for j in col0..self.n {
                let mut s = 0f32;
                for p in 0..self.k {
                    s += unsafe { *a.add(i * lda + p) * *b.add(p * ldb + j) };
                }
                let out = unsafe { &mut *c.add(i * ldc + j) };
                *out = if self.accumulate { *out + s } else { self.alpha * s };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::TileProduct;
    use std::arch::x86_64::*;

    /// Lanes of a register.
    const W: usize = 16;
    /// Registers per block of columns.
    const NV: usize = 4;

    /// Blocks of 6 rows × 64 columns (24 accumulators), then a block of fewer rows; the
    /// columns that do not fill a block are read and written under masks.
    ///
    /// # Safety
    /// The CPU has AVX-512F; pointers as [`TileProduct::run`]'s.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn product(p: &TileProduct, a: *const f32, lda: usize, b: *const f32, ldb: usize, c: *mut f32, ldc: usize) {
        let mut j = 0;
        while j < p.n {
            let cols = (p.n - j).min(W * NV);
            let masks: [__mmask16; NV] = std::array::from_fn(|q| ((1u32 << cols.saturating_sub(q * W).min(W)) - 1) as __mmask16);
            let (b, c) = (b.wrapping_add(j), c.wrapping_add(j));
            let mut i = 0;
            while i + 6 <= p.m {
                unsafe { rows::<6>(p, a.wrapping_add(i * lda), lda, b, ldb, c.wrapping_add(i * ldc), ldc, &masks) };
                i += 6;
            }
            let (a, c) = (a.wrapping_add(i * lda), c.wrapping_add(i * ldc));
            unsafe {
                match p.m - i {
                    5 => rows::<5>(p, a, lda, b, ldb, c, ldc, &masks),
                    4 => rows::<4>(p, a, lda, b, ldb, c, ldc, &masks),
                    3 => rows::<3>(p, a, lda, b, ldb, c, ldc, &masks),
                    2 => rows::<2>(p, a, lda, b, ldb, c, ldc, &masks),
                    1 => rows::<1>(p, a, lda, b, ldb, c, ldc, &masks),
                    _ => {}
                }
            }
            j += W * NV;
        }
    }

    /// `MR` rows of one block of columns: the accumulators stay in registers over `k`; masked
    /// lanes are neither read nor written.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn rows<const MR: usize>(
        p: &TileProduct,
        a: *const f32,
        lda: usize,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        masks: &[__mmask16; NV],
    ) {
        let mut acc = [[_mm512_setzero_ps(); NV]; MR];
        for q in 0..p.k {
            let bv: [__m512; NV] = std::array::from_fn(|v| unsafe { _mm512_maskz_loadu_ps(masks[v], b.wrapping_add(q * ldb + v * W)) });
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(unsafe { *a.add(r * lda + q) });
                for (acc, bv) in acc.iter_mut().zip(&bv) {
                    *acc = _mm512_fmadd_ps(x, *bv, *acc);
                }
            }
        }
        let alpha = _mm512_set1_ps(p.alpha);
        for (r, acc) in acc.iter().enumerate() {
            for (v, acc) in acc.iter().enumerate() {
                let out = c.wrapping_add(r * ldc + v * W);
                let y = if p.accumulate {
                    _mm512_add_ps(unsafe { _mm512_maskz_loadu_ps(masks[v], out) }, *acc)
                } else {
                    _mm512_mul_ps(alpha, *acc)
                };
                unsafe { _mm512_mask_storeu_ps(out, masks[v], y) };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::TileProduct;
    use std::arch::x86_64::*;

    /// Columns per block: two registers of eight.
    const NR: usize = 16;

    /// Blocks of 6 rows × 16 columns, then a block of fewer rows, then the columns that do not
    /// fill a block by the scalar loops.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn product(p: &TileProduct, a: *const f32, lda: usize, b: *const f32, ldb: usize, c: *mut f32, ldc: usize) {
        let cols = p.n / NR * NR;
        let mut i = 0;
        while i + 6 <= p.m {
            unsafe { rows::<6>(p, a.add(i * lda), lda, b, ldb, c.add(i * ldc), ldc, cols) };
            i += 6;
        }
        unsafe {
            match p.m - i {
                5 => rows::<5>(p, a.add(i * lda), lda, b, ldb, c.add(i * ldc), ldc, cols),
                4 => rows::<4>(p, a.add(i * lda), lda, b, ldb, c.add(i * ldc), ldc, cols),
                3 => rows::<3>(p, a.add(i * lda), lda, b, ldb, c.add(i * ldc), ldc, cols),
                2 => rows::<2>(p, a.add(i * lda), lda, b, ldb, c.add(i * ldc), ldc, cols),
                1 => rows::<1>(p, a.add(i * lda), lda, b, ldb, c.add(i * ldc), ldc, cols),
                _ => {}
            }
        }
        if cols < p.n {
            unsafe { p.scalar(a, lda, b, ldb, c, ldc, 0, cols) };
        }
    }

    /// `MR` rows of C, columns `0..cols` in blocks of 16: the block's accumulators stay in
    /// registers over the whole `k` loop.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn rows<const MR: usize>(
        p: &TileProduct,
        a: *const f32,
        lda: usize,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        cols: usize,
    ) {
        let mut j = 0;
        while j < cols {
            let mut acc = [[_mm256_setzero_ps(); 2]; MR];
            for q in 0..p.k {
                let (b0, b1) = unsafe { (_mm256_loadu_ps(b.add(q * ldb + j)), _mm256_loadu_ps(b.add(q * ldb + j + 8))) };
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x = unsafe { _mm256_broadcast_ss(&*a.add(r * lda + q)) };
                    acc[0] = _mm256_fmadd_ps(x, b0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(x, b1, acc[1]);
                }
            }
            let alpha = _mm256_set1_ps(p.alpha);
            for (r, acc) in acc.iter().enumerate() {
                for (h, v) in acc.iter().enumerate() {
                    let out = unsafe { c.add(r * ldc + j + 8 * h) };
                    let v = if p.accumulate { _mm256_add_ps(unsafe { _mm256_loadu_ps(out) }, *v) } else { _mm256_mul_ps(alpha, *v) };
                    unsafe { _mm256_storeu_ps(out, v) };
                }
            }
            j += NR;
        }
    }
}

/// Checks the product of `compiled` (or [`TileProduct::run`]) at `m × n × k`, with leading
/// dimensions wider than the operands, against sums in f64; panics on a difference.
#[cfg(test)]
pub(crate) fn check_product(compiled: Option<super::codegen::TileProductFn>, (m, n, k): (usize, usize, usize), accumulate: bool) {
    check_with(compiled, None, (m, n, k), accumulate)
}

/// As [`check_product`], with one of [`kernels`] where `rust` is given.
#[cfg(test)]
fn check_with(compiled: Option<super::codegen::TileProductFn>, rust: Option<Kernel>, (m, n, k): (usize, usize, usize), accumulate: bool) {
    let (lda, ldb, ldc) = (k + 3, n + 5, n + 1);
    let a: Vec<f32> = (0..m * lda).map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.25).collect();
    let b: Vec<f32> = (0..k * ldb).map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.5).collect();
    let c0: Vec<f32> = (0..m * ldc).map(|i| (i % 3) as f32).collect();
    let p = TileProduct { m, n, k, alpha: if accumulate { 1.0 } else { 0.5 }, accumulate };
    let mut fast = c0.clone();
    match rust {
        Some(k) => unsafe { k(&p, a.as_ptr(), lda, b.as_ptr(), ldb, fast.as_mut_ptr(), ldc) },
        None => unsafe { p.run_with(compiled, a.as_ptr(), lda, b.as_ptr(), ldb, fast.as_mut_ptr(), ldc) },
    }
    for i in 0..m {
        for j in 0..ldc {
            let want = if j >= n {
                f64::from(c0[i * ldc + j])
            } else {
                let s: f64 = (0..k).map(|q| f64::from(a[i * lda + q]) * f64::from(b[q * ldb + j])).sum();
                if accumulate {
                    f64::from(c0[i * ldc + j]) + s
                } else {
                    0.5 * s
                }
            };
            let got = f64::from(fast[i * ldc + j]);
            assert!((got - want).abs() <= 1e-4 * want.abs().max(1.0), "{m}×{n}×{k} at ({i}, {j}): {got} vs {want}");
        }
    }
}

/// Sizes of tiles and of odd remainders, for [`check_product`].
#[cfg(test)]
pub(crate) const CHECKED_SIZES: [(usize, usize, usize); 10] =
    [(64, 64, 64), (7, 37, 5), (1, 16, 1), (5, 15, 9), (3, 48, 64), (64, 3, 2), (0, 8, 3), (13, 70, 17), (6, 0, 4), (4, 20, 0)];

#[cfg(test)]
mod tests {
    #[test]
    fn products_of_odd_and_tile_sizes_match_f64_sums() {
        for size in super::CHECKED_SIZES {
            super::check_product(None, size, false);
            super::check_product(None, size, true);
            // Each vector kernel the CPU has, not only the widest.
            for (_, k) in super::kernels() {
                super::check_with(None, Some(*k), size, false);
                super::check_with(None, Some(*k), size, true);
            }
        }
    }
}

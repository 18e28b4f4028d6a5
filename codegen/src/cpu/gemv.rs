//! Products with few rows (`m ≤ MAX_ROWS`: a decode step's one token per row). Each element of
//! `b` is read once and used `m` times, so such a product runs at the speed memory delivers
//! `b`; the gemm crate packs `b` at every call, which at these shapes costs more than the
//! product. Columns are split across threads; each thread streams its slice of `b` once.
//!
//! Sums run over `k` in order per output element (32 interleaved partial sums for a
//! transposed `b`), with fused multiply-adds, so results differ from the gemm crate's only by
//! rounding.

use rayon::prelude::*;

/// The most rows this path takes.
pub const MAX_ROWS: usize = 4;

/// Columns per task: a task's outputs (`m` × this) stay in L1.
const COLS: usize = 512;

#[derive(Clone, Copy)]
struct Ptrs {
    out: usize,
    a: usize,
    b: usize,
}

/// `out[m, n] = a[m, k] @ b` with `b` row-major `[k, n]`, or `[n, k]` when `trans_b`.
///
/// # Safety
/// `out` holds `m·n`, `a` `m·k` and `b` `k·n` f32s; `out` overlaps neither.
pub unsafe fn product(out: *mut f32, a: *const f32, b: *const f32, (m, n, k): (usize, usize, usize), trans_b: bool, threaded: bool) {
    let p = Ptrs { out: out as usize, a: a as usize, b: b as usize };
    if !trans_b {
        // Rows of `b` split across threads, each streamed whole; the partial sums are added.
        let threads = if threaded && m * n * k >= 1 << 16 { rayon::current_num_threads().clamp(1, k.max(1)) } else { 1 };
        let per = k.div_ceil(threads);
        let partial = |t: usize| {
            let mut acc = vec![0f32; m * n];
            let (k0, k1) = (t * per, ((t + 1) * per).min(k));
            // SAFETY: as the caller's.
            unsafe { rows_dispatch(p, (m, n, k), k0, k1, &mut acc) };
            acc
        };
        let parts: Vec<Vec<f32>> = if threads > 1 { (0..threads).into_par_iter().map(partial).collect() } else { vec![partial(0)] };
        let out = unsafe { std::slice::from_raw_parts_mut(out, m * n) };
        out.copy_from_slice(&parts[0]);
        for part in &parts[1..] {
            for (o, x) in out.iter_mut().zip(part) {
                *o += x;
            }
        }
        return;
    }
    let tasks = n.div_ceil(COLS);
    let avx2 = cfg!(target_arch = "x86_64") && avx2_fma();
    let run = move |t: usize| {
        let (j0, j1) = (t * COLS, ((t + 1) * COLS).min(n));
        // SAFETY: tasks write disjoint column ranges of `out`.
        unsafe {
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                return columns_avx2(p, (m, n, k), trans_b, j0, j1);
            }
            columns(p, (m, n, k), trans_b, j0, j1)
        }
    };
    if threaded && tasks > 1 && m * n * k >= 1 << 16 {
        (0..tasks).into_par_iter().for_each(run);
    } else {
        (0..tasks).for_each(run);
    }
}

#[cfg(target_arch = "x86_64")]
fn avx2_fma() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

#[cfg(not(target_arch = "x86_64"))]
fn avx2_fma() -> bool {
    false
}

/// `acc[m, n] += a[:, k0..k1] @ b[k0..k1, :]`, each row of `b` read once, in order.
unsafe fn rows_dispatch(p: Ptrs, dims: (usize, usize, usize), k0: usize, k1: usize, acc: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        return unsafe { rows_avx2(p, dims, k0, k1, acc) };
    }
    unsafe { rows(p, dims, k0, k1, acc) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_avx2(p: Ptrs, dims: (usize, usize, usize), k0: usize, k1: usize, acc: &mut [f32]) {
    unsafe { rows(p, dims, k0, k1, acc) }
}

#[inline(always)]
unsafe fn rows(p: Ptrs, (m, n, k): (usize, usize, usize), k0: usize, k1: usize, acc: &mut [f32]) {
    unsafe {
        let a = std::slice::from_raw_parts(p.a as *const f32, m * k);
        let row = |kk: usize| std::slice::from_raw_parts((p.b as *const f32).add(kk * n), n);
        // Four rows of `b` per pass: four streams from memory, a quarter of the passes over `acc`.
        let mut kk = k0;
        while kk + 4 <= k1 {
            let (r0, r1, r2, r3) = (row(kk), row(kk + 1), row(kk + 2), row(kk + 3));
            for i in 0..m {
                let s = &a[i * k + kk..i * k + kk + 4];
                let o = &mut acc[i * n..(i + 1) * n];
                for j in 0..n {
                    o[j] = s[3].mul_add(r3[j], s[2].mul_add(r2[j], s[1].mul_add(r1[j], s[0].mul_add(r0[j], o[j]))));
                }
            }
            kk += 4;
        }
        for kk in kk..k1 {
            let r = row(kk);
            for i in 0..m {
                let s = a[i * k + kk];
                for (o, &x) in acc[i * n..(i + 1) * n].iter_mut().zip(r) {
                    *o += s * x;
                }
            }
        }
    }
}

/// Columns `j0..j1` of every row, compiled for AVX2 (the loops vectorise).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn columns_avx2(p: Ptrs, dims: (usize, usize, usize), trans_b: bool, j0: usize, j1: usize) {
    unsafe { columns(p, dims, trans_b, j0, j1) }
}

#[inline(always)]
unsafe fn columns(p: Ptrs, (m, n, k): (usize, usize, usize), trans_b: bool, j0: usize, j1: usize) {
    let w = j1 - j0;
    unsafe {
        let a = std::slice::from_raw_parts(p.a as *const f32, m * k);
        if trans_b {
            for j in j0..j1 {
                let row = std::slice::from_raw_parts((p.b as *const f32).add(j * k), k);
                for i in 0..m {
                    *(p.out as *mut f32).add(i * n + j) = dot(&a[i * k..(i + 1) * k], row);
                }
            }
            return;
        }
        let mut acc = [[0f32; COLS]; MAX_ROWS];
        for kk in 0..k {
            let row = std::slice::from_raw_parts((p.b as *const f32).add(kk * n + j0), w);
            for i in 0..m {
                let s = a[i * k + kk];
                for (o, &x) in acc[i][..w].iter_mut().zip(row) {
                    *o += s * x;
                }
            }
        }
        for (i, acc) in acc.iter().enumerate().take(m) {
            std::ptr::copy_nonoverlapping(acc.as_ptr(), (p.out as *mut f32).add(i * n + j0), w);
        }
    }
}

/// `Σ x[i]·y[i]` in 32 interleaved partial sums (so it vectorises into four independent
/// chains of fused multiply-adds), then their sum.
#[inline(always)]
fn dot(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0f32; 32];
    let chunks = x.len() / 32 * 32;
    for (cx, cy) in x[..chunks].chunks_exact(32).zip(y[..chunks].chunks_exact(32)) {
        for l in 0..32 {
            acc[l] = cx[l].mul_add(cy[l], acc[l]);
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for (a, b) in x[chunks..].iter().zip(&y[chunks..]) {
        s += a * b;
    }
    s
}

#[cfg(test)]
mod tests {
    /// Every path (threads or not, transposed or not, rows 1–4, sizes around the task and
    /// unroll widths) against sums in f64.
    #[test]
    fn products_match_f64_sums() {
        let val = |i: usize, s: usize| (((i * 7919 + s * 104_729) % 2003) as f32 / 1001.0) - 1.0;
        for (m, n, k) in [(1, 1, 1), (1, 3, 5), (2, 513, 7), (3, 1030, 9), (4, 64, 1), (1, 2049, 770), (4, 37, 513)] {
            for trans_b in [false, true] {
                for threaded in [false, true] {
                    let a: Vec<f32> = (0..m * k).map(|i| val(i, 1)).collect();
                    let b: Vec<f32> = (0..k * n).map(|i| val(i, 2)).collect();
                    let mut out = vec![f32::NAN; m * n];
                    unsafe { super::product(out.as_mut_ptr(), a.as_ptr(), b.as_ptr(), (m, n, k), trans_b, threaded) };
                    for i in 0..m {
                        for j in 0..n {
                            let want: f64 =
                                (0..k).map(|kk| a[i * k + kk] as f64 * if trans_b { b[j * k + kk] } else { b[kk * n + j] } as f64).sum();
                            let got = out[i * n + j] as f64;
                            assert!(
                                (got - want).abs() <= 1e-5 * (k as f64).sqrt() * 4.0,
                                "{m}x{n}x{k} trans={trans_b}: [{i},{j}] {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}

//! OpenBLAS's GEMM (feature `openblas`), and the blocked, packed GEMM around a generated
//! micro-kernel (the GotoBLAS/BLIS scheme: each thread takes a slice of `C`'s columns; per
//! `KC`-deep block, its slice of `B` is packed in `NR`-wide panels and `A` in `MC × KC` blocks
//! of `MR`-tall panels, and the micro-kernel runs over each panel pair). `B` is packed at every
//! call (weights are not cached packed yet), and each thread packs all of `A`.
//!
//! `crate::gemm_library` picks which one runs.

use rayon::prelude::*;

/// `(kc, a, b, c, ldc, accumulate)`: `C[MR×NR] (+)= A·B` over packed panels.
pub type MicroFn = unsafe extern "C" fn(i64, *const f32, *const f32, *mut f32, i64, i32);

/// A micro-kernel and its tile.
#[derive(Clone, Copy, Debug)]
pub struct MicroKernel {
    /// The kernel.
    pub f: MicroFn,
    /// Rows of its tile.
    pub mr: usize,
    /// Columns of its tile.
    pub nr: usize,
}

#[cfg(feature = "openblas")]
#[link(name = "openblas")]
unsafe extern "C" {
    /// CBLAS's single-precision GEMM (row-major: `order` 101; `trans` 111 none, 112 transposed).
    fn cblas_sgemm(
        order: i32,
        trans_a: i32,
        trans_b: i32,
        m: i32,
        n: i32,
        k: i32,
        alpha: f32,
        a: *const f32,
        lda: i32,
        b: *const f32,
        ldb: i32,
        beta: f32,
        c: *mut f32,
        ldc: i32,
    );
}

/// `C = A·B` (or `A·Bᵀ`) by OpenBLAS, row-major, `C` overwritten.
///
/// # Safety
/// `a` holds `m × k`, `b` `k × n` (`n × k` with `trans_b`), `c` `m × n`; sizes below 2³¹.
#[cfg(feature = "openblas")]
pub unsafe fn openblas(c: *mut f32, a: *const f32, b: *const f32, (m, n, k): (usize, usize, usize), trans_b: bool) {
    let ldb = if trans_b { k } else { n };
    unsafe {
        cblas_sgemm(
            101,
            111,
            if trans_b { 112 } else { 111 },
            m as i32,
            n as i32,
            k as i32,
            1.0,
            a,
            k as i32,
            b,
            ldb as i32,
            0.0,
            c,
            n as i32,
        )
    }
}

/// Block sizes: `KC` deep panels (a `B` panel of `KC × NR` stays in L1), `MC` rows of `A` per
/// block (in L2).
const KC: usize = 256;
const MC: usize = 144;

/// `C = A·B` (or `A·Bᵀ`), row-major, by the packed scheme with `micro`; the columns of `C`
/// split between threads where `threaded`.
///
/// # Safety
/// `a` holds `m × k`, `b` `k × n` (`n × k` with `trans_b`), `c` `m × n`, `c` disjoint from both.
pub unsafe fn packed(
    micro: MicroKernel,
    c: *mut f32,
    a: *const f32,
    b: *const f32,
    (m, n, k): (usize, usize, usize),
    trans_b: bool,
    threaded: bool,
) {
    let nr = micro.nr;
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        // SAFETY: `c` holds m × n.
        unsafe { std::ptr::write_bytes(c, 0, m * n) };
        return;
    }
    let threads = if threaded { rayon::current_num_threads().max(1) } else { 1 };
    // Column slices of whole panels, one or more per thread.
    let panels = n.div_ceil(nr);
    let per = panels.div_ceil(threads);
    let (cs, as_, bs) = (c as usize, a as usize, b as usize);
    let slice = |t: usize| {
        let (j0, j1) = ((t * per * nr).min(n), ((t + 1) * per * nr).min(n));
        if j0 < j1 {
            // SAFETY: column slices are disjoint; the caller's pointers are valid.
            unsafe { columns(micro, cs as *mut f32, as_ as *const f32, bs as *const f32, (m, n, k), (j0, j1), trans_b) };
        }
    };
    if threads > 1 {
        (0..threads).into_par_iter().for_each(slice);
    } else {
        slice(0);
    }
}

/// Columns `j0..j1` of `C`.
///
/// # Safety
/// As [`packed`].
unsafe fn columns(
    micro: MicroKernel,
    c: *mut f32,
    a: *const f32,
    b: *const f32,
    (m, n, k): (usize, usize, usize),
    (j0, j1): (usize, usize),
    trans_b: bool,
) {
    let (mr, nr) = (micro.mr, micro.nr);
    let width = j1 - j0;
    let npanels = width.div_ceil(nr);
    let mut bpack = vec![0f32; KC * npanels * nr];
    let mut apack = vec![0f32; KC * MC.div_ceil(mr) * mr];
    let mut tile = vec![0f32; mr * nr];
    let mut p0 = 0;
    while p0 < k {
        let kc = KC.min(k - p0);
        // Pack B[p0.., j0..j1] into panels of NR columns, zero beyond the slice.
        for jp in 0..npanels {
            let panel = &mut bpack[jp * kc * nr..(jp + 1) * kc * nr];
            let jcol = j0 + jp * nr;
            let cols = nr.min(j1 - jcol);
            for p in 0..kc {
                let row = &mut panel[p * nr..(p + 1) * nr];
                if trans_b {
                    for (jj, x) in row.iter_mut().enumerate().take(cols) {
                        // SAFETY: column jcol + jj < n, depth p0 + p < k.
                        *x = unsafe { *b.add((jcol + jj) * k + p0 + p) };
                    }
                } else {
                    // SAFETY: row p0 + p of B, columns jcol..jcol + cols.
                    row[..cols].copy_from_slice(unsafe { std::slice::from_raw_parts(b.add((p0 + p) * n + jcol), cols) });
                }
                row[cols..].fill(0.0);
            }
        }
        let mut i0 = 0;
        while i0 < m {
            let mc = MC.min(m - i0);
            let mpanels = mc.div_ceil(mr);
            for ip in 0..mpanels {
                let panel = &mut apack[ip * kc * mr..(ip + 1) * kc * mr];
                let rows = mr.min(m - (i0 + ip * mr));
                if rows < mr {
                    panel.fill(0.0);
                }
                for ii in 0..rows {
                    // SAFETY: row i0 + ip·mr + ii < m of A, columns p0..p0 + kc.
                    let src = unsafe { std::slice::from_raw_parts(a.add((i0 + ip * mr + ii) * k + p0), kc) };
                    for (p, &x) in src.iter().enumerate() {
                        panel[p * mr + ii] = x;
                    }
                }
            }
            for jp in 0..npanels {
                let jcol = j0 + jp * nr;
                let cols = nr.min(j1 - jcol);
                for ip in 0..mpanels {
                    let irow = i0 + ip * mr;
                    let rows = mr.min(m - irow);
                    let (ap, bp) = (apack[ip * kc * mr..].as_ptr(), bpack[jp * kc * nr..].as_ptr());
                    let acc = i32::from(p0 > 0);
                    if rows == mr && cols == nr {
                        // SAFETY: the tile lies inside C (row stride n).
                        unsafe { (micro.f)(kc as i64, ap, bp, c.add(irow * n + jcol), n as i64, acc) };
                    } else {
                        // An edge tile: through a full tile, the valid part copied.
                        for ii in 0..rows {
                            for jj in 0..cols {
                                // SAFETY: inside C.
                                tile[ii * nr + jj] = if acc != 0 { unsafe { *c.add((irow + ii) * n + jcol + jj) } } else { 0.0 };
                            }
                        }
                        unsafe { (micro.f)(kc as i64, ap, bp, tile.as_mut_ptr(), nr as i64, 1) };
                        for ii in 0..rows {
                            for jj in 0..cols {
                                // SAFETY: inside C.
                                unsafe { *c.add((irow + ii) * n + jcol + jj) = tile[ii * nr + jj] };
                            }
                        }
                    }
                }
            }
            i0 += mc;
        }
        p0 += kc;
    }
}

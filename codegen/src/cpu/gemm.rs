//! OpenBLAS's GEMM (feature `openblas`), and the blocked, packed GEMM around a generated
//! micro-kernel (the GotoBLAS/BLIS scheme: each thread takes a slice of `C`'s columns; per
//! `KC`-deep block, its slice of `B` is packed in `NR`-wide panels and `A` in `MC × KC` blocks
//! of `MR`-tall panels, and the micro-kernel runs over each panel pair). A weight's `B` is
//! packed once ([`pack_b`], by the executor's `pack_b` steps); other operands at every call.
//! Each thread packs all of `A`.
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
    /// The name of the kernels OpenBLAS chose for this CPU (`Haswell`, `SkylakeX`, …).
    fn openblas_get_corename() -> *const std::ffi::c_char;
}

/// The kernels OpenBLAS chose for this CPU, by OpenBLAS's name for them.
#[cfg(feature = "openblas")]
pub fn openblas_core() -> String {
    // SAFETY: OpenBLAS returns a static NUL-terminated string (or null).
    let name = unsafe { openblas_get_corename() };
    if name.is_null() {
        return String::new();
    }
    // SAFETY: as above.
    unsafe { std::ffi::CStr::from_ptr(name) }.to_string_lossy().into_owned()
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

/// Blocking: `KC`-deep panels; an `A` panel (`MR × KC`, the broadcast operand) stays in L1
/// while it passes over a chunk of `B` panels (`KC × NR` each, loaded as vectors) of about
/// `L2_BYTES`, which stays in L2 while every `A` panel passes over it (BLIS's order, with the
/// roles of `A` and `B` swapped for a row-major `C`).
const KC: usize = 256;
const L2_BYTES: usize = 1 << 20;

/// The second operand of [`packed`].
#[derive(Clone, Copy, Debug)]
pub enum Rhs {
    /// `B` as stored: `k × n` row-major, or `n × k` (`Bᵀ`) where `trans_b`; packed at each call.
    Plain {
        /// First element.
        b: *const f32,
        /// Stored transposed.
        trans_b: bool,
    },
    /// `B` packed once by [`pack_b`] (a weight).
    Packed(*const f32),
}

// SAFETY: the pointers are read only, and the caller keeps the memory alive for the call.
unsafe impl Send for Rhs {}
unsafe impl Sync for Rhs {}

/// Floats of `B` (`k × n`) packed whole by [`pack_b`] for `micro`: `n` rounded up to whole
/// panels, and room to start on a cache line.
pub fn packed_len(micro: MicroKernel, (n, k): (usize, usize)) -> usize {
    k * n.div_ceil(micro.nr) * micro.nr + LINE
}

/// Floats in a cache line: packed panels start on one (a vector load across two lines costs
/// two).
const LINE: usize = 16;

/// The first cache-line-aligned float of `p`.
fn line_aligned(p: *const f32) -> *const f32 {
    // SAFETY: less than a line in; callers reserve a line of slack.
    unsafe { p.add(p.align_offset(LINE * 4)) }
}

/// Packs all of `B` into `dst` ([`packed_len`] floats): per `KC`-deep block (the block at
/// depth `p0` starts at `p0 · n̄`, `n̄` being `n` rounded up to panels), its `NR`-wide panels one
/// after another, `kc × NR` each, zero beyond column `n`. [`packed`] reads it in that order.
///
/// # Safety
/// `b` holds `k × n` (`n × k` with `trans_b`).
pub unsafe fn pack_b(micro: MicroKernel, dst: &mut [f32], b: *const f32, (n, k): (usize, usize), trans_b: bool) {
    let nr = micro.nr;
    if n == 0 || k == 0 {
        return;
    }
    let panels = n.div_ceil(nr);
    let b = b as usize;
    let skip = line_aligned(dst.as_ptr()).addr().wrapping_sub(dst.as_ptr().addr()) / 4;
    dst[skip..skip + k * panels * nr].par_chunks_mut(KC * panels * nr).enumerate().for_each(|(block, dst)| {
        let p0 = block * KC;
        let kc = KC.min(k - p0);
        for jp in 0..panels {
            // SAFETY: inside B, as the caller promised.
            unsafe {
                pack_panel(
                    &mut dst[jp * kc * nr..(jp + 1) * kc * nr],
                    b as *const f32,
                    (n, k),
                    (p0, kc),
                    (jp * nr, nr.min(n - jp * nr)),
                    trans_b,
                )
            };
        }
    });
}

/// Packs `B[p0..p0 + kc, j..j + cols]` into one panel of `panel.len() / kc` columns (`kc`
/// rows), zero beyond `cols`.
///
/// # Safety
/// Inside `B` (`k × n`, `n × k` with `trans_b`).
unsafe fn pack_panel(
    panel: &mut [f32],
    b: *const f32,
    (n, k): (usize, usize),
    (p0, kc): (usize, usize),
    (j, cols): (usize, usize),
    trans_b: bool,
) {
    let nr = panel.len() / kc;
    for p in 0..kc {
        let row = &mut panel[p * nr..(p + 1) * nr];
        if trans_b {
            for (jj, x) in row.iter_mut().enumerate().take(cols) {
                // SAFETY: column j + jj < n, depth p0 + p < k.
                *x = unsafe { *b.add((j + jj) * k + p0 + p) };
            }
        } else {
            // SAFETY: row p0 + p of B, columns j..j + cols.
            row[..cols].copy_from_slice(unsafe { std::slice::from_raw_parts(b.add((p0 + p) * n + j), cols) });
        }
        row[cols..].fill(0.0);
    }
}

thread_local! {
    /// Each thread's packed `A` block, packed `B` panels and edge tile, kept between calls (no
    /// fresh pages at every product).
    static SCRATCH: std::cell::RefCell<[Vec<f32>; 3]> = const { std::cell::RefCell::new([Vec::new(), Vec::new(), Vec::new()]) };
}

/// `C = A·B` (or `A·Bᵀ`), row-major, by the packed scheme with `micro`; the columns of `C`
/// split between threads where `threaded`.
///
/// # Safety
/// `a` holds `m × k`, `b` `k × n` (`n × k` with `trans_b`; [`packed_len`] packed), `c` `m × n`,
/// `c` disjoint from both.
pub unsafe fn packed(micro: MicroKernel, c: *mut f32, a: *const f32, b: Rhs, (m, n, k): (usize, usize, usize), threaded: bool) {
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
    let (cs, as_) = (c as usize, a as usize);
    let slice = |t: usize| {
        let (j0, j1) = ((t * per * nr).min(n), ((t + 1) * per * nr).min(n));
        if j0 < j1 {
            SCRATCH.with_borrow_mut(|scratch| {
                // SAFETY: column slices are disjoint; the caller's pointers are valid.
                unsafe { columns(micro, cs as *mut f32, as_ as *const f32, b, (m, n, k), (j0, j1), scratch) }
            });
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
    b: Rhs,
    (m, n, k): (usize, usize, usize),
    (j0, j1): (usize, usize),
    [apack, bpack, tile]: &mut [Vec<f32>; 3],
) {
    let (mr, nr) = (micro.mr, micro.nr);
    let npanels = (j1 - j0).div_ceil(nr);
    if let Rhs::Plain { .. } = b {
        bpack.resize(KC * npanels * nr + LINE, 0.0);
    }
    tile.resize(mr * nr, 0.0);
    let mut p0 = 0;
    while p0 < k {
        let kc = KC.min(k - p0);
        // B[p0.., j0..j1] in panels of NR columns: packed now, or where `pack_b` put them.
        let bpanels: *const f32 = match b {
            Rhs::Plain { b, trans_b } => {
                let skip = line_aligned(bpack.as_ptr()).addr().wrapping_sub(bpack.as_ptr().addr()) / 4;
                for jp in 0..npanels {
                    let jcol = j0 + jp * nr;
                    let panel = &mut bpack[skip + jp * kc * nr..skip + (jp + 1) * kc * nr];
                    // SAFETY: inside B.
                    unsafe { pack_panel(panel, b, (n, k), (p0, kc), (jcol, nr.min(j1 - jcol)), trans_b) };
                }
                bpack[skip..].as_ptr()
            }
            // SAFETY: block p0 starts at p0 · n̄; the slice's first panel is j0 / nr.
            Rhs::Packed(b) => unsafe { line_aligned(b).add(p0 * n.div_ceil(nr) * nr + (j0 / nr) * kc * nr) },
        };
        // All of A[.., p0..p0 + kc] in MR-tall panels, zero below row m.
        let mpanels = m.div_ceil(mr);
        apack.resize(kc * mpanels * mr, 0.0);
        for ip in 0..mpanels {
            let panel = &mut apack[ip * kc * mr..(ip + 1) * kc * mr];
            let rows = mr.min(m - ip * mr);
            if rows < mr {
                panel.fill(0.0);
            }
            for ii in 0..rows {
                // SAFETY: row ip·mr + ii < m of A, columns p0..p0 + kc.
                let src = unsafe { std::slice::from_raw_parts(a.add((ip * mr + ii) * k + p0), kc) };
                for (p, &x) in src.iter().enumerate() {
                    panel[p * mr + ii] = x;
                }
            }
        }
        // B's panels in chunks that stay in L2 while every A panel (each in L1 across the
        // chunk) passes over them.
        let chunk = (L2_BYTES / (kc * nr * 4)).max(1);
        for jc in (0..npanels).step_by(chunk) {
            for ip in 0..mpanels {
                let irow = ip * mr;
                let rows = mr.min(m - irow);
                let ap = apack[ip * kc * mr..].as_ptr();
                for jp in jc..(jc + chunk).min(npanels) {
                    let jcol = j0 + jp * nr;
                    let cols = nr.min(j1 - jcol);
                    // SAFETY: panel jp of this block.
                    let bp = unsafe { bpanels.add(jp * kc * nr) };
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
        }
        p0 += kc;
    }
}

//! Kernels written in Rust, run by the executor on buffers of the arena: GEMMs (through the
//! `gemm` crate) with their epilogues, feed-forward blocks, norms, softmax, and the data-movement ops (gather, transpose, slice, concat, ...).
//!
//! Every function takes [`View`]s: a pointer, a shape and an element type. The executor
//! guarantees that an output never overlaps a live input.

use super::vmath::{activate, vectorized};
use rayon::prelude::*;
use tessera_ir::{DType, NormKind, ReduceOp, UnaryOp};
use tessera_runtime::{broadcast_offsets, strides};

/// A buffer during a run.
#[derive(Clone, Debug)]
pub struct View {
    /// First byte.
    pub ptr: *mut u8,
    /// Concrete shape.
    pub shape: Vec<usize>,
    /// Element type.
    pub dtype: DType,
}

// SAFETY: a view is a plain pointer into an arena or a tensor that outlives the run; kernels
// read shared views from several threads and write disjoint parts of their output.
unsafe impl Send for View {}
unsafe impl Sync for View {}

impl View {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements as f32 (the buffer must be f32).
    ///
    /// # Safety
    /// The view points at `len()` live f32 values not written during the borrow.
    pub unsafe fn f32(&self) -> &[f32] {
        unsafe { std::slice::from_raw_parts(self.ptr as *const f32, self.len()) }
    }

    /// The elements as mutable f32.
    ///
    /// # Safety
    /// As [`View::f32`], and no other reference to them exists.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn f32_mut(&self) -> &mut [f32] {
        unsafe { std::slice::from_raw_parts_mut(self.ptr as *mut f32, self.len()) }
    }

    /// Element `i` as f64, whatever the type.
    ///
    /// # Safety
    /// `i < len()` and the view points at live data.
    pub unsafe fn get(&self, i: usize) -> f64 {
        unsafe {
            match self.dtype {
                DType::F32 => f64::from(*(self.ptr as *const f32).add(i)),
                DType::I64 => *(self.ptr as *const i64).add(i) as f64,
                DType::Bool => f64::from(*self.ptr.add(i)),
            }
        }
    }
}

/// A pointer that may cross threads (each thread writes a disjoint part).
#[derive(Clone, Copy)]
pub(crate) struct Shared(pub(crate) *mut u8);
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// The pointer (a method, so that closures capture the `Send` wrapper, not its field).
    pub(crate) fn ptr(self) -> *mut u8 {
        self.0
    }
}

/// Copies runs of `run` contiguous elements: run `r` of the output comes from the input
/// starting at element `src(r)`.
///
/// # Safety
/// Views valid; every run in range.
pub unsafe fn copy_runs(out: &View, x: &View, run: usize, src: impl Fn(usize) -> usize + Sync) {
    let size = x.dtype.size();
    let runs = out.len().checked_div(run).unwrap_or(0);
    let (o, s) = (Shared(out.ptr), Shared(x.ptr));
    (0..runs).into_par_iter().with_min_len((1024 / run.max(1)).max(1)).for_each(|r| {
        unsafe { std::ptr::copy_nonoverlapping(s.ptr().add(src(r) * size), o.ptr().add(r * run * size), run * size) };
    });
}

/// Copies through a stride map: `out[i] = x[Σ idx_d · st_d]`, by contiguous runs when the
/// innermost axis has stride 1.
///
/// # Safety
/// Views valid; strides in range.
pub unsafe fn copy_strided(out: &View, x: &View, st: &[usize]) {
    let r = out.shape.len();
    if r > 0 && st[r - 1] == 1 && out.shape[r - 1] > 1 {
        let run = out.shape[r - 1];
        let outer = strided(&out.shape[..r - 1], &st[..r - 1]);
        unsafe { copy_runs(out, x, run, outer) };
    } else {
        unsafe { gather_elements(out, x, strided(&out.shape, st)) };
    }
}

/// Copies elements: `out[i] = x[src(i)]` for every output element.
///
/// # Safety
/// Views valid; `src` in range.
pub unsafe fn gather_elements(out: &View, x: &View, src: impl Fn(usize) -> usize + Sync) {
    let size = x.dtype.size();
    let (o, s) = (Shared(out.ptr), Shared(x.ptr));
    (0..out.len()).into_par_iter().with_min_len(4096).for_each(|i| {
        unsafe { std::ptr::copy_nonoverlapping(s.ptr().add(src(i) * size), o.ptr().add(i * size), size) };
    });
}

/// Offsets into a tensor of `shape` read along `out` shape with the given strides.
pub fn strided(out: &[usize], st: &[usize]) -> impl Fn(usize) -> usize + Sync {
    let out = out.to_vec();
    let st = st.to_vec();
    move |mut i| {
        let mut off = 0;
        for d in (0..out.len()).rev() {
            let n = out[d].max(1);
            off += (i % n) * st[d];
            i /= n;
        }
        off
    }
}

/// Batched `out = a @ b` (or `a @ bᵀ` with `trans_b`), batch axes broadcast, by the GEMM
/// library of this process (`crate::gemm_library`); `packed`: `b` (2-D) packed once for the
/// packed library by `gemm::pack_b`, which that library then reads instead.
///
/// # Safety
/// f32 views, shapes consistent with a matmul; `packed` holds `b` as `gemm::pack_b` packs it.
pub unsafe fn matmul(out: &View, a: &View, b: &View, trans_b: bool, packed: Option<*const f32>) {
    unsafe { matmul_on(out, a, b, trans_b, true, packed) }
}

/// [`matmul`] on the calling thread only (`threaded` false): for callers that run several
/// products in parallel themselves.
///
/// # Safety
/// As [`matmul`].
pub unsafe fn matmul_on(out: &View, a: &View, b: &View, trans_b: bool, threaded: bool, packed: Option<*const f32>) {
    let (ra, rb, r) = (a.shape.len(), b.shape.len(), out.shape.len());
    let (m, k) = (a.shape[ra - 2], a.shape[ra - 1]);
    let n = if trans_b { b.shape[rb - 2] } else { b.shape[rb - 1] };
    let (rhs_cs, rhs_rs) = if trans_b { (k as isize, 1) } else { (1, n as isize) };
    let batch = &out.shape[..r - 2];
    let oa = broadcast_offsets(batch, &a.shape[..ra - 2]);
    let ob = broadcast_offsets(batch, &b.shape[..rb - 2]);
    let threads = rayon::current_num_threads();
    for (bi, (ia, ib)) in oa.iter().zip(&ob).enumerate() {
        let (o, av, bv) = unsafe {
            ((out.ptr as *mut f32).add(bi * m * n), (a.ptr as *const f32).add(ia * m * k), (b.ptr as *const f32).add(ib * k * n))
        };
        if m <= super::gemv::MAX_ROWS && m > 0 {
            unsafe { super::gemv::product(o, av, bv, (m, n, k), trans_b, threaded) };
            continue;
        }
        match crate::gemm_library::library() {
            crate::gemm_library::Library::Packed(micro) => {
                let rhs = match packed {
                    // A packed `b` is 2-D: every batch reads it whole.
                    Some(p) => super::gemm::Rhs::Packed(p),
                    None => super::gemm::Rhs::Plain { b: bv, trans_b },
                };
                unsafe { super::gemm::packed(micro, o, av, rhs, (m, n, k), threaded) };
                continue;
            }
            #[cfg(feature = "openblas")]
            // CBLAS takes 32-bit sizes.
            crate::gemm_library::Library::OpenBlas if threaded && [m, n, k].iter().all(|&d| d < i32::MAX as usize) => {
                unsafe { super::gemm::openblas(o, av, bv, (m, n, k), trans_b) };
                continue;
            }
            _ => {}
        }
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                o,
                1,
                n as isize,
                false,
                av,
                1,
                k as isize,
                bv,
                rhs_cs,
                rhs_rs,
                0.0,
                1.0,
                false,
                false,
                false,
                if threaded && m * n * k > 32 * 32 * 32 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None },
            )
        };
    }
}

/// `y += bias`, `act`, `+= residual` over rows of `y`, in f32 (each step rounds as the
/// interpreter's f64-then-round does: one f32 operation on f32 operands is correctly rounded).
///
/// # Safety
/// f32 views; `bias` has the last size of `y`, `residual` broadcasts to `y`.
pub unsafe fn epilogue(y: &View, bias: Option<&View>, act: Option<UnaryOp>, residual: Option<&View>) {
    if bias.is_none() && act.is_none() && residual.is_none() {
        return;
    }
    let d = y.shape.last().copied().unwrap_or(1).max(1);
    let out = unsafe { y.f32_mut() };
    let b = bias.map(|b| unsafe { b.f32() });
    // A residual of the output's shape is read in place; a broadcast one through offsets.
    let res = residual.map(|r| (unsafe { r.f32() }, (r.shape != y.shape).then(|| broadcast_offsets(&y.shape, &r.shape))));
    out.par_chunks_mut(d).enumerate().with_min_len(16).for_each(|(row, ys)| {
        let r = res.as_ref().map(|(r, offs)| match offs {
            None => std::borrow::Cow::Borrowed(&r[row * d..(row + 1) * d]),
            Some(offs) => std::borrow::Cow::Owned(offs[row * d..(row + 1) * d].iter().map(|&o| r[o]).collect()),
        });
        epilogue_row(ys, b, act, r.as_deref());
    });
}

/// `act` over `y` on the calling thread (see [`matmul_on`]).
///
/// # Safety
/// An f32 view.
pub unsafe fn epilogue_rows(y: &View, act: UnaryOp) {
    let d = y.shape.last().copied().unwrap_or(1).max(1);
    unsafe { y.f32_mut() }.chunks_mut(d).for_each(|ys| epilogue_row(ys, None, Some(act), None));
}

vectorized!(fn epilogue_row(ys: &mut [f32], bias: Option<&[f32]>, act: Option<UnaryOp>, res: Option<&[f32]>) => epilogue_row_body);

#[inline(always)]
fn epilogue_row_body<const FMA: bool>(ys: &mut [f32], bias: Option<&[f32]>, act: Option<UnaryOp>, res: Option<&[f32]>) {
    if let Some(b) = bias {
        ys.iter_mut().zip(b).for_each(|(y, b)| *y += b);
    }
    if let Some(a) = act {
        activate::<FMA>(a, ys);
    }
    if let Some(r) = res {
        ys.iter_mut().zip(r).for_each(|(y, r)| *y += r);
    }
}

vectorized!(
    /// One row of a gated (or plain) feed-forward hidden layer: `out = act(h[..w]) ⊙ h[w..]`
    /// where `w` is `out`'s length, or `act(h)` when not gated.
    pub fn gate_row(out: &mut [f32], h: &[f32], act: UnaryOp, gated: bool) => gate_row_body
);

#[inline(always)]
fn gate_row_body<const FMA: bool>(out: &mut [f32], h: &[f32], act: UnaryOp, gated: bool) {
    let w = out.len();
    out.copy_from_slice(&h[..w]);
    activate::<FMA>(act, out);
    if gated {
        out.iter_mut().zip(&h[w..]).for_each(|(o, u)| *o *= u);
    }
}

/// Layer or RMS norm over the last axis.
///
/// # Safety
/// f32 views of matching shapes.
pub unsafe fn norm(out: &View, x: &View, kind: NormKind, eps: f64, w: Option<&View>, b: Option<&View>) {
    let d = x.shape.last().copied().unwrap_or(1).max(1);
    let (xs, ys) = unsafe { (x.f32(), out.f32_mut()) };
    let (w, b) = unsafe { (w.map(|w| w.f32()), b.map(|b| b.f32())) };
    // Sums in eight f32 lanes (so that the loops vectorize; a row of 4096 sums with an error
    // near 1e-6 of its size), the mean and the variance in two passes.
    let sum = |x: &[f32], g: &dyn Fn(f32) -> f32| {
        let mut acc = [0f32; 8];
        let mut chunks = x.chunks_exact(8);
        for c in &mut chunks {
            for (a, &v) in acc.iter_mut().zip(c) {
                *a += g(v);
            }
        }
        acc.iter().sum::<f32>() + chunks.remainder().iter().map(|&v| g(v)).sum::<f32>()
    };
    ys.par_chunks_mut(d).zip(xs.par_chunks(d)).with_min_len(8).for_each(|(y, x)| {
        let mean = if kind == NormKind::Layer { sum(x, &|v| v) / d as f32 } else { 0.0 };
        let var = f64::from(sum(x, &|v| (v - mean) * (v - mean))) / d as f64;
        let inv = (1.0 / (var + eps).sqrt()) as f32;
        let rows = y.iter_mut().zip(x);
        match (w, b) {
            (Some(w), Some(b)) => rows.zip(w).zip(b).for_each(|(((y, &x), &w), &b)| *y = (x - mean) * inv * w + b),
            (Some(w), None) => rows.zip(w).for_each(|((y, &x), &w)| *y = (x - mean) * inv * w),
            (None, Some(b)) => rows.zip(b).for_each(|((y, &x), &b)| *y = (x - mean) * inv + b),
            (None, None) => rows.for_each(|(y, &x)| *y = (x - mean) * inv),
        }
    });
}

/// Runs a compiled row kernel `f(out, x, rows, d)` over the rows (the last axis) of `x`, in
/// parallel blocks of rows.
///
/// # Safety
/// f32 views of the same shape; `f` reads and writes `rows` rows of `d` from its pointers.
pub unsafe fn rows_in_parallel(out: &View, x: &View, f: impl Fn(*mut f32, *const f32, i64, i64) + Sync) {
    let d = x.shape.last().copied().unwrap_or(1);
    unsafe { blocks_of_rows(out, x, x.len().checked_div(d).unwrap_or(0), d, f) }
}

/// As [`rows_in_parallel`] for a reduction of each row of `x` to one element of `out`.
///
/// # Safety
/// f32 views; `out` holds one element per row of `x`.
pub unsafe fn reduce_rows_in_parallel(out: &View, x: &View, f: impl Fn(*mut f32, *const f32, i64, i64) + Sync) {
    // One row per output element, also where the rows are empty.
    unsafe { blocks_of_rows(out, x, out.len(), 1, f) }
}

/// Calls `f(out + r0·out_row, x + r0·d, rows, d)` on parallel blocks of the `rows` rows of `x`.
///
/// # Safety
/// As the callers.
unsafe fn blocks_of_rows(out: &View, x: &View, rows: usize, out_row: usize, f: impl Fn(*mut f32, *const f32, i64, i64) + Sync) {
    let d = x.shape.last().copied().unwrap_or(1);
    // Blocks of at least 32 KiB, at most four per thread.
    let per = (32 * 1024 / (4 * d.max(1))).max(rows.div_ceil(4 * rayon::current_num_threads())).max(1);
    let (o, xs) = (Shared(out.ptr), Shared(x.ptr));
    (0..rows.div_ceil(per)).into_par_iter().for_each(|blk| {
        let (r0, r1) = (blk * per, ((blk + 1) * per).min(rows));
        // SAFETY: block `blk` covers rows r0..r1, inside both views; blocks are disjoint.
        unsafe { f((o.ptr() as *mut f32).add(r0 * out_row), (xs.ptr() as *const f32).add(r0 * d), (r1 - r0) as i64, d as i64) }
    });
}

/// Stable softmax along `axis`.
///
/// # Safety
/// f32 views of the same shape.
pub unsafe fn softmax(out: &View, x: &View, axis: usize) {
    let size = x.shape[axis];
    let inner: usize = x.shape[axis + 1..].iter().product();
    let outer: usize = x.shape[..axis].iter().product();
    let (xs, o) = (unsafe { x.f32() }, Shared(out.ptr));
    (0..outer * inner).into_par_iter().for_each(|r| {
        let (b, j) = (r / inner, r % inner);
        let at = |k: usize| (b * size + k) * inner + j;
        let m = (0..size).map(|k| f64::from(xs[at(k)])).fold(f64::NEG_INFINITY, f64::max);
        let s: f64 = (0..size).map(|k| (f64::from(xs[at(k)]) - m).exp()).sum();
        for k in 0..size {
            unsafe { *(o.ptr() as *mut f32).add(at(k)) = ((f64::from(xs[at(k)]) - m).exp() / s) as f32 };
        }
    });
}

/// Reduction over `axes` (the output's shape, keepdim or not, has the same element count as
/// the kept axes).
///
/// # Safety
/// Views valid.
pub unsafe fn reduce(out: &View, x: &View, op: ReduceOp, axes: &[usize]) {
    let keep: Vec<usize> = x.shape.iter().enumerate().map(|(i, &n)| if axes.contains(&i) { 1 } else { n }).collect();
    let st = strides(&keep);
    let slot_st: Vec<usize> = keep.iter().zip(&st).map(|(&k, &s)| if k == 1 { 0 } else { s }).collect();
    let slot = strided(&x.shape, &slot_st);
    let count: usize = axes.iter().map(|&a| x.shape[a]).product();
    let init = match op {
        ReduceOp::Sum | ReduceOp::Mean => 0.0,
        ReduceOp::Max => f64::NEG_INFINITY,
        ReduceOp::Min => f64::INFINITY,
    };
    // f32 rows reduced over their last axis: rows in parallel, each in order as below.
    if axes.len() == 1 && axes[0] + 1 == x.shape.len() && x.dtype == DType::F32 && out.dtype == DType::F32 {
        let row = move |y: *mut f32, xs: *const f32, rows: i64, d: i64| {
            let (rows, d) = (rows as usize, d as usize);
            for r in 0..rows {
                // SAFETY: the block's rows of `x` and elements of `out`.
                let xs = unsafe { std::slice::from_raw_parts(xs.add(r * d), d) };
                let mut a = init;
                for &v in xs {
                    let v = f64::from(v);
                    a = match op {
                        ReduceOp::Sum | ReduceOp::Mean => a + v,
                        ReduceOp::Max => tessera_ir::nan_max(a, v),
                        ReduceOp::Min => tessera_ir::nan_min(a, v),
                    };
                }
                if op == ReduceOp::Mean {
                    a /= count as f64;
                }
                unsafe { *y.add(r) = a as f32 };
            }
        };
        unsafe { reduce_rows_in_parallel(out, x, row) };
        return;
    }
    let mut acc = vec![init; out.len()];
    for i in 0..x.len() {
        let v = unsafe { x.get(i) };
        let a = &mut acc[slot(i)];
        *a = match op {
            ReduceOp::Sum | ReduceOp::Mean => *a + v,
            ReduceOp::Max => tessera_ir::nan_max(*a, v),
            ReduceOp::Min => tessera_ir::nan_min(*a, v),
        };
    }
    if op == ReduceOp::Mean {
        acc.iter_mut().for_each(|a| *a /= count as f64);
    }
    unsafe { store(out, &acc) };
}

/// Writes f64 values into a view of any type (rounded, truncated or tested for nonzero).
///
/// # Safety
/// `vals.len() == out.len()`.
pub unsafe fn store(out: &View, vals: &[f64]) {
    for (i, &v) in vals.iter().enumerate() {
        unsafe {
            match out.dtype {
                DType::F32 => *(out.ptr as *mut f32).add(i) = v as f32,
                DType::I64 => *(out.ptr as *mut i64).add(i) = v as i64,
                DType::Bool => *out.ptr.add(i) = u8::from(v != 0.0),
            }
        }
    }
}

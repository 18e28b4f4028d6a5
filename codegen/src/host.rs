//! Kernels written in Rust, run by the executor on buffers of the arena: GEMMs (through the
//! `gemm` crate) with their epilogues, feed-forward blocks, norms, softmax, the flash-style
//! attention kernel, and the data-movement ops (gather, transpose, slice, concat, ...).
//!
//! Every function takes [`View`]s: a pointer, a shape and an element type. The executor
//! guarantees that an output never overlaps a live input.

use crate::jit::RowFn;
use rayon::prelude::*;
use tessera_ir::{DType, NormKind, ReduceOp, ScoreFn, TileClass, UnaryOp};
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
struct Shared(*mut u8);
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// The pointer (a method, so that closures capture the `Send` wrapper, not its field).
    fn ptr(self) -> *mut u8 {
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

/// Strides of `x` aligned to a broadcast output of rank `rank` (0 along broadcast axes).
pub fn broadcast_strides(x: &[usize], rank: usize) -> Vec<usize> {
    let st = strides(x);
    let pad = rank - x.len().min(rank);
    (0..rank).map(|d| if d < pad || x[d - pad] == 1 { 0 } else { st[d - pad] }).collect()
}

/// Batched `out = a @ b` (or `a @ bᵀ` with `trans_b`), batch axes broadcast, with the `gemm`
/// crate.
///
/// # Safety
/// f32 views, shapes consistent with a matmul.
pub unsafe fn matmul(out: &View, a: &View, b: &View, trans_b: bool) {
    let (ra, rb, r) = (a.shape.len(), b.shape.len(), out.shape.len());
    let (m, k) = (a.shape[ra - 2], a.shape[ra - 1]);
    let n = if trans_b { b.shape[rb - 2] } else { b.shape[rb - 1] };
    let (rhs_cs, rhs_rs) = if trans_b { (k as isize, 1) } else { (1, n as isize) };
    let batch = &out.shape[..r - 2];
    let oa = broadcast_offsets(batch, &a.shape[..ra - 2]);
    let ob = broadcast_offsets(batch, &b.shape[..rb - 2]);
    let threads = rayon::current_num_threads();
    for (bi, (ia, ib)) in oa.iter().zip(&ob).enumerate() {
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                (out.ptr as *mut f32).add(bi * m * n),
                1,
                n as isize,
                false,
                (a.ptr as *const f32).add(ia * m * k),
                1,
                k as isize,
                (b.ptr as *const f32).add(ib * k * n),
                rhs_cs,
                rhs_rs,
                0.0,
                1.0,
                false,
                false,
                false,
                if m * n * k > 32 * 32 * 32 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None },
            )
        };
    }
}

/// `y += bias`, `act`, `+= residual` over rows of `y`.
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
    let res = residual.map(|r| (unsafe { r.f32() }, broadcast_offsets(&y.shape, &r.shape)));
    out.par_chunks_mut(d).enumerate().with_min_len(16).for_each(|(row, ys)| {
        for (c, v) in ys.iter_mut().enumerate() {
            let mut x = f64::from(*v);
            if let Some(b) = b {
                x = f64::from((x + f64::from(b[c])) as f32);
            }
            if let Some(a) = act {
                x = f64::from(act_f32(a, x as f32));
            }
            if let Some((r, offs)) = &res {
                x += f64::from(r[offs[row * d + c]]);
            }
            *v = x as f32;
        }
    });
}

/// Layer or RMS norm over the last axis.
///
/// # Safety
/// f32 views of matching shapes.
pub unsafe fn norm(out: &View, x: &View, kind: NormKind, eps: f64, w: Option<&View>, b: Option<&View>) {
    let d = x.shape.last().copied().unwrap_or(1).max(1);
    let (xs, ys) = unsafe { (x.f32(), out.f32_mut()) };
    let (w, b) = unsafe { (w.map(|w| w.f32()), b.map(|b| b.f32())) };
    ys.par_chunks_mut(d).zip(xs.par_chunks(d)).with_min_len(8).for_each(|(y, x)| {
        let mean = if kind == NormKind::Layer { x.iter().map(|&v| f64::from(v)).sum::<f64>() / d as f64 } else { 0.0 };
        let var = x.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / d as f64;
        let inv = 1.0 / (var + eps).sqrt();
        for (k, (yv, &xv)) in y.iter_mut().zip(x).enumerate() {
            *yv = ((f64::from(xv) - mean) * inv * w.map_or(1.0, |w| f64::from(w[k])) + b.map_or(0.0, |b| f64::from(b[k]))) as f32;
        }
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

/// Query rows per attention tile.
pub const TILE_Q: usize = 128;
/// Keys per attention tile.
pub const TILE_K: usize = 64;

/// What the attention kernel did.
#[derive(Clone, Copy, Debug, Default)]
pub struct AttentionStats {
    /// Tiles computed.
    pub tiles: usize,
    /// Tiles skipped as fully masked.
    pub skipped: usize,
}

/// `e^x` for `x ≤ 0` in f32 (softmax probabilities), branch-free so that loops over it
/// vectorize: `x = n·ln 2 + r`, `2^n` from the exponent bits, a degree-6 polynomial for `e^r`
/// (relative error below 5e-7). Inputs below -87 give e^-87 ≈ 1.6e-38, negligible next to any
/// visible score.
#[inline]
pub fn exp_neg(x: f32) -> f32 {
    let x = x.max(-87.0);
    let n = (x * std::f32::consts::LOG2_E).round();
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (0.166_666_67 + r * (0.041_666_668 + r * (0.008_333_334 + r * 0.001_388_889)))));
    f32::from_bits(((n as i32 + 127) << 23) as u32) * p
}

/// An activation in f32 (the common ones through f32 library functions, the rest through
/// the interpreter's f64 definition).
#[inline]
pub fn act_f32(u: UnaryOp, x: f32) -> f32 {
    match u {
        UnaryOp::Relu => x.max(0.0),
        UnaryOp::GeluTanh => 0.5 * x * (1.0 + (0.797_884_6 * (x + 0.044715 * x * x * x)).tanh()),
        UnaryOp::GeluErf => 0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2)),
        UnaryOp::Silu => x / (1.0 + (-x).exp()),
        UnaryOp::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        UnaryOp::Tanh => x.tanh(),
        other => other.eval(f64::from(x)) as f32,
    }
}

/// Flash-style attention: for each (batch, head, query tile), key tiles are visited with an
/// online softmax; tiles the mask analysis proves dead are skipped; scores are never stored
/// beyond one row of one tile. The score function runs as a compiled row kernel over a tile
/// row (`score`, see [`crate::jit::RowFn`]).
///
/// # Safety
/// f32 q, k, v, out views as `Op::Attention` types them; `extra` are its other operands.
pub unsafe fn attention(out: &View, q: &View, k: &View, v: &View, extra: &[View], f: &ScoreFn, score: RowFn) -> AttentionStats {
    let r = out.shape.len();
    let (s, e) = (q.shape[q.shape.len() - 2], q.shape[q.shape.len() - 1]);
    let (t, ev) = (k.shape[k.shape.len() - 2], v.shape[v.shape.len() - 1]);
    let batch = out.shape[..r - 2].to_vec();
    let (oq, ok, ov) = (
        broadcast_offsets(&batch, &q.shape[..q.shape.len() - 2]),
        broadcast_offsets(&batch, &k.shape[..k.shape.len() - 2]),
        broadcast_offsets(&batch, &v.shape[..v.shape.len() - 2]),
    );
    let leaf_st: Vec<Vec<usize>> = extra.iter().map(|l| broadcast_strides(&l.shape, r)).collect();
    let leaf_steps: Vec<i64> = leaf_st.iter().map(|st| st[r - 1] as i64).collect();
    // Tables read by gather, widened to f32.
    let tables: Vec<Vec<f32>> = extra.iter().map(|l| (0..l.len()).map(|i| unsafe { l.get(i) } as f32).collect()).collect();
    let table_ptrs: Vec<usize> = tables.iter().map(|t| t.as_ptr() as usize).collect();
    let table_lens: Vec<i64> = tables.iter().map(|t| t.len() as i64).collect();
    let batch_st = strides(&batch);
    let heads: usize = batch.iter().skip(1).product();
    let (qs, ks, vs) = unsafe { (q.f32(), k.f32(), v.f32()) };
    let o = Shared(out.ptr);
    let q_tiles = s.div_ceil(TILE_Q);
    let k_tiles = t.div_ceil(TILE_K);
    // Which key tiles each query tile visits, and whether they are fully visible: the mask
    // analysis, once per pair of tiles.
    let live: Vec<Vec<(usize, bool)>> = (0..q_tiles)
        .map(|qt| {
            let (i0, i1) = (qt * TILE_Q, ((qt + 1) * TILE_Q).min(s));
            (0..k_tiles)
                .filter_map(|kt| {
                    let (j0, j1) = (kt * TILE_K, ((kt + 1) * TILE_K).min(t));
                    match f.tile_class((i0 as i64, i1 as i64 - 1), (j0 as i64, j1 as i64 - 1)) {
                        TileClass::Dead => None,
                        class => Some((kt, class == TileClass::Full)),
                    }
                })
                .collect()
        })
        .collect();
    let done: usize = live.iter().map(Vec::len).sum::<usize>() * oq.len();
    let plain = f.plain_scale();
    (0..oq.len() * q_tiles).into_par_iter().for_each(|job| {
        let (bi, qt) = (job / q_tiles, job % q_tiles);
        let idx: Vec<usize> = batch_st.iter().zip(&batch).map(|(&st, &n)| (bi / st.max(1)) % n.max(1)).collect();
        let b_index = idx.first().copied().unwrap_or(0) as f64;
        let h_index = if batch.len() > 1 { (bi % heads.max(1)) as f64 } else { 0.0 };
        let lbase: Vec<usize> = leaf_st.iter().map(|st| idx.iter().zip(st).map(|(i, s)| i * s).sum()).collect();
        let (i0, i1) = (qt * TILE_Q, ((qt + 1) * TILE_Q).min(s));
        let rows = i1 - i0;
        // Scores of one tile (rows × TILE_K), then probabilities in place; output accumulators.
        let mut sp = vec![0f32; rows * TILE_K];
        let mut acc = vec![0f32; rows * ev];
        let mut m = vec![f32::NEG_INFINITY; rows];
        let mut l = vec![0f64; rows];
        let mut ptrs = vec![std::ptr::null::<u8>(); extra.len()];
        let q_tile = &qs[(oq[bi] * s + i0) * e..(oq[bi] * s + i1) * e];
        for &(kt, is_full) in &live[qt] {
            let (j0, j1) = (kt * TILE_K, ((kt + 1) * TILE_K).min(t));
            let n = j1 - j0;
            // With the actual values of the extra operands over this tile (a padding mask),
            // the tile may turn out fully visible, or fully masked.
            let class = if is_full || extra.is_empty() {
                if is_full {
                    TileClass::Full
                } else {
                    TileClass::Partial
                }
            } else {
                let range = |k: u32| -> Option<(f64, f64)> {
                    let k = k as usize;
                    let (x, st) = (extra.get(k)?, &leaf_st[k]);
                    let (si, sj) = (st[r - 2], st[r - 1]);
                    let (ri, rj) = (if si == 0 { i0..i0 + 1 } else { i0..i1 }, if sj == 0 { j0..j0 + 1 } else { j0..j1 });
                    let mut lo_hi = (f64::INFINITY, f64::NEG_INFINITY);
                    for a in ri {
                        for b in rj.clone() {
                            let v = unsafe { x.get(lbase[k] + a * si + b * sj) };
                            lo_hi = (lo_hi.0.min(v), lo_hi.1.max(v));
                        }
                    }
                    Some(lo_hi)
                };
                f.tile_class_with((i0 as i64, i1 as i64 - 1), (j0 as i64, j1 as i64 - 1), &range)
            };
            if class == TileClass::Dead {
                continue;
            }
            let scale_only = if class == TileClass::Full { plain } else { None };
            let k_tile = &ks[(ok[bi] * t + j0) * e..(ok[bi] * t + j1) * e];
            let v_tile = &vs[(ov[bi] * t + j0) * ev..(ov[bi] * t + j1) * ev];
            // S = Q Kᵀ (row stride n), times the scale when that is all the function does here.
            let beta = scale_only.map_or(1.0, |c| c as f32);
            unsafe {
                gemm::gemm(
                    rows,
                    n,
                    e,
                    sp.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    q_tile.as_ptr(),
                    1,
                    e as isize,
                    k_tile.as_ptr(),
                    e as isize,
                    1,
                    0.0,
                    beta,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                )
            };
            for row in 0..rows {
                let i = i0 + row;
                let srow = &mut sp[row * n..(row + 1) * n];
                for (n_leaf, p) in ptrs.iter_mut().enumerate() {
                    let st = &leaf_st[n_leaf];
                    let off = lbase[n_leaf] + i * st[r - 2] + j0 * st[r - 1];
                    *p = unsafe { extra[n_leaf].ptr.add(off * extra[n_leaf].dtype.size()) };
                }
                let vars = [b_index, h_index, i as f64, j0 as f64];
                if scale_only.is_none() {
                    unsafe {
                        score(
                            srow.as_mut_ptr() as *mut u8,
                            n as i64,
                            ptrs.as_ptr(),
                            leaf_steps.as_ptr(),
                            vars.as_ptr(),
                            table_ptrs.as_ptr() as *const *const f32,
                            table_lens.as_ptr(),
                        )
                    };
                }
                // Online softmax: rescale what was accumulated when the running max grows.
                let tile_max = srow.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let new_m = m[row].max(tile_max);
                let rescale = (m[row] - new_m).exp();
                for x in srow.iter_mut() {
                    *x = exp_neg(*x - new_m);
                }
                let sum: f32 = srow.iter().sum();
                l[row] = l[row] * f64::from(rescale) + f64::from(sum);
                if rescale != 1.0 {
                    acc[row * ev..(row + 1) * ev].iter_mut().for_each(|a| *a *= rescale);
                }
                m[row] = new_m;
            }
            // acc += P V.
            unsafe {
                gemm::gemm(
                    rows,
                    ev,
                    n,
                    acc.as_mut_ptr(),
                    1,
                    ev as isize,
                    true,
                    sp.as_ptr(),
                    1,
                    n as isize,
                    v_tile.as_ptr(),
                    1,
                    ev as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                )
            };
        }
        for row in 0..rows {
            for c in 0..ev {
                let val = if l[row] > 0.0 { f64::from(acc[row * ev + c]) / l[row] } else { 0.0 };
                unsafe { *(o.ptr() as *mut f32).add((bi * s + i0 + row) * ev + c) = val as f32 };
            }
        }
    });
    AttentionStats { tiles: done, skipped: oq.len() * q_tiles * k_tiles - done }
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
    let mut acc = vec![init; out.len()];
    for i in 0..x.len() {
        let v = unsafe { x.get(i) };
        let a = &mut acc[slot(i)];
        *a = match op {
            ReduceOp::Sum | ReduceOp::Mean => *a + v,
            ReduceOp::Max => a.max(v),
            ReduceOp::Min => a.min(v),
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

#[cfg(test)]
mod tests {
    use super::{act_f32, exp_neg};
    use tessera_ir::UnaryOp;

    #[test]
    fn f32_activations_match_the_reference() {
        for u in [UnaryOp::Relu, UnaryOp::GeluTanh, UnaryOp::GeluErf, UnaryOp::Silu, UnaryOp::Sigmoid, UnaryOp::Tanh] {
            for k in -400..=400 {
                let x = k as f32 * 0.025;
                let (got, want) = (f64::from(act_f32(u, x)), u.eval(f64::from(x)));
                assert!((got - want).abs() <= 2e-6 * want.abs().max(1.0), "{u:?}({x}) = {got}, want {want}");
            }
        }
    }

    #[test]
    fn exp_neg_is_accurate_over_the_softmax_range() {
        let mut worst = 0f64;
        for k in 0..=20000 {
            let x = -(k as f32) * 0.0045;
            let (got, want) = (f64::from(exp_neg(x)), f64::from(x).exp());
            worst = worst.max((got - want).abs() / want.max(1e-30));
        }
        assert!(worst < 5e-7, "relative error {worst}");
        assert!(exp_neg(-1e30) < 1e-37);
        assert_eq!(exp_neg(0.0), 1.0);
    }
}

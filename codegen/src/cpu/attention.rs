//! The flash-style attention kernel: for each (batch, head, query tile), key tiles are visited
//! with an online softmax, tiles that the mask analysis proves dead are skipped, and the scores
//! of one tile are the only ones ever stored.

use super::codegen::{OnlineSoftmaxFn, TileProductFn};
use super::cranelift::Rows;
use super::host::{Shared, View};
use super::tile_gemm::TileProduct;
use super::vmath::{exp_neg, lanes, vectorized};
use crate::kernel::broadcast_strides;
use rayon::prelude::*;
use tessera_ir::{ScoreFn, TileClass, MASK_THRESHOLD};
use tessera_runtime::{broadcast_offsets, strides};

/// Query rows per attention tile.
pub const TILE_Q: usize = 64;
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

/// Flash-style attention: for each (batch, head, query tile), key tiles are visited with an
/// online softmax; tiles the mask analysis proves dead are skipped; scores are never stored
/// beyond one tile. The score function runs as a compiled row kernel over each tile row
/// (`score`, see [`super::cranelift::Rows`]); the online-softmax step as `online` where the
/// code generator compiled it, else as [`online_softmax`]; the tile products as `product`
/// where it compiled one, else as [`TileProduct::run`].
///
/// # Safety
/// f32 q, k, v, out views as `Op::Attention` types them; `extra` are its other operands.
#[allow(clippy::too_many_arguments)]
pub unsafe fn attention(
    out: &View,
    q: &View,
    k: &View,
    v: &View,
    extra: &[View],
    f: &ScoreFn,
    score: &Rows,
    online: Option<OnlineSoftmaxFn>,
    product: Option<TileProductFn>,
) -> AttentionStats {
    if out.is_empty() {
        return AttentionStats::default(); // no rows, or no value columns (`ev` = 0)
    }
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
    let leaf_sizes: Vec<usize> = extra.iter().map(|l| l.dtype.size()).collect();
    let table_lens: Vec<i64> = tables.iter().map(|t| t.len() as i64).collect();
    let batch_st = strides(&batch);
    let heads: usize = batch.iter().skip(1).product();
    let (qs, ks, vs) = unsafe { (q.f32(), k.f32(), v.f32()) };
    // Kᵀ of each key tile of each head ([e, n] at the tile's place in K), so that the Q Kᵀ
    // products read keys as short contiguous rows. A few queries (a decode step) read K as it
    // is instead, one dot product per key: transposing the whole K would cost more than they do.
    let few = s <= super::gemv::MAX_ROWS;
    let mut k_t = vec![0f32; if few { 0 } else { ks.len() }];
    let (head, tile) = ((t * e).max(1), (TILE_K * e).max(1));
    k_t.par_chunks_mut(head).zip(ks.par_chunks(head)).for_each(|(dst, src)| {
        for (dst, src) in dst.chunks_mut(tile).zip(src.chunks(tile)) {
            let n = src.len() / e.max(1);
            for (j, row) in src.chunks_exact(e.max(1)).enumerate() {
                for (c, &x) in row.iter().enumerate() {
                    dst[c * n + j] = x;
                }
            }
        }
    });
    let o = Shared(out.ptr);
    let q_tiles = s.div_ceil(TILE_Q);
    let k_tiles = t.div_ceil(TILE_K);
    // Which key tiles each query tile visits, and whether they are fully visible: the mask
    // analysis, once per pair of tiles.
    let live = f.live_tiles(s, t, (TILE_Q, TILE_K));
    let done: usize = live.iter().map(Vec::len).sum::<usize>() * oq.len();
    let plain = f.plain_scale();
    // Positions are exact in f32 below 2^24, as the f32x4 score rows need.
    let f32_exact = s.max(t) < 1 << 23;
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
            let v_tile = &vs[(ov[bi] * t + j0) * ev..(ov[bi] * t + j1) * ev];
            // S = Q Kᵀ (row stride n), times the scale when that is all the function does here.
            let alpha = scale_only.map_or(1.0, |c| c as f32);
            if few {
                let k_rows = ks[(ok[bi] * t + j0) * e..].as_ptr();
                unsafe { super::gemv::product(sp.as_mut_ptr(), q_tile.as_ptr(), k_rows, (rows, n, e), true, false) };
                if alpha != 1.0 {
                    sp[..rows * n].iter_mut().for_each(|x| *x *= alpha);
                }
            } else {
                let qk = TileProduct { m: rows, n, k: e, alpha, accumulate: false };
                unsafe { qk.run_with(product, q_tile.as_ptr(), e, k_t[(ok[bi] * t + j0) * e..].as_ptr(), n, sp.as_mut_ptr(), n) };
            }
            // The score function, row by row, unless the scale was all it does here.
            for row in (0..rows).filter(|_| scale_only.is_none()) {
                let i = i0 + row;
                for (n_leaf, p) in ptrs.iter_mut().enumerate() {
                    let st = &leaf_st[n_leaf];
                    let off = lbase[n_leaf] + i * st[r - 2] + j0 * st[r - 1];
                    *p = unsafe { extra[n_leaf].ptr.add(off * extra[n_leaf].dtype.size()) };
                }
                let vars = [b_index, h_index, i as f64, j0 as f64];
                let tables = (table_ptrs.as_ptr() as *const *const f32, table_lens.as_ptr());
                let row_out = sp[row * n..].as_mut_ptr() as *mut u8;
                unsafe { score.run(row_out, 4, n, &ptrs, &leaf_steps, &leaf_sizes, Some(vars), tables, f32_exact) };
            }
            match online {
                // SAFETY: `sp` holds rows × n scores, `m` and `l` a value per row, `acc` rows × ev.
                Some(step) => unsafe {
                    step(sp.as_mut_ptr(), rows as i64, n as i64, m.as_mut_ptr(), l.as_mut_ptr(), acc.as_mut_ptr(), ev as i64)
                },
                None => online_softmax(&mut sp[..rows * n], n, &mut m, &mut l, &mut acc, ev),
            }
            // acc += P V.
            let pv = TileProduct { m: rows, n: ev, k: n, alpha: 1.0, accumulate: true };
            unsafe { pv.run_with(product, sp.as_ptr(), n, v_tile.as_ptr(), ev, acc.as_mut_ptr(), ev) };
        }
        // A row whose every key is masked gets, as from a softmax over equal masked scores,
        // the mean of the values (only padding rows, in practice).
        let all_masked = |row: usize| f64::from(m[row]) <= MASK_THRESHOLD && !l[row].is_nan();
        let mean_v: Vec<f64> = if (0..rows).any(all_masked) {
            let v_all = &vs[ov[bi] * t * ev..(ov[bi] + 1) * t * ev];
            (0..ev).map(|c| (0..t).map(|j| f64::from(v_all[j * ev + c])).sum::<f64>() / t.max(1) as f64).collect()
        } else {
            Vec::new()
        };
        for row in 0..rows {
            for c in 0..ev {
                let val = if all_masked(row) { mean_v[c] } else { f64::from(acc[row * ev + c]) / l[row] };
                unsafe { *(o.ptr() as *mut f32).add((bi * s + i0 + row) * ev + c) = val as f32 };
            }
        }
    });
    AttentionStats { tiles: done, skipped: oq.len() * q_tiles * k_tiles - done }
}

vectorized!(
    /// One online-softmax step over a tile of scores (`rows × n`, row stride `n`), in place:
    /// the scores become probabilities relative to the new running maxima `m`, the running
    /// sums `l` grow, and the output accumulators `acc` (`rows × ev`) are rescaled where a
    /// maximum grew.
    fn online_softmax(sp: &mut [f32], n: usize, m: &mut [f32], l: &mut [f64], acc: &mut [f32], ev: usize) => online_softmax_body
);

#[inline(always)]
fn online_softmax_body<const FMA: bool>(sp: &mut [f32], n: usize, m: &mut [f32], l: &mut [f64], acc: &mut [f32], ev: usize) {
    for ((srow, (m, l)), acc) in sp.chunks_exact_mut(n).zip(m.iter_mut().zip(l.iter_mut())).zip(acc.chunks_exact_mut(ev)) {
        let new_m = m.max(lanes(srow, f32::NEG_INFINITY, f32::max));
        if new_m == f32::NEG_INFINITY {
            // Every score so far is -inf, or NaN (which `f32::max` skips; softmax keeps it).
            if srow.iter().any(|x| x.is_nan()) {
                *l = f64::NAN;
            }
            srow.fill(0.0);
            continue;
        }
        // A NaN score, or a +inf one (inf - inf), is NaN after `exp_neg` (which keeps NaN), so
        // the sum `l` and the accumulators carry it to the output, as softmax does.
        let rescale = exp_neg::<FMA>(*m - new_m);
        srow.iter_mut().for_each(|x| *x = exp_neg::<FMA>(*x - new_m));
        *l = *l * f64::from(rescale) + f64::from(lanes(srow, 0.0, |a, b| a + b));
        if rescale != 1.0 {
            acc.iter_mut().for_each(|a| *a *= rescale);
        }
        *m = new_m;
    }
}

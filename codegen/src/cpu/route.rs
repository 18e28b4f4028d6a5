//! Routing on the CPU: `topk`, and the grouped feed-forward kernel of a route (see
//! [`crate::route`] for the plan and how rows are grouped).

use super::host::{self, View};
use crate::route::RoutedFfn;
use rayon::prelude::*;
use tessera_ir::DType;
use tessera_runtime::{Routing, RunError};

/// Scratch buffers of the grouped kernel, kept between runs.
#[derive(Default)]
pub struct Scratch {
    rows: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    out: Vec<f32>,
}

fn sized(v: &mut Vec<f32>, n: usize) -> *mut u8 {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    v.as_mut_ptr() as *mut u8
}

/// Slice `e` of a stacked expert weight `[experts, a, b]`.
fn slice(w: &View, e: usize) -> View {
    let (a, b) = (w.shape[1], w.shape[2]);
    // SAFETY (of the caller's later reads): `e < experts`, so the slice lies inside `w`.
    View { ptr: w.ptr.wrapping_add(e * a * b * 4), shape: vec![a, b], dtype: DType::F32 }
}

/// Runs the grouped feed-forward route: `ins` are the step's operands (rows, indices,
/// weights, stacked weights), `out` its result.
///
/// # Safety
/// Views as the executor makes them: f32 rows, weights and result, i64 indices, stacked
/// weights of `[experts, .., ..]`.
pub unsafe fn run_ffn(f: &RoutedFfn, experts: usize, out: &View, ins: &[View], scratch: &mut Scratch) -> Result<(), RunError> {
    let (x, idx, w) = (&ins[0], &ins[1], &ins[2]);
    let d = x.shape.last().copied().unwrap_or(1);
    let d_out = out.shape.last().copied().unwrap_or(1);
    let k = idx.shape.last().copied().unwrap_or(1);
    let tokens: usize = out.shape.iter().rev().skip(1).product();
    let h = ins[f.gate].shape[2];
    // SAFETY: the views hold their shapes' elements.
    let choices = unsafe { std::slice::from_raw_parts(idx.ptr as *const i64, idx.len()) };
    let routing = Routing::new(choices, experts, "a route")?;
    let n = choices.len();
    // The rows in expert order.
    let rows = sized(&mut scratch.rows, n * d) as usize;
    let xs = unsafe { x.f32() };
    routing.slot.par_iter().enumerate().with_min_len(64).for_each(|(i, &c)| {
        let t = c / k;
        // SAFETY: row `i` of the grouped buffer is written by this iteration only.
        let dst = unsafe { std::slice::from_raw_parts_mut((rows as *mut f32).add(i * d), d) };
        dst.copy_from_slice(&xs[t * d..(t + 1) * d]);
    });
    let (gate, up, ys) = (sized(&mut scratch.gate, n * h), f.up.map(|_| sized(&mut scratch.up, n * h)), sized(&mut scratch.out, n * d_out));
    // Experts in parallel, each on one thread (products of ~tokens·k/experts rows are too
    // small to split well); the largest first, so that the threads finish together.
    let mut order: Vec<usize> = (0..experts).filter(|&e| !routing.rows(e).is_empty()).collect();
    order.sort_by_key(|&e| std::cmp::Reverse(routing.rows(e).len()));
    let (rows, gate, up, ys) = (rows as usize, gate as usize, up.map(|p| p as usize), ys as usize);
    order.par_iter().with_max_len(1).for_each(|&e| {
        let r = routing.rows(e);
        let m = r.len();
        let at = |p: usize, width: usize| View {
            ptr: (p as *mut u8).wrapping_add(r.start * width * 4),
            shape: vec![m, width],
            dtype: DType::F32,
        };
        let a = at(rows, d);
        let g = at(gate, h);
        // SAFETY: each expert writes only its own rows of the scratch buffers; the weight
        // slices lie inside their stacked operands (`e < experts`).
        unsafe {
            host::matmul_on(&g, &a, &slice(&ins[f.gate], e), false, false, None);
            host::epilogue_rows(&g, f.act);
            if let (Some(u), Some(up)) = (f.up, up) {
                let uv = at(up, h);
                host::matmul_on(&uv, &a, &slice(&ins[u], e), false, false, None);
                g.f32_mut().iter_mut().zip(uv.f32()).for_each(|(g, u)| *g *= u);
            }
            host::matmul_on(&at(ys, d_out), &g, &slice(&ins[f.down], e), false, false, None);
        }
    });
    // Each token's k results, weighted, in the order of its choices.
    let mut pos = vec![0usize; n];
    for (i, &c) in routing.slot.iter().enumerate() {
        pos[c] = i;
    }
    let (ws, ys, dst) = unsafe { (w.f32(), std::slice::from_raw_parts(ys as *const f32, n * d_out), out.f32_mut()) };
    dst.par_chunks_mut(d_out.max(1)).enumerate().with_min_len(16).for_each(|(t, o)| {
        o.fill(0.0);
        for j in 0..k {
            let c = t * k + j;
            let (g, y) = (ws[c], &ys[pos[c] * d_out..(pos[c] + 1) * d_out]);
            o.iter_mut().zip(y).for_each(|(o, y)| *o += g * y);
        }
    });
    debug_assert_eq!(dst.len(), tokens * d_out);
    Ok(())
}

/// `topk` of an f32 or i64 buffer: values into `vals`, indices into `idxs`.
///
/// # Safety
/// Views as the executor makes them.
pub unsafe fn topk(x: &View, vals: &View, idxs: &View, axis: usize) -> Result<(), RunError> {
    let (v, i) = tessera_runtime::topk(&x.shape, vals.shape[axis], axis, |j| unsafe { x.get(j) })?;
    unsafe {
        host::store(vals, &v);
        std::slice::from_raw_parts_mut(idxs.ptr as *mut i64, i.len()).copy_from_slice(&i);
    }
    Ok(())
}

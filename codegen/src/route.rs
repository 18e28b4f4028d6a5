//! Routing on the CPU: `topk`, and the grouped kernel of a route whose experts are
//! feed-forward blocks.
//!
//! A route's rows are grouped by expert once (a counting sort of the `[tokens, k]` choices,
//! [`tessera_runtime::Routing`]), gathered into one contiguous buffer in that order, and each
//! expert's rows run through its GEMMs as one block, reading the expert's weights in place
//! from the stacked parameters (`[experts, d, h]`: slice `e` is a plain matrix). The work is
//! `k` feed-forward passes per token whatever the number of experts, and experts that receive
//! no row cost nothing. The weighted sum back into token order reads each token's `k` results
//! (no atomics: one writer per token). The gather and the sum are copies beside the GEMMs,
//! not fused into their operand reads and epilogues.
//!
//! A body of another form runs through its scheduled program once per expert (see
//! `Executable::route`).

use crate::host::{self, View};
use rayon::prelude::*;
use tessera_ir::{BinaryOp, DType, Op, Route, UnaryOp, ValueId};
use tessera_runtime::{Routing, RunError};

/// A route body recognised as a feed-forward block: `act(x Wg) ⊙ (x Wu) Wd` (gated) or
/// `act(x W1) W2`, each weight an expert slice. Fields are operand positions of the step.
#[derive(Clone, Debug, PartialEq)]
pub struct RoutedFfn {
    /// The activation.
    pub act: UnaryOp,
    /// The first projection (the gate, when gated).
    pub gate: usize,
    /// The up projection of a gated block.
    pub up: Option<usize>,
    /// The down projection.
    pub down: usize,
}

impl RoutedFfn {
    /// What runs, for `--explain`.
    pub fn describe(&self, experts: usize) -> String {
        let form = if self.up.is_some() { "gated" } else { "plain" };
        format!(
            "grouped {form} feed-forward ({}) over {experts} experts: rows sorted by expert, one GEMM block per expert on its weights in place, weighted sum per token",
            self.act.name()
        )
    }
}

/// Recognises the feed-forward form of a route body (before or after the optimizer fused it
/// into `ffn`), or says why it is not one.
pub fn plan(r: &Route) -> Result<RoutedFfn, String> {
    let g = &r.body;
    let args: Vec<ValueId> = g.inputs().iter().map(|(_, v)| *v).collect();
    // The operand position of a body argument: the rows are operand 0, argument `k ≥ 1` is
    // operand `k + 2` (after the indices and weights).
    let operand = |v: ValueId| match args.iter().position(|&a| a == v) {
        Some(0) | None => None,
        Some(k) => (g.ty(v).rank() == 2).then_some(k + 2),
    };
    let rows = *args.first().ok_or("the body has no rows")?;
    let [(_, out)] = &g.outputs[..] else { return Err("the body has several results".into()) };
    let node = g.node(*out);
    let not = || "the body is not act(x @ w1) [* (x @ w2)] @ w3 over expert weights".to_string();
    let activation = |u: UnaryOp| matches!(u, UnaryOp::Silu | UnaryOp::GeluErf | UnaryOp::GeluTanh | UnaryOp::Relu);
    // x @ w with w an expert weight: its operand position.
    let proj = |v: ValueId| {
        let n = g.node(v);
        (n.op == Op::MatMul && n.inputs[0] == rows).then(|| operand(n.inputs[1])).flatten()
    };
    // act(x @ w), or the optimizer's gemm with that activation.
    let act_of = |v: ValueId| match g.node(v).op {
        Op::Unary(u) if activation(u) => proj(g.node(v).inputs[0]).map(|w| (u, w)),
        Op::Gemm { bias: false, act: Some(u), residual: false } if activation(u) && g.node(v).inputs[0] == rows => {
            operand(g.node(v).inputs[1]).map(|w| (u, w))
        }
        _ => None,
    };
    match &node.op {
        Op::MatMul => {
            let down = operand(node.inputs[1]).ok_or_else(not)?;
            let h = g.node(node.inputs[0]);
            let (act, gate, up) = match h.op {
                Op::Binary(BinaryOp::Mul) => {
                    let (a, b) = (h.inputs[0], h.inputs[1]);
                    match (act_of(a), proj(b), act_of(b), proj(a)) {
                        (Some((u, gw)), Some(uw), _, _) | (_, _, Some((u, gw)), Some(uw)) => (u, gw, Some(uw)),
                        _ => return Err(not()),
                    }
                }
                _ => {
                    let (u, w) = act_of(node.inputs[0]).ok_or_else(not)?;
                    (u, w, None)
                }
            };
            Ok(RoutedFfn { act, gate, up, down })
        }
        // The optimizer's fused form: ffn(x, concat(wg, wu), wd) or ffn(x, w1, w2).
        Op::Ffn { gated, act, bias: false } if node.inputs[0] == rows && activation(*act) => {
            let down = operand(node.inputs[2]).ok_or_else(not)?;
            let w_in = g.node(node.inputs[1]);
            match (gated, &w_in.op) {
                (true, Op::Concat { axis: 1 }) if w_in.inputs.len() == 2 => {
                    let gate = operand(w_in.inputs[0]).ok_or_else(not)?;
                    let up = operand(w_in.inputs[1]).ok_or_else(not)?;
                    Ok(RoutedFfn { act: *act, gate, up: Some(up), down })
                }
                (false, _) => Ok(RoutedFfn { act: *act, gate: operand(node.inputs[1]).ok_or_else(not)?, up: None, down }),
                _ => Err(not()),
            }
        }
        _ => Err(not()),
    }
}

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
            host::matmul_on(&g, &a, &slice(&ins[f.gate], e), false, false);
            host::epilogue_rows(&g, f.act);
            if let (Some(u), Some(up)) = (f.up, up) {
                let uv = at(up, h);
                host::matmul_on(&uv, &a, &slice(&ins[u], e), false, false);
                g.f32_mut().iter_mut().zip(uv.f32()).for_each(|(g, u)| *g *= u);
            }
            host::matmul_on(&at(ys, d_out), &g, &slice(&ins[f.down], e), false, false);
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

//! `merge_projections`: projections of one input by several weight matrices (Q, K and V of
//! an attention layer; K and V of a cross-attention) become one GEMM over the concatenated
//! weights, whose result is sliced back into the parts.
//!
//! Assumes: a verified graph. Guarantees: the same values; every `x @ W_i` (or
//! `gemm(x, W_i, b_i)` with a bias and no other epilogue) where `W_i` (and `b_i`) are
//! parameters and at least two share `x` is replaced by a slice of `x @ concat(W_1, ..)`;
//! inputs and parameters move to the front of the graph (they have no operands), everything
//! else keeps its order. Does not: merge projections with different epilogues, or of
//! different inputs.

use std::collections::HashMap;
use tessera_ir::{Graph, Node, Op, ValueId};

/// Merges projections that share their input.
pub fn merge_projections(g: &Graph) -> Graph {
    let is_param = |v: ValueId| matches!(g.node(v).op, Op::Param(..));
    let mut groups: HashMap<(ValueId, bool), Vec<usize>> = HashMap::new();
    for (i, n) in g.nodes().iter().enumerate() {
        let key = match n.op {
            Op::MatMul if is_param(n.inputs[1]) && g.ty(n.inputs[1]).rank() == 2 => (n.inputs[0], false),
            Op::Gemm { bias: true, act: None, residual: false }
                if is_param(n.inputs[1]) && is_param(n.inputs[2]) && g.ty(n.inputs[1]).rank() == 2 =>
            {
                (n.inputs[0], true)
            }
            _ => continue,
        };
        groups.entry(key).or_default().push(i);
    }
    groups.retain(|_, members| members.len() >= 2);
    if groups.is_empty() {
        return g.clone();
    }
    let first_of: HashMap<usize, Vec<usize>> = groups.values().map(|m| (m[0], m.clone())).collect();
    let merged: std::collections::HashSet<usize> = groups.values().flatten().copied().collect();

    let mut out = Graph::new(&g.name);
    out.files = g.files.clone();
    out.outputs.clear();
    let mut map: Vec<Option<ValueId>> = vec![None; g.len()];
    let leaf = |n: &Node| matches!(n.op, Op::Input(_) | Op::Param(..));
    for (i, n) in g.nodes().iter().enumerate().filter(|(_, n)| leaf(n)) {
        map[i] = Some(out.push_unchecked(n.clone()));
    }
    for (i, n) in g.nodes().iter().enumerate().filter(|(_, n)| !leaf(n)) {
        if let Some(members) = first_of.get(&i) {
            if emit_merged(g, &mut out, &mut map, members).is_some() {
                continue;
            }
        } else if merged.contains(&i) && map[i].is_some() {
            continue;
        }
        let inputs: Vec<ValueId> = n.inputs.iter().filter_map(|v| map[v.index()]).collect();
        map[i] = Some(out.push_unchecked(Node { op: n.op.clone(), inputs, ty: n.ty.clone(), span: n.span }));
    }
    out.outputs = g.outputs.iter().filter_map(|(name, v)| Some((name.clone(), map[v.index()]?))).collect();
    out
}

/// Emits `concat` of the weights (and biases), one product, and a slice per member.
fn emit_merged(g: &Graph, out: &mut Graph, map: &mut [Option<ValueId>], members: &[usize]) -> Option<()> {
    let first = &g.nodes()[members[0]];
    let span = first.span;
    let node = |i: usize| &g.nodes()[i];
    let mapped = |v: ValueId, map: &[Option<ValueId>]| map[v.index()];
    let weights: Vec<ValueId> = members.iter().map(|&m| mapped(node(m).inputs[1], map)).collect::<Option<_>>()?;
    let w = out.add(Op::Concat { axis: 1 }, weights, None, span).ok()?;
    let x = mapped(first.inputs[0], map)?;
    let product = if let Op::Gemm { .. } = first.op {
        let biases: Vec<ValueId> = members.iter().map(|&m| mapped(node(m).inputs[2], map)).collect::<Option<_>>()?;
        let b = out.add(Op::Concat { axis: 0 }, biases, None, span).ok()?;
        out.add(first.op.clone(), vec![x, w, b], None, span).ok()?
    } else {
        out.add(Op::MatMul, vec![x, w], None, span).ok()?
    };
    let axis = out.ty(product).rank() - 1;
    let mut start = tessera_ir::Dim::known(0);
    for &m in members {
        let width = g.ty(node(m).inputs[1]).shape[1].clone();
        let end = start.add(&width);
        let s = out.add(Op::Slice { axis, start: start.clone(), end: end.clone(), step: 1 }, vec![product], None, node(m).span).ok()?;
        map[m] = Some(s);
        start = end;
    }
    Some(())
}

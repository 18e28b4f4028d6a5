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

use tessera_ir::{BinaryOp, Op, Route, UnaryOp, ValueId};

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

/// Why a route body is not a feed-forward block over expert weights (the route then runs
/// its body per expert).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotGrouped {
    /// A body without arguments.
    #[error("the body has no rows")]
    NoRows,
    /// A body with several results.
    #[error("the body has several results")]
    SeveralResults,
    /// A body of another form.
    #[error("the body is not act(x @ w1) [* (x @ w2)] @ w3 over expert weights")]
    NotFfn,
}

/// Recognises the feed-forward form of a route body (before or after the optimizer fused it
/// into `ffn`), or says why it is not one.
pub fn plan(r: &Route) -> Result<RoutedFfn, NotGrouped> {
    let g = &r.body;
    let args: Vec<ValueId> = g.inputs().iter().map(|(_, v)| *v).collect();
    // The operand position of a body argument: the rows are operand 0, argument `k ≥ 1` is
    // operand `k + 2` (after the indices and weights).
    let operand = |v: ValueId| match args.iter().position(|&a| a == v) {
        Some(0) | None => None,
        Some(k) => (g.ty(v).rank() == 2).then_some(k + 2),
    };
    let rows = *args.first().ok_or(NotGrouped::NoRows)?;
    let [(_, out)] = &g.outputs[..] else { return Err(NotGrouped::SeveralResults) };
    let node = g.node(*out);
    let not = || NotGrouped::NotFfn;
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

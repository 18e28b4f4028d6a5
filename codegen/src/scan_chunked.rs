//! The chunked lowering of linear recurrences with outer-product updates, the form of linear
//! attention and of Mamba-2's state space duality (SSD). Per lane (the state's leading axes)
//! the state is a matrix `S [V, K]` and each position does
//!
//! ```text
//!   S_t = d_t · S_{t-1} + p_t ⊗ q_t        (d_t a scalar per lane, or 1)
//!   y_t = S_t · r_t                         (a sum over K)
//! ```
//!
//! Over a chunk of `C` positions this is matrix products instead of `C` dependent steps
//! (Dao & Gu, 2024): with `c_t = Σ_{τ≤t} log d_τ` inside the chunk,
//! `y_t = Σ_{τ≤t} e^{c_t − c_τ} (r_t · q_τ) p_τ + e^{c_t} S r_t` and the state passed on is
//! `e^{c_C} S + Σ_τ e^{c_C − c_τ} p_τ ⊗ q_τ`. Every exponent is ≤ 0, so nothing overflows
//! however strong the decay. [`recognize`] finds the form in a fused scan's plan; the kernel
//! runs when the sequence is at least [`CHUNK`] long (shorter ones, and decays that are not
//! positive, keep the sequential fused kernel).

use crate::scan::{FusedScan, Node, Source};
use tessera_ir::{BinaryOp, ReduceOp, Scan};

/// Positions per chunk.
pub const CHUNK: usize = 64;

/// The operands of the recognized form: for each of `p`, `q`, `r` and the decay `d`, the
/// body leaf (its operand and its map onto the state's axes).
#[derive(Clone, Debug)]
pub struct Chunked {
    pub(crate) p: (usize, Vec<usize>),
    pub(crate) q: (usize, Vec<usize>),
    pub(crate) r: (usize, Vec<usize>),
    pub(crate) d: Option<(usize, Vec<usize>)>,
}

impl Chunked {
    /// One line for `--explain`.
    pub fn describe(&self) -> String {
        let decay = if self.d.is_some() { "a decay per lane" } else { "no decay" };
        format!("chunked: products over chunks of {CHUNK} positions (a linear recurrence with outer-product updates, {decay}) where the sequence has {CHUNK} or more")
    }
}

/// Finds `S' = [d ·] S + p ⊗ q`, `y = Σ_K S' · r` in `f` (one state of rank ≥ 2, one result),
/// every one of `p`, `q`, `r`, `d` a sliced operand read along the lanes and: `p` the state's
/// second-to-last axis (V), `q` and `r` its last (K), `d` neither.
pub fn recognize(f: &FusedScan, s: &Scan) -> Option<Chunked> {
    let rank = s.body.ty(s.body.outputs.last()?.1).rank();
    if s.state != 1 || f.outputs.len() != 2 || rank < 2 || s.reverse {
        return None;
    }
    let (v_axis, k_axis) = (rank - 2, rank - 1);
    let sliced = |k: usize| (1..1 + s.sliced).contains(&k);
    let leaf = |slot: usize| match &f.nodes[slot] {
        Node::Leaf(Source::Operand(k), map) if sliced(*k) => Some((*k, map.clone())),
        _ => None,
    };
    let is_state = |slot: usize| matches!(&f.nodes[slot], Node::Leaf(Source::Operand(0), _));
    let along = |m: &[usize], a: usize| m.contains(&a);
    let mul = |slot: usize| match f.nodes[slot] {
        Node::Binary(BinaryOp::Mul, a, b) => Some((a, b)),
        _ => None,
    };
    // The new state: a sum of the (decayed) state and an outer product.
    let new = f.outputs[1];
    let Node::Binary(BinaryOp::Add, x, y) = f.nodes[new] else { return None };
    let (carried, outer) = if is_state(x) || mul(x).is_some_and(|(a, b)| is_state(a) || is_state(b)) { (x, y) } else { (y, x) };
    let d = if is_state(carried) {
        None
    } else {
        let (a, b) = mul(carried)?;
        let d = leaf(if is_state(a) { b } else { a })?;
        if along(&d.1, v_axis) || along(&d.1, k_axis) {
            return None;
        }
        Some(d)
    };
    let (a, b) = mul(outer)?;
    let (la, lb) = (leaf(a)?, leaf(b)?);
    let (p, q) = if along(&la.1, v_axis) { (la, lb) } else { (lb, la) };
    if !along(&p.1, v_axis) || along(&p.1, k_axis) || !along(&q.1, k_axis) || along(&q.1, v_axis) {
        return None;
    }
    // The result: Σ over K of the new state times r.
    let Node::Reduce(ReduceOp::Sum, m) = f.nodes[f.outputs[0]] else { return None };
    let (a, b) = mul(m)?;
    let r = leaf(if a == new {
        b
    } else if b == new {
        a
    } else {
        return None;
    })?;
    if !along(&r.1, k_axis) || along(&r.1, v_axis) {
        return None;
    }
    Some(Chunked { p, q, r, d })
}

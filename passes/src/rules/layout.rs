//! Layout: chains of transposes and reshapes collapse; identities disappear.

use super::{find, ty, Rhs, Rule};
use crate::egraph::EG;
use egg::Id;
use tessera_ir::Op;

#[rustfmt::skip]
/// The layout rules.
pub const RULES: &[Rule] = &[
    Rule { name: "transpose_transpose", find: transpose_transpose }, // transpose(transpose(x, p), q) → transpose(x, p∘q) or x
    Rule { name: "reshape_reshape",     find: reshape_reshape },     // reshape(reshape(x))           → reshape(x) or x
    Rule { name: "transpose_identity",  find: transpose_identity },  // transpose(x, [0, 1, ..])      → x
];

fn transpose_transpose(eg: &EG, id: Id) -> Vec<Rhs> {
    let Some((outer, inner, x)) = find(eg, id, |n| match &n.op {
        Op::Transpose(q) => find(eg, n.children[0], |m| match &m.op {
            Op::Transpose(p) => Some((q.clone(), p.clone(), m.children[0])),
            _ => None,
        }),
        _ => None,
    }) else {
        return Vec::new();
    };
    let composed: Vec<usize> = outer.iter().map(|&i| inner[i]).collect();
    if composed.iter().enumerate().all(|(i, &p)| i == p) {
        vec![Rhs::Class(x)]
    } else {
        vec![Rhs::Node(Op::Transpose(composed), None, vec![Rhs::Class(x)])]
    }
}

fn reshape_reshape(eg: &EG, id: Id) -> Vec<Rhs> {
    let Some(x) = find(eg, id, |n| match n.op {
        Op::Reshape => find(eg, n.children[0], |m| (m.op == Op::Reshape).then(|| m.children[0])),
        _ => None,
    }) else {
        return Vec::new();
    };
    if ty(eg, x) == ty(eg, id) {
        vec![Rhs::Class(x)]
    } else {
        vec![Rhs::Node(Op::Reshape, Some(ty(eg, id).clone()), vec![Rhs::Class(x)])]
    }
}

fn transpose_identity(eg: &EG, id: Id) -> Vec<Rhs> {
    find(eg, id, |n| match &n.op {
        Op::Transpose(p) if p.iter().enumerate().all(|(i, &q)| i == q) => Some(Rhs::Class(n.children[0])),
        _ => None,
    })
    .into_iter()
    .collect()
}

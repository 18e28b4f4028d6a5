//! Feed-forward: GEMM epilogues (bias, activation, residual) folded into the GEMM, and whole
//! feed-forward blocks fused: a plain MLP `act(x W1 + b1) W2 + b2`, and the gated GLU family
//! `(act(x Wg) * (x Wu)) Wd`, whose gate and up projections become one GEMM over the
//! concatenated weights `[Wg | Wu]`.

use super::{binary, find_all, is_activation, ty, Rhs, Rule};
use crate::egraph::EG;
use egg::Id;
use tessera_ir::{BinaryOp::*, Op, UnaryOp};

#[rustfmt::skip]
/// The feed-forward rules.
pub const RULES: &[Rule] = &[
    Rule { name: "gemm_bias",     find: gemm_bias },     // x @ w + b            → gemm(x, w, b)
    Rule { name: "gemm_act",      find: gemm_act },      // act(gemm(..))        → gemm(.., act)
    Rule { name: "gemm_residual", find: gemm_residual }, // r + gemm(..)         → gemm(.., residual = r)
    Rule { name: "mlp",           find: mlp },           // act(x W1 + b1) W2 + b2 → ffn
    Rule { name: "glu",           find: glu },           // (act(x Wg) * x Wu) Wd  → ffn(gated, [Wg | Wu])
];

/// `x @ w`, optionally `+ b`, in class `id`, with `w` a matrix and `b` a vector: (x, w, b).
fn linear_forms(eg: &EG, id: Id) -> Vec<(Id, Id, Option<Id>)> {
    let is_matrix = |w: Id| ty(eg, w).rank() == 2;
    let mut out: Vec<(Id, Id, Option<Id>)> = find_all(eg, id, |n| match n.op {
        Op::MatMul if is_matrix(n.children[1]) => Some((n.children[0], n.children[1], None)),
        Op::Gemm { bias: true, act: None, residual: false } if is_matrix(n.children[1]) => {
            Some((n.children[0], n.children[1], Some(n.children[2])))
        }
        _ => None,
    });
    let d = ty(eg, id).shape.last().cloned();
    for (m, b) in binary(eg, id, Add) {
        if ty(eg, m) == ty(eg, id) && d.as_ref().is_some_and(|d| ty(eg, b).shape.as_slice() == [d.clone()]) {
            out.extend(find_all(eg, m, |n| {
                (n.op == Op::MatMul && is_matrix(n.children[1])).then(|| (n.children[0], n.children[1], Some(b)))
            }));
        }
    }
    out
}

fn gemm_bias(eg: &EG, id: Id) -> Vec<Rhs> {
    let d = ty(eg, id).shape.last().cloned();
    binary(eg, id, Add)
        .into_iter()
        .filter(|&(m, b)| ty(eg, m) == ty(eg, id) && d.as_ref().is_some_and(|d| ty(eg, b).shape.as_slice() == [d.clone()]))
        .flat_map(|(m, b)| {
            find_all(eg, m, |n| {
                (n.op == Op::MatMul).then(|| {
                    let args = vec![Rhs::Class(n.children[0]), Rhs::Class(n.children[1]), Rhs::Class(b)];
                    Rhs::Node(Op::Gemm { bias: true, act: None, residual: false }, None, args)
                })
            })
        })
        .take(1)
        .collect()
}

fn gemm_act(eg: &EG, id: Id) -> Vec<Rhs> {
    find_all(eg, id, |n| match n.op {
        Op::Unary(u) if is_activation(u) => Some((u, n.children[0])),
        _ => None,
    })
    .into_iter()
    .flat_map(|(u, g)| {
        find_all(eg, g, move |n| match n.op {
            Op::MatMul => Some(Rhs::Node(Op::Gemm { bias: false, act: Some(u), residual: false }, None, classes(&n.children))),
            Op::Gemm { bias, act: None, residual: false } => {
                Some(Rhs::Node(Op::Gemm { bias, act: Some(u), residual: false }, None, classes(&n.children)))
            }
            _ => None,
        })
    })
    .take(1)
    .collect()
}

fn gemm_residual(eg: &EG, id: Id) -> Vec<Rhs> {
    binary(eg, id, Add)
        .into_iter()
        .flat_map(|(a, b)| [(a, b), (b, a)])
        // The product must have the sum's shape: the kernels do not broadcast it up.
        .filter(|&(r, g)| ty(eg, r) == ty(eg, id) && ty(eg, g) == ty(eg, id))
        .flat_map(|(r, g)| {
            find_all(eg, g, move |n| {
                let flags = match n.op {
                    Op::MatMul => (false, None),
                    Op::Gemm { bias, act, residual: false } => (bias, act),
                    _ => return None,
                };
                let mut args = classes(&n.children);
                args.push(Rhs::Class(r));
                Some(Rhs::Node(Op::Gemm { bias: flags.0, act: flags.1, residual: true }, None, args))
            })
        })
        .take(1)
        .collect()
}

fn classes(ids: &[Id]) -> Vec<Rhs> {
    ids.iter().map(|&i| Rhs::Class(i)).collect()
}

/// `act(x @ w1 (+ b1))` in class `h`: (act, x, w1, b1).
fn activated_linear(eg: &EG, h: Id) -> Vec<(UnaryOp, Id, Id, Option<Id>)> {
    let mut out = Vec::new();
    for n in &eg[h].nodes {
        match n.op {
            Op::Unary(u) if is_activation(u) => {
                out.extend(linear_forms(eg, n.children[0]).into_iter().map(|(x, w, b)| (u, x, w, b)));
            }
            // The FFN kernels take matrices: a batched weight stays a gemm.
            Op::Gemm { bias, act: Some(u), residual: false } if ty(eg, n.children[1]).rank() == 2 => {
                out.push((u, n.children[0], n.children[1], bias.then(|| n.children[2])))
            }
            _ => {}
        }
    }
    out
}

fn mlp(eg: &EG, id: Id) -> Vec<Rhs> {
    for (h, w2, b2) in linear_forms(eg, id) {
        for (act, x, w1, b1) in activated_linear(eg, h) {
            let args = match (b1, b2) {
                (Some(b1), Some(b2)) => vec![x, w1, b1, w2, b2],
                (None, None) => vec![x, w1, w2],
                _ => continue,
            };
            return vec![Rhs::Node(Op::Ffn { gated: false, act, bias: b1.is_some() }, None, classes(&args))];
        }
    }
    Vec::new()
}

fn glu(eg: &EG, id: Id) -> Vec<Rhs> {
    for (g, wd, bd) in linear_forms(eg, id) {
        if bd.is_some() {
            continue;
        }
        for (a, u) in binary(eg, g, Mul).into_iter().flat_map(|(a, b)| [(a, b), (b, a)]) {
            for (act, x, wg, bg) in activated_linear(eg, a) {
                let up = linear_forms(eg, u)
                    .into_iter()
                    .find(|&(x2, wu, bu)| super::same(eg, x, x2) && bu.is_none() && ty(eg, wu) == ty(eg, wg));
                if let (Some((_, wu, _)), None) = (up, bg) {
                    let both = Rhs::Node(Op::Concat { axis: 1 }, None, vec![Rhs::Class(wg), Rhs::Class(wu)]);
                    return vec![Rhs::Node(Op::Ffn { gated: true, act, bias: false }, None, vec![Rhs::Class(x), both, Rhs::Class(wd)])];
                }
            }
        }
    }
    Vec::new()
}

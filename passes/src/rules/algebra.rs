//! Algebra: composite math recognised as the fused ops it stands for (stable softmax, layer
//! and RMS norms with their affine parts), and identities that remove work.

use super::{binary, constant, find, reduce_last, reduce_one, same, ty, unary, Rhs, Rule};
use crate::egraph::EG;
use egg::Id;
use tessera_ir::{BinaryOp::*, NormKind, Op, ReduceOp, UnaryOp};

#[rustfmt::skip]
/// The algebra rules.
pub const RULES: &[Rule] = &[
    Rule { name: "softmax",     find: softmax },     // exp(x - max x) / sum exp(x - max x)  → softmax(x), any one axis
    Rule { name: "layer_norm",  find: layer_norm },  // (x - mean x) * rsqrt(mean((x - mean x)²) + eps) → norm(x)
    Rule { name: "rms_norm",    find: rms_norm },    // x * rsqrt(mean(x²) + eps)            → norm(x)
    Rule { name: "norm_weight", find: norm_weight }, // norm(x) * w                          → norm(x, w)
    Rule { name: "norm_bias",   find: norm_bias },   // norm(x, w) + b                       → norm(x, w, b)
    Rule { name: "mul_one",     find: mul_one },     // x * 1                                → x
    Rule { name: "add_zero",    find: add_zero },    // x + 0                                → x
];

fn softmax(eg: &EG, id: Id) -> Vec<Rhs> {
    // Over any one axis (the kernels walk it with a stride when it is not the last).
    binary(eg, id, Div)
        .into_iter()
        .filter_map(|(num, den)| {
            let d = unary(eg, num, UnaryOp::Exp)?;
            let (x, axis) = binary(eg, d, Sub)
                .into_iter()
                .find_map(|(x, m)| reduce_one(eg, m, ReduceOp::Max).into_iter().find(|&(x2, _)| same(eg, x, x2)).map(|(_, a)| (x, a)))?;
            reduce_one(eg, den, ReduceOp::Sum)
                .into_iter()
                .any(|(summed, a)| a == axis && same(eg, summed, num))
                .then(|| Rhs::Node(Op::Softmax { axis }, None, vec![Rhs::Class(x)]))
        })
        .collect()
}

/// `rsqrt(mean(sq) + eps)` in class `r`: (sq, eps).
fn rsqrt_mean_eps(eg: &EG, r: Id) -> Option<(Id, f64)> {
    let p = unary(eg, r, UnaryOp::Rsqrt)?;
    binary(eg, p, Add).into_iter().find_map(|(v, e)| Some((reduce_last(eg, v, ReduceOp::Mean)?, constant(eg, e)?)))
}

/// Operands of `x * x` in class `sq`, when they are the same class.
fn square_of(eg: &EG, sq: Id) -> Option<Id> {
    binary(eg, sq, Mul).into_iter().find(|&(a, b)| same(eg, a, b)).map(|(a, _)| a)
}

fn layer_norm(eg: &EG, id: Id) -> Vec<Rhs> {
    binary(eg, id, Mul)
        .into_iter()
        .filter_map(|(xc, r)| {
            let (sq, eps) = rsqrt_mean_eps(eg, r)?;
            if !same(eg, square_of(eg, sq)?, xc) {
                return None;
            }
            let (x, m) =
                binary(eg, xc, Sub).into_iter().find(|&(x, m)| reduce_last(eg, m, ReduceOp::Mean).is_some_and(|x2| same(eg, x, x2)))?;
            let _ = m;
            Some(Rhs::Node(Op::Norm { kind: NormKind::Layer, eps }, None, vec![Rhs::Class(x)]))
        })
        .collect()
}

fn rms_norm(eg: &EG, id: Id) -> Vec<Rhs> {
    binary(eg, id, Mul)
        .into_iter()
        .filter_map(|(x, r)| {
            let (sq, eps) = rsqrt_mean_eps(eg, r)?;
            same(eg, square_of(eg, sq)?, x).then(|| Rhs::Node(Op::Norm { kind: NormKind::Rms, eps }, None, vec![Rhs::Class(x)]))
        })
        .collect()
}

/// `norm(operands..)` with `n` operands in class `id`: (kind, eps, operands).
fn norm_in(eg: &EG, id: Id, n: usize) -> Option<(NormKind, f64, Vec<Id>)> {
    find(eg, id, |node| match node.op {
        Op::Norm { kind, eps } if node.children.len() == n => Some((kind, eps, node.children.clone())),
        _ => None,
    })
}

/// `norm(..) op p` where `p` is a vector over the normalised axis: the norm with `p` appended.
fn norm_affine(eg: &EG, id: Id, op: tessera_ir::BinaryOp, have: usize) -> Vec<Rhs> {
    let d = ty(eg, id).shape.last().cloned();
    binary(eg, id, op)
        .into_iter()
        .filter_map(|(a, p)| {
            let (kind, eps, mut args) = norm_in(eg, a, have)?;
            if ty(eg, p).shape.as_slice() != [d.clone()?] {
                return None;
            }
            args.push(p);
            Some(Rhs::Node(Op::Norm { kind, eps }, None, args.into_iter().map(Rhs::Class).collect()))
        })
        .collect()
}

fn norm_weight(eg: &EG, id: Id) -> Vec<Rhs> {
    norm_affine(eg, id, Mul, 1)
}

fn norm_bias(eg: &EG, id: Id) -> Vec<Rhs> {
    norm_affine(eg, id, Add, 2)
}

/// `x op c` is `x` when the constant `c` is the identity of `op` and `x` already has the
/// result's type.
fn identity(eg: &EG, id: Id, op: tessera_ir::BinaryOp, unit: f64) -> Vec<Rhs> {
    binary(eg, id, op)
        .into_iter()
        .flat_map(|(a, b)| [(a, b), (b, a)])
        .filter(|&(x, c)| constant(eg, c) == Some(unit) && ty(eg, x) == ty(eg, id))
        .map(|(x, _)| Rhs::Class(x))
        .take(1)
        .collect()
}

fn mul_one(eg: &EG, id: Id) -> Vec<Rhs> {
    identity(eg, id, Mul, 1.0)
}

fn add_zero(eg: &EG, id: Id) -> Vec<Rhs> {
    identity(eg, id, Add, 0.0)
}

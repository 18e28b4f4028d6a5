//! Rewrite rules, grouped by topic: [`algebra`] (softmax and norms recognised, identities),
//! [`layout`] (transposes and reshapes), [`ffn`] (GEMM epilogues, MLP and gated FFN) and
//! [`attention`] (fused attention with its score function).
//!
//! A rule is a row of a table: a name and a matcher that looks at one e-class and returns
//! what to add to it ([`Rhs`]). Matchers only ever add: the e-graph keeps every alternative
//! and extraction picks the cheapest, so a rule whose right side is no better than its left
//! is simply never chosen. Built nodes are type-checked and must have the class's type, so no
//! rule can change a value.

pub mod algebra;
pub mod attention;
pub mod ffn;
pub mod layout;

use crate::egraph::{TNode, EG};
use egg::{Applier, Id, PatternAst, SearchMatches, Searcher, Subst, Symbol, Var};
use tessera_ir::{infer_type, Op, ReduceOp, TensorType, UnaryOp};

/// What a rule adds to a class: an existing class, or a new node over built arguments.
#[derive(Clone, Debug)]
pub enum Rhs {
    /// A class already in the e-graph.
    Class(Id),
    /// A new node (declared type only for ops that need one).
    Node(Op, Option<TensorType>, Vec<Rhs>),
}

/// A named rule: given the e-graph and a class, the equivalent forms to add to it.
pub struct Rule {
    /// Name (reported by `--explain` and in tests).
    pub name: &'static str,
    /// The matcher.
    pub find: fn(&EG, Id) -> Vec<Rhs>,
}

/// Every rule, in topic order.
pub fn all() -> Vec<&'static Rule> {
    algebra::RULES.iter().chain(layout::RULES).chain(ffn::RULES).chain(attention::RULES).collect()
}

/// The egg rewrite of a rule.
pub fn rewrite(r: &'static Rule) -> egg::Rewrite<TNode, crate::egraph::Meta> {
    egg::Rewrite::new(r.name, Search(r.find), Apply(r.find)).unwrap_or_else(|_| unreachable_rewrite())
}

fn unreachable_rewrite() -> egg::Rewrite<TNode, crate::egraph::Meta> {
    // Rewrite::new only fails when the applier needs variables the searcher does not bind;
    // ours bind none.
    egg::Rewrite::new("none", Search(|_, _| Vec::new()), Apply(|_, _| Vec::new())).unwrap_or_else(|_| std::process::abort())
}

struct Search(fn(&EG, Id) -> Vec<Rhs>);
struct Apply(fn(&EG, Id) -> Vec<Rhs>);

impl Searcher<TNode, crate::egraph::Meta> for Search {
    fn search_eclass_with_limit(&self, eg: &EG, eclass: Id, _limit: usize) -> Option<SearchMatches<'_, TNode>> {
        if (self.0)(eg, eclass).is_empty() {
            None
        } else {
            Some(SearchMatches { eclass, substs: vec![Subst::default()], ast: None })
        }
    }
    fn vars(&self) -> Vec<Var> {
        Vec::new()
    }
}

impl Applier<TNode, crate::egraph::Meta> for Apply {
    fn apply_one(&self, eg: &mut EG, eclass: Id, _: &Subst, _: Option<&PatternAst<TNode>>, _: Symbol) -> Vec<Id> {
        let mut changed = Vec::new();
        for rhs in (self.0)(eg, eclass) {
            if let Some(id) = build(eg, &rhs) {
                if eg[id].data.ty == eg[eclass].data.ty && eg.union(eclass, id) {
                    changed.push(eclass);
                }
            }
        }
        changed
    }
}

/// Adds `rhs` to the e-graph, type-checking every new node. `None` if it does not type-check.
pub fn build(eg: &mut EG, rhs: &Rhs) -> Option<Id> {
    match rhs {
        Rhs::Class(id) => Some(*id),
        Rhs::Node(op, ty, args) => {
            let ids = args.iter().map(|a| build(eg, a)).collect::<Option<Vec<Id>>>()?;
            let tys: Vec<&TensorType> = ids.iter().map(|i| &eg[*i].data.ty).collect();
            infer_type(op, &tys, ty.as_ref()).ok()?;
            Some(eg.add(TNode::new(op.clone(), ty.clone(), ids)))
        }
    }
}

// ---------------------------------------------------------------- matching helpers

/// The first result of `f` over the nodes of class `id`.
pub fn find<T>(eg: &EG, id: Id, f: impl Fn(&TNode) -> Option<T>) -> Option<T> {
    eg[id].nodes.iter().find_map(f)
}

/// Every result of `f` over the nodes of class `id`.
pub fn find_all<T>(eg: &EG, id: Id, f: impl Fn(&TNode) -> Option<T>) -> Vec<T> {
    eg[id].nodes.iter().filter_map(f).collect()
}

/// The class's type.
pub fn ty(eg: &EG, id: Id) -> &TensorType {
    &eg[id].data.ty
}

/// Whether two ids are the same class.
pub fn same(eg: &EG, a: Id, b: Id) -> bool {
    eg.find(a) == eg.find(b)
}

/// The class's constant value, if it holds one.
pub fn constant(eg: &EG, id: Id) -> Option<f64> {
    eg[id].data.constant
}

/// The operand of a `reduce_{op}` over the last axis with `keepdim` in class `id`.
/// Operands and axes of keepdim reductions `op` over one axis in class `id`.
pub fn reduce_one(eg: &EG, id: Id, op: ReduceOp) -> Vec<(Id, usize)> {
    find_all(eg, id, |n| match &n.op {
        Op::Reduce { op: o, axes, keepdim: true } if *o == op && axes.len() == 1 => Some((n.children[0], axes[0])),
        _ => None,
    })
}

/// The operand of a keepdim reduction `op` over the last axis in class `id`.
pub fn reduce_last(eg: &EG, id: Id, op: ReduceOp) -> Option<Id> {
    let rank = ty(eg, id).rank();
    find(eg, id, |n| match &n.op {
        Op::Reduce { op: o, axes, keepdim: true } if *o == op && axes.as_slice() == [rank.wrapping_sub(1)] => Some(n.children[0]),
        _ => None,
    })
}

/// The operand of unary `u` in class `id`.
pub fn unary(eg: &EG, id: Id, u: UnaryOp) -> Option<Id> {
    find(eg, id, |n| (n.op == Op::Unary(u)).then(|| n.children[0]))
}

/// Operands of binary `b` in class `id` (every such node).
pub fn binary(eg: &EG, id: Id, b: tessera_ir::BinaryOp) -> Vec<(Id, Id)> {
    find_all(eg, id, |n| (n.op == Op::Binary(b)).then(|| (n.children[0], n.children[1])))
}

/// Activations a GEMM epilogue or an FFN may carry.
pub fn is_activation(u: UnaryOp) -> bool {
    use UnaryOp::*;
    matches!(u, Relu | GeluErf | GeluTanh | Silu | Sigmoid | Tanh | Softplus)
}

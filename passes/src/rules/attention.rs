//! Attention: `softmax(f(q @ kᵀ)) @ v`, for any elementwise score function `f` of the scores
//! and of the query, key, head and batch indices (scale, soft-capping, ALiBi, relative
//! biases, masks, padding), becomes one fused `attention` op carrying `f` as a
//! [`ScoreFn`]. Values that `f` reads but that are not indices (a padding mask, a table of
//! slopes) become extra operands of the op; a 1-D table indexed by a computed position (T5's
//! bucket table) is read per score by `gather` instead of being materialised.

use super::{find, ty, Rhs, Rule};
use crate::egraph::EG;
use egg::Id;
use std::collections::HashMap;
use tessera_ir::{broadcast_shapes, DType, Dim, Op, SNode, ScoreFn, Var};

#[rustfmt::skip]
/// The attention rules.
pub const RULES: &[Rule] = &[
    Rule { name: "attention", find: attention }, // softmax(f(q @ kᵀ)) @ v → attention[f](q, k, v, ..)
];

/// Most score-function nodes the walk collects before giving up.
const MAX_NODES: usize = 256;

fn attention(eg: &EG, id: Id) -> Vec<Rhs> {
    let Some((p, v)) = find(eg, id, |n| (n.op == Op::MatMul).then(|| (n.children[0], n.children[1]))) else { return Vec::new() };
    let rank = ty(eg, p).rank();
    let Some(x) = find(eg, p, |n| matches!(n.op, Op::Softmax { axis } if axis + 1 == rank).then(|| n.children[0])) else {
        return Vec::new();
    };
    let mut w = Walk { eg, score: ty(eg, x).shape.clone(), f: ScoreFn::default(), memo: HashMap::new(), leaves: Vec::new(), qk: None };
    if w.visit(x).is_none() {
        return Vec::new();
    }
    let Some((q, k)) = w.qk else { return Vec::new() };
    let mut args = vec![Rhs::Class(q), Rhs::Class(k), Rhs::Class(v)];
    args.extend(w.leaves.iter().map(|&l| Rhs::Class(l)));
    vec![Rhs::Node(Op::Attention(Box::new(w.f)), None, args)]
}

struct Walk<'a> {
    eg: &'a EG,
    /// The score shape `[.., s, t]`.
    score: Vec<Dim>,
    f: ScoreFn,
    /// Class → node index (`None` while being visited: a cycle).
    memo: HashMap<Id, Option<u32>>,
    leaves: Vec<Id>,
    qk: Option<(Id, Id)>,
}

impl Walk<'_> {
    fn push(&mut self, n: SNode, ty: DType) -> Option<u32> {
        if self.f.nodes.len() >= MAX_NODES {
            return None;
        }
        self.f.nodes.push((n, ty));
        Some(self.f.nodes.len() as u32 - 1)
    }

    fn leaf(&mut self, id: Id) -> Option<u32> {
        let id = self.eg.find(id);
        let k = match self.leaves.iter().position(|&l| l == id) {
            Some(k) => k,
            None => {
                self.leaves.push(id);
                self.leaves.len() - 1
            }
        };
        Some(k as u32)
    }

    fn visit(&mut self, id: Id) -> Option<u32> {
        let id = self.eg.find(id);
        if let Some(m) = self.memo.get(&id) {
            return *m;
        }
        self.memo.insert(id, None);
        let r = self.classify(id);
        self.memo.insert(id, r);
        r
    }

    fn classify(&mut self, id: Id) -> Option<u32> {
        let eg = self.eg;
        let dtype = ty(eg, id).dtype;
        // 1. The scores themselves: q @ transpose(k) over the last two axes.
        if let Some((q, k)) = find(eg, id, |n| match n.op {
            Op::MatMul => find(eg, n.children[1], |t| match &t.op {
                Op::Transpose(p) if swaps_last_two(p) => Some((n.children[0], t.children[0])),
                _ => None,
            }),
            _ => None,
        }) {
            if ty(eg, id).shape == self.score {
                if self.qk.is_some_and(|(q0, k0)| !(super::same(eg, q, q0) && super::same(eg, k, k0))) {
                    return None;
                }
                self.qk = Some((q, k));
                return self.push(SNode::Var(Var::Score), DType::F32);
            }
        }
        // 2. Index vectors: a reshaped iota along the query, key, head or batch axes.
        if let Some(var) = self.index_var(id) {
            return self.push(SNode::Var(var), DType::I64);
        }
        // 3. Constants.
        if let Some(c) = super::constant(eg, id) {
            return self.push(SNode::Const(c), dtype);
        }
        // 4. Elementwise ops, then 5. gathers from 1-D tables.
        for n in &eg[id].nodes {
            let node = match &n.op {
                Op::Unary(u) => self.visit(n.children[0]).map(|a| SNode::Unary(*u, a)),
                Op::Binary(b) => self.visit(n.children[0]).and_then(|a| Some(SNode::Binary(*b, a, self.visit(n.children[1])?))),
                Op::Where => {
                    let c = self.visit(n.children[0]);
                    let (a, b) = (self.visit(n.children[1]), self.visit(n.children[2]));
                    Some(SNode::Where(c?, a?, b?))
                }
                Op::Cast => self.visit(n.children[0]).map(SNode::Cast),
                Op::Gather { axis: 0 } if ty(eg, n.children[0]).rank() == 1 => {
                    let t = self.leaf(n.children[0]);
                    self.visit(n.children[1]).and_then(|i| Some(SNode::Gather(t?, i)))
                }
                _ => continue,
            };
            if let Some(node) = node {
                return self.push(node, dtype);
            }
            return None;
        }
        // 6. Anything else that broadcasts to the scores is read as an operand.
        if broadcast_shapes(&ty(eg, id).shape, &self.score).ok()? != self.score {
            return None;
        }
        let l = self.leaf(id)?;
        self.push(SNode::Leaf(l), dtype)
    }

    /// Which index a class holds, if it is `reshape(iota(n))` whose non-unit axes, aligned to
    /// the score shape, are exactly the query axis, the key axis, all head axes, or the
    /// batch axis.
    fn index_var(&self, id: Id) -> Option<Var> {
        let eg = self.eg;
        let is_iota = |c: Id| find(eg, c, |n| matches!(n.op, Op::Iota { axis: 0 }).then_some(())).is_some() && ty(eg, c).rank() == 1;
        let shape = &ty(eg, id).shape;
        let ok = is_iota(id) || find(eg, id, |n| (n.op == Op::Reshape && is_iota(n.children[0])).then_some(())).is_some();
        let r = self.score.len();
        if !ok || shape.len() > r || r < 2 {
            return None;
        }
        let one = Dim::known(1);
        let aligned: Vec<&Dim> = std::iter::repeat_n(&one, r - shape.len()).chain(shape.iter()).collect();
        let axes: Vec<usize> = (0..r).filter(|&a| *aligned[a] != one).collect();
        let covers = |a: usize| *aligned[a] == self.score[a];
        match axes.as_slice() {
            [a] if *a == r - 2 && covers(*a) => Some(Var::Query),
            [a] if *a == r - 1 && covers(*a) => Some(Var::Key),
            [0] if r > 2 && covers(0) => Some(Var::Batch),
            _ if !axes.is_empty() && axes.iter().all(|&a| (1..r - 2).contains(&a)) => {
                let heads_covered = (1..r - 2).all(|a| self.score[a] == one || (axes.contains(&a) && covers(a)));
                heads_covered.then_some(Var::Head)
            }
            _ => None,
        }
    }
}

fn swaps_last_two(p: &[usize]) -> bool {
    let r = p.len();
    r >= 2 && p[r - 2] == r - 1 && p[r - 1] == r - 2 && p[..r - 2].iter().enumerate().all(|(i, &q)| i == q)
}

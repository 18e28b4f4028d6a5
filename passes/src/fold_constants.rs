//! `fold_constants`: evaluates operations on scalar constants at compile time and removes
//! arithmetic identities.
//!
//! Assumes: a verified graph. Guarantees: a unary, binary, cast or `where` node whose operands
//! are all `const` becomes one `const` of the node's type (computed with the ops' own scalar
//! semantics, [`tessera_ir::UnaryOp::eval`] / [`tessera_ir::BinaryOp::eval`], rounded to the
//! node's dtype); `x + 0`, `x - 0`, `x * 1` and `x / 1` become `x` when the result has `x`'s
//! type. Does not: fold non-scalar tensors built from `iota` (their size may be symbolic).

use tessera_ir::{BinaryOp, DType, Graph, Node, Op, ValueId};

fn round_to(dtype: DType, v: f64) -> f64 {
    match dtype {
        DType::F32 => f64::from(v as f32),
        DType::I64 => (v as i64) as f64,
        DType::Bool => f64::from(u8::from(v != 0.0)),
    }
}

/// Folds constants; dead constants are left for `dce`.
pub fn fold_constants(g: &Graph) -> Graph {
    let mut out = Graph::new(&g.name);
    out.files = g.files.clone();
    let mut map: Vec<ValueId> = Vec::with_capacity(g.len());
    for n in g.nodes() {
        let inputs: Vec<ValueId> = n.inputs.iter().map(|v| map[v.index()]).collect();
        let consts: Option<Vec<f64>> = inputs.iter().map(|&v| if let Op::Const(c) = out.node(v).op { Some(c) } else { None }).collect();
        let folded = match (&n.op, consts.as_deref()) {
            (Op::Unary(u), Some([x])) => Some(u.eval(*x)),
            (Op::Binary(b), Some([x, y])) => Some(b.eval(*x, *y, out.ty(inputs[0]).dtype == DType::I64)),
            (Op::Cast, Some([x])) => Some(*x),
            (Op::Where, Some([c, x, y])) => Some(if *c != 0.0 { *x } else { *y }),
            _ => None,
        };
        let id = if let Some(v) = folded {
            out.push_unchecked(Node { op: Op::Const(round_to(n.ty.dtype, v)), inputs: vec![], ty: n.ty.clone(), span: n.span })
        } else if let Some(x) = identity_operand(&out, n, &inputs) {
            x
        } else {
            out.push_unchecked(Node { inputs, ..n.clone() })
        };
        map.push(id);
    }
    out.outputs = g.outputs.iter().map(|(name, v)| (name.clone(), map[v.index()])).collect();
    out
}

/// The operand `x` when the node is `x + 0`, `x - 0`, `x * 1` or `x / 1` of `x`'s own type.
fn identity_operand(g: &Graph, n: &Node, inputs: &[ValueId]) -> Option<ValueId> {
    let Op::Binary(b) = n.op else { return None };
    let (x, c) = (inputs[0], inputs[1]);
    let Op::Const(k) = g.node(c).op else { return None };
    let neutral = match b {
        BinaryOp::Add | BinaryOp::Sub => k == 0.0,
        BinaryOp::Mul | BinaryOp::Div => k == 1.0,
        _ => false,
    };
    (neutral && *g.ty(x) == n.ty).then_some(x)
}

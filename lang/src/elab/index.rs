//! `x[...]`: integer selection, slices, `..`, `none` (new axis) and gathers by index tensors.

use super::{Elab, Frame, Value};
use crate::ast::{Expr, IndexItem, Span};
use crate::diag::{codes, Diagnostic};
use tessera_ir::{DType, Dim, Op};

impl Elab<'_> {
    pub(super) fn index(&mut self, base: Value, bspan: Span, items: &[IndexItem], span: Span, frame: &mut Frame) -> Value {
        let x = match base {
            Value::Tensor(t) => t,
            Value::Tuple(vs) => {
                let [IndexItem::Expr(e)] = items else {
                    return self.err(Diagnostic::error(codes::TYPE, "a tuple takes one integer index", span, "here"));
                };
                let i = self.eval(e, frame);
                let n = vs.len() as i64;
                return match i {
                    Value::Int(d) => match d.as_known().map(|k| if k < 0 { k + n } else { k }) {
                        Some(k) if (0..n).contains(&k) => vs[k as usize].clone(),
                        _ => self.err(Diagnostic::error(
                            codes::VALUE,
                            format!("index {d} is out of range for a tuple of {n}"),
                            e.span,
                            "here",
                        )),
                    },
                    Value::Poison => Value::Poison,
                    other => self.err(Diagnostic::error(
                        codes::TYPE,
                        format!("a tuple index must be an int, got {}", other.kind()),
                        e.span,
                        "here",
                    )),
                };
            }
            Value::Poison => return Value::Poison,
            other => return self.err(Diagnostic::error(codes::TYPE, format!("{} cannot be indexed", other.kind()), bspan, "this value")),
        };
        let rank = self.ty(x).rank();
        let consumed = items
            .iter()
            .filter(|i| !matches!(i, IndexItem::Ellipsis(_) | IndexItem::Expr(Expr { kind: crate::ast::ExprKind::None, .. })))
            .count();
        if items.iter().filter(|i| matches!(i, IndexItem::Ellipsis(_))).count() > 1 {
            return self.err(Diagnostic::error(codes::VALUE, "at most one `..` per index", span, "here"));
        }
        if consumed > rank {
            let shape = self.ty(x).clone();
            return self.err(Diagnostic::error(
                codes::SHAPE,
                format!("too many indices ({consumed}) for a tensor of type {shape}"),
                span,
                "here",
            ));
        }
        let mut cur = Value::Tensor(x);
        let mut axis = 0usize;
        for item in items {
            let Value::Tensor(t) = cur else { return cur };
            let size = |s: &Self, a: usize| s.ty(t).shape.get(a).cloned().unwrap_or_default();
            cur = match item {
                IndexItem::Ellipsis(_) => {
                    axis += rank - consumed;
                    Value::Tensor(t)
                }
                IndexItem::Slice { start, end, step, span: s } => {
                    let n = size(self, axis);
                    let mut bound = |s2: &mut Self, e: &Option<Expr>, default: Dim| -> Option<Dim> {
                        let Some(e) = e else { return Some(default) };
                        match s2.eval(e, frame) {
                            Value::Int(d) => Some(match (d.as_known(), n.as_known()) {
                                (Some(k), Some(len)) => Dim::known(if k < 0 { (k + len).max(0) } else { k.min(len) }),
                                (Some(k), None) if k < 0 => n.add(&d),
                                _ => d,
                            }),
                            Value::Poison => None,
                            other => {
                                s2.err(Diagnostic::error(
                                    codes::TYPE,
                                    format!("slice bounds must be ints, got {}", other.kind()),
                                    e.span,
                                    "here",
                                ));
                                None
                            }
                        }
                    };
                    let (Some(lo), Some(hi)) = (bound(self, start, Dim::known(0)), bound(self, end, n.clone())) else {
                        return Value::Poison;
                    };
                    let st = match step {
                        None => 1,
                        Some(e) => match self.eval(e, frame) {
                            Value::Int(d) if d.as_known().is_some_and(|k| k > 0) => d.as_known().unwrap_or(1),
                            Value::Poison => return Value::Poison,
                            _ => return self.err(Diagnostic::error(codes::VALUE, "a slice step must be a positive int", e.span, "here")),
                        },
                    };
                    let a = axis;
                    axis += 1;
                    if lo == Dim::known(0) && hi == n && st == 1 {
                        Value::Tensor(t)
                    } else {
                        self.add(Op::Slice { axis: a, start: lo, end: hi, step: st }, vec![t], None, *s)
                    }
                }
                IndexItem::Expr(e) if matches!(e.kind, crate::ast::ExprKind::None) => {
                    let mut shape = self.ty(t).shape.clone();
                    shape.insert(axis, Dim::known(1));
                    axis += 1;
                    self.reshape(t, shape, e.span)
                }
                IndexItem::Expr(e) => match self.eval(e, frame) {
                    Value::Int(d) => {
                        let n = size(self, axis);
                        let k = match (d.as_known(), n.as_known()) {
                            (Some(k), Some(len)) if k >= len || k < -len => {
                                return self.err(Diagnostic::error(
                                    codes::VALUE,
                                    format!("index {k} is out of range for an axis of size {len}"),
                                    e.span,
                                    "here",
                                ))
                            }
                            (Some(k), _) if k < 0 => n.add(&d),
                            _ => d,
                        };
                        let Value::Tensor(s) =
                            self.add(Op::Slice { axis, start: k.clone(), end: k.add(&Dim::known(1)), step: 1 }, vec![t], None, e.span)
                        else {
                            return Value::Poison;
                        };
                        let mut shape = self.ty(s).shape.clone();
                        shape.remove(axis);
                        self.reshape(s, shape, e.span)
                    }
                    Value::Tensor(idx) => {
                        if self.ty(idx).dtype != DType::I64 {
                            let it = self.ty(idx).clone();
                            return self.err(
                                Diagnostic::error(codes::DTYPE, format!("index tensors must be i64, got {it}"), e.span, "this index")
                                    .with_help("convert with `int(x)`"),
                            );
                        }
                        let r = self.ty(idx).rank();
                        let a = axis;
                        axis += r;
                        self.add(Op::Gather { axis: a }, vec![t, idx], None, e.span)
                    }
                    Value::Poison => Value::Poison,
                    other => self.err(Diagnostic::error(codes::TYPE, format!("{} cannot index a tensor", other.kind()), e.span, "here")),
                },
            };
        }
        cur
    }
}

//! einops-style `rearrange(x, "b s (h d) -> b h s d", h = heads)`: split, permute and merge
//! axes, as a reshape, a transpose and a reshape.

use super::{ArgVal, Elab, Value};
use crate::ast::Span;
use crate::diag::{codes, Diagnostic};
use std::collections::HashMap;
use tessera_ir::{Dim, Op, ShapeDisplay};

/// One side of a pattern: axes, each a group of names (`1` is a unit axis, an empty group).
fn parse_side(s: &str) -> Result<Vec<Vec<String>>, String> {
    let mut groups = Vec::new();
    let mut open: Option<Vec<String>> = None;
    let spaced = s.replace('(', " ( ").replace(')', " ) ");
    for tok in spaced.split_whitespace() {
        match tok {
            "(" if open.is_none() => open = Some(Vec::new()),
            "(" => return Err("nested parentheses".into()),
            ")" => groups.push(open.take().ok_or("unbalanced `)`")?),
            "1" => {
                if open.is_none() {
                    groups.push(Vec::new());
                }
            }
            name if name.chars().all(|c| c.is_alphanumeric() || c == '_') && !name.starts_with(|c: char| c.is_ascii_digit()) => {
                match &mut open {
                    Some(g) => g.push(name.to_string()),
                    None => groups.push(vec![name.to_string()]),
                }
            }
            other => return Err(format!("unexpected `{other}`")),
        }
    }
    if open.is_some() {
        return Err("unbalanced `(`".into());
    }
    Ok(groups)
}

impl Elab<'_> {
    pub(super) fn rearrange_call(&mut self, args: Vec<ArgVal>, span: Span) -> Value {
        let mut pos = Vec::new();
        let mut sizes: HashMap<String, (Dim, Span)> = HashMap::new();
        for a in args {
            match (a.name, a.value) {
                (_, Value::Poison) => return Value::Poison,
                (Some(n), Value::Int(d)) => {
                    sizes.insert(n.name, (d, a.span));
                }
                (Some(n), v) => {
                    return self.err(Diagnostic::error(
                        codes::TYPE,
                        format!("size `{}` must be an int, got {}", n.name, v.kind()),
                        a.span,
                        "here",
                    ))
                }
                (None, v) => pos.push((v, a.span)),
            }
        }
        let [(Value::Tensor(x), _), (Value::Str(pattern), pspan)] = pos.as_slice() else {
            return self.err(
                Diagnostic::error(codes::BAD_ARGS, "`rearrange` takes a tensor and a pattern", span, "in this call")
                    .with_help("e.g. rearrange(x, \"b s (h d) -> b h s d\", h = heads)"),
            );
        };
        let (x, pspan) = (*x, *pspan);
        let bad = |s: &mut Self, msg: String| {
            s.err(Diagnostic::error(codes::VALUE, format!("bad rearrange pattern: {msg}"), pspan, "this pattern"))
        };
        let Some((lhs, rhs)) = pattern.split_once("->") else { return bad(self, "missing `->`".into()) };
        let (lhs, rhs) = match (parse_side(lhs), parse_side(rhs)) {
            (Ok(l), Ok(r)) => (l, r),
            (Err(e), _) | (_, Err(e)) => return bad(self, e),
        };
        let shape = self.ty(x).shape.clone();
        if lhs.len() != shape.len() {
            return self.err(
                Diagnostic::error(
                    codes::SHAPE,
                    format!("rearrange pattern has {} axes but the tensor is {}", lhs.len(), ShapeDisplay(&shape)),
                    pspan,
                    "this pattern",
                )
                .with_label(pos[0].1, format!("this has shape {}", ShapeDisplay(&shape))),
            );
        }
        // Sizes of the elementary axes, from the given sizes and the input shape.
        let mut known: HashMap<String, Dim> = sizes.iter().map(|(k, (d, _))| (k.clone(), d.clone())).collect();
        let mut order = Vec::new();
        for (group, size) in lhs.iter().zip(&shape) {
            let unknown: Vec<&String> = group.iter().filter(|n| !known.contains_key(*n)).collect();
            let product = group.iter().filter_map(|n| known.get(n)).fold(Dim::known(1), |a, d| a.mul(d));
            match unknown.as_slice() {
                [] if product != *size => {
                    return bad(self, format!("group ({}) has size {product} but the axis has size {size}", group.join(" ")))
                }
                [] => {}
                [u] => match size.div_exact(&product) {
                    Some(q) => {
                        known.insert((*u).clone(), q);
                    }
                    None => return bad(self, format!("axis of size {size} cannot be split by {product}")),
                },
                _ => return bad(self, format!("group ({}) needs all but one size given", group.join(" "))),
            }
            if group.is_empty() && *size != Dim::known(1) {
                return bad(self, format!("`1` stands for an axis of size 1, not {size}"));
            }
            order.extend(group.iter().cloned());
        }
        let out_names: Vec<&String> = rhs.iter().flatten().collect();
        let mut sorted_in: Vec<&String> = order.iter().collect();
        let mut sorted_out = out_names.clone();
        sorted_in.sort();
        sorted_out.sort();
        if sorted_in != sorted_out || sorted_in.windows(2).any(|w| w[0] == w[1]) {
            return bad(self, "both sides must name the same axes, each once".into());
        }
        let elem: Vec<Dim> = order.iter().map(|n| known[n].clone()).collect();
        let Value::Tensor(x) = self.reshape(x, elem, span) else { return Value::Poison };
        let perm: Vec<usize> = out_names.iter().filter_map(|n| order.iter().position(|o| o == *n)).collect();
        let x = if perm.iter().enumerate().all(|(i, p)| i == *p) {
            x
        } else {
            match self.add(Op::Transpose(perm), vec![x], None, span) {
                Value::Tensor(t) => t,
                v => return v,
            }
        };
        let out: Vec<Dim> = rhs.iter().map(|g| g.iter().fold(Dim::known(1), |a, n| a.mul(&known[n]))).collect();
        self.reshape(x, out, span)
    }
}

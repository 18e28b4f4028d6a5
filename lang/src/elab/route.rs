//! Elaboration of `topk` and `route`.
//!
//! `route(x, logits, k = 2, gate = "topk_softmax") |x_e| { return expert(x_e) }` chooses `k`
//! experts per row of `x` from the router's `logits` (one per expert), weighs them by the gate
//! rule, and sums the experts' outputs. The gating is plain IR (a `topk`, a softmax or a
//! sigmoid); the experts become the region of an `Op::Route`. As for `scan`, the body is
//! elaborated in place and then moved out, but here every parameter it declares gets a leading
//! `experts` axis (one slice per expert: `param w: [d, h]` in the body is `[experts, d, h]` in
//! the model) and every tensor it captures is broadcast along one, so that each operand after
//! the rows is a stack that expert `e` reads slice `e` of.

use super::scan::RegionCall;
use super::{Elab, Frame, Value};
use crate::ast::{Arg, Ident, Stmt};
use crate::diag::{codes, Diagnostic};
use crate::Span;
use std::collections::HashMap;
use tessera_ir::{route_result, DType, Dim, Graph, Node, Op, Route, TensorType, UnaryOp, ValueId};

/// The gate rules `route` knows, with what each computes from the router logits `l`.
const GATES: &[(&str, &str)] = &[
    ("topk_softmax", "softmax over the k largest logits (Mixtral; softmax then renormalised top-k)"),
    ("softmax_topk", "softmax over all experts, the k largest probabilities kept as they are (Qwen-MoE, Switch)"),
    ("sigmoid", "sigmoid of the k largest logits"),
];

impl Elab<'_> {
    /// A positive integer argument known at compile time.
    pub(super) fn count_arg(&mut self, fname: &str, pname: &str, a: &Option<(Value, Span)>, span: Span) -> Option<usize> {
        match a {
            Some((Value::Int(d), s)) => match d.as_known() {
                Some(k) if k >= 1 => Some(k as usize),
                _ => {
                    self.err(Diagnostic::error(
                        codes::VALUE,
                        format!("`{pname}` of `{fname}` is a positive int, got {d}"),
                        *s,
                        "this value",
                    ));
                    None
                }
            },
            Some((Value::Poison, _)) => None,
            Some((v, s)) => {
                self.err(Diagnostic::error(codes::TYPE, format!("`{pname}` of `{fname}` is an int, not {}", v.kind()), *s, "this value"));
                None
            }
            None => {
                self.err(Diagnostic::error(codes::BAD_ARGS, format!("missing argument `{pname}` of `{fname}`"), span, "in this call"));
                None
            }
        }
    }

    /// `values, indices = topk(x, k, axis = -1)`: the `k` largest along `axis`, largest first
    /// (ties: lower index first).
    pub(super) fn topk(&mut self, x: ValueId, k: Dim, axis: usize, span: Span) -> Value {
        let t = self.ty(x).clone();
        if let Some(n) = t.shape[axis].as_known().filter(|&n| k.as_known().is_some_and(|k| k > n)) {
            return self.err(
                Diagnostic::error(codes::VALUE, format!("top-{k} of {n} elements along axis {axis} of {t}"), span, "here")
                    .with_help(format!("k is at most the axis' size, {n}")),
            );
        }
        let op = Op::TopK { k, axis };
        let results = match tessera_ir::multi_results(&op, &[&t]) {
            Ok(r) => r,
            Err(msg) => return self.err(Diagnostic::error(codes::SHAPE, format!("invalid topk: {msg}"), span, "here")),
        };
        let Value::Tensor(node) = self.add(op, vec![x], None, span) else { return Value::Poison };
        Value::Tuple(results.into_iter().enumerate().map(|(k, t)| self.add(Op::Proj(k), vec![node], Some(t), span)).collect())
    }

    /// `route(x, logits, k = 2, gate = "topk_softmax") |x_e[, e]| { ...; return y_e }`.
    pub(super) fn route(&mut self, args: &[Arg], names: &[Ident], body: Option<&[Stmt]>, span: Span, frame: &mut Frame) -> Value {
        let call = RegionCall {
            what: "route",
            params: ["x", "logits", "k", "gate"],
            names: "|x_e|",
            usage: "y = route(x, logits, k = 2) |x_e| { return expert(x_e) }",
        };
        let (body, [x, logits, k, gate]) = match self.region_call(call, args, body, span, frame) {
            Ok(c) => c,
            Err(v) => return v,
        };
        let Some(x) = self.tensor_arg("route", "x", &x, span) else { return Value::Poison };
        let logits_span = logits.as_ref().map_or(span, |(_, s)| *s);
        let Some(logits) = self.tensor_arg("route", "logits", &logits, span) else { return Value::Poison };
        let Some(k) = self.count_arg("route", "k", &k, span) else { return Value::Poison };
        let gate = match gate {
            None => GATES[0].0,
            Some((Value::Str(g), s)) => match GATES.iter().find(|(n, _)| *n == g) {
                Some((n, _)) => n,
                None => {
                    let known: Vec<String> = GATES.iter().map(|(n, what)| format!("\"{n}\": {what}")).collect();
                    return self.err(
                        Diagnostic::error(codes::VALUE, format!("unknown gate rule \"{g}\""), s, "this rule")
                            .with_help(format!("the rules are {}", known.join("; "))),
                    );
                }
            },
            Some((v, s)) => return self.err(Diagnostic::error(codes::TYPE, format!("`gate` is a string, not {}", v.kind()), s, "here")),
        };
        let (tx, tl) = (self.ty(x).clone(), self.ty(logits).clone());
        if tx.dtype != DType::F32 || tx.rank() == 0 {
            return self.err(Diagnostic::error(codes::TYPE, format!("routed rows are f32 [.., d], got {tx}"), span, "these rows"));
        }
        let lead = &tx.shape[..tx.rank() - 1];
        let experts = tl.shape.last().and_then(Dim::as_known);
        let experts = match experts {
            Some(e) if tl.dtype == DType::F32 && tl.rank() == tx.rank() && &tl.shape[..lead.len()] == lead && e >= 1 => e as usize,
            _ => {
                return self.err(
                    Diagnostic::error(codes::SHAPE, format!("router logits {tl} do not fit rows {tx}"), logits_span, "these logits")
                        .with_help(format!(
                            "the logits are f32 [{}experts], one per row and expert, with a known number of experts",
                            lead.iter().map(|d| format!("{d}, ")).collect::<String>()
                        )),
                )
            }
        };
        if k > experts {
            return self.err(
                Diagnostic::error(
                    codes::VALUE,
                    format!("each row chooses k = {k} experts, but there are only {experts}"),
                    span,
                    "this route",
                )
                .with_label(logits_span, format!("{experts} experts (the logits' last axis)"))
                .with_help(format!("k is between 1 and {experts}")),
            );
        }
        if names.is_empty() || names.len() > 2 {
            let at = names.first().map_or(span, |n| n.span);
            return self.err(
                Diagnostic::error(
                    codes::ARITY,
                    format!("a route body names its rows and, optionally, the expert: not {} names", names.len()),
                    at,
                    "here",
                )
                .with_help("write `|x_e|` or `|x_e, e|`"),
            );
        }
        if names.len() == 2 && names[0].name == names[1].name {
            return self.err(Diagnostic::error(
                codes::DUPLICATE_NAME,
                format!("`{}` is named twice", names[1].name),
                names[1].span,
                "again here",
            ));
        }

        // The gate: weights and chosen experts, as plain ops.
        let axis = tl.rank() - 1;
        let (w, idx) = {
            let scores = if gate == "softmax_topk" {
                match self.softmax(logits, axis, span) {
                    Value::Tensor(p) => p,
                    v => return v,
                }
            } else {
                logits
            };
            let Value::Tuple(vi) = self.topk(scores, Dim::known(k as i64), axis, span) else { return Value::Poison };
            let [Value::Tensor(v), Value::Tensor(i)] = vi[..] else { return Value::Poison };
            let w = match gate {
                "topk_softmax" => self.softmax(v, axis, span),
                "sigmoid" => self.add(Op::Unary(UnaryOp::Sigmoid), vec![v], None, span),
                _ => Value::Tensor(v),
            };
            let Value::Tensor(w) = w else { return Value::Poison };
            (w, i)
        };
        let expert_ids = if names.len() == 2 {
            let Value::Tensor(t) =
                self.add(Op::Iota { axis: 0 }, vec![], Some(TensorType::new(DType::I64, vec![Dim::known(experts as i64)])), span)
            else {
                return Value::Poison;
            };
            Some(t)
        } else {
            None
        };

        // The body, elaborated at the end of the graph over its arguments.
        let start = self.graph.len();
        let mut env = frame.env.clone();
        let rows = TensorType::new(DType::F32, vec![Dim::sym(Route::ROWS), tx.shape[tx.rank() - 1].clone()]);
        let Value::Tensor(xv) = self.add(Op::Input(names[0].name.clone()), vec![], Some(rows), names[0].span) else { return Value::Poison };
        env.insert(names[0].name.clone(), Value::Tensor(xv));
        if let Some(n) = names.get(1) {
            let Value::Tensor(ev) = self.add(Op::Input(n.name.clone()), vec![], Some(TensorType::scalar(DType::I64)), n.span) else {
                return Value::Poison;
            };
            env.insert(n.name.clone(), Value::Tensor(ev));
        }
        let mut inner = Frame { env, module: frame.module, is_model: false, ret: None };
        self.exec(body, &mut inner);
        let out = match inner.ret.take() {
            Some(Value::Tensor(t)) => {
                let ty = self.ty(t).clone();
                if ty.dtype != DType::F32 || ty.rank() != 2 || ty.shape[0] != Dim::sym(Route::ROWS) {
                    self.graph.split_off(start);
                    return self.err(
                        Diagnostic::error(
                            codes::SHAPE,
                            format!("an expert returns f32 [rows, d_out] for its rows, not {ty}"),
                            return_span(body).unwrap_or(span),
                            "this value",
                        )
                        .with_label(names[0].span, format!("the rows: f32 [{}, {}]", Route::ROWS, tx.shape[tx.rank() - 1]))
                        .with_help("an expert maps each of its rows on its own; it cannot reduce over or reshape the rows"),
                    );
                }
                t
            }
            Some(Value::Poison) => {
                self.graph.split_off(start);
                return Value::Poison;
            }
            other => {
                self.graph.split_off(start);
                let what = other.map_or("nothing".to_string(), |v| v.kind().to_string());
                return self.err(
                    Diagnostic::error(codes::TYPE, format!("a route body returns one tensor, not {what}"), span, "this route")
                        .with_help("end the body with `return y_e`, the expert's output for its rows"),
                );
            }
        };
        let (region, stacked) = self.outline_experts(start, out, experts);
        let op = Route { experts, body: region };
        let operands: Vec<ValueId> = [x, idx, w].into_iter().chain(expert_ids).chain(stacked).collect();
        let tys: Vec<&TensorType> = operands.iter().map(|&v| self.graph.ty(v)).collect();
        if let Err(msg) = route_result(&op, &tys) {
            return self.err(Diagnostic::error(codes::SHAPE, format!("invalid route: {msg}"), span, "this route"));
        }
        self.add(Op::Route(Box::new(op)), operands, None, span)
    }

    /// Moves the nodes from `start` on into a route's region returning `out`. Parameters are
    /// declared in the enclosing graph with a leading axis of `experts`; captured tensors are
    /// broadcast along one. Returns the region and its stacked operands in argument order
    /// (after the rows and the expert index, which are the region's first nodes).
    fn outline_experts(&mut self, start: usize, out: ValueId, experts: usize) -> (Graph, Vec<ValueId>) {
        let nodes = self.graph.split_off(start);
        let mut region = Graph::new("body");
        let mut moved: Vec<ValueId> = Vec::with_capacity(nodes.len());
        let mut stacked: Vec<ValueId> = Vec::new();
        let mut captures: HashMap<ValueId, ValueId> = HashMap::new();
        let stack_ty = |t: &TensorType| {
            let mut shape = vec![Dim::known(experts as i64)];
            shape.extend(t.shape.iter().cloned());
            TensorType::new(t.dtype, shape)
        };
        for node in nodes {
            if let Op::Param(name, init) = &node.op {
                let old = ValueId((start + moved.len()) as u32);
                let param = Node { op: Op::Param(name.clone(), *init), inputs: vec![], ty: stack_ty(&node.ty), span: node.span };
                let v = self.graph.push_unchecked(param);
                if self.param_values.get(name) == Some(&old) {
                    self.param_values.insert(name.clone(), v);
                }
                stacked.push(v);
                // Named by position, so that identical layers keep identical bodies.
                let arg = Node { op: Op::Input(format!("{}{}", Route::STACKED, stacked.len() - 1)), ..node };
                moved.push(region.push_unchecked(arg));
                continue;
            }
            let mut inputs = Vec::with_capacity(node.inputs.len());
            for v in &node.inputs {
                let local = match v.index().checked_sub(start) {
                    Some(k) => moved[k],
                    None => self.capture_stacked(&mut region, *v, experts, &mut stacked, &mut captures),
                };
                inputs.push(local);
            }
            moved.push(region.push_unchecked(Node { inputs, ..node }));
        }
        let local = match out.index().checked_sub(start) {
            Some(k) => moved[k],
            None => self.capture_stacked(&mut region, out, experts, &mut stacked, &mut captures),
        };
        region.outputs.push(("y".into(), local));
        (region, stacked)
    }

    /// The region's value for the enclosing value `v`: a copy of a scalar constant, or an
    /// argument whose operand is `v` broadcast along a leading axis of `experts`.
    fn capture_stacked(
        &mut self,
        region: &mut Graph,
        v: ValueId,
        experts: usize,
        stacked: &mut Vec<ValueId>,
        captures: &mut HashMap<ValueId, ValueId>,
    ) -> ValueId {
        if let Some(&r) = captures.get(&v) {
            return r;
        }
        let n = self.graph.node(v).clone();
        let r = if matches!(n.op, Op::Const(_)) && n.ty.shape.is_empty() {
            region.push_unchecked(n)
        } else {
            let mut shape = vec![Dim::known(experts as i64)];
            shape.extend(n.ty.shape.iter().cloned());
            let b = Node { op: Op::Broadcast, inputs: vec![v], ty: TensorType::new(n.ty.dtype, shape), span: n.span };
            stacked.push(self.graph.push_unchecked(b));
            region.push_unchecked(Node { op: Op::Input(format!("capture.{}", stacked.len() - 1)), inputs: vec![], ty: n.ty, span: n.span })
        };
        captures.insert(v, r);
        r
    }
}

/// The span of the value of the body's last top-level `return`.
fn return_span(body: &[Stmt]) -> Option<Span> {
    body.iter().rev().find_map(|s| match s {
        Stmt::Return { values, .. } => values.first().map(|e| e.span),
        _ => None,
    })
}

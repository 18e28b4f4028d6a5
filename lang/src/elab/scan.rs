//! Elaboration of `scan`: the body is elaborated in place, at the end of the graph, as
//! ordinary Tessera over argument nodes; then it is moved out into the region of an
//! `Op::Scan`. Tensors of the enclosing scope that it reads become invariant operands, its
//! parameters are declared in the enclosing graph (a region has none), and scalar constants
//! are copied in so that they stay visible to the body's fusion.

use super::{ArgVal, Elab, Frame, Value};
use crate::ast::{Arg, Ident, Stmt};
use crate::diag::{codes, Diagnostic};
use crate::Span;
use std::collections::HashMap;
use tessera_ir::{scan_results, Graph, Node, Op, Scan, TensorType, ValueId};

impl Elab<'_> {
    /// `scan(xs, init = h0, axis = 1, reverse = false) |h.., x_t..| { ...; return y_t.., h.. }`.
    pub(super) fn scan(&mut self, args: &[Arg], names: &[Ident], body: Option<&[Stmt]>, span: Span, frame: &mut Frame) -> Value {
        let call = RegionCall {
            what: "scan",
            params: ["xs", "init", "axis", "reverse"],
            names: "|state, x|",
            usage: "ys, h = scan(xs, init = h0, axis = 1) |h, x_t| { ...; return y_t, h }",
        };
        let (body, [xs, init, axis, reverse]) = match self.region_call(call, args, body, span, frame) {
            Ok(c) => c,
            Err(v) => return v,
        };
        let Some((xs, xs_span)) = xs else {
            return self.err(Diagnostic::error(codes::ARITY, "a scan needs the tensors it walks", span, "no `xs`"));
        };
        let Some(xs) = self.tensors(xs, xs_span, "the scanned value") else { return Value::Poison };
        if xs.is_empty() {
            return self.err(
                Diagnostic::error(codes::BAD_ARGS, "a scan over an empty tuple", xs_span, "nothing to walk")
                    .with_help("give at least one tensor to slice along the axis"),
            );
        }
        let inits = match init {
            None | Some((Value::None, _)) => Vec::new(),
            Some((v, s)) => match self.tensors(v, s, "a scan state") {
                Some(t) => t,
                None => return Value::Poison,
            },
        };
        let rank = self.ty(xs[0]).rank() as i64;
        let axis = match axis {
            None if rank < 2 => {
                let t = self.ty(xs[0]).clone();
                return self.err(
                    Diagnostic::error(codes::VALUE, format!("a scan walks axis 1 unless told, and {t} has none"), xs_span, "this tensor")
                        .with_help("give the axis to walk: `scan(xs, axis = 0) |..| { .. }`"),
                );
            }
            None => 1,
            Some((Value::Int(d), s)) => match d.as_known() {
                Some(a) if (-rank..rank).contains(&a) => a.rem_euclid(rank.max(1)),
                _ => {
                    return self.err(
                        Diagnostic::error(
                            codes::VALUE,
                            format!("axis {d} is out of range for a scanned tensor of rank {rank}"),
                            s,
                            "this axis",
                        )
                        .with_help(format!("the axis is in -{rank}..{rank}")),
                    )
                }
            },
            Some((v, s)) => return self.err(Diagnostic::error(codes::TYPE, format!("a scan axis is an int, not {}", v.kind()), s, "here")),
        } as usize;
        let reverse = match reverse {
            None => false,
            Some((Value::Bool(b), _)) => b,
            Some((v, s)) => return self.err(Diagnostic::error(codes::TYPE, format!("`reverse` is a bool, not {}", v.kind()), s, "here")),
        };
        let len = self.ty(xs[0]).shape.get(axis).cloned();
        for &x in &xs {
            let t = self.ty(x).clone();
            if t.shape.get(axis) != len.as_ref() || len.is_none() {
                let first = self.ty(xs[0]).clone();
                return self.err(
                    Diagnostic::error(
                        codes::SHAPE,
                        format!("the scanned tensors differ along axis {axis}: {first} and {t}"),
                        xs_span,
                        "these tensors",
                    )
                    .with_help("every sliced tensor has the same length along the scanned axis"),
                );
            }
        }
        let (ns, nx) = (inits.len(), xs.len());
        let names_span = names.first().map_or(span, |n| Span { end: names[names.len() - 1].span.end, ..n.span });
        if names.len() != ns + nx {
            return self.err(
                Diagnostic::error(
                    codes::ARITY,
                    format!("the scan body names {} value(s) but the scan passes {ns} state(s) and {nx} slice(s)", names.len()),
                    names_span,
                    "these names",
                )
                .with_help("name the states first, then one slice per scanned tensor: `|h, x_t|`"),
            );
        }
        for (k, n) in names.iter().enumerate() {
            if names[..k].iter().any(|m| m.name == n.name) {
                return self.err(Diagnostic::error(codes::DUPLICATE_NAME, format!("`{}` is named twice", n.name), n.span, "again here"));
            }
        }

        // The body, elaborated at the end of the graph over one argument node per name.
        let start = self.graph.len();
        let mut env = frame.env.clone();
        let mut arg_types = Vec::with_capacity(ns + nx);
        for (k, n) in names.iter().enumerate() {
            let ty = if k < ns {
                self.ty(inits[k]).clone()
            } else {
                let t = self.ty(xs[k - ns]);
                let mut shape = t.shape.clone();
                shape.remove(axis);
                TensorType::new(t.dtype, shape)
            };
            arg_types.push(ty.clone());
            let v = self.add(Op::Input(n.name.clone()), vec![], Some(ty), n.span);
            env.insert(n.name.clone(), v);
        }
        let mut inner = Frame { env, module: frame.module, is_model: false, ret: None };
        self.exec(body, &mut inner);
        let outs = match self.body_results(inner.ret.take(), body, names, &arg_types[..ns], span) {
            Ok(outs) => outs,
            Err(v) => {
                // The body leaves nothing in the graph.
                self.graph.split_off(start);
                return v;
            }
        };
        let ny = outs.len() - ns;
        let (region, captured) = self.outline(start, &outs, ny, names);
        let op = Scan { axis, reverse, state: ns, sliced: nx, body: region };
        let operands: Vec<ValueId> = inits.iter().chain(&xs).chain(&captured).copied().collect();
        let tys: Vec<&TensorType> = operands.iter().map(|&v| self.graph.ty(v)).collect();
        let results = match scan_results(&op, &tys) {
            Ok(r) => r,
            Err(msg) => return self.err(Diagnostic::error(codes::SHAPE, format!("invalid scan: {msg}"), span, "this scan")),
        };
        let Value::Tensor(node) = self.add(Op::Scan(Box::new(op)), operands, None, span) else { return Value::Poison };
        let mut projs: Vec<Value> =
            results.into_iter().enumerate().map(|(k, t)| self.add(Op::Proj(k), vec![node], Some(t), span)).collect();
        if projs.len() == 1 {
            projs.remove(0)
        } else {
            Value::Tuple(projs)
        }
    }

    /// The arguments of a region construct (`scan`, `route`), evaluated and matched to its
    /// parameters, with its body; or, for a poisoned argument, a missing body or arguments that
    /// do not match, the value to return.
    pub(super) fn region_call<'b, const N: usize>(
        &mut self,
        call: RegionCall<N>,
        args: &[Arg],
        body: Option<&'b [Stmt]>,
        span: Span,
        frame: &mut Frame,
    ) -> Result<(&'b [Stmt], [Slot; N]), Value> {
        let vals: Vec<ArgVal> =
            args.iter().map(|a| ArgVal { name: a.name.clone(), value: self.eval(&a.value, frame), span: a.value.span }).collect();
        if vals.iter().any(|a| matches!(a.value, Value::Poison)) {
            return Err(Value::Poison);
        }
        let Some(body) = body else {
            return Err(self.err(
                Diagnostic::error(
                    codes::SYNTAX,
                    format!("a {} needs a body", call.what),
                    span,
                    format!("no `{} {{ ... }}` follows", call.names),
                )
                .with_help(format!("write `{}`", call.usage)),
            ));
        };
        let slots = self.match_args(call.what, &call.params, vals, span).ok_or(Value::Poison)?;
        Ok((body, slots.try_into().map_err(|_| Value::Poison)?))
    }

    /// The tensors a scan body returned (`ret`): its per-step results, then its new states,
    /// each of its state's type (`states`, named first in `names`), or the diagnostic's value.
    fn body_results(
        &mut self,
        ret: Option<Value>,
        body: &[Stmt],
        names: &[Ident],
        states: &[TensorType],
        span: Span,
    ) -> Result<Vec<ValueId>, Value> {
        let ns = states.len();
        let returned = match ret {
            Some(Value::Tuple(vs)) => vs,
            Some(v) => vec![v],
            None => {
                return Err(self.err(
                    Diagnostic::error(codes::ARITY, "the scan body returns nothing", span, "this scan")
                        .with_help("end the body with `return y_t, h`: the per-step results, then the new states"),
                ));
            }
        };
        let ret_spans = return_spans(body);
        let at = |k: usize| ret_spans.get(k).copied().unwrap_or(span);
        let mut outs = Vec::with_capacity(returned.len());
        for (k, v) in returned.into_iter().enumerate() {
            match v {
                Value::Tensor(t) => outs.push(t),
                Value::Poison => return Err(Value::Poison),
                other => {
                    return Err(self.err(Diagnostic::error(
                        codes::TYPE,
                        format!("a scan body returns tensors, not {}", other.kind()),
                        at(k),
                        "this value",
                    )))
                }
            }
        }
        if outs.len() < ns || outs.is_empty() {
            return Err(self.err(
                Diagnostic::error(
                    codes::ARITY,
                    format!("the scan body returns {} value(s) but carries {ns} state(s)", outs.len()),
                    at(0),
                    "returned here",
                )
                .with_help("return the per-step results first, then every new state: `return y_t, h`"),
            ));
        }
        let ny = outs.len() - ns;
        for k in 0..ns {
            let (got, want) = (self.ty(outs[ny + k]).clone(), &states[k]);
            if got != *want {
                let what = if got.dtype != want.dtype { "dtype" } else { "shape" };
                return Err(self.err(
                    Diagnostic::error(
                        if what == "dtype" { codes::DTYPE } else { codes::SHAPE },
                        format!("the scan state `{}` changes {what}: it enters as {want} and the body returns {got}", names[k].name),
                        at(ny + k),
                        format!("the new `{}`", names[k].name),
                    )
                    .with_label(names[k].span, format!("enters as {want}"))
                    .with_help("a state keeps its type from step to step: broadcast or cast the new value to it"),
                ));
            }
        }
        Ok(outs)
    }

    /// A tensor or a tuple of tensors, as a list.
    fn tensors(&mut self, v: Value, span: Span, what: &str) -> Option<Vec<ValueId>> {
        let items = match v {
            Value::Tuple(vs) => vs,
            v => vec![v],
        };
        let mut out = Vec::with_capacity(items.len());
        for v in items {
            match v {
                Value::Tensor(t) => out.push(t),
                Value::Poison => return None,
                other => {
                    self.err(Diagnostic::error(
                        codes::TYPE,
                        format!("{what} is a tensor or a tuple of tensors, not {}", other.kind()),
                        span,
                        "here",
                    ));
                    return None;
                }
            }
        }
        Some(out)
    }

    /// Moves the nodes from `start` on into a region whose outputs are `outs` (`ny` per-step
    /// results, then the states, named after `names`). Returns the region and the enclosing
    /// values it reads (its invariant operands, in the order of its extra arguments).
    fn outline(&mut self, start: usize, outs: &[ValueId], ny: usize, names: &[Ident]) -> (Graph, Vec<ValueId>) {
        let nodes = self.graph.split_off(start);
        let mut region = Graph::new("body");
        // Where each moved node went: into the region, or (a parameter) back to the graph.
        let mut moved: Vec<Result<ValueId, ValueId>> = Vec::with_capacity(nodes.len());
        let mut captured: Vec<ValueId> = Vec::new();
        let mut captures: HashMap<ValueId, ValueId> = HashMap::new();
        for node in nodes {
            if let Op::Param(name, _) = &node.op {
                // Declared where the region can read it: in the enclosing graph.
                let old = ValueId((start + moved.len()) as u32);
                let name = name.clone();
                let v = self.graph.push_unchecked(node);
                if self.param_values.get(&name) == Some(&old) {
                    self.param_values.insert(name, v);
                }
                moved.push(Err(v));
                continue;
            }
            let mut inputs = Vec::with_capacity(node.inputs.len());
            for v in &node.inputs {
                let local = match v.index().checked_sub(start).map(|k| moved[k]) {
                    Some(Ok(r)) => r,
                    Some(Err(outer)) => self.capture(&mut region, outer, &mut captured, &mut captures),
                    None => self.capture(&mut region, *v, &mut captured, &mut captures),
                };
                inputs.push(local);
            }
            moved.push(Ok(region.push_unchecked(Node { inputs, ..node })));
        }
        for (k, &v) in outs.iter().enumerate() {
            let local = match v.index().checked_sub(start).map(|i| moved[i]) {
                Some(Ok(r)) => r,
                Some(Err(outer)) => self.capture(&mut region, outer, &mut captured, &mut captures),
                None => self.capture(&mut region, v, &mut captured, &mut captures),
            };
            let name = if k < ny { format!("y.{k}") } else { names[k - ny].name.clone() };
            region.outputs.push((name, local));
        }
        (region, captured)
    }

    /// The region's value for the enclosing value `v`: a copy of a scalar constant, or an
    /// argument (made on first use) whose operand is `v`.
    fn capture(&self, region: &mut Graph, v: ValueId, captured: &mut Vec<ValueId>, captures: &mut HashMap<ValueId, ValueId>) -> ValueId {
        if let Some(&r) = captures.get(&v) {
            return r;
        }
        let n = self.graph.node(v);
        let r = if matches!(n.op, Op::Const(_)) && n.ty.shape.is_empty() {
            region.push_unchecked(n.clone())
        } else {
            captured.push(v);
            region.push_unchecked(Node {
                op: Op::Input(format!("capture.{}", captured.len() - 1)),
                inputs: vec![],
                ty: n.ty.clone(),
                span: n.span,
            })
        };
        captures.insert(v, r);
        r
    }
}

/// An argument matched to a parameter: its value and span, or absent.
type Slot = Option<(Value, Span)>;

/// What [`Elab::region_call`] needs to know of a construct: its name, its parameters, how its
/// body names its arguments and a usage line (both for the diagnostic of a missing body).
pub(super) struct RegionCall<const N: usize> {
    pub(super) what: &'static str,
    pub(super) params: [&'static str; N],
    pub(super) names: &'static str,
    pub(super) usage: &'static str,
}

/// The spans of the values of the body's last top-level `return`.
fn return_spans(body: &[Stmt]) -> Vec<Span> {
    body.iter()
        .rev()
        .find_map(|s| match s {
            Stmt::Return { values, .. } => Some(values.iter().map(|e| e.span).collect()),
            _ => None,
        })
        .unwrap_or_default()
}

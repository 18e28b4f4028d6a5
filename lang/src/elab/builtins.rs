//! Built-in functions: activations, reductions, `softmax`, `where`, `arange`, `concat`,
//! `split`, `cumsum`, `rearrange`, casts, initialisers for `param`, and Fourier transforms
//! (`fft`, `ifft`, `rfft`, `irfft`) with `complex`, `real` and `imag` (complex tensors are
//! real tensors with a last axis of size 2: real, imaginary).

use super::{ArgVal, Elab, Value};
use crate::ast::Span;
use crate::diag::{codes, Diagnostic};
use tessera_ir::{BinaryOp, DType, Dim, Op, ReduceOp, ShapeDisplay, TensorType, UnaryOp, ValueId};

/// Every built-in name.
pub const NAMES: &[&str] = &[
    "relu",
    "gelu",
    "gelu_tanh",
    "silu",
    "sigmoid",
    "tanh",
    "softplus",
    "exp",
    "log",
    "sqrt",
    "rsqrt",
    "abs",
    "sin",
    "cos",
    "softmax",
    "sum",
    "mean",
    "max",
    "min",
    "maximum",
    "minimum",
    "where",
    "arange",
    "concat",
    "split",
    "cumsum",
    "rearrange",
    "transpose",
    "permute",
    "reshape",
    "float",
    "int",
    "bool",
    "size",
    "argmax",
    "argmin",
    "sort",
    "conv1d",
    "max_pool",
    "avg_pool",
    "segment_max",
    "segment_min",
    "segment_mean",
    "segment_sum",
    "take_along_axis",
    "scatter_add",
    "require",
    "normal",
    "fill",
    "topk",
    "fft",
    "ifft",
    "rfft",
    "irfft",
    "complex",
    "real",
    "imag",
];

pub fn lookup(name: &str) -> Option<&'static str> {
    NAMES.iter().find(|n| **n == name).copied()
}

fn unary_of(name: &str) -> Option<UnaryOp> {
    Some(match name {
        "relu" => UnaryOp::Relu,
        "gelu" => UnaryOp::GeluErf,
        "gelu_tanh" => UnaryOp::GeluTanh,
        "silu" => UnaryOp::Silu,
        "sigmoid" => UnaryOp::Sigmoid,
        "tanh" => UnaryOp::Tanh,
        "softplus" => UnaryOp::Softplus,
        "exp" => UnaryOp::Exp,
        "log" => UnaryOp::Log,
        "sqrt" => UnaryOp::Sqrt,
        "rsqrt" => UnaryOp::Rsqrt,
        "abs" => UnaryOp::Abs,
        "sin" => UnaryOp::Sin,
        "cos" => UnaryOp::Cos,
        _ => return None,
    })
}

fn signature(name: &str) -> &'static [&'static str] {
    match name {
        "softmax" | "cumsum" => &["x", "axis"],
        "sum" | "mean" | "max" | "min" => &["x", "axis", "keepdim"],
        "maximum" | "minimum" => &["a", "b"],
        "where" => &["cond", "a", "b"],
        "arange" => &["start", "end"],
        "split" => &["x", "sections", "axis"],
        "transpose" => &["x", "a", "b"],
        "permute" => &["x", "dims"],
        "reshape" => &["x", "shape"],
        "size" => &["x", "axis"],
        "argmax" | "argmin" => &["x", "axis", "keepdim"],
        "conv1d" => &["x", "w", "causal"],
        "sort" => &["x", "axis", "descending"],
        "max_pool" | "avg_pool" => &["x", "size", "axis", "causal"],
        "take_along_axis" => &["x", "indices", "axis"],
        "scatter_add" => &["x", "indices", "updates", "axis"],
        "require" => &["cond", "message"],
        "segment_max" | "segment_min" | "segment_mean" | "segment_sum" => &["x", "ids"],
        "normal" => &["std"],
        "fill" => &["value"],
        "topk" => &["x", "k", "axis"],
        "fft" | "ifft" => &["z", "axes"],
        "rfft" => &["x", "n", "axis"],
        "irfft" => &["z", "n", "axis"],
        "complex" => &["re", "im"],
        "real" | "imag" => &["z"],
        _ => &["x"],
    }
}

impl Elab<'_> {
    pub(super) fn tensor_arg(&mut self, fname: &str, pname: &str, a: &Option<(Value, Span)>, span: Span) -> Option<ValueId> {
        match a {
            Some((Value::Tensor(t), _)) => Some(*t),
            Some((Value::Poison, _)) => None,
            Some((v, s)) => {
                self.err(Diagnostic::error(
                    codes::TYPE,
                    format!("`{fname}` expects a tensor for `{pname}`, got {}", v.kind()),
                    *s,
                    "this value",
                ));
                None
            }
            None => {
                self.err(Diagnostic::error(codes::BAD_ARGS, format!("missing argument `{pname}` of `{fname}`"), span, "in this call"));
                None
            }
        }
    }

    /// Normalises an axis (negative counts from the end).
    pub(super) fn axis(&mut self, v: &Value, rank: usize, span: Span) -> Option<usize> {
        let n = match v {
            Value::Int(d) => d.as_known(),
            _ => None,
        };
        let Some(n) = n else {
            if !matches!(v, Value::Poison) {
                self.err(Diagnostic::error(codes::TYPE, format!("an axis must be an int, got {}", v.kind()), span, "this value"));
            }
            return None;
        };
        let a = if n < 0 { n + rank as i64 } else { n };
        if a < 0 || a >= rank as i64 {
            self.err(Diagnostic::error(codes::VALUE, format!("axis {n} is out of range for a tensor of rank {rank}"), span, "this axis"));
            return None;
        }
        Some(a as usize)
    }

    fn axis_arg(&mut self, a: &Option<(Value, Span)>, default: i64, rank: usize, span: Span) -> Option<usize> {
        match a {
            Some((v, s)) => self.axis(v, rank, *s),
            None => self.axis(&Value::int(default), rank, span),
        }
    }

    /// `argmax`/`argmin` along `axis` (i64): the lowest index of the extreme, as `torch`
    /// breaks ties. Composed of a reduction, an equality and a min over the indices (held in
    /// f32: exact below 2^24 elements along the axis).
    fn arg_extreme(&mut self, max: bool, x: ValueId, axis: usize, keepdim: bool, span: Span) -> Value {
        let ty = self.ty(x).clone();
        if ty.shape[axis].as_known().is_some_and(|n| n > 1 << 24) {
            return self.err(Diagnostic::error(
                codes::VALUE,
                format!("`arg{}` over an axis of {} elements (at most 2^24)", if max { "max" } else { "min" }, ty.shape[axis]),
                span,
                "here",
            ));
        }
        let x = match self.cast(x, DType::F32, span) {
            Value::Tensor(t) => t,
            other => return other,
        };
        let op = if max { ReduceOp::Max } else { ReduceOp::Min };
        let Value::Tensor(m) = self.reduce(op, x, vec![axis], true, span) else { return Value::Poison };
        let Value::Tensor(hit) = self.add(Op::Binary(BinaryOp::Eq), vec![x, m], None, span) else { return Value::Poison };
        let shape = ty.shape.clone();
        let Value::Tensor(io) = self.add(Op::Iota { axis }, vec![], Some(TensorType::new(DType::I64, shape)), span) else {
            return Value::Poison;
        };
        let Value::Tensor(iof) = self.cast(io, DType::F32, span) else { return Value::Poison };
        let Value::Tensor(big) = self.constant(f64::from(1u32 << 25), DType::F32, span) else { return Value::Poison };
        let Value::Tensor(cand) = self.add(Op::Where, vec![hit, iof, big], None, span) else { return Value::Poison };
        let Value::Tensor(first) = self.reduce(ReduceOp::Min, cand, vec![axis], keepdim, span) else { return Value::Poison };
        self.cast(first, DType::I64, span)
    }

    /// `sort(x, axis, descending)`: the values in order along `axis` (ties keep their order).
    /// Composed by ranks: element i goes to place `#{j : x_j before x_i} + #{j < i : x_j = x_i}`,
    /// then each place sums the one element whose rank it is. It holds an [.., n, n, ..]
    /// comparison, so it suits short axes (codebooks, top candidates), not whole sequences.
    fn sort(&mut self, x: ValueId, axis: usize, descending: bool, span: Span) -> Value {
        let ty = self.ty(x).clone();
        if ty.shape[axis].as_known().is_none_or(|n| n > 4096) {
            return self.err(Diagnostic::error(
                codes::VALUE,
                format!("`sort` along an axis of {} elements (a known size of at most 4096)", ty.shape[axis]),
                span,
                "here",
            ));
        }
        let Value::Tensor(x) = self.cast(x, DType::F32, span) else { return Value::Poison };
        let with_one = |at: usize| {
            let mut s = ty.shape.clone();
            s.insert(at, Dim::known(1));
            s
        };
        // xi: [.., n(i), 1, ..], xj: [.., 1, n(j), ..]
        let (Value::Tensor(xi), Value::Tensor(xj)) = (self.reshape(x, with_one(axis + 1), span), self.reshape(x, with_one(axis), span))
        else {
            return Value::Poison;
        };
        let pair = {
            let mut s = ty.shape.clone();
            s.insert(axis + 1, ty.shape[axis].clone());
            s
        };
        let iota =
            |this: &mut Self, a: usize| match this.add(Op::Iota { axis: a }, vec![], Some(TensorType::new(DType::I64, pair.clone())), span)
            {
                Value::Tensor(t) => Some(t),
                _ => None,
            };
        let (Some(ii), Some(jj)) = (iota(self, axis), iota(self, axis + 1)) else { return Value::Poison };
        let before = if descending { BinaryOp::Gt } else { BinaryOp::Lt };
        let bin = |this: &mut Self, op: BinaryOp, l: ValueId, r: ValueId| match this.add(Op::Binary(op), vec![l, r], None, span) {
            Value::Tensor(t) => Some(t),
            _ => None,
        };
        let Some(rank) = (|| {
            let earlier = bin(self, before, xj, xi)?;
            let tie = bin(self, BinaryOp::Eq, xj, xi)?;
            let lower = bin(self, BinaryOp::Lt, jj, ii)?;
            let tie_before = bin(self, BinaryOp::And, tie, lower)?;
            let counted = bin(self, BinaryOp::Or, earlier, tie_before)?;
            let Value::Tensor(c) = self.cast(counted, DType::F32, span) else { return None };
            let Value::Tensor(r) = self.reduce(ReduceOp::Sum, c, vec![axis + 1], false, span) else { return None };
            Some(r)
        })() else {
            return Value::Poison;
        };
        // place k (along `axis`) takes the element i (along axis + 1) whose rank is k.
        let Value::Tensor(rank_i) = self.reshape(rank, with_one(axis), span) else { return Value::Poison };
        let Value::Tensor(kf) = self.cast(ii, DType::F32, span) else { return Value::Poison };
        let Some(hit) = bin(self, BinaryOp::Eq, rank_i, kf) else { return Value::Poison };
        let Value::Tensor(zero) = self.constant(0.0, DType::F32, span) else { return Value::Poison };
        let Value::Tensor(picked) = self.add(Op::Where, vec![hit, xj, zero], None, span) else { return Value::Poison };
        self.reduce(ReduceOp::Sum, picked, vec![axis + 1], false, span)
    }

    /// `take_along_axis(x, indices, axis)`: `x` [lead.., n, rest..], `indices` [lead.., k]
    /// (i64) → [lead.., k, rest..], row by row of the leading axes (`x[b, indices[b, j]]`),
    /// as one gather from `x` with its leading axes and `axis` flattened.
    fn take_along_axis(&mut self, x: ValueId, idx: ValueId, axis: usize, span: Span) -> Value {
        let (tx, ti) = (self.ty(x).clone(), self.ty(idx).clone());
        if ti.dtype != DType::I64 || ti.rank() != axis + 1 || ti.shape[..axis] != tx.shape[..axis] {
            return self.err(
                Diagnostic::error(
                    codes::SHAPE,
                    format!("`take_along_axis` of {tx} along axis {axis} needs i64 indices of shape [{}.., k], got {ti}", {
                        let lead: Vec<String> = tx.shape[..axis].iter().map(|d| d.to_string()).collect();
                        if lead.is_empty() {
                            String::new()
                        } else {
                            format!("{}, ", lead.join(", "))
                        }
                    }),
                    span,
                    "this call",
                )
                .with_help("the indices have the leading axes of x and one axis of positions along `axis`"),
            );
        }
        // Flat row of each index: sum over leading axes a of iota_a * prod(lead[a+1..]), times n.
        let n = tx.shape[axis].clone();
        let Value::Tensor(mut flat) = self.constant(0.0, DType::I64, span) else { return Value::Poison };
        for a in 0..axis {
            let stride = tx.shape[a + 1..=axis].iter().fold(Dim::known(1), |acc, d| acc.mul(d));
            let Value::Tensor(io) = self.add(Op::Iota { axis: a }, vec![], Some(TensorType::new(DType::I64, ti.shape.clone())), span)
            else {
                return Value::Poison;
            };
            let Some(st) = self.lift(&Value::Int(stride), DType::I64, span) else { return Value::Poison };
            let Value::Tensor(term) = self.add(Op::Binary(BinaryOp::Mul), vec![io, st], None, span) else { return Value::Poison };
            let Value::Tensor(sum) = self.add(Op::Binary(BinaryOp::Add), vec![flat, term], None, span) else { return Value::Poison };
            flat = sum;
        }
        let Value::Tensor(at) = self.add(Op::Binary(BinaryOp::Add), vec![flat, idx], None, span) else { return Value::Poison };
        let rows = tx.shape[..=axis].iter().fold(Dim::known(1), |acc, d| acc.mul(d));
        let _ = n;
        let mut shape = vec![rows];
        shape.extend(tx.shape[axis + 1..].iter().cloned());
        let Value::Tensor(table) = self.reshape(x, shape, span) else { return Value::Poison };
        self.add(Op::Gather { axis: 0 }, vec![table, at], None, span)
    }

    pub(super) fn reduce(&mut self, op: ReduceOp, x: ValueId, axes: Vec<usize>, keepdim: bool, span: Span) -> Value {
        self.add(Op::Reduce { op, axes, keepdim }, vec![x], None, span)
    }

    pub(super) fn builtin(&mut self, name: &'static str, args: Vec<ArgVal>, span: Span) -> Value {
        match name {
            "concat" => return self.concat(args, span),
            "rearrange" => return self.rearrange_call(args, span),
            _ => {}
        }
        let Some(a) = self.match_args(name, signature(name), args, span) else { return Value::Poison };
        if let Some(u) = unary_of(name) {
            return match &a[0] {
                Some((Value::Int(_) | Value::Float(_), _)) => match to_f64(&a[0]) {
                    Some(x) => Value::Float(u.eval(x)),
                    None => self.err(Diagnostic::error(codes::NON_CONSTANT, format!("`{name}` of a symbolic size"), span, "here")),
                },
                _ => {
                    let Some(x) = self.tensor_arg(name, "x", &a[0], span) else { return Value::Poison };
                    let keep_int = u == UnaryOp::Abs && self.ty(x).dtype == DType::I64;
                    let x = match if keep_int { Value::Tensor(x) } else { self.cast(x, DType::F32, span) } {
                        Value::Tensor(t) => t,
                        v => return v,
                    };
                    self.unary(u, x, span)
                }
            };
        }
        match name {
            // A check of hyper-parameters, at compile time: `require(d % heads == 0, "...")`.
            "require" => {
                let message = match &a[1] {
                    Some((Value::Str(m), _)) => m.clone(),
                    _ => return self.err(Diagnostic::error(codes::TYPE, "`require` takes a condition and a message string", span, "here")),
                };
                match &a[0] {
                    Some((Value::Bool(true), _)) | Some((Value::Poison, _)) => Value::None,
                    Some((Value::Bool(false), s)) => self.err(
                        Diagnostic::error(
                            codes::VALUE,
                            format!("unsupported hyper-parameters: {message}"),
                            *s,
                            "this requirement is not met",
                        )
                        .with_help("check the values given by -D, config.json or the defaults"),
                    ),
                    Some((Value::Tensor(_), s)) => self.err(Diagnostic::error(
                        codes::NON_CONSTANT,
                        "`require` needs a condition known at compile time (hyper-parameters and sizes)",
                        *s,
                        "a tensor",
                    )),
                    Some((v, s)) => {
                        self.err(Diagnostic::error(codes::TYPE, format!("`require` takes a bool condition, not {}", v.kind()), *s, "here"))
                    }
                    None => Value::Poison,
                }
            }
            "softmax" => {
                let Some(x) = self.tensor_arg(name, "x", &a[0], span) else { return Value::Poison };
                let Some(ax) = self.axis_arg(&a[1], -1, self.ty(x).rank(), span) else { return Value::Poison };
                self.softmax(x, ax, span)
            }
            "sum" | "mean" | "max" | "min" => {
                if matches!(a[0], Some((Value::Int(_) | Value::Float(_), _))) && name != "sum" && name != "mean" {
                    return self.scalar_extreme(name, &a, span);
                }
                let Some(x) = self.tensor_arg(name, "x", &a[0], span) else { return Value::Poison };
                let rank = self.ty(x).rank();
                let axes = match &a[1] {
                    None | Some((Value::None, _)) => (0..rank).collect(),
                    Some((Value::Tuple(items), s)) => {
                        let mut out = Vec::new();
                        for i in items {
                            out.push(match self.axis(i, rank, *s) {
                                Some(ax) => ax,
                                None => return Value::Poison,
                            });
                        }
                        out.sort_unstable();
                        out.dedup();
                        out
                    }
                    Some((v, s)) => match self.axis(v, rank, *s) {
                        Some(ax) => vec![ax],
                        None => return Value::Poison,
                    },
                };
                let keepdim = matches!(a[2], Some((Value::Bool(true), _)));
                let op = match name {
                    "sum" => ReduceOp::Sum,
                    "mean" => ReduceOp::Mean,
                    "max" => ReduceOp::Max,
                    _ => ReduceOp::Min,
                };
                let x = if op == ReduceOp::Mean { self.cast(x, DType::F32, span) } else { Value::Tensor(x) };
                let Value::Tensor(x) = x else { return x };
                self.reduce(op, x, axes, keepdim, span)
            }
            "maximum" | "minimum" => {
                let (Some((l, ls)), Some((r, rs))) = (a[0].clone(), a[1].clone()) else {
                    return self.err(Diagnostic::error(codes::BAD_ARGS, format!("`{name}` takes two arguments"), span, "in this call"));
                };
                let Some((x, y, _)) = self.coerce_pair(crate::ast::BinOp::Sub, &l, &r, ls, rs) else { return Value::Poison };
                let op = if name == "maximum" { tessera_ir::BinaryOp::Max } else { tessera_ir::BinaryOp::Min };
                self.add(Op::Binary(op), vec![x, y], None, span)
            }
            "where" => {
                let Some(c) = self.tensor_arg(name, "cond", &a[0], span) else { return Value::Poison };
                if self.ty(c).dtype != DType::Bool {
                    let s = a[0].as_ref().map_or(span, |x| x.1);
                    return self.err(
                        Diagnostic::error(codes::DTYPE, format!("`where` needs a bool condition, got {}", self.ty(c).dtype), s, "not bool")
                            .with_help("compare to get a bool: `mask != 0`"),
                    );
                }
                let (Some((av, asp)), Some((bv, bsp))) = (a[1].clone(), a[2].clone()) else {
                    return self.err(Diagnostic::error(codes::BAD_ARGS, "`where` takes three arguments", span, "in this call"));
                };
                // Operand types follow the binary-operator rules (numbers take the tensor's type).
                let Some((x, y, _)) = self.coerce_pair(crate::ast::BinOp::Add, &av, &bv, asp, bsp) else { return Value::Poison };
                let both = tessera_ir::broadcast_shapes(&self.ty(x).shape, &self.ty(y).shape).unwrap_or_default();
                let (sc, sa) = (self.ty(c).shape.clone(), both);
                if tessera_ir::broadcast_shapes(&sc, &sa).is_err() {
                    let s = a[0].as_ref().map_or(span, |x| x.1);
                    return self.err(
                        Diagnostic::error(
                            codes::SHAPE,
                            format!("shape mismatch in `where`: condition {} and values {}", ShapeDisplay(&sc), ShapeDisplay(&sa)),
                            s,
                            format!("this has shape {}", ShapeDisplay(&sc)),
                        )
                        .with_label(asp, format!("values have shape {}", ShapeDisplay(&sa))),
                    );
                }
                self.add(Op::Where, vec![c, x, y], None, span)
            }
            "arange" => {
                let (start, end) = match (&a[0], &a[1]) {
                    (Some((s, _)), Some((e, _))) => (s.clone(), e.clone()),
                    (Some((e, _)), None) => (Value::int(0), e.clone()),
                    _ => return self.err(Diagnostic::error(codes::BAD_ARGS, "`arange` needs an end", span, "in this call")),
                };
                let (Value::Int(s), Value::Int(e)) = (&start, &end) else {
                    return self.err(Diagnostic::error(
                        codes::TYPE,
                        format!("`arange` takes ints, got {} and {}", start.kind(), end.kind()),
                        span,
                        "here",
                    ));
                };
                let len = e.sub(s);
                if matches!(len.as_known(), Some(n) if n < 0) {
                    return self.err(Diagnostic::error(codes::VALUE, format!("`arange({s}, {e})` is empty backwards"), span, "here"));
                }
                let io = self.add(Op::Iota { axis: 0 }, vec![], Some(TensorType::new(DType::I64, vec![len])), span);
                match (s.as_known(), io) {
                    (Some(0), io) => io,
                    (_, Value::Tensor(t)) => self.binary(crate::ast::BinOp::Add, Value::Tensor(t), start, span, span, span),
                    (_, v) => v,
                }
            }
            "split" => self.split(&a, span),
            "fft" | "ifft" | "rfft" | "irfft" | "complex" | "real" | "imag" => self.fourier(name, &a, span),
            "cumsum" => {
                let Some(x) = self.tensor_arg(name, "x", &a[0], span) else { return Value::Poison };
                let Some(ax) = self.axis_arg(&a[1], -1, self.ty(x).rank(), span) else { return Value::Poison };
                self.add(Op::Cumsum { axis: ax }, vec![x], None, span)
            }
            "transpose" => {
                let Some(x) = self.tensor_arg(name, "x", &a[0], span) else { return Value::Poison };
                let r = self.ty(x).rank();
                let (Some(i), Some(j)) = (self.axis_arg(&a[1], -2, r, span), self.axis_arg(&a[2], -1, r, span)) else {
                    return Value::Poison;
                };
                let mut perm: Vec<usize> = (0..r).collect();
                perm.swap(i, j);
                self.add(Op::Transpose(perm), vec![x], None, span)
            }
            "permute" => {
                let Some(x) = self.tensor_arg(name, "x", &a[0], span) else { return Value::Poison };
                let r = self.ty(x).rank();
                let Some((Value::Tuple(items), s)) = a[1].clone() else {
                    return self.err(Diagnostic::error(codes::TYPE, "`permute` takes a tuple of axes", span, "here"));
                };
                let mut perm = Vec::new();
                for i in &items {
                    match self.axis(i, r, s) {
                        Some(p) => perm.push(p),
                        None => return Value::Poison,
                    }
                }
                self.add(Op::Transpose(perm), vec![x], None, span)
            }
            "reshape" => {
                let Some(x) = self.tensor_arg(name, "x", &a[0], span) else { return Value::Poison };
                let Some((Value::Tuple(items), s)) = a[1].clone() else {
                    return self.err(Diagnostic::error(codes::TYPE, "`reshape` takes a tuple of sizes", span, "here"));
                };
                let total = self.ty(x).shape.iter().fold(Dim::known(1), |acc, d| acc.mul(d));
                let mut shape = Vec::new();
                let mut infer_at = None;
                for (k, i) in items.iter().enumerate() {
                    match i {
                        Value::Int(d) if d.as_known() == Some(-1) && infer_at.is_none() => {
                            infer_at = Some(k);
                            shape.push(Dim::known(1));
                        }
                        Value::Int(d) => shape.push(d.clone()),
                        v => {
                            return self.err(Diagnostic::error(codes::TYPE, format!("a size must be an int, got {}", v.kind()), s, "here"))
                        }
                    }
                }
                if let Some(k) = infer_at {
                    let rest = shape.iter().fold(Dim::known(1), |acc, d| acc.mul(d));
                    match total.div_blocks(&rest) {
                        Some(q) => shape[k] = q,
                        None => {
                            return self.err(Diagnostic::error(
                                codes::SHAPE,
                                format!("cannot infer `-1`: {total} is not divisible by {rest}"),
                                s,
                                "here",
                            ))
                        }
                    }
                }
                let from = self.ty(x).shape.clone();
                if shape.iter().fold(Dim::known(1), |acc, d| acc.mul(d)) != total {
                    return self.err(Diagnostic::error(
                        codes::SHAPE,
                        format!("cannot reshape {} to {}", ShapeDisplay(&from), ShapeDisplay(&shape)),
                        s,
                        "element counts differ",
                    ));
                }
                self.reshape(x, shape, span)
            }
            "float" | "int" | "bool" => {
                let to = match name {
                    "float" => DType::F32,
                    "int" => DType::I64,
                    _ => DType::Bool,
                };
                match a[0].clone() {
                    Some((Value::Tensor(t), _)) => self.cast(t, to, span),
                    Some((v @ (Value::Int(_) | Value::Float(_) | Value::Bool(_)), s)) => match (name, to_f64(&Some((v.clone(), s)))) {
                        ("float", Some(f)) => Value::Float(f),
                        ("int", Some(f)) => Value::int(f.trunc() as i64),
                        ("bool", Some(f)) => Value::Bool(f != 0.0),
                        _ if name == "int" => v,
                        // `float(seq)`: a scalar known when the program runs.
                        _ => match &v {
                            Value::Int(d) => match self.size_tensor(&d.clone(), to, s) {
                                Some(t) => Value::Tensor(t),
                                None => Value::Poison,
                            },
                            _ => self.err(Diagnostic::error(codes::NON_CONSTANT, format!("`{name}` of a symbolic size"), s, "here")),
                        },
                    },
                    Some((Value::Poison, _)) => Value::Poison,
                    Some((v, s)) => self.err(Diagnostic::error(codes::TYPE, format!("`{name}` cannot convert {}", v.kind()), s, "here")),
                    None => self.err(Diagnostic::error(codes::BAD_ARGS, format!("`{name}` takes one argument"), span, "here")),
                }
            }
            "argmax" | "argmin" => {
                let Some(x) = self.tensor_arg(name, "x", &a[0], span) else { return Value::Poison };
                let rank = self.ty(x).rank();
                let Some(axis) = self.axis_arg(&a[1], -1, rank, span) else { return Value::Poison };
                let keepdim = matches!(a[2], Some((Value::Bool(true), _)));
                self.arg_extreme(name == "argmax", x, axis, keepdim, span)
            }
            "topk" => {
                let Some(x) = self.tensor_arg(name, "x", &a[0], span) else { return Value::Poison };
                let rank = self.ty(x).rank();
                let Some(axis) = self.axis_arg(&a[2], -1, rank, span) else { return Value::Poison };
                // A constant, or a size known when the program runs (`seq // 8`).
                let k = match &a[1] {
                    Some((Value::Int(d), _)) if d.as_known().is_none() => d.clone(),
                    other => match self.count_arg("topk", "k", other, span) {
                        Some(k) => Dim::known(k as i64),
                        None => return Value::Poison,
                    },
                };
                self.topk(x, k, axis, span)
            }
            "sort" => {
                let Some(x) = self.tensor_arg(name, "x", &a[0], span) else { return Value::Poison };
                let rank = self.ty(x).rank();
                let Some(axis) = self.axis_arg(&a[1], -1, rank, span) else { return Value::Poison };
                let descending = matches!(a[2], Some((Value::Bool(true), _)));
                self.sort(x, axis, descending, span)
            }
            "conv1d" => {
                let (Some(x), Some(w)) = (self.tensor_arg(name, "x", &a[0], span), self.tensor_arg(name, "w", &a[1], span)) else {
                    return Value::Poison;
                };
                let (tx, tw) = (self.ty(x).clone(), self.ty(w).clone());
                let size = match (tw.rank(), tw.shape.first().and_then(Dim::as_known)) {
                    (2, Some(k)) if k > 0 && tx.rank() >= 2 && tw.shape[1] == tx.shape[tx.rank() - 1] => k as usize,
                    _ => {
                        return self.err(
                            Diagnostic::error(
                                codes::SHAPE,
                                format!(
                                    "`conv1d` of {tx} needs a filter [k, channels] with k known and channels = x's last size, got {tw}"
                                ),
                                span,
                                "this call",
                            )
                            .with_help("x: [.., length, channels], w: [k, channels] (one filter per channel)"),
                        )
                    }
                };
                let causal = !matches!(a[2], Some((Value::Bool(false), _)));
                if !causal && size.is_multiple_of(2) {
                    return self.err(Diagnostic::error(
                        codes::VALUE,
                        format!("a centred `conv1d` needs an odd filter length, got {size}"),
                        span,
                        "this call",
                    ));
                }
                let pad_left = if causal { size - 1 } else { (size - 1) / 2 };
                let (x, w) = match (self.cast(x, DType::F32, span), self.cast(w, DType::F32, span)) {
                    (Value::Tensor(x), Value::Tensor(w)) => (x, w),
                    _ => return Value::Poison,
                };
                self.add(Op::Window { op: tessera_ir::WindowOp::Conv, axis: tx.rank() - 2, size, pad_left }, vec![x, w], None, span)
            }
            "max_pool" | "avg_pool" => {
                let Some(x) = self.tensor_arg(name, "x", &a[0], span) else { return Value::Poison };
                let rank = self.ty(x).rank();
                let size = match &a[1] {
                    Some((Value::Int(d), _)) => d.as_known().filter(|&k| (1..=1 << 20).contains(&k)),
                    _ => None,
                };
                let Some(size) = size else {
                    let s = a[1].as_ref().map_or(span, |(_, s)| *s);
                    return self.err(Diagnostic::error(
                        codes::VALUE,
                        format!("`{name}` needs a window size, a known int from 1"),
                        s,
                        "here",
                    ));
                };
                let Some(axis) = self.axis_arg(&a[2], -2, rank, span) else { return Value::Poison };
                let causal = matches!(a[3], Some((Value::Bool(true), _)));
                let size = size as usize;
                if !causal && size.is_multiple_of(2) {
                    return self.err(Diagnostic::error(
                        codes::VALUE,
                        format!("a centred `{name}` needs an odd window, got {size}"),
                        span,
                        "this call",
                    ));
                }
                let pad_left = if causal { size - 1 } else { (size - 1) / 2 };
                let op = if name == "max_pool" { tessera_ir::WindowOp::Max } else { tessera_ir::WindowOp::Mean };
                let Value::Tensor(x) = self.cast(x, DType::F32, span) else { return Value::Poison };
                self.add(Op::Window { op, axis, size, pad_left }, vec![x], None, span)
            }
            "segment_max" | "segment_min" | "segment_mean" | "segment_sum" => {
                let (Some(x), Some(ids)) = (self.tensor_arg(name, "x", &a[0], span), self.tensor_arg(name, "ids", &a[1], span)) else {
                    return Value::Poison;
                };
                let (tx, ti) = (self.ty(x).clone(), self.ty(ids).clone());
                if ti.dtype != DType::I64 || ti.rank() == 0 || ti.rank() > tx.rank() || ti.shape[..] != tx.shape[..ti.rank()] {
                    return self.err(
                        Diagnostic::error(
                            codes::SHAPE,
                            format!("`{name}` of {tx} needs i64 segment ids shaped as x's leading axes, got {ti}"),
                            span,
                            "this call",
                        )
                        .with_help("x: [.., n, rest..], ids: i64[.., n] (one id per position; equal ids form a segment)"),
                    );
                }
                let op = match name {
                    "segment_max" => ReduceOp::Max,
                    "segment_min" => ReduceOp::Min,
                    "segment_mean" => ReduceOp::Mean,
                    _ => ReduceOp::Sum,
                };
                let Value::Tensor(x) = self.cast(x, DType::F32, span) else { return Value::Poison };
                self.add(Op::Segment { op, axis: ti.rank() - 1 }, vec![x, ids], None, span)
            }
            "take_along_axis" => {
                let (Some(x), Some(idx)) = (self.tensor_arg(name, "x", &a[0], span), self.tensor_arg(name, "indices", &a[1], span)) else {
                    return Value::Poison;
                };
                let rank = self.ty(x).rank();
                let Some(axis) = self.axis_arg(&a[2], -1, rank, span) else { return Value::Poison };
                self.take_along_axis(x, idx, axis, span)
            }
            // The inverse of `take_along_axis`: `updates` added into `x` at `indices` along
            // `axis` (by default the indices' last), batched over the axes before it.
            "scatter_add" => {
                let (Some(x), Some(idx), Some(upd)) = (
                    self.tensor_arg(name, "x", &a[0], span),
                    self.tensor_arg(name, "indices", &a[1], span),
                    self.tensor_arg(name, "updates", &a[2], span),
                ) else {
                    return Value::Poison;
                };
                let rank = self.ty(x).rank();
                let default = self.ty(idx).rank() as i64 - 1;
                let Some(axis) = self.axis_arg(&a[3], default, rank, span) else { return Value::Poison };
                let Value::Tensor(upd) = self.cast(upd, DType::F32, span) else { return Value::Poison };
                let Value::Tensor(x) = self.cast(x, DType::F32, span) else { return Value::Poison };
                self.add(Op::ScatterAdd { axis }, vec![x, idx, upd], None, span)
            }
            "size" => {
                let Some(x) = self.tensor_arg(name, "x", &a[0], span) else { return Value::Poison };
                let r = self.ty(x).rank();
                let Some(ax) = self.axis_arg(&a[1], -1, r, span) else { return Value::Poison };
                Value::Int(self.ty(x).shape[ax].clone())
            }
            "normal" | "fill" => match to_f64(&a[0]) {
                Some(v) => Value::Tuple(vec![Value::Str(name.to_string()), Value::Float(v)]),
                None => self.err(Diagnostic::error(codes::TYPE, format!("`{name}` takes a number"), span, "here")),
            },
            _ => self.err(Diagnostic::error(codes::UNKNOWN_NAME, format!("`{name}` is not a function"), span, "here")),
        }
    }

    fn scalar_extreme(&mut self, name: &str, a: &[Option<(Value, Span)>], span: Span) -> Value {
        let (Some(x), Some(y)) = (to_f64(&a[0]), to_f64(&a[1])) else {
            return self.err(Diagnostic::error(codes::TYPE, format!("`{name}` of numbers takes two known numbers"), span, "here"));
        };
        let r = if name == "max" { x.max(y) } else { x.min(y) };
        match (&a[0], &a[1]) {
            (Some((Value::Int(_), _)), Some((Value::Int(_), _))) => Value::int(r as i64),
            _ => Value::Float(r),
        }
    }

    pub(super) fn softmax(&mut self, x: ValueId, axis: usize, span: Span) -> Value {
        let Value::Tensor(x) = self.cast(x, DType::F32, span) else { return Value::Poison };
        let Value::Tensor(m) = self.reduce(ReduceOp::Max, x, vec![axis], true, span) else { return Value::Poison };
        let Value::Tensor(d) = self.add(Op::Binary(tessera_ir::BinaryOp::Sub), vec![x, m], None, span) else { return Value::Poison };
        let Value::Tensor(e) = self.unary(UnaryOp::Exp, d, span) else { return Value::Poison };
        let Value::Tensor(s) = self.reduce(ReduceOp::Sum, e, vec![axis], true, span) else { return Value::Poison };
        self.add(Op::Binary(tessera_ir::BinaryOp::Div), vec![e, s], None, span)
    }

    fn concat(&mut self, args: Vec<ArgVal>, span: Span) -> Value {
        let mut xs = Vec::new();
        let mut axis = (Value::int(0), span);
        for a in args {
            match (a.name.as_ref().map(|n| n.name.as_str()), a.value) {
                (Some("axis"), v) => axis = (v, a.span),
                (Some(other), _) => {
                    return self.err(
                        Diagnostic::error(
                            codes::UNKNOWN_ARG,
                            format!("`concat` has no parameter `{other}`"),
                            a.span,
                            "unknown argument name",
                        )
                        .with_help("the signature is `concat(x, y, ..., axis)`"),
                    )
                }
                (None, Value::Tuple(items)) => xs.extend(items.into_iter().map(|v| (v, a.span))),
                (None, v) => xs.push((v, a.span)),
            }
        }
        let mut ids = Vec::new();
        for (v, s) in &xs {
            match v {
                Value::Tensor(t) => ids.push(*t),
                Value::Poison => return Value::Poison,
                other => {
                    return self.err(Diagnostic::error(
                        codes::TYPE,
                        format!("`concat` joins tensors, got {}", other.kind()),
                        *s,
                        "this value",
                    ))
                }
            }
        }
        let Some(&first) = ids.first() else {
            return self.err(Diagnostic::error(codes::BAD_ARGS, "`concat` needs at least one tensor", span, "in this call"));
        };
        let rank = self.ty(first).rank();
        let Some(ax) = self.axis(&axis.0, rank, axis.1) else { return Value::Poison };
        let t0 = self.ty(first).clone();
        for (&t, (_, s)) in ids.iter().zip(&xs) {
            let ti = self.ty(t).clone();
            let fits = ti.rank() == rank
                && ti.dtype == t0.dtype
                && ti.shape.iter().zip(&t0.shape).enumerate().all(|(i, (p, q))| i == ax || p == q);
            if !fits {
                let code = if ti.dtype != t0.dtype { codes::DTYPE } else { codes::SHAPE };
                return self.err(
                    Diagnostic::error(code, format!("cannot concatenate {ti} with {t0} along axis {ax}"), *s, format!("this is {ti}"))
                        .with_label(xs[0].1, format!("this is {t0}"))
                        .with_help("all axes but the joined one must agree"),
                );
            }
        }
        if ids.len() == 1 {
            return Value::Tensor(first);
        }
        self.add(Op::Concat { axis: ax }, ids, None, span)
    }

    fn split(&mut self, a: &[Option<(Value, Span)>], span: Span) -> Value {
        let Some(x) = self.tensor_arg("split", "x", &a[0], span) else { return Value::Poison };
        let t = self.ty(x).clone();
        let Some(ax) = self.axis_arg(&a[2], -1, t.rank(), span) else { return Value::Poison };
        let size = t.shape[ax].clone();
        let sizes: Vec<Dim> = match &a[1] {
            Some((Value::Int(n), s)) => {
                let Some(k) = n.as_known().filter(|k| *k > 0) else {
                    return self.err(Diagnostic::error(
                        codes::VALUE,
                        format!("`split` needs a positive number of parts, got {n}"),
                        *s,
                        "here",
                    ));
                };
                match size.div_exact(&Dim::known(k)) {
                    Some(part) => vec![part; k as usize],
                    None => {
                        return self.err(Diagnostic::error(
                            codes::SHAPE,
                            format!("cannot split size {size} into {k} equal parts"),
                            *s,
                            "here",
                        ))
                    }
                }
            }
            Some((Value::Tuple(items), s)) => {
                let mut out = Vec::new();
                for i in items {
                    match i {
                        Value::Int(d) => out.push(d.clone()),
                        v => {
                            return self.err(Diagnostic::error(
                                codes::TYPE,
                                format!("split sizes must be ints, got {}", v.kind()),
                                *s,
                                "here",
                            ))
                        }
                    }
                }
                let total = out.iter().fold(Dim::known(0), |acc, d| acc.add(d));
                if total != size {
                    return self.err(Diagnostic::error(
                        codes::SHAPE,
                        format!("split sizes add up to {total}, but the axis has size {size}"),
                        *s,
                        "here",
                    ));
                }
                out
            }
            Some((Value::Poison, _)) => return Value::Poison,
            _ => {
                return self.err(Diagnostic::error(
                    codes::BAD_ARGS,
                    "`split` needs a number of parts or a tuple of sizes",
                    span,
                    "in this call",
                ))
            }
        };
        let mut start = Dim::known(0);
        let mut parts = Vec::new();
        for s in sizes {
            let end = start.add(&s);
            parts.push(self.add(Op::Slice { axis: ax, start: start.clone(), end: end.clone(), step: 1 }, vec![x], None, span));
            start = end;
        }
        Value::Tuple(parts)
    }
}

impl Elab<'_> {
    /// A complex tensor argument (`f32[.., 2]`), or a diagnostic saying how to make one.
    fn complex_arg(&mut self, fname: &str, a: &Option<(Value, Span)>, span: Span) -> Option<ValueId> {
        let z = self.tensor_arg(fname, "z", a, span)?;
        let t = self.ty(z).clone();
        if t.dtype == DType::F32 && t.rank() >= 2 && t.shape.last() == Some(&Dim::known(2)) {
            return Some(z);
        }
        let at = a.as_ref().map_or(span, |x| x.1);
        self.err(
            Diagnostic::error(codes::SHAPE, format!("`{fname}` takes a complex tensor f32[.., 2], got {t}"), at, format!("this is {t}"))
                .with_help("complex tensors are stored as (real, imaginary) pairs in a last axis of size 2: make one with `complex(x)`"),
        );
        None
    }

    /// Fourier transforms and the complex helpers. Axes of a complex tensor count its complex
    /// axes only (the pair axis is not one of them).
    fn fourier(&mut self, name: &str, a: &[Option<(Value, Span)>], span: Span) -> Value {
        match name {
            "complex" => {
                let Some(re) = self.tensor_arg(name, "re", &a[0], span) else { return Value::Poison };
                let Value::Tensor(re) = self.cast(re, DType::F32, span) else { return Value::Poison };
                let mut col = self.ty(re).shape.clone();
                col.push(Dim::known(1));
                let im = match &a[1] {
                    None | Some((Value::None, _)) => self.add(Op::Const(0.0), vec![], Some(TensorType::new(DType::F32, col.clone())), span),
                    Some(_) => {
                        let Some(im) = self.tensor_arg(name, "im", &a[1], span) else { return Value::Poison };
                        let Value::Tensor(im) = self.cast(im, DType::F32, span) else { return Value::Poison };
                        if self.ty(im).shape != self.ty(re).shape {
                            let (sr, si) = (self.ty(re).shape.clone(), self.ty(im).shape.clone());
                            let at = a[1].as_ref().map_or(span, |x| x.1);
                            return self.err(
                                Diagnostic::error(
                                    codes::SHAPE,
                                    format!("`complex` needs parts of one shape, got {} and {}", ShapeDisplay(&sr), ShapeDisplay(&si)),
                                    at,
                                    format!("this has shape {}", ShapeDisplay(&si)),
                                )
                                .with_label(a[0].as_ref().map_or(span, |x| x.1), format!("this has shape {}", ShapeDisplay(&sr))),
                            );
                        }
                        self.reshape(im, col.clone(), span)
                    }
                };
                let Value::Tensor(im) = im else { return im };
                let Value::Tensor(re) = self.reshape(re, col.clone(), span) else { return Value::Poison };
                self.add(Op::Concat { axis: col.len() - 1 }, vec![re, im], None, span)
            }
            "real" | "imag" => {
                let Some(z) = self.complex_arg(name, &a[0], span) else { return Value::Poison };
                let mut shape = self.ty(z).shape.clone();
                let last = shape.len() - 1;
                let k = i64::from(name == "imag");
                let part = Op::Slice { axis: last, start: Dim::known(k), end: Dim::known(k + 1), step: 1 };
                let Value::Tensor(p) = self.add(part, vec![z], None, span) else { return Value::Poison };
                shape.pop();
                self.reshape(p, shape, span)
            }
            "fft" | "ifft" => {
                let Some(z) = self.complex_arg(name, &a[0], span) else { return Value::Poison };
                let rank = self.ty(z).rank() - 1;
                let axes = match &a[1] {
                    None | Some((Value::None, _)) => vec![rank - 1],
                    Some((Value::Tuple(items), s)) => {
                        let mut out = Vec::new();
                        for i in items {
                            match self.axis(i, rank, *s) {
                                Some(ax) => out.push(ax),
                                None => return Value::Poison,
                            }
                        }
                        out.sort_unstable();
                        if out.is_empty() || out.windows(2).any(|w| w[0] == w[1]) {
                            return self.err(Diagnostic::error(
                                codes::VALUE,
                                format!("`{name}` needs distinct axes, at least one"),
                                *s,
                                "these axes",
                            ));
                        }
                        out
                    }
                    Some((v, s)) => match self.axis(v, rank, *s) {
                        Some(ax) => vec![ax],
                        None => return Value::Poison,
                    },
                };
                self.add(Op::Fft { axes, inverse: name == "ifft" }, vec![z], None, span)
            }
            "rfft" => {
                let Some(x) = self.tensor_arg(name, "x", &a[0], span) else { return Value::Poison };
                let Value::Tensor(x) = self.cast(x, DType::F32, span) else { return Value::Poison };
                let Some(ax) = self.axis_arg(&a[2], -1, self.ty(x).rank(), span) else { return Value::Poison };
                let x = match &a[1] {
                    None | Some((Value::None, _)) => x,
                    Some(n) => match self.length_arg(name, n) {
                        Some(n) => match self.fit_length(x, ax, &n, n_span(&a[1], span)) {
                            Some(x) => x,
                            None => return Value::Poison,
                        },
                        None => return Value::Poison,
                    },
                };
                self.add(Op::Rfft { axis: ax }, vec![x], None, span)
            }
            _ => {
                // irfft(z, n = 2 (bins - 1), axis = -1)
                let Some(z) = self.complex_arg(name, &a[0], span) else { return Value::Poison };
                let rank = self.ty(z).rank() - 1;
                let Some(ax) = self.axis_arg(&a[2], -1, rank, span) else { return Value::Poison };
                let bins = self.ty(z).shape[ax].clone();
                let n = match &a[1] {
                    None | Some((Value::None, _)) => bins.sub(&Dim::known(1)).scale(2),
                    Some(n) => match self.length_arg(name, n) {
                        Some(n) => n,
                        None => return Value::Poison,
                    },
                };
                match tessera_ir::rfft_bins(&n) {
                    Ok(want) if want == bins => self.add(Op::Irfft { axis: ax, n }, vec![z], None, span),
                    Ok(want) => self.err(
                        Diagnostic::error(
                            codes::SHAPE,
                            format!("`irfft` to length {n} needs {want} frequencies along axis {ax}, got {bins}"),
                            n_span(&a[1], span),
                            "this length",
                        )
                        .with_help("a real signal of length n has n/2 + 1 non-negative frequencies (`rfft(x, n)` makes them)"),
                    ),
                    Err(msg) => self.err(Diagnostic::error(codes::SHAPE, msg.to_string(), n_span(&a[1], span), "this length")),
                }
            }
        }
    }

    /// A signal length: a positive int, or a symbolic size.
    fn length_arg(&mut self, fname: &str, (v, s): &(Value, Span)) -> Option<Dim> {
        match v {
            Value::Int(d) if d.as_known().is_none_or(|k| k >= 1) => Some(d.clone()),
            Value::Poison => None,
            v => {
                self.err(Diagnostic::error(
                    codes::VALUE,
                    format!("`{fname}` needs a positive length, got {}", v.kind()),
                    *s,
                    "this length",
                ));
                None
            }
        }
    }

    /// `x` cut or zero-padded at the end of `axis` to length `n` (as NumPy's `rfft(x, n)`).
    fn fit_length(&mut self, x: ValueId, axis: usize, n: &Dim, span: Span) -> Option<ValueId> {
        let t = self.ty(x).clone();
        let pad = n.sub(&t.shape[axis]);
        let v = match pad.as_known() {
            Some(0) => return Some(x),
            Some(p) if p < 0 => self.add(Op::Slice { axis, start: Dim::known(0), end: n.clone(), step: 1 }, vec![x], None, span),
            _ => {
                let mut zshape = t.shape.clone();
                zshape[axis] = pad;
                let Value::Tensor(z) = self.add(Op::Const(0.0), vec![], Some(TensorType::new(DType::F32, zshape)), span) else {
                    return None;
                };
                self.add(Op::Concat { axis }, vec![x, z], None, span)
            }
        };
        match v {
            Value::Tensor(v) => Some(v),
            _ => None,
        }
    }
}

fn n_span(a: &Option<(Value, Span)>, span: Span) -> Span {
    a.as_ref().map_or(span, |x| x.1)
}

fn to_f64(a: &Option<(Value, Span)>) -> Option<f64> {
    match a {
        Some((Value::Int(d), _)) => d.as_known().map(|n| n as f64),
        Some((Value::Float(f), _)) => Some(*f),
        Some((Value::Bool(b), _)) => Some(f64::from(u8::from(*b))),
        _ => None,
    }
}

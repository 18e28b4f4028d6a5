//! The generator of the random-graph tester: well-typed IR graphs built through `Graph::add`
//! (a candidate the op's typing rule rejects is dropped), with dims and input values. See
//! `tests/fuzz/graphs.rs` for what is checked; `tests/fuzz_graphs.rs` and
//! `cargo run --release --example fuzz_graphs -- --minutes N` run it.

use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use tessera::ir::{broadcast_shapes, infer_type, BinaryOp as B, DType, Dim, Graph, Init, NormKind, Op, ReduceOp, Span};
use tessera::ir::{TensorType, UnaryOp as U, ValueId, WindowOp, UNARY_OPS};
use tessera::runtime::{Dims, Tensor};

/// No tensor of a generated graph holds more elements at the largest dims.
const MAX_ELEMS: usize = 2048;

/// How an input is filled once the dims are bound.
#[derive(Clone, Debug)]
enum Fill {
    /// Uniform in ±3, with this share of special values (NaN, ±Inf, tiny, ±0, huge in a
    /// graph that has them).
    Float(f64),
    /// Uniform in the closed range.
    Int(i64, i64),
    /// A valid index into an axis of this size (rarely one out of range).
    Index(Dim),
    Bool,
}

/// A graph with everything needed to run it.
#[derive(Clone)]
pub struct Case {
    pub graph: Graph,
    pub dims: Dims,
    pub inputs: HashMap<String, Tensor>,
    pub params: HashMap<String, Tensor>,
    /// Whether inputs and constants may hold huge finite values (|x| ≥ 1e29).
    pub huge: bool,
}

struct Gen {
    rng: StdRng,
    g: Graph,
    pool: Vec<ValueId>,
    fills: Vec<(String, bool, Fill)>,
    base: Vec<Dim>,
    special: f64,
    huge: bool,
}

fn cat(a: &[Dim], b: &[Dim]) -> Vec<Dim> {
    [a, b].concat()
}

fn largest() -> Dims {
    [("batch".to_string(), 3), ("seq".to_string(), 8)].into()
}

fn elems(t: &TensorType, dims: &Dims) -> Option<usize> {
    t.shape.iter().try_fold(1usize, |acc, d| acc.checked_mul(usize::try_from(d.eval(dims)?).ok()?))
}

impl Gen {
    fn ty(&self, v: ValueId) -> TensorType {
        self.g.ty(v).clone()
    }

    /// Adds a node if its typing rule accepts it and it stays small.
    fn add(&mut self, op: Op, ins: Vec<ValueId>, declared: Option<TensorType>) -> Option<ValueId> {
        let tys: Vec<&TensorType> = ins.iter().map(|&v| self.g.ty(v)).collect();
        let t = infer_type(&op, &tys, declared.as_ref()).ok()?;
        if elems(&t, &largest()).is_none_or(|n| n > MAX_ELEMS) {
            return None;
        }
        let v = self.g.add(op, ins, declared, Span::UNKNOWN).ok()?;
        self.pool.push(v);
        Some(v)
    }

    /// A value of the pool for which `ok` holds, often one of the latest (deep chains).
    fn pick(&mut self, ok: impl Fn(&TensorType) -> bool) -> Option<ValueId> {
        let c: Vec<ValueId> = self.pool.iter().copied().filter(|&v| ok(self.g.ty(v))).collect();
        let n = c.len();
        match n {
            0 => None,
            _ if self.rng.random_bool(0.5) => Some(c[n - 1 - self.rng.random_range(0..n.min(3))]),
            _ => c.choose(&mut self.rng).copied(),
        }
    }

    fn pick_f32(&mut self, min_rank: usize) -> Option<ValueId> {
        self.pick(|t| t.dtype == DType::F32 && t.rank() >= min_rank)
    }

    /// A new input (or, for f32, sometimes a parameter) of this type.
    fn fresh(&mut self, dtype: DType, shape: Vec<Dim>, fill: Option<Fill>) -> Option<ValueId> {
        let param = dtype == DType::F32 && self.rng.random_bool(0.15);
        let name = format!("{}{}", if param { "p" } else { "x" }, self.fills.len());
        let op = if param { Op::Param(name.clone(), Init::Fill(0.0)) } else { Op::Input(name.clone()) };
        let v = self.add(op, vec![], Some(TensorType::new(dtype, shape)))?;
        let fill = fill.unwrap_or(match dtype {
            DType::F32 => Fill::Float(self.special),
            DType::I64 => Fill::Int(-5, 9),
            DType::Bool => Fill::Bool,
        });
        self.fills.push((name, param, fill));
        Some(v)
    }

    fn constant(&mut self, dtype: DType, shape: Vec<Dim>) -> Option<ValueId> {
        let v = match dtype {
            DType::F32 if self.huge && self.rng.random_bool(0.3) => *[1e30, -1e30, 3.4e38].choose(&mut self.rng).unwrap_or(&0.0),
            DType::F32 => {
                *[0.0, 1.0, -1.0, 0.5, 2.0, 3.0, 1e-6, f64::NAN, f64::INFINITY, f64::NEG_INFINITY].choose(&mut self.rng).unwrap_or(&0.0)
            }
            DType::I64 => *[0.0, 1.0, -1.0, 2.0, 3.0, 7.0].choose(&mut self.rng).unwrap_or(&0.0),
            DType::Bool => f64::from(self.rng.random_bool(0.5)),
        };
        self.add(Op::Const(v), vec![], Some(TensorType::new(dtype, shape)))
    }

    fn dim(&mut self) -> Dim {
        match self.rng.random_range(0..40) {
            0 => Dim::known(0),
            1..=4 => Dim::sym("batch"),
            5..=11 => Dim::sym("seq"),
            12..=21 => Dim::known(1),
            _ => Dim::known(*[2, 3, 4, 5, 7, 8, 13].choose(&mut self.rng).unwrap_or(&3)),
        }
    }

    /// A shape that broadcasts with `s`: a suffix of it with some axes set to 1.
    fn shape_like(&mut self, s: &[Dim]) -> Vec<Dim> {
        let keep = if self.rng.random_bool(0.6) { s.len() } else { self.rng.random_range(0..=s.len()) };
        s[s.len() - keep..].iter().map(|d| if self.rng.random_bool(0.2) { Dim::known(1) } else { d.clone() }).collect()
    }

    /// A value of dtype `t.dtype` that broadcasts with `t`: from the pool, a scalar constant
    /// or a fresh input.
    fn operand_like(&mut self, t: &TensorType) -> Option<ValueId> {
        if self.rng.random_bool(0.5) {
            let v = self.pick(|u| u.dtype == t.dtype && broadcast_shapes(&u.shape, &t.shape).is_ok());
            if v.is_some() {
                return v;
            }
        }
        if self.rng.random_bool(0.2) {
            return self.constant(t.dtype, vec![]);
        }
        let s = self.shape_like(&t.shape);
        self.fresh(t.dtype, s, None)
    }

    fn axis(&mut self, rank: usize) -> usize {
        self.rng.random_range(0..rank.max(1))
    }

    fn unary(&mut self) -> Option<ValueId> {
        let x = self.pick(|_| true)?;
        let u = match self.g.ty(x).dtype {
            DType::Bool => U::Not,
            DType::I64 => *[U::Neg, U::Abs].choose(&mut self.rng)?,
            DType::F32 => UNARY_OPS[..UNARY_OPS.len() - 1].choose(&mut self.rng)?.0,
        };
        self.add(Op::Unary(u), vec![x], None)
    }

    fn binary(&mut self) -> Option<ValueId> {
        use B::*;
        let a = self.pick(|_| true)?;
        let t = self.ty(a);
        let b = self.operand_like(&t)?;
        let ops: &[B] = match t.dtype {
            DType::Bool => &[And, Or, Eq, Ne],
            DType::I64 => &[Add, Sub, Mul, Div, Pow, Rem, Max, Min, Eq, Ne, Lt, Le, Gt, Ge],
            DType::F32 => &[Add, Sub, Mul, Div, Pow, Max, Min, Rem, Eq, Ne, Lt, Le, Gt, Ge],
        };
        let op = *ops.choose(&mut self.rng)?;
        let ins = if self.rng.random_bool(0.5) { vec![a, b] } else { vec![b, a] };
        self.add(Op::Binary(op), ins, None)
    }

    fn where_(&mut self) -> Option<ValueId> {
        let a = self.pick(|_| true)?;
        let t = self.ty(a);
        let c = match self.pick(|u| u.dtype == DType::Bool && broadcast_shapes(&u.shape, &t.shape).is_ok()) {
            Some(c) if self.rng.random_bool(0.7) => c,
            _ => {
                let s = self.shape_like(&t.shape);
                self.fresh(DType::Bool, s, None)?
            }
        };
        let b = self.operand_like(&t)?;
        self.add(Op::Where, vec![c, a, b], None)
    }

    fn cast(&mut self) -> Option<ValueId> {
        let x = self.pick(|_| true)?;
        let to = *[DType::F32, DType::I64, DType::Bool].choose(&mut self.rng)?;
        let shape = self.g.ty(x).shape.clone();
        self.add(Op::Cast, vec![x], Some(TensorType::new(to, shape)))
    }

    /// A right operand for a product with `a`: `[batch.., k, n]`.
    fn rhs(&mut self, a: &TensorType) -> Option<ValueId> {
        let r = a.rank();
        let k = a.shape[r - 1].clone();
        if self.rng.random_bool(0.4) {
            let v = self.pick(|u| u.dtype == DType::F32 && u.rank() >= 2 && u.shape[u.rank() - 2] == k);
            if v.is_some() {
                return v;
            }
        }
        let mut s = self.shape_like(&a.shape[..r - 2]);
        s.extend([k, self.dim()]);
        self.fresh(DType::F32, s, None)
    }

    /// A `matmul`, or (one time in four) a `gemm` with a bias, an activation, a residual of the
    /// product's type (as the optimizer makes them: the kernels write the product's shape,
    /// although the typing rule accepts a residual that broadcasts it).
    fn product(&mut self) -> Option<ValueId> {
        let a = self.pick_f32(2)?;
        let t = self.ty(a);
        let b = self.rhs(&t)?;
        if self.rng.random_bool(0.75) {
            return self.add(Op::MatMul, vec![a, b], None);
        }
        let (bias, residual) = (self.rng.random_bool(0.6), self.rng.random_bool(0.4));
        let act = if self.rng.random_bool(0.6) { Some(UNARY_OPS[..UNARY_OPS.len() - 1].choose(&mut self.rng)?.0) } else { None };
        let out = infer_type(&Op::MatMul, &[&t, self.g.ty(b)], None).ok()?;
        let mut ins = vec![a, b];
        if bias {
            ins.push(self.fresh(DType::F32, out.shape.last().cloned().into_iter().collect(), None)?);
        }
        if residual {
            ins.push(self.fresh(DType::F32, out.shape, None)?);
        }
        self.add(Op::Gemm { bias, act, residual }, ins, None)
    }

    fn transpose(&mut self) -> Option<ValueId> {
        let x = self.pick(|_| true)?;
        let r = self.g.ty(x).rank();
        let mut perm: Vec<usize> = (0..r).collect();
        if r >= 2 && self.rng.random_bool(0.5) {
            perm.swap(r - 2, r - 1);
        } else {
            perm.shuffle(&mut self.rng);
        }
        self.add(Op::Transpose(perm), vec![x], None)
    }

    /// Same elements, a new shape: the symbolic sizes kept, the constant part refactored.
    fn reshape(&mut self) -> Option<ValueId> {
        let x = self.pick(|_| true)?;
        let t = self.ty(x);
        let mut known: i64 = t.shape.iter().filter_map(Dim::as_known).product();
        let mut shape: Vec<Dim> = t.shape.iter().filter(|d| d.as_known().is_none()).cloned().collect();
        while known > 1 {
            let divisors: Vec<i64> = (2..=known).filter(|d| known % d == 0).collect();
            let d = *divisors.choose(&mut self.rng)?;
            shape.insert(self.rng.random_range(0..=shape.len()), Dim::known(d));
            known /= d;
        }
        if known == 0 || self.rng.random_bool(0.3) {
            shape.insert(self.rng.random_range(0..=shape.len()), Dim::known(known.min(1)));
        }
        self.add(Op::Reshape, vec![x], Some(TensorType::new(t.dtype, shape)))
    }

    fn broadcast(&mut self) -> Option<ValueId> {
        let x = self.pick(|_| true)?;
        let t = self.ty(x);
        let mut shape: Vec<Dim> =
            t.shape.iter().map(|d| if *d == Dim::known(1) && self.rng.random_bool(0.6) { self.dim() } else { d.clone() }).collect();
        if self.rng.random_bool(0.4) {
            shape.insert(0, self.dim());
        }
        self.add(Op::Broadcast, vec![x], Some(TensorType::new(t.dtype, shape)))
    }

    fn reduce(&mut self) -> Option<ValueId> {
        let x = self.pick(|t| t.dtype != DType::Bool)?;
        let t = self.ty(x);
        let axes: Vec<usize> = (0..t.rank()).filter(|_| self.rng.random_bool(0.4)).collect();
        let ops: &[ReduceOp] = if t.dtype == DType::I64 {
            &[ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min]
        } else {
            &[ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max, ReduceOp::Min]
        };
        let (op, keepdim) = (*ops.choose(&mut self.rng)?, self.rng.random_bool(0.5));
        self.add(Op::Reduce { op, axes, keepdim }, vec![x], None)
    }

    fn softmax(&mut self) -> Option<ValueId> {
        let x = self.pick_f32(1)?;
        let axis = self.axis(self.g.ty(x).rank());
        if self.rng.random_bool(0.3) {
            return self.add(Op::Softmax { axis }, vec![x], None);
        }
        self.softmax_written(x, axis)
    }

    /// `exp(x - max) / sum`, as the language elaborates `softmax`.
    fn softmax_written(&mut self, x: ValueId, axis: usize) -> Option<ValueId> {
        let m = self.add(Op::Reduce { op: ReduceOp::Max, axes: vec![axis], keepdim: true }, vec![x], None)?;
        let d = self.add(Op::Binary(B::Sub), vec![x, m], None)?;
        let e = self.add(Op::Unary(U::Exp), vec![d], None)?;
        let s = self.add(Op::Reduce { op: ReduceOp::Sum, axes: vec![axis], keepdim: true }, vec![e], None)?;
        self.add(Op::Binary(B::Div), vec![e, s], None)
    }

    /// `softmax(where(mask, q @ kᵀ * scale, -inf)) @ v`, which the optimizer fuses.
    fn attention(&mut self) -> Option<ValueId> {
        let lead: Vec<Dim> = (0..self.rng.random_range(0..=2)).map(|_| self.dim()).collect();
        let (s, t) = (self.dim(), self.dim());
        let (e, ev) = (Dim::known(self.rng.random_range(1..=6)), Dim::known(self.rng.random_range(1..=6)));
        let q = self.fresh(DType::F32, cat(&lead, &[s.clone(), e.clone()]), None)?;
        let kv_lead = self.shape_like(&lead);
        let k = self.fresh(DType::F32, cat(&kv_lead, &[t.clone(), e]), None)?;
        let v = self.fresh(DType::F32, cat(&kv_lead, &[t.clone(), ev]), None)?;
        let r = self.g.ty(k).rank();
        let kt = self.add(Op::Transpose((0..r - 2).chain([r - 1, r - 2]).collect()), vec![k], None)?;
        let mut x = self.add(Op::MatMul, vec![q, kt], None)?;
        if self.rng.random_bool(0.7) {
            let c = self.constant(DType::F32, vec![])?;
            x = self.add(Op::Binary(B::Mul), vec![x, c], None)?;
        }
        if self.rng.random_bool(0.7) {
            let i = self.add(Op::Iota { axis: 0 }, vec![], Some(TensorType::new(DType::I64, vec![s.clone()])))?;
            let i = self.add(Op::Reshape, vec![i], Some(TensorType::new(DType::I64, vec![s, Dim::known(1)])))?;
            let j = self.add(Op::Iota { axis: 0 }, vec![], Some(TensorType::new(DType::I64, vec![t.clone()])))?;
            let j = self.add(Op::Reshape, vec![j], Some(TensorType::new(DType::I64, vec![Dim::known(1), t])))?;
            let cmp = *[B::Le, B::Lt, B::Ge].choose(&mut self.rng)?;
            let m = self.add(Op::Binary(cmp), vec![j, i], None)?;
            let low = *[f64::NEG_INFINITY, -1e30].choose(&mut self.rng)?;
            let fill = self.add(Op::Const(low), vec![], Some(TensorType::scalar(DType::F32)))?;
            x = self.add(Op::Where, vec![m, x, fill], None)?;
        }
        let rank = self.g.ty(x).rank();
        let p = self.softmax_written(x, rank - 1)?;
        self.add(Op::MatMul, vec![p, v], None)
    }

    /// RMS or layer norm, written out or as the fused op.
    fn norm(&mut self) -> Option<ValueId> {
        let x = self.pick_f32(1)?;
        let d = self.g.ty(x).shape.last().cloned()?;
        let eps = *[1e-5, 1e-6, 0.0].choose(&mut self.rng)?;
        let layer = self.rng.random_bool(0.5);
        let w = self.fresh(DType::F32, vec![d.clone()], None)?;
        if self.rng.random_bool(0.3) {
            let kind = if layer { NormKind::Layer } else { NormKind::Rms };
            return self.add(Op::Norm { kind, eps }, vec![x, w], None);
        }
        let last = self.g.ty(x).rank() - 1;
        let mean = |g: &mut Gen, v| g.add(Op::Reduce { op: ReduceOp::Mean, axes: vec![last], keepdim: true }, vec![v], None);
        let c = if layer {
            let m = mean(self, x)?;
            self.add(Op::Binary(B::Sub), vec![x, m], None)?
        } else {
            x
        };
        let sq = self.add(Op::Binary(B::Mul), vec![c, c], None)?;
        let var = mean(self, sq)?;
        let e = self.add(Op::Const(eps), vec![], Some(TensorType::scalar(DType::F32)))?;
        let ve = self.add(Op::Binary(B::Add), vec![var, e], None)?;
        let r = self.add(Op::Unary(U::Rsqrt), vec![ve], None)?;
        let n = self.add(Op::Binary(B::Mul), vec![c, r], None)?;
        self.add(Op::Binary(B::Mul), vec![n, w], None)
    }

    /// `act(x @ w1 + b1) @ w2 + b2`, which the optimizer fuses into an `ffn`.
    fn mlp(&mut self) -> Option<ValueId> {
        let x = self.pick_f32(2)?;
        let d = self.g.ty(x).shape.last().cloned()?;
        let (h, bias) = (Dim::known(self.rng.random_range(1..=9)), self.rng.random_bool(0.5));
        let w1 = self.fresh(DType::F32, vec![d.clone(), h.clone()], None)?;
        let mut y = self.add(Op::MatMul, vec![x, w1], None)?;
        if bias {
            let b1 = self.fresh(DType::F32, vec![h.clone()], None)?;
            y = self.add(Op::Binary(B::Add), vec![y, b1], None)?;
        }
        let act = *[U::GeluErf, U::GeluTanh, U::Relu, U::Silu, U::Tanh].choose(&mut self.rng)?;
        let y = self.add(Op::Unary(act), vec![y], None)?;
        let w2 = self.fresh(DType::F32, vec![h, d.clone()], None)?;
        let y = self.add(Op::MatMul, vec![y, w2], None)?;
        if !bias {
            return Some(y);
        }
        let b2 = self.fresh(DType::F32, vec![d], None)?;
        self.add(Op::Binary(B::Add), vec![y, b2], None)
    }

    fn gather(&mut self) -> Option<ValueId> {
        let table = self.pick(|t| t.rank() >= 1)?;
        let tt = self.ty(table);
        let axis = self.axis(tt.rank());
        let idx = match self.pick(|t| t.dtype == DType::I64) {
            Some(i) if self.rng.random_bool(0.1) => i,
            _ => {
                let shape = (0..self.rng.random_range(0..=2)).map(|_| self.dim()).collect();
                self.fresh(DType::I64, shape, Some(Fill::Index(tt.shape[axis].clone())))?
            }
        };
        self.add(Op::Gather { axis }, vec![table, idx], None)
    }

    fn slice(&mut self) -> Option<ValueId> {
        let x = self.pick(|t| t.rank() >= 1)?;
        let t = self.ty(x);
        let axis = self.axis(t.rank());
        let d = t.shape[axis].clone();
        let (start, end, step) = match d.as_known() {
            Some(n) => {
                let s = self.rng.random_range(0..=n);
                (Dim::known(s), Dim::known(self.rng.random_range(s..=n)), self.rng.random_range(1..=3))
            }
            None => {
                let (s, e) = [(0, 0), (1, 0), (0, -1), (1, -1)].choose(&mut self.rng).copied()?;
                (Dim::known(s), d.add(&Dim::known(e)), 1)
            }
        };
        self.add(Op::Slice { axis, start, end, step }, vec![x], None)
    }

    fn concat(&mut self) -> Option<ValueId> {
        let x = self.pick(|t| t.rank() >= 1)?;
        let t = self.ty(x);
        let axis = self.axis(t.rank());
        let mut ins = vec![x];
        for _ in 0..self.rng.random_range(1..=2) {
            let mut s = t.shape.clone();
            s[axis] = self.dim();
            let v = if self.rng.random_bool(0.3) { x } else { self.fresh(t.dtype, s, None)? };
            ins.push(v);
        }
        ins.shuffle(&mut self.rng);
        self.add(Op::Concat { axis }, ins, None)
    }

    fn cumsum(&mut self) -> Option<ValueId> {
        let x = self.pick(|t| t.dtype != DType::Bool && t.rank() >= 1)?;
        let axis = self.axis(self.g.ty(x).rank());
        self.add(Op::Cumsum { axis }, vec![x], None)
    }

    fn window(&mut self) -> Option<ValueId> {
        let op = *[WindowOp::Conv, WindowOp::Max, WindowOp::Mean].choose(&mut self.rng)?;
        let x = self.pick_f32(if op == WindowOp::Conv { 2 } else { 1 })?;
        let t = self.ty(x);
        let size = self.rng.random_range(1..=4);
        let pad_left = self.rng.random_range(0..size);
        let (axis, mut ins) = (self.axis(t.rank()), vec![x]);
        if op == WindowOp::Conv {
            let c = t.shape.last().cloned()?;
            ins.push(self.fresh(DType::F32, vec![Dim::known(size as i64), c], None)?);
            return self.add(Op::Window { op, axis: t.rank() - 2, size, pad_left }, ins, None);
        }
        self.add(Op::Window { op, axis, size, pad_left }, ins, None)
    }

    fn segment(&mut self) -> Option<ValueId> {
        let x = self.pick_f32(1)?;
        let t = self.ty(x);
        let axis = self.axis(t.rank());
        let ids = self.fresh(DType::I64, t.shape[..=axis].to_vec(), Some(Fill::Int(-1, 3)))?;
        let op = *[ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max, ReduceOp::Min].choose(&mut self.rng)?;
        self.add(Op::Segment { op, axis }, vec![x, ids], None)
    }

    /// A complex tensor stored as pairs (`f32[.., 2]`).
    fn pairs(&mut self) -> Option<ValueId> {
        if self.rng.random_bool(0.5) {
            let v = self.pick(|t| t.dtype == DType::F32 && t.rank() >= 2 && t.shape.last() == Some(&Dim::known(2)));
            if v.is_some() {
                return v;
            }
        }
        let x = self.pick(|t| t.dtype == DType::F32 && (1..=3).contains(&t.rank()))?;
        let t = self.ty(x);
        let one = TensorType::new(DType::F32, cat(&t.shape, &[Dim::known(1)]));
        let re = self.add(Op::Reshape, vec![x], Some(one.clone()))?;
        let im = match self.rng.random_bool(0.5) {
            true => re,
            false => self.fresh(DType::F32, one.shape, None)?,
        };
        self.add(Op::Concat { axis: t.rank() }, vec![re, im], None)
    }

    /// `rfft`, `irfft` (to a length with as many bins) or `fft`.
    fn fourier(&mut self) -> Option<ValueId> {
        if self.rng.random_bool(0.3) {
            let x = self.pick_f32(1)?;
            let axis = self.axis(self.g.ty(x).rank());
            return self.add(Op::Rfft { axis }, vec![x], None);
        }
        let p = self.pairs()?;
        let t = self.ty(p);
        let axis = self.axis(t.rank() - 1);
        if self.rng.random_bool(0.5) {
            let bins = t.shape[axis].clone();
            let n = match bins.as_known() {
                Some(b) => Dim::known(2 * b - 1 - i64::from(b > 1 && self.rng.random_bool(0.5))),
                None => bins.sub(&Dim::known(1)).scale(2),
            };
            return self.add(Op::Irfft { axis, n }, vec![p], None);
        }
        let mut axes: Vec<usize> = (0..t.rank() - 1).filter(|&a| a == axis || self.rng.random_bool(0.3)).collect();
        axes.dedup();
        let inverse = self.rng.random_bool(0.5);
        self.add(Op::Fft { axes, inverse }, vec![p], None)
    }

    fn iota(&mut self) -> Option<ValueId> {
        let base = self.base.clone();
        let shape = self.shape_like(&base);
        let axis = self.axis(shape.len());
        self.add(Op::Iota { axis }, vec![], Some(TensorType::new(DType::I64, shape)))
    }

    /// A scan over an f32 value of the pool along a random axis, forward or reverse: its state
    /// the step's shape (elementwise recurrences) or that with an extra axis read by a
    /// reduction (Mamba's form), its body random elementwise math over the state, the slice
    /// and an invariant operand. Its results join the pool through `proj`.
    fn scan(&mut self) -> Option<ValueId> {
        let x = self.pick(|t| t.dtype == DType::F32 && (1..=3).contains(&t.rank()))?;
        let tx = self.ty(x);
        let axis = self.axis(tx.rank());
        let mut step = tx.shape.clone();
        step.remove(axis);
        let inner = self.rng.random_bool(0.5);
        let mut state = step.clone();
        if inner {
            state.push(Dim::known(*[1, 3, 4].choose(&mut self.rng)?));
        }
        let init = self.fresh(DType::F32, state.clone(), None)?;
        let inv_shape = self.shape_like(&state);
        let inv = self.fresh(DType::F32, inv_shape.clone(), None)?;
        let mut b = Graph::new("body");
        let f32 = |s: &[Dim]| TensorType::new(DType::F32, s.to_vec());
        let at = Span::UNKNOWN;
        let h = b.add(Op::Input("h".into()), vec![], Some(f32(&state)), at).ok()?;
        let xt = b.add(Op::Input("x_t".into()), vec![], Some(f32(&step)), at).ok()?;
        let p = b.add(Op::Input("p".into()), vec![], Some(f32(&inv_shape)), at).ok()?;
        let xs = if inner { b.add(Op::Reshape, vec![xt], Some(f32(&cat(&step, &[Dim::known(1)]))), at).ok()? } else { xt };
        let gate = *[U::Sigmoid, U::Tanh, U::Exp].choose(&mut self.rng)?;
        let mut a = b.add(Op::Unary(gate), vec![p], None, at).ok()?;
        if gate == U::Exp {
            let n = b.add(Op::Unary(U::Abs), vec![p], None, at).ok()?;
            let n = b.add(Op::Unary(U::Neg), vec![n], None, at).ok()?;
            a = b.add(Op::Unary(U::Exp), vec![n], None, at).ok()?;
        }
        let decayed = b.add(Op::Binary(B::Mul), vec![a, h], None, at).ok()?;
        let input = match self.rng.random_range(0..3) {
            0 => xs,
            1 => b.add(Op::Unary(*[U::Tanh, U::Silu, U::Relu, U::Abs].choose(&mut self.rng)?), vec![xs], None, at).ok()?,
            _ => b.add(Op::Binary(B::Mul), vec![xs, p], None, at).ok()?,
        };
        let op = *[B::Add, B::Add, B::Sub, B::Max, B::Min].choose(&mut self.rng)?;
        let mut hn = b.add(Op::Binary(op), vec![decayed, input], None, at).ok()?;
        if *b.ty(hn) != f32(&state) {
            hn = b.add(Op::Broadcast, vec![hn], Some(f32(&state)), at).ok()?;
        }
        let y = match (inner, self.rng.random_range(0..3)) {
            (true, 0) => {
                let m = b.add(Op::Binary(B::Mul), vec![hn, p], None, at).ok()?;
                let r = *[ReduceOp::Sum, ReduceOp::Max, ReduceOp::Mean].choose(&mut self.rng)?;
                b.add(Op::Reduce { op: r, axes: vec![state.len() - 1], keepdim: self.rng.random_bool(0.3) }, vec![m], None, at).ok()?
            }
            (_, 1) => b.add(Op::Binary(*[B::Mul, B::Add, B::Div].choose(&mut self.rng)?), vec![hn, xs], None, at).ok()?,
            _ => hn,
        };
        if *b.ty(y) != f32(&state) && !inner {
            return None;
        }
        b.outputs = vec![("y.0".into(), y), ("h".into(), hn)];
        let op = Op::Scan(Box::new(tessera::ir::Scan { axis, reverse: self.rng.random_bool(0.3), state: 1, sliced: 1, body: b }));
        let tys: Vec<&TensorType> = [init, x, inv].iter().map(|&v| self.g.ty(v)).collect();
        let results = match &op {
            Op::Scan(sc) => tessera::ir::scan_results(sc, &tys).ok()?,
            _ => return None,
        };
        if results.iter().any(|t| elems(t, &largest()).is_none_or(|n| n > MAX_ELEMS)) {
            return None;
        }
        let node = self.g.add(op, vec![init, x, inv], None, at).ok()?;
        let ys = self.add(Op::Proj(0), vec![node], Some(results[0].clone()))?;
        self.add(Op::Proj(1), vec![node], Some(results[1].clone()));
        Some(ys)
    }

    /// An f32 value of the pool with updates added at random (repeated, rarely out of range)
    /// indices along a random axis.
    fn scatter(&mut self) -> Option<ValueId> {
        let x = self.pick(|t| t.dtype == DType::F32 && t.rank() >= 1)?;
        let tx = self.ty(x);
        let axis = self.axis(tx.rank());
        let m = Dim::known(self.rng.random_range(0..=4));
        let idx = self.fresh(DType::I64, cat(&tx.shape[..axis], std::slice::from_ref(&m)), Some(Fill::Index(tx.shape[axis].clone())))?;
        let mut ushape = cat(&tx.shape[..axis], &[m]);
        ushape.extend(tx.shape[axis + 1..].iter().cloned());
        let upd = self.fresh(DType::F32, ushape, None)?;
        self.add(Op::ScatterAdd { axis }, vec![x, idx, upd], None)
    }

    /// The `k` largest of an f32 or i64 value of the pool along a random axis (k up to 3 of a
    /// constant axis, 1 of a symbolic one, which may be empty: an error on every side). Both
    /// results join the pool through `proj`.
    fn topk(&mut self) -> Option<ValueId> {
        let x = self.pick(|t| matches!(t.dtype, DType::F32 | DType::I64) && t.rank() >= 1)?;
        let tx = self.ty(x);
        let axis = self.axis(tx.rank());
        let k = match tx.shape[axis].as_known() {
            Some(n) if n >= 1 => self.rng.random_range(1..=n.min(3)),
            Some(_) => return None,
            None => 1,
        };
        let op = Op::TopK { k: Dim::known(k), axis };
        let results = tessera::ir::multi_results(&op, &[&tx]).ok()?;
        let node = self.g.add(op, vec![x], None, Span::UNKNOWN).ok()?;
        let values = self.add(Op::Proj(0), vec![node], Some(results[0].clone()))?;
        self.add(Op::Proj(1), vec![node], Some(results[1].clone()));
        Some(values)
    }

    /// A route of an f32 value of the pool (rows along its last axis) to `k` of up to 4
    /// experts chosen by a top-k of router logits (a fresh input: ties and NaN choose too),
    /// weighted by their softmax; the expert a feed-forward block over stacked parameters (the
    /// grouped kernel) or one product and a random activation (its program per expert).
    fn route(&mut self) -> Option<ValueId> {
        // Rows of a fresh input: a chain of three products over values grown by earlier ops
        // cancels in f32 beyond the tolerance.
        let shape = self.shape_like(&self.base.clone());
        if shape.is_empty() {
            return None;
        }
        let x = self.fresh(DType::F32, shape, None)?;
        let tx = self.ty(x);
        let d = tx.shape.last()?.clone();
        let experts = self.rng.random_range(1..=4i64);
        let k = self.rng.random_range(1..=experts.min(2));
        let mut lshape = tx.shape.clone();
        *lshape.last_mut()? = Dim::known(experts);
        let logits = self.fresh(DType::F32, lshape.clone(), None)?;
        let axis = lshape.len() - 1;
        let top = self.g.add(Op::TopK { k: Dim::known(k), axis }, vec![logits], None, Span::UNKNOWN).ok()?;
        let results = tessera::ir::multi_results(&self.g.node(top).op, &[self.g.ty(logits)]).ok()?;
        let vals = self.add(Op::Proj(0), vec![top], Some(results[0].clone()))?;
        let idx = self.add(Op::Proj(1), vec![top], Some(results[1].clone()))?;
        let w = self.add(Op::Softmax { axis }, vec![vals], None)?;
        let h = Dim::known(self.rng.random_range(1..=5));
        let ffn = self.rng.random_bool(0.6);
        let mut b = Graph::new("body");
        let f32 = |s: &[Dim]| TensorType::new(DType::F32, s.to_vec());
        let at = Span::UNKNOWN;
        let rows = Dim::sym(tessera::ir::Route::ROWS);
        let xe = b.add(Op::Input("x_e".into()), vec![], Some(f32(&[rows.clone(), d.clone()])), at).ok()?;
        let mut stacked = Vec::new();
        let mut weight = |g: &mut Gen, b: &mut Graph, shape: [Dim; 2]| -> Option<ValueId> {
            let p = g.fresh(DType::F32, vec![Dim::known(experts), shape[0].clone(), shape[1].clone()], None)?;
            stacked.push(p);
            b.add(Op::Input(format!("stacked.{}", stacked.len() - 1)), vec![], Some(f32(&shape)), at).ok()
        };
        let y = if ffn {
            let act = *[U::Silu, U::GeluErf, U::GeluTanh, U::Relu].choose(&mut self.rng)?;
            let wg = weight(self, &mut b, [d.clone(), h.clone()])?;
            let g = b.add(Op::MatMul, vec![xe, wg], None, at).ok()?;
            let mut hidden = b.add(Op::Unary(act), vec![g], None, at).ok()?;
            if self.rng.random_bool(0.6) {
                let wu = weight(self, &mut b, [d.clone(), h.clone()])?;
                let u = b.add(Op::MatMul, vec![xe, wu], None, at).ok()?;
                hidden = b.add(Op::Binary(B::Mul), vec![hidden, u], None, at).ok()?;
            }
            let wd = weight(self, &mut b, [h, d.clone()])?;
            b.add(Op::MatMul, vec![hidden, wd], None, at).ok()?
        } else {
            let w1 = weight(self, &mut b, [d.clone(), h])?;
            let p = b.add(Op::MatMul, vec![xe, w1], None, at).ok()?;
            b.add(Op::Unary(*[U::Tanh, U::Abs, U::Exp, U::Neg].choose(&mut self.rng)?), vec![p], None, at).ok()?
        };
        b.outputs = vec![("y".into(), y)];
        let op = Op::Route(Box::new(tessera::ir::Route { experts: experts as usize, body: b }));
        let operands: Vec<ValueId> = [x, idx, w].into_iter().chain(stacked).collect();
        self.add(op, operands, None)
    }

    fn leaf(&mut self) -> Option<ValueId> {
        let base = self.base.clone();
        let shape = self.shape_like(&base);
        let dtype = *[DType::F32, DType::F32, DType::F32, DType::I64, DType::Bool].choose(&mut self.rng)?;
        match self.rng.random_bool(0.2) {
            true => self.constant(dtype, shape),
            false => self.fresh(dtype, shape, None),
        }
    }
}

/// A generator step: adds an op (and what it needs), or nothing when its candidate is rejected.
type Step = fn(&mut Gen) -> Option<ValueId>;

/// The generator's steps with their weights.
#[rustfmt::skip]
const STEPS: &[(u32, Step)] = &[
    (3, Gen::leaf), (8, Gen::unary), (10, Gen::binary), (3, Gen::where_), (3, Gen::cast), (5, Gen::product),
    (3, Gen::transpose), (3, Gen::reshape), (2, Gen::broadcast), (4, Gen::reduce), (3, Gen::softmax), (2, Gen::attention),
    (2, Gen::norm), (1, Gen::mlp), (2, Gen::gather), (3, Gen::slice), (2, Gen::concat), (2, Gen::cumsum),
    (2, Gen::window), (1, Gen::segment), (3, Gen::fourier), (1, Gen::iota), (2, Gen::scan), (2, Gen::topk),
    (1, Gen::route), (2, Gen::scatter),
];

/// A random well-typed graph with dims and input values, from `seed`.
pub fn generate(seed: u64) -> Case {
    let mut rng = StdRng::seed_from_u64(seed);
    let special = if rng.random_bool(0.4) { rng.random_range(0.02..0.3) } else { 0.0 };
    let huge = special > 0.0 && rng.random_bool(0.25);
    let mut gen = Gen { rng, g: Graph::new("fuzz"), pool: Vec::new(), fills: Vec::new(), base: Vec::new(), special, huge };
    gen.base = (0..gen.rng.random_range(1..=4)).map(|_| gen.dim()).collect();
    let total: u32 = STEPS.iter().map(|s| s.0).sum();
    for _ in 0..gen.rng.random_range(2..4) {
        gen.leaf();
    }
    let target = gen.rng.random_range(3..20);
    let mut tries = 0;
    while gen.pool.len() < target + 3 && tries < 200 {
        tries += 1;
        let mut k = gen.rng.random_range(0..total);
        for (w, step) in STEPS {
            if k < *w {
                step(&mut gen);
                break;
            }
            k -= w;
        }
    }
    // Outputs: the last value and a few others; then only what they need is kept.
    let mut outs = vec![*gen.pool.last().unwrap_or(&ValueId(0))];
    for _ in 0..gen.rng.random_range(0..=2) {
        outs.extend(gen.pool.choose(&mut gen.rng).copied());
    }
    outs.dedup();
    gen.g.outputs = outs.iter().enumerate().map(|(i, v)| (format!("y{i}"), *v)).collect();
    let graph = tessera::passes::dce(&gen.g);
    let seq = if gen.rng.random_bool(0.05) { 0 } else { gen.rng.random_range(1..=8) };
    let dims: Dims = [("batch".to_string(), gen.rng.random_range(1..=3)), ("seq".to_string(), seq)].into();
    let bad_index = gen.rng.random_bool(0.02);
    let (mut inputs, mut params) = (HashMap::new(), HashMap::new());
    for (name, param, fill) in &gen.fills {
        let Some(node) = graph.nodes().iter().find(|n| matches!(&n.op, Op::Input(s) | Op::Param(s, _) if s == name)) else { continue };
        let Ok(shape) = tessera::runtime::concrete(&node.ty.shape, &dims) else { continue };
        let t = fill_tensor(&mut gen.rng, node.ty.dtype, shape, fill, &dims, bad_index, huge);
        let map = if *param { &mut params } else { &mut inputs };
        map.insert(name.clone(), t);
    }
    Case { graph, dims, inputs, params, huge }
}

#[allow(clippy::too_many_arguments)]
fn fill_tensor(rng: &mut StdRng, dtype: DType, shape: Vec<usize>, fill: &Fill, dims: &Dims, bad_index: bool, huge: bool) -> Tensor {
    const SPECIAL: &[f64] = &[f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 0.0, -0.0, 1e-40, 1e30, -1e30, 3.4e38, -3.4e38];
    let n: usize = shape.iter().product();
    let values: Vec<f64> = (0..n)
        .map(|_| match fill {
            Fill::Float(p) if rng.random_bool(*p) => *SPECIAL[..if huge { SPECIAL.len() } else { 6 }].choose(rng).unwrap_or(&0.0),
            Fill::Float(_) => rng.random_range(-3.0..3.0),
            Fill::Int(lo, hi) => rng.random_range(*lo..=*hi) as f64,
            Fill::Index(d) => {
                let size = d.eval(dims).unwrap_or(0);
                match bad_index && rng.random_bool(0.3) {
                    true => *[-1, size].choose(rng).unwrap_or(&-1) as f64,
                    false => rng.random_range(0..size.max(1)) as f64,
                }
            }
            Fill::Bool => f64::from(rng.random_bool(0.5)),
        })
        .collect();
    Tensor::from_f64(dtype, shape, values.into_iter())
}

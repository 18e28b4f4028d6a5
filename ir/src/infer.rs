//! Result types of ops: the single definition used by builders and by the verifier.

use crate::{DType, Dim, Op, ShapeDisplay, TensorType};

/// Why an op does not type-check, by kind. Each displays as the message a user reads (the
/// front end puts it under the expression's span).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum TypeError {
    /// The op was given the wrong number of operands (or asked for results it lacks).
    #[error("{0}")]
    Operands(String),
    /// An operand's element type is not one the op is defined on.
    #[error("{0}")]
    DType(String),
    /// Two shapes that do not broadcast: `da` and `db` are their sizes at `axis` (counted in
    /// the broadcast result).
    #[error("shapes {} and {} do not broadcast (axis {axis}: {da} vs {db})", ShapeDisplay(.a), ShapeDisplay(.b))]
    Broadcast {
        /// The first shape.
        a: Vec<Dim>,
        /// The second shape.
        b: Vec<Dim>,
        /// The axis of the result where they differ.
        axis: usize,
        /// The first shape's size there.
        da: Dim,
        /// The second shape's size there.
        db: Dim,
    },
    /// Shapes that do not fit the op otherwise.
    #[error("{0}")]
    Shape(String),
    /// An axis the operand does not have.
    #[error("axis {axis} out of range for rank {rank}")]
    Axis {
        /// The axis asked for.
        axis: usize,
        /// The operand's rank.
        rank: usize,
    },
    /// An attribute out of range or inconsistent (a permutation, slice bounds, `k`, a window).
    #[error("{0}")]
    Attribute(String),
    /// A scan's or route's body that does not agree with its operands.
    #[error("{0}")]
    Region(String),
    /// An op whose type is an attribute (`input`, `param`, `reshape`, ..) without one.
    #[error("{op} needs a declared result type")]
    Undeclared {
        /// The op, as printed.
        op: String,
    },
}

/// Broadcasts two shapes numpy-style (aligned at the right; a size 1 stretches).
pub fn broadcast_shapes(a: &[Dim], b: &[Dim]) -> Result<Vec<Dim>, TypeError> {
    let n = a.len().max(b.len());
    let one = Dim::known(1);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let da = if i + a.len() >= n { &a[i + a.len() - n] } else { &one };
        let db = if i + b.len() >= n { &b[i + b.len() - n] } else { &one };
        if da == db || *db == one {
            out.push(da.clone());
        } else if *da == one {
            out.push(db.clone());
        } else {
            return Err(TypeError::Broadcast { a: a.to_vec(), b: b.to_vec(), axis: i, da: da.clone(), db: db.clone() });
        }
    }
    Ok(out)
}

fn arity(op: &Op) -> Option<usize> {
    Some(match op {
        Op::Input(_) | Op::Param(..) | Op::Const(_) | Op::Iota { .. } => 0,
        Op::Unary(_) | Op::Cast | Op::Transpose(_) | Op::Reshape | Op::Broadcast => 1,
        Op::Reduce { .. } | Op::Slice { .. } | Op::Cumsum { .. } => 1,
        Op::Fft { .. } | Op::Rfft { .. } | Op::Irfft { .. } => 1,
        Op::Binary(_) | Op::MatMul | Op::Gather { .. } | Op::Segment { .. } => 2,
        Op::Where | Op::ScatterAdd { .. } => 3,
        Op::Softmax { .. } => 1,
        Op::Window { op, .. } => 1 + usize::from(*op == crate::WindowOp::Conv),
        Op::Proj(_) | Op::TopK { .. } => 1,
        Op::Concat { .. } | Op::Norm { .. } | Op::Gemm { .. } | Op::Ffn { .. } | Op::Attention(_) | Op::Scan(_) | Op::Route(_) => {
            return None
        }
    })
}

fn check_axis(axis: usize, rank: usize) -> Result<(), TypeError> {
    if axis < rank {
        Ok(())
    } else {
        Err(TypeError::Axis { axis, rank })
    }
}

fn element_count(shape: &[Dim]) -> Dim {
    shape.iter().fold(Dim::known(1), |acc, d| acc.mul(d))
}

fn f32_only(op: &Op, ins: &[&TensorType]) -> Result<(), TypeError> {
    match ins.iter().find(|t| t.dtype != DType::F32) {
        Some(t) => Err(TypeError::DType(format!("{op} needs f32 operands, got {t}"))),
        None => Ok(()),
    }
}

fn transposed(shape: &[Dim]) -> Result<Vec<Dim>, TypeError> {
    let mut s = shape.to_vec();
    let r = s.len();
    if r < 2 {
        return Err(TypeError::Shape("attention needs rank ≥ 2 operands".to_string()));
    }
    s.swap(r - 2, r - 1);
    Ok(s)
}

fn matmul_type(a: &TensorType, b: &TensorType) -> Result<TensorType, TypeError> {
    if a.dtype != DType::F32 || b.dtype != DType::F32 {
        return Err(TypeError::DType(format!("matmul needs f32 operands, got {} and {}", a.dtype, b.dtype)));
    }
    if a.rank() < 2 || b.rank() < 2 {
        return Err(TypeError::Shape(format!("matmul needs rank ≥ 2, got {} and {}", ShapeDisplay(&a.shape), ShapeDisplay(&b.shape))));
    }
    let (ra, rb) = (a.rank(), b.rank());
    if a.shape[ra - 1] != b.shape[rb - 2] {
        return Err(TypeError::Shape(format!(
            "matmul inner sizes differ: {} @ {} ({} vs {})",
            ShapeDisplay(&a.shape),
            ShapeDisplay(&b.shape),
            a.shape[ra - 1],
            b.shape[rb - 2]
        )));
    }
    let mut shape = broadcast_shapes(&a.shape[..ra - 2], &b.shape[..rb - 2])?;
    shape.push(a.shape[ra - 2].clone());
    shape.push(b.shape[rb - 1].clone());
    Ok(TensorType::new(DType::F32, shape))
}

/// The number of non-negative frequencies of a real signal of length `n`: `n/2 + 1`. A
/// symbolic length must be even (a polynomial size has no floor division).
pub fn rfft_bins(n: &Dim) -> Result<Dim, TypeError> {
    match n.as_known() {
        Some(k) if k >= 1 => Ok(Dim::known(k / 2 + 1)),
        Some(k) => Err(TypeError::Shape(format!("a Fourier transform needs a length ≥ 1, got {k}"))),
        None => n
            .div_exact(&Dim::known(2))
            .map(|h| h.add(&Dim::known(1)))
            .ok_or_else(|| TypeError::Shape(format!("a real Fourier transform of symbolic length {n} needs an even length (zero-pad it)"))),
    }
}

/// Checks that `t` is a complex tensor stored as pairs (`f32[.., 2]`).
fn complex_pairs(op: &Op, t: &TensorType) -> Result<(), TypeError> {
    if t.dtype != DType::F32 || t.rank() < 2 || t.shape.last() != Some(&Dim::known(2)) {
        return Err(TypeError::Shape(format!("{op} needs a complex tensor stored as f32[.., 2] (real, imaginary), got {t}")));
    }
    Ok(())
}

/// Computes the result type of `op` applied to operands of types `ins`. `declared` is the type
/// written for ops whose type is an attribute (`input`, `param`, `const`, `iota`, `cast`,
/// `reshape`, `broadcast`); it is ignored by the others.
pub fn infer_type(op: &Op, ins: &[&TensorType], declared: Option<&TensorType>) -> Result<TensorType, TypeError> {
    if let Some(n) = arity(op) {
        if ins.len() != n {
            return Err(TypeError::Operands(format!("{op} takes {n} operand(s), got {}", ins.len())));
        }
    }
    let need_decl = || declared.cloned().ok_or_else(|| TypeError::Undeclared { op: op.to_string() });
    match op {
        Op::Input(_) | Op::Param(..) | Op::Const(_) => need_decl(),
        Op::Iota { axis } => {
            let t = need_decl()?;
            check_axis(*axis, t.rank())?;
            if t.dtype != DType::I64 {
                return Err(TypeError::DType("iota produces i64".to_string()));
            }
            Ok(t)
        }
        Op::Unary(u) => {
            let t = ins[0];
            let want_bool = *u == crate::UnaryOp::Not;
            if want_bool != (t.dtype == DType::Bool) {
                return Err(TypeError::DType(format!("{u:?} is not defined on {}", t.dtype)));
            }
            if !want_bool && t.dtype == DType::I64 && !matches!(u, crate::UnaryOp::Neg | crate::UnaryOp::Abs) {
                return Err(TypeError::DType(format!("{} is not defined on i64", u.name())));
            }
            Ok(t.clone())
        }
        Op::Binary(b) => {
            let (x, y) = (ins[0], ins[1]);
            if x.dtype != y.dtype {
                return Err(TypeError::DType(format!("operand dtypes differ: {} vs {}", x.dtype, y.dtype)));
            }
            if b.is_logical() != (x.dtype == DType::Bool)
                && !(x.dtype == DType::Bool && matches!(b, crate::BinaryOp::Eq | crate::BinaryOp::Ne))
            {
                return Err(TypeError::DType(format!("{} is not defined on {}", b.name(), x.dtype)));
            }
            let shape = broadcast_shapes(&x.shape, &y.shape)?;
            let dtype = if b.is_comparison() { DType::Bool } else { x.dtype };
            Ok(TensorType::new(dtype, shape))
        }
        Op::Where => {
            let (c, a, b) = (ins[0], ins[1], ins[2]);
            if c.dtype != DType::Bool {
                return Err(TypeError::DType(format!("where condition must be bool, got {}", c.dtype)));
            }
            if a.dtype != b.dtype {
                return Err(TypeError::DType(format!("where branches differ in dtype: {} vs {}", a.dtype, b.dtype)));
            }
            let s = broadcast_shapes(&c.shape, &a.shape)?;
            Ok(TensorType::new(a.dtype, broadcast_shapes(&s, &b.shape)?))
        }
        Op::Cast => {
            let t = need_decl()?;
            if t.shape != ins[0].shape {
                return Err(TypeError::Shape("cast keeps the shape".to_string()));
            }
            Ok(t)
        }
        Op::MatMul => matmul_type(ins[0], ins[1]),
        Op::Softmax { axis } => {
            check_axis(*axis, ins[0].rank())?;
            f32_only(op, ins)?;
            Ok(ins[0].clone())
        }
        Op::Norm { .. } => {
            if ins.is_empty() || ins.len() > 3 {
                return Err(TypeError::Operands("norm takes x, then optionally weight and bias".to_string()));
            }
            f32_only(op, ins)?;
            let x = ins[0];
            let d = x.shape.last().ok_or(TypeError::Shape("norm needs rank ≥ 1".to_string()))?;
            if ins[1..].iter().any(|w| w.shape != [d.clone()]) {
                return Err(TypeError::Shape(format!("norm weight and bias must be [{d}]")));
            }
            Ok(x.clone())
        }
        Op::Gemm { bias, act, residual } => {
            let n = 2 + usize::from(*bias) + usize::from(*residual);
            if ins.len() != n {
                return Err(TypeError::Operands(format!("gemm with these flags takes {n} operands, got {}", ins.len())));
            }
            f32_only(op, ins)?;
            let t = matmul_type(ins[0], ins[1])?;
            // The bias and the residual broadcast to the product; they never widen it (the
            // kernels write the product's shape).
            let extra = ins[2..].iter().map(|x| (x, broadcast_shapes(&t.shape, &x.shape)));
            for (x, b) in extra {
                if b? != t.shape {
                    return Err(TypeError::Shape(format!(
                        "a gemm's bias or residual {x} must broadcast to its product {t} without widening it"
                    )));
                }
            }
            if act.is_some_and(|a| a == crate::UnaryOp::Not) {
                return Err(TypeError::Attribute("gemm activation cannot be `not`".to_string()));
            }
            Ok(t)
        }
        Op::Ffn { gated, bias, .. } => {
            let n = if *bias { 5 } else { 3 };
            if ins.len() != n {
                return Err(TypeError::Operands(format!("ffn takes {n} operands, got {}", ins.len())));
            }
            f32_only(op, ins)?;
            let (x, w_in) = (ins[0], ins[1]);
            let w_out = ins[if *bias { 3 } else { 2 }];
            let h = matmul_type(x, w_in)?;
            let mut hidden = h.shape.clone();
            if *gated {
                let last = hidden.pop().ok_or(TypeError::Shape("ffn needs rank ≥ 1".to_string()))?;
                hidden.push(
                    last.div_exact(&Dim::known(2))
                        .ok_or_else(|| TypeError::Shape(format!("a gated ffn needs an even [gate | up] width, got {last}")))?,
                );
            }
            matmul_type(&TensorType::new(DType::F32, hidden), w_out)
        }
        Op::Attention(_) => {
            if ins.len() < 3 {
                return Err(TypeError::Operands("attention takes q, k, v and the score function's operands".to_string()));
            }
            f32_only(op, &ins[..3])?;
            let (q, k, v) = (ins[0], ins[1], ins[2]);
            let scores = matmul_type(q, &TensorType::new(DType::F32, transposed(&k.shape)?))?;
            let out = matmul_type(&scores, v)?;
            Ok(out)
        }
        Op::Transpose(perm) => {
            let t = ins[0];
            let mut seen = vec![false; t.rank()];
            if perm.len() != t.rank() || perm.iter().any(|&p| p >= t.rank() || std::mem::replace(&mut seen[p], true)) {
                return Err(TypeError::Attribute(format!("{perm:?} is not a permutation of {} axes", t.rank())));
            }
            Ok(TensorType::new(t.dtype, perm.iter().map(|&p| t.shape[p].clone()).collect()))
        }
        Op::Reshape => {
            let t = need_decl()?;
            if t.dtype != ins[0].dtype {
                return Err(TypeError::DType("reshape keeps the dtype".to_string()));
            }
            if element_count(&t.shape) != element_count(&ins[0].shape) {
                return Err(TypeError::Shape(format!("cannot reshape {} to {}", ShapeDisplay(&ins[0].shape), ShapeDisplay(&t.shape))));
            }
            Ok(t)
        }
        Op::Broadcast => {
            let t = need_decl()?;
            if t.dtype != ins[0].dtype {
                return Err(TypeError::DType("broadcast keeps the dtype".to_string()));
            }
            if broadcast_shapes(&ins[0].shape, &t.shape)? != t.shape {
                return Err(TypeError::Shape(format!("cannot broadcast {} to {}", ShapeDisplay(&ins[0].shape), ShapeDisplay(&t.shape))));
            }
            Ok(t)
        }
        Op::Reduce { op, axes, keepdim } => {
            let t = ins[0];
            if !axes.windows(2).all(|w| w[0] < w[1]) {
                return Err(TypeError::Attribute("reduction axes must be sorted and distinct".to_string()));
            }
            for &a in axes {
                check_axis(a, t.rank())?;
            }
            if t.dtype == DType::Bool || (t.dtype == DType::I64 && *op == crate::ReduceOp::Mean) {
                return Err(TypeError::DType(format!("reduce_{} is not defined on {}", op.name(), t.dtype)));
            }
            let mut shape = Vec::new();
            for (i, d) in t.shape.iter().enumerate() {
                if !axes.contains(&i) {
                    shape.push(d.clone());
                } else if *keepdim {
                    shape.push(Dim::known(1));
                }
            }
            Ok(TensorType::new(t.dtype, shape))
        }
        Op::Gather { axis } => {
            let (table, idx) = (ins[0], ins[1]);
            check_axis(*axis, table.rank())?;
            if idx.dtype != DType::I64 {
                return Err(TypeError::DType(format!("gather indices must be i64, got {}", idx.dtype)));
            }
            let mut shape = table.shape[..*axis].to_vec();
            shape.extend(idx.shape.iter().cloned());
            shape.extend(table.shape[axis + 1..].iter().cloned());
            Ok(TensorType::new(table.dtype, shape))
        }
        Op::ScatterAdd { axis } => {
            let (x, idx, upd) = (ins[0], ins[1], ins[2]);
            check_axis(*axis, x.rank())?;
            let lead = &x.shape[..*axis];
            let m = idx.shape.last();
            let mut want = lead.to_vec();
            want.extend(m.cloned());
            want.extend(x.shape[axis + 1..].iter().cloned());
            if x.dtype != DType::F32 || idx.dtype != DType::I64 || idx.rank() != axis + 1 || &idx.shape[..*axis] != lead {
                return Err(TypeError::Shape(format!(
                    "scatter_add into {x} along axis {axis} needs i64 indices [{}m], got {idx}",
                    lead.iter().map(|d| format!("{d}, ")).collect::<String>()
                )));
            }
            if upd.dtype != DType::F32 || upd.shape != want {
                return Err(TypeError::Shape(format!(
                    "scatter_add into {x} with indices {idx} needs updates f32{}, got {upd}",
                    ShapeDisplay(&want)
                )));
            }
            Ok(x.clone())
        }
        Op::Slice { axis, start, end, step } => {
            let t = ins[0];
            check_axis(*axis, t.rank())?;
            let len = end.sub(start);
            let size = if *step == 1 {
                len
            } else {
                match (len.as_known(), *step > 1) {
                    (Some(n), true) => Dim::known((n.max(0) + step - 1) / step),
                    _ => return Err(TypeError::Attribute("a strided slice needs constant bounds and a positive step".to_string())),
                }
            };
            if let (Some(s), Some(e), Some(n)) = (start.as_known(), end.as_known(), t.shape[*axis].as_known()) {
                if s < 0 || e > n || s > e {
                    return Err(TypeError::Attribute(format!("slice {s}..{e} out of range for size {n}")));
                }
            }
            let mut shape = t.shape.clone();
            shape[*axis] = size;
            Ok(TensorType::new(t.dtype, shape))
        }
        Op::Concat { axis } => {
            let Some(first) = ins.first() else { return Err(TypeError::Operands("concat needs at least one operand".to_string())) };
            check_axis(*axis, first.rank())?;
            let mut total = Dim::known(0);
            for t in ins {
                let same_rest =
                    t.rank() == first.rank() && t.shape.iter().zip(&first.shape).enumerate().all(|(i, (a, b))| i == *axis || a == b);
                if t.dtype != first.dtype || !same_rest {
                    return Err(TypeError::Shape(format!("cannot concatenate {t} with {first} along axis {axis}")));
                }
                total = total.add(&t.shape[*axis]);
            }
            let mut shape = first.shape.clone();
            shape[*axis] = total;
            Ok(TensorType::new(first.dtype, shape))
        }
        Op::Fft { axes, .. } => {
            let t = ins[0];
            complex_pairs(op, t)?;
            if axes.is_empty() || !axes.windows(2).all(|w| w[0] < w[1]) {
                return Err(TypeError::Attribute("fft axes must be sorted, distinct and not empty".to_string()));
            }
            for &a in axes {
                check_axis(a, t.rank() - 1)?;
            }
            Ok(t.clone())
        }
        Op::Rfft { axis } => {
            let t = ins[0];
            check_axis(*axis, t.rank())?;
            f32_only(op, ins)?;
            let mut shape = t.shape.clone();
            shape[*axis] = rfft_bins(&t.shape[*axis])?;
            shape.push(Dim::known(2));
            Ok(TensorType::new(DType::F32, shape))
        }
        Op::Irfft { axis, n } => {
            let t = ins[0];
            complex_pairs(op, t)?;
            check_axis(*axis, t.rank() - 1)?;
            let bins = rfft_bins(n)?;
            if t.shape[*axis] != bins {
                return Err(TypeError::Shape(format!(
                    "irfft to length {n} needs {bins} frequencies along axis {axis}, got {}",
                    t.shape[*axis]
                )));
            }
            let mut shape = t.shape[..t.rank() - 1].to_vec();
            shape[*axis] = n.clone();
            Ok(TensorType::new(DType::F32, shape))
        }
        Op::Window { op, axis, size, pad_left } => {
            let x = &ins[0];
            check_axis(*axis, x.rank())?;
            if x.dtype != DType::F32 {
                return Err(TypeError::DType(format!("a sliding window needs an f32 operand, got {x}")));
            }
            if *size == 0 || pad_left >= size {
                return Err(TypeError::Attribute(format!("a window of {size} cannot reach {pad_left} positions back")));
            }
            if *op == crate::WindowOp::Conv {
                let w = &ins[1];
                let c = x.shape.last().cloned();
                if *axis + 2 != x.rank() || w.dtype != DType::F32 || w.shape != [Dim::known(*size as i64), c.unwrap_or(Dim::known(1))] {
                    return Err(TypeError::Shape(format!("a depthwise convolution of {x} along axis {axis} needs a [{size}, channels] filter along the axis before the channels, got {w}")));
                }
            }
            Ok((*x).clone())
        }
        Op::Segment { axis, .. } => {
            let (x, ids) = (ins[0], ins[1]);
            check_axis(*axis, x.rank())?;
            if x.dtype != DType::F32 || ids.dtype != DType::I64 || ids.shape[..] != x.shape[..=*axis] {
                return Err(TypeError::Shape(format!(
                    "pooling {x} over segments along axis {axis} needs i64 ids of its leading shape [{}], got {ids}",
                    x.shape[..=*axis].iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
                )));
            }
            Ok(x.clone())
        }
        Op::Cumsum { axis } => {
            check_axis(*axis, ins[0].rank())?;
            if !ins[0].dtype.is_numeric() {
                return Err(TypeError::DType("cumsum needs a numeric operand".to_string()));
            }
            Ok(ins[0].clone())
        }
        Op::Scan(s) => Ok(scan_results(s, ins)?.swap_remove(0)),
        Op::TopK { .. } => Ok(multi_results(op, ins)?.swap_remove(0)),
        Op::Route(r) => route_result(r, ins),
        Op::Proj(_) => need_decl(),
    }
}

/// The result type of a route applied to operands of types `ins`, after checking the
/// operands (`x [.., d]`, `idx i64[.., k]`, `w f32[.., k]`, stacked `[experts, ..]`) against
/// the body's arguments and result. The typing rule of [`crate::Op::Route`].
pub fn route_result(r: &crate::Route, ins: &[&TensorType]) -> Result<TensorType, TypeError> {
    if ins.len() < 3 {
        return Err(TypeError::Operands(format!("a route needs x, indices and weights, got {} operand(s)", ins.len())));
    }
    let (x, idx, w) = (ins[0], ins[1], ins[2]);
    if x.dtype != DType::F32 || x.rank() == 0 {
        return Err(TypeError::Shape(format!("routed rows are f32 [.., d], got {x}")));
    }
    let lead = &x.shape[..x.rank() - 1];
    if idx.dtype != DType::I64 || idx.rank() != x.rank() || &idx.shape[..lead.len()] != lead {
        return Err(TypeError::Shape(format!("the expert indices of rows {x} are i64 [{}, k], got {idx}", ShapeDisplay(lead))));
    }
    if w.dtype != DType::F32 || w.shape != idx.shape {
        return Err(TypeError::Shape(format!("the expert weights are f32 of the indices' shape {}, got {w}", ShapeDisplay(&idx.shape))));
    }
    if r.experts == 0 {
        return Err(TypeError::Attribute("a route needs at least one expert".to_string()));
    }
    if let Some((name, v)) = r.body.outputs.iter().find(|(_, v)| v.index() >= r.body.len()) {
        return Err(TypeError::Region(format!("route body output \"{name}\" refers to undefined {v}")));
    }
    let args = r.body.inputs();
    if args.len() != ins.len() - 2 {
        return Err(TypeError::Region(format!(
            "the route body has {} argument(s) for {} operand(s) (x and the stacked ones)",
            args.len(),
            ins.len() - 2
        )));
    }
    let rows = Dim::sym(crate::Route::ROWS);
    let d = x.shape[x.rank() - 1].clone();
    for (k, (name, v)) in args.iter().enumerate() {
        let want = if k == 0 {
            TensorType::new(DType::F32, vec![rows.clone(), d.clone()])
        } else {
            let t = ins[k + 2];
            if t.shape.first() != Some(&Dim::known(r.experts as i64)) {
                return Err(TypeError::Shape(format!("stacked operand {t} has no leading axis of {} experts", r.experts)));
            }
            TensorType::new(t.dtype, t.shape[1..].to_vec())
        };
        if *r.body.ty(*v) != want {
            return Err(TypeError::Region(format!(
                "route body argument \"{name}\" has type {} but its operand gives {want}",
                r.body.ty(*v)
            )));
        }
    }
    let [(name, out)] = &r.body.outputs[..] else {
        return Err(TypeError::Region(format!("a route body returns one value, not {}", r.body.outputs.len())));
    };
    let t = r.body.ty(*out);
    if t.dtype != DType::F32 || t.rank() != 2 || t.shape[0] != rows {
        return Err(TypeError::Region(format!("route body result \"{name}\" has type {t}, not f32[{rows}, d]")));
    }
    let mut shape = lead.to_vec();
    shape.push(t.shape[1].clone());
    Ok(TensorType::new(DType::F32, shape))
}

/// The result types of a multi-result op ([`Op::is_multi`]) applied to operands of types
/// `ins`: what [`Op::Proj`] reads. The one place a new multi-result op (top-k's values and
/// indices) adds its rule.
pub fn multi_results(op: &Op, ins: &[&TensorType]) -> Result<Vec<TensorType>, TypeError> {
    match op {
        Op::Scan(s) => scan_results(s, ins),
        Op::TopK { k, axis } => {
            let x = ins.first().ok_or(TypeError::Operands("topk needs one operand".to_string()))?;
            check_axis(*axis, x.rank())?;
            if !x.dtype.is_numeric() {
                return Err(TypeError::DType(format!("topk needs a numeric operand, got {x}")));
            }
            let small = |k: i64| k < 1 || x.shape[*axis].as_known().is_some_and(|n| k > n);
            if k.as_known().is_some_and(small) {
                return Err(TypeError::Attribute(format!("top-{k} of {x} along axis {axis}: k is between 1 and the axis' size")));
            }
            let mut shape = x.shape.clone();
            shape[*axis] = k.clone();
            Ok(vec![TensorType::new(x.dtype, shape.clone()), TensorType::new(DType::I64, shape)])
        }
        other => Err(TypeError::Operands(format!("{other} has a single result"))),
    }
}

/// The result types of a scan applied to operands of types `ins` (each per-step output with
/// the scanned axis put back, then each final state), after checking that the body's
/// arguments and results agree with the operands. The typing rule of [`Op::Scan`]; a
/// [`Op::Proj`] of result `i` has type `scan_results(..)[i]`.
pub fn scan_results(s: &crate::Scan, ins: &[&TensorType]) -> Result<Vec<TensorType>, TypeError> {
    let (ns, nx) = (s.state, s.sliced);
    if nx == 0 {
        return Err(TypeError::Operands("a scan needs at least one sliced operand".to_string()));
    }
    if ins.len() < ns + nx {
        return Err(TypeError::Operands(format!("a scan of {ns} state(s) and {nx} sliced operand(s) has only {} operand(s)", ins.len())));
    }
    let len = {
        let x = ins[ns];
        check_axis(s.axis, x.rank())?;
        x.shape[s.axis].clone()
    };
    if let Some((name, v)) = s.body.outputs.iter().find(|(_, v)| v.index() >= s.body.len()) {
        return Err(TypeError::Region(format!("scan body output \"{name}\" refers to undefined {v}")));
    }
    let args = s.body.inputs();
    if args.len() != ins.len() {
        return Err(TypeError::Region(format!("the scan body has {} argument(s) for {} operand(s)", args.len(), ins.len())));
    }
    for (k, ((name, v), t)) in args.iter().zip(ins).enumerate() {
        let want = if (ns..ns + nx).contains(&k) {
            if t.rank() <= s.axis || t.shape[s.axis] != len {
                return Err(TypeError::Shape(format!("sliced operand {t} has no axis {} of size {len}", s.axis)));
            }
            let mut shape = t.shape.clone();
            shape.remove(s.axis);
            TensorType::new(t.dtype, shape)
        } else {
            (*t).clone()
        };
        if *s.body.ty(*v) != want {
            return Err(TypeError::Region(format!(
                "scan body argument \"{name}\" has type {} but its operand gives {want}",
                s.body.ty(*v)
            )));
        }
    }
    let outs = &s.body.outputs;
    if outs.len() < ns || outs.is_empty() {
        return Err(TypeError::Region(format!(
            "the scan body returns {} value(s); it must return its {ns} state(s) last and at least one value",
            outs.len()
        )));
    }
    let ny = outs.len() - ns;
    let mut results = Vec::with_capacity(outs.len());
    for (name, v) in &outs[..ny] {
        let t = s.body.ty(*v);
        if s.axis > t.rank() {
            return Err(TypeError::Region(format!("scan body result \"{name}\" of type {t} has no axis {} to stack along", s.axis)));
        }
        let mut shape = t.shape.clone();
        shape.insert(s.axis, len.clone());
        results.push(TensorType::new(t.dtype, shape));
    }
    for (k, (name, v)) in outs[ny..].iter().enumerate() {
        let (got, want) = (s.body.ty(*v), ins[k]);
        if got != want {
            return Err(TypeError::Region(format!("scan state {k} (\"{name}\") enters the body as {want} but leaves it as {got}")));
        }
        results.push(want.clone());
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BinaryOp, UnaryOp};

    fn t(dtype: DType, shape: &[i64]) -> TensorType {
        TensorType::new(dtype, shape.iter().map(|&n| Dim::known(n)).collect())
    }

    /// Each kind of mistake comes back as its variant, with the sizes where it has them.
    #[test]
    fn type_errors_say_what_kind_of_mistake() {
        let (a, b) = (t(DType::F32, &[2, 3]), t(DType::F32, &[4, 3]));
        let Err(e) = infer_type(&Op::Binary(BinaryOp::Add), &[&a, &b], None) else { panic!("[2, 3] + [4, 3] typed") };
        assert_eq!(e, TypeError::Broadcast { a: a.shape.clone(), b: b.shape.clone(), axis: 0, da: Dim::known(2), db: Dim::known(4) });
        assert_eq!(e.to_string(), "shapes [2, 3] and [4, 3] do not broadcast (axis 0: 2 vs 4)");
        let ints = t(DType::I64, &[3]);
        assert!(matches!(infer_type(&Op::Unary(UnaryOp::Exp), &[&ints], None), Err(TypeError::DType(_))));
        assert_eq!(infer_type(&Op::Softmax { axis: 2 }, &[&a], None), Err(TypeError::Axis { axis: 2, rank: 2 }));
        assert!(matches!(infer_type(&Op::MatMul, &[&a], None), Err(TypeError::Operands(_))));
        assert!(matches!(infer_type(&Op::MatMul, &[&a, &a], None), Err(TypeError::Shape(_))));
        assert!(matches!(infer_type(&Op::Transpose(vec![0, 0]), &[&a], None), Err(TypeError::Attribute(_))));
        assert!(matches!(infer_type(&Op::Reshape, &[&a], None), Err(TypeError::Undeclared { .. })));
    }
}

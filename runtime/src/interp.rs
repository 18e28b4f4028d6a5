//! The reference interpreter: runs any IR graph on the host, one op at a time, in the plainest
//! way that is obviously correct. Elementwise math is done in f64 and rounded to f32 on store;
//! reductions and matmul accumulate in f64. It is the oracle every optimisation and backend is
//! tested against, not a fast path.

use crate::tensor::{broadcast_offsets, strided_offsets, strides, Data, Tensor};
use crate::{fourier, fused, RunError};
use std::collections::HashMap;
use tessera_ir::{DType, Dim, Graph, Node, Op, ReduceOp};

/// Concrete sizes for a graph's symbolic dimensions.
pub type Dims = HashMap<String, i64>;

/// The most elements one tensor may have (2^40: 4 TiB of f32). Larger shapes are refused when
/// their sizes are bound, so that no element count or byte offset can overflow.
pub const MAX_ELEMENTS: u128 = 1 << 40;

/// Evaluates a symbolic shape under `dims`; refuses a shape of more than [`MAX_ELEMENTS`].
pub fn concrete(shape: &[Dim], dims: &Dims) -> Result<Vec<usize>, RunError> {
    let out = concrete_dims(shape, dims)?;
    // Sizes of 0 count as 1: [0, 2^32, 2^32] holds nothing, but its strides still overflow.
    let count = out.iter().try_fold(1u128, |acc, &n| acc.checked_mul(n.max(1) as u128));
    match count {
        Some(c) if c <= MAX_ELEMENTS => Ok(out),
        _ => {
            let sizes = out.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ");
            let symbolic = shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ");
            Err(RunError::TooLarge { shape: out, symbolic: (symbolic != sizes).then_some(symbolic) })
        }
    }
}

/// What a run needs in memory, in bytes, estimated before anything is allocated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// Parameters.
    pub params: u128,
    /// Inputs.
    pub inputs: u128,
    /// The intermediates live at once at the peak, in graph order (the compiled backends plan
    /// an arena no larger). An estimate, not a bound: the interpreter also holds a copy of
    /// each parameter and input until its last use, and a GPU run's device memory is not
    /// counted here.
    pub intermediates: u128,
    /// What a compiled backend derives from the parameters and keeps (merged weights, weights
    /// packed for its GEMM): set by the engine that runs, 0 for the interpreter.
    pub derived: u128,
}

impl MemoryEstimate {
    /// The total.
    pub fn total(&self) -> u128 {
        self.params + self.inputs + self.intermediates + self.derived
    }

    /// Refuses a run whose estimate exceeds `budget` bytes.
    pub fn check(&self, budget: u128) -> Result<(), RunError> {
        if self.total() <= budget {
            return Ok(());
        }
        let h = crate::human_bytes;
        let mut parts = format!("parameters {}, inputs {}, intermediates {}", h(self.params), h(self.inputs), h(self.intermediates));
        if self.derived > 0 {
            parts += &format!(", derived from parameters {}", h(self.derived));
        }
        Err(RunError::Memory { need: self.total(), parts, budget })
    }
}

/// Estimates the memory of running `g` with `dims`: every shape is bound (refusing those
/// larger than [`MAX_ELEMENTS`]) and the live intermediates are tracked through the graph.
pub fn memory_estimate(g: &Graph, dims: &Dims) -> Result<MemoryEstimate, RunError> {
    let mut uses = g.use_counts();
    let mut est = MemoryEstimate::default();
    let mut bytes = vec![0u128; g.len()];
    let (mut live, mut peak) = (0u128, 0u128);
    for (i, node) in g.nodes().iter().enumerate() {
        let shape = concrete(&node.ty.shape, dims).map_err(|e| match node.span.display_in(&g.files) {
            Some(at) => e.located(|| format!("the {} at {at}", node.op.mnemonic())),
            None => e,
        })?;
        let n: u128 = shape.iter().map(|&n| n as u128).product();
        bytes[i] = n * node.ty.dtype.size() as u128;
        match node.op {
            Op::Param(..) => est.params += bytes[i],
            Op::Input(_) => est.inputs += bytes[i],
            _ => {
                live += bytes[i];
                peak = peak.max(live);
            }
        }
        for v in &node.inputs {
            let u = &mut uses[v.index()];
            *u = u.saturating_sub(1);
            if *u == 0 && !matches!(g.node(*v).op, Op::Param(..) | Op::Input(_)) {
                live -= bytes[v.index()];
            }
        }
    }
    est.intermediates = peak;
    Ok(est)
}

fn concrete_dims(shape: &[Dim], dims: &Dims) -> Result<Vec<usize>, RunError> {
    shape
        .iter()
        .map(|d| {
            for (name, k) in d.quotients() {
                match dims.get(name) {
                    Some(&n) if n % k != 0 => {
                        return Err(RunError::NotMultiple { name: name.to_string(), value: n, block: k, dim: d.to_string() })
                    }
                    _ => {}
                }
            }
            Ok(d)
        })
        .map(|d| {
            d.and_then(|d| match d.eval(dims) {
                Some(n) if n >= 0 => Ok(n as usize),
                Some(n) => Err(RunError::NegativeSize { dim: d.to_string(), value: n }),
                None => Err(RunError::UnboundDim(d.symbols().find(|s| !dims.contains_key(*s)).unwrap_or("?").to_string())),
            })
        })
        .collect()
}

/// Runs `graph` with concrete `dims`, the model's `inputs` and `params` (by name). Returns the
/// outputs by name. Every input and parameter must be present with its declared shape.
pub fn run(
    graph: &Graph,
    dims: &Dims,
    inputs: &HashMap<String, Tensor>,
    params: &HashMap<String, Tensor>,
) -> Result<Vec<(String, Tensor)>, RunError> {
    let mut uses = graph.use_counts();
    let mut vals: Vec<Option<Tensor>> = vec![None; graph.len()];
    // The results of multi-result nodes (scans), read by `proj`.
    let mut tuples: Vec<Option<Vec<Tensor>>> = vec![None; graph.len()];
    for (i, node) in graph.nodes().iter().enumerate() {
        let shape = concrete(&node.ty.shape, dims)?;
        if let Op::Proj(k) = node.op {
            let v = node.inputs[0];
            let t = tuples[v.index()]
                .as_ref()
                .and_then(|r| r.get(k))
                .ok_or_else(|| RunError::Internal(format!("proj {k} of {v}: no such result")))?;
            vals[i] = Some(t.clone());
        } else {
            let args: Vec<&Tensor> = node
                .inputs
                .iter()
                .map(|v| vals[v.index()].as_ref().ok_or_else(|| RunError::Internal(format!("{v} used after free"))))
                .collect::<Result<_, _>>()?;
            match &node.op {
                Op::Scan(s) => tuples[i] = Some(scan(graph, s, &args, dims)?),
                Op::TopK { axis, .. } => {
                    let x = args[0];
                    let k = shape[*axis];
                    let (vals, idxs) = crate::topk(&x.shape, k, *axis, |i| x.get(i)).map_err(|e| e.located(|| location(graph, node)))?;
                    let mut shape = x.shape.clone();
                    shape[*axis] = k;
                    tuples[i] = Some(vec![Tensor::from_f64(x.dtype(), shape.clone(), vals.into_iter()), Tensor::i64(shape, idxs)]);
                }
                Op::Route(r) => {
                    let mut body = r.body.clone();
                    body.files = graph.files.clone();
                    let no_params = HashMap::new();
                    let at = location(graph, node);
                    vals[i] = Some(crate::route_rows(r, &args, shape, dims, &at, |bound, dims| {
                        run(&body, dims, bound, &no_params)?
                            .pop()
                            .map(|(_, t)| t)
                            .ok_or_else(|| RunError::Internal("a route body without a result".into()))
                    })?)
                }
                _ => vals[i] = Some(eval(graph, node, shape, &args, inputs, params, dims)?),
            }
        }
        for v in &node.inputs {
            uses[v.index()] -= 1;
            if uses[v.index()] == 0 {
                vals[v.index()] = None;
                tuples[v.index()] = None;
            }
        }
    }
    graph
        .outputs
        .iter()
        .map(|(name, v)| Ok((name.clone(), vals[v.index()].clone().ok_or_else(|| RunError::Internal(format!("output {name} missing")))?)))
        .collect()
}

fn scan(graph: &Graph, s: &tessera_ir::Scan, args: &[&Tensor], dims: &Dims) -> Result<Vec<Tensor>, RunError> {
    // The body's spans index the enclosing file table: run it with that table.
    let mut body = s.body.clone();
    body.files = graph.files.clone();
    let no_params = HashMap::new();
    scan_steps(s, args, dims, |bound| Ok(run(&body, dims, bound, &no_params)?.into_iter().map(|(_, t)| t).collect()))
}

/// Runs a scan step by step, the definition of its semantics that every backend shares:
/// slices each sliced operand at the position, runs `body` (which maps the body's arguments,
/// by name, to its outputs in order) on the states, the slices and the invariants, and stacks
/// the per-step results. Returns the results in [`tessera_ir::scan_results`] order.
pub fn scan_steps(
    s: &tessera_ir::Scan,
    args: &[&Tensor],
    dims: &Dims,
    mut body: impl FnMut(&HashMap<String, Tensor>) -> Result<Vec<Tensor>, RunError>,
) -> Result<Vec<Tensor>, RunError> {
    let (ns, nx) = (s.state, s.sliced);
    let names: Vec<String> = s.body.inputs().iter().map(|(n, _)| n.to_string()).collect();
    let mut bound: HashMap<String, Tensor> = names.iter().zip(args).map(|(n, t)| (n.clone(), (*t).clone())).collect();
    let len = args[ns].shape[s.axis];
    let ny = s.body.outputs.len() - ns;
    // Each stacked result as [outer, len, inner] values, filled one position at a time.
    let mut stacks: Vec<(Vec<f64>, Vec<usize>, usize)> = Vec::with_capacity(ny);
    for step in 0..len {
        let t = if s.reverse { len - 1 - step } else { step };
        for (k, x) in args[ns..ns + nx].iter().enumerate() {
            let outer: usize = x.shape[..s.axis].iter().product();
            let inner: usize = x.shape[s.axis + 1..].iter().product();
            let mut shape = x.shape.clone();
            shape.remove(s.axis);
            let offs = (0..outer).flat_map(|o| (0..inner).map(move |j| (o * len + t) * inner + j));
            bound.insert(names[ns + k].clone(), x.take(shape, offs));
        }
        let mut outs = body(&bound)?.into_iter();
        for k in 0..ny {
            let y = outs.next().ok_or_else(|| RunError::Internal("a scan body result is missing".into()))?;
            if stacks.len() == k {
                let mut shape = y.shape.clone();
                shape.insert(s.axis, len);
                stacks.push((vec![0.0; y.len() * len], shape, y.shape[s.axis..].iter().product()));
            }
            let (vals, _, inner) = &mut stacks[k];
            for i in 0..y.len() {
                let (o, j) = (i / *inner, i % *inner);
                vals[(o * len + t) * *inner + j] = y.get(i);
            }
        }
        for name in &names[..ns] {
            let h = outs.next().ok_or_else(|| RunError::Internal("a scan body state is missing".into()))?;
            bound.insert(name.clone(), h);
        }
    }
    let mut results = Vec::with_capacity(ny + ns);
    for (k, (_, v)) in s.body.outputs[..ny].iter().enumerate() {
        let dtype = s.body.ty(*v).dtype;
        match stacks.get_mut(k) {
            Some((vals, shape, _)) => results.push(Tensor::from_f64(dtype, std::mem::take(shape), std::mem::take(vals).into_iter())),
            None => {
                // An empty scan: the stacked result has size 0 along the axis.
                let mut shape = concrete(&s.body.ty(*v).shape, dims)?;
                shape.insert(s.axis, 0);
                results.push(Tensor::from_f64(dtype, shape, std::iter::empty()));
            }
        }
    }
    for name in &names[..ns] {
        results.push(bound.remove(name).ok_or_else(|| RunError::Internal("a scan state is missing".into()))?);
    }
    Ok(results)
}

fn lookup(kind: &'static str, table: &HashMap<String, Tensor>, name: &str, node: &Node, shape: &[usize]) -> Result<Tensor, RunError> {
    let t = table.get(name).ok_or_else(|| RunError::Missing { kind, name: name.to_string() })?;
    if t.shape != shape || t.dtype() != node.ty.dtype {
        return Err(RunError::BadTensor {
            kind,
            name: name.to_string(),
            expected: format!("{}{:?}", node.ty.dtype, shape),
            got: format!("{}{:?}", t.dtype(), t.shape),
        });
    }
    Ok(t.clone())
}

#[allow(clippy::too_many_arguments)]
fn eval(
    graph: &Graph,
    node: &Node,
    shape: Vec<usize>,
    a: &[&Tensor],
    inputs: &HashMap<String, Tensor>,
    params: &HashMap<String, Tensor>,
    dims: &Dims,
) -> Result<Tensor, RunError> {
    let n: usize = shape.iter().product();
    let dtype = node.ty.dtype;
    Ok(match &node.op {
        Op::Scan(_) | Op::Proj(_) | Op::TopK { .. } | Op::Route(_) => {
            return Err(RunError::Internal(format!("{} is evaluated by `run`", node.op)))
        }
        Op::Input(name) => lookup("input", inputs, name, node, &shape)?,
        Op::Param(name, _) => lookup("parameter", params, name, node, &shape)?,
        Op::Const(v) => Tensor::from_f64(dtype, shape, std::iter::repeat_n(*v, n)),
        Op::Iota { axis } => {
            let inner: usize = shape[axis + 1..].iter().product();
            let size = shape[*axis];
            Tensor::from_f64(dtype, shape, (0..n).map(|i| ((i / inner) % size) as f64))
        }
        Op::Unary(u) => Tensor::from_f64(dtype, shape, (0..n).map(|i| u.eval(a[0].get(i)))),
        Op::Binary(b) => {
            let int = a[0].dtype() == DType::I64;
            let (oa, ob) = (broadcast_offsets(&shape, &a[0].shape), broadcast_offsets(&shape, &a[1].shape));
            Tensor::from_f64(dtype, shape, (0..n).map(|i| b.eval(a[0].get(oa[i]), a[1].get(ob[i]), int)))
        }
        Op::Where => {
            let o: Vec<Vec<usize>> = a.iter().map(|t| broadcast_offsets(&shape, &t.shape)).collect();
            Tensor::from_f64(dtype, shape, (0..n).map(|i| if a[0].get(o[0][i]) != 0.0 { a[1].get(o[1][i]) } else { a[2].get(o[2][i]) }))
        }
        Op::Cast => Tensor::from_f64(dtype, shape, (0..n).map(|i| a[0].get(i))),
        Op::MatMul => matmul(a[0], a[1], shape),
        Op::Transpose(perm) => {
            let st = strides(&a[0].shape);
            let out_st: Vec<usize> = perm.iter().map(|&p| st[p]).collect();
            let offs = strided_offsets(&shape, &out_st);
            a[0].take(shape, offs.into_iter())
        }
        Op::Reshape => a[0].clone().reshaped(shape),
        Op::Broadcast => {
            let offs = broadcast_offsets(&shape, &a[0].shape);
            a[0].take(shape, offs.into_iter())
        }
        Op::Reduce { op, axes, .. } => reduce(a[0], *op, axes, dtype, shape),
        Op::Gather { axis } => {
            let (t, idx) = (a[0], a[1]);
            let outer: usize = t.shape[..*axis].iter().product();
            let size = t.shape[*axis];
            let inner: usize = t.shape[axis + 1..].iter().product();
            let ids: Vec<i64> = (0..idx.len()).map(|i| idx.get(i) as i64).collect();
            if let Some(bad) = ids.iter().find(|&&k| k < 0 || k as usize >= size) {
                return Err(RunError::IndexOutOfRange { index: *bad, size, at: location(graph, node) });
            }
            let offs = (0..outer).flat_map(|o| ids.iter().flat_map(move |&k| (0..inner).map(move |j| (o * size + k as usize) * inner + j)));
            t.take(shape, offs)
        }
        Op::ScatterAdd { axis } => {
            let (x, idx, upd) = (a[0], a[1], a[2]);
            let outer: usize = x.shape[..*axis].iter().product();
            let size = x.shape[*axis];
            let inner: usize = x.shape[axis + 1..].iter().product();
            let m = idx.shape.last().copied().unwrap_or(0);
            let mut out: Vec<f64> = (0..x.len()).map(|i| x.get(i)).collect();
            for o in 0..outer {
                for j in 0..m {
                    let k = idx.get(o * m + j) as i64;
                    if k < 0 || k as usize >= size {
                        return Err(RunError::IndexOutOfRange { index: k, size, at: location(graph, node) });
                    }
                    for c in 0..inner {
                        out[(o * size + k as usize) * inner + c] += upd.get((o * m + j) * inner + c);
                    }
                }
            }
            Tensor::from_f64(dtype, shape, out.into_iter())
        }
        Op::Slice { axis, start, step, .. } => {
            let start = start.eval(dims).ok_or_else(|| RunError::UnboundDim(start.to_string()))?;
            let t = a[0];
            let outer: usize = t.shape[..*axis].iter().product();
            let (size, out_size) = (t.shape[*axis], shape[*axis]);
            let inner: usize = t.shape[axis + 1..].iter().product();
            if start < 0 || (out_size > 0 && start as usize + (out_size - 1) * *step as usize >= size) {
                let e = RunError::SliceOutOfRange { start, step: *step, len: out_size, size };
                return Err(e.located(|| location(graph, node)));
            }
            let offs = (0..outer).flat_map(|o| {
                (0..out_size).flat_map(move |k| (0..inner).map(move |j| (o * size + start as usize + k * *step as usize) * inner + j))
            });
            t.take(shape, offs)
        }
        Op::Concat { axis } => {
            let outer: usize = shape[..*axis].iter().product();
            let vals: Vec<f64> = (0..outer)
                .flat_map(|o| {
                    a.iter().flat_map(move |t| {
                        let chunk: usize = t.shape[*axis..].iter().product();
                        (0..chunk).map(move |j| t.get(o * chunk + j))
                    })
                })
                .collect();
            Tensor::from_f64(dtype, shape, vals.into_iter())
        }
        Op::Cumsum { axis } => Tensor::from_f64(dtype, shape.clone(), cumsum(&shape, *axis, |i| a[0].get(i)).into_iter()),
        Op::Window { op, axis, size, pad_left } => {
            let channels = shape.last().copied().unwrap_or(1);
            let w = |j: usize, c: usize| a.get(1).map_or(0.0, |w| w.get(j * channels + c));
            Tensor::from_f64(dtype, shape.clone(), window(&shape, *op, *axis, *size, *pad_left, |i| a[0].get(i), w).into_iter())
        }
        Op::Segment { op, axis } => {
            Tensor::from_f64(dtype, shape.clone(), segment(&shape, *op, *axis, |i| a[0].get(i), |i| a[1].get(i) as i64).into_iter())
        }
        Op::Fft { axes, inverse } => fourier::fft(a[0], axes, *inverse),
        Op::Rfft { axis } => fourier::rfft(a[0], *axis),
        Op::Irfft { axis, .. } => fourier::irfft(a[0], *axis, shape[*axis]),
        Op::Softmax { axis } => fused::softmax(a[0], *axis),
        Op::Norm { kind, eps } => fused::norm(a[0], *kind, *eps, a.get(1).copied(), a.get(2).copied()),
        Op::Gemm { bias, act, residual } => fused::gemm(product, a, *bias, *act, *residual),
        Op::Ffn { gated, act, bias } => fused::ffn(product, a, *gated, *act, *bias),
        Op::Attention(f) => fused::attention(f, a, shape),
    })
}

/// The interpreter's matmul with its result shape computed from the operands.
fn product(a: &Tensor, b: &Tensor) -> Tensor {
    let (ra, rb) = (a.shape.len(), b.shape.len());
    let (ba, bb) = (&a.shape[..ra - 2], &b.shape[..rb - 2]);
    let n = ba.len().max(bb.len());
    let at = |s: &[usize], i: usize| if i + s.len() >= n { s[i + s.len() - n] } else { 1 };
    // Broadcasting: a 1 takes the other size (a 0 batch stays 0; `max` made it 1).
    let mut shape: Vec<usize> = (0..n).map(|i| if at(ba, i) == 1 { at(bb, i) } else { at(ba, i) }).collect();
    shape.extend([a.shape[ra - 2], b.shape[rb - 1]]);
    matmul(a, b, shape)
}

/// A sliding window along `axis` of a tensor of `shape` ([`Op::Window`]): `x(i)` reads the
/// operand at flat index `i`, `w(j, c)` the filter (`Conv` only) at window position `j` and
/// channel `c` (the last axis). Positions outside the axis are left out.
pub fn window(
    shape: &[usize],
    op: tessera_ir::WindowOp,
    axis: usize,
    size: usize,
    pad_left: usize,
    x: impl Fn(usize) -> f64,
    w: impl Fn(usize, usize) -> f64,
) -> Vec<f64> {
    use tessera_ir::WindowOp;
    let outer: usize = shape[..axis].iter().product();
    let len = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    let channels = shape.last().copied().unwrap_or(1).max(1);
    let mut out = vec![0f64; outer * len * inner];
    for o in 0..outer {
        for t in 0..len {
            for c in 0..inner {
                let (mut acc, mut count) = (if op == WindowOp::Max { f64::NEG_INFINITY } else { 0.0 }, 0usize);
                for j in 0..size {
                    let Some(p) = (t + j).checked_sub(pad_left).filter(|&p| p < len) else { continue };
                    let v = x((o * len + p) * inner + c);
                    match op {
                        WindowOp::Conv => acc += v * w(j, c % channels),
                        WindowOp::Max => acc = tessera_ir::nan_max(acc, v),
                        WindowOp::Mean => acc += v,
                    }
                    count += 1;
                }
                out[(o * len + t) * inner + c] = if op == WindowOp::Mean { acc / count.max(1) as f64 } else { acc };
            }
        }
    }
    out
}

/// Pooling over segments ([`Op::Segment`]) of a tensor of `shape` along `axis`: `x(i)` reads
/// the operand at flat index `i`, `id(r)` the segment id at flat index `r` of the ids
/// (`shape[..=axis]`). Each row's positions are grouped by id (a sort, O(n log n)), each group
/// reduced once per inner element, and the result written back to every member.
pub fn segment(shape: &[usize], op: ReduceOp, axis: usize, x: impl Fn(usize) -> f64, id: impl Fn(usize) -> i64) -> Vec<f64> {
    let outer: usize = shape[..axis].iter().product();
    let len = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    let mut out = vec![0f64; outer * len * inner];
    let mut order: Vec<usize> = Vec::with_capacity(len);
    for o in 0..outer {
        order.clear();
        order.extend(0..len);
        order.sort_by_key(|&t| (id(o * len + t), t));
        for group in order.chunk_by(|&a, &b| id(o * len + a) == id(o * len + b)) {
            for c in 0..inner {
                let vals = group.iter().map(|&u| x((o * len + u) * inner + c));
                let r = match op {
                    ReduceOp::Sum => vals.sum(),
                    ReduceOp::Mean => vals.sum::<f64>() / group.len() as f64,
                    ReduceOp::Max => vals.fold(f64::NEG_INFINITY, tessera_ir::nan_max),
                    ReduceOp::Min => vals.fold(f64::INFINITY, tessera_ir::nan_min),
                };
                for &u in group {
                    out[(o * len + u) * inner + c] = r;
                }
            }
        }
    }
    out
}

/// Inclusive prefix sums along `axis` of a tensor of `shape`; `get` reads flat index `i`.
pub fn cumsum(shape: &[usize], axis: usize, get: impl Fn(usize) -> f64) -> Vec<f64> {
    let outer: usize = shape[..axis].iter().product();
    let size = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    let mut out = vec![0f64; outer * size * inner];
    for o in 0..outer {
        for j in 0..inner {
            let mut acc = 0f64;
            for k in 0..size {
                let i = (o * size + k) * inner + j;
                acc += get(i);
                out[i] = acc;
            }
        }
    }
    out
}

/// `file:line:col` of a node, for runtime errors.
pub fn location(graph: &Graph, node: &Node) -> String {
    node.span.display_in(&graph.files).unwrap_or_else(|| "unknown location".into())
}

fn reduce(t: &Tensor, op: ReduceOp, axes: &[usize], dtype: DType, shape: Vec<usize>) -> Tensor {
    let keep: Vec<usize> = t.shape.iter().enumerate().map(|(i, &s)| if axes.contains(&i) { 1 } else { s }).collect();
    let m: usize = keep.iter().product();
    let count: usize = axes.iter().map(|&a| t.shape[a]).product();
    let init = match op {
        ReduceOp::Sum | ReduceOp::Mean => 0.0,
        ReduceOp::Max => f64::NEG_INFINITY,
        ReduceOp::Min => f64::INFINITY,
    };
    let mut acc = vec![init; m];
    // Map each input element to its output slot by broadcasting the kept shape over the input.
    let st = strides(&keep);
    let slot_st: Vec<usize> = keep.iter().zip(&st).map(|(&k, &s)| if k == 1 { 0 } else { s }).collect();
    let slots = strided_offsets(&t.shape, &slot_st);
    for (i, &s) in slots.iter().enumerate() {
        let x = t.get(i);
        acc[s] = match op {
            ReduceOp::Sum | ReduceOp::Mean => acc[s] + x,
            ReduceOp::Max => tessera_ir::nan_max(acc[s], x),
            ReduceOp::Min => tessera_ir::nan_min(acc[s], x),
        };
    }
    if op == ReduceOp::Mean {
        acc.iter_mut().for_each(|v| *v /= count as f64);
    }
    Tensor::from_f64(dtype, shape, acc.into_iter())
}

fn matmul(a: &Tensor, b: &Tensor, shape: Vec<usize>) -> Tensor {
    let (ra, rb, r) = (a.shape.len(), b.shape.len(), shape.len());
    let (m, k, nn) = (a.shape[ra - 2], a.shape[ra - 1], b.shape[rb - 1]);
    let batch = &shape[..r - 2];
    let oa = broadcast_offsets(batch, &a.shape[..ra - 2]);
    let ob = broadcast_offsets(batch, &b.shape[..rb - 2]);
    let (Data::F32(av), Data::F32(bv)) = (&a.data, &b.data) else {
        return Tensor::f32(shape, Vec::new());
    };
    let mut out = Vec::with_capacity(oa.len() * m * nn);
    let mut row = vec![0f64; nn];
    for (&ia, &ib) in oa.iter().zip(&ob) {
        let (pa, pb) = (&av[ia * m * k..(ia + 1) * m * k], &bv[ib * k * nn..(ib + 1) * k * nn]);
        for i in 0..m {
            row.iter_mut().for_each(|x| *x = 0.0);
            for p in 0..k {
                let x = f64::from(pa[i * k + p]);
                for (acc, &y) in row.iter_mut().zip(&pb[p * nn..(p + 1) * nn]) {
                    *acc += x * f64::from(y);
                }
            }
            out.extend(row.iter().map(|&v| v as f32));
        }
    }
    Tensor::f32(shape, out)
}

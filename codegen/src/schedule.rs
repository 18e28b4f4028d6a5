//! Scheduling: the optimised IR becomes a kernel [`Program`]. Each fused op is one kernel;
//! chains of elementwise ops are fused into one elementwise kernel (an op is inlined into its
//! only consumer when both are elementwise and have the same shape); scalar constants are
//! inlined; reshapes are views of their operand's buffer.

use crate::kernel::{BufId, Buffer, Kernel, Program, RouteKernel, ScanKernel, Step, Storage};
use tessera_ir::{DType, Graph, Op, SNode, ScoreFn, ValueId};

fn is_elementwise(op: &Op) -> bool {
    matches!(op, Op::Unary(_) | Op::Binary(_) | Op::Where | Op::Cast)
}

/// Schedules a verified graph.
pub fn schedule(g: &Graph) -> Program {
    let uses = g.use_counts();
    let output_vals: Vec<ValueId> = g.outputs.iter().map(|(_, v)| *v).collect();
    let mut consumer: Vec<Option<usize>> = vec![None; g.len()];
    for (i, n) in g.nodes().iter().enumerate() {
        for v in &n.inputs {
            consumer[v.index()] = Some(i);
        }
    }
    let scalar_const = |v: ValueId| matches!(g.node(v).op, Op::Const(_)) && g.ty(v).shape.is_empty();
    // Inlined into its consumer's elementwise kernel.
    let inline: Vec<bool> = (0..g.len())
        .map(|i| {
            let n = &g.nodes()[i];
            is_elementwise(&n.op)
                && uses[i] == 1
                && !output_vals.contains(&ValueId(i as u32))
                && consumer[i].is_some_and(|c| is_elementwise(&g.nodes()[c].op) && g.nodes()[c].ty.shape == n.ty.shape)
        })
        .collect();

    // Transposes of the last two axes read only as the second operand of products: the GEMM
    // reads the untransposed buffer with swapped strides instead.
    let swaps_last_two = |perm: &[usize]| {
        let r = perm.len();
        r >= 2 && perm[r - 2] == r - 1 && perm[r - 1] == r - 2 && perm[..r - 2].iter().enumerate().all(|(i, &p)| i == p)
    };
    let folded_t: Vec<bool> = g
        .nodes()
        .iter()
        .enumerate()
        .map(|(i, n)| {
            matches!(&n.op, Op::Transpose(perm) if swaps_last_two(perm))
                && !output_vals.contains(&ValueId(i as u32))
                && g.nodes().iter().all(|c| {
                    c.inputs.iter().enumerate().all(|(k, v)| v.index() != i || (k == 1 && matches!(c.op, Op::MatMul | Op::Gemm { .. })))
                })
        })
        .collect();
    let mut p = Program { name: g.name.clone(), files: g.files.clone(), buffers: Vec::new(), steps: Vec::new(), outputs: Vec::new() };
    let mut buf: Vec<Option<BufId>> = vec![None; g.len()];
    let new_buf = |p: &mut Program, ty: &tessera_ir::TensorType, storage: Storage| {
        p.buffers.push(Buffer { ty: ty.clone(), storage });
        p.buffers.len() - 1
    };
    // The result buffers of each multi-result node.
    let mut multi: std::collections::HashMap<usize, Vec<BufId>> = std::collections::HashMap::new();
    for (i, n) in g.nodes().iter().enumerate() {
        match &n.op {
            Op::Scan(s) => {
                // One buffer per result (read through `proj`, which gets no step).
                let tys: Vec<&tessera_ir::TensorType> = n.inputs.iter().map(|v| g.ty(*v)).collect();
                let results: Vec<BufId> =
                    tessera_ir::scan_results(s, &tys).unwrap_or_default().iter().map(|t| new_buf(&mut p, t, Storage::Arena)).collect();
                let ins = n.inputs.iter().filter_map(|v| buf[v.index()]).collect();
                let out = results.first().copied().unwrap_or_default();
                multi.insert(i, results.clone());
                // The body's spans index the enclosing file table.
                let mut body = schedule(&s.body);
                body.files = g.files.clone();
                let kernel = Kernel::Scan(Box::new(ScanKernel { op: (**s).clone(), body, results, fused: crate::scan::plan(s) }));
                p.steps.push(Step { kernel, out, ins, span: n.span, ops: 1 });
                continue;
            }
            Op::TopK { axis, .. } => {
                let tys: Vec<&tessera_ir::TensorType> = n.inputs.iter().map(|v| g.ty(*v)).collect();
                let results: Vec<BufId> =
                    tessera_ir::multi_results(&n.op, &tys).unwrap_or_default().iter().map(|t| new_buf(&mut p, t, Storage::Arena)).collect();
                let ins = n.inputs.iter().filter_map(|v| buf[v.index()]).collect();
                let out = results.first().copied().unwrap_or_default();
                multi.insert(i, results.clone());
                p.steps.push(Step { kernel: Kernel::TopK { axis: *axis, results }, out, ins, span: n.span, ops: 1 });
                continue;
            }
            Op::Route(r) => {
                let out = new_buf(&mut p, &n.ty, Storage::Arena);
                let ins = n.inputs.iter().filter_map(|v| buf[v.index()]).collect();
                let mut body = schedule(&r.body);
                body.files = g.files.clone();
                let kernel = Kernel::Route(Box::new(RouteKernel { op: (**r).clone(), body, ffn: crate::route::plan(r) }));
                p.steps.push(Step { kernel, out, ins, span: n.span, ops: 1 });
                buf[i] = Some(out);
                continue;
            }
            Op::Proj(k) => {
                buf[i] = multi.get(&n.inputs[0].index()).and_then(|r| r.get(*k)).copied();
                continue;
            }
            _ => {}
        }
        // A scalar constant read only by elementwise kernels lives in their code, unless it is
        // an output too (it needs a buffer then, or the output vanishes).
        let folded_scalar = scalar_const(ValueId(i as u32)) && uses[i] > 0 && all_consumers_elementwise(g, i);
        if folded_t[i] || inline[i] || (folded_scalar && !output_vals.contains(&ValueId(i as u32))) {
            continue;
        }
        let ins = |buf: &[Option<BufId>]| -> Vec<BufId> { n.inputs.iter().filter_map(|v| buf[v.index()]).collect() };
        let (kernel, storage) = match &n.op {
            Op::Input(name) => (None, Storage::Input(name.clone())),
            Op::Param(name, _) => (None, Storage::Param(name.clone())),
            Op::Reshape => (None, Storage::Alias(buf[n.inputs[0].index()].unwrap_or_default())),
            Op::Const(v) => (Some(Kernel::Fill(*v)), Storage::Arena),
            op @ Op::Iota { .. } => (Some(Kernel::Op(op.clone())), Storage::Arena),
            op if is_elementwise(op) => {
                let mut f = ScoreFn::default();
                let mut leaves: Vec<ValueId> = Vec::new();
                let mut ops = 0;
                build(g, ValueId(i as u32), &inline, &scalar_const, &mut f, &mut leaves, &mut ops, true);
                let out = new_buf(&mut p, &n.ty, Storage::Arena);
                let ins = leaves.iter().filter_map(|v| buf[v.index()]).collect();
                p.steps.push(Step { kernel: Kernel::Elementwise(f), out, ins, span: n.span, ops });
                buf[i] = Some(out);
                continue;
            }
            Op::MatMul | Op::Gemm { .. } => {
                let (bias, act, residual) = match n.op {
                    Op::Gemm { bias, act, residual } => (bias, act, residual),
                    _ => (false, None, false),
                };
                let b = n.inputs[1];
                let trans_b = folded_t[b.index()];
                let mut ins = ins(&buf);
                if trans_b {
                    if let Some(src) = g.node(b).inputs.first().and_then(|v| buf[v.index()]) {
                        ins.insert(1, src);
                    }
                }
                let out = new_buf(&mut p, &n.ty, Storage::Arena);
                p.steps.push(Step { kernel: Kernel::Gemm { trans_b, bias, act, residual }, out, ins, span: n.span, ops: 1 });
                buf[i] = Some(out);
                continue;
            }
            // Fused ops and the ops that move data are one kernel each, holding the op.
            op @ (Op::Ffn { .. }
            | Op::Norm { .. }
            | Op::Softmax { .. }
            | Op::Attention(_)
            | Op::Reduce { .. }
            | Op::Gather { .. }
            | Op::ScatterAdd { .. }
            | Op::Transpose(_)
            | Op::Broadcast
            | Op::Slice { .. }
            | Op::Concat { .. }
            | Op::Cumsum { .. }
            | Op::Segment { .. }
            | Op::Window { .. }
            | Op::Rfft { .. }
            | Op::Irfft { .. }) => (Some(Kernel::Op(op.clone())), Storage::Arena),
            Op::Fft { axes, inverse } => {
                // One step per axis, each reading the previous one's buffer.
                let mut from = ins(&buf);
                for (k, &axis) in axes.iter().enumerate() {
                    let out = new_buf(&mut p, &n.ty, Storage::Arena);
                    p.steps.push(Step {
                        kernel: Kernel::Fft { axis, inverse: *inverse },
                        out,
                        ins: from,
                        span: n.span,
                        ops: usize::from(k == 0),
                    });
                    from = vec![out];
                }
                buf[i] = from.first().copied();
                continue;
            }
            _ => (None, Storage::Arena),
        };
        let out = new_buf(&mut p, &n.ty, storage);
        if let Some(kernel) = kernel {
            let ins = ins(&buf);
            p.steps.push(Step { kernel, out, ins, span: n.span, ops: 1 });
        }
        buf[i] = Some(out);
    }
    p.outputs = g.outputs.iter().filter_map(|(name, v)| Some((name.clone(), buf[v.index()]?))).collect();
    mark_derived(&mut p);
    p
}

/// Steps that read only parameters (and what was derived from them) and have a fixed shape
/// write `Derived` buffers: merged weights are concatenated once, not at every run.
fn mark_derived(p: &mut Program) {
    let outputs: Vec<BufId> = p.outputs.iter().map(|(_, b)| p.root(*b)).collect();
    for s in 0..p.steps.len() {
        let step = &p.steps[s];
        let fixed = p.buffers[step.out].ty.shape.iter().all(|d| d.as_known().is_some());
        let from_params =
            !step.ins.is_empty() && step.ins.iter().all(|&b| matches!(p.buffers[p.root(b)].storage, Storage::Param(_) | Storage::Derived));
        if fixed && from_params && p.buffers[step.out].storage == Storage::Arena && !outputs.contains(&step.out) {
            let out = step.out;
            p.buffers[out].storage = Storage::Derived;
        }
    }
}

fn all_consumers_elementwise(g: &Graph, i: usize) -> bool {
    g.nodes().iter().all(|n| !n.inputs.iter().any(|v| v.index() == i) || is_elementwise(&n.op))
}

/// Appends the scalar program of value `v` to `f`: inlined elementwise ops recursively, scalar
/// constants as constants, anything else as a leaf (a kernel input). Returns its node index.
#[allow(clippy::too_many_arguments)]
fn build(
    g: &Graph,
    v: ValueId,
    inline: &[bool],
    scalar_const: &dyn Fn(ValueId) -> bool,
    f: &mut ScoreFn,
    leaves: &mut Vec<ValueId>,
    ops: &mut usize,
    root: bool,
) -> u32 {
    let n = g.node(v);
    let ty = n.ty.dtype;
    let node = if let (Op::Const(c), true) = (&n.op, scalar_const(v)) {
        SNode::Const(*c)
    } else if root || inline[v.index()] {
        *ops += 1;
        let mut kid = |k: usize| build(g, n.inputs[k], inline, scalar_const, f, leaves, ops, false);
        match &n.op {
            Op::Unary(u) => SNode::Unary(*u, kid(0)),
            Op::Binary(b) => {
                let (x, y) = (kid(0), kid(1));
                SNode::Binary(*b, x, y)
            }
            Op::Where => {
                let (c, a, b) = (kid(0), kid(1), kid(2));
                SNode::Where(c, a, b)
            }
            _ => SNode::Cast(kid(0)),
        }
    } else {
        let k = match leaves.iter().position(|l| *l == v) {
            Some(k) => k,
            None => {
                leaves.push(v);
                leaves.len() - 1
            }
        };
        SNode::Leaf(k as u32)
    };
    f.nodes.push((node, if matches!(ty, DType::F32 | DType::I64 | DType::Bool) { ty } else { DType::F32 }));
    f.nodes.len() as u32 - 1
}

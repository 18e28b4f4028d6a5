//! LLVM IR (text) for the body of a fused scan ([`crate::scan::FusedScan`]): one position's
//! values over a tile of state elements, with the ABI of [`crate::cpu::codegen::ScanEvalFn`]
//! (the tile's slots, `n` elements each, leaves filled by the executor).
//!
//! The executor's own version computes one node at a time over the whole tile, each into its
//! slot. Here the nodes between two reductions are one loop over the tile: their values stay
//! in registers, and a value is stored to its slot only where a result, a reduction or a later
//! loop reads it. The loop's accesses are marked parallel (each iteration touches element `e`
//! of each slot only), so LLVM vectorizes it without checking that the slots overlap.
//!
//! Semantics are those of the executor's `eval` (f32, the `cpu/vmath.rs` forms of exp, the
//! logistic function, tanh, SiLU and both GELUs; the interpreter's definition of the others).

use super::emit::{f32c, unary_f32, Body};
use crate::cpu::codegen::TextKernels;
use crate::scan::{FusedScan, Node, Source};
use tessera_ir::{BinaryOp, ReduceOp, UnaryOp, BINARY_OPS, UNARY_OPS};

/// The loop (phase) each node is computed in: a reduction starts a new one after its operand's.
/// Leaves and aliases are in phase 0 (they are read from their slots in any phase).
fn phases(nodes: &[Node]) -> Vec<usize> {
    let mut p = vec![0usize; nodes.len()];
    for (i, n) in nodes.iter().enumerate() {
        let of = |k: usize| p.get(k).copied().unwrap_or(0);
        p[i] = match *n {
            Node::Leaf(..) | Node::Alias => 0,
            Node::Unary(_, a) => of(a),
            Node::Binary(_, a, b) => of(a).max(of(b)),
            Node::Where(c, a, b) => of(c).max(of(a)).max(of(b)),
            Node::Reduce(_, a) => of(a) + 1,
        };
    }
    p
}

/// The operands of a node.
fn operands(n: &Node) -> Vec<usize> {
    match *n {
        Node::Leaf(..) | Node::Alias => vec![],
        Node::Unary(_, a) | Node::Reduce(_, a) => vec![a],
        Node::Binary(_, a, b) => vec![a, b],
        Node::Where(c, a, b) => vec![c, a, b],
    }
}

/// The scan-body kernel of `f`, named `name`: `(slots, n, inner)`.
pub fn scan_eval(name: &str, f: &FusedScan) -> Result<String, String> {
    let nodes = &f.nodes;
    let phase = phases(nodes);
    // A computed value is stored where a result, a reduction or another loop reads it.
    let mut stored = vec![false; nodes.len()];
    for &o in &f.outputs {
        if let Some(s) = stored.get_mut(o) {
            *s = true;
        }
    }
    for (i, n) in nodes.iter().enumerate() {
        for k in operands(n) {
            if k >= i {
                return Err(format!("scan body node {i} reads node {k}, not before it"));
            }
            if matches!(n, Node::Reduce(..)) || phase[k] != phase[i] {
                stored[k] = true;
            }
        }
    }
    let mut b = Body::new();
    let mut meta = String::new();
    b.line("%go = icmp sgt i64 %n, 0");
    b.line("br i1 %go, label %start, label %exit");
    b.label("start");
    // Slot k starts at element k·n.
    for k in 0..nodes.len() {
        b.line(format!("%base{k} = mul i64 %n, {k}"));
    }
    let last = phase.iter().copied().max().unwrap_or(0);
    let mut from = "start".to_string();
    for p in 0..=last {
        // The reductions that open this phase, each over rows of `inner`, replicated.
        for (i, n) in nodes.iter().enumerate().filter(|(i, _)| phase[*i] == p) {
            if let Node::Reduce(op, a) = *n {
                reduce(&mut b, &mut from, i, op, a);
            }
        }
        let here: Vec<usize> =
            (0..nodes.len()).filter(|&i| phase[i] == p && !matches!(nodes[i], Node::Leaf(..) | Node::Alias | Node::Reduce(..))).collect();
        if here.is_empty() {
            continue;
        }
        let l = format!("p{p}");
        // Metadata ids unique to the kernel (see `TextKernels::MD`).
        let group = format!("!{}{:04}", TextKernels::MD, 2 * p);
        let loop_md = format!("!{}{:04}", TextKernels::MD, 2 * p + 1);
        meta.push_str(&format!(
            "{group} = distinct !{{}}\n{loop_md} = distinct !{{{loop_md}, !{{!\"llvm.loop.parallel_accesses\", {group}}}}}\n"
        ));
        b.line(format!("br label %{l}"));
        b.label(&l);
        b.line(format!("%{l}.e = phi i64 [ 0, %{from} ], [ %{l}.en, %{l} ]"));
        let mut val: Vec<Option<String>> = vec![None; nodes.len()];
        for &i in &here {
            let mut get = |b: &mut Body, k: usize| -> String {
                if let Some(v) = &val[k] {
                    return v.clone();
                }
                if let Node::Leaf(Source::Const(c), _) = nodes[k] {
                    return f32c(c);
                }
                let at = b.let_(format!("add i64 %base{k}, %{l}.e"));
                let ptr = b.let_(format!("getelementptr inbounds float, ptr %slots, i64 {at}"));
                let v = b.let_(format!("load float, ptr {ptr}, !llvm.access.group {group}"));
                val[k] = Some(v.clone());
                v
            };
            let v = match nodes[i] {
                Node::Unary(u, a) => {
                    let x = get(&mut b, a);
                    unary(&mut b, u, &x)
                }
                Node::Binary(op, x, y) => {
                    let (x, y) = (get(&mut b, x), get(&mut b, y));
                    binary(&mut b, op, &x, &y)
                }
                Node::Where(c, x, y) => {
                    let (c, x, y) = (get(&mut b, c), get(&mut b, x), get(&mut b, y));
                    let t = b.let_(format!("fcmp une float {c}, 0.0"));
                    b.let_(format!("select i1 {t}, float {x}, float {y}"))
                }
                _ => continue,
            };
            if stored[i] {
                let at = b.let_(format!("add i64 %base{i}, %{l}.e"));
                let ptr = b.let_(format!("getelementptr inbounds float, ptr %slots, i64 {at}"));
                b.line(format!("store float {v}, ptr {ptr}, !llvm.access.group {group}"));
            }
            val[i] = Some(v);
        }
        b.line(format!("%{l}.en = add nuw nsw i64 %{l}.e, 1"));
        b.line(format!("%{l}.more = icmp slt i64 %{l}.en, %n"));
        b.line(format!("br i1 %{l}.more, label %{l}, label %{l}.done, !llvm.loop {loop_md}"));
        b.label(&format!("{l}.done"));
        from = format!("{l}.done");
    }
    b.line("br label %exit");
    b.label("exit");
    b.line("ret void");
    Ok(format!("define void @{name}(ptr noalias %slots, i64 %n, i64 %inner) #0 {{\nentry:\n{}}}\n{meta}", b.text))
}

/// Reduction node `i` of slot `a` over rows of `inner` elements, each row's value written to
/// all its elements of slot `i` (sums and means in f32 with `reassoc`, max and min
/// NaN-propagating). `from` is the block control comes from, and becomes the one after.
fn reduce(b: &mut Body, from: &mut String, i: usize, op: ReduceOp, a: usize) {
    let r = format!("r{i}");
    let (init, step) = match op {
        ReduceOp::Sum | ReduceOp::Mean => ("0.0".to_string(), format!("fadd reassoc float %{r}.acc, %{r}.x")),
        ReduceOp::Max => (f32c(f32::NEG_INFINITY), format!("call float @llvm.maximum.f32(float %{r}.acc, float %{r}.x)")),
        ReduceOp::Min => (f32c(f32::INFINITY), format!("call float @llvm.minimum.f32(float %{r}.acc, float %{r}.x)")),
    };
    b.line(format!("%{r}.ok = icmp sgt i64 %inner, 0"));
    b.line(format!("%{r}.rows = sdiv i64 %n, %inner"));
    b.line(format!("%{r}.some = icmp sgt i64 %{r}.rows, 0"));
    b.line(format!("%{r}.go = and i1 %{r}.ok, %{r}.some"));
    b.line(format!("br i1 %{r}.go, label %{r}.row, label %{r}.done"));
    b.label(&format!("{r}.row"));
    b.line(format!("%{r}.q = phi i64 [ 0, %{from} ], [ %{r}.qn, %{r}.rowend ]"));
    b.line(format!("%{r}.off = mul i64 %{r}.q, %inner"));
    b.line(format!("%{r}.src = add i64 %base{a}, %{r}.off"));
    b.line(format!("%{r}.dst = add i64 %base{i}, %{r}.off"));
    b.line(format!("%{r}.xs = getelementptr inbounds float, ptr %slots, i64 %{r}.src"));
    b.line(format!("%{r}.ys = getelementptr inbounds float, ptr %slots, i64 %{r}.dst"));
    b.line(format!("br label %{r}.sum"));
    b.label(&format!("{r}.sum"));
    b.line(format!("%{r}.j = phi i64 [ 0, %{r}.row ], [ %{r}.jn, %{r}.sum ]"));
    b.line(format!("%{r}.acc = phi float [ {init}, %{r}.row ], [ %{r}.acc.n, %{r}.sum ]"));
    b.line(format!("%{r}.p = getelementptr inbounds float, ptr %{r}.xs, i64 %{r}.j"));
    b.line(format!("%{r}.x = load float, ptr %{r}.p"));
    b.line(format!("%{r}.acc.n = {step}"));
    b.line(format!("%{r}.jn = add nuw nsw i64 %{r}.j, 1"));
    b.line(format!("%{r}.jmore = icmp slt i64 %{r}.jn, %inner"));
    b.line(format!("br i1 %{r}.jmore, label %{r}.sum, label %{r}.summed"));
    b.label(&format!("{r}.summed"));
    let v = if op == ReduceOp::Mean {
        b.line(format!("%{r}.cnt = sitofp i64 %inner to float"));
        b.line(format!("%{r}.mean = fdiv float %{r}.acc.n, %{r}.cnt"));
        format!("%{r}.mean")
    } else {
        format!("%{r}.acc.n")
    };
    b.line(format!("br label %{r}.fill"));
    b.label(&format!("{r}.fill"));
    b.line(format!("%{r}.k = phi i64 [ 0, %{r}.summed ], [ %{r}.kn, %{r}.fill ]"));
    b.line(format!("%{r}.yp = getelementptr inbounds float, ptr %{r}.ys, i64 %{r}.k"));
    b.line(format!("store float {v}, ptr %{r}.yp"));
    b.line(format!("%{r}.kn = add nuw nsw i64 %{r}.k, 1"));
    b.line(format!("%{r}.kmore = icmp slt i64 %{r}.kn, %inner"));
    b.line(format!("%{r}.qn = add nuw nsw i64 %{r}.q, 1"));
    b.line(format!("%{r}.qmore = icmp slt i64 %{r}.qn, %{r}.rows"));
    b.line(format!("br i1 %{r}.kmore, label %{r}.fill, label %{r}.rowend"));
    b.label(&format!("{r}.rowend"));
    b.line(format!("br i1 %{r}.qmore, label %{r}.row, label %{r}.done"));
    b.label(&format!("{r}.done"));
    *from = format!("{r}.done");
}

/// `u` of the f32 value `x`, as the executor's `eval` computes it.
fn unary(b: &mut Body, u: UnaryOp, x: &str) -> String {
    match u {
        UnaryOp::Neg => b.let_(format!("fneg float {x}")),
        UnaryOp::Abs => b.let_(format!("call float @llvm.fabs.f32(float {x})")),
        UnaryOp::Sqrt => b.let_(format!("call float @llvm.sqrt.f32(float {x})")),
        UnaryOp::Rsqrt => {
            let r = b.let_(format!("call float @llvm.sqrt.f32(float {x})"));
            b.let_(format!("fdiv float 1.0, {r}"))
        }
        UnaryOp::Not => {
            let c = b.let_(format!("fcmp oeq float {x}, 0.0"));
            b.let_(format!("uitofp i1 {c} to float"))
        }
        UnaryOp::Relu => {
            let c = b.let_(format!("fcmp olt float {x}, 0.0"));
            b.let_(format!("select i1 {c}, float 0.0, float {x}"))
        }
        _ => match unary_f32(b, u, x) {
            Some(y) => y,
            None => {
                let code = UNARY_OPS.iter().position(|(o, _)| *o == u).unwrap_or(usize::MAX);
                let d = b.let_(format!("fpext float {x} to double"));
                let y = b.let_(format!("call double @tsr_unary(i64 {code}, double {d})"));
                b.let_(format!("fptrunc double {y} to float"))
            }
        },
    }
}

/// `op` of the f32 values `x` and `y`, as the executor's `eval` computes it.
fn binary(b: &mut Body, op: BinaryOp, x: &str, y: &str) -> String {
    let cmp = |b: &mut Body, cc: &str| {
        let c = b.let_(format!("fcmp {cc} float {x}, {y}"));
        b.let_(format!("uitofp i1 {c} to float"))
    };
    match op {
        BinaryOp::Add => b.let_(format!("fadd float {x}, {y}")),
        BinaryOp::Sub => b.let_(format!("fsub float {x}, {y}")),
        BinaryOp::Mul => b.let_(format!("fmul float {x}, {y}")),
        BinaryOp::Div => b.let_(format!("fdiv float {x}, {y}")),
        BinaryOp::Max => b.let_(format!("call float @llvm.maximum.f32(float {x}, float {y})")),
        BinaryOp::Min => b.let_(format!("call float @llvm.minimum.f32(float {x}, float {y})")),
        BinaryOp::Eq => cmp(b, "oeq"),
        BinaryOp::Ne => cmp(b, "une"),
        BinaryOp::Lt => cmp(b, "olt"),
        BinaryOp::Le => cmp(b, "ole"),
        BinaryOp::Gt => cmp(b, "ogt"),
        BinaryOp::Ge => cmp(b, "oge"),
        BinaryOp::And | BinaryOp::Or => {
            let (c1, c2) = (b.let_(format!("fcmp une float {x}, 0.0")), b.let_(format!("fcmp une float {y}, 0.0")));
            let c = b.let_(format!("{} i1 {c1}, {c2}", if op == BinaryOp::And { "and" } else { "or" }));
            b.let_(format!("uitofp i1 {c} to float"))
        }
        BinaryOp::Rem | BinaryOp::Pow => {
            let code = BINARY_OPS.iter().position(|(o, _)| *o == op).unwrap_or(usize::MAX);
            let (p, q) = (b.let_(format!("fpext float {x} to double")), b.let_(format!("fpext float {y} to double")));
            let r = b.let_(format!("call double @tsr_binary(i64 {code}, double {p}, double {q}, i64 0)"));
            b.let_(format!("fptrunc double {r} to float"))
        }
    }
}

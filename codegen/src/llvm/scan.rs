//! LLVM IR (text) for a fused scan over one tile of state elements, every position
//! ([`crate::cpu::codegen::ScanTileFn`]), laid out as [`TileLayout`] says.
//!
//! The executor's own kernel gathers each position's operands into the tile's slots and
//! computes one node at a time over the tile, each into its slot. Here each phase (the nodes
//! between two reductions) is one loop over the tile's elements whose values stay in
//! registers; sliced operands are read where they lie. The loops' accesses are marked
//! parallel (each iteration touches element `e` of each slot only), so LLVM vectorizes them
//! without checking that the slots overlap. The kernel prefers 512-bit vectors where the CPU
//! has them (`prefer-vector-width`; LLVM otherwise keeps to 256 bits): a run along the last
//! axis is often short (Mamba's state rows are 16 wide), and one vector per run halves the
//! loop's overhead.
//!
//! Semantics are those of the executor's `eval` (f32, the `cpu/vmath.rs` forms of exp, the
//! logistic function, tanh, SiLU and both GELUs; the interpreter's definition of the others).

use super::emit::{elem, f32c, plain_binary, plain_unary, unary_f32, Body};
use crate::cpu::codegen::TextKernels;
use crate::scan::{node_operands as operands, FusedScan, Node, Source, TileLayout};
use tessera_ir::{BinaryOp, DType, ReduceOp, UnaryOp, BINARY_OPS, UNARY_OPS};

/// The f32 value of the element of type `ty` at `ptr`.
fn load_as_f32(b: &mut Body, ty: DType, ptr: &str, group: &str) -> String {
    let x = b.let_(format!("load {}, ptr {ptr}, !llvm.access.group {group}", elem(ty)));
    match ty {
        DType::F32 => x,
        DType::I64 => b.let_(format!("sitofp i64 {x} to float")),
        DType::Bool => b.let_(format!("uitofp i8 {x} to float")),
    }
}

/// Stores the f32 value `v` as an element of type `ty` at `ptr` (as the executor's `store`).
fn store_f32_as(b: &mut Body, ty: DType, v: &str, ptr: &str) {
    let x = match ty {
        DType::F32 => v.to_string(),
        DType::I64 => b.let_(format!("call i64 @llvm.fptosi.sat.i64.f32(float {v})")),
        DType::Bool => {
            let c = b.let_(format!("fcmp une float {v}, 0.0"));
            b.let_(format!("zext i1 {c} to i8"))
        }
    };
    b.line(format!("store {} {x}, ptr {ptr}", elem(ty)));
}

/// The kernel of fused scan `f` over one tile, every position ([`crate::cpu::codegen::ScanTileFn`]),
/// named `name`: `(slots, n, inner, len, reverse, nseg, segs, ptrs, offs, steps, lasts)`.
///
/// The executor has laid out the tile (`segs`: `nseg` runs along `I`'s last axis, each `(first
/// element, length, its last coordinate)`), filled the slots of constants, invariants and the
/// initial states, and computes nothing per position: here, at each position `t`, each phase
/// (the nodes between two reductions) is one loop over the segments' elements. A sliced
/// operand's element is read where it lies (`ptrs[k] + t·steps[k] + offs[k·nseg + s] +
/// j·lasts[k]`, node `k`'s entries), values stay in registers and are stored to their slots
/// only where a result, a reduction or a later phase reads them; then the per-step results
/// are written (entry `nodes + k` of the tables) and each new state is copied to its state's
/// slot. The final states are the executor's to store.
pub fn scan_tile(name: &str, f: &FusedScan, t: &TileLayout) -> Result<String, String> {
    let nodes = &f.nodes;
    let ny = t.ny;
    let sliced = |k: usize| t.sliced[k];
    let mut b = Body::new();
    let mut meta = String::new();
    let mut md = 0;
    let mut fresh_md = |meta: &mut String| {
        // Metadata ids unique to the kernel (see `TextKernels::MD`).
        let (group, lp) = (format!("!{}{:04}", TextKernels::MD, md), format!("!{}{:04}", TextKernels::MD, md + 1));
        md += 2;
        meta.push_str(&format!("{group} = distinct !{{}}\n{lp} = distinct !{{{lp}, !{{!\"llvm.loop.parallel_accesses\", {group}}}}}\n"));
        (group, lp)
    };
    b.line("%npos = icmp sgt i64 %n, 0");
    b.line("%lpos = icmp sgt i64 %len, 0");
    b.line("%go = and i1 %npos, %lpos");
    b.line("br i1 %go, label %start, label %exit");
    b.label("start");
    // Slot k starts at element k·n.
    for k in 0..nodes.len() {
        b.line(format!("%base{k} = mul i64 %n, {k}"));
    }
    // The tables' entries of each sliced operand and per-step result, read once.
    let tabled: Vec<usize> = (0..nodes.len()).filter(|&k| sliced(k)).chain((0..ny).map(|k| nodes.len() + k)).collect();
    for &k in &tabled {
        b.line(format!("%pp{k} = getelementptr inbounds ptr, ptr %ptrs, i64 {k}"));
        b.line(format!("%ptr{k} = load ptr, ptr %pp{k}"));
        b.line(format!("%sp{k} = getelementptr inbounds i64, ptr %steps, i64 {k}"));
        b.line(format!("%step{k} = load i64, ptr %sp{k}"));
        b.line(format!("%lp{k} = getelementptr inbounds i64, ptr %lasts, i64 {k}"));
        b.line(format!("%last{k} = load i64, ptr %lp{k}"));
        b.line(format!("%orow{k} = mul i64 %nseg, {k}"));
    }
    b.line("%lenm1 = sub i64 %len, 1");
    b.line("%rev = icmp ne i64 %reverse, 0");
    b.line("br label %pos");
    b.label("pos");
    b.line("%ts = phi i64 [ 0, %start ], [ %ts.n, %pos.end ]");
    b.line("%tr = sub i64 %lenm1, %ts");
    b.line("%t = select i1 %rev, i64 %tr, i64 %ts");
    let mut from = "pos".to_string();
    // Opens a loop over the segments' elements (labels `{l}.seg`, `{l}.j`), with each tabled
    // entry in `entries` based at this position and segment (`%{l}.at{k}`: its element at
    // `j` is `%{l}.at{k} + j·last{k}`).
    let open = |b: &mut Body, from: &str, l: &str, entries: &[usize]| {
        b.line(format!("br label %{l}.seg"));
        b.label(&format!("{l}.seg"));
        b.line(format!("%{l}.s = phi i64 [ 0, %{from} ], [ %{l}.sn, %{l}.segend ]"));
        b.line(format!("%{l}.s3 = mul i64 %{l}.s, 3"));
        b.line(format!("%{l}.e0p = getelementptr inbounds i64, ptr %segs, i64 %{l}.s3"));
        b.line(format!("%{l}.e0 = load i64, ptr %{l}.e0p"));
        b.line(format!("%{l}.lenp = getelementptr inbounds i64, ptr %{l}.e0p, i64 1"));
        b.line(format!("%{l}.slen = load i64, ptr %{l}.lenp"));
        b.line(format!("%{l}.c0p = getelementptr inbounds i64, ptr %{l}.e0p, i64 2"));
        b.line(format!("%{l}.c0 = load i64, ptr %{l}.c0p"));
        for &k in entries {
            b.line(format!("%{l}.oi{k} = add i64 %orow{k}, %{l}.s"));
            b.line(format!("%{l}.op{k} = getelementptr inbounds i64, ptr %offs, i64 %{l}.oi{k}"));
            b.line(format!("%{l}.off{k} = load i64, ptr %{l}.op{k}"));
            b.line(format!("%{l}.ts{k} = mul i64 %t, %step{k}"));
            b.line(format!("%{l}.at{k} = add i64 %{l}.ts{k}, %{l}.off{k}"));
        }
    };
    // Opens the loop over the segment's elements, after what `open` and its caller emitted.
    let open_j = |b: &mut Body, l: &str| {
        b.line(format!("br label %{l}.pre"));
        b.label(&format!("{l}.pre"));
        b.line(format!("%{l}.any = icmp sgt i64 %{l}.slen, 0"));
        b.line(format!("br i1 %{l}.any, label %{l}.j, label %{l}.segend"));
        b.label(&format!("{l}.j"));
        b.line(format!("%{l}.jj = phi i64 [ 0, %{l}.pre ], [ %{l}.jn, %{l}.latch ]"));
        b.line(format!("%{l}.e = add i64 %{l}.e0, %{l}.jj"));
    };
    let close = |b: &mut Body, l: &str, loop_md: &str| {
        b.line(format!("br label %{l}.latch"));
        b.label(&format!("{l}.latch"));
        b.line(format!("%{l}.jn = add nuw nsw i64 %{l}.jj, 1"));
        b.line(format!("%{l}.jmore = icmp slt i64 %{l}.jn, %{l}.slen"));
        b.line(format!("br i1 %{l}.jmore, label %{l}.j, label %{l}.segend, !llvm.loop {loop_md}"));
        b.label(&format!("{l}.segend"));
        b.line(format!("%{l}.sn = add nuw nsw i64 %{l}.s, 1"));
        b.line(format!("%{l}.smore = icmp slt i64 %{l}.sn, %nseg"));
        b.line(format!("br i1 %{l}.smore, label %{l}.seg, label %{l}.done"));
        b.label(&format!("{l}.done"));
    };
    // Entries that do not move along `I`'s last axis have stride 0 there, a constant: LLVM
    // then vectorizes the loop with a broadcast, where a stride read at run time would keep it
    // scalar unless every stride is 1.
    let moves = &t.moves;
    // Element `j` of a tabled entry: its address.
    let at = |b: &mut Body, l: &str, k: usize, ty: DType| -> String {
        let idx = if moves[k] {
            let jl = b.let_(format!("mul i64 %{l}.jj, %last{k}"));
            b.let_(format!("add i64 %{l}.at{k}, {jl}"))
        } else {
            format!("%{l}.at{k}")
        };
        b.let_(format!("getelementptr inbounds {}, ptr %ptr{k}, i64 {idx}", elem(ty)))
    };
    let slot_ptr = |b: &mut Body, l: &str, k: usize| -> String {
        let i = b.let_(format!("add i64 %base{k}, %{l}.e"));
        b.let_(format!("getelementptr inbounds float, ptr %slots, i64 {i}"))
    };
    for (p, here) in t.work.iter().enumerate() {
        // The reductions that open this phase, each over rows of `inner`, replicated.
        for (i, n) in nodes.iter().enumerate().filter(|(i, _)| t.phase[*i] == p) {
            if let Node::Reduce(op, a) = *n {
                reduce(&mut b, &mut from, i, op, a);
            }
        }
        if here.is_empty() {
            continue;
        }
        let l = format!("p{p}");
        let (group, loop_md) = fresh_md(&mut meta);
        let mut entries: Vec<usize> = here.iter().flat_map(|&i| operands(&nodes[i])).filter(|&k| sliced(k)).collect();
        entries.extend(here.iter().copied().filter(|&i| sliced(i)));
        entries.sort_unstable();
        entries.dedup();
        open(&mut b, &from, &l, &entries);
        open_j(&mut b, &l);
        let mut val: Vec<Option<String>> = vec![None; nodes.len()];
        for &i in here {
            let mut get = |b: &mut Body, k: usize| -> Result<String, String> {
                if let Some(v) = &val[k] {
                    return Ok(v.clone());
                }
                let v = match nodes[k] {
                    Node::Leaf(Source::Const(c), _) => return Ok(f32c(c)),
                    _ if sliced(k) => {
                        let ty = t.leaf_types[k];
                        let ptr = at(b, &l, k, ty);
                        load_as_f32(b, ty, &ptr, &group)
                    }
                    _ => {
                        let ptr = slot_ptr(b, &l, k);
                        b.let_(format!("load float, ptr {ptr}, !llvm.access.group {group}"))
                    }
                };
                val[k] = Some(v.clone());
                Ok(v)
            };
            let v = match nodes[i] {
                Node::Unary(u, a) => {
                    let x = get(&mut b, a)?;
                    unary(&mut b, u, &x)
                }
                Node::Binary(op, x, y) => {
                    let (x, y) = (get(&mut b, x)?, get(&mut b, y)?);
                    binary(&mut b, op, &x, &y)
                }
                Node::Where(c, x, y) => {
                    let (c, x, y) = (get(&mut b, c)?, get(&mut b, x)?, get(&mut b, y)?);
                    let t = b.let_(format!("fcmp une float {c}, 0.0"));
                    b.let_(format!("select i1 {t}, float {x}, float {y}"))
                }
                // A sliced operand a reduction or a result reads from its slot.
                _ => get(&mut b, i)?,
            };
            if t.stored[i] {
                let ptr = slot_ptr(&mut b, &l, i);
                b.line(format!("store float {v}, ptr {ptr}, !llvm.access.group {group}"));
            }
            val[i] = Some(v);
        }
        close(&mut b, &l, &loop_md);
        from = format!("{l}.done");
    }
    // The per-step results where they lie, then each new state into its state's slot.
    let (group, loop_md) = fresh_md(&mut meta);
    let outs: Vec<usize> = (0..ny).map(|k| nodes.len() + k).collect();
    open(&mut b, &from, "out", &outs);
    let whole = &t.whole;
    let result_type = |k: usize| t.result_types.get(k).copied().ok_or(format!("no type for result {k}"));
    // A reduced result: once per row, from its first element, where the segment starts a row.
    for k in (0..ny).filter(|&k| !whole[k]) {
        let ty = result_type(k)?;
        let go = b.let_("icmp eq i64 %out.c0, 0");
        let some = b.let_("icmp sgt i64 %out.slen, 0");
        let both = b.let_(format!("and i1 {go}, {some}"));
        b.line(format!("br i1 {both}, label %out.r{k}, label %out.r{k}.no"));
        b.label(&format!("out.r{k}"));
        let i = b.let_(format!("add i64 %base{}, %out.e0", f.outputs[k]));
        let src = b.let_(format!("getelementptr inbounds float, ptr %slots, i64 {i}"));
        let v = b.let_(format!("load float, ptr {src}"));
        let dst = b.let_(format!("getelementptr inbounds {}, ptr %ptr{}, i64 %out.at{}", elem(ty), nodes.len() + k, nodes.len() + k));
        store_f32_as(&mut b, ty, &v, &dst);
        b.line(format!("br label %out.r{k}.no"));
        b.label(&format!("out.r{k}.no"));
    }
    open_j(&mut b, "out");
    for k in (0..ny).filter(|&k| whole[k]) {
        let ty = result_type(k)?;
        let src = slot_ptr(&mut b, "out", f.outputs[k]);
        let v = b.let_(format!("load float, ptr {src}, !llvm.access.group {group}"));
        let dst = at(&mut b, "out", nodes.len() + k, ty);
        store_f32_as(&mut b, ty, &v, &dst);
    }
    for (k, to) in t.state_slot.iter().enumerate() {
        let from_slot = f.outputs[ny + k];
        if let Some(to) = *to {
            if to != from_slot {
                let src = slot_ptr(&mut b, "out", from_slot);
                let v = b.let_(format!("load float, ptr {src}, !llvm.access.group {group}"));
                let dst = slot_ptr(&mut b, "out", to);
                b.line(format!("store float {v}, ptr {dst}, !llvm.access.group {group}"));
            }
        }
    }
    close(&mut b, "out", &loop_md);
    b.line("br label %pos.end");
    b.label("pos.end");
    b.line("%ts.n = add nuw nsw i64 %ts, 1");
    b.line("%ts.more = icmp slt i64 %ts.n, %len");
    b.line("br i1 %ts.more, label %pos, label %exit");
    b.label("exit");
    b.line("ret void");
    Ok(format!(
        "define void @{name}(ptr noalias %slots, i64 %n, i64 %inner, i64 %len, i64 %reverse, i64 %nseg, ptr noalias %segs, ptr noalias %ptrs, ptr noalias %offs, ptr noalias %steps, ptr noalias %lasts) #2 {{\nentry:\n{}}}\n{meta}",
        b.text
    ))
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
    match plain_unary(b, u, x, "float") {
        Some(y) => y,
        None => match unary_f32(b, u, x) {
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
    match plain_binary(b, op, x, y, "float") {
        Some(v) => v,
        // Rem and Pow: the interpreter's helper, in f64.
        None => {
            let code = BINARY_OPS.iter().position(|(o, _)| *o == op).unwrap_or(usize::MAX);
            let (p, q) = (b.let_(format!("fpext float {x} to double")), b.let_(format!("fpext float {y} to double")));
            let r = b.let_(format!("call double @tsr_binary(i64 {code}, double {p}, double {q}, i64 0)"));
            b.let_(format!("fptrunc double {r} to float"))
        }
    }
}

//! MLIR (text) for a fused scan over one tile of state elements, every position
//! ([`crate::cpu::codegen::ScanTileFn`]), laid out as [`TileLayout`] says: the LLVM backend's
//! kernel (`crate::llvm`'s `scan.rs`) written with `scf` loops over 1-D memrefs. Each phase
//! (the nodes between two reductions) is one `scf.for` over a segment's elements whose values
//! stay in SSA registers, reading sliced operands where they lie; a reduction is an `scf.for`
//! with its accumulator as `iter_args` (sums with `reassoc`).
//!
//! Every memref is 1-D with unit stride over a raw pointer, its size a large constant (MLIR
//! does not check bounds; the executor's tables keep every index inside its tensor). Semantics
//! are the executor's `eval` (f32; exp, the logistic function, tanh, SiLU and both GELUs as
//! `emit.rs`'s f32 forms; the interpreter's definition of the others).

use super::emit::{elem, fptosi_sat, plain_binary, plain_unary, unary_f32, Body};
use crate::scan::{node_operands, FusedScan, Node, Source, TileLayout};
use tessera_ir::{BinaryOp, DType, ReduceOp, UnaryOp, BINARY_OPS, UNARY_OPS};

/// The size given to every memref: larger than any tensor.
const HUGE: i64 = 1 << 44;

/// The f32 value of an element of type `ty` loaded as `x`.
fn to_f32(b: &mut Body, ty: DType, x: &str) -> String {
    match ty {
        DType::F32 => x.to_string(),
        DType::I64 => b.let_(format!("arith.sitofp {x} : i64 to f32")),
        DType::Bool => b.let_(format!("arith.uitofp {x} : i8 to f32")),
    }
}

/// The f32 value `v` as an element of type `ty` (as the executor's `store`).
fn from_f32(b: &mut Body, ty: DType, v: &str) -> String {
    match ty {
        DType::F32 => v.to_string(),
        DType::I64 => {
            let d = b.let_(format!("arith.extf {v} : f32 to f64"));
            fptosi_sat(b, &d)
        }
        DType::Bool => {
            let zero = b.f32(0.0);
            let c = b.cmpf("une", v, &zero, "f32");
            b.let_(format!("arith.extui {c} : i1 to i8"))
        }
    }
}

/// `x` (i64) as an index.
fn index(b: &mut Body, x: &str) -> String {
    b.let_(format!("arith.index_cast {x} : i64 to index"))
}

/// Element `at` (i64) of the memref `m` of type `ty`.
fn load(b: &mut Body, m: &str, at: &str, ty: &str) -> String {
    let i = index(b, at);
    b.let_(format!("memref.load {m}[{i}] : {ty}"))
}

fn store(b: &mut Body, v: &str, m: &str, at: &str, ty: &str) {
    let i = index(b, at);
    b.line(format!("memref.store {v}, {m}[{i}] : {ty}"));
}

/// A segment of the tile as its loop opens: its first element, length and last coordinate
/// (i64 values), and each table entry's element index at its start.
struct Segment {
    e0: String,
    slen: String,
    c0: String,
    at: Vec<(usize, String)>,
}

/// The kernel of fused scan `f` over one tile, named `name` (see [`crate::cpu::codegen::ScanTileFn`]).
pub fn scan_tile(name: &str, f: &FusedScan, t: &TileLayout) -> Result<String, String> {
    let nodes = &f.nodes;
    let ny = t.ny;
    const SLOTS: &str = "memref<?xf32>";
    const I64S: &str = "memref<?xi64>";
    let mut b = Body::new();
    let (one, huge) = (b.i64(1), b.i64(HUGE));
    let slots = b.memref("%slots", &[&huge], &[&one], SLOTS);
    let segs = b.memref("%segs", &[&huge], &[&one], I64S);
    let offs = b.memref("%offs", &[&huge], &[&one], I64S);
    let bases: Vec<String> = (0..nodes.len())
        .map(|k| {
            let k = b.i64(k as i64);
            b.bin("arith.muli", "%n", &k, "i64")
        })
        .collect();
    // The tables' entries of each sliced operand and per-step result: its memref, step, last
    // stride and row of offsets.
    struct Entry {
        m: String,
        ty: String,
        dtype: DType,
        step: String,
        last: String,
        row: String,
    }
    let mut entries: Vec<Option<Entry>> = (0..nodes.len() + ny).map(|_| None).collect();
    for k in (0..nodes.len()).filter(|&k| t.sliced[k]).chain(nodes.len()..nodes.len() + ny) {
        let dtype = if k < nodes.len() { t.leaf_types[k] } else { t.result_types.get(k - nodes.len()).copied().unwrap_or(DType::F32) };
        let pp = b.let_(format!("llvm.getelementptr inbounds %ptrs[{k}] : (!llvm.ptr) -> !llvm.ptr, !llvm.ptr"));
        let p = b.let_(format!("llvm.load {pp} : !llvm.ptr -> !llvm.ptr"));
        let ty = format!("memref<?x{}>", elem(dtype));
        let m = b.memref(&p, &[&huge], &[&one], &ty);
        let sp = b.let_(format!("llvm.getelementptr inbounds %steps[{k}] : (!llvm.ptr) -> !llvm.ptr, i64"));
        let step = b.let_(format!("llvm.load {sp} : !llvm.ptr -> i64"));
        let lp = b.let_(format!("llvm.getelementptr inbounds %lasts[{k}] : (!llvm.ptr) -> !llvm.ptr, i64"));
        let last = b.let_(format!("llvm.load {lp} : !llvm.ptr -> i64"));
        let kk = b.i64(k as i64);
        let row = b.bin("arith.muli", "%nseg", &kk, "i64");
        entries[k] = Some(Entry { m, ty, dtype, step, last, row });
    }
    let entry = |k: usize| entries[k].as_ref().ok_or_else(|| format!("no table entry {k}"));
    let (c0, c1) = (b.let_("arith.constant 0 : index"), b.let_("arith.constant 1 : index"));
    let (zero64, one64) = (b.i64(0), b.i64(1));
    let len_i = index(&mut b, "%len");
    let nseg_i = index(&mut b, "%nseg");
    let lenm1 = b.bin("arith.subi", "%len", &one64, "i64");
    let rev = b.cmpi("ne", "%reverse", &zero64);
    b.open(format!("scf.for %ts = {c0} to {len_i} step {c1} {{"));
    let ts = b.let_("arith.index_cast %ts : index to i64");
    let tr = b.bin("arith.subi", &lenm1, &ts, "i64");
    let tpos = b.select(&rev, &tr, &ts, "i64");
    // Opens the loop over segments (`%{l}s`), with each entry's base at this position and
    // segment.
    let open_seg = |b: &mut Body, l: &str, ks: &[usize]| -> Result<Segment, String> {
        b.open(format!("scf.for %{l}s = {c0} to {nseg_i} step {c1} {{"));
        let s = b.let_(format!("arith.index_cast %{l}s : index to i64"));
        let three = b.i64(3);
        let s3 = b.bin("arith.muli", &s, &three, "i64");
        let e0 = load(b, &segs, &s3, I64S);
        let s31 = b.bin("arith.addi", &s3, &one64, "i64");
        let slen = load(b, &segs, &s31, I64S);
        let two = b.i64(2);
        let s32 = b.bin("arith.addi", &s3, &two, "i64");
        let c0v = load(b, &segs, &s32, I64S);
        let mut at = Vec::new();
        for &k in ks {
            let en = entry(k)?;
            let oi = b.bin("arith.addi", &en.row, &s, "i64");
            let off = load(b, &offs, &oi, I64S);
            let tstep = b.bin("arith.muli", &tpos, &en.step, "i64");
            at.push((k, b.bin("arith.addi", &tstep, &off, "i64")));
        }
        Ok(Segment { e0, slen, c0: c0v, at })
    };
    // Opens the loop over a segment's elements (`%{l}j`); returns `j` and the element `e`.
    let open_j = |b: &mut Body, l: &str, e0: &str, slen: &str| -> (String, String) {
        let n = index(b, slen);
        b.open(format!("scf.for %{l}j = {c0} to {n} step {c1} {{"));
        let j = b.let_(format!("arith.index_cast %{l}j : index to i64"));
        let e = b.bin("arith.addi", e0, &j, "i64");
        (j, e)
    };
    // Element `j` of entry `k` based at `at`: its index.
    let at_j = |b: &mut Body, k: usize, at: &str, j: &str| -> Result<String, String> {
        if !t.moves[k] {
            return Ok(at.to_string());
        }
        let jl = b.bin("arith.muli", j, &entry(k)?.last, "i64");
        Ok(b.bin("arith.addi", at, &jl, "i64"))
    };
    let slot_at = |b: &mut Body, k: usize, e: &str| b.bin("arith.addi", &bases[k], e, "i64");
    for (p, here) in t.work.iter().enumerate() {
        for (i, n) in nodes.iter().enumerate().filter(|(i, _)| t.phase[*i] == p) {
            if let Node::Reduce(op, a) = *n {
                reduce(&mut b, &slots, (&c0, &c1), &bases, i, op, a);
            }
        }
        if here.is_empty() {
            continue;
        }
        let l = format!("p{p}");
        let mut ks: Vec<usize> =
            here.iter().flat_map(|&i| node_operands(&nodes[i])).chain(here.iter().copied()).filter(|&k| t.sliced[k]).collect();
        ks.sort_unstable();
        ks.dedup();
        let Segment { e0, slen, at, .. } = open_seg(&mut b, &l, &ks)?;
        let (j, e) = open_j(&mut b, &l, &e0, &slen);
        let mut val: Vec<Option<String>> = vec![None; nodes.len()];
        for &i in here {
            let mut get = |b: &mut Body, k: usize| -> Result<String, String> {
                if let Some(v) = &val[k] {
                    return Ok(v.clone());
                }
                let v = match nodes[k] {
                    Node::Leaf(Source::Const(c), _) => b.f32(c),
                    _ if t.sliced[k] => {
                        let base = &at.iter().find(|(kk, _)| *kk == k).ok_or("a sliced operand without its base")?.1;
                        let idx = at_j(b, k, base, &j)?;
                        let en = entry(k)?;
                        let x = load(b, &en.m, &idx, &en.ty);
                        to_f32(b, en.dtype, &x)
                    }
                    _ => {
                        let idx = slot_at(b, k, &e);
                        load(b, &slots, &idx, SLOTS)
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
                    let zero = b.f32(0.0);
                    let q = b.cmpf("une", &c, &zero, "f32");
                    b.select(&q, &x, &y, "f32")
                }
                _ => get(&mut b, i)?,
            };
            if t.stored[i] {
                let idx = slot_at(&mut b, i, &e);
                store(&mut b, &v, &slots, &idx, SLOTS);
            }
            val[i] = Some(v);
        }
        b.close();
        b.close();
    }
    // The per-step results where they lie, then each new state into its state's slot.
    let outs: Vec<usize> = (nodes.len()..nodes.len() + ny).collect();
    let Segment { e0, slen, c0: c0v, at } = open_seg(&mut b, "out", &outs)?;
    let base_of = |k: usize| at.iter().find(|(kk, _)| *kk == k).map(|(_, a)| a.clone()).ok_or(format!("no base for entry {k}"));
    for k in (0..ny).filter(|&k| !t.whole[k]) {
        // A reduced result: once per row, from its first element, where the segment starts a row.
        let row0 = b.cmpi("eq", &c0v, &zero64);
        let some = b.cmpi("sgt", &slen, &zero64);
        let go = b.bin("arith.andi", &row0, &some, "i1");
        b.open(format!("scf.if {go} {{"));
        let idx = slot_at(&mut b, f.outputs[k], &e0);
        let v = load(&mut b, &slots, &idx, SLOTS);
        let en = entry(nodes.len() + k)?;
        let x = from_f32(&mut b, en.dtype, &v);
        store(&mut b, &x, &en.m, &base_of(nodes.len() + k)?, &en.ty);
        b.close();
    }
    let (j, e) = open_j(&mut b, "out", &e0, &slen);
    for k in (0..ny).filter(|&k| t.whole[k]) {
        let idx = slot_at(&mut b, f.outputs[k], &e);
        let v = load(&mut b, &slots, &idx, SLOTS);
        let en = entry(nodes.len() + k)?;
        let x = from_f32(&mut b, en.dtype, &v);
        let dst = at_j(&mut b, nodes.len() + k, &base_of(nodes.len() + k)?, &j)?;
        store(&mut b, &x, &en.m, &dst, &en.ty);
    }
    for (k, to) in t.state_slot.iter().enumerate() {
        let from = f.outputs[ny + k];
        if let Some(to) = *to {
            if to != from {
                let src = slot_at(&mut b, from, &e);
                let v = load(&mut b, &slots, &src, SLOTS);
                let dst = slot_at(&mut b, to, &e);
                store(&mut b, &v, &slots, &dst, SLOTS);
            }
        }
    }
    b.close();
    b.close();
    b.close();
    b.line("return");
    Ok(format!(
        "  func.func @{name}(%slots: !llvm.ptr {{llvm.noalias}}, %n: i64, %inner: i64, %len: i64, %reverse: i64, %nseg: i64, %segs: !llvm.ptr, %ptrs: !llvm.ptr, %offs: !llvm.ptr, %steps: !llvm.ptr, %lasts: !llvm.ptr) {{\n{}  }}\n",
        b.text
    ))
}

/// Reduction node `i` of slot `a` over rows of `inner` elements, each row's value written to
/// all its elements of slot `i` (sums and means in f32 with `reassoc`, max and min
/// NaN-propagating).
fn reduce(b: &mut Body, slots: &str, (c0, c1): (&str, &str), bases: &[String], i: usize, op: ReduceOp, a: usize) {
    const SLOTS: &str = "memref<?xf32>";
    let zero = b.i64(0);
    let inner_pos = b.cmpi("sgt", "%inner", &zero);
    let one = b.i64(1);
    let safe = b.select(&inner_pos, "%inner", &one, "i64");
    let rows = b.bin("arith.divsi", "%n", &safe, "i64");
    let rows = b.select(&inner_pos, &rows, &zero, "i64");
    let rows_i = index(b, &rows);
    let inner_i = index(b, "%inner");
    b.open(format!("scf.for %r{i}q = {c0} to {rows_i} step {c1} {{"));
    let q = b.let_(format!("arith.index_cast %r{i}q : index to i64"));
    let off = b.bin("arith.muli", &q, "%inner", "i64");
    let src = b.bin("arith.addi", &bases[a], &off, "i64");
    let dst = b.bin("arith.addi", &bases[i], &off, "i64");
    let init = match op {
        ReduceOp::Sum | ReduceOp::Mean => b.f32(0.0),
        ReduceOp::Max => b.f32(f32::NEG_INFINITY),
        ReduceOp::Min => b.f32(f32::INFINITY),
    };
    let acc = format!("%r{i}acc");
    let sum = b.let_(format!("scf.for %r{i}j = {c0} to {inner_i} step {c1} iter_args({acc} = {init}) -> (f32) {{"));
    b.indent += 1;
    let j = b.let_(format!("arith.index_cast %r{i}j : index to i64"));
    let at = b.bin("arith.addi", &src, &j, "i64");
    let x = load(b, slots, &at, SLOTS);
    let next = match op {
        ReduceOp::Sum | ReduceOp::Mean => b.let_(format!("arith.addf {acc}, {x} fastmath<reassoc> : f32")),
        ReduceOp::Max => b.bin("arith.maximumf", &acc, &x, "f32"),
        ReduceOp::Min => b.bin("arith.minimumf", &acc, &x, "f32"),
    };
    b.line(format!("scf.yield {next} : f32"));
    b.close();
    let v = if op == ReduceOp::Mean {
        let cnt = b.let_("arith.sitofp %inner : i64 to f32");
        b.bin("arith.divf", &sum, &cnt, "f32")
    } else {
        sum
    };
    b.open(format!("scf.for %r{i}k = {c0} to {inner_i} step {c1} {{"));
    let k = b.let_(format!("arith.index_cast %r{i}k : index to i64"));
    let at = b.bin("arith.addi", &dst, &k, "i64");
    store(b, &v, slots, &at, SLOTS);
    b.close();
    b.close();
}

/// `u` of the f32 value `x`, as the executor's `eval` computes it.
fn unary(b: &mut Body, u: UnaryOp, x: &str) -> String {
    match plain_unary(b, u, x, "f32") {
        Some(y) => y,
        None => match unary_f32(b, u, x) {
            Some(y) => y,
            None => {
                let code = UNARY_OPS.iter().position(|(o, _)| *o == u).map_or(-1, |c| c as i64);
                let code = b.i64(code);
                let d = b.let_(format!("arith.extf {x} : f32 to f64"));
                let y = b.let_(format!("func.call @tsr_unary({code}, {d}) : (i64, f64) -> f64"));
                b.let_(format!("arith.truncf {y} : f64 to f32"))
            }
        },
    }
}

/// `op` of the f32 values `x` and `y`, as the executor's `eval` computes it.
fn binary(b: &mut Body, op: BinaryOp, x: &str, y: &str) -> String {
    match plain_binary(b, op, x, y, "f32") {
        Some(v) => v,
        // Rem and Pow: the interpreter's helper, in f64.
        None => {
            let code = BINARY_OPS.iter().position(|(o, _)| *o == op).map_or(-1, |c| c as i64);
            let (code, int) = (b.i64(code), b.i64(0));
            let (p, q) = (b.let_(format!("arith.extf {x} : f32 to f64")), b.let_(format!("arith.extf {y} : f32 to f64")));
            let r = b.let_(format!("func.call @tsr_binary({code}, {p}, {q}, {int}) : (i64, f64, f64, i64) -> f64"));
            b.let_(format!("arith.truncf {r} : f64 to f32"))
        }
    }
}

//! MLIR (text) for the CPU executor's kernels: row kernels of scalar programs (the ABI of
//! [`crate::cpu::cranelift::RowFn`]), norms, softmax and reductions over rows.
//!
//! Every kernel is a `func.func` whose arguments are the ABI's raw pointers (`!llvm.ptr`) and
//! integers (`i64`), so that `convert-func-to-llvm` makes it a plain C function. Its first
//! lines turn the pointers into memrefs: a descriptor struct built with `llvm.mlir.poison` and
//! `llvm.insertvalue` (base pointer, offset 0, sizes and strides), then
//! `builtin.unrealized_conversion_cast` to the memref type; `finalize-memref-to-llvm` lowers
//! the memref's users back to that struct, and `reconcile-unrealized-casts` cancels the pair.
//! The computation itself is `scf`, `linalg`, `arith`, `math` and `memref` ops:
//!
//! - a row kernel is an `scf.for` over the row, loading each operand from a strided 1-D memref
//!   (dynamic strides, or for the fixed-steps version static ones, `strided<[0]>` or
//!   `strided<[1]>`, which LLVM's vectorizer turns into broadcasts and vector loads);
//! - a norm, softmax or reduction is an `scf.for` over rows, each a few `linalg.generic` ops over the row's
//!   `memref.subview`: reductions into a 0-D accumulator (`fastmath<reassoc>` sums, so that LLVM
//!   vectorizes them as the LLVM backend's do), then an elementwise pass.
//!
//! Semantics are the LLVM backend's ([`crate::llvm`]), which are the interpreter's: a scalar
//! program computes in f64 and rounds to each node's element type after every node; exp, the
//! logistic function, tanh, SiLU and both GELUs of an f32 node use the same f32 polynomial forms
//! (written inline here); other transcendental functions call the interpreter's definition
//! (`tsr_unary`, `tsr_binary`, `tsr_gather`, declared as external `func.func`s).

use std::fmt::Write;
use tessera_ir::{BinaryOp, DType, NormKind, ReduceOp, SNode, ScoreFn, UnaryOp, BINARY_OPS, UNARY_OPS};

/// An MLIR `f64` constant, exactly (hexadecimal bits).
fn f64c(x: f64) -> String {
    format!("0x{:016X}", x.to_bits())
}

/// An MLIR `f32` constant, exactly (hexadecimal bits of the f32).
fn f32c(x: f32) -> String {
    format!("0x{:08X}", x.to_bits())
}

/// The declarations every module starts with: the interpreter's helpers.
pub fn prelude() -> String {
    "  func.func private @tsr_unary(i64, f64) -> f64
  func.func private @tsr_binary(i64, f64, f64, i64) -> f64
  func.func private @tsr_gather(!llvm.ptr, !llvm.ptr, i64, f64) -> f64
"
    .to_string()
}

/// A function body being written: fresh value names and the text.
pub(super) struct Body {
    pub(super) text: String,
    pub(super) next: usize,
    pub(super) indent: usize,
}

impl Body {
    pub(super) fn new() -> Body {
        Body { text: String::new(), next: 0, indent: 2 }
    }

    /// Appends `%vN = <rhs>` and returns `%vN`.
    pub(super) fn let_(&mut self, rhs: impl AsRef<str>) -> String {
        let name = format!("%v{}", self.next);
        self.next += 1;
        let _ = writeln!(self.text, "{:w$}{name} = {}", "", rhs.as_ref(), w = self.indent * 2);
        name
    }

    pub(super) fn line(&mut self, l: impl AsRef<str>) {
        let _ = writeln!(self.text, "{:w$}{}", "", l.as_ref(), w = self.indent * 2);
    }

    /// Opens a region (`scf.for … {`, `linalg.generic … {`).
    pub(super) fn open(&mut self, l: impl AsRef<str>) {
        self.line(l);
        self.indent += 1;
    }

    pub(super) fn close(&mut self) {
        self.indent = self.indent.saturating_sub(1);
        self.line("}");
    }

    pub(super) fn f64(&mut self, x: f64) -> String {
        self.let_(format!("arith.constant {} : f64", f64c(x)))
    }

    pub(super) fn f32(&mut self, x: f32) -> String {
        self.let_(format!("arith.constant {} : f32", f32c(x)))
    }

    pub(super) fn i64(&mut self, x: i64) -> String {
        self.let_(format!("arith.constant {x} : i64"))
    }

    pub(super) fn i32(&mut self, x: i32) -> String {
        self.let_(format!("arith.constant {x} : i32"))
    }

    /// `a <op> b` of type `ty` (`arith.addf`, …).
    pub(super) fn bin(&mut self, op: &str, a: &str, b: &str, ty: &str) -> String {
        self.let_(format!("{op} {a}, {b} : {ty}"))
    }

    pub(super) fn fma32(&mut self, a: &str, b: &str, c: &str) -> String {
        self.let_(format!("math.fma {a}, {b}, {c} : f32"))
    }

    /// `1.0` or `0.0` (f64) from an `i1`.
    pub(super) fn bool_f64(&mut self, c: &str) -> String {
        self.let_(format!("arith.uitofp {c} : i1 to f64"))
    }

    /// `select c, a, b` of type `ty`.
    pub(super) fn select(&mut self, c: &str, a: &str, b: &str, ty: &str) -> String {
        self.let_(format!("arith.select {c}, {a}, {b} : {ty}"))
    }

    pub(super) fn cmpf(&mut self, pred: &str, a: &str, b: &str, ty: &str) -> String {
        self.let_(format!("arith.cmpf {pred}, {a}, {b} : {ty}"))
    }

    /// An `i64` comparison (`eq`, `ne`, `sgt`, …).
    pub(super) fn cmpi(&mut self, pred: &str, a: &str, b: &str) -> String {
        self.let_(format!("arith.cmpi {pred}, {a}, {b} : i64"))
    }

    /// A memref of type `ty` over the memory at `ptr` (offset 0) with these sizes and strides
    /// (i64 values): a descriptor struct cast to the memref type.
    pub(super) fn memref(&mut self, ptr: &str, sizes: &[&str], strides: &[&str], ty: &str) -> String {
        let r = sizes.len();
        let st = format!("!llvm.struct<(ptr, ptr, i64, array<{r} x i64>, array<{r} x i64>)>");
        let zero = self.i64(0);
        let mut d = self.let_(format!("llvm.mlir.poison : {st}"));
        d = self.let_(format!("llvm.insertvalue {ptr}, {d}[0] : {st}"));
        d = self.let_(format!("llvm.insertvalue {ptr}, {d}[1] : {st}"));
        d = self.let_(format!("llvm.insertvalue {zero}, {d}[2] : {st}"));
        for (k, s) in sizes.iter().enumerate() {
            d = self.let_(format!("llvm.insertvalue {s}, {d}[3, {k}] : {st}"));
        }
        for (k, s) in strides.iter().enumerate() {
            d = self.let_(format!("llvm.insertvalue {s}, {d}[4, {k}] : {st}"));
        }
        self.let_(format!("builtin.unrealized_conversion_cast {d} : {st} to {ty}"))
    }
}

/// e^x in f32 for x ≤ 0 (and NaN), as vmath's `exp_neg`: below -87, e^-87 (negligible beside
/// any sum with 1); one scale factor, 2^n with n ≥ -126.
fn exp_negf(b: &mut Body, x: &str) -> String {
    use crate::approx::{EXP_LN2_HI, EXP_LN2_LO, EXP_POLY, EXP_ROUND as round};
    let lo = b.f32(-87.0);
    let c = b.cmpf("olt", x, &lo, "f32");
    let x1 = b.select(&c, &lo, x, "f32");
    let (log2e, rc) = (b.f32(std::f32::consts::LOG2_E), b.f32(round));
    let t = b.fma32(&x1, &log2e, &rc);
    let n = b.bin("arith.subf", &t, &rc, "f32");
    let tb = b.let_(format!("arith.bitcast {t} : f32 to i32"));
    let rb = b.i32(round.to_bits() as i32);
    let ni = b.bin("arith.subi", &tb, &rb, "i32");
    let (bias, shift) = (b.i32(127), b.i32(23));
    let nb = b.bin("arith.addi", &ni, &bias, "i32");
    let ns = b.bin("arith.shli", &nb, &shift, "i32");
    let scale = b.let_(format!("arith.bitcast {ns} : i32 to f32"));
    let (ln2hi, ln2lo) = (b.f32(EXP_LN2_HI), b.f32(EXP_LN2_LO));
    let r0 = b.fma32(&n, &ln2hi, &x1);
    let r = b.fma32(&n, &ln2lo, &r0);
    let mut p = b.f32(EXP_POLY[0]);
    for c in EXP_POLY[1..].iter().copied() {
        let c = b.f32(c);
        p = b.fma32(&p, &r, &c);
    }
    b.bin("arith.mulf", &p, &scale, "f32")
}

/// e^x in f32 for any x (vmath's exp_neg, with 2^n split in two factors so that n may reach
/// ±252: results overflow to inf and underflow to 0 as the f64 definition rounded does).
fn expf(b: &mut Body, x: &str) -> String {
    use crate::approx::{EXP_LN2_HI, EXP_LN2_LO, EXP_POLY, EXP_ROUND as round};
    let (lo, hi) = (b.f32(-104.0), b.f32(88.8));
    let c = b.cmpf("olt", x, &lo, "f32");
    let x1 = b.select(&c, &lo, x, "f32");
    let c = b.cmpf("ogt", &x1, &hi, "f32");
    let x2 = b.select(&c, &hi, &x1, "f32");
    let (log2e, rc) = (b.f32(std::f32::consts::LOG2_E), b.f32(round));
    let t = b.fma32(&x2, &log2e, &rc);
    let n = b.bin("arith.subf", &t, &rc, "f32");
    let tb = b.let_(format!("arith.bitcast {t} : f32 to i32"));
    let rb = b.i32(round.to_bits() as i32);
    let ni = b.bin("arith.subi", &tb, &rb, "i32");
    let one = b.i32(1);
    let h = b.bin("arith.shrsi", &ni, &one, "i32");
    let l = b.bin("arith.subi", &ni, &h, "i32");
    let (bias, shift) = (b.i32(127), b.i32(23));
    let hb = b.bin("arith.addi", &h, &bias, "i32");
    let lb = b.bin("arith.addi", &l, &bias, "i32");
    let hs = b.bin("arith.shli", &hb, &shift, "i32");
    let ls = b.bin("arith.shli", &lb, &shift, "i32");
    let s1 = b.let_(format!("arith.bitcast {hs} : i32 to f32"));
    let s2 = b.let_(format!("arith.bitcast {ls} : i32 to f32"));
    let (ln2hi, ln2lo) = (b.f32(EXP_LN2_HI), b.f32(EXP_LN2_LO));
    let r0 = b.fma32(&n, &ln2hi, &x2);
    let r = b.fma32(&n, &ln2lo, &r0);
    let mut p = b.f32(EXP_POLY[0]);
    for c in EXP_POLY[1..].iter().copied() {
        let c = b.f32(c);
        p = b.fma32(&p, &r, &c);
    }
    let y0 = b.bin("arith.mulf", &p, &s1, "f32");
    b.bin("arith.mulf", &y0, &s2, "f32")
}

/// The logistic function in f32.
fn sigmoidf(b: &mut Body, x: &str) -> String {
    let a = b.let_(format!("math.absf {x} : f32"));
    let na = b.let_(format!("arith.negf {a} : f32"));
    let e = expf(b, &na);
    let (inf, zero, one) = (b.f32(f32::INFINITY), b.f32(0.0), b.f32(1.0));
    let isinf = b.cmpf("oeq", &a, &inf, "f32");
    let t = b.select(&isinf, &zero, &e, "f32");
    let d = b.bin("arith.addf", &t, &one, "f32");
    let s = b.bin("arith.divf", &one, &d, "f32");
    let ts = b.bin("arith.mulf", &t, &s, "f32");
    let pos = b.cmpf("oge", x, &zero, "f32");
    b.select(&pos, &s, &ts, "f32")
}

/// tanh in f32: a series near 0, 2σ(2x) − 1 elsewhere.
fn tanhf(b: &mut Body, x: &str) -> String {
    let x2 = b.bin("arith.mulf", x, x, "f32");
    let (c15, cm3, one, two) = (b.f32(2.0 / 15.0), b.f32(-1.0 / 3.0), b.f32(1.0), b.f32(2.0));
    let q0 = b.fma32(&x2, &c15, &cm3);
    let q1 = b.fma32(&x2, &q0, &one);
    let series = b.bin("arith.mulf", x, &q1, "f32");
    let tx = b.bin("arith.mulf", x, &two, "f32");
    let sg = sigmoidf(b, &tx);
    let sg2 = b.bin("arith.mulf", &sg, &two, "f32");
    let big = b.bin("arith.subf", &sg2, &one, "f32");
    let a = b.let_(format!("math.absf {x} : f32"));
    let small = b.f32(crate::approx::TANH_SERIES_BELOW);
    let c = b.cmpf("olt", &a, &small, "f32");
    b.select(&c, &series, &big, "f32")
}

/// erf in f32 (Abramowitz–Stegun 7.1.26 with an exact exponential).
fn erff(b: &mut Body, x: &str) -> String {
    let a = b.let_(format!("math.absf {x} : f32"));
    let (p, one) = (b.f32(crate::approx::ERF_P), b.f32(1.0));
    let d = b.fma32(&p, &a, &one);
    let t = b.bin("arith.divf", &one, &d, "f32");
    let mut q = b.f32(crate::approx::ERF_POLY[0]);
    for c in crate::approx::ERF_POLY[1..].iter().copied() {
        let c = b.f32(c);
        q = b.fma32(&q, &t, &c);
    }
    let na = b.let_(format!("arith.negf {a} : f32"));
    let aa = b.bin("arith.mulf", &na, &a, "f32");
    let e = expf(b, &aa);
    let qt = b.bin("arith.mulf", &q, &t, "f32");
    let qe = b.bin("arith.mulf", &qt, &e, "f32");
    let y = b.bin("arith.subf", &one, &qe, "f32");
    b.let_(format!("math.copysign {y}, {x} : f32"))
}

/// Whether `u` has an inline f32 form ([`unary_f32`]).
fn has_f32_form(u: UnaryOp) -> bool {
    matches!(u, UnaryOp::Exp | UnaryOp::Sigmoid | UnaryOp::Tanh | UnaryOp::Silu | UnaryOp::GeluTanh | UnaryOp::GeluErf)
}

/// The f32 form of `u`, applied to the f32 value `s`, where there is one.
pub(super) fn unary_f32(b: &mut Body, u: UnaryOp, s: &str) -> Option<String> {
    Some(match u {
        UnaryOp::Exp => expf(b, s),
        UnaryOp::Sigmoid => sigmoidf(b, s),
        UnaryOp::Tanh => tanhf(b, s),
        UnaryOp::Silu => {
            let g = sigmoidf(b, s);
            b.bin("arith.mulf", s, &g, "f32")
        }
        UnaryOp::GeluTanh => {
            // x·σ(2c(x + 0.044715x³)), c = √(2/π).
            let x2 = b.bin("arith.mulf", s, s, "f32");
            let x3 = b.bin("arith.mulf", &x2, s, "f32");
            let k = b.f32(crate::approx::GELU_CUBIC);
            let inner = b.fma32(&k, &x3, s);
            let c = b.f32(crate::approx::GELU_TANH_2C);
            let z = b.bin("arith.mulf", &inner, &c, "f32");
            let g = sigmoidf(b, &z);
            b.bin("arith.mulf", s, &g, "f32")
        }
        UnaryOp::GeluErf => {
            let c = b.f32(std::f32::consts::FRAC_1_SQRT_2);
            let z = b.bin("arith.mulf", s, &c, "f32");
            let e = erff(b, &z);
            let one = b.f32(1.0);
            let e1 = b.bin("arith.addf", &e, &one, "f32");
            let half = b.f32(0.5);
            let h = b.bin("arith.mulf", &e1, &half, "f32");
            b.bin("arith.mulf", s, &h, "f32")
        }
        _ => return None,
    })
}

/// `x` (f64) to i64 as Rust's `as` does: saturating, NaN to 0 (LLVM's `fptosi.sat`).
pub(super) fn fptosi_sat(b: &mut Body, x: &str) -> String {
    let lo = b.f64(-9_223_372_036_854_775_808.0);
    let hi = b.f64(9_223_372_036_854_775_808.0);
    let clamped = b.bin("arith.maximumf", x, &lo, "f64");
    let big = b.cmpf("oge", x, &hi, "f64");
    let nan = b.cmpf("uno", x, x, "f64");
    let i = b.let_(format!("arith.fptosi {clamped} : f64 to i64"));
    let max = b.i64(i64::MAX);
    let zero = b.i64(0);
    let s = b.select(&big, &max, &i, "i64");
    b.select(&nan, &zero, &s, "i64")
}

/// Emits the nodes of `f` into `b`; `leaf(b, k)` and `var(b, v)` give the f64 values of leaves
/// and variables. Returns the last node's value.
fn nodes(
    b: &mut Body,
    f: &ScoreFn,
    leaf: &dyn Fn(&mut Body, u32) -> String,
    var: &dyn Fn(&mut Body, usize) -> String,
) -> Result<String, String> {
    let mut vals: Vec<String> = Vec::with_capacity(f.nodes.len());
    for (n, ty) in &f.nodes {
        let get = |k: &u32| vals.get(*k as usize).cloned().ok_or_else(|| "a scalar program refers forward".to_string());
        let x = match n {
            SNode::Var(v) => var(b, *v as usize),
            SNode::Leaf(k) => leaf(b, *k),
            SNode::Const(c) => b.f64(*c),
            SNode::Unary(u, a) => {
                let a = get(a)?;
                match plain_unary(b, *u, &a, "f64") {
                    Some(y) => y,
                    None if *ty == DType::F32 && has_f32_form(*u) => {
                        let s = b.let_(format!("arith.truncf {a} : f64 to f32"));
                        let y = unary_f32(b, *u, &s).unwrap_or(s);
                        b.let_(format!("arith.extf {y} : f32 to f64"))
                    }
                    None => {
                        let code = UNARY_OPS.iter().position(|(o, _)| o == u).map_or(-1, |c| c as i64);
                        let code = b.i64(code);
                        b.let_(format!("func.call @tsr_unary({code}, {a}) : (i64, f64) -> f64"))
                    }
                }
            }
            SNode::Binary(op, x, y) => {
                let int = f.nodes.get(*x as usize).map(|n| n.1) == Some(DType::I64);
                let (p, q) = (get(x)?, get(y)?);
                match op {
                    BinaryOp::Div if int => {
                        let d = b.bin("arith.divf", &p, &q, "f64");
                        b.let_(format!("math.floor {d} : f64"))
                    }
                    BinaryOp::Rem => {
                        let d = b.bin("arith.divf", &p, &q, "f64");
                        let fl = b.let_(format!("math.floor {d} : f64"));
                        let m = b.bin("arith.mulf", &q, &fl, "f64");
                        b.bin("arith.subf", &p, &m, "f64")
                    }
                    BinaryOp::Pow => {
                        let code = BINARY_OPS.iter().position(|(o, _)| o == op).map_or(-1, |c| c as i64);
                        let (code, int) = (b.i64(code), b.i64(i64::from(int)));
                        b.let_(format!("func.call @tsr_binary({code}, {p}, {q}, {int}) : (i64, f64, f64, i64) -> f64"))
                    }
                    _ => plain_binary(b, *op, &p, &q, "f64").ok_or_else(|| format!("no MLIR lowering of {op:?}"))?,
                }
            }
            SNode::Where(c, x, y) => {
                let (c, x, y) = (get(c)?, get(x)?, get(y)?);
                let zero = b.f64(0.0);
                let t = b.cmpf("une", &c, &zero, "f64");
                b.select(&t, &x, &y, "f64")
            }
            SNode::Cast(a) => get(a)?,
            SNode::Gather(t, i) => {
                let i = get(i)?;
                let t = b.i64(i64::from(*t));
                b.let_(format!("func.call @tsr_gather(%tables, %lens, {t}, {i}) : (!llvm.ptr, !llvm.ptr, i64, f64) -> f64"))
            }
        };
        // Store semantics of the node's element type.
        let x = match ty {
            DType::F32 => {
                let s = b.let_(format!("arith.truncf {x} : f64 to f32"));
                b.let_(format!("arith.extf {s} : f32 to f64"))
            }
            DType::I64 => {
                let i = fptosi_sat(b, &x);
                b.let_(format!("arith.sitofp {i} : i64 to f64"))
            }
            DType::Bool => {
                let zero = b.f64(0.0);
                let c = b.cmpf("une", &x, &zero, "f64");
                b.bool_f64(&c)
            }
        };
        vals.push(x);
    }
    vals.last().cloned().ok_or_else(|| "an empty scalar program".to_string())
}

/// The MLIR type of an element in memory.
pub(super) fn elem(ty: DType) -> &'static str {
    match ty {
        DType::F32 => "f32",
        DType::I64 => "i64",
        DType::Bool => "i8",
    }
}

/// A row kernel of `f` named `name`: `(out, len, ins, steps, vars, tables, lens)`. With
/// `steps`, operand `k` advances by `steps[k]` (0 or 1) whatever the `steps` argument says: its
/// memref has that static stride.
pub fn row(name: &str, f: &ScoreFn, leaf_types: &[DType], out: DType, steps: Option<&[i64]>) -> Result<String, String> {
    let mut b = Body::new();
    let mut operands = Vec::new();
    for (k, ty) in leaf_types.iter().enumerate() {
        let slot = b.let_(format!("llvm.getelementptr inbounds %ins[{k}] : (!llvm.ptr) -> !llvm.ptr, !llvm.ptr"));
        let base = b.let_(format!("llvm.load {slot} : !llvm.ptr -> !llvm.ptr"));
        let (step, layout) = match steps {
            Some(st) => {
                let s = st.get(k).copied().unwrap_or(1);
                (b.i64(s), format!("strided<[{s}]>"))
            }
            None => {
                let s = b.let_(format!("llvm.getelementptr inbounds %steps[{k}] : (!llvm.ptr) -> !llvm.ptr, i64"));
                (b.let_(format!("llvm.load {s} : !llvm.ptr -> i64")), "strided<[?]>".to_string())
            }
        };
        let ty = format!("memref<?x{}, {layout}>", elem(*ty));
        let m = b.memref(&base, &["%len"], &[&step], &ty);
        operands.push((m, ty));
    }
    let one = b.i64(1);
    let out_ty = format!("memref<?x{}>", elem(out));
    let out_m = b.memref("%out", &["%len"], &[&one], &out_ty);
    // Only score rows read the variables (`vars` is null for elementwise rows: the descriptor
    // is made, never read).
    let uses_vars = f.nodes.iter().any(|(n, _)| matches!(n, SNode::Var(v) if *v != tessera_ir::Var::Score));
    let vars = if uses_vars {
        let four = b.i64(4);
        Some(b.memref("%vars", &[&four], &[&one], "memref<4xf64>"))
    } else {
        None
    };
    let c0 = b.let_("arith.constant 0 : index");
    let c1 = b.let_("arith.constant 1 : index");
    let n = b.let_("arith.index_cast %len : i64 to index");
    b.open(format!("scf.for %i = {c0} to {n} step {c1} {{"));
    let leaf = |b: &mut Body, k: u32| -> String {
        let (m, ty) = &operands[k as usize];
        let x = b.let_(format!("memref.load {m}[%i] : {ty}"));
        match leaf_types[k as usize] {
            DType::F32 => b.let_(format!("arith.extf {x} : f32 to f64")),
            DType::I64 => b.let_(format!("arith.sitofp {x} : i64 to f64")),
            DType::Bool => b.let_(format!("arith.uitofp {x} : i8 to f64")),
        }
    };
    let var = |b: &mut Body, v: usize| -> String {
        let at = |b: &mut Body, k: usize| -> String {
            let idx = b.let_(format!("arith.constant {k} : index"));
            match &vars {
                Some(m) => b.let_(format!("memref.load {m}[{idx}] : memref<4xf64>")),
                None => b.f64(f64::NAN),
            }
        };
        match v {
            // The raw score: this element of `out` (f32).
            0 => {
                let x = b.let_(format!("memref.load {out_m}[%i] : {out_ty}"));
                b.let_(format!("arith.extf {x} : f32 to f64"))
            }
            // The key index: J0 + j.
            4 => {
                let j0 = at(b, 3);
                let j = b.let_("arith.index_cast %i : index to i64");
                let j = b.let_(format!("arith.sitofp {j} : i64 to f64"));
                b.bin("arith.addf", &j0, &j, "f64")
            }
            v => at(b, v.saturating_sub(1).min(3)),
        }
    };
    let v = nodes(&mut b, f, &leaf, &var)?;
    let y = match out {
        DType::F32 => b.let_(format!("arith.truncf {v} : f64 to f32")),
        DType::I64 => fptosi_sat(&mut b, &v),
        DType::Bool => {
            let zero = b.f64(0.0);
            let c = b.cmpf("une", &v, &zero, "f64");
            b.let_(format!("arith.extui {c} : i1 to i8"))
        }
    };
    b.line(format!("memref.store {y}, {out_m}[%i] : {out_ty}"));
    b.close();
    b.line("return");
    Ok(format!(
        "  func.func @{name}(%out: !llvm.ptr {{llvm.noalias}}, %len: i64, %ins: !llvm.ptr, %steps: !llvm.ptr, %vars: !llvm.ptr, %tables: !llvm.ptr, %lens: !llvm.ptr) {{\n{}  }}\n",
        b.text
    ))
}

/// The constant `x` of float type `ty` (`f32` or `f64`; `x` is exact in both).
fn float(b: &mut Body, ty: &str, x: f32) -> String {
    if ty == "f64" {
        b.f64(x.into())
    } else {
        b.f32(x)
    }
}

/// `u` of `x` of float type `ty` (`f32` or `f64`) where it is one op or a few, as the
/// interpreter computes it; `None` for the transcendental ones, which each caller lowers its
/// own way (row kernels in f64, scan bodies in f32).
pub(super) fn plain_unary(b: &mut Body, u: UnaryOp, x: &str, ty: &str) -> Option<String> {
    Some(match u {
        UnaryOp::Neg => b.let_(format!("arith.negf {x} : {ty}")),
        UnaryOp::Abs => b.let_(format!("math.absf {x} : {ty}")),
        UnaryOp::Sqrt => b.let_(format!("math.sqrt {x} : {ty}")),
        UnaryOp::Rsqrt => {
            let r = b.let_(format!("math.sqrt {x} : {ty}"));
            let one = float(b, ty, 1.0);
            b.bin("arith.divf", &one, &r, ty)
        }
        UnaryOp::Relu => {
            let zero = float(b, ty, 0.0);
            let c = b.cmpf("olt", x, &zero, ty);
            b.select(&c, &zero, x, ty)
        }
        UnaryOp::Not => {
            let zero = float(b, ty, 0.0);
            let c = b.cmpf("oeq", x, &zero, ty);
            b.let_(format!("arith.uitofp {c} : i1 to {ty}"))
        }
        _ => return None,
    })
}

/// `op` of the float values `x` and `y` of type `ty` where it is arithmetic, a comparison or a
/// logical op (1 or 0); `None` for `Rem` and `Pow`, and the caller's to treat a division of
/// integers apart.
pub(super) fn plain_binary(b: &mut Body, op: BinaryOp, x: &str, y: &str, ty: &str) -> Option<String> {
    let cmp = |b: &mut Body, cc: &str| {
        let c = b.cmpf(cc, x, y, ty);
        b.let_(format!("arith.uitofp {c} : i1 to {ty}"))
    };
    Some(match op {
        BinaryOp::Add => b.bin("arith.addf", x, y, ty),
        BinaryOp::Sub => b.bin("arith.subf", x, y, ty),
        BinaryOp::Mul => b.bin("arith.mulf", x, y, ty),
        BinaryOp::Div => b.bin("arith.divf", x, y, ty),
        BinaryOp::Max => b.bin("arith.maximumf", x, y, ty),
        BinaryOp::Min => b.bin("arith.minimumf", x, y, ty),
        BinaryOp::Eq => cmp(b, "oeq"),
        BinaryOp::Ne => cmp(b, "une"),
        BinaryOp::Lt => cmp(b, "olt"),
        BinaryOp::Le => cmp(b, "ole"),
        BinaryOp::Gt => cmp(b, "ogt"),
        BinaryOp::Ge => cmp(b, "oge"),
        BinaryOp::And | BinaryOp::Or => {
            let zero = float(b, ty, 0.0);
            let (c1, c2) = (b.cmpf("une", x, &zero, ty), b.cmpf("une", y, &zero, ty));
            let c = b.bin(if op == BinaryOp::And { "arith.andi" } else { "arith.ori" }, &c1, &c2, "i1");
            b.let_(format!("arith.uitofp {c} : i1 to {ty}"))
        }
        BinaryOp::Rem | BinaryOp::Pow => return None,
    })
}

/// The type of a row of a `memref<?x?xf32>`.
const ROW: &str = "memref<?xf32, strided<[1], offset: ?>>";

/// The rows `(rows, d)` of the f32 matrix at `ptr`, as `memref<?x?xf32>`.
fn matrix(b: &mut Body, ptr: &str) -> String {
    let one = b.i64(1);
    b.memref(ptr, &["%rows", "%d"], &["%d", &one], "memref<?x?xf32>")
}

/// Opens the loop over rows: `%r`, with `%xr` and (where `y` is a matrix) `%yr` the rows of
/// `x` and `y`.
fn open_rows(b: &mut Body, x: &str, y: Option<&str>) {
    let c0 = b.let_("arith.constant 0 : index");
    let c1 = b.let_("arith.constant 1 : index");
    let nr = b.let_("arith.index_cast %rows : i64 to index");
    b.line("%dn = arith.index_cast %d : i64 to index");
    b.open(format!("scf.for %r = {c0} to {nr} step {c1} {{"));
    b.line(format!("%xr = memref.subview {x}[%r, 0] [1, %dn] [1, 1] : memref<?x?xf32> to {ROW}"));
    if let Some(y) = y {
        b.line(format!("%yr = memref.subview {y}[%r, 0] [1, %dn] [1, 1] : memref<?x?xf32> to {ROW}"));
    }
}

/// A `linalg.generic` over one row (`j`): `ins` and `outs` are `(value, type, is_scalar)`,
/// scalars being 0-D accumulators; `body(b, args)` writes the region from its block arguments
/// (ins then outs) and returns the values it yields.
fn generic(
    b: &mut Body,
    reduction: bool,
    ins: &[(&str, &str, bool)],
    outs: &[(&str, &str, bool)],
    body: &dyn Fn(&mut Body, &[String]) -> Vec<String>,
) {
    let map = |scalar: bool| if scalar { "affine_map<(j) -> ()>" } else { "affine_map<(j) -> (j)>" };
    let maps: Vec<&str> = ins.iter().chain(outs).map(|(_, _, s)| map(*s)).collect();
    let list = |xs: &[(&str, &str, bool)]| {
        let vals: Vec<&str> = xs.iter().map(|x| x.0).collect();
        let tys: Vec<&str> = xs.iter().map(|x| x.1).collect();
        format!("({} : {})", vals.join(", "), tys.join(", "))
    };
    let mut head = format!(
        "linalg.generic {{indexing_maps = [{}], iterator_types = [\"{}\"]}}",
        maps.join(", "),
        if reduction { "reduction" } else { "parallel" }
    );
    if !ins.is_empty() {
        head.push_str(&format!(" ins{}", list(ins)));
    }
    head.push_str(&format!(" outs{} {{", list(outs)));
    b.open(head);
    let args: Vec<String> = (0..ins.len() + outs.len())
        .map(|_| {
            let n = format!("%a{}", b.next);
            b.next += 1;
            n
        })
        .collect();
    // Each argument has its memref's element type (f32, or an f64 accumulator).
    let elem = |ty: &str| if ty.contains("f64") { "f64" } else { "f32" };
    let decl: Vec<String> = args.iter().zip(ins.iter().chain(outs)).map(|(a, x)| format!("{a}: {}", elem(x.1))).collect();
    b.indent -= 1;
    b.line(format!("^bb0({}):", decl.join(", ")));
    b.indent += 1;
    let ys = body(b, &args);
    let yield_tys: Vec<&str> = outs.iter().map(|x| elem(x.1)).collect();
    b.line(format!("linalg.yield {} : {}", ys.join(", "), yield_tys.join(", ")));
    b.close();
}

/// A norm kernel ([`crate::cpu::codegen::NormFn`]): each row `y = (x − mean)·(var + eps)^-½
/// (·w)(+b)`, the mean only for a layer norm; sums in f32 with `reassoc`.
pub fn norm(name: &str, kind: NormKind, eps: f64, weight: bool, bias: bool) -> String {
    let mut b = Body::new();
    let x = matrix(&mut b, "%x");
    let y = matrix(&mut b, "%y");
    let one = b.i64(1);
    let vec_ty = "memref<?xf32>";
    let w = weight.then(|| b.memref("%w", &["%d"], &[&one], vec_ty));
    let bi = bias.then(|| b.memref("%bias", &["%d"], &[&one], vec_ty));
    let acc = b.let_("memref.alloca() : memref<f32>");
    let zero = b.f32(0.0);
    let df = b.let_("arith.sitofp %d : i64 to f32");
    let dd = b.let_("arith.sitofp %d : i64 to f64");
    let eps = b.f64(eps);
    let one64 = b.f64(1.0);
    open_rows(&mut b, &x, Some(&y));
    let mean = if kind == NormKind::Layer {
        b.line(format!("memref.store {zero}, {acc}[] : memref<f32>"));
        generic(&mut b, true, &[("%xr", ROW, false)], &[(&acc, "memref<f32>", true)], &|b, a| {
            vec![b.let_(format!("arith.addf {}, {} fastmath<reassoc> : f32", a[1], a[0]))]
        });
        let s = b.let_(format!("memref.load {acc}[] : memref<f32>"));
        Some(b.bin("arith.divf", &s, &df, "f32"))
    } else {
        None
    };
    let centre = |b: &mut Body, x: &str| match &mean {
        Some(m) => b.bin("arith.subf", x, m, "f32"),
        None => x.to_string(),
    };
    b.line(format!("memref.store {zero}, {acc}[] : memref<f32>"));
    generic(&mut b, true, &[("%xr", ROW, false)], &[(&acc, "memref<f32>", true)], &|b, a| {
        let c = centre(b, &a[0]);
        let sq = b.bin("arith.mulf", &c, &c, "f32");
        vec![b.let_(format!("arith.addf {}, {sq} fastmath<reassoc> : f32", a[1]))]
    });
    let v = b.let_(format!("memref.load {acc}[] : memref<f32>"));
    let vd = b.let_(format!("arith.extf {v} : f32 to f64"));
    let vm = b.bin("arith.divf", &vd, &dd, "f64");
    let ve = b.bin("arith.addf", &vm, &eps, "f64");
    let sd = b.let_(format!("math.sqrt {ve} : f64"));
    let invd = b.bin("arith.divf", &one64, &sd, "f64");
    let inv = b.let_(format!("arith.truncf {invd} : f64 to f32"));
    let mut ins = vec![("%xr", ROW, false)];
    if let Some(w) = &w {
        ins.push((w, vec_ty, false));
    }
    if let Some(bi) = &bi {
        ins.push((bi, vec_ty, false));
    }
    generic(&mut b, false, &ins, &[("%yr", ROW, false)], &|b, a| {
        let c = centre(b, &a[0]);
        let mut y = b.bin("arith.mulf", &c, &inv, "f32");
        let mut k = 1;
        if weight {
            y = b.bin("arith.mulf", &y, &a[k], "f32");
            k += 1;
        }
        if bias {
            y = b.bin("arith.addf", &y, &a[k], "f32");
        }
        vec![y]
    });
    b.close();
    b.line("return");
    format!(
        "  func.func @{name}(%y: !llvm.ptr {{llvm.noalias}}, %x: !llvm.ptr {{llvm.noalias}}, %w: !llvm.ptr {{llvm.noalias}}, %bias: !llvm.ptr {{llvm.noalias}}, %rows: i64, %d: i64) {{\n{}  }}\n",
        b.text
    )
}

/// A softmax kernel ([`crate::cpu::codegen::SoftmaxFn`]): each row `e^(x − max) / Σ`: the
/// maximum, then the exponentials stored and summed (one `linalg.generic` with two outputs),
/// then scaled.
pub fn softmax(name: &str) -> String {
    let mut b = Body::new();
    let x = matrix(&mut b, "%x");
    let y = matrix(&mut b, "%y");
    let acc = b.let_("memref.alloca() : memref<f32>");
    let (ninf, zero, one) = (b.f32(f32::NEG_INFINITY), b.f32(0.0), b.f32(1.0));
    let accs = (acc.as_str(), "memref<f32>", true);
    open_rows(&mut b, &x, Some(&y));
    b.line(format!("memref.store {ninf}, {acc}[] : memref<f32>"));
    generic(&mut b, true, &[("%xr", ROW, false)], &[accs], &|b, a| vec![b.bin("arith.maximumf", &a[1], &a[0], "f32")]);
    let m = b.let_(format!("memref.load {acc}[] : memref<f32>"));
    b.line(format!("memref.store {zero}, {acc}[] : memref<f32>"));
    generic(&mut b, true, &[("%xr", ROW, false)], &[("%yr", ROW, false), accs], &|b, a| {
        let c = b.bin("arith.subf", &a[0], &m, "f32");
        let e = exp_negf(b, &c);
        let s = b.let_(format!("arith.addf {}, {e} fastmath<reassoc> : f32", a[2]));
        vec![e, s]
    });
    let s = b.let_(format!("memref.load {acc}[] : memref<f32>"));
    let inv = b.bin("arith.divf", &one, &s, "f32");
    generic(&mut b, false, &[], &[("%yr", ROW, false)], &|b, a| vec![b.bin("arith.mulf", &a[0], &inv, "f32")]);
    b.close();
    b.line("return");
    format!("  func.func @{name}(%y: !llvm.ptr {{llvm.noalias}}, %x: !llvm.ptr {{llvm.noalias}}, %rows: i64, %d: i64) {{\n{}  }}\n", b.text)
}

/// A reduction kernel ([`crate::cpu::codegen::ReduceFn`]): each row of `x` to one element of
/// `y` by a `linalg.generic` reduction into a 0-D accumulator: sums and means in f64 (the
/// interpreter's precision, with `reassoc`), maxima and minima NaN-propagating
/// (`arith.maximumf`/`minimumf`); an empty row gives the identity (a mean: 0/0).
pub fn reduce(name: &str, op: ReduceOp) -> String {
    let mut b = Body::new();
    let x = matrix(&mut b, "%x");
    let one = b.i64(1);
    let y = b.memref("%y", &["%rows"], &[&one], "memref<?xf32>");
    let (ty, init) = match op {
        ReduceOp::Sum | ReduceOp::Mean => ("f64", b.f64(0.0)),
        ReduceOp::Max => ("f32", b.f32(f32::NEG_INFINITY)),
        ReduceOp::Min => ("f32", b.f32(f32::INFINITY)),
    };
    let acc_ty = format!("memref<{ty}>");
    let acc = b.let_(format!("memref.alloca() : {acc_ty}"));
    let dd = b.let_("arith.sitofp %d : i64 to f64");
    open_rows(&mut b, &x, None);
    b.line(format!("memref.store {init}, {acc}[] : {acc_ty}"));
    generic(&mut b, true, &[("%xr", ROW, false)], &[(&acc, &acc_ty, true)], &|b, a| {
        vec![match op {
            ReduceOp::Sum | ReduceOp::Mean => {
                let xd = b.let_(format!("arith.extf {} : f32 to f64", a[0]));
                b.let_(format!("arith.addf {}, {xd} fastmath<reassoc> : f64", a[1]))
            }
            ReduceOp::Max => b.bin("arith.maximumf", &a[1], &a[0], "f32"),
            ReduceOp::Min => b.bin("arith.minimumf", &a[1], &a[0], "f32"),
        }]
    });
    let mut v = b.let_(format!("memref.load {acc}[] : {acc_ty}"));
    if op == ReduceOp::Mean {
        v = b.bin("arith.divf", &v, &dd, "f64");
    }
    if ty == "f64" {
        v = b.let_(format!("arith.truncf {v} : f64 to f32"));
    }
    b.line(format!("memref.store {v}, {y}[%r] : memref<?xf32>"));
    b.close();
    b.line("return");
    format!("  func.func @{name}(%y: !llvm.ptr {{llvm.noalias}}, %x: !llvm.ptr {{llvm.noalias}}, %rows: i64, %d: i64) {{\n{}  }}\n", b.text)
}

/// One online-softmax step of the attention kernel ([`crate::cpu::codegen::OnlineSoftmaxFn`]),
/// as the LLVM backend's: per row of scores, the new running maximum (the row's, NaN-propagating,
/// then `maxnumf` with the old one), the scores replaced by `e^(s − max)` and summed (one
/// `linalg.generic` with two outputs), the running sum (f64) rescaled and grown, the row's
/// accumulators rescaled where the maximum grew. A row whose scores are all `-inf` or NaN
/// becomes zeros, its sum NaN where a score was NaN.
pub fn online_softmax(name: &str) -> String {
    let mut b = Body::new();
    let x = matrix(&mut b, "%sp");
    let one = b.i64(1);
    let acc_m = b.memref("%acc", &["%rows", "%ev"], &["%ev", &one], "memref<?x?xf32>");
    let m = b.memref("%m", &["%rows"], &[&one], "memref<?xf32>");
    let l = b.memref("%l", &["%rows"], &[&one], "memref<?xf64>");
    let cell = b.let_("memref.alloca() : memref<f32>");
    let (ninf, zero, one32) = (b.f32(f32::NEG_INFINITY), b.f32(0.0), b.f32(1.0));
    let nan64 = b.f64(f64::NAN);
    let zero64 = b.i64(0);
    let evn = b.let_("arith.index_cast %ev : i64 to index");
    let cells = (cell.as_str(), "memref<f32>", true);
    open_rows(&mut b, &x, None);
    let m0 = b.let_(format!("memref.load {m}[%r] : memref<?xf32>"));
    b.line(format!("memref.store {ninf}, {cell}[] : memref<f32>"));
    generic(&mut b, true, &[("%xr", ROW, false)], &[cells], &|b, a| vec![b.bin("arith.maximumf", &a[1], &a[0], "f32")]);
    let rowmax = b.let_(format!("memref.load {cell}[] : memref<f32>"));
    let newm = b.bin("arith.maxnumf", &m0, &rowmax, "f32");
    let dead = b.cmpf("oeq", &newm, &ninf, "f32");
    b.open(format!("scf.if {dead} {{"));
    // Every score so far is -inf or NaN: zeros; a NaN makes the sum NaN.
    b.line(format!("memref.store {zero}, {cell}[] : memref<f32>"));
    generic(&mut b, true, &[("%xr", ROW, false)], &[cells], &|b, a| {
        let u = b.cmpf("uno", &a[0], &a[0], "f32");
        let f = b.let_(format!("arith.uitofp {u} : i1 to f32"));
        vec![b.bin("arith.addf", &a[1], &f, "f32")]
    });
    let nans = b.let_(format!("memref.load {cell}[] : memref<f32>"));
    let any = b.cmpf("ogt", &nans, &zero, "f32");
    b.open(format!("scf.if {any} {{"));
    b.line(format!("memref.store {nan64}, {l}[%r] : memref<?xf64>"));
    b.close();
    generic(&mut b, false, &[], &[("%xr", ROW, false)], &|_, _| vec![zero.clone()]);
    b.close();
    b.open("else {");
    let dm = b.bin("arith.subf", &m0, &newm, "f32");
    let rescale = exp_negf(&mut b, &dm);
    b.line(format!("memref.store {zero}, {cell}[] : memref<f32>"));
    generic(&mut b, true, &[], &[("%xr", ROW, false), cells], &|b, a| {
        let c = b.bin("arith.subf", &a[0], &newm, "f32");
        let e = exp_negf(b, &c);
        let s = b.let_(format!("arith.addf {}, {e} fastmath<reassoc> : f32", a[1]));
        vec![e, s]
    });
    let sum = b.let_(format!("memref.load {cell}[] : memref<f32>"));
    let l0 = b.let_(format!("memref.load {l}[%r] : memref<?xf64>"));
    let rd = b.let_(format!("arith.extf {rescale} : f32 to f64"));
    let sd = b.let_(format!("arith.extf {sum} : f32 to f64"));
    let l1 = b.bin("arith.mulf", &l0, &rd, "f64");
    let l2 = b.bin("arith.addf", &l1, &sd, "f64");
    b.line(format!("memref.store {l2}, {l}[%r] : memref<?xf64>"));
    b.line(format!("memref.store {newm}, {m}[%r] : memref<?xf32>"));
    let same = b.cmpf("oeq", &rescale, &one32, "f32");
    let evpos = b.let_(format!("arith.cmpi sgt, %ev, {zero64} : i64"));
    let grew = b.let_(format!("arith.xori {same}, {evpos} : i1"));
    let go = b.bin("arith.andi", &grew, &evpos, "i1");
    b.open(format!("scf.if {go} {{"));
    b.line(format!("%ar = memref.subview {acc_m}[%r, 0] [1, {evn}] [1, 1] : memref<?x?xf32> to {ROW}"));
    generic(&mut b, false, &[], &[("%ar", ROW, false)], &|b, a| vec![b.bin("arith.mulf", &a[0], &rescale, "f32")]);
    b.close();
    b.close();
    b.close();
    b.line("return");
    format!(
        "  func.func @{name}(%sp: !llvm.ptr {{llvm.noalias}}, %rows: i64, %d: i64, %m: !llvm.ptr {{llvm.noalias}}, %l: !llvm.ptr {{llvm.noalias}}, %acc: !llvm.ptr {{llvm.noalias}}, %ev: i64) {{\n{}  }}\n",
        b.text
    )
}

//! LLVM IR (text) for the CPU executor's kernels: row kernels of scalar programs (the ABI of
//! [`crate::cpu::cranelift::RowFn`]), norms and softmax over rows. Loops are written plainly
//! (one counted loop per row, `reassoc` sums) for LLVM's vectorizer; transcendental functions
//! of f32 values are inline polynomials (`@tsr_expf` and the ones built on it) so that the loops
//! that use them vectorize too.
//!
//! Semantics are the interpreter's: a scalar program computes in f64 and rounds to each node's
//! element type after every node, as the Cranelift lowering does; exp, the logistic function,
//! tanh, SiLU and both GELUs of an f32 node use the f32 forms of `cpu/vmath.rs` (relative
//! error below 1e-6); other transcendental functions call the interpreter's definition.

use std::fmt::Write;
use tessera_ir::{BinaryOp, DType, NormKind, ReduceOp, SNode, ScoreFn, UnaryOp, BINARY_OPS, UNARY_OPS};

/// An LLVM `double` constant, exactly (hexadecimal bits).
fn f64c(x: f64) -> String {
    format!("0x{:016X}", x.to_bits())
}

/// An LLVM `float` constant: LLVM writes floats as the bits of the equal double.
pub(super) fn f32c(x: f32) -> String {
    f64c(f64::from(x))
}

/// The declarations, helper functions and attributes every module starts with. `cpu` and
/// `features` are the host's, put on every kernel so that MCJIT's code generator uses them.
pub fn prelude(cpu: &str, features: &str) -> String {
    let mut s = String::new();
    s.push_str(
        "declare double @tsr_unary(i64, double)
declare double @tsr_binary(i64, double, double, i64)
declare double @tsr_gather(ptr, ptr, i64, double)
declare double @llvm.fabs.f64(double)
declare double @llvm.sqrt.f64(double)
declare double @llvm.floor.f64(double)
declare double @llvm.maximum.f64(double, double)
declare double @llvm.minimum.f64(double, double)
declare i64 @llvm.fptosi.sat.i64.f64(double)
declare i64 @llvm.fptosi.sat.i64.f32(float)
declare float @llvm.fabs.f32(float)
declare float @llvm.fma.f32(float, float, float)
declare float @llvm.maximum.f32(float, float)
declare float @llvm.maxnum.f32(float, float)
declare float @llvm.minimum.f32(float, float)
declare float @llvm.copysign.f32(float, float)
declare float @llvm.sqrt.f32(float)
",
    );
    // e^x in f32 for any x (vmath's exp_neg, with 2^n split in two factors so that n may reach
    // ±252: results overflow to inf and underflow to 0 as the f64 definition rounded does).
    use crate::approx::{ERF_P, ERF_POLY, EXP_LN2_HI, EXP_LN2_LO, EXP_POLY, EXP_ROUND as round, TANH_SERIES_BELOW};
    let _ = write!(
        s,
        "
define internal float @tsr_expf(float %x) #1 {{
  %lo = fcmp olt float %x, {lo}
  %x1 = select i1 %lo, float {lo}, float %x
  %hi = fcmp ogt float %x1, {hi}
  %x2 = select i1 %hi, float {hi}, float %x1
  %t = call float @llvm.fma.f32(float %x2, float {log2e}, float {round})
  %n = fsub float %t, {round}
  %tb = bitcast float %t to i32
  %ni = sub i32 %tb, {roundbits}
  %h = ashr i32 %ni, 1
  %l = sub i32 %ni, %h
  %hb = add i32 %h, 127
  %lb = add i32 %l, 127
  %hs = shl i32 %hb, 23
  %ls = shl i32 %lb, 23
  %s1 = bitcast i32 %hs to float
  %s2 = bitcast i32 %ls to float
  %r0 = call float @llvm.fma.f32(float %n, float {ln2hi}, float %x2)
  %r = call float @llvm.fma.f32(float %n, float {ln2lo}, float %r0)
  %p0 = call float @llvm.fma.f32(float {c6}, float %r, float {c5})
  %p1 = call float @llvm.fma.f32(float %p0, float %r, float {c4})
  %p2 = call float @llvm.fma.f32(float %p1, float %r, float {c3})
  %p3 = call float @llvm.fma.f32(float %p2, float %r, float {c2})
  %p4 = call float @llvm.fma.f32(float %p3, float %r, float {c1})
  %p5 = call float @llvm.fma.f32(float %p4, float %r, float {c0})
  %y0 = fmul float %p5, %s1
  %y = fmul float %y0, %s2
  ret float %y
}}

; e^x for x <= 0 (and NaN), as vmath's exp_neg: below -87, e^-87 (negligible beside any sum
; with 1); one scale factor, 2^n with n >= -126.
define internal float @tsr_exp_negf(float %x) #1 {{
  %lo = fcmp olt float %x, {neg_lo}
  %x1 = select i1 %lo, float {neg_lo}, float %x
  %t = call float @llvm.fma.f32(float %x1, float {log2e}, float {round})
  %n = fsub float %t, {round}
  %tb = bitcast float %t to i32
  %ni = sub i32 %tb, {roundbits}
  %nb = add i32 %ni, 127
  %ns = shl i32 %nb, 23
  %s = bitcast i32 %ns to float
  %r0 = call float @llvm.fma.f32(float %n, float {ln2hi}, float %x1)
  %r = call float @llvm.fma.f32(float %n, float {ln2lo}, float %r0)
  %p0 = call float @llvm.fma.f32(float {c6}, float %r, float {c5})
  %p1 = call float @llvm.fma.f32(float %p0, float %r, float {c4})
  %p2 = call float @llvm.fma.f32(float %p1, float %r, float {c3})
  %p3 = call float @llvm.fma.f32(float %p2, float %r, float {c2})
  %p4 = call float @llvm.fma.f32(float %p3, float %r, float {c1})
  %p5 = call float @llvm.fma.f32(float %p4, float %r, float {c0})
  %y = fmul float %p5, %s
  ret float %y
}}

define internal float @tsr_sigmoidf(float %x) #1 {{
  %a = call float @llvm.fabs.f32(float %x)
  %na = fneg float %a
  %e = call float @tsr_expf(float %na)
  %inf = fcmp oeq float %a, {inf}
  %t = select i1 %inf, float 0.0, float %e
  %d = fadd float %t, 1.0
  %s = fdiv float 1.0, %d
  %ts = fmul float %t, %s
  %pos = fcmp oge float %x, 0.0
  %y = select i1 %pos, float %s, float %ts
  ret float %y
}}

define internal float @tsr_tanhf(float %x) #1 {{
  %x2 = fmul float %x, %x
  %q0 = call float @llvm.fma.f32(float %x2, float {c15}, float {cm3})
  %q1 = call float @llvm.fma.f32(float %x2, float %q0, float 1.0)
  %series = fmul float %x, %q1
  %tx = fmul float %x, 2.0
  %sg = call float @tsr_sigmoidf(float %tx)
  %sg2 = fmul float %sg, 2.0
  %big = fsub float %sg2, 1.0
  %a = call float @llvm.fabs.f32(float %x)
  %small = fcmp olt float %a, {small}
  %y = select i1 %small, float %series, float %big
  ret float %y
}}

define internal float @tsr_erff(float %x) #1 {{
  %a = call float @llvm.fabs.f32(float %x)
  %d = call float @llvm.fma.f32(float {p}, float %a, float 1.0)
  %t = fdiv float 1.0, %d
  %q0 = call float @llvm.fma.f32(float {a5}, float %t, float {a4})
  %q1 = call float @llvm.fma.f32(float %q0, float %t, float {a3})
  %q2 = call float @llvm.fma.f32(float %q1, float %t, float {a2})
  %q3 = call float @llvm.fma.f32(float %q2, float %t, float {a1})
  %na = fneg float %a
  %aa = fmul float %na, %a
  %e = call float @tsr_expf(float %aa)
  %qt = fmul float %q3, %t
  %qe = fmul float %qt, %e
  %y = fsub float 1.0, %qe
  %r = call float @llvm.copysign.f32(float %y, float %x)
  ret float %r
}}
",
        lo = f32c(-104.0),
        hi = f32c(88.8),
        neg_lo = f32c(-87.0),
        log2e = f32c(std::f32::consts::LOG2_E),
        round = f32c(round),
        roundbits = round.to_bits(),
        ln2hi = f32c(EXP_LN2_HI),
        ln2lo = f32c(EXP_LN2_LO),
        c6 = f32c(EXP_POLY[0]),
        c5 = f32c(EXP_POLY[1]),
        c4 = f32c(EXP_POLY[2]),
        c3 = f32c(EXP_POLY[3]),
        c2 = f32c(EXP_POLY[4]),
        c1 = f32c(EXP_POLY[5]),
        c0 = f32c(EXP_POLY[6]),
        inf = f32c(f32::INFINITY),
        c15 = f32c(2.0 / 15.0),
        cm3 = f32c(-1.0 / 3.0),
        small = f32c(TANH_SERIES_BELOW),
        p = f32c(ERF_P),
        a5 = f32c(ERF_POLY[0]),
        a4 = f32c(ERF_POLY[1]),
        a3 = f32c(ERF_POLY[2]),
        a2 = f32c(ERF_POLY[3]),
        a1 = f32c(ERF_POLY[4]),
    );
    let _ = write!(
        s,
        "
attributes #0 = {{ nounwind \"target-cpu\"=\"{cpu}\" \"target-features\"=\"{features}\" }}
attributes #1 = {{ alwaysinline nounwind \"target-cpu\"=\"{cpu}\" \"target-features\"=\"{features}\" }}
attributes #2 = {{ nounwind \"target-cpu\"=\"{cpu}\" \"target-features\"=\"{features}\" \"prefer-vector-width\"=\"512\" }}
"
    );
    s
}

/// A function body being written: fresh value names and the text.
pub(super) struct Body {
    pub(super) text: String,
    next: usize,
}

impl Body {
    pub(super) fn new() -> Body {
        Body { text: String::new(), next: 0 }
    }

    /// Appends `%tN = <rhs>` and returns `%tN`.
    pub(super) fn let_(&mut self, rhs: impl AsRef<str>) -> String {
        let name = format!("%t{}", self.next);
        self.next += 1;
        let _ = writeln!(self.text, "  {name} = {}", rhs.as_ref());
        name
    }

    pub(super) fn line(&mut self, l: impl AsRef<str>) {
        self.text.push_str("  ");
        self.text.push_str(l.as_ref());
        self.text.push('\n');
    }

    pub(super) fn label(&mut self, l: &str) {
        let _ = writeln!(self.text, "{l}:");
    }

    fn fmul_f32(&mut self, a: &str, b: &str) -> String {
        self.let_(format!("fmul float {a}, {b}"))
    }

    /// `1.0` or `0.0` from an `i1`.
    fn bool_f64(&mut self, c: &str) -> String {
        self.let_(format!("uitofp i1 {c} to double"))
    }
}

/// Whether `u` has an inline f32 form ([`unary_f32`]).
fn has_f32_form(u: UnaryOp) -> bool {
    matches!(u, UnaryOp::Exp | UnaryOp::Sigmoid | UnaryOp::Tanh | UnaryOp::Silu | UnaryOp::GeluTanh | UnaryOp::GeluErf)
}

/// The f32 form of `u`, applied to the float value `s`, where there is one.
pub(super) fn unary_f32(b: &mut Body, u: UnaryOp, s: &str) -> Option<String> {
    Some(match u {
        UnaryOp::Exp => b.let_(format!("call float @tsr_expf(float {s})")),
        UnaryOp::Sigmoid => b.let_(format!("call float @tsr_sigmoidf(float {s})")),
        UnaryOp::Tanh => b.let_(format!("call float @tsr_tanhf(float {s})")),
        UnaryOp::Silu => {
            let g = b.let_(format!("call float @tsr_sigmoidf(float {s})"));
            b.fmul_f32(s, &g)
        }
        UnaryOp::GeluTanh => {
            // x·σ(2c(x + 0.044715x³)), c = √(2/π).
            let x2 = b.fmul_f32(s, s);
            let x3 = b.fmul_f32(&x2, s);
            let inner = b.let_(format!("call float @llvm.fma.f32(float {}, float {x3}, float {s})", f32c(crate::approx::GELU_CUBIC)));
            let z = b.fmul_f32(&inner, &f32c(crate::approx::GELU_TANH_2C));
            let g = b.let_(format!("call float @tsr_sigmoidf(float {z})"));
            b.fmul_f32(s, &g)
        }
        UnaryOp::GeluErf => {
            let z = b.fmul_f32(s, &f32c(std::f32::consts::FRAC_1_SQRT_2));
            let e = b.let_(format!("call float @tsr_erff(float {z})"));
            let one = b.let_(format!("fadd float {e}, 1.0"));
            let half = b.fmul_f32(&one, &f32c(0.5));
            b.fmul_f32(s, &half)
        }
        _ => return None,
    })
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
            SNode::Const(c) => b.let_(format!("fadd double {}, 0.0", f64c(*c))),
            SNode::Unary(u, a) => {
                let a = get(a)?;
                match plain_unary(b, *u, &a, "double") {
                    Some(y) => y,
                    None if *ty == DType::F32 && has_f32_form(*u) => {
                        let s = b.let_(format!("fptrunc double {a} to float"));
                        let y = unary_f32(b, *u, &s).unwrap_or(s);
                        b.let_(format!("fpext float {y} to double"))
                    }
                    None => {
                        let code = UNARY_OPS.iter().position(|(o, _)| o == u).unwrap_or(usize::MAX);
                        b.let_(format!("call double @tsr_unary(i64 {code}, double {a})"))
                    }
                }
            }
            SNode::Binary(op, x, y) => {
                let int = f.nodes.get(*x as usize).map(|n| n.1) == Some(DType::I64);
                let (p, q) = (get(x)?, get(y)?);
                match op {
                    BinaryOp::Div if int => {
                        let d = b.let_(format!("fdiv double {p}, {q}"));
                        b.let_(format!("call double @llvm.floor.f64(double {d})"))
                    }
                    BinaryOp::Rem => {
                        let d = b.let_(format!("fdiv double {p}, {q}"));
                        let fl = b.let_(format!("call double @llvm.floor.f64(double {d})"));
                        let m = b.let_(format!("fmul double {q}, {fl}"));
                        b.let_(format!("fsub double {p}, {m}"))
                    }
                    BinaryOp::Pow => {
                        let code = BINARY_OPS.iter().position(|(o, _)| o == op).unwrap_or(usize::MAX);
                        b.let_(format!("call double @tsr_binary(i64 {code}, double {p}, double {q}, i64 {})", i64::from(int)))
                    }
                    _ => plain_binary(b, *op, &p, &q, "double").ok_or_else(|| format!("no LLVM lowering of {op:?}"))?,
                }
            }
            SNode::Where(c, x, y) => {
                let (c, x, y) = (get(c)?, get(x)?, get(y)?);
                let t = b.let_(format!("fcmp une double {c}, 0.0"));
                b.let_(format!("select i1 {t}, double {x}, double {y}"))
            }
            SNode::Cast(a) => get(a)?,
            SNode::Gather(t, i) => {
                let i = get(i)?;
                b.let_(format!("call double @tsr_gather(ptr %tables, ptr %lens, i64 {t}, double {i})"))
            }
        };
        // Store semantics of the node's element type.
        let x = match ty {
            DType::F32 => {
                let s = b.let_(format!("fptrunc double {x} to float"));
                b.let_(format!("fpext float {s} to double"))
            }
            DType::I64 => {
                let i = b.let_(format!("call i64 @llvm.fptosi.sat.i64.f64(double {x})"));
                b.let_(format!("sitofp i64 {i} to double"))
            }
            DType::Bool => {
                let c = b.let_(format!("fcmp une double {x}, 0.0"));
                b.bool_f64(&c)
            }
        };
        vals.push(x);
    }
    vals.last().cloned().ok_or_else(|| "an empty scalar program".to_string())
}

/// The intrinsics' suffix of the float type `ty` (`float` or `double`).
fn suffix(ty: &str) -> &'static str {
    if ty == "double" {
        "f64"
    } else {
        "f32"
    }
}

/// `u` of `x` of float type `ty` (`float` or `double`) where it is one instruction or a few,
/// as the interpreter computes it; `None` for the transcendental ones, which each caller
/// lowers its own way (row kernels in f64, scan bodies in f32).
pub(super) fn plain_unary(b: &mut Body, u: UnaryOp, x: &str, ty: &str) -> Option<String> {
    let sx = suffix(ty);
    Some(match u {
        UnaryOp::Neg => b.let_(format!("fneg {ty} {x}")),
        UnaryOp::Abs => b.let_(format!("call {ty} @llvm.fabs.{sx}({ty} {x})")),
        UnaryOp::Sqrt => b.let_(format!("call {ty} @llvm.sqrt.{sx}({ty} {x})")),
        UnaryOp::Rsqrt => {
            let r = b.let_(format!("call {ty} @llvm.sqrt.{sx}({ty} {x})"));
            b.let_(format!("fdiv {ty} 1.0, {r}"))
        }
        UnaryOp::Relu => {
            let c = b.let_(format!("fcmp olt {ty} {x}, 0.0"));
            b.let_(format!("select i1 {c}, {ty} 0.0, {ty} {x}"))
        }
        UnaryOp::Not => {
            let c = b.let_(format!("fcmp oeq {ty} {x}, 0.0"));
            b.let_(format!("uitofp i1 {c} to {ty}"))
        }
        _ => return None,
    })
}

/// `op` of the float values `x` and `y` of type `ty` where it is arithmetic, a comparison or a
/// logical op (1 or 0); `None` for `Rem` and `Pow`, and the caller's to treat a division of
/// integers apart.
pub(super) fn plain_binary(b: &mut Body, op: BinaryOp, x: &str, y: &str, ty: &str) -> Option<String> {
    let sx = suffix(ty);
    let cmp = |b: &mut Body, cc: &str| {
        let c = b.let_(format!("fcmp {cc} {ty} {x}, {y}"));
        b.let_(format!("uitofp i1 {c} to {ty}"))
    };
    Some(match op {
        BinaryOp::Add => b.let_(format!("fadd {ty} {x}, {y}")),
        BinaryOp::Sub => b.let_(format!("fsub {ty} {x}, {y}")),
        BinaryOp::Mul => b.let_(format!("fmul {ty} {x}, {y}")),
        BinaryOp::Div => b.let_(format!("fdiv {ty} {x}, {y}")),
        BinaryOp::Max => b.let_(format!("call {ty} @llvm.maximum.{sx}({ty} {x}, {ty} {y})")),
        BinaryOp::Min => b.let_(format!("call {ty} @llvm.minimum.{sx}({ty} {x}, {ty} {y})")),
        BinaryOp::Eq => cmp(b, "oeq"),
        BinaryOp::Ne => cmp(b, "une"),
        BinaryOp::Lt => cmp(b, "olt"),
        BinaryOp::Le => cmp(b, "ole"),
        BinaryOp::Gt => cmp(b, "ogt"),
        BinaryOp::Ge => cmp(b, "oge"),
        BinaryOp::And | BinaryOp::Or => {
            let (c1, c2) = (b.let_(format!("fcmp une {ty} {x}, 0.0")), b.let_(format!("fcmp une {ty} {y}, 0.0")));
            let c = b.let_(format!("{} i1 {c1}, {c2}", if op == BinaryOp::And { "and" } else { "or" }));
            b.let_(format!("uitofp i1 {c} to {ty}"))
        }
        BinaryOp::Rem | BinaryOp::Pow => return None,
    })
}

/// The LLVM type an element of `ty` is stored as.
pub(super) fn elem(ty: DType) -> &'static str {
    match ty {
        DType::F32 => "float",
        DType::I64 => "i64",
        DType::Bool => "i8",
    }
}

/// A row kernel of `f` named `name`: `(out, len, ins, steps, vars, tables, lens)`. With
/// `steps`, operand `k` advances by `steps[k]` (0 or 1) whatever the `steps` argument says.
pub fn row(name: &str, f: &ScoreFn, leaf_types: &[DType], out: DType, steps: Option<&[i64]>) -> Result<String, String> {
    let mut b = Body::new();
    let mut bases = Vec::new();
    for (k, _) in leaf_types.iter().enumerate() {
        let slot = b.let_(format!("getelementptr inbounds ptr, ptr %ins, i64 {k}"));
        let base = b.let_(format!("load ptr, ptr {slot}"));
        let step = match steps {
            Some(st) => st.get(k).copied().unwrap_or(1).to_string(),
            None => {
                let s = b.let_(format!("getelementptr inbounds i64, ptr %steps, i64 {k}"));
                b.let_(format!("load i64, ptr {s}"))
            }
        };
        bases.push((base, step));
    }
    // Only score rows read the variables (`vars` is null for elementwise rows).
    let var_loads: Vec<String> = (1..4).map(|v| b.let_(format!("getelementptr double, ptr %vars, i64 {}", v - 1))).collect();
    b.line("%go = icmp sgt i64 %len, 0");
    b.line("br i1 %go, label %body, label %exit");
    b.label("body");
    b.line("%i = phi i64 [ 0, %entry ], [ %i.next, %body ]");
    let leaf = |b: &mut Body, k: u32| -> String {
        let (base, step) = &bases[k as usize];
        let ty = leaf_types[k as usize];
        let at = if step == "0" {
            "0".to_string()
        } else if step == "1" {
            "%i".to_string()
        } else {
            b.let_(format!("mul i64 %i, {step}"))
        };
        let p = b.let_(format!("getelementptr inbounds {}, ptr {base}, i64 {at}", elem(ty)));
        let x = b.let_(format!("load {}, ptr {p}", elem(ty)));
        match ty {
            DType::F32 => b.let_(format!("fpext float {x} to double")),
            DType::I64 => b.let_(format!("sitofp i64 {x} to double")),
            DType::Bool => b.let_(format!("uitofp i8 {x} to double")),
        }
    };
    let var = |b: &mut Body, v: usize| -> String {
        match v {
            // The raw score: this element of `out` (f32).
            0 => {
                let p = b.let_("getelementptr inbounds float, ptr %out, i64 %i");
                let x = b.let_(format!("load float, ptr {p}"));
                b.let_(format!("fpext float {x} to double"))
            }
            // The key index: J0 + j.
            4 => {
                let p = b.let_("getelementptr double, ptr %vars, i64 3");
                let j0 = b.let_(format!("load double, ptr {p}"));
                let j = b.let_("sitofp i64 %i to double");
                b.let_(format!("fadd double {j0}, {j}"))
            }
            v => {
                let p = var_loads.get(v - 1).cloned().unwrap_or_else(|| "%vars".into());
                b.let_(format!("load double, ptr {p}"))
            }
        }
    };
    let v = nodes(&mut b, f, &leaf, &var)?;
    let p = b.let_(format!("getelementptr inbounds {}, ptr %out, i64 %i", elem(out)));
    match out {
        DType::F32 => {
            let x = b.let_(format!("fptrunc double {v} to float"));
            b.line(format!("store float {x}, ptr {p}"));
        }
        DType::I64 => {
            let x = b.let_(format!("call i64 @llvm.fptosi.sat.i64.f64(double {v})"));
            b.line(format!("store i64 {x}, ptr {p}"));
        }
        DType::Bool => {
            let c = b.let_(format!("fcmp une double {v}, 0.0"));
            let x = b.let_(format!("zext i1 {c} to i8"));
            b.line(format!("store i8 {x}, ptr {p}"));
        }
    }
    b.line("%i.next = add nuw nsw i64 %i, 1");
    b.line("%more = icmp slt i64 %i.next, %len");
    b.line("br i1 %more, label %body, label %exit");
    b.label("exit");
    b.line("ret void");
    Ok(format!(
        "define void @{name}(ptr noalias %out, i64 %len, ptr %ins, ptr %steps, ptr %vars, ptr %tables, ptr %lens) #0 {{\nentry:\n{}}}\n",
        b.text
    ))
}

/// A loop `for %j in 0..%d` in block `name`, entered from `from`, whose body `body` writes
/// (with `%j` the index); `carried` are `(name, type, init, next)` values carried around it.
/// Leaves the body open for the caller and returns nothing: see [`close_loop`].
fn open_loop(b: &mut Body, name: &str, from: &str, carried: &[(&str, &str, &str, &str)]) {
    b.line(format!("br label %{name}"));
    b.label(name);
    b.line(format!("%{name}.j = phi i64 [ 0, %{from} ], [ %{name}.jn, %{name} ]"));
    for (v, ty, init, next) in carried {
        b.line(format!("%{v} = phi {ty} [ {init}, %{from} ], [ {next}, %{name} ]"));
    }
}

fn close_loop(b: &mut Body, name: &str, after: &str) {
    b.line(format!("%{name}.jn = add nuw nsw i64 %{name}.j, 1"));
    b.line(format!("%{name}.more = icmp slt i64 %{name}.jn, %d"));
    b.line(format!("br i1 %{name}.more, label %{name}, label %{after}"));
    b.label(after);
}

/// A norm kernel ([`crate::cpu::codegen::NormFn`]): each row `y = (x − mean)·(var + eps)^-½
/// (·w)(+b)`, the mean only for a layer norm; sums in f32 with `reassoc` (vectorized).
pub fn norm(name: &str, kind: NormKind, eps: f64, weight: bool, bias: bool) -> String {
    let mut b = Body::new();
    b.line("%go = icmp sgt i64 %rows, 0");
    b.line("%dpos = icmp sgt i64 %d, 0");
    b.line("%run = and i1 %go, %dpos");
    b.line("%df = sitofp i64 %d to float");
    b.line("br i1 %run, label %row, label %exit");
    b.label("row");
    b.line("%r = phi i64 [ 0, %entry ], [ %r.next, %store.done ]");
    b.line("%off = mul i64 %r, %d");
    b.line("%xr = getelementptr inbounds float, ptr %x, i64 %off");
    b.line("%yr = getelementptr inbounds float, ptr %y, i64 %off");
    let mean = if kind == NormKind::Layer {
        open_loop(&mut b, "sum", "row", &[("s", "float", "0.0", "%s.n")]);
        b.line("%sum.p = getelementptr inbounds float, ptr %xr, i64 %sum.j");
        b.line("%sum.x = load float, ptr %sum.p");
        b.line("%s.n = fadd reassoc float %s, %sum.x");
        close_loop(&mut b, "sum", "sum.done");
        b.line("%mean = fdiv float %s.n, %df");
        "%mean"
    } else {
        b.line("br label %sum.done");
        b.label("sum.done");
        "0.0"
    };
    open_loop(&mut b, "var", "sum.done", &[("v", "float", "0.0", "%v.n")]);
    b.line("%var.p = getelementptr inbounds float, ptr %xr, i64 %var.j");
    b.line("%var.x = load float, ptr %var.p");
    b.line(format!("%var.c = fsub float %var.x, {mean}"));
    b.line("%var.sq = fmul float %var.c, %var.c");
    b.line("%v.n = fadd reassoc float %v, %var.sq");
    close_loop(&mut b, "var", "var.done");
    b.line("%vd = fpext float %v.n to double");
    b.line("%dd = sitofp i64 %d to double");
    b.line("%vm = fdiv double %vd, %dd");
    b.line(format!("%ve = fadd double %vm, {}", f64c(eps)));
    b.line("%sd = call double @llvm.sqrt.f64(double %ve)");
    b.line("%invd = fdiv double 1.0, %sd");
    b.line("%inv = fptrunc double %invd to float");
    open_loop(&mut b, "store", "var.done", &[]);
    b.line("%st.p = getelementptr inbounds float, ptr %xr, i64 %store.j");
    b.line("%st.x = load float, ptr %st.p");
    b.line(format!("%st.c = fsub float %st.x, {mean}"));
    b.line("%st.n = fmul float %st.c, %inv");
    let mut y = "%st.n".to_string();
    if weight {
        b.line("%st.wp = getelementptr inbounds float, ptr %w, i64 %store.j");
        b.line("%st.w = load float, ptr %st.wp");
        b.line(format!("%st.yw = fmul float {y}, %st.w"));
        y = "%st.yw".into();
    }
    if bias {
        b.line("%st.bp = getelementptr inbounds float, ptr %bias, i64 %store.j");
        b.line("%st.b = load float, ptr %st.bp");
        b.line(format!("%st.yb = fadd float {y}, %st.b"));
        y = "%st.yb".into();
    }
    b.line("%st.yp = getelementptr inbounds float, ptr %yr, i64 %store.j");
    b.line(format!("store float {y}, ptr %st.yp"));
    close_loop(&mut b, "store", "store.done");
    b.line("%r.next = add nuw nsw i64 %r, 1");
    b.line("%r.more = icmp slt i64 %r.next, %rows");
    b.line("br i1 %r.more, label %row, label %exit");
    b.label("exit");
    b.line("ret void");
    format!(
        "define void @{name}(ptr noalias %y, ptr noalias %x, ptr noalias %w, ptr noalias %bias, i64 %rows, i64 %d) #0 {{\nentry:\n{}}}\n",
        b.text
    )
}

/// A softmax kernel ([`crate::cpu::codegen::SoftmaxFn`]): each row `e^(x − max) / Σ`, the
/// exponentials stored, then scaled (three vectorized passes).
pub fn softmax(name: &str) -> String {
    let mut b = Body::new();
    b.line("%go = icmp sgt i64 %rows, 0");
    b.line("%dpos = icmp sgt i64 %d, 0");
    b.line("%run = and i1 %go, %dpos");
    b.line("br i1 %run, label %row, label %exit");
    b.label("row");
    b.line("%r = phi i64 [ 0, %entry ], [ %r.next, %scale.done ]");
    b.line("%off = mul i64 %r, %d");
    b.line("%xr = getelementptr inbounds float, ptr %x, i64 %off");
    b.line("%yr = getelementptr inbounds float, ptr %y, i64 %off");
    open_loop(&mut b, "max", "row", &[("m", "float", &f32c(f32::NEG_INFINITY), "%m.n")]);
    b.line("%max.p = getelementptr inbounds float, ptr %xr, i64 %max.j");
    b.line("%max.x = load float, ptr %max.p");
    b.line("%m.n = call float @llvm.maximum.f32(float %m, float %max.x)");
    close_loop(&mut b, "max", "max.done");
    open_loop(&mut b, "exp", "max.done", &[("s", "float", "0.0", "%s.n")]);
    b.line("%exp.p = getelementptr inbounds float, ptr %xr, i64 %exp.j");
    b.line("%exp.x = load float, ptr %exp.p");
    b.line("%exp.c = fsub float %exp.x, %m.n");
    b.line("%exp.e = call float @tsr_exp_negf(float %exp.c)");
    b.line("%exp.q = getelementptr inbounds float, ptr %yr, i64 %exp.j");
    b.line("store float %exp.e, ptr %exp.q");
    b.line("%s.n = fadd reassoc float %s, %exp.e");
    close_loop(&mut b, "exp", "exp.done");
    b.line("%inv = fdiv float 1.0, %s.n");
    open_loop(&mut b, "scale", "exp.done", &[]);
    b.line("%scale.q = getelementptr inbounds float, ptr %yr, i64 %scale.j");
    b.line("%scale.e = load float, ptr %scale.q");
    b.line("%scale.y = fmul float %scale.e, %inv");
    b.line("store float %scale.y, ptr %scale.q");
    close_loop(&mut b, "scale", "scale.done");
    b.line("%r.next = add nuw nsw i64 %r, 1");
    b.line("%r.more = icmp slt i64 %r.next, %rows");
    b.line("br i1 %r.more, label %row, label %exit");
    b.label("exit");
    b.line("ret void");
    format!("define void @{name}(ptr noalias %y, ptr noalias %x, i64 %rows, i64 %d) #0 {{\nentry:\n{}}}\n", b.text)
}

/// A reduction of rows ([`crate::cpu::codegen::ReduceFn`]): `out[r]` is the sum (in f64, as
/// the interpreter), mean, max or min (NaN-propagating, in f32: exact) of row `r`; an empty row
/// gives the reduction's identity (a mean of none is NaN, 0/0).
pub fn reduce(name: &str, op: ReduceOp) -> String {
    let mut b = Body::new();
    let (ty, init, step) = match op {
        ReduceOp::Sum | ReduceOp::Mean => ("double", "0.0".to_string(), "fadd reassoc double %acc, %xd"),
        ReduceOp::Max => ("float", f32c(f32::NEG_INFINITY), "call float @llvm.maximum.f32(float %acc, float %x.v)"),
        ReduceOp::Min => ("float", f32c(f32::INFINITY), "call float @llvm.minimum.f32(float %acc, float %x.v)"),
    };
    b.line("%go = icmp sgt i64 %rows, 0");
    b.line("br i1 %go, label %row, label %exit");
    b.label("row");
    b.line("%r = phi i64 [ 0, %entry ], [ %r.next, %done ]");
    b.line("%off = mul i64 %r, %d");
    b.line("%xr = getelementptr inbounds float, ptr %x, i64 %off");
    b.line("%some = icmp sgt i64 %d, 0");
    b.line("br i1 %some, label %loop, label %done");
    b.label("loop");
    b.line("%j = phi i64 [ 0, %row ], [ %j.next, %loop ]");
    b.line(format!("%acc = phi {ty} [ {init}, %row ], [ %acc.n, %loop ]"));
    b.line("%x.p = getelementptr inbounds float, ptr %xr, i64 %j");
    b.line("%x.v = load float, ptr %x.p");
    b.line("%xd = fpext float %x.v to double");
    b.line(format!("%acc.n = {step}"));
    b.line("%j.next = add nuw nsw i64 %j, 1");
    b.line("%j.more = icmp slt i64 %j.next, %d");
    b.line("br i1 %j.more, label %loop, label %done");
    b.label("done");
    b.line(format!("%a = phi {ty} [ {init}, %row ], [ %acc.n, %loop ]"));
    let v = match op {
        ReduceOp::Sum => "%a".to_string(),
        ReduceOp::Mean => {
            b.line("%n = sitofp i64 %d to double");
            b.line("%m = fdiv double %a, %n");
            "%m".to_string()
        }
        ReduceOp::Max | ReduceOp::Min => "%a".to_string(),
    };
    let v = if ty == "double" {
        b.line(format!("%vf = fptrunc double {v} to float"));
        "%vf".to_string()
    } else {
        v
    };
    b.line("%y.p = getelementptr inbounds float, ptr %y, i64 %r");
    b.line(format!("store float {v}, ptr %y.p"));
    b.line("%r.next = add nuw nsw i64 %r, 1");
    b.line("%r.more = icmp slt i64 %r.next, %rows");
    b.line("br i1 %r.more, label %row, label %exit");
    b.label("exit");
    b.line("ret void");
    format!("define void @{name}(ptr noalias %y, ptr noalias %x, i64 %rows, i64 %d) #0 {{\nentry:\n{}}}\n", b.text)
}

/// One online-softmax step of the attention kernel over a tile of scores
/// ([`crate::cpu::codegen::OnlineSoftmaxFn`]), as `cpu/attention.rs`'s: per row, the new
/// running maximum (NaN scores skipped, as `f32::max` does), the scores replaced by
/// `e^(s − max)`, the running sum (f64) rescaled and grown, and the row's output accumulators
/// rescaled where the maximum grew. A row whose scores are all `-inf` (or NaN) becomes zeros,
/// its sum NaN where a score was NaN.
pub fn online_softmax(name: &str) -> String {
    let mut b = Body::new();
    let ninf = f32c(f32::NEG_INFINITY);
    b.line("%go = icmp sgt i64 %rows, 0");
    b.line("br i1 %go, label %row, label %exit");
    b.label("row");
    b.line("%r = phi i64 [ 0, %entry ], [ %r.next, %next ]");
    b.line("%off = mul i64 %r, %d");
    b.line("%xr = getelementptr inbounds float, ptr %sp, i64 %off");
    b.line("%mp = getelementptr inbounds float, ptr %m, i64 %r");
    b.line("%lp = getelementptr inbounds double, ptr %l, i64 %r");
    b.line("%m0 = load float, ptr %mp");
    b.line("%some = icmp sgt i64 %d, 0");
    b.line("br i1 %some, label %max.pre, label %max.done");
    b.label("max.pre");
    // NaN-propagating (it vectorizes); a NaN then keeps the old maximum below, and the NaN's
    // exponential makes the sum NaN, as where the maximum skips it.
    open_loop(&mut b, "max", "max.pre", &[("mx", "float", &ninf, "%mx.n")]);
    b.line("%max.p = getelementptr inbounds float, ptr %xr, i64 %max.j");
    b.line("%max.x = load float, ptr %max.p");
    b.line("%mx.n = call float @llvm.maximum.f32(float %mx, float %max.x)");
    close_loop(&mut b, "max", "max.out");
    b.line("br label %max.done");
    b.label("max.done");
    b.line(format!("%rowmax = phi float [ {ninf}, %row ], [ %mx.n, %max.out ]"));
    b.line("%newm = call float @llvm.maxnum.f32(float %m0, float %rowmax)");
    b.line(format!("%dead = fcmp oeq float %newm, {ninf}"));
    b.line("br i1 %dead, label %dead.row, label %live");
    // Every score so far is -inf or NaN: zeros; a NaN makes the sum NaN.
    b.label("dead.row");
    b.line("br i1 %some, label %nan.pre, label %next");
    b.label("nan.pre");
    open_loop(&mut b, "nan", "nan.pre", &[("any", "i1", "false", "%any.n")]);
    b.line("%nan.p = getelementptr inbounds float, ptr %xr, i64 %nan.j");
    b.line("%nan.x = load float, ptr %nan.p");
    b.line("%nan.u = fcmp uno float %nan.x, 0.0");
    b.line("%any.n = or i1 %any, %nan.u");
    b.line("store float 0.0, ptr %nan.p");
    close_loop(&mut b, "nan", "nan.out");
    b.line("br i1 %any.n, label %dead.nan, label %next");
    b.label("dead.nan");
    b.line("store double 0x7FF8000000000000, ptr %lp");
    b.line("br label %next");
    b.label("live");
    b.line("%dm = fsub float %m0, %newm");
    b.line("%rescale = call float @tsr_exp_negf(float %dm)");
    b.line("br i1 %some, label %exp.pre, label %exp.done");
    b.label("exp.pre");
    open_loop(&mut b, "exp", "exp.pre", &[("s", "float", "0.0", "%s.n")]);
    b.line("%exp.p = getelementptr inbounds float, ptr %xr, i64 %exp.j");
    b.line("%exp.x = load float, ptr %exp.p");
    b.line("%exp.c = fsub float %exp.x, %newm");
    b.line("%exp.e = call float @tsr_exp_negf(float %exp.c)");
    b.line("store float %exp.e, ptr %exp.p");
    b.line("%s.n = fadd reassoc float %s, %exp.e");
    close_loop(&mut b, "exp", "exp.out");
    b.line("br label %exp.done");
    b.label("exp.done");
    b.line("%sum = phi float [ 0.0, %live ], [ %s.n, %exp.out ]");
    b.line("%l0 = load double, ptr %lp");
    b.line("%rd = fpext float %rescale to double");
    b.line("%sd = fpext float %sum to double");
    b.line("%l1 = fmul double %l0, %rd");
    b.line("%l2 = fadd double %l1, %sd");
    b.line("store double %l2, ptr %lp");
    b.line("store float %newm, ptr %mp");
    b.line("%same = fcmp oeq float %rescale, 1.0");
    b.line("%evpos = icmp sgt i64 %ev, 0");
    b.line("%noscale = xor i1 %evpos, true");
    b.line("%skip = or i1 %same, %noscale");
    b.line("br i1 %skip, label %next, label %scale.pre");
    b.label("scale.pre");
    b.line("%aoff = mul i64 %r, %ev");
    b.line("%ar = getelementptr inbounds float, ptr %acc, i64 %aoff");
    b.line("br label %scale");
    b.label("scale");
    b.line("%scale.j = phi i64 [ 0, %scale.pre ], [ %scale.jn, %scale ]");
    b.line("%scale.p = getelementptr inbounds float, ptr %ar, i64 %scale.j");
    b.line("%scale.a = load float, ptr %scale.p");
    b.line("%scale.y = fmul float %scale.a, %rescale");
    b.line("store float %scale.y, ptr %scale.p");
    b.line("%scale.jn = add nuw nsw i64 %scale.j, 1");
    b.line("%scale.more = icmp slt i64 %scale.jn, %ev");
    b.line("br i1 %scale.more, label %scale, label %next");
    b.label("next");
    b.line("%r.next = add nuw nsw i64 %r, 1");
    b.line("%r.more = icmp slt i64 %r.next, %rows");
    b.line("br i1 %r.more, label %row, label %exit");
    b.label("exit");
    b.line("ret void");
    format!(
        "define void @{name}(ptr noalias %sp, i64 %rows, i64 %d, ptr noalias %m, ptr noalias %l, ptr noalias %acc, i64 %ev) #0 {{\nentry:\n{}}}\n",
        b.text
    )
}

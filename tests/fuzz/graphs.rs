//! The random-graph differential tester shared by `tests/fuzz_graphs.rs` (a fixed-seed budget)
//! and `examples/fuzz_graphs.rs` (the long mode:
//! `cargo run --release --example fuzz_graphs -- --minutes N [--seed S]`).
//!
//! [`generate`] builds a well-typed IR graph through `Graph::add` (candidates the op's typing
//! rule rejects are dropped) over every primitive op and a few written patterns the optimizer
//! fuses (softmax, attention, norms, MLPs), with shapes of size 0, 1 and odd sizes, the
//! symbolic `batch` and `seq`, and inputs holding NaN, ±Inf and huge values. [`check`] runs it
//! on the interpreter (the oracle), on the interpreter after the pass pipeline, and on each CPU
//! backend of the build (Cranelift; LLVM and MLIR with their features) before and after the
//! pipeline, and compares: same output names, shapes and dtypes,
//! NaN and ±Inf at the same positions, finite values within [`RTOL`] (relative) or [`ATOL`].
//! A panic in any stage, or a typed error on one side only, is a finding too. [`minimize`]
//! cuts a failing graph down by replacing nodes with inputs holding their oracle values.
#![allow(dead_code)]

#[path = "graphs_gen.rs"]
mod gen;
pub use gen::{generate, Case};

use std::panic::{catch_unwind, AssertUnwindSafe};
use tessera::ir::{BinaryOp as B, DType, Graph, Node, Op, ReduceOp, UnaryOp as U, ValueId, WindowOp};
use tessera::runtime::Tensor;

/// Relative tolerance on finite values.
pub const RTOL: f64 = 1e-4;
/// Absolute floor of the tolerance on finite values.
pub const ATOL: f64 = 1e-4;

// ---------------------------------------------------------------------------------------------
// What explains a finding that is not (yet) a failure. Delete an entry once its fix has landed.

/// Known bug classes not fixed yet: `(name, predicate on a finding, its case and the graphs
/// the stage ran)`. Empty: the classes of issue 14 (NaN semantics, outputs bound to constants,
/// element-count overflow) are fixed; an entry goes here only with an open issue.
pub const KNOWN_BUGS: &[(&str, Explains)] = &[];

/// Bugs this tester found outside what it may fix (`runtime/`, the attention kernel's design).
pub const FOUND: &[(&str, Explains)] =
    &[("the fused attention takes a row whose best unmasked score is -inf or below -1e29 for a fully masked one", |f, c, gs| {
        COMPILED.iter().any(|b| f.stage == b.opt)
            && matches!(f.kind, "value" | "inf")
            && (c.huge || holds_inf(c))
            && gs.iter().any(|g| g.nodes().iter().any(|n| matches!(n.op, Op::Attention(_))))
    })];

/// Not bugs, but where the oracle and a backend legitimately round apart and an op makes it
/// visible: the interpreter computes in f64 and rounds each node's result to f32, the CPU keeps
/// f32 intermediates in GEMMs, norms and softmax (so huge or tiny values overflow or underflow on
/// one side only) and f64 ones inside fused elementwise chains; its DFT multiplies by every
/// twiddle (`sin π = 1.2e-16`, `inf · 0 = NaN`) where an FFT has exact zeros. All but the first
/// are explained only if the minimised graph still shows them (they are frequent, the ops not).
pub const NUMERICS: &[(&str, Explains)] = &[
    ("huge finite values overflow f32 intermediates the oracle keeps in f64", |f, c, _| {
        c.huge && matches!(f.kind, "nan" | "inf" | "value")
    }),
    ("the interpreter's DFT: inexact twiddles at multiples of π/2 and infinities times them", |f, _, gs| {
        matches!(f.kind, "nan" | "inf" | "value")
            && gs.iter().any(|g| g.nodes().iter().any(|n| matches!(n.op, Op::Fft { .. } | Op::Rfft { .. } | Op::Irfft { .. })))
    }),
    (
        "a tie, or a zero on one side and a tiny number or a zero of the other sign on the other (the interpreter's sums \
      start at +0, its gelu_tanh is 0 far left), made visible by a comparison, a 1/x, a root or a product with ±inf",
        |f, c, gs| matches!(f.kind, "nan" | "inf" | "value") && gs.iter().any(|g| any_node(g, &|g, n| amplifies_zero(g, n, holds_inf(c)))),
    ),
    ("tiny finite values (|x| < 1e-30) underflow f32 intermediates (x² in a norm) the oracle keeps in f64", |f, c, _| {
        matches!(f.kind, "nan" | "inf" | "value") && holds(c, |x| x != 0.0 && x.abs() < 1e-30)
    }),
    (
        "rounding (the oracle rounds every node to f32, the CPU's fused chains keep f64) made visible by sin or cos of a \
      large argument, a power, or a norm of a (nearly) constant row",
        |f, _, gs| {
            matches!(f.kind, "nan" | "inf" | "value")
                && gs.iter().any(|g| {
                    any_node(g, &|_, n| {
                        matches!(unary(n), Some(U::Sin | U::Cos | U::Rsqrt)) || matches!(n.op, Op::Binary(B::Pow) | Op::Norm { .. })
                    })
                })
        },
    ),
];

/// Whether `n` tells an f32 zero from a tiny number or from a zero of the other sign, or two
/// nearly equal numbers apart.
fn amplifies_zero(g: &Graph, n: &Node, infinities: bool) -> bool {
    let f32_in = n.inputs.first().is_some_and(|&v| g.ty(v).dtype == DType::F32);
    // Comparisons, truncations to integers and top-k's order all tell nearly equal numbers apart.
    let test = (matches!(n.op, Op::Binary(B::Eq | B::Ne | B::Lt | B::Le | B::Gt | B::Ge) | Op::Cast) && n.ty.dtype != DType::F32)
        || matches!(n.op, Op::TopK { .. });
    let inverse = matches!(unary(n), Some(U::Rsqrt | U::Log | U::Sqrt)) || matches!(n.op, Op::Binary(B::Div | B::Pow | B::Rem));
    let product = matches!(n.op, Op::Binary(B::Mul) | Op::MatMul | Op::Gemm { .. } | Op::Ffn { .. } | Op::Route(_)) && infinities;
    f32_in && (test || inverse || product)
}

/// Whether `p` holds for a node of `g` or of a region in it (given the graph holding the node).
fn any_node(g: &Graph, p: &dyn Fn(&Graph, &Node) -> bool) -> bool {
    g.nodes().iter().any(|n| p(g, n) || n.op.region().is_some_and(|b| any_node(b, p)))
}

/// The elementwise function `n` applies: its own, or the activation of a fused GEMM or FFN.
fn unary(n: &Node) -> Option<U> {
    match n.op {
        Op::Unary(u) | Op::Ffn { act: u, .. } => Some(u),
        Op::Gemm { act, .. } => act,
        _ => None,
    }
}

/// A predicate on a finding, its case and the graphs the stage ran.
pub type Explains = fn(&Finding, &Case, &[&Graph]) -> bool;

fn holds(c: &Case, p: fn(f64) -> bool) -> bool {
    c.inputs.values().chain(c.params.values()).any(|t| t.to_f64().into_iter().any(p))
        || c.graph.nodes().iter().any(|n| matches!(n.op, Op::Const(v) if p(v)))
}

fn holds_inf(c: &Case) -> bool {
    holds(c, f64::is_infinite)
}

/// Ops whose NaN semantics is a `max`/`min` (the interpreter's `f64::max` drops a NaN).
fn max_like(op: &Op) -> bool {
    matches!(
        op,
        Op::Binary(B::Max | B::Min)
            | Op::Unary(U::Relu)
            | Op::Reduce { op: ReduceOp::Max | ReduceOp::Min, .. }
            | Op::Window { op: WindowOp::Max, .. }
            | Op::Segment { op: ReduceOp::Max | ReduceOp::Min, .. }
            | Op::Softmax { .. }
            | Op::Attention(_)
    )
}

// ---------------------------------------------------------------------------------------------
// Running and comparing.

/// Something a stage did that it should not have.
#[derive(Clone, Debug)]
pub struct Finding {
    /// `verify`, `roundtrip`, `interp`, `optimize`, `interp-opt`, or a compiled backend's
    /// stage before or after the pipeline (`cpu`, `cpu-opt`, `llvm`, …: [`COMPILED`]).
    pub stage: &'static str,
    /// `panic`, `error` (here only), `no-error` (the oracle failed), `missing`, `shape`,
    /// `dtype`, `nan`, `inf`, `value` or `invalid`.
    pub kind: &'static str,
    /// The output concerned, if any.
    pub output: String,
    pub detail: String,
    /// What explains it, from [`KNOWN_BUGS`], [`FOUND`] or [`NUMERICS`]; `None` fails.
    pub known: Option<&'static str>,
}

type Outs = Result<Vec<(String, Tensor)>, String>;

/// When the stage running now began, in milliseconds since the Unix epoch: the long mode's
/// watchdog reports a stage that runs for over 30 s as a hang (a seed may run many stages:
/// every compiled backend, and again for each cut while a finding is minimised).
pub static STAGE_START: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    STAGE_START.store(now_ms(), std::sync::atomic::Ordering::Relaxed);
    catch_unwind(AssertUnwindSafe(f))
        .map_err(|p| p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default())
}

fn interp(c: &Case, g: &Graph) -> Outs {
    tessera::runtime::run(g, &c.dims, &c.inputs, &c.params).map_err(|e| e.to_string())
}

fn compiled(c: &Case, g: &Graph, backend: tessera::Backend) -> Outs {
    let e = tessera::Engine::new(g, backend, false, tessera::Precision::F32).map_err(|e| e.to_string())?;
    e.run(g, &c.dims, &c.inputs, &c.params).map(|r| r.0).map_err(|e| e.to_string())
}

/// A compiled CPU backend and the names of its stages before and after the pipeline.
#[derive(Clone, Copy)]
pub struct Compiled {
    pub backend: tessera::Backend,
    pub plain: &'static str,
    pub opt: &'static str,
}

/// Every compiled CPU backend: Cranelift, and LLVM and MLIR where this build has them.
pub const COMPILED: &[Compiled] = &[
    Compiled { backend: tessera::Backend::Cpu, plain: "cpu", opt: "cpu-opt" },
    #[cfg(feature = "llvm")]
    Compiled { backend: tessera::Backend::Llvm, plain: "llvm", opt: "llvm-opt" },
    #[cfg(feature = "mlir")]
    Compiled { backend: tessera::Backend::Mlir, plain: "mlir", opt: "mlir-opt" },
];

/// The first difference between two tensors, as `(kind, detail)`.
pub fn differ(want: &Tensor, got: &Tensor) -> Option<(&'static str, String)> {
    if want.dtype() != got.dtype() {
        return Some(("dtype", format!("{} vs {}", want.dtype(), got.dtype())));
    }
    if want.shape != got.shape {
        return Some(("shape", format!("{:?} vs {:?}", want.shape, got.shape)));
    }
    let exact = want.dtype() != DType::F32;
    for (i, (a, b)) in want.to_f64().into_iter().zip(got.to_f64()).enumerate() {
        let kind = if a.is_nan() || b.is_nan() {
            (a.is_nan() != b.is_nan()).then_some("nan")
        } else if a.is_infinite() || b.is_infinite() {
            (a != b).then_some("inf")
        } else if exact {
            (a != b).then_some("value")
        } else {
            ((a - b).abs() > ATOL + RTOL * a.abs().max(b.abs())).then_some("value")
        };
        if let Some(k) = kind {
            return Some((k, format!("at flat index {i}: {a:e} (oracle) vs {b:e}")));
        }
    }
    None
}

fn compare(stage: &'static str, oracle: &Outs, got: Result<Outs, String>, out: &mut Vec<Finding>) {
    let mut f = |kind, output: &str, detail: String| out.push(Finding { stage, kind, output: output.into(), detail, known: None });
    match (oracle, got) {
        (_, Err(p)) => f("panic", "", p),
        (Ok(_), Ok(Err(e))) => f("error", "", e),
        (Err(e), Ok(Ok(_))) => f("no-error", "", format!("the oracle failed with: {e}")),
        (Err(_), Ok(Err(_))) => {}
        (Ok(want), Ok(Ok(got))) => {
            for (name, w) in want {
                match got.iter().find(|(n, _)| n == name) {
                    None => f("missing", name, "output missing".into()),
                    Some((_, g)) => {
                        if let Some((kind, d)) = differ(w, g) {
                            f(kind, name, d)
                        }
                    }
                }
            }
        }
    }
}

/// What one [`check`] ran: graphs per backend.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ran {
    /// Graphs the oracle refused with a typed error (an index out of range, a negative size).
    pub oracle_errors: usize,
    pub interp: usize,
    pub interp_opt: usize,
    pub cpu: usize,
    pub cpu_opt: usize,
    /// Graphs run on the other compiled backends (LLVM, MLIR), before and after the pipeline.
    pub others: usize,
    pub others_opt: usize,
}

/// Runs every stage on `c`; returns the findings (unexplained) and the optimized graph.
fn run_stages(c: &Case, ran: &mut Ran, backends: &[Compiled]) -> (Vec<Finding>, Option<Graph>) {
    let g = &c.graph;
    let mut out = Vec::new();
    let mut push = |stage, kind, detail: String| out.push(Finding { stage, kind, output: String::new(), detail, known: None });
    if let Err(e) = tessera::ir::verify(g) {
        push("verify", "invalid", e.join("; "));
        return (out, None);
    }
    let text = g.to_string();
    match tessera::ir::parse(&text).map(|h| h.to_string()) {
        Ok(back) if back == text => {}
        Ok(back) => push("roundtrip", "value", format!("reads back as\n{back}")),
        Err(e) => push("roundtrip", "error", e.to_string()),
    }
    let oracle = guarded(|| interp(c, g)).unwrap_or_else(|p| {
        push("interp", "panic", p.clone());
        Err(format!("panicked: {p}"))
    });
    ran.interp += 1;
    ran.oracle_errors += usize::from(oracle.is_err());
    let opt = match guarded(|| tessera::passes::run_pipeline(g, |_, _| {}).map_err(|e| e.to_string())) {
        Ok(Ok(opt)) => Some(opt),
        Ok(Err(e)) => {
            push("optimize", "error", e);
            None
        }
        Err(p) => {
            push("optimize", "panic", p);
            None
        }
    };
    for (i, b) in backends.iter().enumerate() {
        compare(b.plain, &oracle, guarded(|| compiled(c, g, b.backend)), &mut out);
        *if i == 0 { &mut ran.cpu } else { &mut ran.others } += 1;
    }
    if let Some(opt) = &opt {
        compare("interp-opt", &oracle, guarded(|| interp(c, opt)), &mut out);
        ran.interp_opt += 1;
        for (i, b) in backends.iter().enumerate() {
            compare(b.opt, &oracle, guarded(|| compiled(c, opt, b.backend)), &mut out);
            *if i == 0 { &mut ran.cpu_opt } else { &mut ran.others_opt } += 1;
        }
    }
    (out, opt)
}

fn explain(f: &Finding, c: &Case, opt: Option<&Graph>) -> Option<&'static str> {
    let graphs: Vec<&Graph> = match (f.stage, opt) {
        (stage, Some(o)) if stage == "interp-opt" || COMPILED.iter().any(|b| stage == b.opt) => vec![&c.graph, o],
        _ => vec![&c.graph],
    };
    FOUND.iter().chain(KNOWN_BUGS).chain(NUMERICS).find(|(_, p)| p(f, c, &graphs)).map(|(n, _)| *n)
}

/// Runs every stage on `c` and returns the findings, each explained by [`FOUND`],
/// [`KNOWN_BUGS`] or [`NUMERICS`] where one applies. A NaN explained by a `max`-like op, and
/// the numerical classes but the first, are explained only if the minimised case still is.
pub fn check(c: &Case, ran: &mut Ran) -> Vec<Finding> {
    check_on(c, ran, COMPILED)
}

/// As [`check`], on the compiled backends `backends` only (the first is Cranelift's).
pub fn check_on(c: &Case, ran: &mut Ran, backends: &[Compiled]) -> Vec<Finding> {
    let (mut out, opt) = run_stages(c, ran, backends);
    for f in &mut out {
        f.known = explain(f, c, opt.as_ref());
        if f.known.is_some_and(|k| NUMERICS[1..].iter().any(|(n, _)| *n == k)) {
            let small = minimize(c, f);
            let (again, opt) = run_stages(&small, &mut Ran::default(), backends);
            f.known = again.iter().find(|g| g.stage == f.stage && g.kind == f.kind).and_then(|g| explain(g, &small, opt.as_ref()));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Minimising and reporting.

/// Whether `c` still shows a finding like `f` (same stage and kind).
fn reproduces(c: &Case, f: &Finding) -> bool {
    run_stages(c, &mut Ran::default(), COMPILED).0.iter().any(|g| g.stage == f.stage && g.kind == f.kind)
}

/// `c` with node `i` replaced by an input holding `value`, dead nodes and unused inputs dropped.
fn cut(c: &Case, i: usize, value: Tensor) -> Case {
    let mut g = Graph::new(&c.graph.name);
    let name = format!("c{}", c.inputs.len());
    for (k, n) in c.graph.nodes().iter().enumerate() {
        let node = if k == i { Node { op: Op::Input(name.clone()), inputs: vec![], ty: n.ty.clone(), span: n.span } } else { n.clone() };
        g.push_unchecked(node);
    }
    g.outputs = c.graph.outputs.clone();
    let mut inputs = c.inputs.clone();
    inputs.insert(name, value);
    Case { graph: prune(&g), inputs, ..c.clone() }
}

/// `g` without dead nodes and unused inputs.
fn prune(g: &Graph) -> Graph {
    let g = tessera::passes::dce(g);
    let uses = g.use_counts();
    let keep: Vec<bool> = g.nodes().iter().zip(&uses).map(|(n, &u)| u > 0 || !matches!(n.op, Op::Input(_))).collect();
    let ids: Vec<ValueId> = g.values().collect();
    g.compact(&keep, &ids).0
}

/// Shrinks `c` while it still shows `f`: keeps only the output concerned, then replaces nodes
/// by inputs holding the oracle's values for them.
pub fn minimize(c: &Case, f: &Finding) -> Case {
    let mut best = c.clone();
    for o in c.graph.outputs.iter().filter(|(n, _)| f.output.is_empty() || *n == f.output) {
        let mut one = c.clone();
        one.graph.outputs = vec![o.clone()];
        one.graph = prune(&one.graph);
        if reproduces(&one, f) {
            best = one;
            break;
        }
    }
    let mut i = 0;
    while i < best.graph.len() {
        let mut all = best.graph.clone();
        all.outputs = all.values().map(|v| (v.to_string(), v)).collect();
        let Ok(Ok(values)) = guarded(|| interp(&best, &all)) else { break };
        let leaf = matches!(best.graph.nodes()[i].op, Op::Input(_) | Op::Param(..) | Op::Const(_));
        let smaller = (!leaf).then(|| cut(&best, i, values[i].1.clone())).filter(|s| reproduces(s, f));
        match smaller {
            Some(s) => best = s,
            None => i += 1,
        }
    }
    best
}

/// The reproducer: the IR text, the dims and every input and parameter value.
pub fn describe(c: &Case) -> String {
    let mut s = format!("{}dims: {:?}\n", c.graph, c.dims);
    let mut names: Vec<(&String, &Tensor)> = c.inputs.iter().chain(&c.params).collect();
    names.sort_by_key(|(n, _)| n.as_str());
    for (n, t) in names {
        if c.graph.inputs().iter().any(|(m, _)| m == n) || c.graph.params().iter().any(|(m, _)| m == n) {
            let v = t.to_f64();
            s += &format!("{n}: {}{:?} = {:?}{}\n", t.dtype(), t.shape, &v[..v.len().min(48)], if v.len() > 48 { " .." } else { "" });
        }
    }
    s
}

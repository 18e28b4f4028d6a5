//! `optimize`: equality saturation over the e-graph of the whole model, then extraction of
//! the cheapest graph under the cost model (bytes moved plus FLOPs). This is where fused
//! attention, fused feed-forward blocks, GEMM epilogues, norms and softmax appear.
//!
//! Assumes: a verified graph without fused ops. Guarantees: the same inputs, outputs and
//! values (up to floating-point rounding: fused ops compute in f64 and round once); every
//! value keeps the span of an original node. The runner stops at [`Limits`]; why it stopped
//! is reported. Does not: merge Q/K/V projections (see `merge_projections`).

use crate::egraph::{cost_dims, from_egraph, to_egraph, Cost, EG};
use crate::extract::Best;
use crate::rules;
use egg::{Id, Runner};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use tessera_ir::{Graph, Op, Span};

/// Explicit bounds on saturation.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most rule-application rounds.
    pub iterations: usize,
    /// Most e-nodes.
    pub nodes: usize,
    /// Most wall-clock time.
    pub time: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { iterations: 12, nodes: 400_000, time: Duration::from_secs(10) }
    }
}

/// What the optimizer did.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Why saturation stopped (`saturated`, or the limit hit).
    pub stop: String,
    /// Rounds run.
    pub iterations: usize,
    /// E-nodes and e-classes at the end.
    pub enodes: usize,
    /// E-classes at the end.
    pub eclasses: usize,
    /// Time spent (saturation and extraction).
    pub seconds: f64,
    /// The fused ops in the result.
    pub fusions: Vec<Fusion>,
    /// Identical layers optimised once and reused (0: none found).
    pub reused_layers: usize,
}

/// One fused op of the result, for `--explain`.
#[derive(Clone, Debug)]
pub struct Fusion {
    /// Where the fused computation was written.
    pub span: Span,
    /// What it is (`attention(mask: .., gqa 8:2)`).
    pub what: String,
    /// How many ops of the input graph it replaces.
    pub replaced: usize,
}

impl Report {
    /// The one-line summary printed in dump headers.
    pub fn header(&self) -> String {
        let reuse = if self.reused_layers > 0 {
            format!(", repeated layers saturated once and reused for {}", self.reused_layers)
        } else {
            String::new()
        };
        format!(
            "optimize: {} after {} iteration(s), {} e-nodes in {} e-classes{reuse}, {:.3} s",
            self.stop, self.iterations, self.enodes, self.eclasses, self.seconds
        )
    }
}

/// The pass: optimises with default limits.
pub fn optimize(g: &Graph) -> Graph {
    optimize_with(g, Limits::default()).0
}

/// Optimises `g` within `limits`; returns the graph and the report. When the graph is a run
/// of identical layers ([`crate::layers`]), one layer is saturated and its result reused for
/// all of them; the rest of the model is saturated on its own.
pub fn optimize_with(g: &Graph, limits: Limits) -> (Graph, Report) {
    let start = Instant::now();
    if let Some(blocks) = crate::layers::find_blocks(g) {
        if let Some((out, mut report)) = crate::reuse::optimize_blocks(g, &blocks, |h| saturate(h, limits), |h| optimize_with(h, limits)) {
            report.seconds = start.elapsed().as_secs_f64();
            return (route_bodies(&out, limits), report);
        }
    }
    let (out, report) = saturate(g, limits);
    (route_bodies(&out, limits), report)
}

/// `g` with the body of every route optimised (an expert's feed-forward block becomes one
/// `ffn`, which the backends run as a grouped kernel). Scan bodies are left as written: their
/// backends recognise recurrences in the elementwise form.
fn route_bodies(g: &Graph, limits: Limits) -> Graph {
    if !g.nodes().iter().any(|n| matches!(n.op, Op::Route(_))) {
        return g.clone();
    }
    let mut out = Graph::new(&g.name);
    out.files = g.files.clone();
    let mut cache: Vec<(Graph, Graph)> = Vec::new();
    for n in g.nodes() {
        let mut n = n.clone();
        if let Op::Route(r) = &mut n.op {
            // Identical layers have identical bodies: optimise each distinct one once.
            let body = match cache.iter().find(|(from, _)| *from == r.body) {
                Some((_, to)) => to.clone(),
                None => {
                    let to = saturate(&r.body, limits).0;
                    cache.push((r.body.clone(), to.clone()));
                    to
                }
            };
            r.body = body;
        }
        out.push_unchecked(n);
    }
    out.outputs = g.outputs.clone();
    out
}

/// Equality saturation and extraction of a whole graph.
pub(crate) fn saturate(g: &Graph, limits: Limits) -> (Graph, Report) {
    let start = Instant::now();
    let (eg, ids) = to_egraph(g);
    let rewrites: Vec<_> = rules::all().into_iter().map(rules::rewrite).collect();
    let runner = Runner::default()
        .with_egraph(eg)
        .with_iter_limit(limits.iterations)
        .with_node_limit(limits.nodes)
        .with_time_limit(limits.time)
        .run(&rewrites);
    let stop = match &runner.stop_reason {
        Some(egg::StopReason::Saturated) => "saturated".to_string(),
        Some(egg::StopReason::IterationLimit(n)) => format!("stopped at the iteration limit ({n})"),
        Some(egg::StopReason::NodeLimit(n)) => format!("stopped at the node limit ({n})"),
        Some(egg::StopReason::TimeLimit(t)) => format!("stopped at the time limit ({t} s)"),
        Some(egg::StopReason::Other(s)) => format!("stopped: {s}"),
        None => "stopped".to_string(),
    };
    let iterations = runner.iterations.len();
    let eg = runner.egraph;
    let cost = Cost { eg: &eg, dims: cost_dims() };
    let best = Best::new(&eg, cost);
    let keep: Vec<Id> = g.inputs().iter().map(|(_, v)| ids[v.index()]).collect();
    let outputs: Vec<(String, Id)> = g.outputs.iter().map(|(n, v)| (n.clone(), ids[v.index()])).collect();
    let out = from_egraph(&eg, g, &keep, &outputs, |c| best.node(eg.find(c)).cloned().unwrap_or_else(|| eg[c].nodes[0].clone()));
    let fusions = explain(g, &ids, &eg, &out);
    let report = Report {
        stop,
        iterations,
        enodes: eg.total_number_of_nodes(),
        eclasses: eg.number_of_classes(),
        seconds: start.elapsed().as_secs_f64(),
        fusions,
        reused_layers: 0,
    };
    (out, report)
}

/// Describes each fused op of `out`, counting the ops of `g` it replaces: those reachable
/// backwards from its class that are not in the classes of its operands.
fn explain(g: &Graph, ids: &[Id], eg: &EG, out: &Graph) -> Vec<Fusion> {
    let class_of: Vec<Id> = ids.iter().map(|&i| eg.find(i)).collect();
    let mut first: HashMap<Id, usize> = HashMap::new();
    for (i, c) in class_of.iter().enumerate() {
        first.insert(*c, i);
    }
    let mut found = Vec::new();
    for n in out.nodes() {
        if !n.op.is_fused() {
            continue;
        }
        // The class: an original node with the same span and type whose class holds this op.
        let class = class_of
            .iter()
            .copied()
            .find(|&c| eg[c].data.span == n.span && eg[c].data.ty == n.ty && eg[c].nodes.iter().any(|m| m.op == n.op));
        let replaced = class.map_or(0, |c| {
            let stops: HashSet<Id> =
                eg[c].nodes.iter().filter(|m| m.op == n.op).flat_map(|m| m.children.iter().map(|x| eg.find(*x))).collect();
            let mut seen = HashSet::new();
            let mut stack: Vec<usize> = first.get(&c).into_iter().copied().collect();
            while let Some(k) = stack.pop() {
                if !seen.insert(k) {
                    continue;
                }
                for v in &g.nodes()[k].inputs {
                    let j = v.index();
                    if !stops.contains(&class_of[j]) && !matches!(g.nodes()[j].op, Op::Param(..) | Op::Input(_)) {
                        stack.push(j);
                    }
                }
            }
            seen.len()
        });
        found.push(Fusion { span: n.span, what: describe(out, n), replaced });
    }
    found
}

/// `attention(mask: J <= I, score: S * 0.125, gqa 8:2)`, `ffn(gated, silu)`, ...
pub fn describe(g: &Graph, n: &tessera_ir::Node) -> String {
    match &n.op {
        Op::Attention(f) => {
            // Heads: the product of the batch axes after the first (query vs key/value).
            let heads = |v: Option<&tessera_ir::ValueId>| {
                v.map(|v| {
                    let s = &g.ty(*v).shape;
                    s.iter().skip(1).take(s.len().saturating_sub(3)).fold(tessera_ir::Dim::known(1), |a, d| a.mul(d)).to_string()
                })
            };
            let mut parts = Vec::new();
            let masks: Vec<String> = f.mask_conditions().iter().map(|&c| f.pretty_at(c)).collect();
            if !masks.is_empty() {
                parts.push(format!("mask: {}", masks.join(" and ")));
            }
            parts.push(format!("score: {}", f.unmasked().map_or_else(String::new, |k| f.pretty_at(k))));
            if let (Some(h), Some(kv)) = (heads(n.inputs.first()), heads(n.inputs.get(1))) {
                parts.push(if h == kv { format!("{h} heads") } else { format!("gqa {h}:{kv}") });
            }
            if n.inputs.len() > 3 {
                parts.push(format!("{} extra operand(s)", n.inputs.len() - 3));
            }
            format!("attention({})", parts.join(", "))
        }
        Op::Ffn { gated, act, bias } => {
            format!("ffn({}, {}{})", if *gated { "gated" } else { "mlp" }, act.name(), if *bias { ", bias" } else { "" })
        }
        Op::Gemm { bias, act, residual } => {
            let mut e = Vec::new();
            if *bias {
                e.push("bias".to_string());
            }
            if let Some(a) = act {
                e.push(a.name().to_string());
            }
            if *residual {
                e.push("residual".to_string());
            }
            format!("gemm({})", e.join(", "))
        }
        Op::Norm { kind, eps } => format!(
            "{}(eps={eps:?}, {} operands)",
            if *kind == tessera_ir::NormKind::Layer { "layer_norm" } else { "rms_norm" },
            n.inputs.len()
        ),
        Op::Softmax { axis } => format!("softmax(axis={axis})"),
        other => other.mnemonic(),
    }
}

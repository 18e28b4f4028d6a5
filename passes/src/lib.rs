//! IR-to-IR passes. Each pass lives in a file named for its effect, with a header saying what
//! it assumes and guarantees; [`PIPELINE`] lists them in order and [`run_pipeline`] runs them,
//! verifying the graph after each one (a verifier failure is a compiler bug).
#![warn(missing_docs)]
#![deny(clippy::unwrap_used, clippy::expect_used)]

mod cse;
mod dce;
pub mod egraph;
mod extract;
mod fold_constants;
pub mod generation;
pub mod layers;
mod merge_projections;
mod optimize;
mod reuse;
pub mod rules;

pub use cse::cse;
pub use dce::dce;
pub use fold_constants::fold_constants;
pub use merge_projections::merge_projections;
pub use optimize::{describe, optimize, optimize_with, Fusion, Limits, Report};

use tessera_ir::Graph;

/// A named graph-to-graph transformation.
pub struct Pass {
    /// The name `--print-after` and logs use.
    pub name: &'static str,
    /// The transformation.
    pub run: fn(&Graph) -> Graph,
}

/// The default pipeline, in order.
pub const PIPELINE: &[Pass] = &[
    Pass { name: "fold_constants", run: fold_constants },
    Pass { name: "dce", run: dce },
    // Before `cse`: identical layers are still identical (cse hoists what they share into
    // the first), so `optimize` can saturate one and reuse it; cse then merges what the
    // optimised layers share.
    Pass { name: "optimize", run: optimize },
    Pass { name: "cse", run: cse },
    Pass { name: "merge_projections", run: merge_projections },
    Pass { name: "cleanup", run: dce },
];

/// A pass broke an IR invariant: a compiler bug, reported with the offending IR.
#[derive(Debug, thiserror::Error)]
#[error("internal compiler error: the IR is invalid after pass `{pass}`:\n{}\n{dump}", .errors.join("\n"))]
pub struct VerifyError {
    /// The pass after which verification failed.
    pub pass: String,
    /// The violations.
    pub errors: Vec<String>,
    /// The IR text.
    pub dump: String,
}

/// The merged projections of a graph (products whose weight is a concat of parameters), for
/// `--explain`.
fn merged_projections(g: &Graph) -> Vec<Fusion> {
    g.nodes()
        .iter()
        .filter(|n| matches!(n.op, tessera_ir::Op::MatMul | tessera_ir::Op::Gemm { .. }))
        .filter_map(|n| {
            let w = g.node(*n.inputs.get(1)?);
            let names: Vec<&str> = w
                .inputs
                .iter()
                .filter_map(|p| match &g.node(*p).op {
                    tessera_ir::Op::Param(name, _) => Some(name.as_str()),
                    _ => None,
                })
                .collect();
            (matches!(w.op, tessera_ir::Op::Concat { .. }) && names.len() == w.inputs.len() && names.len() > 1).then(|| Fusion {
                span: n.span,
                what: format!("merged projection({})", names.join(", ")),
                replaced: names.len(),
            })
        })
        .collect()
}

/// Whether `name` is a pass of the pipeline.
pub fn is_pass(name: &str) -> bool {
    PIPELINE.iter().any(|p| p.name == name)
}

/// Runs the pipeline. After each pass the graph is verified; `after` is called with the pass
/// name and the graph (for `--print-after`).
pub fn run_pipeline(g: &Graph, after: impl FnMut(&str, &Graph)) -> Result<Graph, VerifyError> {
    run_pipeline_with_report(g, after).map(|(g, _)| g)
}

/// As [`run_pipeline`], also returning what the `optimize` pass did.
pub fn run_pipeline_with_report(g: &Graph, mut after: impl FnMut(&str, &Graph)) -> Result<(Graph, Report), VerifyError> {
    let mut g = g.clone();
    let mut report = Report::default();
    for p in PIPELINE {
        g = if p.name == "optimize" {
            let (out, r) = optimize_with(&g, Limits::default());
            report = r;
            out
        } else {
            (p.run)(&g)
        };
        tessera_ir::verify(&g).map_err(|errors| VerifyError { pass: p.name.to_string(), errors, dump: g.to_string() })?;
        after(p.name, &g);
    }
    // List fusions in the order of the final graph, keeping what the optimizer counted.
    let counted = std::mem::take(&mut report.fusions);
    report.fusions = g
        .nodes()
        .iter()
        .filter(|n| n.op.is_fused())
        .map(|n| {
            let what = describe(&g, n);
            let replaced = counted.iter().find(|f| f.span == n.span && f.what == what).map_or(0, |f| f.replaced);
            Fusion { span: n.span, what, replaced }
        })
        .collect();
    report.fusions.extend(merged_projections(&g));
    Ok((g, report))
}

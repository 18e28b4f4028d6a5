//! The verifier. A graph that passes it satisfies every invariant below; every pass keeps them.
//! A failure is a compiler bug (or a hand-edited `.tir` file), never a user error in a `.tsr`.
//!
//! Invariants:
//! 1. **SSA, topological order**: every operand of node `n` is a node with a smaller index.
//! 2. **Arity**: each op has its number of operands (`concat` at least one).
//! 3. **Types**: every node's type equals [`crate::infer_type`] of its op and operand types
//!    (shapes broadcast, matmul inner sizes agree, axes in range, reshapes keep the element
//!    count, gather indices are `i64`, ...).
//! 4. **Names**: input names are distinct, parameter names are distinct, output names are
//!    distinct and non-empty, and every output refers to an existing value.
//! 5. **Spans**: every known span names an entry of the file table.
//! 6. **Multi-result nodes** (`scan`, `topk`): their value is read only by `proj` nodes, never used as
//!    another operand or an output; a `proj` reads a multi-result node, its index names one of
//!    the results, and its type is that result's ([`crate::multi_results`]).
//! 7. **Regions** (the body of a scan or a route): the body is itself a graph satisfying 1–6, with spans into
//!    the enclosing file table and an empty table of its own; it has no `param` nodes; its
//!    arguments match the operands (state types equal, sliced types without the scanned axis,
//!    invariants equal), its state results have their argument's type, and there is at least
//!    one sliced operand; a route body's arguments are its rows `f32[routed, d]` and the
//!    stacked operands' slices, and it returns one `f32[routed, d_out]`. No value escapes a region except through its results: the body's
//!    ids are its own, so an enclosing graph can only read the scan's results.

use crate::{infer_type, multi_results, Graph, Op, TensorType};
use std::collections::HashSet;

/// Checks every invariant of the module doc; returns all violations found, each prefixed with
/// the offending value.
pub fn verify(g: &Graph) -> Result<(), Vec<String>> {
    let mut errs = Vec::new();
    verify_in(g, g.files.len(), "", &mut errs);
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs)
    }
}

/// Checks `g`, whose spans index a table of `files` entries; `at` prefixes messages (the
/// path of regions, `%7.` for the body of `%7`).
fn verify_in(g: &Graph, files: usize, at: &str, errs: &mut Vec<String>) {
    let (mut inputs, mut params) = (HashSet::new(), HashSet::new());
    let nodes = g.nodes();
    for (i, n) in nodes.iter().enumerate() {
        if let Some(bad) = n.inputs.iter().find(|v| v.index() >= i) {
            errs.push(format!("{at}%{i}: operand {bad} is not defined before use"));
            continue;
        }
        let multi = n.inputs.iter().find(|v| nodes[v.index()].op.is_multi());
        match (&n.op, multi) {
            (Op::Proj(_), _) if n.inputs.len() != 1 => {} // the arity error is reported below
            // A multi-result node with an undefined operand is reported there.
            (Op::Proj(_), _) if nodes[n.inputs[0].index()].inputs.iter().any(|v| v.index() >= g.len()) => {}
            (Op::Proj(k), _) => {
                let owner = &nodes[n.inputs[0].index()];
                let tys: Vec<&TensorType> = owner.inputs.iter().map(|&v| g.ty(v)).collect();
                match multi_results(&owner.op, &tys).map(|r| r.get(*k).cloned()) {
                    Ok(Some(t)) if t == n.ty => {}
                    Ok(Some(t)) => errs.push(format!("{at}%{i}: proj {k} has type {} but the result is {t}", n.ty)),
                    Ok(None) => errs.push(format!("{at}%{i}: proj {k} of a node with fewer results")),
                    Err(_) if owner.op.is_multi() => {} // reported at the multi-result node
                    Err(_) => errs.push(format!("{at}%{i}: proj reads {}, which has a single result", n.inputs[0])),
                }
            }
            (_, Some(v)) => errs.push(format!("{at}%{i}: {} uses the multi-result {v} directly (only proj may)", n.op)),
            _ => {}
        }
        if let Some(body) = n.op.region() {
            let inner = format!("{at}%{i}.");
            if !body.files.is_empty() {
                errs.push(format!("{inner}: a region has no file table of its own"));
            }
            if let Some((name, _)) = body.params().first() {
                errs.push(format!("{inner}: parameter \"{name}\" inside a region (pass it as an operand)"));
            }
            verify_in(body, files, &inner, errs);
        }
        let tys: Vec<&TensorType> = n.inputs.iter().map(|&v| g.ty(v)).collect();
        match infer_type(&n.op, &tys, Some(&n.ty)) {
            Ok(t) if t == n.ty => {}
            Ok(t) => errs.push(format!("{at}%{i}: {} has type {} but its operands give {t}", n.op, n.ty)),
            Err(e) => errs.push(format!("{at}%{i}: {e}")),
        }
        match &n.op {
            Op::Input(name) if !inputs.insert(name) => errs.push(format!("{at}%{i}: duplicate input \"{name}\"")),
            Op::Param(name, _) if !params.insert(name) => errs.push(format!("{at}%{i}: duplicate parameter \"{name}\"")),
            _ => {}
        }
        if n.span.is_known() && n.span.file as usize >= files {
            errs.push(format!("{at}%{i}: span refers to file {} but the table has {files}", n.span.file));
        }
    }
    let mut outs = HashSet::new();
    for (name, v) in &g.outputs {
        if name.is_empty() || !outs.insert(name) {
            errs.push(format!("{at}output \"{name}\": empty or duplicate name"));
        }
        if v.index() >= g.len() {
            errs.push(format!("{at}output \"{name}\" refers to undefined {v}"));
        } else if nodes[v.index()].op.is_multi() {
            errs.push(format!("{at}output \"{name}\" is the multi-result {v} (project it)"));
        }
    }
}

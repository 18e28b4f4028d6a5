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

use crate::{infer_type, Graph, Op, TensorType};
use std::collections::HashSet;

/// Checks every invariant of the module doc; returns all violations found, each prefixed with
/// the offending value.
pub fn verify(g: &Graph) -> Result<(), Vec<String>> {
    let mut errs = Vec::new();
    let (mut inputs, mut params) = (HashSet::new(), HashSet::new());
    for (i, n) in g.nodes().iter().enumerate() {
        if let Some(bad) = n.inputs.iter().find(|v| v.index() >= i) {
            errs.push(format!("%{i}: operand {bad} is not defined before use"));
            continue;
        }
        let tys: Vec<&TensorType> = n.inputs.iter().map(|&v| g.ty(v)).collect();
        match infer_type(&n.op, &tys, Some(&n.ty)) {
            Ok(t) if t == n.ty => {}
            Ok(t) => errs.push(format!("%{i}: {} has type {} but its operands give {t}", n.op, n.ty)),
            Err(e) => errs.push(format!("%{i}: {e}")),
        }
        match &n.op {
            Op::Input(name) if !inputs.insert(name) => errs.push(format!("%{i}: duplicate input \"{name}\"")),
            Op::Param(name, _) if !params.insert(name) => errs.push(format!("%{i}: duplicate parameter \"{name}\"")),
            _ => {}
        }
        if n.span.is_known() && n.span.file as usize >= g.files.len() {
            errs.push(format!("%{i}: span refers to file {} but the table has {}", n.span.file, g.files.len()));
        }
    }
    let mut outs = HashSet::new();
    for (name, v) in &g.outputs {
        if name.is_empty() || !outs.insert(name) {
            errs.push(format!("output \"{name}\": empty or duplicate name"));
        }
        if v.index() >= g.len() {
            errs.push(format!("output \"{name}\" refers to undefined {v}"));
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs)
    }
}

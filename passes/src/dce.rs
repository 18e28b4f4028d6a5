//! `dce`: dead-code elimination.
//!
//! Assumes: a verified graph. Guarantees: every remaining node is an input or is needed by an
//! output; inputs are kept even when unused (they are the model's interface); order and ids
//! of kept nodes stay relative. Does not: merge or simplify anything.

use tessera_ir::{Graph, Op, ValueId};

/// Removes nodes no output depends on.
pub fn dce(g: &Graph) -> Graph {
    let mut live = vec![false; g.len()];
    for (_, v) in &g.outputs {
        live[v.index()] = true;
    }
    for (i, n) in g.nodes().iter().enumerate().rev() {
        if matches!(n.op, Op::Input(_)) {
            live[i] = true;
        }
        if live[i] {
            for v in &n.inputs {
                live[v.index()] = true;
            }
        }
    }
    let identity: Vec<ValueId> = g.values().collect();
    g.compact(&live, &identity).0
}

//! `cse`: common-subexpression elimination.
//!
//! Assumes: a verified graph. Guarantees: no two nodes have the same op, attributes, operands
//! and type (the later one is replaced by the earlier); inputs and parameters are never merged
//! (their names differ). Spans of the survivors are kept. Does not: know algebra (`a+b` and
//! `b+a` stay distinct).

use std::collections::HashMap;
use tessera_ir::{Graph, ValueId};

/// Merges identical nodes.
pub fn cse(g: &Graph) -> Graph {
    let mut replace: Vec<ValueId> = g.values().collect();
    let mut keep = vec![true; g.len()];
    // Key: the node's text without its span, after operands were rewritten to survivors.
    let mut seen: HashMap<String, ValueId> = HashMap::new();
    for (i, n) in g.nodes().iter().enumerate() {
        let inputs: Vec<String> = n.inputs.iter().map(|v| replace[v.index()].to_string()).collect();
        let key = format!("{:?}|{}|{}", n.op, inputs.join(","), n.ty);
        match seen.get(&key) {
            Some(&first) => {
                replace[i] = first;
                keep[i] = false;
            }
            None => {
                seen.insert(key, ValueId(i as u32));
            }
        }
    }
    g.compact(&keep, &replace).0
}

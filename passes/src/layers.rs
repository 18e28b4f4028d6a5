//! Repeated layers: find the run of structurally identical blocks that a `for` loop unrolled
//! into, so that the optimizer saturates one block and reuses the result for all of them.
//!
//! Blocks are found in node order: block `k` is nodes `start + k·period ..` and every node
//! has the same op, attributes (parameter names up to their numeric segments), type and span
//! as its counterpart in block 0. Each operand from outside a block is either shared by all
//! blocks (a mask, the input ids) or carried from the previous block (the residual stream);
//! anything else means no reuse.

use std::collections::HashMap;
use tessera_ir::{Graph, Node, Op, ValueId};

/// A run of identical blocks.
#[derive(Debug)]
pub struct Blocks {
    /// Index of block 0's first node.
    pub start: usize,
    /// Nodes per block.
    pub period: usize,
    /// Number of blocks (≥ 2).
    pub count: usize,
    /// Operands of block 0 from before it, with how later blocks get them.
    pub externals: Vec<(ValueId, Source)>,
}

/// How block `k > 0` gets an operand that block 0 takes from before the run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Source {
    /// The same value.
    Shared,
    /// Block `k - 1`'s node at this offset.
    Carried(usize),
}

impl Blocks {
    /// One past the last node of the run.
    pub fn end(&self) -> usize {
        self.start + self.period * self.count
    }

    /// (block, offset) of node `i` inside the run.
    pub fn locate(&self, i: usize) -> Option<(usize, usize)> {
        (self.start..self.end()).contains(&i).then(|| ((i - self.start) / self.period, (i - self.start) % self.period))
    }
}

/// A parameter name with numeric path segments replaced by `#` (`layers.3.q` → `layers.#.q`).
pub fn generic_name(name: &str) -> String {
    name.split('.').map(|s| if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) { "#" } else { s }).collect::<Vec<_>>().join(".")
}

fn key(n: &Node) -> String {
    let op = match &n.op {
        Op::Param(name, init) => format!("param {} {init}", generic_name(name)),
        other => format!("{other:?}"),
    };
    format!("{op}|{}|{}:{}:{}", n.ty, n.span.file, n.span.line, n.span.col)
}

/// The run of identical blocks covering the most nodes, if the graph has one worth reusing.
/// Candidate periods are the distances from the first numbered parameter to its next few
/// namesakes (layers that alternate, like ModernBERT's local and global ones, repeat every
/// few layers).
pub fn find_blocks(g: &Graph) -> Option<Blocks> {
    let nodes = g.nodes();
    let keys: Vec<String> = nodes.iter().map(key).collect();
    let numbered = nodes.iter().enumerate().filter(|(_, n)| matches!(&n.op, Op::Param(name, _) if generic_name(name) != *name));
    let mut tried = std::collections::HashSet::new();
    numbered
        .take(48)
        .flat_map(|(i0, _)| (i0 + 1..nodes.len()).filter(|&j| keys[j] == keys[i0]).take(4).map(move |j| (i0, j - i0)).collect::<Vec<_>>())
        .filter(|&(i0, p)| tried.insert((i0 % p.max(1), p)))
        .filter_map(|(i0, p)| blocks_with_period(g, &keys, i0, p))
        .max_by_key(|b| (b.period * b.count, std::cmp::Reverse(b.period)))
}

fn blocks_with_period(g: &Graph, keys: &[String], i0: usize, period: usize) -> Option<Blocks> {
    let n = keys.len();
    let same = |i: usize| i + period < n && keys[i] == keys[i + period];
    let mut start = i0;
    while start > 0 && same(start - 1) {
        start -= 1;
    }
    let mut end = i0;
    while same(end) {
        end += 1;
    }
    // The earliest phase at which every block reads only shared values and its predecessor's
    // (a block cut in the middle of a layer reads values from two layers back), preferring
    // one whose blocks each hold the parameters of one layer: a block cut in the middle of a
    // layer whose mask is shared with an earlier, different layer (Qwen2's full and sliding
    // layers) would cut its attention in two, and no rule could fuse it.
    let at = |s: usize| {
        let count = (end + period - s) / period;
        if count < 2 {
            return None;
        }
        let mut blocks = Blocks { start: s, period, count, externals: Vec::new() };
        blocks.externals = classify(g, &blocks)?;
        Some(blocks)
    };
    let whole = |s: usize| {
        let mut layers = g.nodes()[s..(s + period).min(n)].iter().filter_map(|nd| match &nd.op {
            Op::Param(name, _) => Some(layer_numbers(name)),
            _ => None,
        });
        let first = layers.next();
        layers.all(|l| Some(l) == first)
    };
    // Among the phases that work, the one where the fewest values cross from a block to the
    // next (a whole layer passes on its residual stream only; a cut inside an attention or an
    // FFN passes on its intermediate values too), then one whose blocks hold one layer's
    // parameters each, then the earliest.
    let carried = |b: &Blocks| {
        let mut offs: Vec<usize> =
            b.externals.iter().filter_map(|(_, s)| if let Source::Carried(o) = s { Some(*o) } else { None }).collect();
        offs.sort_unstable();
        offs.dedup();
        offs.len()
    };
    (start..start + period).filter_map(|s| at(s).map(|b| (s, b))).min_by_key(|(s, b)| (carried(b), !whole(*s), *s)).map(|(_, b)| b)
}

/// The numeric segments of a parameter name (`layers.3.attn.q` → `[3]`).
fn layer_numbers(name: &str) -> Vec<&str> {
    name.split('.').filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).collect()
}

/// Checks operand correspondence between blocks and classifies block 0's external operands.
fn classify(g: &Graph, b: &Blocks) -> Option<Vec<(ValueId, Source)>> {
    let nodes = g.nodes();
    let mut ext: HashMap<ValueId, Option<Source>> = HashMap::new();
    for o in 0..b.period {
        let n0 = &nodes[b.start + o];
        for k in 1..b.count {
            let nk = &nodes[b.start + k * b.period + o];
            if nk.inputs.len() != n0.inputs.len() {
                return None;
            }
            for (a, c) in n0.inputs.iter().zip(&nk.inputs) {
                let (a, c) = (a.index(), c.index());
                if a >= b.start {
                    if c != a + k * b.period {
                        return None;
                    }
                    continue;
                }
                let this = if c == a {
                    Source::Shared
                } else {
                    match b.locate(c) {
                        Some((blk, off)) if blk + 1 == k => Source::Carried(off),
                        _ => return None,
                    }
                };
                match ext.entry(ValueId(a as u32)).or_insert(Some(this)) {
                    Some(seen) if *seen == this => {}
                    _ => return None,
                }
            }
        }
    }
    let mut out: Vec<(ValueId, Source)> = ext.into_iter().filter_map(|(v, s)| Some((v, s?))).collect();
    out.sort_by_key(|(v, _)| v.0);
    Some(out)
}

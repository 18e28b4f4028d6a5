//! Optimising a run of identical layers once: block 0 becomes a graph of its own (operands
//! from outside it become inputs `%ext<id>`, values used outside it outputs `%out<offset>`),
//! the rest of the model another (each block value it reads becomes an input
//! `%block<k>.<offset>`). Both are saturated separately; the model is then reassembled with
//! one copy of the optimised block per layer, its parameters renamed to that layer's.

use crate::layers::{Blocks, Source};
use crate::optimize::Report;
use std::collections::{BTreeSet, HashMap};
use tessera_ir::{Graph, Init, Node, Op, ValueId};

/// Which of the first `n` nodes of `g` are computed from constants alone (no input, no
/// parameter, no random initialisation).
fn constant_values(g: &Graph, n: usize) -> Vec<bool> {
    let mut pure: Vec<bool> = Vec::with_capacity(n);
    for node in g.nodes().iter().take(n) {
        let leaf = !matches!(node.op, Op::Input(_) | Op::Param(..));
        pure.push(leaf && node.inputs.iter().all(|v| pure.get(v.index()).copied().unwrap_or(false)));
    }
    pure
}

/// Optimises `g` by optimising its blocks once (`opt` saturates one graph; `rest` optimises
/// the remainder, which may hold another run of blocks). `None` when the pieces do not fit
/// back together (then the caller optimises the whole graph).
pub fn optimize_blocks(
    g: &Graph,
    b: &Blocks,
    opt: impl Fn(&Graph) -> (Graph, Report),
    rest: impl Fn(&Graph) -> (Graph, Report),
) -> Option<(Graph, Report)> {
    let nodes = g.nodes();
    let (start, period, end) = (b.start, b.period, b.end());
    // Names of the stand-in inputs and outputs, unique to this graph (the rest may itself be
    // split again, and the original graph may hold such names from an outer split).
    let salt = format!("%{}_", g.len());
    let ext = |a: ValueId| format!("{salt}ext{}", a.0);
    let out_name = |o: usize| format!("{salt}out{o}");
    let block_name = |k: usize, o: usize| format!("{salt}block{k}.{o}");
    // Offsets of block values read from outside their block.
    let mut needed: BTreeSet<usize> =
        b.externals.iter().filter_map(|(_, s)| if let Source::Carried(o) = s { Some(*o) } else { None }).collect();
    let outside_reads = nodes[end..].iter().flat_map(|n| n.inputs.iter()).chain(g.outputs.iter().map(|(_, v)| v));
    needed.extend(outside_reads.filter_map(|v| b.locate(v.index()).map(|(_, o)| o)));

    // Block 0 on its own.
    let mut t = Graph::new(&format!("{}.layer", g.name));
    t.files = g.files.clone();
    let mut tmap: HashMap<usize, ValueId> = HashMap::new();
    // Operands computed from constants alone (positions, masks: `arange(s)[:, none] >= ..`)
    // are copied into the block rather than becoming inputs, so that the rules still see
    // what they are (a mask predicate on query and key indices, not an opaque tensor).
    let pure = constant_values(g, b.start);
    let mut copied: Vec<usize> = b.externals.iter().map(|(a, _)| a.index()).filter(|a| pure[*a]).collect();
    let mut i = 0;
    while i < copied.len() {
        let more: Vec<usize> = nodes[copied[i]].inputs.iter().map(|v| v.index()).filter(|v| !copied.contains(v)).collect();
        copied.extend(more);
        i += 1;
    }
    copied.sort_unstable();
    for &c in &copied {
        let n = &nodes[c];
        let inputs = n.inputs.iter().map(|v| tmap.get(&v.index()).copied()).collect::<Option<Vec<_>>>()?;
        tmap.insert(c, t.push_unchecked(Node { op: n.op.clone(), inputs, ty: n.ty.clone(), span: n.span }));
    }
    for (a, _) in b.externals.iter().filter(|(a, _)| !pure[a.index()]) {
        let n = g.node(*a);
        tmap.insert(a.index(), t.push_unchecked(Node { op: Op::Input(ext(*a)), inputs: vec![], ty: n.ty.clone(), span: n.span }));
    }
    for (i, n) in nodes.iter().enumerate().take(start + period).skip(start) {
        let inputs = n.inputs.iter().map(|v| tmap.get(&v.index()).copied()).collect::<Option<Vec<_>>>()?;
        tmap.insert(i, t.push_unchecked(Node { op: n.op.clone(), inputs, ty: n.ty.clone(), span: n.span }));
    }
    t.outputs = needed.iter().map(|&o| (out_name(o), tmap[&(start + o)])).collect();

    // The rest of the model.
    let mut o = Graph::new(&g.name);
    o.files = g.files.clone();
    let mut omap: HashMap<usize, ValueId> = HashMap::new();
    // Inputs standing for block values, created before the nodes that read them so that any
    // run of identical layers after the blocks stays identical.
    let mut block_inputs: HashMap<usize, ValueId> = HashMap::new();
    for (i, n) in nodes.iter().enumerate().take(start) {
        let inputs = n.inputs.iter().map(|v| omap.get(&v.index()).copied()).collect::<Option<Vec<_>>>()?;
        omap.insert(i, o.push_unchecked(Node { op: n.op.clone(), inputs, ty: n.ty.clone(), span: n.span }));
    }
    let mut reads: Vec<ValueId> =
        nodes[end..].iter().flat_map(|n| n.inputs.iter().copied()).chain(g.outputs.iter().map(|(_, v)| *v)).collect();
    reads.sort_by_key(|v| v.0);
    reads.dedup();
    for v in reads {
        if let Some((k, off)) = b.locate(v.index()) {
            let n = g.node(v);
            let input = o.push_unchecked(Node { op: Op::Input(block_name(k, off)), inputs: vec![], ty: n.ty.clone(), span: n.span });
            block_inputs.insert(v.index(), input);
        }
    }
    let read = |v: ValueId, omap: &HashMap<usize, ValueId>| -> Option<ValueId> {
        match b.locate(v.index()) {
            None => omap.get(&v.index()).copied(),
            Some(_) => block_inputs.get(&v.index()).copied(),
        }
    };
    for (i, n) in nodes.iter().enumerate().skip(end) {
        let inputs = n.inputs.iter().map(|v| read(*v, &omap)).collect::<Option<Vec<_>>>()?;
        omap.insert(i, o.push_unchecked(Node { op: n.op.clone(), inputs, ty: n.ty.clone(), span: n.span }));
    }
    let mut outputs = Vec::new();
    for (name, v) in &g.outputs {
        outputs.push((name.clone(), read(*v, &omap)?));
    }
    for (a, _) in &b.externals {
        outputs.push((ext(*a), *omap.get(&a.index())?));
    }
    o.outputs = outputs;

    let (t2, rt) = opt(&t);
    let (o2, ro) = rest(&o);

    // Parameter names of block k, by block 0's names.
    let rename: Vec<HashMap<String, (String, Init)>> = (0..b.count)
        .map(|k| {
            (0..period)
                .filter_map(|off| match (&nodes[start + off].op, &nodes[start + k * period + off].op) {
                    (Op::Param(n0, _), Op::Param(nk, init)) => Some((n0.clone(), (nk.clone(), *init))),
                    _ => None,
                })
                .collect()
        })
        .collect();
    let source: HashMap<String, Source> = b.externals.iter().map(|(a, s)| (ext(*a), *s)).collect();
    let t_out: HashMap<&str, ValueId> = t2.outputs.iter().map(|(n, v)| (n.as_str(), *v)).collect();
    let o_out: HashMap<&str, ValueId> = o2.outputs.iter().map(|(n, v)| (n.as_str(), *v)).collect();

    // A value of the assembled model: a node of the optimised rest (`None`) or of block k.
    type Ref = (Option<usize>, ValueId);
    let node_of = |r: Ref| -> &Node {
        if let Some(_k) = r.0 {
            t2.node(r.1)
        } else {
            o2.node(r.1)
        }
    };
    // Inputs standing for values of the other graph resolve to those values.
    let real = |mut r: Ref| -> Option<Ref> {
        for _ in 0..=b.count + 2 {
            let Op::Input(name) = &node_of(r).op else { return Some(r) };
            r = match r.0 {
                None => match name.strip_prefix(&format!("{salt}block")).and_then(|s| s.split_once('.')) {
                    Some((k, off)) => (Some(k.parse().ok()?), *t_out.get(out_name(off.parse().ok()?).as_str())?),
                    None => return Some(r),
                },
                Some(k) => match source.get(name.as_str()) {
                    None => return Some(r),
                    Some(Source::Shared) => (None, *o_out.get(name.as_str())?),
                    Some(Source::Carried(_)) if k == 0 => (None, *o_out.get(name.as_str())?),
                    Some(Source::Carried(off)) => (Some(k - 1), *t_out.get(out_name(*off).as_str())?),
                },
            };
        }
        None
    };

    let mut out = Graph::new(&g.name);
    out.files = g.files.clone();
    let mut done: HashMap<Ref, ValueId> = HashMap::new();
    let mut roots: Vec<Ref> = o2
        .nodes()
        .iter()
        .enumerate()
        .filter(|(_, n)| matches!(&n.op, Op::Input(x) if !x.starts_with(&salt)))
        .map(|(i, _)| (None, ValueId(i as u32)))
        .collect();
    roots.extend(g.outputs.iter().filter_map(|(name, _)| o_out.get(name.as_str()).map(|v| (None, *v))));
    for root in roots {
        let mut stack = vec![(real(root)?, false)];
        while let Some((r, expanded)) = stack.pop() {
            if done.contains_key(&r) {
                continue;
            }
            let n = node_of(r);
            let kids = n.inputs.iter().map(|v| real((r.0, *v))).collect::<Option<Vec<Ref>>>()?;
            if !expanded {
                stack.push((r, true));
                stack.extend(kids.iter().filter(|k| !done.contains_key(k)).map(|&k| (k, false)));
                continue;
            }
            let op = match (&n.op, r.0) {
                (Op::Param(name, _), Some(k)) => {
                    let (nk, init) = rename[k].get(name)?;
                    Op::Param(nk.clone(), *init)
                }
                (op, _) => op.clone(),
            };
            let inputs = kids.iter().map(|k| done.get(k).copied()).collect::<Option<Vec<_>>>()?;
            done.insert(r, out.push_unchecked(Node { op, inputs, ty: n.ty.clone(), span: n.span }));
        }
    }
    for (name, _) in &g.outputs {
        let r = real((None, *o_out.get(name.as_str())?))?;
        out.outputs.push((name.clone(), *done.get(&r)?));
    }
    tessera_ir::verify(&out).ok()?;

    let mut fusions = ro.fusions.clone();
    for _ in 0..b.count {
        fusions.extend(rt.fusions.iter().cloned());
    }
    let both = |a: &str, b: &str| if a == b { a.to_string() } else { format!("layer {a}, rest {b}") };
    let report = Report {
        stop: both(&rt.stop, &ro.stop),
        iterations: rt.iterations.max(ro.iterations),
        enodes: rt.enodes + ro.enodes,
        eclasses: rt.eclasses + ro.eclasses,
        seconds: 0.0,
        fusions,
        reused_layers: b.count + ro.reused_layers,
    };
    Some((out, report))
}

//! The fused scan kernel of the CPU backend: a scan whose body is elementwise math over its
//! states (broadcast operands, reductions over the states' last axis) runs as one loop over
//! the sequence per tile of state elements, the state kept in the tile's arrays (cache), the
//! tiles in parallel (rayon), no allocation or dispatch per position.
//!
//! [`plan`] decides whether a body fits and how each body value lies in the *iteration space*
//! `I` (the states' shape): every value is mapped axis by axis onto `I`'s axes (by the
//! language's right-aligned broadcasting, propagated back from the body's results), and a
//! tile computes each value at every element of `I` it holds, operands broadcast by strides.
//! A body that does anything else (products, slices, gathers, integer math, states of
//! different shapes, reductions over another axis) keeps the general lowering: its own
//! program run once per position ([`crate::cpu::Executable`]). The semantics are the
//! interpreter's ([`tessera_runtime::scan_steps`]), in f32.

use tessera_ir::{BinaryOp, DType, Dim, Graph, Op, ReduceOp, Scan, UnaryOp};

/// No axis of `I` (a size-1 axis, broadcast).
const NONE: usize = usize::MAX;

/// Where a leaf of the body reads from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Source {
    /// Operand `k` (a state, a sliced tensor or an invariant, in operand order).
    Operand(usize),
    /// A constant.
    Const(f32),
}

/// One body value, computed into its slot of a tile.
#[derive(Clone, Debug)]
pub(crate) enum Node {
    /// Read from an operand (through `map`: for each of its per-position axes, the axis of `I`
    /// it runs along, or `NONE`), or a constant.
    Leaf(Source, Vec<usize>),
    Unary(UnaryOp, usize),
    Binary(BinaryOp, usize, usize),
    Where(usize, usize, usize),
    /// A reduction over the last axis of `I`, replicated along it.
    Reduce(ReduceOp, usize),
    /// The same values as another slot (a reshape, broadcast or cast that moves nothing).
    Alias,
}

/// How a fused scan computes: the body's values in order, and the slots of its results.
#[derive(Clone, Debug)]
pub struct FusedScan {
    pub(crate) nodes: Vec<Node>,
    /// The slot of each body output (per-step results, then new states).
    pub(crate) outputs: Vec<usize>,
    /// For each per-step result: its map onto `I` (the reduced axis `NONE`).
    pub(crate) output_maps: Vec<Vec<usize>>,
    /// Whether a reduction runs over `I`'s last axis (tiles then hold whole rows).
    pub(crate) reduces: bool,
    /// The chunked form, where the body is a linear recurrence with outer-product updates.
    pub(crate) chunked: Option<crate::scan_chunked::Chunked>,
}

impl FusedScan {
    /// One line for `--explain`.
    pub fn describe(&self) -> String {
        let ops = self.nodes.iter().filter(|n| !matches!(n, Node::Leaf(..) | Node::Alias)).count();
        let fused = format!(
            "fused scan kernel: {ops} ops per element, state in tiles of {}, tiles in parallel",
            if self.reduces { "whole rows (a reduction over the last axis)" } else { "elements" }
        );
        match &self.chunked {
            Some(c) => format!("{}; else {fused}", c.describe()),
            None => fused,
        }
    }
}

/// Whether reshaping `from` to `to` only inserts or removes axes of size 1; if so, for each
/// axis of `from`, the axis of `to` it becomes (`NONE` for a size-1 axis).
fn unit_reshape(from: &[Dim], to: &[Dim]) -> Option<Vec<usize>> {
    let one = Dim::known(1);
    let (f, t): (Vec<usize>, Vec<usize>) =
        ((0..from.len()).filter(|&i| from[i] != one).collect(), (0..to.len()).filter(|&i| to[i] != one).collect());
    if f.len() != t.len() || f.iter().zip(&t).any(|(&a, &b)| from[a] != to[b]) {
        return None;
    }
    let mut m = vec![NONE; from.len()];
    for (&a, &b) in f.iter().zip(&t) {
        m[a] = b;
    }
    Some(m)
}

/// Why a scan's body does not fit the fused kernel (the scan then runs its body's program
/// once per position, on the CPU).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotFused {
    /// A scan that carries nothing.
    #[error("no state")]
    NoState,
    /// States of different shapes: no one iteration space.
    #[error("states of different shapes")]
    StatesDiffer,
    /// Integer values in the body.
    #[error("integer values in the body")]
    Integers,
    /// A body value read along different axes of the iteration space.
    #[error("value %{0} is read along different axes")]
    MixedAxes(usize),
    /// A per-step result of another shape than the states or their last-axis reduction.
    #[error("per-step result {0} is neither the states' shape nor a reduction of it over the last axis")]
    ResultShape(usize),
    /// A reshape that moves elements.
    #[error("a reshape that moves elements")]
    Reshape,
    /// A reduction read along other axes than the ones it reduces.
    #[error("a reduction read along other axes")]
    ReductionAxes,
    /// A body argument that is not one of the scan's operands.
    #[error("an argument out of place")]
    Argument,
    /// An op the fused kernel does not evaluate.
    #[error("`{0}` in the body")]
    Op(String),
}

/// Plans the fused kernel for `s`, or says why the body does not fit.
pub fn plan(s: &Scan) -> Result<FusedScan, NotFused> {
    let g: &Graph = &s.body;
    let nodes = g.nodes();
    let one = Dim::known(1);
    let (ns, ny) = (s.state, g.outputs.len() - s.state);
    if ns == 0 {
        return Err(NotFused::NoState);
    }
    let space = g.ty(g.outputs[ny].1).clone();
    if g.outputs[ny..].iter().any(|(_, v)| *g.ty(*v) != space) {
        return Err(NotFused::StatesDiffer);
    }
    let r = space.rank();
    if nodes.iter().any(|n| !matches!(n.ty.dtype, DType::F32 | DType::Bool)) {
        return Err(NotFused::Integers);
    }
    // Each value's map onto I, propagated from the results back to the leaves.
    let mut maps: Vec<Option<Vec<usize>>> = vec![None; nodes.len()];
    let norm =
        |m: Vec<usize>, shape: &[Dim]| -> Vec<usize> { m.into_iter().zip(shape).map(|(a, d)| if *d == one { NONE } else { a }).collect() };
    let identity: Vec<usize> = (0..r).collect();
    let set = |maps: &mut Vec<Option<Vec<usize>>>, v: usize, m: Vec<usize>| -> Result<(), NotFused> {
        let m = norm(m, &nodes[v].ty.shape);
        match &maps[v] {
            Some(old) if *old != m => Err(NotFused::MixedAxes(v)),
            _ => {
                maps[v] = Some(m);
                Ok(())
            }
        }
    };
    let mut output_maps = Vec::with_capacity(ny);
    for (k, (_, v)) in g.outputs.iter().enumerate() {
        let t = g.ty(*v);
        let m = if *t == space {
            identity.clone()
        } else {
            match &nodes[v.index()].op {
                Op::Reduce { axes, keepdim, .. } if r > 0 && *axes == [r - 1] && *g.ty(nodes[v.index()].inputs[0]) == space => {
                    if *keepdim {
                        identity.clone()
                    } else {
                        (0..r - 1).collect()
                    }
                }
                _ => return Err(NotFused::ResultShape(k)),
            }
        };
        set(&mut maps, v.index(), m.clone())?;
        if k < ny {
            output_maps.push(norm(m, &t.shape));
        }
    }
    // A state the body does not read still carries its initial value through.
    for (_, v) in g.inputs().iter().take(ns) {
        set(&mut maps, v.index(), identity.clone())?;
    }
    let mut reduces = false;
    for i in (0..nodes.len()).rev() {
        let Some(m) = maps[i].clone() else { continue };
        let n = &nodes[i];
        let operand = |k: usize| n.inputs[k].index();
        match &n.op {
            Op::Input(_) | Op::Const(_) => {}
            Op::Unary(_) | Op::Binary(_) | Op::Where | Op::Broadcast => {
                for k in 0..n.inputs.len() {
                    let rank = nodes[operand(k)].ty.rank();
                    set(&mut maps, operand(k), m[m.len() - rank..].to_vec())?;
                }
            }
            Op::Cast if n.ty.dtype == DType::F32 || nodes[operand(0)].ty.dtype == DType::Bool => set(&mut maps, operand(0), m)?,
            Op::Reshape => {
                let from = &nodes[operand(0)].ty.shape;
                let to_axes = unit_reshape(from, &n.ty.shape).ok_or(NotFused::Reshape)?;
                let om = to_axes.iter().map(|&a| if a == NONE { NONE } else { m[a] }).collect();
                set(&mut maps, operand(0), om)?;
            }
            Op::Reduce { axes, keepdim, .. } if r > 0 && *axes == [r - 1] && *g.ty(n.inputs[0]) == space => {
                let want = norm(if *keepdim { identity.clone() } else { (0..r - 1).collect() }, &n.ty.shape);
                if norm(m, &n.ty.shape) != want {
                    return Err(NotFused::ReductionAxes);
                }
                reduces = true;
                set(&mut maps, operand(0), identity.clone())?;
            }
            other => return Err(NotFused::Op(other.mnemonic())),
        }
    }
    // The programs, in body order.
    let args: Vec<usize> = g.inputs().iter().map(|(_, v)| v.index()).collect();
    let mut alias: Vec<usize> = (0..nodes.len()).collect();
    let mut prog = Vec::with_capacity(nodes.len());
    for (i, n) in nodes.iter().enumerate() {
        let a = |k: usize| alias[n.inputs[k].index()];
        let node = match &n.op {
            _ if maps[i].is_none() => Node::Leaf(Source::Const(0.0), vec![]), // unused
            Op::Input(_) => {
                let k = args.iter().position(|&x| x == i).ok_or(NotFused::Argument)?;
                Node::Leaf(Source::Operand(k), maps[i].clone().unwrap_or_default())
            }
            Op::Const(c) => Node::Leaf(Source::Const(*c as f32), vec![]),
            Op::Unary(u) => Node::Unary(*u, a(0)),
            Op::Binary(b) => Node::Binary(*b, a(0), a(1)),
            Op::Where => Node::Where(a(0), a(1), a(2)),
            Op::Reduce { op, .. } => Node::Reduce(*op, a(0)),
            Op::Reshape | Op::Broadcast | Op::Cast => {
                let src = a(0);
                alias[i] = src;
                Node::Alias
            }
            other => return Err(NotFused::Op(other.mnemonic())),
        };
        prog.push(node);
    }
    let outputs = g.outputs.iter().map(|(_, v)| alias[v.index()]).collect();
    let mut f = FusedScan { nodes: prog, outputs, output_maps, reduces, chunked: None };
    f.chunked = crate::scan_chunked::recognize(&f, s);
    Ok(f)
}

/// For a tensor of `shape` read per position with `map` (for each per-position axis, its axis
/// of `I`; `axis` the scanned axis of a sliced or stacked tensor): its strides along the `r`
/// axes of `I` (0 where broadcast) and the stride of the scanned axis (0 when none).
pub(crate) fn access_strides(shape: &[usize], map: &[usize], axis: Option<usize>, r: usize) -> (Vec<usize>, usize) {
    let full = tessera_runtime::strides(shape);
    let (per, step) = match axis {
        Some(a) => {
            let mut st = full.clone();
            let s = st.remove(a);
            (st, s)
        }
        None => (full, 0),
    };
    let mut along = vec![0; r];
    for (k, &a) in map.iter().enumerate() {
        if a != NONE {
            along[a] += per[k];
        }
    }
    (along, step)
}

/// How a compiled kernel of a fused scan over one tile computes (`crate::cpu::codegen::ScanTileFn`),
/// decided once for every backend that compiles one (LLVM, MLIR).
///
/// Each position runs its *phases* in order: the nodes between two reductions, one loop over
/// the tile's elements each, a reduction opening the phase after its operand's. A sliced
/// operand is read where it lies (table entry `k` for node `k`); a value is stored to its slot
/// only where a result, a reduction or another phase reads it (a sliced operand read in
/// another phase is read again where it lies). Then the per-step results are written (table
/// entry `nodes + k`) and each new state is copied to its state's slot.
#[derive(Clone, Debug)]
#[cfg_attr(not(any(feature = "llvm", feature = "mlir")), allow(dead_code))]
pub(crate) struct TileLayout {
    /// Whether node `k` reads a sliced operand.
    pub sliced: Vec<bool>,
    /// The element type of each node that reads an operand (f32 for the others).
    pub leaf_types: Vec<DType>,
    /// The element type of each per-step result.
    pub result_types: Vec<DType>,
    /// The phase of each node.
    pub phase: Vec<usize>,
    /// Whether each node's value is stored to its slot.
    pub stored: Vec<bool>,
    /// Per phase, the nodes its loop computes (and, in phase 0, the sliced operands stored).
    pub work: Vec<Vec<usize>>,
    /// Per table entry (nodes, then per-step results): whether it moves along the last axis
    /// of `I` (else its stride there is 0, known at compile time).
    pub moves: Vec<bool>,
    /// Per per-step result: whether it is written at every element (else once per row, a
    /// reduction over the last axis).
    pub whole: Vec<bool>,
    /// Per state: the node that reads it, where one does.
    pub state_slot: Vec<Option<usize>>,
    /// How many per-step results.
    pub ny: usize,
}

/// The operands of a node.
#[cfg_attr(not(any(feature = "llvm", feature = "mlir")), allow(dead_code))]
pub(crate) fn node_operands(n: &Node) -> Vec<usize> {
    match *n {
        Node::Leaf(..) | Node::Alias => vec![],
        Node::Unary(_, a) | Node::Reduce(_, a) => vec![a],
        Node::Binary(_, a, b) => vec![a, b],
        Node::Where(c, a, b) => vec![c, a, b],
    }
}

#[cfg_attr(not(any(feature = "llvm", feature = "mlir")), allow(dead_code))]
impl FusedScan {
    /// The layout of a compiled tile kernel of this plan of `s`, or why there is none (a scan
    /// without states: its iteration space is not a state's shape known here).
    pub(crate) fn tile_layout(&self, s: &Scan) -> Result<TileLayout, String> {
        let nodes = &self.nodes;
        let (ns, nx) = (s.state, s.sliced);
        let args = s.body.inputs();
        let first = args.first().filter(|_| ns > 0).ok_or("a scan without states")?;
        let rank = s.body.ty(first.1).rank();
        let ny = self.outputs.len().checked_sub(ns).ok_or("a scan with fewer outputs than states")?;
        let operand_type = |o: usize| args.get(o).map(|(_, v)| s.body.ty(*v).dtype).ok_or(format!("no operand {o}"));
        let sliced: Vec<bool> = nodes.iter().map(|n| matches!(n, Node::Leaf(Source::Operand(o), _) if (ns..ns + nx).contains(o))).collect();
        let leaf_types = nodes
            .iter()
            .map(|n| match n {
                Node::Leaf(Source::Operand(o), _) => operand_type(*o),
                _ => Ok(DType::F32),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let result_types = s.body.outputs[..ny].iter().map(|(_, v)| s.body.ty(*v).dtype).collect();
        let mut phase = vec![0usize; nodes.len()];
        for (i, n) in nodes.iter().enumerate() {
            let ops = node_operands(n);
            if let Some(&k) = ops.iter().find(|&&k| k >= i) {
                return Err(format!("scan body node {i} reads node {k}, not before it"));
            }
            let of = ops.iter().map(|&k| phase[k]).max().unwrap_or(0);
            phase[i] = if matches!(n, Node::Reduce(..)) { of + 1 } else { of };
        }
        let mut stored = vec![false; nodes.len()];
        for &o in &self.outputs {
            if let Some(s) = stored.get_mut(o) {
                *s = true;
            }
        }
        for (i, n) in nodes.iter().enumerate() {
            for k in node_operands(n) {
                if matches!(n, Node::Reduce(..)) || (phase[k] != phase[i] && !sliced[k]) {
                    stored[k] = true;
                }
            }
        }
        let computed = |i: usize| matches!(nodes[i], Node::Unary(..) | Node::Binary(..) | Node::Where(..));
        let last_phase = phase.iter().copied().max().unwrap_or(0);
        let work = (0..=last_phase)
            .map(|p| (0..nodes.len()).filter(|&i| phase[i] == p && (computed(i) || (p == 0 && sliced[i] && stored[i]))).collect())
            .collect();
        let along_last = |map: &[usize]| rank > 0 && map.contains(&(rank - 1));
        let moves = (0..nodes.len() + ny)
            .map(|k| match nodes.get(k) {
                Some(Node::Leaf(_, map)) => along_last(map),
                Some(_) => true,
                None => self.output_maps.get(k - nodes.len()).is_some_and(|m| along_last(m)),
            })
            .collect();
        let whole = (0..ny).map(|k| rank == 0 || self.output_maps.get(k).and_then(|m| m.last()) == Some(&(rank - 1))).collect();
        let state_slot = (0..ns).map(|k| nodes.iter().position(|n| matches!(n, Node::Leaf(Source::Operand(j), _) if *j == k))).collect();
        Ok(TileLayout { sliced, leaf_types, result_types, phase, stored, work, moves, whole, state_slot, ny })
    }
}

//! The IR as an e-graph: an egg `Language` whose operators are the IR's [`Op`]s, an
//! `Analysis` carrying each class's type (dtype and symbolic shape) and source span, the
//! conversion of a graph into an e-graph and back, and the cost model used for extraction.
//!
//! A node's type is inferred from its children with [`infer_type`]; ops whose type is an
//! attribute (`input`, `param`, `const`, `iota`, `cast`, `reshape`, `broadcast`) carry it in
//! the e-node. Merging two classes asserts (in debug builds) that their types agree; rules
//! check it before every union, so a rule can never change a value's type.

use egg::{Analysis, CostFunction, DidMerge, Id, Language};
use std::cmp::Ordering;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use tessera_ir::{infer_type, DType, Dim, Graph, Node, Op, Span, TensorType, ValueId};

/// An e-node: an IR op, its declared type where the op needs one, and child classes.
#[derive(Clone, Debug)]
pub struct TNode {
    /// The operation.
    pub op: Op,
    /// The declared result type (only for ops whose type is an attribute).
    pub ty: Option<TensorType>,
    /// Operand classes.
    pub children: Vec<Id>,
    /// Op, attributes and declared type as text: what hashing and comparison look at.
    key: String,
}

impl TNode {
    /// A node; `ty` is kept only for ops whose type is an attribute.
    pub fn new(op: Op, ty: Option<TensorType>, children: Vec<Id>) -> TNode {
        let ty = if needs_type(&op) { ty } else { None };
        let key = match &ty {
            Some(t) => format!("{op:?}:{t}"),
            None => format!("{op:?}"),
        };
        TNode { op, ty, children, key }
    }
}

/// Whether an op's result type is an attribute rather than inferred from its operands.
pub fn needs_type(op: &Op) -> bool {
    matches!(op, Op::Input(_) | Op::Param(..) | Op::Const(_) | Op::Iota { .. } | Op::Cast | Op::Reshape | Op::Broadcast | Op::Proj(_))
}

impl PartialEq for TNode {
    fn eq(&self, o: &Self) -> bool {
        self.key == o.key && self.children == o.children
    }
}
impl Eq for TNode {}
impl Hash for TNode {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.key.hash(h);
        self.children.hash(h);
    }
}
impl PartialOrd for TNode {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for TNode {
    fn cmp(&self, o: &Self) -> Ordering {
        (&self.key, &self.children).cmp(&(&o.key, &o.children))
    }
}

impl Language for TNode {
    type Discriminant = String;
    fn discriminant(&self) -> String {
        self.key.clone()
    }
    fn matches(&self, o: &Self) -> bool {
        self.key == o.key && self.children.len() == o.children.len()
    }
    fn children(&self) -> &[Id] {
        &self.children
    }
    fn children_mut(&mut self) -> &mut [Id] {
        &mut self.children
    }
}

impl std::fmt::Display for TNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.op.mnemonic())
    }
}

/// What the analysis knows of a class.
#[derive(Clone, Debug)]
pub struct Data {
    /// The type every node of the class has.
    pub ty: TensorType,
    /// Where the value came from (the first known span).
    pub span: Span,
    /// The value, when the class holds a constant.
    pub constant: Option<f64>,
}

/// The type-and-span analysis.
#[derive(Default)]
pub struct Meta;

/// The e-graph the optimizer works on.
pub type EG = egg::EGraph<TNode, Meta>;

impl Analysis<TNode> for Meta {
    type Data = Data;

    fn make(eg: &mut EG, n: &TNode, _id: Id) -> Data {
        let tys: Vec<&TensorType> = n.children.iter().map(|c| &eg[*c].data.ty).collect();
        // Rules type-check what they build (`rules::build`), so inference cannot fail here;
        // the fallback only keeps a compiler bug from becoming a panic.
        let ty = infer_type(&n.op, &tys, n.ty.as_ref()).unwrap_or_else(|_| TensorType::new(DType::F32, Vec::new()));
        let constant = match n.op {
            Op::Const(v) => Some(v),
            _ => None,
        };
        Data { ty, span: Span::UNKNOWN, constant }
    }

    fn merge(&mut self, a: &mut Data, b: Data) -> DidMerge {
        debug_assert_eq!(a.ty, b.ty, "merged classes of different types");
        let mut changed = false;
        if !a.span.is_known() && b.span.is_known() {
            a.span = b.span;
            changed = true;
        }
        if a.constant.is_none() && b.constant.is_some() {
            a.constant = b.constant;
            changed = true;
        }
        DidMerge(changed, true)
    }
}

/// Adds every node of `g` to a fresh e-graph. Returns it and the class of each value.
pub fn to_egraph(g: &Graph) -> (EG, Vec<Id>) {
    let mut eg = EG::new(Meta);
    let mut ids = Vec::with_capacity(g.len());
    for n in g.nodes() {
        let children = n.inputs.iter().map(|v| ids[v.index()]).collect();
        let id = eg.add(TNode::new(n.op.clone(), Some(n.ty.clone()), children));
        if !eg[id].data.span.is_known() {
            eg[id].data.span = n.span;
        }
        ids.push(id);
    }
    eg.rebuild();
    (eg, ids)
}

/// Builds a graph from the nodes `choose` picks for each class needed by `outputs` (every
/// class of `keep` is emitted too, in order, first: the inputs). Shared classes are emitted
/// once.
pub fn from_egraph(eg: &EG, original: &Graph, keep: &[Id], outputs: &[(String, Id)], choose: impl Fn(Id) -> TNode) -> Graph {
    let mut g = Graph::new(&original.name);
    g.files = original.files.clone();
    let mut done: HashMap<Id, ValueId> = HashMap::new();
    let emit = |root: Id, g: &mut Graph, done: &mut HashMap<Id, ValueId>| {
        // Iterative post-order: (class, children pushed?).
        let mut stack = vec![(eg.find(root), false)];
        while let Some((c, expanded)) = stack.pop() {
            if done.contains_key(&c) {
                continue;
            }
            let node = choose(c);
            if !expanded {
                stack.push((c, true));
                for &ch in node.children.iter().rev() {
                    if !done.contains_key(&eg.find(ch)) {
                        stack.push((eg.find(ch), false));
                    }
                }
                continue;
            }
            let inputs: Vec<ValueId> = node.children.iter().filter_map(|ch| done.get(&eg.find(*ch)).copied()).collect();
            let data = &eg[c].data;
            let v = g.push_unchecked(Node { op: node.op.clone(), inputs, ty: data.ty.clone(), span: data.span });
            done.insert(c, v);
        }
    };
    for &k in keep {
        emit(k, &mut g, &mut done);
    }
    for (name, id) in outputs {
        emit(*id, &mut g, &mut done);
        if let Some(v) = done.get(&eg.find(*id)) {
            g.outputs.push((name.clone(), *v));
        }
    }
    g
}

/// Sizes used to compare costs when a dimension is symbolic (`routed`: the rows one expert of
/// a route receives, as many as a prefill's tokens).
pub fn cost_dims() -> HashMap<String, i64> {
    [("batch", 1), ("seq", 512), ("dec_seq", 512), (tessera_ir::Route::ROWS, 512)].into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

fn numel(shape: &[Dim], dims: &HashMap<String, i64>) -> f64 {
    shape.iter().map(|d| d.eval(dims).unwrap_or(64).max(1) as f64).product()
}

/// The cost model: bytes moved (operands read, result written) plus FLOPs / 4. A fused op
/// reads and writes less than the ops it replaces and computes no more, so it always wins.
pub struct Cost<'a> {
    /// The e-graph (for operand types).
    pub eg: &'a EG,
    /// Sizes of symbolic dimensions.
    pub dims: HashMap<String, i64>,
}

impl Cost<'_> {
    /// The cost of one node, excluding its operands.
    pub fn own(&self, n: &TNode) -> f64 {
        let size = |id: &Id| numel(&self.eg[*id].data.ty.shape, &self.dims);
        let ins: f64 = n.children.iter().map(size).sum();
        let out = match &n.ty {
            Some(t) => numel(&t.shape, &self.dims),
            None => {
                let tys: Vec<&TensorType> = n.children.iter().map(|c| &self.eg[*c].data.ty).collect();
                infer_type(&n.op, &tys, None).map_or(0.0, |t| numel(&t.shape, &self.dims))
            }
        };
        let last = |id: &Id| self.eg[*id].data.ty.shape.last().and_then(|d| d.eval(&self.dims)).unwrap_or(64).max(1) as f64;
        // Weight preprocessing (a concat of parameters) happens once, at load time.
        if matches!(n.op, Op::Concat { .. } | Op::Transpose(_)) && n.children.iter().all(|c| self.is_weight(*c)) {
            return 1.0;
        }
        let (bytes, flops) = match &n.op {
            Op::Input(_) | Op::Param(..) | Op::Const(_) | Op::Iota { .. } => (0.0, 0.0),
            Op::Reshape => (0.0, 0.0),
            Op::MatMul => (4.0 * (ins + out), 2.0 * out * last(&n.children[0])),
            Op::Gemm { .. } => (4.0 * (ins + out), 2.0 * out * last(&n.children[0]) + 2.0 * out),
            Op::Ffn { gated, .. } => {
                let (d_in, h_in) = (last(&n.children[0]), last(&n.children[1]));
                let rows = size(&n.children[0]) / d_in;
                let d_out = out / rows.max(1.0);
                // A gated block's first product is [gate | up]: its hidden layer is half as wide.
                let hidden = if *gated { h_in / 2.0 } else { h_in };
                (4.0 * (ins + out), 2.0 * rows * (h_in * d_in + hidden * d_out) + 2.0 * rows * h_in)
            }
            Op::Attention(f) => {
                let q = &self.eg[n.children[0]].data.ty.shape;
                let t = self.eg[n.children[1]].data.ty.shape.iter().rev().nth(1).and_then(|d| d.eval(&self.dims)).unwrap_or(64) as f64;
                let e = q.last().and_then(|d| d.eval(&self.dims)).unwrap_or(64) as f64;
                let rows = numel(q, &self.dims) / e.max(1.0);
                // Leaves are read once per score in the worst case, but never written.
                (4.0 * (ins + out), rows * t * (4.0 * e + f.nodes.len() as f64 + 5.0))
            }
            Op::Softmax { .. } => (4.0 * (ins + out), 5.0 * out),
            Op::Norm { .. } => (4.0 * (ins + out), 6.0 * out),
            _ => (4.0 * (ins + out), out),
        };
        bytes + flops / 4.0 + 1.0
    }
}

impl Cost<'_> {
    /// Whether a class holds a parameter or a constant (a value known at load time), or a
    /// route body's slice of a stacked parameter.
    fn is_weight(&self, id: Id) -> bool {
        self.eg[id].nodes.iter().any(|n| match &n.op {
            Op::Param(..) | Op::Const(_) => true,
            Op::Input(name) => name.starts_with(tessera_ir::Route::STACKED),
            _ => false,
        })
    }
}

impl CostFunction<TNode> for Cost<'_> {
    type Cost = f64;
    fn cost<C: FnMut(Id) -> f64>(&mut self, n: &TNode, mut costs: C) -> f64 {
        let own = self.own(n);
        n.children.iter().fold(own, |acc, c| acc + costs(*c))
    }
}

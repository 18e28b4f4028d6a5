//! The graph: nodes in an arena, values named by `u32` ids, outputs by name.

use crate::{infer_type, Op, TensorType};
use std::fmt;

/// An SSA value: the result of the node with the same index. Displays as `%3`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub u32);

impl ValueId {
    /// The arena index.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for ValueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "%{}", self.0)
    }
}

/// Where a node came from: a file of the graph's file table, line and column (1-based).
/// `Span::UNKNOWN` marks nodes built programmatically.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Span {
    /// Index into [`Graph::files`], or `u32::MAX` when unknown.
    pub file: u32,
    /// 1-based line.
    pub line: u32,
    /// 1-based column.
    pub col: u32,
}

impl Span {
    /// No source location.
    pub const UNKNOWN: Span = Span { file: u32::MAX, line: 0, col: 0 };

    /// Whether the span names a location.
    pub fn is_known(self) -> bool {
        self.file != u32::MAX
    }

    /// `file:line:col`, the file named from `files` (a graph's file table); `None` when the
    /// span is unknown.
    pub fn display_in(self, files: &[String]) -> Option<String> {
        self.is_known().then(|| format!("{}:{}:{}", files.get(self.file as usize).map_or("?", String::as_str), self.line, self.col))
    }
}

/// One operation with its operands, result type and source span.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// The operation and its attributes.
    pub op: Op,
    /// Operands; each refers to an earlier node.
    pub inputs: Vec<ValueId>,
    /// The result type.
    pub ty: TensorType,
    /// Where in the source the node came from.
    pub span: Span,
}

/// A tensor program: nodes in topological order, a file table for spans, named outputs.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Graph {
    /// The model name.
    pub name: String,
    /// Source files that spans refer to.
    pub files: Vec<String>,
    nodes: Vec<Node>,
    /// Named results, in declaration order.
    pub outputs: Vec<(String, ValueId)>,
}

impl Graph {
    /// An empty graph.
    pub fn new(name: &str) -> Graph {
        Graph { name: name.to_string(), ..Graph::default() }
    }

    /// The nodes, in topological order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The node defining `v`. Panics on an id from another graph (a compiler bug).
    pub fn node(&self, v: ValueId) -> &Node {
        &self.nodes[v.index()]
    }

    /// The type of `v`.
    pub fn ty(&self, v: ValueId) -> &TensorType {
        &self.nodes[v.index()].ty
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Ids of all values, in order.
    pub fn values(&self) -> impl Iterator<Item = ValueId> {
        (0..self.nodes.len() as u32).map(ValueId)
    }

    /// The file table index of `path`, adding it if new.
    pub fn file_id(&mut self, path: &str) -> u32 {
        match self.files.iter().position(|f| f == path) {
            Some(i) => i as u32,
            None => {
                self.files.push(path.to_string());
                (self.files.len() - 1) as u32
            }
        }
    }

    /// Appends a node after checking its operands and inferring its type (see [`infer_type`];
    /// `declared` is needed by ops whose type is an attribute). Returns the new value.
    pub fn add(&mut self, op: Op, inputs: Vec<ValueId>, declared: Option<TensorType>, span: Span) -> Result<ValueId, crate::TypeError> {
        if let Some(bad) = inputs.iter().find(|v| v.index() >= self.nodes.len()) {
            return Err(crate::TypeError::Operands(format!("operand {bad} is not defined")));
        }
        let tys: Vec<&TensorType> = inputs.iter().map(|&v| self.ty(v)).collect();
        let ty = infer_type(&op, &tys, declared.as_ref())?;
        Ok(self.push_unchecked(Node { op, inputs, ty, span }))
    }

    /// Appends a node as is. The verifier will reject it later if it is ill-typed; used by the
    /// IR parser and by passes that copy checked nodes.
    pub fn push_unchecked(&mut self, node: Node) -> ValueId {
        self.nodes.push(node);
        ValueId((self.nodes.len() - 1) as u32)
    }

    /// Removes and returns the nodes from index `at` on (the builder of a region elaborates
    /// its body in place, then moves it out). Values from `at` on must not be used after.
    pub fn split_off(&mut self, at: usize) -> Vec<Node> {
        self.nodes.split_off(at.min(self.nodes.len()))
    }

    /// The value of the output called `name`.
    pub fn output(&self, name: &str) -> Option<ValueId> {
        self.outputs.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }

    /// The model's inputs: `(name, value)` in node order.
    pub fn inputs(&self) -> Vec<(&str, ValueId)> {
        self.named(|op| if let Op::Input(n) = op { Some(n) } else { None })
    }

    /// The model's parameters: `(name, value)` in node order.
    pub fn params(&self) -> Vec<(&str, ValueId)> {
        self.named(|op| if let Op::Param(n, _) = op { Some(n) } else { None })
    }

    fn named<'a>(&'a self, pick: impl Fn(&'a Op) -> Option<&'a String>) -> Vec<(&'a str, ValueId)> {
        self.values().filter_map(|v| pick(&self.node(v).op).map(|n| (n.as_str(), v))).collect()
    }

    /// For every value, how many times it is used as an operand or output.
    pub fn use_counts(&self) -> Vec<u32> {
        let mut uses = vec![0u32; self.nodes.len()];
        for n in &self.nodes {
            for v in &n.inputs {
                uses[v.index()] += 1;
            }
        }
        for (_, v) in &self.outputs {
            if let Some(u) = uses.get_mut(v.index()) {
                *u += 1;
            }
        }
        uses
    }

    /// Builds a new graph from the nodes for which `keep` holds (their operands must be kept
    /// too), with operands rewired through `replace` (`replace[v] = w` uses `w` for `v`).
    /// Returns the graph and the old→new id map.
    pub fn compact(&self, keep: &[bool], replace: &[ValueId]) -> (Graph, Vec<Option<ValueId>>) {
        let mut g = Graph { name: self.name.clone(), files: self.files.clone(), nodes: Vec::new(), outputs: Vec::new() };
        let mut map: Vec<Option<ValueId>> = vec![None; self.nodes.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            if !keep[i] {
                continue;
            }
            let inputs = n.inputs.iter().filter_map(|v| map[replace[v.index()].index()]).collect::<Vec<_>>();
            map[i] = Some(g.push_unchecked(Node { inputs, ..n.clone() }));
        }
        g.outputs = self.outputs.iter().filter_map(|(name, v)| Some((name.clone(), map[replace[v.index()].index()]?))).collect();
        (g, map)
    }
}

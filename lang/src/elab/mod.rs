//! Elaboration: AST → IR. Blocks are inlined, loops unrolled, hyper-parameters evaluated,
//! parameters named hierarchically (`layers.3.attn.wq`) and every shape inferred. Errors are
//! collected (an erroneous expression becomes [`Value::Poison`], which reports nothing more),
//! so one run shows every mistake it can.

mod builtins;
mod index;
mod rearrange;
mod route;
mod scan;
mod value;

pub use value::{Closure, Value};

use crate::ast::*;
use crate::diag::{codes, Diagnostic};
use crate::program::Program;
use std::collections::HashMap;
use std::rc::Rc;
use tessera_ir::{self as ir, BinaryOp, DType, Dim, Graph, Init, Op, ShapeDisplay, TensorType, UnaryOp, ValueId};

/// Most nodes one model may unroll to.
pub const MAX_NODES: usize = 2_000_000;
/// Deepest nesting of block calls.
pub const MAX_DEPTH: usize = 64;
/// Most loop iterations one model may unroll.
pub const MAX_UNROLLED: usize = 100_000;

/// The finite stand-in for −∞ that masks use, so that fully masked rows give no NaN.
pub const MASKED: f64 = -1e30;

struct Frame {
    env: HashMap<String, Value>,
    module: usize,
    is_model: bool,
    ret: Option<Value>,
}

/// An evaluated call argument.
pub(crate) struct ArgVal {
    name: Option<Ident>,
    value: Value,
    span: Span,
}

pub(crate) struct Elab<'p> {
    prog: &'p Program,
    graph: Graph,
    diags: Vec<Diagnostic>,
    files: HashMap<FileId, u32>,
    stack: Vec<*const Def>,
    prefix: Vec<String>,
    child_counts: HashMap<String, HashMap<String, u32>>,
    params: HashMap<String, Span>,
    /// Each parameter's value, for calls that share a scope (`as shared NAME`).
    param_values: HashMap<String, ValueId>,
    /// The next block call was written `as shared NAME`.
    next_call_shared: bool,
    /// How many `as shared` calls are being elaborated (their parameters may exist already).
    shared_depth: usize,
    inputs: Vec<(ValueId, Ident)>,
    aborted: bool,
    unrolled: usize,
    /// The label of a call to an expression-bodied block (`block swiglu(..) = glu(..)`), which
    /// is transparent: the block it calls takes the label.
    inherited_label: Option<Ident>,
    /// Spans of the block calls being elaborated, outermost first.
    call_sites: Vec<Span>,
}

/// A hyper-parameter override from the command line or an API call.
#[derive(Clone, Debug)]
pub enum Override {
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A string.
    Str(String),
    /// A list (`[4, 8]`, `[sliding, full]`): a tuple in the model.
    List(Vec<Override>),
    /// A value that cannot be one (an integer beyond 64 bits): the reason, reported when it
    /// is applied.
    Invalid(String),
}

impl Override {
    /// Parses `2`, `1e-5`, `true`, a list `[a, b, ...]` of these (items may be quoted:
    /// `["full", "sliding"]`), or anything else as a string.
    pub fn parse(s: &str) -> Override {
        let s = s.trim();
        if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            let items = split_list(inner);
            return Override::List(items.iter().filter(|i| !i.trim().is_empty()).map(|i| Override::parse(i)).collect());
        }
        if let Some(q) = s.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
            return Override::Str(q.to_string());
        }
        let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
        if let Ok(i) = s.parse() {
            Override::Int(i)
        } else if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            Override::Invalid(format!("the integer {s} is outside the 64-bit range"))
        } else if let Ok(f) = s.parse() {
            Override::Float(f)
        } else if s == "true" || s == "false" {
            Override::Bool(s == "true")
        } else {
            Override::Str(s.to_string())
        }
    }

    /// The value it gives a hyper-parameter.
    fn value(&self) -> Value {
        match self {
            Override::Int(i) => Value::int(*i),
            Override::Float(f) => Value::Float(*f),
            Override::Bool(b) => Value::Bool(*b),
            Override::Str(s) => Value::Str(s.clone()),
            Override::List(items) => Value::Tuple(items.iter().map(Override::value).collect()),
            Override::Invalid(_) => Value::Poison,
        }
    }

    /// Why the value cannot be one, for [`Override::Invalid`] (also inside a list).
    fn invalid(&self) -> Option<&str> {
        match self {
            Override::Invalid(why) => Some(why),
            Override::List(items) => items.iter().find_map(Override::invalid),
            _ => None,
        }
    }
}

/// Splits a list's text at the commas outside brackets and quotes.
fn split_list(s: &str) -> Vec<&str> {
    let (mut out, mut depth, mut quoted, mut start) = (Vec::new(), 0i32, false, 0);
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '[' if !quoted => depth += 1,
            ']' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// Elaborates model `model` of `prog` (the root file's only model when `None`) with the given
/// hyper-parameter overrides. Returns the graph (if no error) and all diagnostics.
pub fn elaborate(prog: &Program, model: Option<&str>, overrides: &[(String, Override)]) -> (Option<Graph>, Vec<Diagnostic>) {
    let models: Vec<&Rc<Def>> = prog.root_defs().iter().filter(|d| d.kind == DefKind::Model).collect();
    let def = match model {
        Some(name) => models.iter().find(|d| d.name.name == name).copied(),
        None if models.len() == 1 => Some(models[0]),
        None => None,
    };
    let Some(def) = def else {
        let names: Vec<&str> = models.iter().map(|d| d.name.name.as_str()).collect();
        let file = prog.modules.first().map_or(0, |m| m.file);
        let msg = match model {
            Some(m) => format!("no model named `{m}`"),
            None if names.is_empty() => "the file defines no model".to_string(),
            None => "the file defines several models; choose one with --model".to_string(),
        };
        let d = Diagnostic::error(codes::MODEL, msg, Span { file, start: 0, end: 0 }, "in this file").with_help(if names.is_empty() {
            "a model is written `model NAME(hyper = value) { ... }`".to_string()
        } else {
            format!("models here: {}", names.join(", "))
        });
        return (None, vec![d]);
    };
    let mut e = Elab {
        prog,
        graph: Graph::new(&def.name.name),
        diags: Vec::new(),
        files: HashMap::new(),
        stack: vec![Rc::as_ptr(def)],
        prefix: Vec::new(),
        child_counts: HashMap::new(),
        params: HashMap::new(),
        param_values: HashMap::new(),
        next_call_shared: false,
        shared_depth: 0,
        inputs: Vec::new(),
        aborted: false,
        unrolled: 0,
        inherited_label: None,
        call_sites: Vec::new(),
    };
    e.model(def, overrides);
    let ok = !e.diags.iter().any(Diagnostic::is_error);
    let mut diags = e.diags;
    dedup(&mut diags);
    (ok.then_some(e.graph), diags)
}

/// Removes repeated diagnostics (same code at the same place).
pub(crate) fn dedup(diags: &mut Vec<Diagnostic>) {
    let mut seen = std::collections::HashSet::new();
    diags.retain(|d| seen.insert((d.code, d.labels.first().map(|l| (l.span.file, l.span.start, l.span.end)), d.message.clone())));
}

fn op_name(op: BinOp) -> &'static str {
    match op {
        BinOp::Add => "+",
        BinOp::Sub => "-",
        BinOp::Mul => "*",
        BinOp::Div => "/",
        BinOp::FloorDiv => "//",
        BinOp::Rem => "%",
        BinOp::Pow => "**",
        BinOp::MatMul => "@",
        BinOp::Eq => "==",
        BinOp::Ne => "!=",
        BinOp::Lt => "<",
        BinOp::Le => "<=",
        BinOp::Gt => ">",
        BinOp::Ge => ">=",
        BinOp::And => "and",
        BinOp::Or => "or",
    }
}

/// Edit distance, for "did you mean" hints.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// The closest of `candidates` to `name`, if close enough to be a likely typo.
pub(crate) fn suggest<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> Option<String> {
    candidates
        .filter(|c| *c != name)
        .map(|c| (distance(name, c), c))
        .filter(|(d, c)| *d <= 2.max(name.len() / 3) && *d < c.len().max(name.len()))
        .min()
        .map(|(_, c)| format!("did you mean `{c}`?"))
}

impl<'p> Elab<'p> {
    fn err(&mut self, mut d: Diagnostic) -> Value {
        // An error inside an imported block also points at the call in the root file.
        let root = self.prog.modules.first().map_or(0, |m| m.file);
        if d.labels.first().is_some_and(|l| l.span.file != root) {
            if let Some(site) = self.call_sites.iter().rev().find(|s| s.file == root) {
                d = d.with_label(*site, "in this call");
            }
        }
        self.diags.push(d);
        Value::Poison
    }

    fn ir_span(&mut self, s: Span) -> ir::Span {
        let file = match self.files.get(&s.file) {
            Some(&f) => f,
            None => {
                let f = self.graph.file_id(self.prog.sources.path(s.file));
                self.files.insert(s.file, f);
                f
            }
        };
        let (line, col) = self.prog.sources.line_col(s);
        ir::Span { file, line, col }
    }

    /// Adds a node; a typing failure becomes a diagnostic at `span`.
    fn add(&mut self, op: Op, inputs: Vec<ValueId>, declared: Option<TensorType>, span: Span) -> Value {
        if self.aborted {
            return Value::Poison;
        }
        if self.graph.len() >= MAX_NODES {
            self.aborted = true;
            return self.err(
                Diagnostic::error(
                    codes::LIMIT,
                    format!("the model unrolls to more than {MAX_NODES} operations"),
                    span,
                    "while elaborating this",
                )
                .with_help("reduce `layers` or other sizes with -D, or check for an unintended loop"),
            );
        }
        let ispan = self.ir_span(span);
        match self.graph.add(op, inputs, declared, ispan) {
            Ok(v) => Value::Tensor(v),
            Err(e) => {
                let code = if matches!(e, ir::TypeError::DType(_)) { codes::DTYPE } else { codes::SHAPE };
                self.err(Diagnostic::error(code, format!("invalid operation: {e}"), span, "in this expression"))
            }
        }
    }

    fn ty(&self, v: ValueId) -> &TensorType {
        self.graph.ty(v)
    }

    fn constant(&mut self, x: f64, dtype: DType, span: Span) -> Value {
        self.add(Op::Const(x), vec![], Some(TensorType::scalar(dtype)), span)
    }

    fn unary(&mut self, u: UnaryOp, x: ValueId, span: Span) -> Value {
        self.add(Op::Unary(u), vec![x], None, span)
    }

    fn cast(&mut self, x: ValueId, to: DType, span: Span) -> Value {
        if self.ty(x).dtype == to {
            return Value::Tensor(x);
        }
        let shape = self.ty(x).shape.clone();
        self.add(Op::Cast, vec![x], Some(TensorType::new(to, shape)), span)
    }

    /// A symbolic size as a scalar tensor of `dtype`, known when the program runs: the last
    /// of the indices `0..d`, plus one (an iota, a one-element slice; no new op).
    pub(super) fn size_tensor(&mut self, d: &Dim, dtype: DType, span: Span) -> Option<ValueId> {
        // A size whose leading term is negative (`-seq`, `1 - seq`): the negation of its
        // negation, whose iota has a size (a negative one is an error when bound).
        if d.to_string().starts_with('-') {
            let pos = self.size_tensor(&d.scale(-1), dtype, span)?;
            let Value::Tensor(n) = self.unary(UnaryOp::Neg, pos, span) else { return None };
            return Some(n);
        }
        let Value::Tensor(io) = self.add(Op::Iota { axis: 0 }, vec![], Some(TensorType::new(DType::I64, vec![d.clone()])), span) else {
            return None;
        };
        let last = d.sub(&Dim::known(1));
        let Value::Tensor(one) = self.add(Op::Slice { axis: 0, start: last, end: d.clone(), step: 1 }, vec![io], None, span) else {
            return None;
        };
        let Value::Tensor(scalar) = self.reshape(one, Vec::new(), span) else { return None };
        let Value::Tensor(c1) = self.constant(1.0, DType::I64, span) else { return None };
        let Value::Tensor(n) = self.add(Op::Binary(BinaryOp::Add), vec![scalar, c1], None, span) else { return None };
        match self.cast(n, dtype, span) {
            Value::Tensor(t) => Some(t),
            _ => None,
        }
    }

    fn reshape(&mut self, x: ValueId, shape: Vec<Dim>, span: Span) -> Value {
        if self.ty(x).shape == shape {
            return Value::Tensor(x);
        }
        let dtype = self.ty(x).dtype;
        self.add(Op::Reshape, vec![x], Some(TensorType::new(dtype, shape)), span)
    }

    // ---------------------------------------------------------------- models and statements

    fn model(&mut self, def: &Rc<Def>, overrides: &[(String, Override)]) {
        let module = self.prog.module_of(def.span.file).unwrap_or(0);
        let mut frame = Frame { env: HashMap::new(), module, is_model: true, ret: None };
        let hparams: Vec<&HParam> = def.params.iter().flatten().collect();
        for (key, _) in overrides {
            if !hparams.iter().any(|h| h.name.name == *key) {
                let names: Vec<&str> = hparams.iter().map(|h| h.name.name.as_str()).collect();
                let mut d = Diagnostic::error(
                    codes::MODEL,
                    format!("model `{}` has no hyper-parameter `{key}`", def.name.name),
                    def.name.span,
                    "this model",
                )
                .with_help(format!("its hyper-parameters are: {}", names.join(", ")));
                if let Some(s) = suggest(key, names.iter().copied()) {
                    d = d.with_help(format!("{s} (hyper-parameters: {})", names.join(", ")));
                }
                self.diags.push(d);
            }
        }
        for h in hparams {
            let v = match overrides.iter().rev().find(|(k, _)| *k == h.name.name) {
                Some((_, o)) if o.invalid().is_some() => {
                    let why = o.invalid().unwrap_or_default().to_string();
                    self.err(Diagnostic::error(codes::VALUE, format!("-D {}: {why}", h.name.name), h.name.span, "this hyper-parameter"))
                }
                Some((_, o)) => o.value(),
                None => match &h.default {
                    Some(e) => self.eval(e, &mut frame),
                    None => self.err(
                        Diagnostic::error(
                            codes::BAD_ARGS,
                            format!("hyper-parameter `{}` has no default", h.name.name),
                            h.name.span,
                            "needs a value",
                        )
                        .with_help(format!("give it a default, or set it with -D {}=VALUE", h.name.name)),
                    ),
                },
            };
            let v = self.check_type(h, v, h.name.span, &mut frame);
            frame.env.insert(h.name.name.clone(), v);
        }
        if let Body::Block(stmts) = &def.body {
            self.exec(stmts, &mut frame);
        }
        if self.graph.outputs.is_empty() && !self.diags.iter().any(Diagnostic::is_error) {
            self.diags.push(
                Diagnostic::error(codes::MISPLACED, format!("model `{}` declares no output", def.name.name), def.name.span, "this model")
                    .with_help("add `output NAME = expr`"),
            );
        }
        if self.diags.iter().any(Diagnostic::is_error) {
            return;
        }
        let uses = self.graph.use_counts();
        for (v, name) in std::mem::take(&mut self.inputs) {
            if uses.get(v.index()) == Some(&0) {
                self.diags.push(
                    Diagnostic::warning(codes::UNUSED_INPUT, format!("input `{}` is never used", name.name), name.span, "declared here")
                        .with_help("remove it, or use it in the computation of an output"),
                );
            }
        }
    }

    fn exec(&mut self, stmts: &[Stmt], frame: &mut Frame) {
        for s in stmts {
            if self.aborted || frame.ret.is_some() {
                return;
            }
            self.stmt(s, frame);
        }
    }

    fn misplaced(&mut self, what: &str, span: Span) {
        self.diags.push(
            Diagnostic::error(codes::MISPLACED, format!("`{what}` is only allowed in a model"), span, "inside a block")
                .with_help("pass the tensor to the block as an argument, or return it from the block"),
        );
    }

    fn stmt(&mut self, s: &Stmt, frame: &mut Frame) {
        match s {
            Stmt::Input { name, ty } => {
                if !frame.is_model {
                    return self.misplaced("input", name.span);
                }
                let mut shape = Vec::new();
                for d in &ty.dims {
                    match d {
                        DimPat::Expr(Expr { kind: ExprKind::Name(n), .. }) if !frame.env.contains_key(n) => {
                            frame.env.insert(n.clone(), Value::Int(Dim::sym(n)));
                            shape.push(Dim::sym(n));
                        }
                        DimPat::Expr(e) => match self.eval_dim(e, frame) {
                            Some(d) => shape.push(d),
                            None => return,
                        },
                        DimPat::Ellipsis(sp) => {
                            self.diags.push(Diagnostic::error(
                                codes::VALUE,
                                "an input needs a full shape",
                                *sp,
                                "`..` is not allowed here",
                            ));
                            return;
                        }
                    }
                }
                if self.graph.inputs().iter().any(|(n, _)| *n == name.name) {
                    self.diags.push(Diagnostic::error(
                        codes::DUPLICATE_NAME,
                        format!("input `{}` is declared twice", name.name),
                        name.span,
                        "declared again here",
                    ));
                    return;
                }
                let t = TensorType::new(ty.dtype.unwrap_or(DType::F32), shape);
                let v = self.add(Op::Input(name.name.clone()), vec![], Some(t), name.span);
                if let Value::Tensor(id) = v {
                    self.inputs.push((id, name.clone()));
                }
                frame.env.insert(name.name.clone(), v);
            }
            Stmt::Param { name, ty, init } => {
                let v = self.declare_param(name, ty, init.as_ref(), frame);
                frame.env.insert(name.name.clone(), v);
            }
            Stmt::Output { name, value } => {
                if !frame.is_model {
                    return self.misplaced("output", name.span);
                }
                let v = self.eval(value, frame);
                match v {
                    Value::Tensor(t) => {
                        if self.graph.output(&name.name).is_some() {
                            self.diags.push(Diagnostic::error(
                                codes::DUPLICATE_NAME,
                                format!("output `{}` is declared twice", name.name),
                                name.span,
                                "declared again here",
                            ));
                        } else {
                            self.graph.outputs.push((name.name.clone(), t));
                        }
                    }
                    Value::Poison => {}
                    other => {
                        self.err(Diagnostic::error(
                            codes::TYPE,
                            format!("output `{}` must be a tensor, not {}", name.name, other.kind()),
                            value.span,
                            "this value",
                        ));
                    }
                }
            }
            Stmt::Assign { names, value } => {
                let v = self.eval(value, frame);
                if names.len() == 1 {
                    frame.env.insert(names[0].name.clone(), v);
                    return;
                }
                match v {
                    Value::Tuple(items) if items.len() == names.len() => {
                        for (n, item) in names.iter().zip(items) {
                            frame.env.insert(n.name.clone(), item);
                        }
                    }
                    other => {
                        if !matches!(other, Value::Poison) {
                            let got = if let Value::Tuple(items) = &other {
                                format!("a tuple of {}", items.len())
                            } else {
                                other.kind().to_string()
                            };
                            self.err(Diagnostic::error(
                                codes::TYPE,
                                format!("cannot unpack {got} into {} names", names.len()),
                                value.span,
                                "this value",
                            ));
                        }
                        for n in names {
                            frame.env.insert(n.name.clone(), Value::Poison);
                        }
                    }
                }
            }
            Stmt::For { var, lo, hi, body, .. } => {
                let (Some(l), Some(h)) = (self.loop_bound(lo, frame), self.loop_bound(hi, frame)) else {
                    return;
                };
                if h < l {
                    self.err(
                        Diagnostic::error(codes::VALUE, format!("this loop runs from {l} to {h}: a negative count"), hi.span, "this bound")
                            .with_help("a count such as `layers` must be 0 or more"),
                    );
                    return;
                }
                let count = usize::try_from(i128::from(h) - i128::from(l)).unwrap_or(usize::MAX);
                self.unrolled = self.unrolled.saturating_add(count);
                if self.unrolled > MAX_UNROLLED {
                    self.aborted = true;
                    self.diags.push(
                        Diagnostic::error(
                            codes::LIMIT,
                            format!("loops unroll to more than {MAX_UNROLLED} iterations"),
                            hi.span,
                            "this bound",
                        )
                        .with_help("loops are unrolled at compile time; use a smaller bound"),
                    );
                    return;
                }
                let scope = match &hi.kind {
                    ExprKind::Name(n) => n.clone(),
                    _ => var.name.clone(),
                };
                let mut fewest = u128::MAX; // the fewest nodes an iteration has added so far
                for i in l..h {
                    let before = self.graph.len();
                    frame.env.insert(var.name.clone(), Value::int(i));
                    self.prefix.push(format!("{scope}.{i}"));
                    self.exec(body, frame);
                    self.prefix.pop();
                    if self.aborted || frame.ret.is_some() {
                        break;
                    }
                    // Refuse early, from the first iteration's size, what would only fail
                    // at the node limit after a long elaboration (`-D layers=100000`).
                    fewest = fewest.min((self.graph.len() - before) as u128);
                    let left = u128::try_from(i128::from(h) - i128::from(i) - 1).unwrap_or(0);
                    let (per, estimate) = (fewest, self.graph.len() as u128 + fewest * left);
                    if estimate > MAX_NODES as u128 {
                        self.aborted = true;
                        self.diags.push(
                            Diagnostic::error(
                                codes::LIMIT,
                                format!("this loop would unroll to about {estimate} operations ({per} per iteration, {} iterations): more than {MAX_NODES}", h - l),
                                hi.span,
                                "this bound",
                            )
                            .with_help("loops are unrolled at compile time; use a smaller bound"),
                        );
                        break;
                    }
                }
            }
            Stmt::If { cond, then, els } => match self.eval(cond, frame) {
                Value::Bool(true) => self.exec(then, frame),
                Value::Bool(false) => self.exec(els, frame),
                Value::Poison => {}
                Value::Tensor(_) => {
                    self.err(
                        Diagnostic::error(
                            codes::NON_CONSTANT,
                            "an `if` condition must be known at compile time",
                            cond.span,
                            "this is a tensor",
                        )
                        .with_help("use `where(cond, a, b)` to choose between tensors elementwise"),
                    );
                }
                other => {
                    self.err(Diagnostic::error(
                        codes::TYPE,
                        format!("an `if` condition must be a bool, not {}", other.kind()),
                        cond.span,
                        "this value",
                    ));
                }
            },
            Stmt::Return { values, .. } => {
                let mut vs: Vec<Value> = values.iter().map(|e| self.eval(e, frame)).collect();
                frame.ret = Some(if vs.len() == 1 { vs.remove(0) } else { Value::Tuple(vs) });
            }
            Stmt::Expr(e) => {
                // A statement that failed (a `require` not met) ends its block: what follows
                // assumed it and would only add follow-on errors.
                if matches!(self.eval(e, frame), Value::Poison) {
                    frame.ret = Some(Value::Poison);
                }
            }
            Stmt::Map { span, .. } => {
                self.err(
                    Diagnostic::error(codes::MISPLACED, "`\"pattern\" <- tensor` is only allowed in a `checkpoint`", *span, "here")
                        .with_help("checkpoint maps are written `checkpoint MODEL { \"param.name\" <- \"checkpoint.name\" }`"),
                );
            }
        }
    }

    fn loop_bound(&mut self, e: &Expr, frame: &mut Frame) -> Option<i64> {
        match self.eval(e, frame) {
            Value::Int(d) => match d.as_known() {
                Some(n) => Some(n),
                None => {
                    self.err(
                        Diagnostic::error(
                            codes::NON_CONSTANT,
                            format!("loop bound `{d}` is not known at compile time"),
                            e.span,
                            "symbolic size",
                        )
                        .with_help("loops are unrolled: bound them by hyper-parameters, not by input sizes"),
                    );
                    None
                }
            },
            Value::Poison => None,
            Value::Tensor(_) => {
                self.err(
                    Diagnostic::error(codes::NON_CONSTANT, "loop bound must be known at compile time", e.span, "this is a tensor")
                        .with_help("loops are unrolled: bound them by hyper-parameters"),
                );
                None
            }
            other => {
                self.err(Diagnostic::error(codes::TYPE, format!("loop bound must be an int, not {}", other.kind()), e.span, "this value"));
                None
            }
        }
    }

    fn eval_dim(&mut self, e: &Expr, frame: &mut Frame) -> Option<Dim> {
        match self.eval(e, frame) {
            Value::Int(d) => {
                if let Some(n) = d.as_known() {
                    if n < 0 {
                        self.err(Diagnostic::error(codes::VALUE, format!("a size cannot be negative ({n})"), e.span, "this size"));
                        return None;
                    }
                }
                Some(d)
            }
            Value::Poison => None,
            other => {
                self.err(Diagnostic::error(codes::TYPE, format!("a size must be an int, not {}", other.kind()), e.span, "this value"));
                None
            }
        }
    }

    fn declare_param(&mut self, name: &Ident, ty: &TensorAnn, init: Option<&Expr>, frame: &mut Frame) -> Value {
        let mut shape = Vec::new();
        for d in &ty.dims {
            match d {
                DimPat::Expr(e) => match self.eval_dim(e, frame) {
                    Some(d) => shape.push(d),
                    None => return Value::Poison,
                },
                DimPat::Ellipsis(sp) => {
                    return self.err(Diagnostic::error(codes::VALUE, "a parameter needs a full shape", *sp, "`..` is not allowed here"))
                }
            }
        }
        let init = match init {
            None => Init::Normal(0.02),
            Some(Expr { kind: ExprKind::Name(n), .. }) if n == "ones" => Init::Fill(1.0),
            Some(Expr { kind: ExprKind::Name(n), .. }) if n == "zeros" => Init::Fill(0.0),
            Some(e) => match (&e.kind, self.eval(e, frame)) {
                (_, Value::Tuple(t)) if matches!(t.as_slice(), [Value::Str(k), _] if k == "normal" || k == "fill") => {
                    let v = match &t[1] {
                        Value::Float(f) => *f,
                        Value::Int(d) => d.as_known().unwrap_or(0) as f64,
                        _ => 0.0,
                    };
                    if matches!(&t[0], Value::Str(k) if k == "normal") {
                        Init::Normal(v)
                    } else {
                        Init::Fill(v)
                    }
                }
                (_, Value::Poison) => return Value::Poison,
                _ => {
                    return self.err(
                        Diagnostic::error(codes::VALUE, "unknown parameter initialiser", e.span, "here")
                            .with_help("write `ones`, `zeros`, `normal(STD)` or `fill(VALUE)`"),
                    )
                }
            },
        };
        let mut path = self.prefix.clone();
        path.push(name.name.clone());
        let full = path.join(".");
        let t = TensorType::new(ty.dtype.unwrap_or(DType::F32), shape);
        if let (true, Some(&v)) = (self.shared_depth > 0, self.param_values.get(&full)) {
            if *self.ty(v) == t {
                return Value::Tensor(v);
            }
            let first = self.ty(v).clone();
            return self.err(Diagnostic::error(
                codes::SHAPE,
                format!("shared parameter `{full}` is {t} here but {first} where it was first declared"),
                name.span,
                "declared again here",
            ));
        }
        if let Some(prev) = self.params.get(&full).copied() {
            return self.err(
                Diagnostic::error(
                    codes::DUPLICATE_PARAM,
                    format!("parameter `{full}` is declared twice"),
                    name.span,
                    "declared again here",
                )
                .with_label(prev, "first declared here")
                .with_help("give each block call its own scope with `block(...) as NAME`, share one with `as shared NAME`, or rename the parameter"),
            );
        }
        self.params.insert(full.clone(), name.span);
        let v = self.add(Op::Param(full.clone(), init), vec![], Some(t), name.span);
        if let Value::Tensor(id) = v {
            self.param_values.insert(full, id);
        }
        v
    }

    // ---------------------------------------------------------------- expressions

    fn lookup(&self, name: &str, frame: &Frame) -> Option<Value> {
        if let Some(v) = frame.env.get(name) {
            return Some(v.clone());
        }
        if let Some(def) = self.prog.def(frame.module, name) {
            return Some(Value::Func(Rc::new(Closure { def: def.clone(), module: frame.module, bound: HashMap::new(), applied: 0 })));
        }
        if let Some(&m) = self.prog.imports.get(frame.module).and_then(|i| i.get(name)) {
            return Some(Value::Module(m));
        }
        match name {
            "inf" => Some(Value::Float(f64::INFINITY)),
            "pi" => Some(Value::Float(std::f64::consts::PI)),
            _ => builtins::lookup(name).map(Value::Builtin),
        }
    }

    fn unknown_name(&mut self, name: &str, span: Span, frame: &Frame) -> Value {
        let mut candidates: Vec<String> = frame.env.keys().cloned().collect();
        if let Some(m) = self.prog.modules.get(frame.module) {
            candidates.extend(m.defs.iter().map(|d| d.name.name.clone()));
        }
        candidates.extend(builtins::NAMES.iter().map(|s| s.to_string()));
        let mut d = Diagnostic::error(codes::UNKNOWN_NAME, format!("unknown name `{name}`"), span, "not defined");
        if let Some(s) = suggest(name, candidates.iter().map(String::as_str)) {
            d = d.with_help(s);
        }
        self.err(d)
    }

    fn eval(&mut self, e: &Expr, frame: &mut Frame) -> Value {
        if self.aborted {
            return Value::Poison;
        }
        match &e.kind {
            ExprKind::Int(n) => Value::int(*n),
            ExprKind::Float(f) => Value::Float(*f),
            ExprKind::Str(s) => Value::Str(s.clone()),
            ExprKind::Bool(b) => Value::Bool(*b),
            ExprKind::None => Value::None,
            ExprKind::Name(n) => match self.lookup(n, frame) {
                Some(v) => v,
                None => self.unknown_name(n, e.span, frame),
            },
            ExprKind::Tuple(items) | ExprKind::List(items) => Value::Tuple(items.iter().map(|i| self.eval(i, frame)).collect()),
            ExprKind::Unary(op, x) => {
                let v = self.eval(x, frame);
                self.unary_op(*op, v, e.span)
            }
            ExprKind::Binary(op, l, r) => {
                let lv = self.eval(l, frame);
                let rv = self.eval(r, frame);
                self.binary(*op, lv, rv, l.span, r.span, e.span)
            }
            ExprKind::Call { callee, args, label, shared } => {
                let f = self.eval(callee, frame);
                let args: Vec<ArgVal> =
                    args.iter().map(|a| ArgVal { name: a.name.clone(), value: self.eval(&a.value, frame), span: a.value.span }).collect();
                self.next_call_shared = *shared;
                self.call(f, args, e.span, callee.span, label.as_ref())
            }
            ExprKind::Index { base, items } => {
                let b = self.eval(base, frame);
                self.index(b, base.span, items, e.span, frame)
            }
            ExprKind::Member { base, name } => {
                let b = self.eval(base, frame);
                self.member(b, name, e.span)
            }
            ExprKind::Param { name, ty } => {
                let v = self.declare_param(name, ty, None, frame);
                frame.env.insert(name.name.clone(), v.clone());
                v
            }
            ExprKind::Scan { args, params, body } => self.scan(args, params, body.as_deref(), e.span, frame),
            ExprKind::Route { args, params, body } => self.route(args, params, body.as_deref(), e.span, frame),
        }
    }

    fn member(&mut self, b: Value, name: &Ident, span: Span) -> Value {
        match b {
            Value::Module(m) => match self.prog.def(m, &name.name) {
                Some(def) => Value::Func(Rc::new(Closure { def: def.clone(), module: m, bound: HashMap::new(), applied: 0 })),
                None => {
                    let path = self.prog.modules.get(m).map_or("?", |md| self.prog.sources.path(md.file)).to_string();
                    let mut d = Diagnostic::error(
                        codes::UNKNOWN_NAME,
                        format!("module `{path}` has no definition `{}`", name.name),
                        name.span,
                        "not defined there",
                    );
                    let names: Vec<&str> =
                        self.prog.modules.get(m).map(|md| md.defs.iter().map(|d| d.name.name.as_str()).collect()).unwrap_or_default();
                    if let Some(s) = suggest(&name.name, names.into_iter()) {
                        d = d.with_help(s);
                    }
                    self.err(d)
                }
            },
            Value::Tensor(t) => match name.name.as_str() {
                "T" => {
                    let r = self.ty(t).rank();
                    if r < 2 {
                        return self.err(Diagnostic::error(
                            codes::SHAPE,
                            format!("`.T` needs rank ≥ 2, got {}", self.ty(t)),
                            span,
                            "this tensor",
                        ));
                    }
                    let mut perm: Vec<usize> = (0..r).collect();
                    perm.swap(r - 2, r - 1);
                    self.add(Op::Transpose(perm), vec![t], None, span)
                }
                "shape" => Value::Tuple(self.ty(t).shape.iter().cloned().map(Value::Int).collect()),
                "ndim" => Value::int(self.ty(t).rank() as i64),
                _ => self.err(
                    Diagnostic::error(codes::UNKNOWN_NAME, format!("tensors have no member `{}`", name.name), name.span, "unknown member")
                        .with_help("tensors have `.T`, `.shape` and `.ndim`"),
                ),
            },
            Value::Poison => Value::Poison,
            other => self.err(Diagnostic::error(codes::TYPE, format!("{} has no members", other.kind()), span, "here")),
        }
    }

    fn unary_op(&mut self, op: UnOp, v: Value, span: Span) -> Value {
        match (op, v) {
            (_, Value::Poison) => Value::Poison,
            (UnOp::Neg, Value::Int(d)) => match Dim::known(0).checked_sub(&d) {
                Some(n) => Value::Int(n),
                None => {
                    self.err(Diagnostic::error(codes::VALUE, format!("integer overflow: `-({d})` leaves the 64-bit range"), span, "here"))
                }
            },
            (UnOp::Neg, Value::Float(f)) => Value::Float(-f),
            (UnOp::Not, Value::Bool(b)) => Value::Bool(!b),
            (UnOp::Neg, Value::Tensor(t)) if self.ty(t).dtype != DType::Bool => self.unary(UnaryOp::Neg, t, span),
            (UnOp::Not, Value::Tensor(t)) if self.ty(t).dtype == DType::Bool => self.unary(UnaryOp::Not, t, span),
            (op, v) => {
                let what = if let Value::Tensor(t) = &v { format!("a {} tensor", self.ty(*t).dtype) } else { v.kind().to_string() };
                let sym = if op == UnOp::Neg { "-" } else { "not" };
                self.err(Diagnostic::error(codes::TYPE, format!("`{sym}` is not defined on {what}"), span, "here"))
            }
        }
    }

    /// Turns a compile-time number into a scalar constant of `dtype`.
    fn lift(&mut self, v: &Value, dtype: DType, span: Span) -> Option<ValueId> {
        let x = match v {
            Value::Int(d) => match d.as_known() {
                Some(n) => n as f64,
                // A symbolic size is a value when the program runs.
                None => return self.size_tensor(&d.clone(), dtype, span),
            },
            Value::Float(f) => *f,
            Value::Bool(b) => f64::from(u8::from(*b)),
            _ => return None,
        };
        match self.constant(x, dtype, span) {
            Value::Tensor(t) => Some(t),
            _ => None,
        }
    }

    fn binary(&mut self, op: BinOp, l: Value, r: Value, ls: Span, rs: Span, span: Span) -> Value {
        use Value::{Bool, Float, Int, Poison, Str, Tensor};
        match (&l, &r) {
            (Poison, _) | (_, Poison) => return Poison,
            (Value::None, _) | (_, Value::None) if matches!(op, BinOp::Eq | BinOp::Ne) => {
                let same = matches!((&l, &r), (Value::None, Value::None));
                return Bool(same == (op == BinOp::Eq));
            }
            (Tensor(_), _) | (_, Tensor(_)) => return self.tensor_binary(op, l, r, ls, rs, span),
            _ => {}
        }
        let bad = |s: &mut Self| {
            s.err(Diagnostic::error(
                codes::TYPE,
                format!("`{}` is not defined on {} and {}", op_name(op), l.kind(), r.kind()),
                span,
                "here",
            ))
        };
        match (&l, &r) {
            (Int(a), Int(b)) => {
                let (ka, kb) = (a.as_known(), b.as_known());
                match op {
                    BinOp::Add | BinOp::Sub | BinOp::Mul => {
                        let r = match op {
                            BinOp::Add => a.checked_add(b),
                            BinOp::Sub => a.checked_sub(b),
                            _ => a.checked_mul(b),
                        };
                        match r {
                            Some(d) => Int(d),
                            None => self.err(
                                Diagnostic::error(
                                    codes::VALUE,
                                    format!("integer overflow: `{a} {} {b}` leaves the 64-bit range", op_name(op)),
                                    span,
                                    "here",
                                )
                                .with_help("sizes and integers are 64-bit signed"),
                            ),
                        }
                    }
                    BinOp::FloorDiv | BinOp::Rem => match (ka, kb) {
                        (_, Some(0)) => self.err(Diagnostic::error(codes::VALUE, "division by zero", rs, "this is 0")),
                        // Python's floor division and remainder, exactly (i128: no overflow).
                        (Some(x), Some(y)) => {
                            let (x, y) = (i128::from(x), i128::from(y));
                            let q = x.div_euclid(y) - i128::from(y < 0 && x.rem_euclid(y) != 0);
                            let r = if op == BinOp::FloorDiv { q } else { x - y * q };
                            match i64::try_from(r) {
                                Ok(r) => Value::int(r),
                                Err(_) => self.err(Diagnostic::error(
                                    codes::VALUE,
                                    "integer overflow: the result leaves the 64-bit range",
                                    span,
                                    "here",
                                )),
                            }
                        }
                        _ if op == BinOp::FloorDiv => match a.div_blocks(b) {
                            Some(q) => Int(q),
                            None => self.err(Diagnostic::error(
                                codes::NON_CONSTANT,
                                format!("cannot divide `{a}` by `{b}` exactly"),
                                span,
                                "symbolic sizes",
                            )),
                        },
                        _ => self.err(Diagnostic::error(
                            codes::NON_CONSTANT,
                            "`%` needs sizes known at compile time",
                            span,
                            "symbolic sizes",
                        )),
                    },
                    BinOp::Pow if matches!(kb, Some(y) if y >= 0) && ka.is_some() => {
                        let (x, y) = (ka.unwrap_or(0), kb.unwrap_or(0));
                        match u32::try_from(y).ok().and_then(|y| x.checked_pow(y)) {
                            Some(p) => Value::int(p),
                            None => self.err(Diagnostic::error(codes::VALUE, "integer overflow", span, "here")),
                        }
                    }
                    BinOp::Eq => Bool(a == b),
                    BinOp::Ne => Bool(a != b),
                    _ => match (ka, kb) {
                        (Some(x), Some(y)) => self.float_op(op, x as f64, y as f64, span),
                        _ => self.err(Diagnostic::error(
                            codes::NON_CONSTANT,
                            format!("`{}` needs sizes known at compile time", op_name(op)),
                            span,
                            "symbolic sizes",
                        )),
                    },
                }
            }
            (Int(_) | Float(_), Int(_) | Float(_)) => {
                let f = |v: &Value| match v {
                    Int(d) => d.as_known().map(|n| n as f64),
                    Float(x) => Some(*x),
                    _ => None,
                };
                match (f(&l), f(&r)) {
                    (Some(a), Some(b)) => self.float_op(op, a, b, span),
                    // A symbolic size with a float: computed when the program runs.
                    _ => match (self.lift(&l, DType::F32, ls), self.lift(&r, DType::F32, rs)) {
                        (Some(a), Some(b)) => self.binary(op, Value::Tensor(a), Value::Tensor(b), ls, rs, span),
                        _ => Value::Poison,
                    },
                }
            }
            (Bool(a), Bool(b)) => match op {
                BinOp::And => Bool(*a && *b),
                BinOp::Or => Bool(*a || *b),
                BinOp::Eq => Bool(a == b),
                BinOp::Ne => Bool(a != b),
                _ => bad(self),
            },
            (Str(a), Str(b)) if matches!(op, BinOp::Eq | BinOp::Ne) => Bool((a == b) == (op == BinOp::Eq)),
            (Value::None, _) | (_, Value::None) if matches!(op, BinOp::Eq | BinOp::Ne) => {
                let same = matches!((&l, &r), (Value::None, Value::None));
                Bool(same == (op == BinOp::Eq))
            }
            _ => bad(self),
        }
    }

    fn float_op(&mut self, op: BinOp, a: f64, b: f64, span: Span) -> Value {
        let v = match op {
            BinOp::Add => a + b,
            BinOp::Sub => a - b,
            BinOp::Mul => a * b,
            BinOp::Div => a / b,
            BinOp::FloorDiv => (a / b).floor(),
            BinOp::Rem => a - b * (a / b).floor(),
            BinOp::Pow => a.powf(b),
            BinOp::Eq => return Value::Bool(a == b),
            BinOp::Ne => return Value::Bool(a != b),
            BinOp::Lt => return Value::Bool(a < b),
            BinOp::Le => return Value::Bool(a <= b),
            BinOp::Gt => return Value::Bool(a > b),
            BinOp::Ge => return Value::Bool(a >= b),
            BinOp::And | BinOp::Or | BinOp::MatMul => {
                return self.err(Diagnostic::error(codes::TYPE, format!("`{}` is not defined on numbers", op_name(op)), span, "here"))
            }
        };
        Value::Float(v)
    }

    fn tensor_binary(&mut self, op: BinOp, l: Value, r: Value, ls: Span, rs: Span, span: Span) -> Value {
        let describe = |s: &Self, v: &Value| match v {
            Value::Tensor(t) => format!("{}", s.ty(*t)),
            other => other.kind().to_string(),
        };
        if op == BinOp::MatMul {
            let (Value::Tensor(a), Value::Tensor(b)) = (&l, &r) else {
                let (ld, rd) = (describe(self, &l), describe(self, &r));
                return self.err(Diagnostic::error(codes::TYPE, format!("`@` needs two tensors, got {ld} and {rd}"), span, "here"));
            };
            let (ta, tb) = (self.ty(*a).clone(), self.ty(*b).clone());
            if ta.rank() < 2 || tb.rank() < 2 {
                let (bad, s, t) = if ta.rank() < 2 { (ls, "left", &ta) } else { (rs, "right", &tb) };
                return self.err(Diagnostic::error(codes::SHAPE, format!("`@` needs matrices; the {s} operand is {t}"), bad, "rank < 2"));
            }
            if ta.dtype != DType::F32 || tb.dtype != DType::F32 {
                return self.err(
                    Diagnostic::error(
                        codes::DTYPE,
                        format!("`@` needs f32 operands, got {} and {}", ta.dtype, tb.dtype),
                        ls,
                        format!("{}", ta.dtype),
                    )
                    .with_label(rs, format!("{}", tb.dtype))
                    .with_help("convert with `float(x)`"),
                );
            }
            let (k1, k2) = (&ta.shape[ta.rank() - 1], &tb.shape[tb.rank() - 2]);
            if k1 != k2 {
                return self.err(
                    Diagnostic::error(
                        codes::SHAPE,
                        format!(
                            "shape mismatch in `@`: {} @ {} (inner sizes {k1} and {k2} differ)",
                            ShapeDisplay(&ta.shape),
                            ShapeDisplay(&tb.shape)
                        ),
                        ls,
                        format!("this has shape {}", ShapeDisplay(&ta.shape)),
                    )
                    .with_label(rs, format!("this has shape {}", ShapeDisplay(&tb.shape)))
                    .with_help("the last axis of the left operand must equal the second-to-last axis of the right"),
                );
            }
            if let Err(m) = ir::broadcast_shapes(&ta.shape[..ta.rank() - 2], &tb.shape[..tb.rank() - 2]) {
                return self.err(
                    Diagnostic::error(
                        codes::SHAPE,
                        format!("shape mismatch in `@`: batch axes {m}"),
                        ls,
                        format!("this has shape {}", ShapeDisplay(&ta.shape)),
                    )
                    .with_label(rs, format!("this has shape {}", ShapeDisplay(&tb.shape))),
                );
            }
            return self.add(Op::MatMul, vec![*a, *b], None, span);
        }
        let (a, b, dtype) = match self.coerce_pair(op, &l, &r, ls, rs) {
            Some(x) => x,
            None => return Value::Poison,
        };
        let bop = match op {
            BinOp::Add => BinaryOp::Add,
            BinOp::Sub => BinaryOp::Sub,
            BinOp::Mul => BinaryOp::Mul,
            BinOp::Div => BinaryOp::Div,
            BinOp::FloorDiv if dtype == DType::I64 => BinaryOp::Div,
            BinOp::Rem => BinaryOp::Rem,
            BinOp::Pow => BinaryOp::Pow,
            BinOp::Eq => BinaryOp::Eq,
            BinOp::Ne => BinaryOp::Ne,
            BinOp::Lt => BinaryOp::Lt,
            BinOp::Le => BinaryOp::Le,
            BinOp::Gt => BinaryOp::Gt,
            BinOp::Ge => BinaryOp::Ge,
            BinOp::And => BinaryOp::And,
            BinOp::Or => BinaryOp::Or,
            BinOp::FloorDiv | BinOp::MatMul => {
                return self.err(
                    Diagnostic::error(codes::DTYPE, "`//` is defined on i64 tensors only", span, "here").with_help("use `/` on floats"),
                )
            }
        };
        let logical = bop.is_logical();
        if logical != (dtype == DType::Bool) && !(dtype == DType::Bool && matches!(bop, BinaryOp::Eq | BinaryOp::Ne)) {
            let msg = if logical {
                format!("`{}` needs bool operands, got {dtype}", op_name(op))
            } else {
                format!("`{}` is not defined on bool tensors", op_name(op))
            };
            return self.err(
                Diagnostic::error(codes::DTYPE, msg, span, "here")
                    .with_help("comparisons give bools; `where(c, a, b)` turns them into numbers"),
            );
        }
        self.add(Op::Binary(bop), vec![a, b], None, span)
    }

    /// Brings two operands of an elementwise op to one element type (numbers take the
    /// tensor's type; an i64 tensor meets a float or `/` by becoming f32; two tensors must
    /// agree) and checks that their shapes broadcast.
    pub(crate) fn coerce_pair(&mut self, op: BinOp, l: &Value, r: &Value, ls: Span, rs: Span) -> Option<(ValueId, ValueId, DType)> {
        // Element types: a compile-time number takes the tensor's type; an i64 tensor meets a
        // float by becoming f32; two tensors must agree.
        let tensor_dtype = |s: &Self, v: &Value| if let Value::Tensor(t) = v { Some(s.ty(*t).dtype) } else { None };
        let (ld, rd) = (tensor_dtype(self, l), tensor_dtype(self, r));
        let both_int = matches!((l, r), (Value::Int(_), Value::Int(_)));
        let mut dtype = ld.or(rd).unwrap_or(if both_int { DType::I64 } else { DType::F32 });
        if let (Some(a), Some(b)) = (ld, rd) {
            if a != b {
                {
                    self.err(
                        Diagnostic::error(
                            codes::DTYPE,
                            format!("dtype mismatch in `{}`: {a} and {b}", op_name(op)),
                            ls,
                            format!("this is {a}"),
                        )
                        .with_label(rs, format!("this is {b}"))
                        .with_help("convert one side explicitly with `float(x)` or `int(x)`"),
                    );
                    return None;
                }
            }
        }
        let is_float = |v: &Value| matches!(v, Value::Float(_));
        if dtype == DType::I64 && (is_float(l) || is_float(r) || op == BinOp::Div) {
            dtype = DType::F32;
        }
        let operand = |s: &mut Self, v: &Value, sp: Span| -> Option<ValueId> {
            match v {
                Value::Tensor(t) => match s.cast(*t, dtype, sp) {
                    Value::Tensor(c) => Some(c),
                    _ => None,
                },
                Value::Int(_) | Value::Float(_) | Value::Bool(_) => s.lift(v, dtype, sp),
                other => {
                    s.err(Diagnostic::error(
                        codes::TYPE,
                        format!("`{}` is not defined on a tensor and {}", op_name(op), other.kind()),
                        sp,
                        "this value",
                    ));
                    None
                }
            }
        };
        let (Some(a), Some(b)) = (operand(self, l, ls), operand(self, r, rs)) else {
            return None;
        };
        let (sa, sb) = (self.ty(a).shape.clone(), self.ty(b).shape.clone());
        if ir::broadcast_shapes(&sa, &sb).is_err() {
            {
                self.err(
                    Diagnostic::error(
                        codes::SHAPE,
                        format!("shape mismatch in `{}`: {} and {} do not broadcast", op_name(op), ShapeDisplay(&sa), ShapeDisplay(&sb)),
                        ls,
                        format!("this has shape {}", ShapeDisplay(&sa)),
                    )
                    .with_label(rs, format!("this has shape {}", ShapeDisplay(&sb)))
                    .with_help("sizes must be equal or 1 when aligned from the right"),
                );
                return None;
            }
        }
        Some((a, b, dtype))
    }

    // ---------------------------------------------------------------- calls

    fn call(&mut self, f: Value, args: Vec<ArgVal>, span: Span, callee_span: Span, label: Option<&Ident>) -> Value {
        if !matches!(f, Value::Func(_)) {
            self.next_call_shared = false; // only a block call shares a scope
        }
        if args.iter().any(|a| matches!(a.value, Value::Poison)) && !matches!(f, Value::Func(_)) {
            return Value::Poison;
        }
        match f {
            Value::Poison => Value::Poison,
            Value::Builtin(name) => self.builtin(name, args, span),
            Value::Func(c) => self.call_closure(c, args, span, label),
            other => self.err(Diagnostic::error(codes::TYPE, format!("{} is not callable", other.kind()), callee_span, "called here")),
        }
    }

    /// Matches arguments to parameters. Returns, per parameter, the argument (if given).
    fn match_args(&mut self, fname: &str, names: &[&str], args: Vec<ArgVal>, span: Span) -> Option<Vec<Option<(Value, Span)>>> {
        let mut slots: Vec<Option<(Value, Span)>> = vec![None; names.len()];
        let mut ok = true;
        let mut pos = 0;
        let sig = format!("{fname}({})", names.join(", "));
        for a in args {
            match &a.name {
                None => {
                    if pos >= names.len() {
                        self.err(
                            Diagnostic::error(
                                codes::ARITY,
                                format!("`{fname}` takes {} argument(s) but more were given", names.len()),
                                a.span,
                                "unexpected argument",
                            )
                            .with_label(span, "in this call")
                            .with_help(format!("the signature is `{sig}`")),
                        );
                        ok = false;
                    } else {
                        slots[pos] = Some((a.value, a.span));
                    }
                    pos += 1;
                }
                Some(n) => match names.iter().position(|p| *p == n.name) {
                    None => {
                        let mut d = Diagnostic::error(
                            codes::UNKNOWN_ARG,
                            format!("`{fname}` has no parameter `{}`", n.name),
                            n.span,
                            "unknown argument name",
                        );
                        d = d.with_help(match suggest(&n.name, names.iter().copied()) {
                            Some(s) => format!("{s} (the signature is `{sig}`)"),
                            None => format!("the signature is `{sig}`"),
                        });
                        self.err(d);
                        ok = false;
                    }
                    Some(i) if slots[i].is_some() => {
                        self.err(Diagnostic::error(
                            codes::BAD_ARGS,
                            format!("argument `{}` is given twice", n.name),
                            n.span,
                            "given again here",
                        ));
                        ok = false;
                    }
                    Some(i) => slots[i] = Some((a.value, a.span)),
                },
            }
        }
        ok.then_some(slots)
    }

    fn call_closure(&mut self, c: Rc<Closure>, args: Vec<ArgVal>, span: Span, label: Option<&Ident>) -> Value {
        let def = c.def.clone();
        let Some(params) = def.params.get(c.applied) else {
            return self.err(Diagnostic::error(codes::ARITY, format!("`{}` takes no more arguments", def.name.name), span, "called here"));
        };
        if def.kind == DefKind::Model {
            return self.err(
                Diagnostic::error(codes::MISPLACED, format!("model `{}` cannot be called", def.name.name), span, "called here")
                    .with_help("turn the shared part into a `block`"),
            );
        }
        let names: Vec<&str> = params.iter().map(|p| p.name.name.as_str()).collect();
        let Some(slots) = self.match_args(&def.name.name, &names, args, span) else { return Value::Poison };
        let mut frame = Frame { env: c.bound.clone(), module: c.module, is_model: false, ret: None };
        let mut ok = true;
        for (p, slot) in params.iter().zip(slots) {
            let (v, vspan) = match slot {
                Some(s) => s,
                None => match &p.default {
                    Some(d) => (self.eval(d, &mut frame), d.span),
                    None => {
                        self.err(
                            Diagnostic::error(
                                codes::BAD_ARGS,
                                format!("missing argument `{}` of `{}`", p.name.name, def.name.name),
                                span,
                                "in this call",
                            )
                            .with_label(p.name.span, "parameter declared here"),
                        );
                        ok = false;
                        continue;
                    }
                },
            };
            let v = self.check_type(p, v, vspan, &mut frame);
            frame.env.insert(p.name.name.clone(), v);
        }
        if !ok {
            return Value::Poison;
        }
        if c.applied + 1 < def.params.len() {
            return Value::Func(Rc::new(Closure { def: def.clone(), module: c.module, bound: frame.env, applied: c.applied + 1 }));
        }
        let ptr = Rc::as_ptr(&def);
        if self.stack.contains(&ptr) {
            return self.err(
                Diagnostic::error(codes::RECURSIVE, format!("`{}` calls itself", def.name.name), span, "recursive call")
                    .with_label(def.name.span, "defined here")
                    .with_help("blocks are inlined, so recursion never ends; repeat layers with `for` instead"),
            );
        }
        if self.stack.len() >= MAX_DEPTH {
            self.aborted = true;
            return self.err(Diagnostic::error(codes::LIMIT, format!("block calls nest deeper than {MAX_DEPTH}"), span, "this call"));
        }
        let transparent = def.kind == DefKind::Block && matches!(def.body, Body::Expr(_));
        let scoped = def.kind == DefKind::Block && !transparent;
        let label = if def.kind == DefKind::Block { label.cloned().or_else(|| self.inherited_label.take()) } else { label.cloned() };
        if transparent {
            self.inherited_label = label.clone();
        }
        let shared = std::mem::take(&mut self.next_call_shared) && scoped && label.is_some();
        if shared {
            self.shared_depth += 1;
        }
        if scoped {
            let parent = self.prefix.join(".");
            let scope = match &label {
                Some(l) => l.name.clone(),
                None => {
                    let counts = self.child_counts.entry(parent).or_default();
                    let n = counts.entry(def.name.name.clone()).or_insert(0);
                    *n += 1;
                    if *n == 1 {
                        def.name.name.clone()
                    } else {
                        format!("{}_{}", def.name.name, *n - 1)
                    }
                }
            };
            self.prefix.push(scope);
        }
        self.stack.push(ptr);
        self.call_sites.push(span);
        let result = match &def.body {
            Body::Expr(e) => self.eval(e, &mut frame),
            Body::Block(stmts) => {
                self.exec(stmts, &mut frame);
                frame.ret.take().unwrap_or(Value::None)
            }
        };
        self.stack.pop();
        self.call_sites.pop();
        self.inherited_label = None;
        if scoped {
            self.prefix.pop();
        }
        if shared {
            self.shared_depth -= 1;
        }
        result
    }

    /// Checks (and converts) a value against a parameter's annotation; binds the names of a
    /// tensor pattern into `frame`.
    fn check_type(&mut self, p: &HParam, v: Value, vspan: Span, frame: &mut Frame) -> Value {
        let Some(ty) = &p.ty else { return v };
        if matches!(v, Value::Poison) {
            // Bind the pattern's names too, so that an earlier error does not cascade.
            if let TypeAnn::Tensor(ann) = ty {
                for d in &ann.dims {
                    if let DimPat::Expr(Expr { kind: ExprKind::Name(n), .. }) = d {
                        frame.env.entry(n.clone()).or_insert(Value::Poison);
                    }
                }
            }
            return v;
        }
        let mismatch = |s: &mut Self, want: &str, v: &Value, ann: Span| {
            s.err(
                Diagnostic::error(
                    codes::TYPE,
                    format!("`{}` expects {want}, got {}", p.name.name, v.kind()),
                    vspan,
                    format!("this is {}", v.kind()),
                )
                .with_label(ann, "declared here"),
            )
        };
        match ty {
            TypeAnn::Scalar(k, ann) => match (k.as_str(), &v) {
                ("int", Value::Int(_)) | ("float", Value::Float(_)) | ("bool", Value::Bool(_)) | ("str", Value::Str(_)) => v,
                ("float", Value::Int(d)) if d.as_known().is_some() => Value::Float(d.as_known().unwrap_or(0) as f64),
                ("mask" | "score" | "fn", Value::Func(_) | Value::Builtin(_) | Value::None) => v,
                (k, _) => mismatch(self, &format!("{} {k}", if k == "int" { "an" } else { "a" }), &v, *ann),
            },
            TypeAnn::Tensor(ann) => {
                let Value::Tensor(t) = v else { return mismatch(self, "a tensor", &v, ann.span) };
                let tt = self.ty(t).clone();
                if let Some(want) = ann.dtype {
                    if want != tt.dtype {
                        return self.err(
                            Diagnostic::error(
                                codes::DTYPE,
                                format!("`{}` expects {want}, got {}", p.name.name, tt.dtype),
                                vspan,
                                format!("this is {tt}"),
                            )
                            .with_label(ann.span, "declared here"),
                        );
                    }
                }
                if self.match_pattern(&ann.dims, &tt.shape, frame) {
                    v
                } else {
                    let pattern: Vec<String> = ann.dims.iter().map(|d| self.pattern_text(d, frame)).collect();
                    self.err(
                        Diagnostic::error(
                            codes::SHAPE,
                            format!("shape mismatch: `{}` expects [{}], got {}", p.name.name, pattern.join(", "), ShapeDisplay(&tt.shape)),
                            vspan,
                            format!("this has shape {}", ShapeDisplay(&tt.shape)),
                        )
                        .with_label(ann.span, format!("expected [{}]", pattern.join(", "))),
                    )
                }
            }
        }
    }

    fn pattern_text(&mut self, d: &DimPat, frame: &mut Frame) -> String {
        match d {
            DimPat::Ellipsis(_) => "..".into(),
            DimPat::Expr(e) => match &e.kind {
                ExprKind::Name(n) => match frame.env.get(n) {
                    Some(Value::Int(d)) => d.to_string(),
                    _ => n.clone(),
                },
                _ => match self.eval(e, frame) {
                    Value::Int(d) => d.to_string(),
                    _ => "?".into(),
                },
            },
        }
    }

    fn match_pattern(&mut self, pats: &[DimPat], shape: &[Dim], frame: &mut Frame) -> bool {
        let ell = pats.iter().position(|d| matches!(d, DimPat::Ellipsis(_)));
        let fixed = pats.len() - usize::from(ell.is_some());
        if shape.len() < fixed || (ell.is_none() && shape.len() != fixed) {
            return false;
        }
        let mut binds = Vec::new();
        for (k, pat) in pats.iter().enumerate() {
            let DimPat::Expr(e) = pat else { continue };
            let axis = match ell {
                Some(p) if k > p => shape.len() - (pats.len() - k),
                _ => k,
            };
            let got = &shape[axis];
            match &e.kind {
                ExprKind::Name(n) if !frame.env.contains_key(n) => match binds.iter().find(|(b, _): &&(String, Dim)| b == n) {
                    Some((_, d)) if d != got => return false,
                    Some(_) => {}
                    None => binds.push((n.clone(), got.clone())),
                },
                _ => match self.eval(e, frame) {
                    Value::Int(d) if d == *got => {}
                    Value::Poison => {}
                    _ => return false,
                },
            }
        }
        for (n, d) in binds {
            frame.env.insert(n, Value::Int(d));
        }
        true
    }
}

impl From<i64> for Override {
    fn from(v: i64) -> Override {
        Override::Int(v)
    }
}

impl From<i32> for Override {
    fn from(v: i32) -> Override {
        Override::Int(i64::from(v))
    }
}

impl From<f64> for Override {
    fn from(v: f64) -> Override {
        Override::Float(v)
    }
}

impl From<bool> for Override {
    fn from(v: bool) -> Override {
        Override::Bool(v)
    }
}

impl From<&str> for Override {
    fn from(v: &str) -> Override {
        Override::Str(v.to_string())
    }
}

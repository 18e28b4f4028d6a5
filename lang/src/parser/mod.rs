//! Text → [`Module`]. pest types stay inside this module: callers see the AST and
//! [`Diagnostic`]s only.

use crate::ast::*;
use crate::diag::{codes, Diagnostic};
use pest::iterators::{Pair, Pairs};
use pest::pratt_parser::{Assoc, Op, PrattParser};
use pest::Parser as _;
use std::rc::Rc;
use std::sync::OnceLock;
use tessera_ir::DType;

#[derive(pest_derive::Parser)]
#[grammar = "parser/tessera.pest"]
struct Grammar;

/// The most unary operators applied in a row (`- - - x`).
const MAX_PREFIX: usize = 256;
/// The most operators, operands and postfix operations in one expression's chain, with those
/// of the chains around it (a bound on the depth of the tree).
const MAX_CHAIN: usize = 8192;
/// The deepest nesting of expressions (parentheses, arguments, indices).
const MAX_NESTING: usize = 256;
/// The deepest nesting of brackets and blocks, checked on the text before parsing.
const MAX_BRACKETS: usize = 512;

fn pratt() -> &'static PrattParser<Rule> {
    static P: OnceLock<PrattParser<Rule>> = OnceLock::new();
    P.get_or_init(|| {
        PrattParser::new()
            .op(Op::infix(Rule::or, Assoc::Left))
            .op(Op::infix(Rule::and, Assoc::Left))
            .op(Op::prefix(Rule::not))
            .op(Op::infix(Rule::eq, Assoc::Left)
                | Op::infix(Rule::ne, Assoc::Left)
                | Op::infix(Rule::lt, Assoc::Left)
                | Op::infix(Rule::le, Assoc::Left)
                | Op::infix(Rule::gt, Assoc::Left)
                | Op::infix(Rule::ge, Assoc::Left))
            .op(Op::infix(Rule::add, Assoc::Left) | Op::infix(Rule::sub, Assoc::Left))
            .op(Op::infix(Rule::mul, Assoc::Left)
                | Op::infix(Rule::div, Assoc::Left)
                | Op::infix(Rule::floordiv, Assoc::Left)
                | Op::infix(Rule::rem, Assoc::Left)
                | Op::infix(Rule::matmul, Assoc::Left))
            .op(Op::prefix(Rule::neg))
            .op(Op::infix(Rule::pow, Assoc::Right))
            .op(Op::postfix(Rule::call_args) | Op::postfix(Rule::index) | Op::postfix(Rule::member) | Op::postfix(Rule::label))
    })
}

fn describe(rule: &Rule) -> &'static str {
    match rule {
        Rule::EOI => "end of file",
        Rule::ident => "a name",
        Rule::expr => "an expression",
        Rule::number => "a number",
        Rule::body => "`{`",
        Rule::def | Rule::def_kind => "a definition (`block`, `model`, `mask`, `score`)",
        Rule::import => "`import`",
        Rule::tensor_type => "a tensor type like `[batch, seq, d]`",
        Rule::params => "`(`",
        Rule::hparam => "a parameter",
        Rule::range => "a range `lo..hi`",
        Rule::dtype => "a dtype",
        Rule::arg => "an argument",
        _ => "something else",
    }
}

/// Parses one file. On a syntax error, returns the diagnostic (pest stops at the first one).
pub fn parse(file: FileId, text: &str) -> Result<Module, Diagnostic> {
    // Before pest's recursive descent: brackets (and blocks) nested past a bound are refused.
    let (mut depth, mut in_str, mut comment) = (0usize, false, false);
    for (i, c) in text.char_indices() {
        match c {
            '\n' => comment = false,
            _ if comment => {}
            '"' => in_str = !in_str,
            '#' if !in_str => comment = true,
            '(' | '[' | '{' if !in_str => {
                depth += 1;
                if depth > MAX_BRACKETS {
                    let span = Span { file, start: i as u32, end: i as u32 + 1 };
                    return Err(Diagnostic::error(codes::SYNTAX, format!("brackets nest deeper than {MAX_BRACKETS} levels"), span, "here")
                        .with_help("name the inner parts with statements"));
                }
            }
            ')' | ']' | '}' if !in_str => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    let pairs = Grammar::parse(Rule::file, text).map_err(|e| syntax_error(file, text, e))?;
    let b = Builder { file, depth: std::cell::Cell::new(0), chained: std::cell::Cell::new(0) };
    let mut module = Module { file, imports: Vec::new(), defs: Vec::new() };
    for item in pairs.flatten().filter(|p| matches!(p.as_rule(), Rule::import | Rule::def)) {
        match item.as_rule() {
            Rule::import => {
                let mut ids = b.inner(item).map(|p| b.ident(p));
                if let Some(module_name) = ids.next() {
                    let alias = ids.next().unwrap_or_else(|| module_name.clone());
                    module.imports.push(Import { module: module_name, alias });
                }
            }
            _ => module.defs.push(Rc::new(b.def(item)?)),
        }
    }
    Ok(module)
}

fn syntax_error(file: FileId, text: &str, e: pest::error::Error<Rule>) -> Diagnostic {
    use pest::error::{ErrorVariant, InputLocation};
    let pos = match e.location {
        InputLocation::Pos(p) => p,
        InputLocation::Span((s, _)) => s,
    };
    let end = text[pos..].chars().next().map_or(pos, |c| pos + c.len_utf8());
    let span = Span { file, start: pos as u32, end: end as u32 };
    let found = text[pos..].split_whitespace().next().map_or("end of file".to_string(), |w| {
        let w: String = w.chars().take(20).collect();
        format!("`{w}`")
    });
    let expected = match &e.variant {
        ErrorVariant::ParsingError { positives, .. } => {
            let mut names: Vec<&str> = positives.iter().map(describe).filter(|d| *d != "something else").collect();
            names.sort();
            names.dedup();
            names.join(", ")
        }
        ErrorVariant::CustomError { message } => message.clone(),
    };
    let label = if expected.is_empty() { "unexpected here".to_string() } else { format!("expected {expected}") };
    Diagnostic::error(codes::SYNTAX, format!("syntax error: unexpected {found}"), span, label)
        .with_help("statements are `name = expr`, `param`, `input`, `output`, `for`, `if` or `return`")
}

struct Builder {
    file: FileId,
    /// How many expressions enclose the one being built.
    depth: std::cell::Cell<usize>,
    /// The operators and operands of the chains that enclose it: a bound on the depth of the
    /// tree above it (each left-associative link is a level).
    chained: std::cell::Cell<usize>,
}

fn is_keyword(r: Rule) -> bool {
    matches!(
        r,
        Rule::kw_import
            | Rule::kw_as
            | Rule::kw_mask
            | Rule::kw_score
            | Rule::kw_block
            | Rule::kw_model
            | Rule::kw_checkpoint
            | Rule::kw_input
            | Rule::kw_param
            | Rule::kw_output
            | Rule::kw_for
            | Rule::kw_in
            | Rule::kw_if
            | Rule::kw_else
            | Rule::kw_return
            | Rule::kw_scan
            | Rule::kw_route
    )
}

type PResult<T> = Result<T, Diagnostic>;

impl Builder {
    fn span(&self, p: &Pair<Rule>) -> Span {
        let s = p.as_span();
        Span { file: self.file, start: s.start() as u32, end: s.end() as u32 }
    }

    fn inner<'a>(&self, p: Pair<'a, Rule>) -> impl Iterator<Item = Pair<'a, Rule>> {
        p.into_inner().filter(|q| !is_keyword(q.as_rule()))
    }

    fn ident(&self, p: Pair<Rule>) -> Ident {
        Ident { name: p.as_str().to_string(), span: self.span(&p) }
    }

    fn def(&self, p: Pair<Rule>) -> PResult<Def> {
        let span = self.span(&p);
        let mut it = self.inner(p);
        let kind = match it.next().map(|k| k.as_str().to_string()).as_deref() {
            Some("mask") => DefKind::Mask,
            Some("score") => DefKind::Score,
            Some("model") => DefKind::Model,
            Some("checkpoint") => DefKind::Checkpoint,
            _ => DefKind::Block,
        };
        let mut name = None;
        let mut params = Vec::new();
        let mut body = None;
        for q in it {
            match q.as_rule() {
                Rule::ident => name = Some(self.ident(q)),
                Rule::params => params.push(self.inner(q).map(|h| self.hparam(h)).collect::<PResult<Vec<_>>>()?),
                Rule::body => body = Some(Body::Block(self.body(q)?)),
                _ => body = Some(Body::Expr(self.expr(q)?)),
            }
        }
        let name = name.unwrap_or(Ident { name: String::new(), span });
        Ok(Def { kind, name, params, body: body.unwrap_or(Body::Block(Vec::new())), span })
    }

    fn hparam(&self, p: Pair<Rule>) -> PResult<HParam> {
        let mut h = HParam { name: Ident { name: String::new(), span: self.span(&p) }, ty: None, default: None };
        for q in self.inner(p) {
            match q.as_rule() {
                Rule::ident => h.name = self.ident(q),
                Rule::scalar_type => h.ty = Some(TypeAnn::Scalar(q.as_str().to_string(), self.span(&q))),
                Rule::tensor_type => h.ty = Some(TypeAnn::Tensor(self.tensor_type(q)?)),
                _ => h.default = Some(self.expr(q)?),
            }
        }
        Ok(h)
    }

    fn tensor_type(&self, p: Pair<Rule>) -> PResult<TensorAnn> {
        let span = self.span(&p);
        let mut t = TensorAnn { dtype: None, dims: Vec::new(), span };
        for q in self.inner(p) {
            match q.as_rule() {
                Rule::dtype => t.dtype = DType::from_name(q.as_str()),
                Rule::ellipsis => t.dims.push(DimPat::Ellipsis(self.span(&q))),
                _ => t.dims.push(DimPat::Expr(self.expr(q)?)),
            }
        }
        Ok(t)
    }

    fn body(&self, p: Pair<Rule>) -> PResult<Vec<Stmt>> {
        self.inner(p).map(|s| self.stmt(s)).collect()
    }

    fn stmt(&self, p: Pair<Rule>) -> PResult<Stmt> {
        let span = self.span(&p);
        let rule = p.as_rule();
        let mut it = self.inner(p);
        let mut next = || it.next();
        Ok(match rule {
            Rule::input_stmt => {
                let name = self.ident(next().ok_or_else(|| self.bug(span))?);
                Stmt::Input { name, ty: self.tensor_type(next().ok_or_else(|| self.bug(span))?)? }
            }
            Rule::param_stmt => {
                let name = self.ident(next().ok_or_else(|| self.bug(span))?);
                let ty = self.tensor_type(next().ok_or_else(|| self.bug(span))?)?;
                Stmt::Param { name, ty, init: next().map(|e| self.expr(e)).transpose()? }
            }
            Rule::output_stmt => {
                let name = self.ident(next().ok_or_else(|| self.bug(span))?);
                Stmt::Output { name, value: self.expr(next().ok_or_else(|| self.bug(span))?)? }
            }
            Rule::for_stmt => {
                let var = self.ident(next().ok_or_else(|| self.bug(span))?);
                let range = next().ok_or_else(|| self.bug(span))?;
                let mut r = range.into_inner();
                let lo = self.expr(r.next().ok_or_else(|| self.bug(span))?)?;
                let hi = self.expr(r.next().ok_or_else(|| self.bug(span))?)?;
                let body = self.body(next().ok_or_else(|| self.bug(span))?)?;
                Stmt::For { var, lo, hi, body, span }
            }
            Rule::if_stmt => {
                let cond = self.expr(next().ok_or_else(|| self.bug(span))?)?;
                let then = self.body(next().ok_or_else(|| self.bug(span))?)?;
                let els = match next() {
                    Some(e) if e.as_rule() == Rule::if_stmt => vec![self.stmt(e)?],
                    Some(e) => self.body(e)?,
                    None => Vec::new(),
                };
                Stmt::If { cond, then, els }
            }
            Rule::map_stmt => {
                let pat = next().ok_or_else(|| self.bug(span))?;
                let pattern = pat.as_str().trim_matches('"').to_string();
                let pspan = self.span(&pat);
                Stmt::Map { pattern, span: pspan, value: self.expr(next().ok_or_else(|| self.bug(span))?)? }
            }
            Rule::return_stmt => Stmt::Return { values: it.map(|e| self.expr(e)).collect::<PResult<_>>()?, span },
            Rule::assign => {
                let mut names = Vec::new();
                let mut value = None;
                for q in it {
                    if q.as_rule() == Rule::ident {
                        names.push(self.ident(q));
                    } else {
                        value = Some(self.expr(q)?);
                    }
                }
                Stmt::Assign { names, value: value.ok_or_else(|| self.bug(span))? }
            }
            _ => Stmt::Expr(self.expr(next().ok_or_else(|| self.bug(span))?)?),
        })
    }

    fn bug(&self, span: Span) -> Diagnostic {
        Diagnostic::error(codes::SYNTAX, "malformed syntax tree (a parser bug)", span, "here")
    }

    fn expr(&self, p: Pair<Rule>) -> PResult<Expr> {
        if self.depth.get() >= MAX_NESTING {
            return Err(Diagnostic::error(
                codes::SYNTAX,
                format!("expressions nest deeper than {MAX_NESTING} levels"),
                self.span(&p),
                "here",
            )
            .with_help("name the inner parts with statements"));
        }
        self.depth.set(self.depth.get() + 1);
        let e = self.expr_at_depth(p);
        self.depth.set(self.depth.get() - 1);
        e
    }

    fn expr_at_depth(&self, p: Pair<Rule>) -> PResult<Expr> {
        let span = self.span(&p);
        if p.as_rule() != Rule::expr {
            return self.primary(p);
        }
        // The tree of an expression is as deep as its chain of operators: bound it, so that
        // nothing after the parser (the elaborator, printers, dropping the tree) recurses
        // without limit (9,850 unary minus or an 11,000-term sum overflowed the stack).
        let (mut ops, mut run) = (0usize, 0usize);
        for q in p.clone().into_inner() {
            let prefix = matches!(q.as_rule(), Rule::neg | Rule::not);
            run = if prefix { run + 1 } else { 0 };
            ops += usize::from(!matches!(q.as_rule(), Rule::expr));
            if run > MAX_PREFIX || self.chained.get() + ops > MAX_CHAIN {
                let what = if run > MAX_PREFIX {
                    format!("more than {MAX_PREFIX} unary operators in a row")
                } else {
                    format!("more than {MAX_CHAIN} operators and operands (with the expressions around it)")
                };
                return Err(Diagnostic::error(codes::SYNTAX, format!("this expression chains {what}"), self.span(&q), "here")
                    .with_help("split it into several statements"));
            }
        }
        self.chained.set(self.chained.get() + ops);
        let e = self.pratt_expr(p.into_inner(), span);
        self.chained.set(self.chained.get() - ops);
        e
    }

    fn pratt_expr(&self, pairs: Pairs<Rule>, _span: Span) -> PResult<Expr> {
        pratt()
            .map_primary(|p| self.primary(p))
            .map_prefix(|op, rhs| {
                let rhs = rhs?;
                let span = Span { file: self.file, start: op.as_span().start() as u32, end: rhs.span.end };
                let u = if op.as_rule() == Rule::neg { UnOp::Neg } else { UnOp::Not };
                // Fold negative literals so that `-1` is a constant, not an operation.
                Ok(match (u, &rhs.kind) {
                    (UnOp::Neg, ExprKind::Int(n)) => Expr { kind: ExprKind::Int(-n), span },
                    (UnOp::Neg, ExprKind::Float(f)) => Expr { kind: ExprKind::Float(-f), span },
                    _ => Expr { kind: ExprKind::Unary(u, Box::new(rhs)), span },
                })
            })
            .map_infix(|lhs, op, rhs| {
                let (lhs, rhs) = (lhs?, rhs?);
                let span = Span { file: self.file, start: lhs.span.start, end: rhs.span.end };
                let b = match op.as_rule() {
                    Rule::add => BinOp::Add,
                    Rule::sub => BinOp::Sub,
                    Rule::mul => BinOp::Mul,
                    Rule::div => BinOp::Div,
                    Rule::floordiv => BinOp::FloorDiv,
                    Rule::rem => BinOp::Rem,
                    Rule::pow => BinOp::Pow,
                    Rule::matmul => BinOp::MatMul,
                    Rule::eq => BinOp::Eq,
                    Rule::ne => BinOp::Ne,
                    Rule::lt => BinOp::Lt,
                    Rule::le => BinOp::Le,
                    Rule::gt => BinOp::Gt,
                    Rule::ge => BinOp::Ge,
                    Rule::and => BinOp::And,
                    _ => BinOp::Or,
                };
                Ok(Expr { kind: ExprKind::Binary(b, Box::new(lhs), Box::new(rhs)), span })
            })
            .map_postfix(|lhs, op| {
                let lhs = lhs?;
                let span = Span { file: self.file, start: lhs.span.start, end: op.as_span().end() as u32 };
                let kind = match op.as_rule() {
                    Rule::call_args => {
                        let args = self.inner(op).map(|a| self.arg(a)).collect::<PResult<_>>()?;
                        ExprKind::Call { callee: Box::new(lhs), args, label: None, shared: false }
                    }
                    Rule::index => {
                        let items = self.inner(op).map(|i| self.index_item(i)).collect::<PResult<_>>()?;
                        ExprKind::Index { base: Box::new(lhs), items }
                    }
                    Rule::member => {
                        let name = self.inner(op).next().map(|i| self.ident(i)).ok_or_else(|| self.bug(span))?;
                        ExprKind::Member { base: Box::new(lhs), name }
                    }
                    _ => {
                        let shared = op.clone().into_inner().any(|q| q.as_rule() == Rule::kw_shared);
                        let label = self
                            .inner(op)
                            .find(|q| q.as_rule() == Rule::label_name)
                            .map(|i| self.ident(i))
                            .ok_or_else(|| self.bug(span))?;
                        match lhs.kind {
                            ExprKind::Call { callee, args, label: None, .. } => ExprKind::Call { callee, args, label: Some(label), shared },
                            _ => {
                                return Err(Diagnostic::error(
                                    codes::SYNTAX,
                                    "`as` names a block call",
                                    label.span,
                                    "this label follows something that is not a call",
                                )
                                .with_help("write `block(args) as name` to choose the scope of the block's parameters"))
                            }
                        }
                    }
                };
                Ok(Expr { kind, span })
            })
            .parse(pairs)
    }

    fn arg(&self, p: Pair<Rule>) -> PResult<Arg> {
        let mut name = None;
        let mut value = None;
        for q in self.inner(p) {
            if q.as_rule() == Rule::ident {
                name = Some(self.ident(q));
            } else {
                value = Some(self.expr(q)?);
            }
        }
        match value {
            Some(value) => Ok(Arg { name, value }),
            None => Err(self.bug(Span::default())),
        }
    }

    fn index_item(&self, p: Pair<Rule>) -> PResult<IndexItem> {
        let span = self.span(&p);
        Ok(match p.as_rule() {
            Rule::ellipsis => IndexItem::Ellipsis(span),
            Rule::slice => {
                let mut parts = Vec::new();
                for q in self.inner(p) {
                    parts.push(self.inner(q).next().map(|e| self.expr(e)).transpose()?);
                }
                let mut it = parts.into_iter();
                IndexItem::Slice { start: it.next().flatten(), end: it.next().flatten(), step: it.next().flatten(), span }
            }
            _ => IndexItem::Expr(self.expr(p)?),
        })
    }

    fn primary(&self, p: Pair<Rule>) -> PResult<Expr> {
        let span = self.span(&p);
        let kind = match p.as_rule() {
            Rule::number => {
                let s = p.as_str();
                if s.contains(['.', 'e', 'E']) {
                    ExprKind::Float(s.parse().map_err(|_| self.number_error(span, s))?)
                } else {
                    ExprKind::Int(s.parse().map_err(|_| self.number_error(span, s))?)
                }
            }
            Rule::string => ExprKind::Str(p.as_str().trim_matches('"').to_string()),
            Rule::boolean => ExprKind::Bool(p.as_str() == "true"),
            Rule::none => ExprKind::None,
            Rule::ident => ExprKind::Name(p.as_str().to_string()),
            Rule::expr => return self.expr(p),
            Rule::paren => {
                let trailing = p.clone().into_inner().any(|q| q.as_rule() == Rule::trailing_comma);
                let mut items: Vec<Expr> =
                    self.inner(p).filter(|q| q.as_rule() != Rule::trailing_comma).map(|q| self.expr(q)).collect::<PResult<_>>()?;
                if items.len() == 1 && !trailing {
                    let mut e = items.remove(0);
                    e.span = span;
                    return Ok(e);
                }
                ExprKind::Tuple(items)
            }
            Rule::list => ExprKind::List(self.inner(p).map(|q| self.expr(q)).collect::<PResult<_>>()?),
            Rule::param_expr => {
                let mut it = self.inner(p);
                let name = it.next().map(|i| self.ident(i)).ok_or_else(|| self.bug(span))?;
                let ty = self.tensor_type(it.next().ok_or_else(|| self.bug(span))?)?;
                ExprKind::Param { name, ty }
            }
            Rule::scan_expr | Rule::route_expr => {
                let route = p.as_rule() == Rule::route_expr;
                let (mut args, mut params, mut body) = (Vec::new(), Vec::new(), None);
                for q in self.inner(p) {
                    match q.as_rule() {
                        Rule::call_args => args = self.inner(q).map(|a| self.arg(a)).collect::<PResult<_>>()?,
                        Rule::ident => params.push(self.ident(q)),
                        Rule::body => body = Some(self.body(q)?),
                        _ => {}
                    }
                }
                if route {
                    ExprKind::Route { args, params, body }
                } else {
                    ExprKind::Scan { args, params, body }
                }
            }
            _ => return Err(self.bug(span)),
        };
        Ok(Expr { kind, span })
    }

    fn number_error(&self, span: Span, s: &str) -> Diagnostic {
        Diagnostic::error(codes::SYNTAX, format!("number `{s}` is out of range"), span, "here")
    }
}

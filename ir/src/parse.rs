//! Reads the IR text form written by [`crate::print`]. The result is not verified: run
//! [`crate::verify`] on it (the parser only checks the syntax).

use crate::{DType, Dim, Graph, Init, Node, Op, ReduceOp, Span, TensorType, ValueId, BINARY_OPS, UNARY_OPS};
use thiserror::Error;

/// A syntax error in IR text, with its 1-based line.
#[derive(Debug, Error, PartialEq)]
#[error("line {line}: {msg}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What was wrong.
    pub msg: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    Punct(char),
}

impl std::fmt::Display for Tok {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tok::Word(w) => write!(f, "`{w}`"),
            Tok::Str(s) => write!(f, "the string \"{s}\""),
            Tok::Punct(c) => write!(f, "`{c}`"),
        }
    }
}

fn lex(line: &str) -> Result<Vec<Tok>, String> {
    let mut toks = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '"' {
            chars.next();
            let mut s = String::new();
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some(ch) => s.push(ch),
                    None => return Err("unterminated string".into()),
                }
            }
            toks.push(Tok::Str(s));
        } else if "=:[](),{}*+/".contains(c) {
            chars.next();
            toks.push(Tok::Punct(c));
        } else if c.is_alphanumeric() || "_.%-".contains(c) {
            let mut s = String::new();
            while let Some(&ch) = chars.peek() {
                if ch.is_alphanumeric() || "_.%-".contains(ch) {
                    s.push(ch);
                    chars.next();
                } else {
                    break;
                }
            }
            toks.push(Tok::Word(s));
        } else {
            return Err(format!("unexpected character `{c}`"));
        }
    }
    Ok(toks)
}

struct Cursor {
    toks: Vec<Tok>,
    pos: usize,
}

impl Cursor {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn next(&mut self) -> Result<Tok, String> {
        let t = self.toks.get(self.pos).cloned().ok_or("unexpected end of line")?;
        self.pos += 1;
        Ok(t)
    }
    fn word(&mut self) -> Result<String, String> {
        match self.next()? {
            Tok::Word(w) => Ok(w),
            t => Err(format!("expected a word, found {t}")),
        }
    }
    fn string(&mut self) -> Result<String, String> {
        match self.next()? {
            Tok::Str(s) => Ok(s),
            t => Err(format!("expected a string, found {t}")),
        }
    }
    fn punct(&mut self, c: char) -> Result<(), String> {
        match self.next()? {
            Tok::Punct(p) if p == c => Ok(()),
            t => Err(format!("expected `{c}`, found {t}")),
        }
    }
    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(&Tok::Punct(c)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn int<T: std::str::FromStr>(&mut self) -> Result<T, String> {
        let w = self.word()?;
        w.parse().map_err(|_| format!("expected an integer, found `{w}`"))
    }
    fn value(&mut self) -> Result<ValueId, String> {
        let w = self.word()?;
        w.strip_prefix('%').and_then(|n| n.parse().ok()).map(ValueId).ok_or_else(|| format!("expected a value like %3, found `{w}`"))
    }
    fn done(&self) -> Result<(), String> {
        match self.peek() {
            None => Ok(()),
            Some(t) => Err(format!("unexpected {t} at end of line")),
        }
    }
}

/// Parses a dimension expression: `768`, `seq`, `2*seq + 1`, `batch*seq`, `seq - 1`.
fn dim(c: &mut Cursor) -> Result<Dim, String> {
    let mut total = Dim::known(0);
    let mut sign = 1;
    loop {
        let mut term = Dim::known(sign);
        loop {
            let w = c.word()?;
            // A negated symbol (`-seq`: the printer writes a polynomial whose first term is
            // negative so) lexes as one word.
            let (negated, name) = match w.strip_prefix('-') {
                Some(r) if r.parse::<i64>().is_err() => (true, r),
                _ => (false, w.as_str()),
            };
            let f = match name.parse::<i64>() {
                Ok(n) => Dim::known(n),
                Err(_) if !name.is_empty() && name.chars().all(|ch| ch.is_alphanumeric() || ch == '_') => match c.eat('/') {
                    true => Dim::quot(name, c.int::<i64>().ok().filter(|k| *k >= 2).ok_or("a size divides by an integer of 2 or more")?),
                    false => Dim::sym(name),
                },
                Err(_) => return Err(format!("bad dimension `{w}`")),
            };
            let f = if negated { f.scale(-1) } else { f };
            term = term.mul(&f);
            if !c.eat('*') {
                break;
            }
        }
        total = total.add(&term);
        sign = match c.peek() {
            Some(Tok::Punct('+')) => 1,
            Some(Tok::Word(w)) if w == "-" => -1,
            _ => return Ok(total),
        };
        c.pos += 1;
    }
}

fn dim_attr(c: &mut Cursor) -> Result<Dim, String> {
    if c.eat('(') {
        let d = dim(c)?;
        c.punct(')')?;
        Ok(d)
    } else {
        dim(c)
    }
}

fn ty(c: &mut Cursor) -> Result<TensorType, String> {
    let w = c.word()?;
    let dtype = DType::from_name(&w).ok_or_else(|| format!("unknown dtype `{w}`"))?;
    c.punct('[')?;
    let mut shape = Vec::new();
    if !c.eat(']') {
        loop {
            shape.push(dim(c)?);
            if c.eat(']') {
                break;
            }
            c.punct(',')?;
        }
    }
    Ok(TensorType::new(dtype, shape))
}

fn usize_list(c: &mut Cursor) -> Result<Vec<usize>, String> {
    c.punct('[')?;
    let mut out = Vec::new();
    if c.eat(']') {
        return Ok(out);
    }
    loop {
        out.push(c.int()?);
        if c.eat(']') {
            return Ok(out);
        }
        c.punct(',')?;
    }
}

/// Reads `key=` and checks the key.
fn key(c: &mut Cursor, k: &str) -> Result<(), String> {
    let w = c.word()?;
    if w != k {
        return Err(format!("expected attribute `{k}`, found `{w}`"));
    }
    c.punct('=')
}

fn boolean(c: &mut Cursor) -> Result<bool, String> {
    match c.word()?.as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        w => Err(format!("expected true or false, found `{w}`")),
    }
}

fn unary(w: &str) -> Result<crate::UnaryOp, String> {
    UNARY_OPS.iter().find(|(_, n)| *n == w).map(|(u, _)| *u).ok_or_else(|| format!("unknown activation `{w}`"))
}

fn node(c: &mut Cursor, expect_id: usize) -> Result<Node, String> {
    let id = c.value()?;
    if id.index() != expect_id {
        return Err(format!("expected %{expect_id}, found {id}: values are numbered in order"));
    }
    c.punct('=')?;
    let m = c.word()?;
    let op = match m.as_str() {
        "input" => Op::Input(c.string()?),
        "param" => {
            let name = c.string()?;
            key(c, "init")?;
            let kind = c.word()?;
            c.punct('(')?;
            let w = c.word()?;
            let v: f64 = w.parse().map_err(|_| format!("bad number `{w}`"))?;
            c.punct(')')?;
            let init = match kind.as_str() {
                // A negative σ draws as |σ| (as the language allows): only non-finite is refused.
                "normal" if !v.is_finite() => return Err(format!("normal({w}) needs a finite standard deviation")),
                "normal" => Init::Normal(v),
                "fill" => Init::Fill(v),
                k => return Err(format!("unknown initialiser `{k}`")),
            };
            Op::Param(name, init)
        }
        "const" => {
            let w = c.word()?;
            Op::Const(w.parse().map_err(|_| format!("bad constant `{w}`"))?)
        }
        _ => Op::Where, // placeholder, replaced below once operands are read
    };
    let mut inputs = Vec::new();
    if matches!(c.peek(), Some(Tok::Word(w)) if w.starts_with('%')) {
        loop {
            inputs.push(c.value()?);
            if !c.eat(',') {
                break;
            }
        }
    }
    let axis = |c: &mut Cursor| -> Result<usize, String> {
        key(c, "axis")?;
        c.int()
    };
    let op = match m.as_str() {
        "input" | "param" | "const" => op,
        "iota" => Op::Iota { axis: axis(c)? },
        "gather" => Op::Gather { axis: axis(c)? },
        "scatter_add" => Op::ScatterAdd { axis: axis(c)? },
        "concat" => Op::Concat { axis: axis(c)? },
        "cumsum" => Op::Cumsum { axis: axis(c)? },
        "window" => {
            key(c, "op")?;
            let op = match c.word()?.as_str() {
                "conv" => crate::WindowOp::Conv,
                "max" => crate::WindowOp::Max,
                "mean" => crate::WindowOp::Mean,
                other => return Err(format!("unknown window op `{other}` (conv, max, mean)")),
            };
            let axis = axis(c)?;
            key(c, "size")?;
            let size = c.int()?;
            key(c, "pad_left")?;
            Op::Window { op, axis, size, pad_left: c.int()? }
        }
        "segment" => {
            key(c, "op")?;
            let name = c.word()?;
            let op = ReduceOp::from_name(&name).ok_or_else(|| format!("unknown segment op `{name}` (sum, mean, max, min)"))?;
            Op::Segment { op, axis: axis(c)? }
        }
        "rfft" => Op::Rfft { axis: axis(c)? },
        "irfft" => {
            let axis = axis(c)?;
            key(c, "n")?;
            Op::Irfft { axis, n: dim_attr(c)? }
        }
        "fft" => {
            key(c, "axes")?;
            let axes = usize_list(c)?;
            key(c, "inverse")?;
            Op::Fft { axes, inverse: boolean(c)? }
        }
        "where" => Op::Where,
        "cast" => Op::Cast,
        "matmul" => Op::MatMul,
        "reshape" => Op::Reshape,
        "broadcast" => Op::Broadcast,
        "transpose" => {
            key(c, "perm")?;
            Op::Transpose(usize_list(c)?)
        }
        "slice" => {
            let axis = axis(c)?;
            key(c, "start")?;
            let start = dim_attr(c)?;
            key(c, "end")?;
            let end = dim_attr(c)?;
            key(c, "step")?;
            Op::Slice { axis, start, end, step: c.int()? }
        }
        "softmax" => Op::Softmax { axis: axis(c)? },
        "norm" => {
            key(c, "kind")?;
            let kind = match c.word()?.as_str() {
                "layer" => crate::NormKind::Layer,
                "rms" => crate::NormKind::Rms,
                w => return Err(format!("unknown norm kind `{w}`")),
            };
            key(c, "eps")?;
            let w = c.word()?;
            Op::Norm { kind, eps: w.parse().map_err(|_| format!("bad number `{w}`"))? }
        }
        "gemm" => {
            key(c, "bias")?;
            let bias = boolean(c)?;
            key(c, "act")?;
            let act = match c.word()?.as_str() {
                "none" => None,
                w => Some(unary(w)?),
            };
            key(c, "residual")?;
            Op::Gemm { bias, act, residual: boolean(c)? }
        }
        "ffn" => {
            key(c, "gated")?;
            let gated = boolean(c)?;
            key(c, "act")?;
            let act = unary(&c.word()?)?;
            key(c, "bias")?;
            Op::Ffn { gated, act, bias: boolean(c)? }
        }
        "scan" => {
            let axis = axis(c)?;
            key(c, "reverse")?;
            let reverse = boolean(c)?;
            key(c, "state")?;
            let state = c.int()?;
            key(c, "sliced")?;
            let sliced = c.int()?;
            Op::Scan(Box::new(crate::Scan { axis, reverse, state, sliced, body: Graph::new("body") }))
        }
        "topk" => {
            key(c, "k")?;
            let k = dim_attr(c)?;
            Op::TopK { k, axis: axis(c)? }
        }
        "route" => {
            key(c, "experts")?;
            Op::Route(Box::new(crate::Route { experts: c.int()?, body: Graph::new("body") }))
        }
        "proj" => {
            key(c, "index")?;
            Op::Proj(c.int()?)
        }
        "attention" => {
            key(c, "fn")?;
            Op::Attention(Box::new(crate::ScoreFn::parse(&c.string()?)?))
        }
        r if r.starts_with("reduce_") => {
            let op = ReduceOp::from_name(&r[7..]).ok_or_else(|| format!("unknown reduction `{}`", &r[7..]))?;
            key(c, "axes")?;
            let axes = usize_list(c)?;
            key(c, "keepdim")?;
            let keepdim = match c.word()?.as_str() {
                "true" => true,
                "false" => false,
                w => return Err(format!("expected true or false, found `{w}`")),
            };
            Op::Reduce { op, axes, keepdim }
        }
        other => {
            if let Some((u, _)) = UNARY_OPS.iter().find(|(_, n)| *n == other) {
                Op::Unary(*u)
            } else if let Some((b, _)) = BINARY_OPS.iter().find(|(_, n)| *n == other) {
                Op::Binary(*b)
            } else {
                return Err(format!("unknown op `{other}`"));
            }
        }
    };
    c.punct(':')?;
    let ty = ty(c)?;
    let mut span = Span::UNKNOWN;
    if matches!(c.peek(), Some(Tok::Word(w)) if w == "loc") {
        c.pos += 1;
        c.punct('(')?;
        span.file = c.int()?;
        c.punct(':')?;
        span.line = c.int()?;
        c.punct(':')?;
        span.col = c.int()?;
        c.punct(')')?;
    }
    // A region opens at the end of its node's line.
    match (op.region(), c.eat('{')) {
        (Some(_), true) => {}
        (Some(_), false) => return Err(format!("a {op}'s body opens with `{{` at the end of its line")),
        (_, true) => return Err(format!("{op} has no region")),
        _ => {}
    }
    c.done()?;
    Ok(Node { op, inputs, ty, span })
}

/// How deeply regions may nest in IR text (the verifier and the printer recurse).
const MAX_REGION_DEPTH: usize = 64;

/// Parses a graph from its text form.
pub fn parse(text: &str) -> Result<Graph, ParseError> {
    let mut graph: Option<Graph> = None;
    // Open regions: the node that owns each, and the body read so far.
    let mut regions: Vec<(Node, Graph)> = Vec::new();
    let mut closed = false;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split_once("//").map_or(raw, |(code, _)| code).trim();
        if line.is_empty() {
            continue;
        }
        let err = |msg: String| ParseError { line: i + 1, msg };
        if closed {
            return Err(err("text after the closing `}`".into()));
        }
        let mut c = Cursor { toks: lex(line).map_err(err)?, pos: 0 };
        let Some(g) = graph.as_mut() else {
            let header = (|| {
                if c.word()? != "graph" {
                    return Err("expected `graph NAME {`".to_string());
                }
                let name = c.word()?;
                c.punct('{')?;
                c.done()?;
                Ok(Graph::new(&name))
            })();
            graph = Some(header.map_err(err)?);
            continue;
        };
        let r: Result<(), String> = (|| {
            if c.peek() == Some(&Tok::Punct('}')) {
                c.pos += 1;
                match regions.pop() {
                    Some((mut owner, body)) => {
                        if let Some(region) = owner.op.region_mut() {
                            *region = body;
                        }
                        regions.last_mut().map_or(&mut *g, |(_, b)| b).push_unchecked(owner);
                    }
                    None => closed = true,
                }
                return c.done();
            }
            let in_region = !regions.is_empty();
            let g = regions.last_mut().map_or(g, |(_, body)| body);
            match c.peek() {
                Some(Tok::Word(w)) if w == "file" && in_region => return Err("a region has no file table".into()),
                Some(Tok::Word(w)) if w == "file" => {
                    c.pos += 1;
                    let n: usize = c.int()?;
                    if n != g.files.len() {
                        return Err(format!("expected file {}, found file {n}", g.files.len()));
                    }
                    g.files.push(c.string()?);
                }
                Some(Tok::Word(w)) if w == "output" => {
                    c.pos += 1;
                    let name = c.string()?;
                    c.punct('=')?;
                    g.outputs.push((name, c.value()?));
                }
                _ => {
                    let n = node(&mut c, g.len())?;
                    if n.op.region().is_some() {
                        if regions.len() >= MAX_REGION_DEPTH {
                            return Err(format!("regions nest more than {MAX_REGION_DEPTH} deep"));
                        }
                        regions.push((n, Graph::new("body")));
                    } else {
                        g.push_unchecked(n);
                    }
                }
            }
            c.done()
        })();
        r.map_err(err)?;
    }
    match (graph, closed) {
        (Some(_), false) if !regions.is_empty() => {
            Err(ParseError { line: text.lines().count().max(1), msg: "a region is not closed".into() })
        }
        (Some(g), true) => Ok(g),
        _ => Err(ParseError { line: text.lines().count().max(1), msg: "missing `graph NAME { ... }`".into() }),
    }
}

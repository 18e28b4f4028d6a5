//! Score functions: what a fused `attention` op does to each score before the softmax.
//!
//! A [`ScoreFn`] is a small scalar program over the raw score `S` (q·k), the batch `B`, head
//! `H`, query `I` and key `J` indices, and values of the op's extra operands (`L0`, `L1`, ..;
//! each broadcast to the score shape, or a 1-D table read by `gather`). Nodes refer to earlier
//! nodes by index; the last node is the result. The optimizer extracts it from the plain math
//! of the model (scale, score modifiers, masks, padding), so any variant a user writes fuses.
//!
//! [`ScoreFn::tile_class`] is the mask analysis: by interval arithmetic over a block of query
//! and key indices it proves a tile fully masked (every score replaced by the masking
//! constant), fully visible, or neither.

use crate::{BinaryOp, DType, UnaryOp, BINARY_OPS, UNARY_OPS};
use std::fmt;

/// A value a score function reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Var {
    /// The raw score q·k (f32).
    Score,
    /// The batch index.
    Batch,
    /// The query head index (0..heads).
    Head,
    /// The query position.
    Query,
    /// The key position.
    Key,
}

impl Var {
    fn letter(self) -> char {
        match self {
            Var::Score => 'S',
            Var::Batch => 'B',
            Var::Head => 'H',
            Var::Query => 'I',
            Var::Key => 'J',
        }
    }
}

/// One node of a score function.
#[derive(Clone, Debug, PartialEq)]
pub enum SNode {
    /// A variable.
    Var(Var),
    /// Extra operand `n` of the attention op, broadcast to the score shape.
    Leaf(u32),
    /// A constant.
    Const(f64),
    /// An elementwise op of one earlier node.
    Unary(UnaryOp, u32),
    /// An elementwise op of two earlier nodes.
    Binary(BinaryOp, u32, u32),
    /// `where(cond, a, b)`.
    Where(u32, u32, u32),
    /// Conversion to the node's dtype.
    Cast(u32),
    /// Element `index` of extra operand `n`, a 1-D table.
    Gather(u32, u32),
}

/// A scalar program applied to every attention score. See the module doc.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct ScoreFn {
    /// Nodes with their element types; operands refer to earlier nodes; the last is the result.
    pub nodes: Vec<(SNode, DType)>,
}

/// What the mask analysis proves about a (query block, key block) tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TileClass {
    /// Every score of the tile is masked: a kernel skips it.
    Dead,
    /// No score of the tile is masked: a kernel need not evaluate the mask.
    Full,
    /// Some may be masked.
    Partial,
}

/// Scores at or below this are masked (the language's masking constant is -1e30).
pub const MASK_THRESHOLD: f64 = -1e29;

impl ScoreFn {
    /// Evaluates the function at one score. `leaf(n)` gives extra operand `n` at this
    /// element; `table(n, k)` gives element `k` of extra operand `n`.
    pub fn eval(&self, vars: [f64; 5], leaf: &dyn Fn(u32) -> f64, table: &dyn Fn(u32, i64) -> f64) -> f64 {
        let mut vals = Vec::with_capacity(self.nodes.len());
        for (n, ty) in &self.nodes {
            let v = |k: &u32| vals.get(*k as usize).copied().unwrap_or(f64::NAN);
            let x = match n {
                SNode::Var(var) => vars[*var as usize],
                SNode::Leaf(k) => leaf(*k),
                SNode::Const(c) => *c,
                SNode::Unary(u, a) => u.eval(v(a)),
                SNode::Binary(b, x, y) => {
                    let int_operands = self.nodes.get(*x as usize).is_some_and(|(_, t)| *t == DType::I64);
                    b.eval(v(x), v(y), int_operands)
                }
                SNode::Where(c, a, b) => {
                    if v(c) != 0.0 {
                        v(a)
                    } else {
                        v(b)
                    }
                }
                SNode::Cast(a) => v(a),
                SNode::Gather(t, k) => table(*t, v(k) as i64),
            };
            vals.push(ty.store(x));
        }
        vals.last().copied().unwrap_or(f64::NAN)
    }

    /// The result node.
    fn root(&self) -> Option<usize> {
        self.nodes.len().checked_sub(1)
    }

    /// Mask predicates: the conditions of `where(c, x, MASKED)` nodes on the path from the
    /// result through the kept branch.
    pub fn mask_conditions(&self) -> Vec<usize> {
        let mut out = Vec::new();
        let mut at = self.root();
        while let Some(k) = at {
            match &self.nodes[k].0 {
                SNode::Where(c, x, m) if matches!(self.nodes.get(*m as usize), Some((SNode::Const(v), _)) if *v <= MASK_THRESHOLD) => {
                    out.push(*c as usize);
                    at = Some(*x as usize);
                }
                _ => at = None,
            }
        }
        out
    }

    /// Classifies the tile of queries `i.0..=i.1` and keys `j.0..=j.1` (see [`TileClass`]).
    pub fn tile_class(&self, i: (i64, i64), j: (i64, i64)) -> TileClass {
        self.tile_class_with(i, j, &|_| None)
    }

    /// For each tile of `tq` query rows out of `s`, the tiles of `tk` keys out of `t` that the
    /// mask analysis does not prove dead, by index, each with whether it is fully visible.
    pub fn live_tiles(&self, s: usize, t: usize, (tq, tk): (usize, usize)) -> Vec<Vec<(usize, bool)>> {
        let span = |k: usize, n: usize, len: usize| ((k * n) as i64, ((k + 1) * n).min(len) as i64 - 1);
        (0..s.div_ceil(tq.max(1)))
            .map(|qt| {
                (0..t.div_ceil(tk.max(1)))
                    .filter_map(|kt| match self.tile_class(span(qt, tq, s), span(kt, tk, t)) {
                        TileClass::Dead => None,
                        class => Some((kt, class == TileClass::Full)),
                    })
                    .collect()
            })
            .collect()
    }

    /// As [`Self::tile_class`], knowing the range of some extra operands over the tile (a
    /// padding mask that is all ones there makes a causal tile fully visible).
    pub fn tile_class_with(&self, i: (i64, i64), j: (i64, i64), leaf: &dyn Fn(u32) -> Option<(f64, f64)>) -> TileClass {
        let conds = self.mask_conditions();
        if conds.is_empty() {
            return TileClass::Full;
        }
        let iv = self.intervals(i, j, leaf);
        let mut all_true = true;
        for c in conds {
            match iv[c] {
                (lo, hi) if lo == 0.0 && hi == 0.0 => return TileClass::Dead,
                (lo, _) if lo > 0.0 => {}
                _ => all_true = false,
            }
        }
        if all_true {
            TileClass::Full
        } else {
            TileClass::Partial
        }
    }

    /// Bounds of every node over the tile (unknown values are (-inf, inf); booleans are 0/1).
    fn intervals(&self, i: (i64, i64), j: (i64, i64), leaf: &dyn Fn(u32) -> Option<(f64, f64)>) -> Vec<(f64, f64)> {
        const ANY: (f64, f64) = (f64::NEG_INFINITY, f64::INFINITY);
        let mut iv: Vec<(f64, f64)> = Vec::with_capacity(self.nodes.len());
        for (n, ty) in &self.nodes {
            let g = |k: &u32| iv.get(*k as usize).copied().unwrap_or(ANY);
            let r = match n {
                SNode::Var(Var::Query) => (i.0 as f64, i.1 as f64),
                SNode::Var(Var::Key) => (j.0 as f64, j.1 as f64),
                SNode::Leaf(k) => leaf(*k).unwrap_or(ANY),
                SNode::Var(_) | SNode::Gather(..) => ANY,
                SNode::Const(c) => (*c, *c),
                SNode::Cast(a) => {
                    let (lo, hi) = g(a);
                    match ty {
                        DType::Bool => bool_iv(lo > 0.0 || hi < 0.0, lo == 0.0 && hi == 0.0),
                        DType::I64 => (lo.trunc(), hi.trunc()),
                        DType::F32 => (lo, hi),
                    }
                }
                SNode::Unary(u, a) => {
                    let (lo, hi) = g(a);
                    match u {
                        UnaryOp::Neg => (-hi, -lo),
                        UnaryOp::Not => (1.0 - hi, 1.0 - lo),
                        UnaryOp::Abs if lo >= 0.0 => (lo, hi),
                        UnaryOp::Abs if hi <= 0.0 => (-hi, -lo),
                        UnaryOp::Abs => (0.0, hi.max(-lo)),
                        _ => ANY,
                    }
                }
                SNode::Binary(b, x, y) => binary_iv(*b, g(x), g(y), *ty == DType::I64),
                SNode::Where(c, a, b) => {
                    let (cl, ch) = g(c);
                    let (a, b) = (g(a), g(b));
                    if cl > 0.0 {
                        a
                    } else if ch == 0.0 && cl == 0.0 {
                        b
                    } else {
                        (a.0.min(b.0), a.1.max(b.1))
                    }
                }
            };
            iv.push(if r.0.is_nan() || r.1.is_nan() { ANY } else { r });
        }
        iv
    }

    /// A readable form (`where(J <= I, S * 0.125, -1e30)`), sharing expanded.
    pub fn pretty(&self) -> String {
        self.root().map_or_else(String::new, |r| self.pretty_node(r, 0))
    }

    /// The readable form of node `k`.
    pub fn pretty_at(&self, k: usize) -> String {
        if k < self.nodes.len() {
            self.pretty_node(k, 0)
        } else {
            String::new()
        }
    }

    /// `Some(c)` when the score before masking is just the raw score times a constant
    /// (`S`, `S * c`, `S / c`): then fully visible tiles need no per-score work but the scale.
    pub fn plain_scale(&self) -> Option<f64> {
        let k = self.unmasked()?;
        let is_score = |k: u32| matches!(self.nodes.get(k as usize), Some((SNode::Var(Var::Score), _)));
        let constant = |k: u32| match self.nodes.get(k as usize) {
            Some((SNode::Const(c), _)) => Some(*c),
            _ => None,
        };
        match &self.nodes[k].0 {
            SNode::Var(Var::Score) => Some(1.0),
            SNode::Binary(BinaryOp::Mul, a, b) if is_score(*a) => constant(*b),
            SNode::Binary(BinaryOp::Mul, a, b) if is_score(*b) => constant(*a),
            SNode::Binary(BinaryOp::Div, a, b) if is_score(*a) => constant(*b).map(|c| 1.0 / c),
            _ => None,
        }
    }

    /// The score before masking: the node under the mask `where`s of [`Self::mask_conditions`].
    pub fn unmasked(&self) -> Option<usize> {
        let mut at = self.root()?;
        while let SNode::Where(_, x, m) = &self.nodes[at].0 {
            if !matches!(self.nodes.get(*m as usize), Some((SNode::Const(v), _)) if *v <= MASK_THRESHOLD) {
                break;
            }
            at = *x as usize;
        }
        Some(at)
    }

    fn pretty_node(&self, k: usize, depth: usize) -> String {
        if depth > 12 {
            return "…".into();
        }
        let p = |x: &u32| self.pretty_node(*x as usize, depth + 1);
        match &self.nodes[k].0 {
            SNode::Var(v) => v.letter().to_string(),
            SNode::Leaf(n) => format!("L{n}"),
            SNode::Const(c) => format!("{c:?}"),
            SNode::Unary(u, a) => format!("{}({})", u.name(), p(a)),
            SNode::Binary(b, x, y) => match infix(*b) {
                Some(op) => format!("({} {op} {})", p(x), p(y)),
                None => format!("{}({}, {})", b.name(), p(x), p(y)),
            },
            SNode::Where(c, a, b) => format!("where({}, {}, {})", p(c), p(a), p(b)),
            SNode::Cast(a) => format!("{}({})", self.nodes[k].1, p(a)),
            SNode::Gather(t, i) => format!("L{t}[{}]", p(i)),
        }
    }

    /// Parses the text form written by `Display`.
    pub fn parse(s: &str) -> Result<ScoreFn, String> {
        let body = s.trim().strip_prefix('[').and_then(|r| r.strip_suffix(']')).ok_or("a score function is written [node; ...]")?;
        let mut f = ScoreFn::default();
        for item in body.split(';').map(str::trim).filter(|x| !x.is_empty()) {
            let (node, ty) = item.rsplit_once(':').ok_or_else(|| format!("`{item}`: missing `:type`"))?;
            let ty = DType::from_name(ty.trim()).ok_or_else(|| format!("`{item}`: unknown type"))?;
            f.nodes.push((parse_node(node.trim(), f.nodes.len())?, ty));
        }
        Ok(f)
    }
}

fn parse_node(s: &str, len: usize) -> Result<SNode, String> {
    let idx = |t: &str| -> Result<u32, String> {
        let k: u32 = t.trim().parse().map_err(|_| format!("`{t}` is not a node index"))?;
        if (k as usize) < len {
            Ok(k)
        } else {
            Err(format!("node {k} used before it is defined"))
        }
    };
    if let Some(c) = s.strip_prefix('#') {
        return c.parse().map(SNode::Const).map_err(|_| format!("bad constant `{s}`"));
    }
    match s {
        "S" => return Ok(SNode::Var(Var::Score)),
        "B" => return Ok(SNode::Var(Var::Batch)),
        "H" => return Ok(SNode::Var(Var::Head)),
        "I" => return Ok(SNode::Var(Var::Query)),
        "J" => return Ok(SNode::Var(Var::Key)),
        _ => {}
    }
    if let Some(n) = s.strip_prefix('L') {
        return n.parse().map(SNode::Leaf).map_err(|_| format!("bad leaf `{s}`"));
    }
    let (name, args) = s.strip_suffix(')').and_then(|r| r.split_once('(')).ok_or_else(|| format!("cannot read `{s}`"))?;
    let a: Vec<&str> = args.split(',').collect();
    let n = |k: usize| -> Result<u32, String> { idx(a.get(k).ok_or_else(|| format!("`{s}`: too few operands"))?) };
    Ok(match name {
        "where" => SNode::Where(n(0)?, n(1)?, n(2)?),
        "cast" => SNode::Cast(n(0)?),
        "gather" => SNode::Gather(a.first().and_then(|t| t.trim().strip_prefix('L')?.parse().ok()).ok_or("gather needs a leaf")?, n(1)?),
        _ => {
            if let Some((u, _)) = UNARY_OPS.iter().find(|(_, nm)| *nm == name) {
                SNode::Unary(*u, n(0)?)
            } else if let Some((b, _)) = BINARY_OPS.iter().find(|(_, nm)| *nm == name) {
                SNode::Binary(*b, n(0)?, n(1)?)
            } else {
                return Err(format!("unknown score op `{name}`"));
            }
        }
    })
}

fn infix(b: BinaryOp) -> Option<&'static str> {
    use BinaryOp::*;
    Some(match b {
        Add => "+",
        Sub => "-",
        Mul => "*",
        Div => "/",
        Eq => "==",
        Ne => "!=",
        Lt => "<",
        Le => "<=",
        Gt => ">",
        Ge => ">=",
        And => "and",
        Or => "or",
        _ => return None,
    })
}

fn bool_iv(surely_true: bool, surely_false: bool) -> (f64, f64) {
    if surely_true {
        (1.0, 1.0)
    } else if surely_false {
        (0.0, 0.0)
    } else {
        (0.0, 1.0)
    }
}

fn binary_iv(b: BinaryOp, x: (f64, f64), y: (f64, f64), int: bool) -> (f64, f64) {
    use BinaryOp::*;
    let products = || [x.0 * y.0, x.0 * y.1, x.1 * y.0, x.1 * y.1];
    match b {
        Add => (x.0 + y.0, x.1 + y.1),
        Sub => (x.0 - y.1, x.1 - y.0),
        Mul => {
            let p = products();
            (p.iter().copied().fold(f64::INFINITY, f64::min), p.iter().copied().fold(f64::NEG_INFINITY, f64::max))
        }
        Div if y.0 > 0.0 && y.0 == y.1 => {
            let (lo, hi) = (x.0 / y.0, x.1 / y.0);
            if int {
                (lo.floor(), hi.floor())
            } else {
                (lo, hi)
            }
        }
        Max => (x.0.max(y.0), x.1.max(y.1)),
        Min => (x.0.min(y.0), x.1.min(y.1)),
        Lt => bool_iv(x.1 < y.0, x.0 >= y.1),
        Le => bool_iv(x.1 <= y.0, x.0 > y.1),
        Gt => bool_iv(x.0 > y.1, x.1 <= y.0),
        Ge => bool_iv(x.0 >= y.1, x.1 < y.0),
        Eq => bool_iv(x.0 == x.1 && y.0 == y.1 && x.0 == y.0, x.1 < y.0 || x.0 > y.1),
        Ne => bool_iv(x.1 < y.0 || x.0 > y.1, x.0 == x.1 && y.0 == y.1 && x.0 == y.0),
        And => (x.0.min(y.0), x.1.min(y.1)),
        Or => (x.0.max(y.0), x.1.max(y.1)),
        _ => (f64::NEG_INFINITY, f64::INFINITY),
    }
}

impl fmt::Display for ScoreFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (k, (n, ty)) in self.nodes.iter().enumerate() {
            if k > 0 {
                f.write_str("; ")?;
            }
            match n {
                SNode::Var(v) => write!(f, "{}", v.letter())?,
                SNode::Leaf(l) => write!(f, "L{l}")?,
                SNode::Const(c) => write!(f, "#{c:?}")?,
                SNode::Unary(u, a) => write!(f, "{}({a})", u.name())?,
                SNode::Binary(b, x, y) => write!(f, "{}({x},{y})", b.name())?,
                SNode::Where(c, a, b) => write!(f, "where({c},{a},{b})")?,
                SNode::Cast(a) => write!(f, "cast({a})")?,
                SNode::Gather(t, i) => write!(f, "gather(L{t},{i})")?,
            }
            write!(f, ":{ty}")?;
        }
        f.write_str("]")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn causal_window(w: f64) -> ScoreFn {
        // where((J <= I) and (I - J < w), S * 0.5, -1e30)
        ScoreFn::parse(&format!(
            "[S:f32; I:i64; J:i64; le(2,1):bool; sub(1,2):i64; #{w:?}:i64; lt(4,5):bool; and(3,6):bool; #0.5:f32; mul(0,8):f32; #-1e30:f32; where(7,9,10):f32]"
        ))
        .unwrap()
    }

    #[test]
    fn text_round_trips_and_evaluates() {
        let f = causal_window(4.0);
        assert_eq!(ScoreFn::parse(&f.to_string()).unwrap(), f);
        let at = |i: f64, j: f64| f.eval([3.0, 0.0, 0.0, i, j], &|_| 0.0, &|_, _| 0.0);
        assert_eq!(at(5.0, 5.0), 1.5);
        assert_eq!(at(5.0, 2.0), 1.5);
        let masked = f64::from(-1e30f32);
        assert_eq!(at(5.0, 1.0), masked);
        assert_eq!(at(5.0, 6.0), masked);
        assert_eq!(f.pretty(), "where(((J <= I) and ((I - J) < 4.0)), (S * 0.5), -1e30)");
    }

    /// Tile classes from the interval analysis agree with evaluating every point, and dead
    /// tiles are exactly those with no visible score.
    #[test]
    fn tile_classes_are_exact_for_window_masks() {
        for w in [3.0, 8.0, 1000.0] {
            let f = causal_window(w);
            for (i0, j0) in [(0, 0), (8, 0), (0, 8), (16, 0), (32, 24), (24, 32)] {
                let (i, j) = ((i0, i0 + 7), (j0, j0 + 7));
                let visible =
                    (i.0..=i.1).flat_map(|a| (j.0..=j.1).map(move |b| (a, b))).filter(|&(a, b)| b <= a && ((a - b) as f64) < w).count();
                let want = match visible {
                    0 => TileClass::Dead,
                    64 => TileClass::Full,
                    _ => TileClass::Partial,
                };
                assert_eq!(f.tile_class(i, j), want, "w={w} tile ({i0},{j0})");
            }
        }
    }
}

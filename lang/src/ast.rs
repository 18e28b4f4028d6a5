//! The typed syntax tree. Every node carries the [`Span`] of the text it came from.

use std::rc::Rc;
use tessera_ir::DType;

/// Index of a file in a [`crate::SourceMap`].
pub type FileId = u32;

/// A byte range of one source file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Span {
    /// The file.
    pub file: FileId,
    /// First byte.
    pub start: u32,
    /// One past the last byte.
    pub end: u32,
}

/// A name with its location.
#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    /// The name.
    pub name: String,
    /// Where it is written.
    pub span: Span,
}

/// One parsed file.
#[derive(Clone, Debug)]
pub struct Module {
    /// The file it was parsed from.
    pub file: FileId,
    /// `import` items.
    pub imports: Vec<Import>,
    /// Definitions in source order.
    pub defs: Vec<Rc<Def>>,
}

/// `import nn` or `import nn as n`.
#[derive(Clone, Debug)]
pub struct Import {
    /// The module imported (a file `NAME.tsr` beside the importer or in the stdlib).
    pub module: Ident,
    /// The name it is bound to.
    pub alias: Ident,
}

/// What a definition defines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefKind {
    /// A predicate on (query index, key index).
    Mask,
    /// A rewrite of one attention score.
    Score,
    /// A reusable piece of network.
    Block,
    /// A whole model with inputs and outputs.
    Model,
    /// How a standard checkpoint (config keys, tensor names) maps onto the model of the same
    /// name.
    Checkpoint,
}

impl DefKind {
    /// The keyword.
    pub fn keyword(self) -> &'static str {
        match self {
            DefKind::Mask => "mask",
            DefKind::Score => "score",
            DefKind::Block => "block",
            DefKind::Model => "model",
            DefKind::Checkpoint => "checkpoint",
        }
    }
}

/// A `mask`, `score`, `block` or `model` definition. Several parameter lists make a curried
/// definition: `mask window(w: int)(i, j) = ...` is applied as `window(128)(i, j)`.
#[derive(Clone, Debug)]
pub struct Def {
    /// What it defines.
    pub kind: DefKind,
    /// Its name.
    pub name: Ident,
    /// Parameter lists, applied one call at a time.
    pub params: Vec<Vec<HParam>>,
    /// The statements, or the single expression of `= expr` forms.
    pub body: Body,
    /// The whole definition.
    pub span: Span,
}

/// A definition's body.
#[derive(Clone, Debug)]
pub enum Body {
    /// `= expr`
    Expr(Expr),
    /// `{ stmts }`
    Block(Vec<Stmt>),
}

/// A parameter of a definition (a hyper-parameter for models).
#[derive(Clone, Debug)]
pub struct HParam {
    /// The name.
    pub name: Ident,
    /// The declared type, if any.
    pub ty: Option<TypeAnn>,
    /// The default, if any.
    pub default: Option<Expr>,
}

/// A type annotation.
#[derive(Clone, Debug)]
pub enum TypeAnn {
    /// `int`, `float`, `bool`, `str`, `mask`, `score` or `fn`.
    Scalar(String, Span),
    /// `f32[batch, seq, d]`, `[.., d]`.
    Tensor(TensorAnn),
}

/// A tensor type: optional dtype and dimension patterns.
#[derive(Clone, Debug)]
pub struct TensorAnn {
    /// The element type, if written.
    pub dtype: Option<DType>,
    /// Dimensions, outermost first.
    pub dims: Vec<DimPat>,
    /// The whole annotation.
    pub span: Span,
}

/// One dimension of a tensor annotation.
#[derive(Clone, Debug)]
pub enum DimPat {
    /// `..`: any number of leading or inner axes.
    Ellipsis(Span),
    /// A size expression; a fresh name binds (in block parameters) or declares a symbol (in
    /// model inputs).
    Expr(Expr),
}

/// A statement.
#[derive(Clone, Debug)]
pub enum Stmt {
    /// `input name: dtype[dims]`
    Input {
        /// The input's name.
        name: Ident,
        /// Its declared type.
        ty: TensorAnn,
    },
    /// `param name: [dims] = init`
    Param {
        /// The local name (prefixed with the block path in the IR).
        name: Ident,
        /// Its declared type.
        ty: TensorAnn,
        /// Initialiser for random weights (`ones`, `zeros`, `normal(0.02)`).
        init: Option<Expr>,
    },
    /// `output name = expr`
    Output {
        /// The output's name.
        name: Ident,
        /// Its value.
        value: Expr,
    },
    /// `a, b = expr`
    Assign {
        /// Names bound, in order.
        names: Vec<Ident>,
        /// The value (a tuple when several names).
        value: Expr,
    },
    /// `for var in lo..hi { body }`, unrolled at elaboration.
    For {
        /// The loop variable.
        var: Ident,
        /// First value.
        lo: Expr,
        /// One past the last value.
        hi: Expr,
        /// Statements.
        body: Vec<Stmt>,
        /// The whole loop.
        span: Span,
    },
    /// `if cond { } else { }` on a compile-time condition.
    If {
        /// Condition.
        cond: Expr,
        /// Statements when true.
        then: Vec<Stmt>,
        /// Statements when false.
        els: Vec<Stmt>,
    },
    /// `return a, b`
    Return {
        /// Values.
        values: Vec<Expr>,
        /// The statement.
        span: Span,
    },
    /// `"pattern" <- expr` in a `checkpoint`: parameters matching the pattern are computed
    /// from checkpoint tensors.
    Map {
        /// The parameter name pattern (`layers.{l}.attn.q.weight`).
        pattern: String,
        /// The pattern literal.
        span: Span,
        /// The checkpoint tensor expression.
        value: Expr,
    },
    /// An expression evaluated for its errors only.
    Expr(Expr),
}

/// An expression with its span.
#[derive(Clone, Debug)]
pub struct Expr {
    /// What it is.
    pub kind: ExprKind,
    /// Where it is written.
    pub span: Span,
}

/// Binary operators of the language.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `//`
    FloorDiv,
    /// `%`
    Rem,
    /// `**`
    Pow,
    /// `@`
    MatMul,
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `and`
    And,
    /// `or`
    Or,
}

/// Unary operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnOp {
    /// `-x`
    Neg,
    /// `not x`
    Not,
}

/// Expression forms.
#[derive(Clone, Debug)]
pub enum ExprKind {
    /// Integer literal.
    Int(i64),
    /// Float literal.
    Float(f64),
    /// String literal.
    Str(String),
    /// `true` / `false`.
    Bool(bool),
    /// `none`.
    None,
    /// A name.
    Name(String),
    /// `(a, b)`
    Tuple(Vec<Expr>),
    /// `[a, b]`
    List(Vec<Expr>),
    /// `op x`
    Unary(UnOp, Box<Expr>),
    /// `a op b`
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// `f(args) [as label]`
    Call {
        /// What is called.
        callee: Box<Expr>,
        /// Arguments.
        args: Vec<Arg>,
        /// Scope name for the parameters of a block call.
        label: Option<Ident>,
        /// `as shared NAME`: the call uses the parameters already declared in that scope.
        shared: bool,
    },
    /// `x[items]`
    Index {
        /// The indexed value.
        base: Box<Expr>,
        /// Indices, slices, `..` and `none` (new axis).
        items: Vec<IndexItem>,
    },
    /// `a.name`
    Member {
        /// The module or tensor.
        base: Box<Expr>,
        /// The member.
        name: Ident,
    },
    /// An inline parameter declaration: `x @ param w: [d, vocab]`.
    Param {
        /// The local name.
        name: Ident,
        /// Its declared type.
        ty: TensorAnn,
    },
    /// `scan(xs, init = h0, axis = 1, reverse = false) |h, x_t| { ...; return y_t, h }`: a
    /// recurrence; the body names the states, then the slices.
    Scan {
        /// The call's arguments.
        args: Vec<Arg>,
        /// The body's parameters: the states, then one per sliced tensor.
        params: Vec<Ident>,
        /// The body (`None` when written without one).
        body: Option<Vec<Stmt>>,
    },
    /// `route(x, logits, k = 2, gate = "topk_softmax") |x_e, e| { ...; return y_e }`: each
    /// row of `x` goes to the `k` experts its logits rank highest; the body is one expert.
    Route {
        /// The call's arguments.
        args: Vec<Arg>,
        /// The body's parameters: the rows, then optionally the expert index.
        params: Vec<Ident>,
        /// The body (`None` when written without one).
        body: Option<Vec<Stmt>>,
    },
}

/// A call argument.
#[derive(Clone, Debug)]
pub struct Arg {
    /// The name of a named argument.
    pub name: Option<Ident>,
    /// The value.
    pub value: Expr,
}

/// One item of an index expression.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum IndexItem {
    /// An integer (selects, removing the axis), a tensor (gathers) or `none` (new axis).
    Expr(Expr),
    /// `start:end:step`, each optional.
    Slice {
        /// First index.
        start: Option<Expr>,
        /// One past the last.
        end: Option<Expr>,
        /// Stride.
        step: Option<Expr>,
        /// The slice.
        span: Span,
    },
    /// `..`: the remaining axes.
    Ellipsis(Span),
}

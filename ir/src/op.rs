//! The closed set of IR operations and their scalar semantics.
//!
//! Ops are few and orthogonal. Composite layers (norms, attention, MLPs, softmax) are built
//! from these by the language; fused ops are added by the optimizer in a later stage.

use crate::Dim;
use std::fmt;

/// Elementwise operations of one operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    /// `-x`
    Neg,
    /// `|x|`
    Abs,
    /// `e^x`
    Exp,
    /// natural logarithm
    Log,
    /// square root
    Sqrt,
    /// `1/sqrt(x)`
    Rsqrt,
    /// `max(x, 0)`
    Relu,
    /// GELU, exact form `x/2 (1 + erf(x/√2))`
    GeluErf,
    /// GELU, tanh approximation
    GeluTanh,
    /// `x * sigmoid(x)`
    Silu,
    /// `1 / (1 + e^-x)`
    Sigmoid,
    /// hyperbolic tangent
    Tanh,
    /// `log(1 + e^x)`
    Softplus,
    /// sine
    Sin,
    /// cosine
    Cos,
    /// logical not (bool)
    Not,
}

/// Every unary op with its textual name, in one table for the printer and the parser.
pub const UNARY_OPS: &[(UnaryOp, &str)] = &[
    (UnaryOp::Neg, "neg"),
    (UnaryOp::Abs, "abs"),
    (UnaryOp::Exp, "exp"),
    (UnaryOp::Log, "log"),
    (UnaryOp::Sqrt, "sqrt"),
    (UnaryOp::Rsqrt, "rsqrt"),
    (UnaryOp::Relu, "relu"),
    (UnaryOp::GeluErf, "gelu"),
    (UnaryOp::GeluTanh, "gelu_tanh"),
    (UnaryOp::Silu, "silu"),
    (UnaryOp::Sigmoid, "sigmoid"),
    (UnaryOp::Tanh, "tanh"),
    (UnaryOp::Softplus, "softplus"),
    (UnaryOp::Sin, "sin"),
    (UnaryOp::Cos, "cos"),
    (UnaryOp::Not, "not"),
];

impl UnaryOp {
    /// Applies the op to one value (booleans are 0.0/1.0). This is the definition of the op's
    /// semantics, shared by constant folding and the interpreter.
    pub fn eval(self, x: f64) -> f64 {
        match self {
            UnaryOp::Neg => -x,
            UnaryOp::Abs => x.abs(),
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => x.ln(),
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Rsqrt => 1.0 / x.sqrt(),
            // NaN stays NaN (torch's relu): `f64::max` would drop it.
            UnaryOp::Relu => {
                if x < 0.0 {
                    0.0
                } else {
                    x
                }
            }
            UnaryOp::GeluErf => 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)),
            UnaryOp::GeluTanh => {
                let c = (2.0 / std::f64::consts::PI).sqrt();
                0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
            }
            UnaryOp::Silu => x / (1.0 + (-x).exp()),
            UnaryOp::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            UnaryOp::Tanh => x.tanh(),
            UnaryOp::Softplus => {
                // log(1 + e^x) without overflow for large x.
                if x > 30.0 {
                    x
                } else {
                    x.exp().ln_1p()
                }
            }
            UnaryOp::Sin => x.sin(),
            UnaryOp::Cos => x.cos(),
            UnaryOp::Not => f64::from(x == 0.0),
        }
    }

    /// The op's name in the IR text.
    pub fn name(self) -> &'static str {
        UNARY_OPS.iter().find(|(o, _)| *o == self).map_or("?", |(_, n)| n)
    }
}

/// Elementwise operations of two operands, with numpy-style broadcasting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    /// `a + b`
    Add,
    /// `a - b`
    Sub,
    /// `a * b`
    Mul,
    /// `a / b` (integer division truncates toward negative infinity for i64)
    Div,
    /// `a ** b`
    Pow,
    /// `max(a, b)`
    Max,
    /// `min(a, b)`
    Min,
    /// `a % b` (sign of b, as in Python)
    Rem,
    /// `a == b`
    Eq,
    /// `a != b`
    Ne,
    /// `a < b`
    Lt,
    /// `a <= b`
    Le,
    /// `a > b`
    Gt,
    /// `a >= b`
    Ge,
    /// logical and (bool)
    And,
    /// logical or (bool)
    Or,
}

/// Every binary op with its textual name.
pub const BINARY_OPS: &[(BinaryOp, &str)] = &[
    (BinaryOp::Add, "add"),
    (BinaryOp::Sub, "sub"),
    (BinaryOp::Mul, "mul"),
    (BinaryOp::Div, "div"),
    (BinaryOp::Pow, "pow"),
    (BinaryOp::Max, "max"),
    (BinaryOp::Min, "min"),
    (BinaryOp::Rem, "rem"),
    (BinaryOp::Eq, "eq"),
    (BinaryOp::Ne, "ne"),
    (BinaryOp::Lt, "lt"),
    (BinaryOp::Le, "le"),
    (BinaryOp::Gt, "gt"),
    (BinaryOp::Ge, "ge"),
    (BinaryOp::And, "and"),
    (BinaryOp::Or, "or"),
];

impl BinaryOp {
    /// Whether the result is a boolean.
    pub fn is_comparison(self) -> bool {
        use BinaryOp::*;
        matches!(self, Eq | Ne | Lt | Le | Gt | Ge)
    }

    /// Whether the operands are booleans.
    pub fn is_logical(self) -> bool {
        matches!(self, BinaryOp::And | BinaryOp::Or)
    }

    /// Applies the op to two values. `int` selects integer semantics for `div` and `rem`.
    pub fn eval(self, a: f64, b: f64, int: bool) -> f64 {
        use BinaryOp::*;
        match self {
            Add => a + b,
            Sub => a - b,
            Mul => a * b,
            Div if int => (a / b).floor(),
            Div => a / b,
            Pow => a.powf(b),
            // NaN propagates (torch's maximum/minimum), unlike `f64::max`.
            Max => nan_max(a, b),
            Min => nan_min(a, b),
            Rem => a - b * (a / b).floor(),
            Eq => f64::from(a == b),
            Ne => f64::from(a != b),
            Lt => f64::from(a < b),
            Le => f64::from(a <= b),
            Gt => f64::from(a > b),
            Ge => f64::from(a >= b),
            And => f64::from(a != 0.0 && b != 0.0),
            Or => f64::from(a != 0.0 || b != 0.0),
        }
    }

    /// The op's name in the IR text.
    pub fn name(self) -> &'static str {
        BINARY_OPS.iter().find(|(o, _)| *o == self).map_or("?", |(_, n)| n)
    }
}

/// The larger of two values, NaN if either is NaN: Tessera's one definition of `maximum`,
/// `max` reductions and max pools on every backend (as torch's `maximum` and `amax`).
pub fn nan_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

/// The smaller of two values, NaN if either is NaN (see [`nan_max`]).
pub fn nan_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.min(b)
    }
}

/// What a sliding window ([`Op::Window`]) computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WindowOp {
    /// A depthwise convolution by a `[size, channels]` filter.
    Conv,
    /// The maximum of the window.
    Max,
    /// The mean of the window's positions inside the axis.
    Mean,
}

impl WindowOp {
    /// The name in IR text.
    pub fn name(self) -> &'static str {
        match self {
            WindowOp::Conv => "conv",
            WindowOp::Max => "max",
            WindowOp::Mean => "mean",
        }
    }
}

/// Reductions over a set of axes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    /// Sum.
    Sum,
    /// Arithmetic mean.
    Mean,
    /// Maximum.
    Max,
    /// Minimum.
    Min,
}

impl ReduceOp {
    /// The op's name in the IR text (prefixed `reduce_`).
    pub fn name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Mean => "mean",
            ReduceOp::Max => "max",
            ReduceOp::Min => "min",
        }
    }

    /// The op of an IR-text name ([`ReduceOp::name`]).
    pub fn from_name(name: &str) -> Option<ReduceOp> {
        [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max, ReduceOp::Min].into_iter().find(|o| o.name() == name)
    }
}

/// How a parameter is initialised when no checkpoint provides it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// Normal with mean 0 and this standard deviation.
    Normal(f64),
    /// Every element equal to this value.
    Fill(f64),
}

impl std::fmt::Display for Init {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Init::Normal(s) => write!(f, "normal({s:?})"),
            Init::Fill(v) => write!(f, "fill({v:?})"),
        }
    }
}

/// Which normalisation a fused `norm` computes over the last axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NormKind {
    /// `(x - mean) / sqrt(var + eps)`.
    Layer,
    /// `x / sqrt(mean(x²) + eps)`.
    Rms,
}

/// One IR operation. Attributes live here; the result type lives on the node.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// A model input, by name. No operands; the node's type is the declared type.
    Input(String),
    /// A learned parameter, by hierarchical name (`layers.3.attn.wq`), with the initialisation
    /// used when no checkpoint provides it. No operands.
    Param(String, Init),
    /// A constant filled with one value; the node's type gives dtype and shape.
    Const(f64),
    /// Indices along `axis` (i64), broadcast over the node's shape.
    Iota {
        /// The axis whose index is the value.
        axis: usize,
    },
    /// Elementwise op of one operand.
    Unary(UnaryOp),
    /// Elementwise op of two operands, broadcast.
    Binary(BinaryOp),
    /// `where(cond, a, b)`, broadcast.
    Where,
    /// Converts to the node's element type.
    Cast,
    /// Batched matrix product `[.., m, k] @ [.., k, n]`, batch axes broadcast.
    MatMul,
    /// Permutes axes: result axis `i` is operand axis `perm[i]`.
    Transpose(Vec<usize>),
    /// Same elements in row-major order, the node's shape.
    Reshape,
    /// Numpy-style broadcast to the node's shape.
    Broadcast,
    /// Reduction over `axes`; `keepdim` keeps them with size 1.
    Reduce {
        /// Which reduction.
        op: ReduceOp,
        /// Sorted, distinct axes.
        axes: Vec<usize>,
        /// Keep reduced axes as size 1.
        keepdim: bool,
    },
    /// `table` indexed along `axis` by integer `indices`: result shape is
    /// `table[..axis] ++ indices ++ table[axis+1..]`.
    Gather {
        /// Indexed axis of the table.
        axis: usize,
    },
    /// `x` with `updates` added at `indices` along `axis`, batched over the axes before it (the
    /// inverse of a batched gather): operands `x: f32[lead.., n, rest..]`, `indices:
    /// i64[lead.., m]`, `updates: f32[lead.., m, rest..]`; the result is `x` with
    /// `updates[lead, j, rest]` added to position `indices[lead, j]`, for `j` in order (a
    /// repeated index adds every update). An index outside `0..n` is a run-time error.
    ScatterAdd {
        /// The axis the indices address.
        axis: usize,
    },
    /// Elements `start, start+step, ..` below `end` along `axis`.
    Slice {
        /// The sliced axis.
        axis: usize,
        /// First index.
        start: Dim,
        /// One past the last index.
        end: Dim,
        /// Stride (≥ 1; > 1 only for constant bounds).
        step: i64,
    },
    /// Concatenation of all operands along `axis`.
    Concat {
        /// The joined axis.
        axis: usize,
    },
    /// A sliding window along `axis`: output position `t` combines the operand's positions
    /// `t - pad_left .. t - pad_left + size` that lie inside the axis (the others are left
    /// out: zero padding for `Conv`). `Conv` is a depthwise convolution (cross-correlation, as
    /// torch's `conv1d` with `groups` = channels): the second operand `w: [size, c]` weights
    /// each position per channel, `axis` is the one before the channels (the last). `Max` and
    /// `Mean` pool (the mean over the positions present). The result has the operand's type.
    Window {
        /// What the window computes.
        op: WindowOp,
        /// The axis it slides along.
        axis: usize,
        /// Its length.
        size: usize,
        /// How many positions it reaches before the output's (`size - 1`: causal).
        pad_left: usize,
    },
    /// Pooling over segments given by ids: the operands are `x: [lead.., n, rest..]` (f32)
    /// and `ids: [lead.., n]` (i64), `axis` the one of `n`; output position `t` reduces by `op`
    /// the positions `u` of its row with `ids[.., u] == ids[.., t]` (PoNet's segment max: each
    /// token gets the max over its sentence). Segments need not be contiguous; ids compare
    /// exactly up to 2^53 (the interpreter and the CPU read them as f64). The result has
    /// `x`'s type.
    Segment {
        /// How a segment is reduced.
        op: ReduceOp,
        /// The axis of the positions (the ids' last).
        axis: usize,
    },
    /// Inclusive prefix sum along `axis`.
    Cumsum {
        /// The scanned axis.
        axis: usize,
    },
    /// Discrete Fourier transform over `axes` of a complex tensor stored as pairs: the last
    /// axis has size 2 (real, imaginary), as `torch.view_as_real`, and `axes` (sorted,
    /// distinct, not empty) exclude it. Forward: `X[k] = Σ_j x[j]·e^(-2πi·jk/n)` along each
    /// axis; `inverse`: `e^(+2πi·jk/n)` and divided by `n` (NumPy's default scaling). The
    /// result has the operand's type.
    Fft {
        /// Transformed axes.
        axes: Vec<usize>,
        /// The inverse transform.
        inverse: bool,
    },
    /// The DFT of a real tensor along `axis`, non-negative frequencies only:
    /// `f32[.., n, ..]` → `f32[.., n/2+1, .., 2]` (pairs as for `Fft`).
    Rfft {
        /// The transformed axis.
        axis: usize,
    },
    /// The inverse of `Rfft`: a half spectrum `f32[.., n/2+1, .., 2]` → real `f32[.., n, ..]`,
    /// divided by `n`. The imaginary parts of bin 0 (and of bin `n/2` for even `n`) are
    /// ignored, as in NumPy.
    Irfft {
        /// The transformed axis (of the result; the operand's pair axis comes last).
        axis: usize,
        /// The length of the real signal.
        n: Dim,
    },
    /// A recurrence along an axis: the region `Scan::body` runs once per position of the
    /// sliced operands' `axis`, carrying state from one step to the next. Operands: the initial
    /// states, the sliced tensors, then the invariants (values the body reads whole: weights,
    /// captured tensors). Results: each per-step output stacked along `axis`, then each final
    /// state. The node's value is the tuple of results, read only through [`Op::Proj`]; its
    /// own type is that of result 0 (see [`crate::scan_results`]).
    Scan(Box<Scan>),
    /// The `k` largest elements along `axis`, sorted in decreasing order: two results, the
    /// values (the operand's type with `axis` of size `k`) and their indices (i64, same
    /// shape), read through [`Op::Proj`]. Ties keep the lower index first, as `torch.topk`
    /// on the CPU; NaN counts as larger than every number (torch's order).
    TopK {
        /// How many elements (1 ≤ k ≤ the axis' size): a constant, or a size known when the
        /// program runs (`seq/8`: Mixture-of-Depths' capacity).
        k: Dim,
        /// The axis searched.
        axis: usize,
    },
    /// Token routing to experts (mixture-of-experts): the region [`Route::body`] runs once per
    /// expert over the rows of `x` routed to it, and each row's result is the weighted sum of
    /// its experts' outputs. Operands: `x [.., d]` (rows are the leading axes), the chosen
    /// experts `idx: i64[.., k]`, their weights `w: f32[.., k]`, then the stacked operands
    /// `[experts, ..]` whose slice `e` expert `e` reads (its parameters). Result:
    /// `y[t] = Σ_j w[t, j] · body(idx[t, j])(x[t])`, of shape `[.., d_out]`. A row routed twice
    /// to one expert counts twice; an index outside `0..experts` is a run-time error.
    Route(Box<Route>),
    /// Result `0` of a multi-result node (its only operand). The type is declared and must
    /// equal that result's type.
    Proj(usize),
    // ---- Fused ops: only the optimizer creates these.
    /// Numerically stable softmax along `axis` (max subtracted before `exp`).
    Softmax {
        /// The normalised axis.
        axis: usize,
    },
    /// Normalisation over the last axis; operands `x`, then optionally `weight` (multiplied)
    /// and `bias` (added).
    Norm {
        /// Layer norm or RMS norm.
        kind: NormKind,
        /// Added to the variance.
        eps: f64,
    },
    /// `a @ b`, then `+ bias` (operand 3 when `bias`), then `act`, then `+ residual` (the
    /// last operand when `residual`).
    Gemm {
        /// A bias operand follows `b`.
        bias: bool,
        /// Activation applied after the bias.
        act: Option<UnaryOp>,
        /// A residual operand comes last.
        residual: bool,
    },
    /// A feed-forward block: operands `x, w_in, [b_in], w_out, [b_out]`. Plain:
    /// `act(x @ w_in + b_in) @ w_out + b_out`. Gated: `x @ w_in` is `[gate | up]` (one GEMM
    /// for both) and the hidden value is `act(gate) * up`.
    Ffn {
        /// GLU-family (gate and up halves) rather than a plain MLP.
        gated: bool,
        /// The activation.
        act: UnaryOp,
        /// Biases follow the weights.
        bias: bool,
    },
    /// Fused attention `softmax(f(q·kᵀ)) @ v` over the last two axes, never materialising the
    /// scores: operands `q [.., s, e]`, `k [.., t, e]`, `v [.., t, ev]` (batch axes broadcast,
    /// so grouped-query heads share k and v), then the score function's extra operands. In
    /// `f`, `B` is the index of axis 0 and `H` the row-major index over axes `1..rank-2`.
    Attention(Box<crate::ScoreFn>),
}

/// The region and attributes of [`Op::Scan`].
///
/// The body is a graph of its own: its `input` nodes are its arguments, in node order the
/// `state` carried values, the `sliced` step slices (the operand without `axis`), then one per
/// invariant operand; its outputs are the per-step results followed by the `state` new states
/// (each of its state argument's type). Its spans index the enclosing graph's file table, its
/// own table is empty, and it has no `param` nodes: a value enters only as an argument and
/// leaves only as a result.
#[derive(Clone, Debug, PartialEq)]
pub struct Scan {
    /// The axis of the sliced operands that the scan walks, and of the stacked results.
    pub axis: usize,
    /// Walk from the last position to the first (the stacked results keep positions).
    pub reverse: bool,
    /// How many carried states (the first operands and the last body outputs).
    pub state: usize,
    /// How many sliced operands (after the states; at least one).
    pub sliced: usize,
    /// The step.
    pub body: crate::Graph,
}

/// The region and attributes of [`Op::Route`].
///
/// The body is a graph of its own (spans, parameters and file table as for [`Scan`]): its
/// arguments, in node order, are the rows routed to one expert `[ROUTED, d]`, whose first axis
/// is the symbol [`Route::ROWS`] bound per expert at run time, then each stacked operand's
/// slice without its leading `experts` axis. Its one output is `f32[ROUTED, d_out]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    /// How many experts (the leading axis of every stacked operand).
    pub experts: usize,
    /// One expert's computation.
    pub body: crate::Graph,
}

impl Route {
    /// The symbol naming the number of rows an expert receives, in the body's shapes.
    pub const ROWS: &'static str = "routed";
    /// How the language names a body argument that is an expert's slice of a stacked
    /// parameter (`stacked.0`, ..): a value known at load time, as a parameter is, which the
    /// optimizer's cost model counts so (other arguments are named otherwise).
    pub const STACKED: &'static str = "stacked.";
}

impl Op {
    /// Whether a node of this op has several results (read through [`Op::Proj`]).
    pub fn is_multi(&self) -> bool {
        matches!(self, Op::Scan(_) | Op::TopK { .. })
    }

    /// The region an op owns, if any.
    pub fn region(&self) -> Option<&crate::Graph> {
        match self {
            Op::Scan(s) => Some(&s.body),
            Op::Route(r) => Some(&r.body),
            _ => None,
        }
    }

    /// The region an op owns, if any, to replace.
    pub fn region_mut(&mut self) -> Option<&mut crate::Graph> {
        match self {
            Op::Scan(s) => Some(&mut s.body),
            Op::Route(r) => Some(&mut r.body),
            _ => None,
        }
    }

    /// Whether only the optimizer creates this op.
    pub fn is_fused(&self) -> bool {
        matches!(self, Op::Softmax { .. } | Op::Norm { .. } | Op::Gemm { .. } | Op::Ffn { .. } | Op::Attention(_))
    }

    /// The op's mnemonic in the IR text.
    pub fn mnemonic(&self) -> String {
        match self {
            Op::Input(_) => "input".into(),
            Op::Param(..) => "param".into(),
            Op::Const(_) => "const".into(),
            Op::Iota { .. } => "iota".into(),
            Op::Unary(u) => u.name().into(),
            Op::Binary(b) => b.name().into(),
            Op::Where => "where".into(),
            Op::Cast => "cast".into(),
            Op::MatMul => "matmul".into(),
            Op::Transpose(_) => "transpose".into(),
            Op::Reshape => "reshape".into(),
            Op::Broadcast => "broadcast".into(),
            Op::Reduce { op, .. } => format!("reduce_{}", op.name()),
            Op::Gather { .. } => "gather".into(),
            Op::ScatterAdd { .. } => "scatter_add".into(),
            Op::Slice { .. } => "slice".into(),
            Op::Concat { .. } => "concat".into(),
            Op::Cumsum { .. } => "cumsum".into(),
            Op::Window { .. } => "window".into(),
            Op::Segment { .. } => "segment".into(),
            Op::Fft { .. } => "fft".into(),
            Op::Rfft { .. } => "rfft".into(),
            Op::Irfft { .. } => "irfft".into(),
            Op::Softmax { .. } => "softmax".into(),
            Op::Norm { .. } => "norm".into(),
            Op::Gemm { .. } => "gemm".into(),
            Op::Ffn { .. } => "ffn".into(),
            Op::Attention(_) => "attention".into(),
            Op::Scan(_) => "scan".into(),
            Op::Proj(_) => "proj".into(),
            Op::TopK { .. } => "topk".into(),
            Op::Route(_) => "route".into(),
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.mnemonic())
    }
}

#[cfg(test)]
mod tests {
    use super::UnaryOp;

    #[test]
    fn gelu_matches_tabulated_erf() {
        // erf values from Abramowitz & Stegun, table 7.1: gelu(x) = x/2 (1 + erf(x/√2)).
        for (x, erf) in [(0.5 * std::f64::consts::SQRT_2, 0.520_499_877_8), (std::f64::consts::SQRT_2, 0.842_700_792_9)] {
            let want = 0.5 * x * (1.0 + erf);
            assert!((UnaryOp::GeluErf.eval(x) - want).abs() < 1e-9);
            assert!((UnaryOp::GeluErf.eval(-x) - (-0.5 * x * (1.0 - erf))).abs() < 1e-9);
        }
    }
}

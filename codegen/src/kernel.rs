//! The kernel program: what the CPU backend runs. A list of [`Step`]s, each one kernel
//! writing one buffer from others, in dependency order. Buffers have symbolic types; sizes
//! are known when a run fixes the dimensions, and the memory plan is made then.
//!
//! Kernels are loop-level descriptions, not code: an elementwise kernel carries the scalar
//! program of a whole fused chain (a [`ScoreFn`] over its inputs `L0, L1, ..`), attention its
//! score function; a backend lowers each kind (Cranelift here; LLVM, MLIR or CUDA later).

use std::fmt;
use tessera_ir::{NormKind, ReduceOp, ScoreFn, Span, TensorType, UnaryOp};

/// A buffer of the program.
pub type BufId = usize;

/// Where a buffer's memory comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum Storage {
    /// A model input, by name.
    Input(String),
    /// A parameter, by name.
    Param(String),
    /// A slot of the activation arena.
    Arena,
    /// The same memory as another buffer (a reshape).
    Alias(BufId),
    /// Computed from parameters only (merged weights): once, then kept between runs while the
    /// parameters stay the same.
    Derived,
}

/// A buffer: its type and storage.
#[derive(Clone, Debug)]
pub struct Buffer {
    /// Element type and symbolic shape.
    pub ty: TensorType,
    /// Where it lives.
    pub storage: Storage,
}

/// One kernel kind with its attributes.
#[derive(Clone, Debug)]
pub enum Kernel {
    /// A fused chain of elementwise ops: `out[i] = f(L0[i], L1[i], ..)` with operands broadcast
    /// to the output shape.
    Elementwise(ScoreFn),
    /// `out = a @ b (+ bias) → act → (+ residual)` (batched, batch axes broadcast); with
    /// `trans_b`, the operand is `bᵀ` stored untransposed (a tied embedding).
    Gemm {
        /// The second operand is stored transposed.
        trans_b: bool,
        /// A bias vector follows `b`.
        bias: bool,
        /// Activation after the bias.
        act: Option<UnaryOp>,
        /// A residual comes last.
        residual: bool,
    },
    /// Feed-forward block (see `Op::Ffn`).
    Ffn {
        /// Gated (GLU) rather than plain.
        gated: bool,
        /// Activation.
        act: UnaryOp,
        /// With biases.
        bias: bool,
    },
    /// Layer or RMS norm over the last axis, with optional weight and bias.
    Norm {
        /// Which norm.
        kind: NormKind,
        /// Epsilon.
        eps: f64,
    },
    /// Stable softmax along an axis.
    Softmax {
        /// The axis.
        axis: usize,
    },
    /// Flash-style attention: tiles of keys with an online softmax, dead tiles skipped.
    Attention(Box<ScoreFn>),
    /// Reduction over axes (keepdim or not: the output shape says).
    Reduce {
        /// Which reduction.
        op: ReduceOp,
        /// Reduced axes of the input.
        axes: Vec<usize>,
    },
    /// Rows of a table selected by indices.
    Gather {
        /// Indexed axis.
        axis: usize,
    },
    /// Axis permutation (a copy).
    Transpose(Vec<usize>),
    /// Broadcast copy to the output shape.
    Broadcast,
    /// Strided slice along an axis; `start` is evaluated at run time.
    Slice {
        /// The axis.
        axis: usize,
        /// First index.
        start: tessera_ir::Dim,
        /// Stride.
        step: i64,
    },
    /// Concatenation along an axis.
    Concat {
        /// The axis.
        axis: usize,
    },
    /// Inclusive prefix sum along an axis.
    Cumsum {
        /// The axis.
        axis: usize,
    },
    /// A discrete Fourier transform along one axis of a complex tensor stored as pairs (the
    /// last axis; `axis` counts the others). A multi-axis `fft` is one step per axis.
    Fft {
        /// The transformed axis.
        axis: usize,
        /// Inverse (conjugate twiddles, divided by the length).
        inverse: bool,
    },
    /// Real to half-spectrum transform along an axis (`Op::Rfft`).
    Rfft {
        /// The axis.
        axis: usize,
    },
    /// Half-spectrum to real transform along an axis (`Op::Irfft`; the output's length).
    Irfft {
        /// The axis.
        axis: usize,
    },
    /// A sliding window along an axis (`Op::Window`): a depthwise convolution by the second
    /// operand, or a max/mean pool.
    Window {
        /// What it computes.
        op: tessera_ir::WindowOp,
        /// The axis.
        axis: usize,
        /// The window's length.
        size: usize,
        /// Positions it reaches before the output's.
        pad_left: usize,
    },
    /// Pooling over segments given by ids (`Op::Segment`).
    Segment {
        /// How a segment is reduced.
        op: tessera_ir::ReduceOp,
        /// The axis of the positions.
        axis: usize,
    },
    /// `Op::ScatterAdd`: the first operand with the third added at the second's positions.
    ScatterAdd {
        /// The addressed axis.
        axis: usize,
    },
    /// Indices along an axis.
    Iota {
        /// The axis.
        axis: usize,
    },
    /// A constant fill.
    Fill(f64),
    /// A recurrence (`Op::Scan`), run by the fused, chunked or per-position lowering (see
    /// [`ScanKernel::lowering`]). The step's `out` is its first result; it writes every
    /// buffer of `results`.
    Scan(Box<ScanKernel>),
    /// The `k` largest along `axis`: writes values and indices (`results`); `out` is the first.
    TopK {
        /// The axis searched (`k` is the results' size along it).
        axis: usize,
        /// The values' and the indices' buffers.
        results: Vec<BufId>,
    },
    /// A route (`Op::Route`): the grouped feed-forward kernel where the body is one, else the
    /// body's program once per expert.
    Route(Box<RouteKernel>),
}

/// A route step: the IR op, its scheduled body, and the grouped kernel's plan.
#[derive(Clone, Debug)]
pub struct RouteKernel {
    /// The route (its body graph is the reference the program was scheduled from).
    pub op: tessera_ir::Route,
    /// The body, scheduled like any graph.
    pub body: Program,
    /// The grouped feed-forward plan, or why the body is not one.
    pub ffn: Result<crate::route::RoutedFfn, String>,
}

impl RouteKernel {
    /// How the CPU backend runs this route, for `--explain`.
    pub fn lowering(&self) -> String {
        match &self.ffn {
            Ok(f) => f.describe(self.op.experts),
            Err(why) => format!("per expert: the body's program once per expert over its gathered rows ({why})"),
        }
    }
}

/// A scan step: the IR op's attributes, the scheduled body, and the buffers of its results
/// (stacked per-step outputs, then final states).
#[derive(Clone, Debug)]
pub struct ScanKernel {
    /// The scan (its body graph is the reference the program was scheduled from).
    pub op: tessera_ir::Scan,
    /// The body, scheduled like any graph.
    pub body: Program,
    /// Every result's buffer, in [`tessera_ir::scan_results`] order.
    pub results: Vec<BufId>,
    /// The fused kernel's plan, or why the body does not fit it (then the body's program runs
    /// once per position).
    pub fused: Result<crate::scan::FusedScan, String>,
}

impl ScanKernel {
    /// How the CPU backend runs this scan, for `--explain`.
    pub fn lowering(&self) -> String {
        match &self.fused {
            Ok(f) => f.describe(),
            Err(why) => format!("sequential: the body's program once per position (not fused: {why})"),
        }
    }
}

impl Kernel {
    /// The kernel kind's name in dumps.
    pub fn name(&self) -> &'static str {
        match self {
            Kernel::Elementwise(_) => "elementwise",
            Kernel::Gemm { .. } => "gemm",
            Kernel::Ffn { .. } => "ffn",
            Kernel::Norm { .. } => "norm",
            Kernel::Softmax { .. } => "softmax",
            Kernel::Attention(_) => "attention",
            Kernel::Reduce { .. } => "reduce",
            Kernel::Gather { .. } => "gather",
            Kernel::ScatterAdd { .. } => "scatter_add",
            Kernel::Transpose(_) => "transpose",
            Kernel::Broadcast => "broadcast",
            Kernel::Slice { .. } => "slice",
            Kernel::Concat { .. } => "concat",
            Kernel::Cumsum { .. } => "cumsum",
            Kernel::Window { .. } => "window",
            Kernel::Segment { .. } => "segment",
            Kernel::Fft { .. } => "fft",
            Kernel::Rfft { .. } => "rfft",
            Kernel::Irfft { .. } => "irfft",
            Kernel::Iota { .. } => "iota",
            Kernel::Fill(_) => "fill",
            Kernel::Scan(_) => "scan",
            Kernel::TopK { .. } => "topk",
            Kernel::Route(_) => "route",
        }
    }
}

impl Step {
    /// The buffers the step writes: its `out`, or every result of a scan.
    pub fn outs(&self) -> &[BufId] {
        match &self.kernel {
            Kernel::Scan(k) => &k.results,
            Kernel::TopK { results, .. } => results,
            _ => std::slice::from_ref(&self.out),
        }
    }
}

/// One kernel launch.
#[derive(Clone, Debug)]
pub struct Step {
    /// What runs.
    pub kernel: Kernel,
    /// The buffer written.
    pub out: BufId,
    /// The buffers read.
    pub ins: Vec<BufId>,
    /// Where the computation was written.
    pub span: Span,
    /// How many IR ops it implements.
    pub ops: usize,
}

/// A scheduled model.
#[derive(Clone, Debug)]
pub struct Program {
    /// The model's name.
    pub name: String,
    /// Source files, for spans.
    pub files: Vec<String>,
    /// Every buffer.
    pub buffers: Vec<Buffer>,
    /// Kernels in execution order.
    pub steps: Vec<Step>,
    /// Outputs by name.
    pub outputs: Vec<(String, BufId)>,
}

impl Program {
    /// The buffer that `b` is a view of (through any chain of views), or `b` itself.
    pub fn root(&self, mut b: BufId) -> BufId {
        while let Storage::Alias(a) = self.buffers[b].storage {
            b = a;
        }
        b
    }

    /// For each buffer, the last step that reads it, directly or through a view; outputs are
    /// read after every step (`usize::MAX`), buffers nothing reads get 0.
    pub fn last_reads(&self) -> Vec<usize> {
        let mut last = vec![0usize; self.buffers.len()];
        for (s, step) in self.steps.iter().enumerate() {
            for &b in &step.ins {
                last[self.root(b)] = s;
            }
        }
        for (_, b) in &self.outputs {
            last[self.root(*b)] = usize::MAX;
        }
        last
    }
}

impl fmt::Display for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "program {} {{", self.name)?;
        for (i, b) in self.buffers.iter().enumerate() {
            match &b.storage {
                Storage::Input(n) => writeln!(f, "  buf{i}: {} = input \"{n}\"", b.ty)?,
                Storage::Param(n) => writeln!(f, "  buf{i}: {} = param \"{n}\"", b.ty)?,
                Storage::Alias(a) => writeln!(f, "  buf{i}: {} = view of buf{a}", b.ty)?,
                Storage::Derived => writeln!(f, "  buf{i}: {} = derived from parameters, computed once", b.ty)?,
                Storage::Arena => {}
            }
        }
        for s in &self.steps {
            let ins: Vec<String> = s.ins.iter().map(|i| format!("buf{i}")).collect();
            let detail = match &s.kernel {
                Kernel::Elementwise(p) => format!(" {}", p.pretty()),
                Kernel::Attention(p) => format!(" score={}", p.pretty()),
                Kernel::Gemm { trans_b, bias, act, residual } => {
                    format!(" trans_b={trans_b} bias={bias} act={} residual={residual}", act.map_or("none", |a| a.name()))
                }
                Kernel::Ffn { gated, act, bias } => format!(" gated={gated} act={} bias={bias}", act.name()),
                Kernel::Norm { kind, eps } => format!(" {kind:?} eps={eps:?}"),
                Kernel::Softmax { axis }
                | Kernel::Concat { axis }
                | Kernel::Cumsum { axis }
                | Kernel::Iota { axis }
                | Kernel::Rfft { axis }
                | Kernel::Irfft { axis }
                | Kernel::Gather { axis }
                | Kernel::ScatterAdd { axis } => {
                    format!(" axis={axis}")
                }
                Kernel::Reduce { op, axes } => format!(" {op:?} axes={axes:?}"),
                Kernel::Fft { axis, inverse } => format!(" axis={axis} inverse={inverse}"),
                Kernel::Segment { op, axis } => format!(" {} axis={axis}", op.name()),
                Kernel::Window { op, axis, size, pad_left } => format!(" {} axis={axis} size={size} pad_left={pad_left}", op.name()),
                Kernel::Transpose(p) => format!(" perm={p:?}"),
                Kernel::Slice { axis, start, step } => format!(" axis={axis} start={start} step={step}"),
                Kernel::Fill(v) => format!(" {v:?}"),
                Kernel::Broadcast => String::new(),
                Kernel::Scan(k) => {
                    let results: Vec<String> = k.results.iter().map(|b| format!("buf{b}")).collect();
                    let body = k.body.to_string().replace('\n', "\n    ");
                    let lowering = k.lowering();
                    let kind = lowering.split(':').next().unwrap_or_default();
                    format!(
                        " axis={} reverse={} results=[{}] lowering={kind} {}",
                        k.op.axis,
                        k.op.reverse,
                        results.join(", "),
                        body.trim_end()
                    )
                }
                Kernel::TopK { axis, results } => format!(" axis={axis} results=[buf{}, buf{}]", results[0], results[1]),
                Kernel::Route(k) => {
                    let body = k.body.to_string().replace('\n', "\n    ");
                    let lowering = if k.ffn.is_ok() { "grouped_ffn" } else { "per_expert" };
                    format!(" experts={} lowering={lowering} {}", k.op.experts, body.trim_end())
                }
            };
            let loc = s.span.display_in(&self.files).map_or_else(String::new, |l| format!("  // {l}"));
            let ty = &self.buffers[s.out].ty;
            writeln!(f, "  buf{} = {}({}){detail} : {ty}{loc}", s.out, s.kernel.name(), ins.join(", "))?;
        }
        for (n, b) in &self.outputs {
            writeln!(f, "  output \"{n}\" = buf{b}")?;
        }
        writeln!(f, "}}")
    }
}

/// Strides of `x` aligned to a broadcast output of rank `rank` (0 along broadcast axes).
pub fn broadcast_strides(x: &[usize], rank: usize) -> Vec<usize> {
    let st = tessera_runtime::strides(x);
    let pad = rank - x.len().min(rank);
    (0..rank).map(|d| if d < pad || x[d - pad] == 1 { 0 } else { st[d - pad] }).collect()
}

//! The kernel program: what the CPU backend runs. A list of [`Step`]s, each one kernel
//! writing one buffer from others, in dependency order. Buffers have symbolic types; sizes
//! are known when a run fixes the dimensions, and the memory plan is made then.
//!
//! Kernels are loop-level descriptions, not code: an elementwise kernel carries the scalar
//! program of a whole fused chain (a [`ScoreFn`] over its inputs `L0, L1, ..`), attention its
//! score function; a backend lowers each kind (Cranelift here; LLVM, MLIR or CUDA later).

use std::fmt;
use tessera_ir::{ScoreFn, Span, TensorType, UnaryOp};

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
    /// One IR op run as one kernel, with the op's own attributes: the fused ops (`Ffn`, `Norm`,
    /// `Softmax`, `Attention`) and the ops that reduce or move data (`Reduce`, `Gather`,
    /// `ScatterAdd`, `Transpose`, `Broadcast`, `Slice`, `Concat`, `Cumsum`, `Window`,
    /// `Segment`, `Rfft`, `Irfft`, `Iota`). A new op of that kind costs its lowering arms only.
    Op(tessera_ir::Op),
    /// `out = a @ b (+ bias) → act → (+ residual)` (batched, batch axes broadcast): `MatMul`
    /// and `Gemm`, with what scheduling decided: `trans_b`, the operand is `bᵀ` stored
    /// untransposed (a tied embedding).
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
    /// A discrete Fourier transform along one axis of a complex tensor stored as pairs (the
    /// last axis; `axis` counts the others). A multi-axis `fft` is one step per axis.
    Fft {
        /// The transformed axis.
        axis: usize,
        /// Inverse (conjugate twiddles, divided by the length).
        inverse: bool,
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
    /// A weight packed for the CPU's packed GEMM (`cpu::gemm::pack_b`): the CPU executor puts
    /// one before each GEMM or feed-forward step whose weight is a parameter, into a `Derived`
    /// buffer, so weights are packed once, not at every product. Scheduling makes none.
    PackB {
        /// The weight is stored transposed.
        trans_b: bool,
    },
}

/// A route step: the IR op, its scheduled body, and the grouped kernel's plan.
#[derive(Clone, Debug)]
pub struct RouteKernel {
    /// The route (its body graph is the reference the program was scheduled from).
    pub op: tessera_ir::Route,
    /// The body, scheduled like any graph.
    pub body: Program,
    /// The grouped feed-forward plan, or why the body is not one.
    pub ffn: Result<crate::route::RoutedFfn, crate::route::NotGrouped>,
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
    pub fused: Result<crate::scan::FusedScan, crate::scan::NotFused>,
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
            Kernel::Op(tessera_ir::Op::Ffn { .. }) => "ffn",
            Kernel::Op(tessera_ir::Op::Norm { .. }) => "norm",
            Kernel::Op(tessera_ir::Op::Softmax { .. }) => "softmax",
            Kernel::Op(tessera_ir::Op::Attention(_)) => "attention",
            Kernel::Op(tessera_ir::Op::Reduce { .. }) => "reduce",
            Kernel::Op(tessera_ir::Op::Gather { .. }) => "gather",
            Kernel::Op(tessera_ir::Op::ScatterAdd { .. }) => "scatter_add",
            Kernel::Op(tessera_ir::Op::Transpose(_)) => "transpose",
            Kernel::Op(tessera_ir::Op::Broadcast) => "broadcast",
            Kernel::Op(tessera_ir::Op::Slice { .. }) => "slice",
            Kernel::Op(tessera_ir::Op::Concat { .. }) => "concat",
            Kernel::Op(tessera_ir::Op::Cumsum { .. }) => "cumsum",
            Kernel::Op(tessera_ir::Op::Window { .. }) => "window",
            Kernel::Op(tessera_ir::Op::Segment { .. }) => "segment",
            Kernel::Fft { .. } => "fft",
            Kernel::Op(tessera_ir::Op::Rfft { .. }) => "rfft",
            Kernel::Op(tessera_ir::Op::Irfft { .. }) => "irfft",
            Kernel::Op(tessera_ir::Op::Iota { .. }) => "iota",
            Kernel::Fill(_) => "fill",
            Kernel::Scan(_) => "scan",
            Kernel::TopK { .. } => "topk",
            Kernel::Route(_) => "route",
            Kernel::PackB { .. } => "pack_b",
            // Scheduling makes no step of the other ops.
            Kernel::Op(_) => "op",
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
                Kernel::Op(tessera_ir::Op::Attention(p)) => format!(" score={}", p.pretty()),
                Kernel::Gemm { trans_b, bias, act, residual } => {
                    format!(" trans_b={trans_b} bias={bias} act={} residual={residual}", act.map_or("none", |a| a.name()))
                }
                Kernel::Op(tessera_ir::Op::Ffn { gated, act, bias }) => format!(" gated={gated} act={} bias={bias}", act.name()),
                Kernel::Op(tessera_ir::Op::Norm { kind, eps }) => format!(" {kind:?} eps={eps:?}"),
                Kernel::Op(tessera_ir::Op::Softmax { axis })
                | Kernel::Op(tessera_ir::Op::Concat { axis })
                | Kernel::Op(tessera_ir::Op::Cumsum { axis })
                | Kernel::Op(tessera_ir::Op::Iota { axis })
                | Kernel::Op(tessera_ir::Op::Rfft { axis })
                | Kernel::Op(tessera_ir::Op::Irfft { axis, .. })
                | Kernel::Op(tessera_ir::Op::Gather { axis })
                | Kernel::Op(tessera_ir::Op::ScatterAdd { axis }) => {
                    format!(" axis={axis}")
                }
                Kernel::Op(tessera_ir::Op::Reduce { op, axes, .. }) => format!(" {op:?} axes={axes:?}"),
                Kernel::Fft { axis, inverse } => format!(" axis={axis} inverse={inverse}"),
                Kernel::PackB { trans_b } => format!(" trans_b={trans_b}"),
                Kernel::Op(tessera_ir::Op::Segment { op, axis }) => format!(" {} axis={axis}", op.name()),
                Kernel::Op(tessera_ir::Op::Window { op, axis, size, pad_left }) => {
                    format!(" {} axis={axis} size={size} pad_left={pad_left}", op.name())
                }
                Kernel::Op(tessera_ir::Op::Transpose(p)) => format!(" perm={p:?}"),
                Kernel::Op(tessera_ir::Op::Slice { axis, start, step, .. }) => format!(" axis={axis} start={start} step={step}"),
                Kernel::Fill(v) => format!(" {v:?}"),
                Kernel::Op(tessera_ir::Op::Broadcast) => String::new(),
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
                Kernel::Op(op) => format!(" {}", op.mnemonic()),
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

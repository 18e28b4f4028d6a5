//! # The Tessera IR
//!
//! A model is a [`Graph`]: a list of [`Node`]s in topological order, each an [`Op`] applied to
//! earlier values ([`ValueId`], printed `%3`), with its result [`TensorType`] (element type
//! and a shape of symbolic [`Dim`]s such as `[batch, seq, 768]`) and the source [`Span`] it
//! came from. Inputs and parameters are nodes (`input "input_ids"`, `param "layers.0.attn.wq"`);
//! outputs are named values.
//!
//! The op set is closed and small: elementwise ops with numpy broadcasting, `matmul`,
//! reductions, `gather`, `slice`, `concat`, `reshape`, `transpose`, `broadcast`, `iota`,
//! `where`, `cast`, `cumsum`, and Fourier transforms (`fft`, `rfft`, `irfft`) of complex tensors
//! stored as real pairs. Layers (norms, attention, MLPs) are compositions written in the
//! language; fused ops appear only after optimization.
//!
//! Every stage can be printed (`Display`) and parsed back ([`parse`]) to the equal graph, and
//! checked by the [`verify()`] function, whose module lists the invariants all passes keep.
//! [`infer_type`] is the one definition of each op's typing rule.
#![warn(missing_docs)]
#![deny(clippy::unwrap_used, clippy::expect_used)]

mod checkpoint;
mod dim;
mod graph;
mod infer;
mod op;
mod parse;
mod print;
mod score_fn;
mod types;
mod verify;

pub use checkpoint::{fill_template, match_pattern, NameMap, Parts, WeightExpr, WeightRule};
pub use dim::Dim;
pub use graph::{Graph, Node, Span, ValueId};
pub use infer::{broadcast_shapes, infer_type, multi_results, rfft_bins, route_result, scan_results, TypeError};
pub use op::{nan_max, nan_min, BinaryOp, Init, NormKind, Op, ReduceOp, Route, Scan, UnaryOp, WindowOp, BINARY_OPS, UNARY_OPS};
pub use parse::{parse, ParseError};
pub use print::node_line;
pub use score_fn::{SNode, ScoreFn, TileClass, Var, MASK_THRESHOLD};
pub use types::{DType, ShapeDisplay, TensorType};
pub use verify::verify;

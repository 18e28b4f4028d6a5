//! The IR text form. [`crate::parse`] reads exactly what this writes.
//!
//! ```text
//! graph gpt2 {
//!   file 0 "stdlib/gpt2.tsr"
//!   %0 = input "input_ids" : i64[batch, seq] loc(0:9:3)
//!   %1 = param "wte" : f32[50257, 768] loc(0:10:3)
//!   %2 = gather %1, %0 axis=0 : f32[batch, seq, 768] loc(0:12:7)
//!   output "logits" = %2
//! }
//! ```
//!
//! A region (the body of a `scan`) follows its node's line, opened by `{` and closed by `}`,
//! one level deeper; its values are numbered from `%0` again:
//!
//! ```text
//!   %4 = scan %2, %3 axis=1 reverse=false state=1 sliced=1 : f32[batch, seq, 8] {
//!     %0 = input "h" : f32[batch, 8]
//!     %1 = input "x" : f32[batch, 8]
//!     %2 = add %0, %1 : f32[batch, 8]
//!     output "y" = %2
//!     output "h" = %2
//!   }
//!   %5 = proj %4 index=1 : f32[batch, 8]
//! ```

use crate::{Dim, Graph, Node, Op};
use std::fmt::{self, Write};

fn dim_attr(d: &Dim) -> String {
    let s = d.to_string();
    if s.contains(' ') {
        format!("({s})")
    } else {
        s
    }
}

fn list(xs: &[usize]) -> String {
    let items: Vec<String> = xs.iter().map(usize::to_string).collect();
    format!("[{}]", items.join(", "))
}

/// The attributes of an op as text (`axis=2 start=0 end=seq step=1`), empty if none.
pub fn attrs(op: &Op) -> String {
    match op {
        Op::Iota { axis } | Op::Gather { axis } | Op::Concat { axis } | Op::Cumsum { axis } | Op::Rfft { axis } => {
            format!("axis={axis}")
        }
        Op::Fft { axes, inverse } => format!("axes={} inverse={inverse}", list(axes)),
        Op::Segment { op, axis } => format!("op={} axis={axis}", op.name()),
        Op::Window { op, axis, size, pad_left } => format!("op={} axis={axis} size={size} pad_left={pad_left}", op.name()),
        Op::Irfft { axis, n } => format!("axis={axis} n={}", dim_attr(n)),
        Op::Transpose(perm) => format!("perm={}", list(perm)),
        Op::Reduce { axes, keepdim, .. } => format!("axes={} keepdim={keepdim}", list(axes)),
        Op::Slice { axis, start, end, step } => {
            format!("axis={axis} start={} end={} step={step}", dim_attr(start), dim_attr(end))
        }
        Op::Softmax { axis } => format!("axis={axis}"),
        Op::Norm { kind, eps } => format!("kind={} eps={eps:?}", if *kind == crate::NormKind::Layer { "layer" } else { "rms" }),
        Op::Gemm { bias, act, residual } => format!("bias={bias} act={} residual={residual}", act.map_or("none", |a| a.name())),
        Op::Ffn { gated, act, bias } => format!("gated={gated} act={} bias={bias}", act.name()),
        Op::Attention(f) => format!("fn=\"{f}\""),
        Op::Scan(s) => format!("axis={} reverse={} state={} sliced={}", s.axis, s.reverse, s.state, s.sliced),
        Op::Proj(k) => format!("index={k}"),
        Op::ScatterAdd { axis } => format!("axis={axis}"),
        Op::TopK { k, axis } => format!("k={} axis={axis}", dim_attr(k)),
        Op::Route(r) => format!("experts={}", r.experts),
        _ => String::new(),
    }
}

/// Writes one node as a line without indentation or newline.
pub fn node_line(id: usize, n: &Node) -> String {
    let mut s = format!("%{id} = {}", n.op.mnemonic());
    match &n.op {
        Op::Input(name) => write!(s, " \"{name}\"").ok(),
        Op::Param(name, init) => write!(s, " \"{name}\" init={init}").ok(),
        Op::Const(v) => write!(s, " {v:?}").ok(),
        _ => None,
    };
    for (i, v) in n.inputs.iter().enumerate() {
        s.push_str(if i == 0 { " " } else { ", " });
        write!(s, "{v}").ok();
    }
    let a = attrs(&n.op);
    if !a.is_empty() {
        write!(s, " {a}").ok();
    }
    write!(s, " : {}", n.ty).ok();
    if n.span.is_known() {
        write!(s, " loc({}:{}:{})", n.span.file, n.span.line, n.span.col).ok();
    }
    s
}

/// Writes the nodes and outputs of `g` at `depth` levels of indentation; a region follows its
/// node's line, opened by `{` and closed by a `}` line at the node's indentation.
fn write_body(f: &mut fmt::Formatter<'_>, g: &Graph, depth: usize) -> fmt::Result {
    let pad = "  ".repeat(depth);
    for (i, n) in g.nodes().iter().enumerate() {
        match n.op.region() {
            Some(body) => {
                writeln!(f, "{pad}{} {{", node_line(i, n))?;
                write_body(f, body, depth + 1)?;
                writeln!(f, "{pad}}}")?;
            }
            None => writeln!(f, "{pad}{}", node_line(i, n))?,
        }
    }
    for (name, v) in &g.outputs {
        writeln!(f, "{pad}output \"{name}\" = {v}")?;
    }
    Ok(())
}

impl fmt::Display for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "graph {} {{", self.name)?;
        for (i, file) in self.files.iter().enumerate() {
            writeln!(f, "  file {i} \"{file}\"")?;
        }
        write_body(f, self, 1)?;
        writeln!(f, "}}")
    }
}

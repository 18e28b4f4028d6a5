//! Tessera, a compiler for transformer architectures: the facade over the stages.
//!
//! ```text
//! .tsr ─lang─▶ IR ─passes─▶ optimised IR ─runtime─▶ outputs (reference interpreter)
//! ```
//!
//! [`Frontend`] turns a `.tsr` (or `.tir`) file into a verified IR graph; [`render`] prints
//! diagnostics the way the CLI does.
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub use tessera_ir as ir;
pub use tessera_lang as lang;
pub use tessera_passes as passes;
pub use tessera_runtime as runtime;

use miette::{GraphicalReportHandler, GraphicalTheme};
use tessera_lang::{Diagnostic, Override, SourceMap};

/// Renders diagnostics as miette does in the CLI: without colour at a fixed `width` when
/// `color` is false (stable output for snapshots and logs).
pub fn render(diags: &[Diagnostic], sources: &SourceMap, color: bool, width: usize) -> String {
    let theme = if color { GraphicalTheme::unicode() } else { GraphicalTheme::unicode_nocolor() };
    let handler = GraphicalReportHandler::new_themed(theme).with_width(width);
    let mut out = String::new();
    for d in diags {
        let report = d.report(sources);
        if handler.render_report(&mut out, &report).is_err() {
            out.push_str(&format!("{}: {} ({})\n", d.code, d.message, d.location(sources)));
        }
    }
    out
}

/// The result of the front end: a graph or the diagnostics that prevent one.
pub struct Frontend {
    /// Sources of the program (for rendering diagnostics).
    pub sources: SourceMap,
    /// Every diagnostic, warnings included.
    pub diagnostics: Vec<Diagnostic>,
    /// The elaborated graph, when there is no error.
    pub graph: Option<ir::Graph>,
}

impl Frontend {
    /// Parses and elaborates model `model` of the `.tsr` source `text` from `path`.
    pub fn tsr(path: &str, text: &str, model: Option<&str>, overrides: &[(String, Override)]) -> Frontend {
        let (prog, mut diagnostics) = tessera_lang::load(path, text);
        let graph = if diagnostics.iter().any(Diagnostic::is_error) {
            None
        } else {
            let (g, d) = tessera_lang::elaborate(&prog, model, overrides);
            diagnostics.extend(d);
            g
        };
        Frontend { sources: prog.sources, diagnostics, graph }
    }
}

/// Compiles a `.tsr` source with default options and returns the verified, optimised graph,
/// or the rendered diagnostics (no colour, 100 columns).
pub fn compile_str(path: &str, text: &str, overrides: &[(&str, &str)]) -> Result<ir::Graph, String> {
    let ov: Vec<(String, Override)> = overrides.iter().map(|(k, v)| (k.to_string(), Override::parse(v))).collect();
    let fe = Frontend::tsr(path, text, None, &ov);
    let Some(g) = fe.graph else { return Err(render(&fe.diagnostics, &fe.sources, false, 100)) };
    tessera_ir::verify(&g).map_err(|e| e.join("\n"))?;
    tessera_passes::run_pipeline(&g, |_, _| {}).map_err(|e| e.to_string())
}

//! The Tessera language: grammar ([`parse`]), typed syntax tree ([`ast`]), program loading
//! with imports ([`load`]), checking and elaboration to the IR ([`elaborate`]), and user
//! [`Diagnostic`]s with stable codes.
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod ast;
mod checkpoint;
mod diag;
mod elab;
mod parser;
mod program;
mod source;

pub use ast::{FileId, Span};
pub use checkpoint::{resolve as resolve_checkpoint, CheckpointMap, ConfigLookup, ConfigValue};
pub use diag::{codes, Diagnostic, Label, Report, Severity};
pub use elab::{elaborate, Override, MASKED, MAX_DEPTH, MAX_NODES, MAX_UNROLLED};
pub use parser::parse;
pub use program::{load, Program, STDLIB};
pub use source::SourceMap;

/// Checks a whole file: parses it and its imports and elaborates every model it defines with
/// default hyper-parameters. Returns every diagnostic found.
pub fn check(path: &str, text: &str) -> Vec<Diagnostic> {
    let (prog, mut diags) = load(path, text);
    if diags.iter().any(Diagnostic::is_error) {
        return diags;
    }
    let models: Vec<String> = prog.root_defs().iter().filter(|d| d.kind == ast::DefKind::Model).map(|d| d.name.name.clone()).collect();
    for m in &models {
        diags.extend(elaborate(&prog, Some(m), &[]).1);
    }
    for c in prog.root_defs().iter().filter(|d| d.kind == ast::DefKind::Checkpoint) {
        if !models.contains(&c.name.name) {
            diags.push(Diagnostic::error(
                codes::MODEL,
                format!("no model named `{}` for this checkpoint map", c.name.name),
                c.name.span,
                "names no model of this file",
            ));
        } else if let Err(d) = resolve_checkpoint(&prog, &c.name.name, None, &[]) {
            diags.extend(d);
        }
    }
    diags
}

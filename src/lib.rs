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

mod api;
mod generate;
pub mod hf;

pub use api::{Backend, Compiler, Error, Model, Precision};
pub use generate::{describe as describe_state, GenerateOptions, Generated, Session};
pub use tessera_codegen as codegen;
pub use tessera_codegen::Engine;

use miette::{GraphicalReportHandler, GraphicalTheme};
use tessera_lang::{CheckpointMap, Diagnostic, Override, SourceMap};

/// Renders diagnostics as miette does in the CLI: without colour at a fixed `width` when
/// `color` is false (stable output for snapshots and logs).
pub fn render(diags: &[Diagnostic], sources: &SourceMap, color: bool, width: usize) -> String {
    let theme = if color { GraphicalTheme::unicode() } else { GraphicalTheme::unicode_nocolor() };
    let handler = GraphicalReportHandler::new_themed(theme).with_width(width);
    let mut out = String::new();
    for d in diags {
        let d = clipped(d);
        if too_wide(&d, sources) {
            out.push_str(&plain(&d, sources));
            continue;
        }
        let report = d.report(sources);
        if handler.render_report(&mut out, &report).is_err() {
            out.push_str(&format!("{}: {} ({})\n", d.code, d.message, d.location(sources)));
        }
    }
    out
}

/// The longest source line (in bytes) drawn with its labels; longer ones (miette's formatter
/// panics beyond 65,535 columns, and a 1 MB literal made a 5.8 MB diagnostic) are shown as an
/// excerpt around the label instead.
const MAX_DRAWN_LINE: usize = 300;
/// The longest message or help kept whole.
const MAX_MESSAGE: usize = 500;

fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let cut = (0..=max).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
    format!("{}… ({} bytes in all)", &s[..cut], s.len())
}

fn clipped(d: &Diagnostic) -> Diagnostic {
    let mut d = d.clone();
    d.message = clip(&d.message, MAX_MESSAGE);
    d.help = d.help.map(|h| clip(&h, MAX_MESSAGE));
    for l in &mut d.labels {
        l.text = clip(&l.text, MAX_MESSAGE);
    }
    d
}

/// The byte range of the lines a span touches.
fn lines_of(text: &str, start: usize, end: usize) -> (usize, usize) {
    let (start, end) = (start.min(text.len()), end.min(text.len()));
    let from = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let to = text[end..].find('\n').map_or(text.len(), |i| end + i);
    (from, to)
}

fn too_wide(d: &Diagnostic, sources: &SourceMap) -> bool {
    d.labels.iter().any(|l| {
        let text = sources.text(l.span.file);
        let (from, to) = lines_of(text, l.span.start as usize, l.span.end as usize);
        // miette draws a line of context on each side too.
        let from = lines_of(text, from.saturating_sub(1), from).0;
        let to = lines_of(text, to, (to + 1).min(text.len())).1;
        text[from..to].split('\n').any(|line| line.len() > MAX_DRAWN_LINE)
    })
}

/// A diagnostic without the drawing: each label's place and an excerpt of its line.
fn plain(d: &Diagnostic, sources: &SourceMap) -> String {
    let mut out = format!("{}\n\n  × {}\n", d.code, d.message);
    for l in &d.labels {
        let (line, col) = sources.line_col(l.span);
        let text = sources.text(l.span.file);
        let start = (l.span.start as usize).min(text.len());
        let (from, to) = lines_of(text, start, start);
        let lo = (from.max(start.saturating_sub(40))..=start).find(|&i| text.is_char_boundary(i)).unwrap_or(start);
        let hi = (start..=to.min(start + 40)).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(start);
        let excerpt = format!("{}{}{}", if lo > from { "…" } else { "" }, &text[lo..hi], if hi < to { "…" } else { "" });
        out.push_str(&format!("   at {}:{line}:{col}: {}\n   │ {excerpt}\n", sources.path(l.span.file), l.text));
    }
    if let Some(h) = &d.help {
        out.push_str(&format!("  help: {h}\n"));
    }
    out.push('\n');
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
    /// The model's checkpoint map, when its file has a `checkpoint` definition.
    pub checkpoint: Option<CheckpointMap>,
}

impl Frontend {
    /// Parses and elaborates model `model` of the `.tsr` source `text` from `path`.
    pub fn tsr(path: &str, text: &str, model: Option<&str>, overrides: &[(String, Override)]) -> Frontend {
        Frontend::tsr_with_config(path, text, model, overrides, None)
    }

    /// As [`Frontend::tsr`], with hyper-parameters also taken from a Hugging Face
    /// `config.json` through the file's `checkpoint` map (`overrides` win over it).
    pub fn tsr_with_config(
        path: &str,
        text: &str,
        model: Option<&str>,
        overrides: &[(String, Override)],
        config: Option<&serde_json::Value>,
    ) -> Frontend {
        let (prog, mut diagnostics) = tessera_lang::load(path, text);
        let mut fe = Frontend { sources: SourceMap::new(), diagnostics: Vec::new(), graph: None, checkpoint: None };
        if !diagnostics.iter().any(Diagnostic::is_error) {
            let models: Vec<&str> =
                prog.root_defs().iter().filter(|d| d.kind == tessera_lang::ast::DefKind::Model).map(|d| d.name.name.as_str()).collect();
            let name = model.or(if models.len() == 1 { models.first().copied() } else { None });
            let lookup = |k: &str| config.and_then(|c| hf::config_value(c, k));
            let mut all = Vec::new();
            match name.map(|n| tessera_lang::resolve_checkpoint(&prog, n, config.map(|_| &lookup as tessera_lang::ConfigLookup), overrides))
            {
                Some(Err(d)) => diagnostics.extend(d),
                Some(Ok(map)) => {
                    if let Some(m) = &map {
                        all.extend(m.hparams.iter().cloned());
                    }
                    fe.checkpoint = map;
                }
                None => {}
            }
            if config.is_some() && fe.checkpoint.is_none() && !diagnostics.iter().any(Diagnostic::is_error) {
                let file = prog.modules.first().map_or(0, |m| m.file);
                diagnostics.push(
                    Diagnostic::error(
                        tessera_lang::codes::CONFIG_UNSUPPORTED,
                        format!("{path} has no `checkpoint` map for this model, so a config.json cannot be applied"),
                        tessera_lang::Span { file, start: 0, end: 0 },
                        "in this file",
                    )
                    .with_help("add `checkpoint MODEL { layers = config(\"num_hidden_layers\") ... }`, or pass hyper-parameters with -D"),
                );
            }
            if !diagnostics.iter().any(Diagnostic::is_error) {
                all.extend(overrides.iter().cloned());
                let (g, d) = tessera_lang::elaborate(&prog, model, &all);
                diagnostics.extend(d);
                fe.graph = g;
            }
        }
        fe.sources = prog.sources;
        fe.diagnostics = diagnostics;
        fe
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

/// The default memory budget of a run: this machine's memory (`MemTotal` of `/proc/meminfo`),
/// or no limit where that cannot be read. A run whose estimate exceeds it is refused before
/// anything is allocated.
pub fn default_memory_budget() -> u128 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().trim_end_matches("kB").trim().parse::<u128>().ok()))
        })
        .flatten()
        .map_or(u128::MAX, |kib| kib * 1024)
}

/// Parses a byte count: `4096`, `512M`, `8G`, `1.5T` (powers of 1024; a `B`/`iB` suffix is
/// allowed).
pub fn parse_bytes(s: &str) -> Result<u128, String> {
    let t = s.trim().trim_end_matches(['B', 'b']).trim_end_matches('i');
    let (num, scale) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let p = match c.to_ascii_uppercase() {
                'K' => 1,
                'M' => 2,
                'G' => 3,
                'T' => 4,
                'P' => 5,
                _ => return Err(format!("`{s}`: the unit must be K, M, G, T or P")),
            };
            (&t[..i], 1024f64.powi(p))
        }
        _ => (t, 1.0),
    };
    match num.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 && v * scale < 1e30 => Ok((v * scale) as u128),
        _ => Err(format!("`{s}` is not a byte count (e.g. 8G, 512M, 4096)")),
    }
}

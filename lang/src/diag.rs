//! User diagnostics: a stable code, a message, labelled spans and a help line. They implement
//! [`miette::Diagnostic`]; rendering (fancy or plain) is the caller's choice.

use crate::{SourceMap, Span};
use miette::{LabeledSpan, NamedSource, SourceSpan};
use std::fmt;

/// How serious a diagnostic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// The program is rejected.
    Error,
    /// The program is accepted, but something looks wrong.
    Warning,
}

/// A labelled span.
#[derive(Clone, Debug)]
pub struct Label {
    /// Where.
    pub span: Span,
    /// What to say there.
    pub text: String,
}

/// One problem found in a program.
#[derive(Clone, Debug)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// A stable code such as `tessera::shape::mismatch`.
    pub code: &'static str,
    /// One-line summary.
    pub message: String,
    /// Spans, the primary one first.
    pub labels: Vec<Label>,
    /// A hint on how to fix it.
    pub help: Option<String>,
}

impl Diagnostic {
    /// An error with a primary label.
    pub fn error(code: &'static str, message: impl Into<String>, span: Span, label: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            code,
            message: message.into(),
            labels: vec![Label { span, text: label.into() }],
            help: None,
        }
    }

    /// A warning with a primary label.
    pub fn warning(code: &'static str, message: impl Into<String>, span: Span, label: impl Into<String>) -> Diagnostic {
        Diagnostic { severity: Severity::Warning, ..Diagnostic::error(code, message, span, label) }
    }

    /// Adds a secondary label.
    pub fn with_label(mut self, span: Span, text: impl Into<String>) -> Diagnostic {
        self.labels.push(Label { span, text: text.into() });
        self
    }

    /// Sets the help line.
    pub fn with_help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }

    /// Whether this is an error.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// `file:line:col` of the primary label.
    pub fn location(&self, sources: &SourceMap) -> String {
        self.labels.first().map_or_else(String::new, |l| {
            let (line, col) = sources.line_col(l.span);
            format!("{}:{line}:{col}", sources.path(l.span.file))
        })
    }

    /// Attaches the sources so that miette can render the diagnostic. Labels in other files
    /// than the primary one become related diagnostics with their own source.
    pub fn report(&self, sources: &SourceMap) -> Report {
        let file = self.labels.first().map_or(0, |l| l.span.file);
        let (mine, others): (Vec<&Label>, Vec<&Label>) = self.labels.iter().partition(|l| l.span.file == file);
        let related = others
            .into_iter()
            .map(|l| Report {
                severity: miette::Severity::Advice,
                code: None,
                message: l.text.clone(),
                help: None,
                source: sources.named(l.span.file),
                labels: vec![LabeledSpan::new_with_span(Some(l.text.clone()), to_source_span(l.span))],
                related: Vec::new(),
            })
            .collect();
        Report {
            severity: match self.severity {
                Severity::Error => miette::Severity::Error,
                Severity::Warning => miette::Severity::Warning,
            },
            code: Some(self.code),
            message: self.message.clone(),
            help: self.help.clone(),
            source: sources.named(file),
            labels: mine
                .into_iter()
                .enumerate()
                .map(|(i, l)| {
                    let text = Some(l.text.clone());
                    if i == 0 {
                        LabeledSpan::new_primary_with_span(text, to_source_span(l.span))
                    } else {
                        LabeledSpan::new_with_span(text, to_source_span(l.span))
                    }
                })
                .collect(),
            related,
        }
    }
}

fn to_source_span(s: Span) -> SourceSpan {
    SourceSpan::new((s.start as usize).into(), (s.end - s.start) as usize)
}

/// A [`Diagnostic`] bound to its source text, ready for a miette handler.
#[derive(Debug)]
pub struct Report {
    severity: miette::Severity,
    code: Option<&'static str>,
    message: String,
    help: Option<String>,
    source: NamedSource<String>,
    labels: Vec<LabeledSpan>,
    related: Vec<Report>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Report {}

impl miette::Diagnostic for Report {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.code.map(|c| Box::new(c) as Box<dyn fmt::Display>)
    }
    fn severity(&self) -> Option<miette::Severity> {
        Some(self.severity)
    }
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help.as_ref().map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }
    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        Some(&self.source)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        Some(Box::new(self.labels.iter().cloned()))
    }
    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn miette::Diagnostic> + 'a>> {
        Some(Box::new(self.related.iter().map(|r| r as &dyn miette::Diagnostic)))
    }
}

/// Codes of every diagnostic, in one place so that they stay stable.
pub mod codes {
    /// The text does not follow the grammar.
    pub const SYNTAX: &str = "tessera::parse::syntax";
    /// A name that nothing defines.
    pub const UNKNOWN_NAME: &str = "tessera::name::unknown";
    /// An import that names no module.
    pub const UNKNOWN_MODULE: &str = "tessera::import::not_found";
    /// Two definitions or hyper-parameters with one name.
    pub const DUPLICATE_NAME: &str = "tessera::name::duplicate";
    /// Two parameters with one hierarchical name.
    pub const DUPLICATE_PARAM: &str = "tessera::param::duplicate";
    /// Too many or too few positional arguments.
    pub const ARITY: &str = "tessera::call::arity";
    /// A named argument the callee does not have.
    pub const UNKNOWN_ARG: &str = "tessera::call::unknown_argument";
    /// An argument given twice or a required one missing.
    pub const BAD_ARGS: &str = "tessera::call::arguments";
    /// Shapes that do not fit together.
    pub const SHAPE: &str = "tessera::shape::mismatch";
    /// Element types that do not fit together.
    pub const DTYPE: &str = "tessera::dtype::mismatch";
    /// A value of the wrong kind (a tensor where an int is needed, ...).
    pub const TYPE: &str = "tessera::type::mismatch";
    /// A loop bound or condition not known at compile time.
    pub const NON_CONSTANT: &str = "tessera::loop::non_constant";
    /// A block that calls itself.
    pub const RECURSIVE: &str = "tessera::block::recursive";
    /// An input no output depends on.
    pub const UNUSED_INPUT: &str = "tessera::input::unused";
    /// The program unrolls to too many nodes or nests too deeply.
    pub const LIMIT: &str = "tessera::limit::exceeded";
    /// A construct reserved for a later version.
    pub const UNSUPPORTED: &str = "tessera::unsupported";
    /// A statement that is not allowed where it stands.
    pub const MISPLACED: &str = "tessera::stmt::misplaced";
    /// A bad value (index out of range, division by zero, a wrong pattern...).
    pub const VALUE: &str = "tessera::value::invalid";
    /// No model of that name, or a hyper-parameter override that does not apply.
    pub const MODEL: &str = "tessera::model::not_found";
    /// A `config.json` lacks a key the checkpoint map requires.
    pub const CONFIG_MISSING: &str = "tessera::config::missing";
    /// A `config.json` value the model does not implement (`require` failed) or of the wrong kind.
    pub const CONFIG_UNSUPPORTED: &str = "tessera::config::unsupported";
}

//! The source files of one compilation, so that spans can be turned into `file:line:col`.

use crate::{FileId, Span};
use miette::NamedSource;
use std::sync::Arc;

/// The source files of one compilation; a [`FileId`] indexes into it.
#[derive(Clone, Debug, Default)]
pub struct SourceMap {
    files: Vec<(String, Arc<str>)>,
}

impl SourceMap {
    /// An empty map.
    pub fn new() -> SourceMap {
        SourceMap::default()
    }

    /// Adds a file (or returns the id of the file already added under `path`).
    pub fn add(&mut self, path: &str, text: &str) -> FileId {
        if let Some(i) = self.files.iter().position(|(p, _)| p == path) {
            return i as FileId;
        }
        self.files.push((path.to_string(), Arc::from(text)));
        (self.files.len() - 1) as FileId
    }

    /// The path of a file.
    pub fn path(&self, f: FileId) -> &str {
        self.files.get(f as usize).map_or("<unknown>", |(p, _)| p)
    }

    /// The text of a file.
    pub fn text(&self, f: FileId) -> &str {
        self.files.get(f as usize).map_or("", |(_, t)| t)
    }

    /// The id of the file at `path`, if added.
    pub fn find(&self, path: &str) -> Option<FileId> {
        self.files.iter().position(|(p, _)| p == path).map(|i| i as FileId)
    }

    /// 1-based line and column (in characters) of the start of `span`.
    pub fn line_col(&self, span: Span) -> (u32, u32) {
        let text = self.text(span.file);
        let upto = &text[..(span.start as usize).min(text.len())];
        let line = upto.matches('\n').count() as u32 + 1;
        let col = upto.rsplit('\n').next().map_or(0, |l| l.chars().count()) as u32 + 1;
        (line, col)
    }

    pub(crate) fn named(&self, f: FileId) -> NamedSource<String> {
        NamedSource::new(self.path(f), self.text(f).to_string())
    }
}

//! Loading a program: the root file and, transitively, the modules it imports.

use crate::ast::{Def, DefKind, Module};
use crate::diag::{codes, Diagnostic};
use crate::{parser, FileId, SourceMap};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// The standard library, embedded so that `import nn` works from any directory.
pub const STDLIB: &[(&str, &str)] = &[
    ("nn", include_str!("../../stdlib/nn.tsr")),
    ("gpt2", include_str!("../../stdlib/gpt2.tsr")),
    ("llama", include_str!("../../stdlib/llama.tsr")),
    ("bert", include_str!("../../stdlib/bert.tsr")),
    ("mistral", include_str!("../../stdlib/mistral.tsr")),
    ("modernbert", include_str!("../../stdlib/modernbert.tsr")),
    ("t5", include_str!("../../stdlib/t5.tsr")),
    ("mamba", include_str!("../../stdlib/mamba.tsr")),
];

/// Parsed modules of one compilation with their sources.
#[derive(Debug, Default)]
pub struct Program {
    /// Every source file.
    pub sources: SourceMap,
    /// Parsed modules; index 0 is the root.
    pub modules: Vec<Module>,
    /// For each module, import alias → module index.
    pub imports: Vec<HashMap<String, usize>>,
}

impl Program {
    /// The module parsed from `file`.
    pub fn module_of(&self, file: FileId) -> Option<usize> {
        self.modules.iter().position(|m| m.file == file)
    }

    /// The definition `name` of module `m`.
    pub fn def(&self, m: usize, name: &str) -> Option<&Rc<Def>> {
        self.modules.get(m)?.defs.iter().find(|d| d.name.name == name && d.kind != DefKind::Checkpoint)
    }

    /// The root module's definitions.
    pub fn root_defs(&self) -> &[Rc<Def>] {
        self.modules.first().map_or(&[], |m| &m.defs)
    }
}

fn find_module(name: &str, importer: &str) -> Option<(String, String)> {
    let beside: PathBuf = Path::new(importer).parent().unwrap_or(Path::new("")).join(format!("{name}.tsr"));
    if let Ok(text) = std::fs::read_to_string(&beside) {
        return Some((beside.to_string_lossy().into_owned(), text));
    }
    STDLIB.iter().find(|(n, _)| *n == name).map(|(n, text)| (format!("<stdlib>/{n}.tsr"), text.to_string()))
}

/// Parses `text` (from `path`) and every module it imports. Syntax errors and unresolvable
/// imports are returned as diagnostics; the modules that parsed are kept.
pub fn load(path: &str, text: &str) -> (Program, Vec<Diagnostic>) {
    let mut p = Program::default();
    let mut diags = Vec::new();
    let mut queue = vec![(path.to_string(), text.to_string())];
    let mut by_path: HashMap<String, usize> = HashMap::new();
    let mut pending_imports = Vec::new();
    while let Some((path, text)) = queue.pop() {
        let file = p.sources.add(&path, &text);
        let module = match parser::parse(file, &text) {
            Ok(m) => m,
            Err(d) => {
                diags.push(d);
                crate::ast::Module { file, imports: Vec::new(), defs: Vec::new() }
            }
        };
        let idx = p.modules.len();
        by_path.insert(path.clone(), idx);
        for imp in &module.imports {
            match find_module(&imp.module.name, &path) {
                Some((mpath, mtext)) => {
                    if !by_path.contains_key(&mpath) && !queue.iter().any(|(q, _)| *q == mpath) {
                        queue.push((mpath.clone(), mtext));
                    }
                    pending_imports.push((idx, imp.alias.name.clone(), mpath));
                }
                None => diags.push(
                    Diagnostic::error(
                        codes::UNKNOWN_MODULE,
                        format!("no module named `{}`", imp.module.name),
                        imp.module.span,
                        "imported here",
                    )
                    .with_help(format!(
                        "modules are `NAME.tsr` files beside the importing file, or the standard library: {}",
                        STDLIB.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                    )),
                ),
            }
        }
        p.modules.push(module);
        p.imports.push(HashMap::new());
    }
    for (idx, alias, mpath) in pending_imports {
        if let Some(&m) = by_path.get(&mpath) {
            p.imports[idx].insert(alias, m);
        }
    }
    (p, diags)
}

//! Front-end and IR-reader fuzzing, shared by `tests/fuzz_frontend.rs` (a fixed-seed budget in
//! `cargo test`) and `examples/fuzz_frontend.rs` (the long mode):
//!
//! ```text
//! cargo run --release --example fuzz_frontend -- --minutes 10 [--seed S]
//! ```
//!
//! Inputs are structured mutations of a corpus: every `.tsr` of `stdlib/`, `examples/` and
//! `tests/` (diagnostics, filetests, findings in `tests/fuzz/corpus/`) and the `.tir` dumps of
//! `tests/filetests/`. A mutation works on tokens (names, numbers, operators, brackets):
//! deleting, duplicating, swapping or splicing runs of them, possibly from another file, and
//! putting in interesting values (0, -1, 2^31, 2^63 - 1, 1e308, nan, deep brackets). Each
//! `.tsr` mutant is parsed, checked, elaborated (with small hyper-parameters) and its
//! diagnostics rendered; one that elaborates must give IR that verifies and prints back to
//! the equal graph. Each `.tir` mutant is read; one that reads must verify or be refused by
//! the verifier, and print back to the equal graph. A panic anywhere, or an input that takes
//! longer than [`SLOW`], is a finding: save it under `tests/fuzz/corpus/` so that the test
//! replays it for good.
#![allow(dead_code)]

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};
use tessera::lang::Override;

/// An input slower than this is a finding (the issue's bound is 10 s for `check` or `run`).
pub const SLOW: Duration = Duration::from_secs(2);

/// Files to mutate.
pub struct Corpus {
    /// `.tsr` sources.
    pub tsr: Vec<(String, String)>,
    /// `.tir` dumps.
    pub tir: Vec<(String, String)>,
}

fn files(dir: &str, ext: &str, out: &mut Vec<(String, String)>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut paths: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    paths.sort();
    for p in paths {
        if p.is_dir() {
            files(&p.to_string_lossy(), ext, out);
        } else if p.extension().is_some_and(|e| e == ext) {
            if let Ok(text) = std::fs::read_to_string(&p) {
                out.push((p.to_string_lossy().into_owned(), text));
            }
        }
    }
}

/// Reads the corpus (run from the repository root).
pub fn corpus() -> Corpus {
    let (mut tsr, mut tir) = (Vec::new(), Vec::new());
    for dir in ["stdlib", "examples", "tests/diagnostics", "tests/filetests", "tests/fuzz/corpus"] {
        files(dir, "tsr", &mut tsr);
    }
    files("tests/filetests", "tir", &mut tir);
    files("tests/fuzz/corpus", "tir", &mut tir);
    Corpus { tsr, tir }
}

/// Splits text into tokens that keep the text when joined: words, numbers, strings, single
/// punctuation characters and runs of whitespace.
fn tokens(s: &str) -> Vec<&str> {
    let b = s.as_bytes();
    let (mut out, mut i) = (Vec::new(), 0);
    while i < b.len() {
        let c = b[i];
        let start = i;
        i += 1;
        if c.is_ascii_alphanumeric() || c == b'_' || c == b'.' {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'.') {
                i += 1;
            }
        } else if c.is_ascii_whitespace() {
            while i < b.len() && b[i].is_ascii_whitespace() {
                i += 1;
            }
        } else if c == b'"' {
            while i < b.len() && b[i] != b'"' && b[i] != b'\n' {
                i += 1;
            }
            i = (i + 1).min(b.len());
        } else {
            while i < b.len() && !b[i].is_ascii() {
                i += 1;
            }
        }
        while !s.is_char_boundary(i) {
            i += 1;
        }
        out.push(&s[start..i]);
    }
    out
}

const INTERESTING: &[&str] = &[
    "0",
    "1",
    "-1",
    "2",
    "3",
    "7",
    "2147483648",
    "4294967296",
    "9223372036854775807",
    "-9223372036854775808",
    "99999999999999999999",
    "1e308",
    "1e-308",
    "1e400",
    "nan",
    "inf",
    "-inf",
    "0.0",
    "-0.0",
    "none",
    "true",
    "false",
    "\"\"",
    "\"x\"",
    "..",
    ":",
    "::",
    "-1:",
    "[",
    "]",
    "(",
    ")",
    "{",
    "}",
    ",",
    "=",
    "+",
    "-",
    "*",
    "/",
    "//",
    "%",
    "**",
    "@",
    "==",
    "<",
    "and",
    "or",
    "not",
    "as",
    "as shared",
    "for",
    "in",
    "if",
    "else",
    "return",
    "param",
    "input",
    "output",
    "block",
    "model",
    "mask",
    "score",
    "import",
    "checkpoint",
    "scan",
    "route",
    "T",
    "none",
    "x",
    "seq",
    "batch",
    "\n",
    "#",
    "<-",
    "|x|",
    "((((((((((",
    "))))))))))",
];

/// One structured mutation of `text`; `other` is another corpus file to splice from.
pub fn mutate(text: &str, other: &str, rng: &mut StdRng) -> String {
    let mut t: Vec<String> = tokens(text).into_iter().map(str::to_string).collect();
    let o: Vec<&str> = tokens(other);
    for _ in 0..rng.random_range(1..5) {
        let n = t.len();
        if n == 0 {
            t.push(INTERESTING[rng.random_range(0..INTERESTING.len())].to_string());
            continue;
        }
        let at = rng.random_range(0..n);
        let len = rng.random_range(1..12).min(n - at);
        match rng.random_range(0..8) {
            0 => drop(t.drain(at..at + len)),
            1 => {
                let copy: Vec<String> = t[at..at + len].to_vec();
                let to = rng.random_range(0..=t.len());
                t.splice(to..to, copy);
            }
            2 => {
                let b = rng.random_range(0..n);
                t.swap(at, b);
            }
            3 | 4 => t[at] = INTERESTING[rng.random_range(0..INTERESTING.len())].to_string(),
            5 => t.insert(at, INTERESTING[rng.random_range(0..INTERESTING.len())].to_string()),
            6 if !o.is_empty() => {
                let from = rng.random_range(0..o.len());
                let piece: Vec<String> = o[from..(from + rng.random_range(1..30)).min(o.len())].iter().map(|s| s.to_string()).collect();
                t.splice(at..at + len.min(2), piece);
            }
            _ => {
                // A number nudged to an edge.
                if let Ok(v) = t[at].parse::<i64>() {
                    t[at] = [v.wrapping_neg(), v.saturating_mul(1 << 20), 0, v.saturating_add(1)][rng.random_range(0..4)].to_string();
                }
            }
        }
    }
    t.concat()
}

/// What one execution found.
#[derive(Debug)]
pub enum Finding {
    /// A panic, with its message.
    Panic(String),
    /// Elaborated IR that the verifier rejects, or that does not print back to itself.
    BadIr(String),
    /// Slower than [`SLOW`].
    Slow(Duration),
}

fn panic_message(e: &Box<dyn std::any::Any + Send>) -> String {
    e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_else(|| "panic".into())
}

fn small_overrides(text: &str) -> Vec<(String, Override)> {
    [("layers", 1i64), ("decoder_layers", 1), ("d", 32), ("vocab", 50), ("heads", 4), ("kv_heads", 2), ("hidden", 40), ("d_ff", 40)]
        .iter()
        .filter(|(k, _)| text.contains(k))
        .map(|(k, v)| (k.to_string(), Override::Int(*v)))
        .collect()
}

/// Runs the front end on one `.tsr` text (as `path`): parse, check, elaborate, render.
/// Returns what it found and whether the text elaborated to IR.
pub fn exec_tsr(path: &str, text: &str) -> (Option<Finding>, bool) {
    let start = Instant::now();
    let mut elaborated = false;
    let r = catch_unwind(AssertUnwindSafe(|| {
        let (prog, diags) = tessera::lang::load(path, text);
        let _ = tessera::render(&diags, &prog.sources, false, 80);
        if diags.iter().any(|d| d.is_error()) {
            return None;
        }
        let (g, d) = tessera::lang::elaborate(&prog, None, &small_overrides(text));
        let _ = tessera::render(&d, &prog.sources, false, 80);
        let g = g?;
        elaborated = true;
        if let Err(e) = tessera::ir::verify(&g) {
            return Some(Finding::BadIr(format!("the verifier rejects elaborated IR: {}", e.join("; "))));
        }
        round_trip(&g)
    }));
    (timed(r, start), elaborated)
}

/// A graph prints and reads back to the same text. Text, not graph equality: a NaN constant
/// (`sqrt(-1.0)`) is never equal to itself.
fn round_trip(g: &tessera::ir::Graph) -> Option<Finding> {
    let text = g.to_string();
    match tessera::ir::parse(&text) {
        Ok(back) if back.to_string() == text => None,
        Ok(_) => Some(Finding::BadIr("the IR does not print back to the equal graph".into())),
        Err(e) => Some(Finding::BadIr(format!("printed IR does not read back: {}", e.msg))),
    }
}

/// The finding of one caught execution that began at `start`: its panic, or its slowness.
fn timed(r: std::thread::Result<Option<Finding>>, start: Instant) -> Option<Finding> {
    let found = r.unwrap_or_else(|e| Some(Finding::Panic(panic_message(&e))));
    found.or_else(|| (start.elapsed() > SLOW).then(|| Finding::Slow(start.elapsed())))
}

/// Runs the IR reader on one `.tir` text: read, verify, print back.
pub fn exec_tir(text: &str) -> Option<Finding> {
    let start = Instant::now();
    let r = catch_unwind(AssertUnwindSafe(|| {
        let g = tessera::ir::parse(text).ok()?;
        if tessera::ir::verify(&g).is_err() {
            return None;
        }
        round_trip(&g)
    }));
    timed(r, start)
}

/// Counts of one fuzzing run.
#[derive(Default, Debug)]
pub struct Stats {
    /// `.tsr` executions.
    pub tsr: u64,
    /// Of those, how many elaborated to IR.
    pub elaborated: u64,
    /// `.tir` executions.
    pub tir: u64,
    /// Findings, with the input.
    pub findings: Vec<(String, Finding)>,
}

/// Fuzzes for `budget` executions or until `deadline`, from `seed`. Panic messages are kept
/// off stderr while it runs.
pub fn run(corpus: &Corpus, seed: u64, budget: u64, deadline: Option<Instant>) -> Stats {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut stats = Stats::default();
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    for i in 0..budget {
        if deadline.is_some_and(|d| Instant::now() > d) {
            break;
        }
        if i % 4 == 3 && !corpus.tir.is_empty() {
            let (_, a) = &corpus.tir[rng.random_range(0..corpus.tir.len())];
            let (_, b) = &corpus.tir[rng.random_range(0..corpus.tir.len())];
            let m = mutate(a, b, &mut rng);
            stats.tir += 1;
            if let Some(f) = exec_tir(&m) {
                stats.findings.push((m, f));
            }
        } else {
            let (path, a) = &corpus.tsr[rng.random_range(0..corpus.tsr.len())];
            let (_, b) = &corpus.tsr[rng.random_range(0..corpus.tsr.len())];
            let m = mutate(a, b, &mut rng);
            stats.tsr += 1;
            let (found, elaborated) = exec_tsr(path, &m);
            stats.elaborated += u64::from(elaborated);
            if let Some(f) = found {
                stats.findings.push((m, f));
            }
        }
    }
    std::panic::set_hook(hook);
    stats
}
